"""Benchmark 3: dbt's daily incremental build over N raw versions with N/500 changed, vs a full refresh.

A scratch warehouse gets a real initial sync of the fake's greenleaf (every stream, Sage-shaped), then
its purchase invoices are multiplied server-side to N raw versions (new ids, same shapes), and the
history is aged two days (it landed on earlier days, as in production). Timed:
``dbt run --full-refresh`` (baseline), then two days of N/500 changed records, each followed by ``dbt
run`` (project: whatever dbt/ holds; incremental models benefit, table models rebuild), then ``dbt
run`` once more with nothing new (the fixed cost of a daily run). The first day is the first run
after the initial sync; the second is the nightly steady state (see ``run``). Issue target scale:
5,000,000.
The emissions models are part of the project, so both runs include them; their own times and the
time of one analyst query over the emissions views (a company's coverage by quarter) are reported.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import ROOT, Result, connect_company, scratch_db

DBT = str(ROOT / ".venv" / "bin" / "dbt")


def _dbt(args: list[str], dbname: str, tmp: str) -> float:
    env = {
        **os.environ,
        "SAGE_PG_DBNAME": dbname,
        "DBT_PROFILES_DIR": str(ROOT / "dbt"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
    }
    started = time.perf_counter()
    out = subprocess.run(
        [
            DBT,
            *args,
            "--project-dir",
            str(ROOT / "dbt"),
            # the production layout (schema analytics), as Airflow's target builds it
            "--target",
            "prod",
            "--target-path",
            f"{tmp}/target",
            "--log-path",
            f"{tmp}/logs",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=7200,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"dbt {' '.join(args)} failed: {(out.stdout + out.stderr)[-1500:]}")
    return time.perf_counter() - started


def _slowest(tmp: str, n: int = 5) -> dict[str, float]:
    """The n slowest models of the last dbt invocation (where a daily run spends its time)."""
    import json

    results = json.loads(Path(tmp, "target", "run_results.json").read_text())["results"]
    ranked = sorted(results, key=lambda r: r["execution_time"], reverse=True)[:n]
    return {r["unique_id"].split(".")[-1]: round(r["execution_time"], 1) for r in ranked}


def _emissions_models(tmp: str) -> dict[str, float]:
    """Execution time of each emissions model in the last dbt invocation."""
    import json

    results = json.loads(Path(tmp, "target", "run_results.json").read_text())["results"]
    return {
        r["unique_id"].split(".")[-1]: round(r["execution_time"], 1) for r in results if "emission" in r["unique_id"]
    }


_CHANGE_SQL = (
    "insert into sage_raw.purchase_invoices select company_id, record_id, source_updated_at "
    "+ interval '1 day', jsonb_set(payload, '{notes}', to_jsonb(%(note)s::text)), md5(content_hash || %(note)s), "
    "now() - %(age)s::interval, 'bench-daily' from (select distinct on (record_id) * from sage_raw.purchase_invoices "
    "where (company_id, record_id) in (select distinct company_id, record_id from sage_raw.purchase_invoices "
    "order by company_id, record_id limit %(n)s offset %(offset)s) order by record_id, _extracted_at desc) v"
)


def _land_changes(dsn: str, changed: int, *, day: int, age: str) -> None:
    """A day's sync: `changed` records (a different slice each day) get a new version stamped
    `age` ago (the loader stamps the landing's transaction time)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(_CHANGE_SQL, {"note": f"changed on day {day}", "age": age, "n": changed, "offset": day * changed})
        conn.commit()


def run(scale: int = 500_000) -> list[Result]:
    """Three builds after the full refresh, each timed:

    - the first daily run after the initial sync (yesterday's changes): the incremental models'
      watermark is the initial sync's last landing, and their lookback re-reads the tail of that
      sync, here all of it, since the history was made in one go (as a first sync within an hour);
    - the nightly run (today's changes): the steady state every later day is in, the watermark at
      yesterday's landing. Issue target: <= 0.05 of the full refresh at 5M;
    - a run with nothing new (the fixed cost: start-up, compile, the views, the small tables).
    """
    from sage_sync.pipeline import sync
    from sandbox.fake_sage.server import FakeSageServer

    changed = max(1, scale // 500)
    with (
        FakeSageServer(seed=4, scale=4.0) as sage,
        scratch_db("sage_bench_dbt") as dsn,
        tempfile.TemporaryDirectory() as tmp,
    ):
        company = connect_company(sage, dsn, "greenleaf")
        sync.run_company(company)
        dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(dsn) as conn:
            # The initial sync landed two days ago. Aged before multiplying, so the copies inherit
            # it and 5M rows are not rewritten.
            for (table,) in conn.execute(
                "select table_name from information_schema.columns where table_schema = 'sage_raw' "
                "and column_name = '_extracted_at'"
            ).fetchall():
                conn.execute(f"update sage_raw.{table} set _extracted_at = _extracted_at - interval '2 days'")
            base = conn.execute("select count(*) from sage_raw.purchase_invoices").fetchone()[0]
            copies = max(0, (scale - base) // base)
            conn.execute(
                "insert into sage_raw.purchase_invoices select company_id, record_id || '-' || g, "
                "source_updated_at, jsonb_set(payload, '{id}', to_jsonb(record_id || '-' || g)), "
                "md5(content_hash || g), _extracted_at, _sync_run_id "
                "from sage_raw.purchase_invoices cross join generate_series(1, %s::int) g",
                (copies,),
            )
            conn.commit()
            conn.execute("analyze")
            versions = conn.execute("select count(*) from sage_raw.purchase_invoices").fetchone()[0]
        _dbt(["seed"], dbname, tmp)
        full = _dbt(["run", "--full-refresh"], dbname, tmp)
        full_slowest = _slowest(tmp)
        full_emissions = _emissions_models(tmp)
        _land_changes(dsn, changed, day=1, age="1 day")
        first_daily = _dbt(["run"], dbname, tmp)
        first_daily_slowest = _slowest(tmp)
        _land_changes(dsn, changed, day=2, age="0 seconds")
        daily = _dbt(["run"], dbname, tmp)
        daily_slowest = _slowest(tmp)
        daily_emissions = _emissions_models(tmp)
        nothing_new = _dbt(["run"], dbname, tmp)
        nothing_new_slowest = _slowest(tmp)
        with psycopg.connect(dsn) as conn:
            started = time.perf_counter()
            quarters = conn.execute(
                "select count(*) from analytics.rpt_emissions_coverage where company_id = %s", (company,)
            ).fetchone()[0]
            coverage_query = time.perf_counter() - started
    size = f"{versions:,} raw versions"
    ratio = daily / full
    first_ratio = first_daily / full
    return [
        Result(
            "3 dbt",
            f"seconds, nightly run ({changed:,} changed) vs full refresh, {size}",
            daily,
            full,
            ratio,
            "<= 0.05 of full refresh",
            "PASS" if ratio <= 0.05 else "FAIL",
            {
                "raw_versions": versions,
                "changed": changed,
                "full_refresh_s": round(full, 1),
                "daily_s": round(daily, 1),
                "slowest_models_full": full_slowest,
                "slowest_models_daily": daily_slowest,
                "load_average": [round(load, 2) for load in os.getloadavg()],
                "emissions_models_full": full_emissions,
                "emissions_models_daily": daily_emissions,
                "coverage_query_s": round(coverage_query, 1),
                "coverage_quarters": quarters,
            },
        ),
        Result(
            "3 dbt",
            f"seconds, first daily run after the initial sync ({changed:,} changed) vs full refresh, {size}",
            first_daily,
            full,
            first_ratio,
            "<= 0.10 of full refresh",
            "PASS" if first_ratio <= 0.1 else "FAIL",
            {"first_daily_s": round(first_daily, 1), "slowest_models_first_daily": first_daily_slowest},
        ),
        Result(
            "3 dbt",
            f"seconds, run with nothing new vs full refresh, {size}",
            nothing_new,
            full,
            nothing_new / full,
            "none (the fixed cost)",
            "measured",
            {"nothing_new_s": round(nothing_new, 1), "slowest_models_nothing_new": nothing_new_slowest},
        ),
    ]
