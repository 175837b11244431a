"""``python -m bench [load|extract|dbt|dagparse|budget|deployment|marts|all] [options]``: the benchmarks.

Each benchmark measures the project and a baseline in the same run and prints the ratio, the target
and a verdict. Traffic goes only to 127.0.0.1 (the fake Sage and PostgreSQL). See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable

from bench.common import Result


def _run_one(name: str, args: argparse.Namespace, extract_details: dict) -> list[Result]:
    """One benchmark by name (imported on demand: each pulls in its own stack)."""
    module = importlib.import_module(f"bench.{'dbt_build' if name == 'dbt' else name}")
    runs: dict[str, Callable[[], list[Result]]] = {
        "load": lambda: [module.run(args.records)],
        "extract": lambda: module.run(args.extract_records, args.extract_small),
        "dbt": lambda: module.run(args.scale),
        "dagparse": lambda: [module.run([int(n) for n in args.companies.split(",")])],
        "budget": lambda: [module.run(extract_details.get("requests_per_1000"))],
        "deployment": lambda: module.run(
            args.deploy_companies,
            worker_counts=tuple(int(n) for n in args.deploy_workers.split(",") if n),
            days=args.deploy_days,
        ),
        "marts": lambda: module.run(
            [int(n) for n in args.marts_lines.split(",") if n], args.portfolio_lines, args.portfolio_companies
        ),
    }
    return runs[name]()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "which",
        nargs="*",
        default=["all"],
        choices=["all", "load", "extract", "dbt", "dagparse", "budget", "deployment", "marts"],
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="load: records to land")
    parser.add_argument(
        "--extract-records", type=int, default=1_000_000, help="extract: invoices of the big company (0 ms run, memory)"
    )
    parser.add_argument(
        "--extract-small",
        type=int,
        default=100_000,
        help="extract: invoices of the small company (memory flatness, 50 ms run)",
    )
    parser.add_argument("--scale", type=int, default=5_000_000, help="dbt: raw versions (the issue's 5,000,000)")
    parser.add_argument("--companies", default="10,100,1000", help="dagparse: company counts")
    parser.add_argument(
        "--deploy-companies",
        type=int,
        default=200,
        help="deployment: small companies on the real deployment, run with 1 then 2 workers",
    )
    parser.add_argument(
        "--deploy-days",
        type=int,
        default=2,
        choices=[1, 2],
        help="deployment: 1 = first syncs only, 2 = then a daily run",
    )
    parser.add_argument(
        "--deploy-workers",
        default="1,2",
        help="deployment: the worker counts to run, in order (the last is the headline, the first its baseline)",
    )
    parser.add_argument(
        "--marts-lines", default="1000000,5000000", help="marts: spend lines of the one company, per size"
    )
    parser.add_argument("--portfolio-lines", type=int, default=5_000_000, help="marts: lines of the portfolio")
    parser.add_argument("--portfolio-companies", type=int, default=500, help="marts: companies sharing them")
    parser.add_argument("--json", dest="json_out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    names = ("load", "extract", "dbt", "dagparse", "budget", "deployment", "marts")
    which = set(names) if "all" in args.which else set(args.which)

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
    results: list[Result] = []
    started = time.monotonic()
    extract_details: dict = {}
    for name in names:
        if name not in which:
            continue
        t0 = time.monotonic()
        print(f"--- {name} ...", flush=True)
        try:
            got = _run_one(name, args, extract_details)
            if name == "extract":
                # the requests-per-1,000 result feeds the budget arithmetic of benchmark 5
                extract_details = next((r.details for r in got if "requests_per_1000" in r.details), {})
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            got = [Result(name, "error", 0, 0, 0, "-", f"ERROR: {type(exc).__name__}: {exc}")]
        for result in got:
            print(result.line(), flush=True)
            if result.details:
                print("    " + json.dumps(result.details, default=str), flush=True)
        print(f"    ({time.monotonic() - t0:.0f} s)", flush=True)
        results.extend(got)
    print(f"=== {len(results)} results in {time.monotonic() - started:.0f} s")
    print(summary_table(results))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump([r.__dict__ for r in results], fh, indent=1, default=str)
    return 0 if all(not r.verdict.startswith("ERROR") for r in results) else 1


def summary_table(results: list[Result]) -> str:
    """One row per result: figure, baseline, ratio, target and verdict (a Markdown table)."""
    header = ("benchmark", "figure", "project", "baseline", "ratio", "target", "verdict")
    rows = [header] + [
        (r.name, r.metric, f"{r.project:,.2f}", f"{r.baseline:,.2f}", f"{r.ratio:.3f}", r.target, r.verdict)
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
