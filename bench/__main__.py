"""``python -m bench [load|extract|dbt|dagparse|budget|all] [options]``: the issue #5 benchmarks.

Each benchmark measures the project and a baseline in the same run and prints the ratio, the target
and a verdict. Traffic goes only to 127.0.0.1 (the fake Sage and PostgreSQL). See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from bench.common import Result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("which", nargs="*", default=["all"],
                        choices=["all", "load", "extract", "dbt", "dagparse", "budget"])
    parser.add_argument("--records", type=int, default=1_000_000, help="load: records to land")
    parser.add_argument("--extract-records", type=int, default=1_000_000,
                        help="extract: invoices of the big company (0 ms run, memory)")
    parser.add_argument("--extract-small", type=int, default=100_000,
                        help="extract: invoices of the small company (memory flatness, 50 ms run)")
    parser.add_argument("--scale", type=int, default=5_000_000, help="dbt: raw versions (the issue's 5,000,000)")
    parser.add_argument("--companies", default="10,100,1000", help="dagparse: company counts")
    parser.add_argument("--json", dest="json_out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    which = {"load", "extract", "dbt", "dagparse", "budget"} if "all" in args.which else set(args.which)

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
          flush=True)
    results: list[Result] = []
    started = time.monotonic()
    extract_details: dict = {}
    for name in ("load", "extract", "dbt", "dagparse", "budget"):
        if name not in which:
            continue
        t0 = time.monotonic()
        print(f"--- {name} ...", flush=True)
        try:
            if name == "load":
                from bench import load  # noqa: PLC0415
                got = [load.run(args.records)]
            elif name == "extract":
                from bench import extract  # noqa: PLC0415
                got = extract.run(args.extract_records, args.extract_small)
                # the requests-per-1,000 result feeds the budget arithmetic of benchmark 5
                extract_details = next((r.details for r in got if "requests_per_1000" in r.details), {})
            elif name == "dbt":
                from bench import dbt_build  # noqa: PLC0415
                got = [dbt_build.run(args.scale)]
            elif name == "dagparse":
                from bench import dagparse  # noqa: PLC0415
                got = [dagparse.run([int(n) for n in args.companies.split(",")])]
            else:
                from bench import budget  # noqa: PLC0415
                got = [budget.run(extract_details.get("requests_per_1000"))]
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
    rows = [header] + [(r.name, r.metric, f"{r.project:,.2f}", f"{r.baseline:,.2f}", f"{r.ratio:.3f}",
                        r.target, r.verdict) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
