"""Benchmark 3: dbt's daily incremental build over N raw versions with N/500 changed, vs a full refresh.

A scratch warehouse gets a real initial sync of the fake's greenleaf (every stream, Sage-shaped), then
its purchase invoices are multiplied server-side to N raw versions (new ids, same shapes), and the
history is aged two days (it landed on earlier days, as in production). Timed:
``dbt run --full-refresh`` (baseline), then N/500 records get a new version and ``dbt run`` (project,
whatever dbt/ holds: incremental models benefit, table models rebuild), then ``dbt run`` once more with
nothing new (the fixed cost of a daily run). Issue target scale: 5,000,000.
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
    import json  # noqa: PLC0415

    results = json.loads(Path(tmp, "target", "run_results.json").read_text())["results"]
    ranked = sorted(results, key=lambda r: r["execution_time"], reverse=True)[:n]
    return {r["unique_id"].split(".")[-1]: round(r["execution_time"], 1) for r in ranked}


def _emissions_models(tmp: str) -> dict[str, float]:
    """Execution time of each emissions model in the last dbt invocation."""
    import json  # noqa: PLC0415

    results = json.loads(Path(tmp, "target", "run_results.json").read_text())["results"]
    return {
        r["unique_id"].split(".")[-1]: round(r["execution_time"], 1) for r in results if "emission" in r["unique_id"]
    }


def run(scale: int = 500_000) -> Result:
    from sage_sync.pipeline import sync  # noqa: PLC0415
    from sandbox.fake_sage.server import FakeSageServer  # noqa: PLC0415

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
            # History landed on earlier days, as in production: the daily run's lookback window
            # (var incremental_lookback) then holds only the day's changes. Aged before multiplying,
            # so the copies inherit it and 5M rows are not rewritten.
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
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "insert into sage_raw.purchase_invoices select company_id, record_id, source_updated_at "
                "+ interval '1 day', jsonb_set(payload, '{notes}', '\"changed\"'), md5(content_hash || 'c'), "
                "now(), 'bench-daily' from (select distinct on (record_id) * from sage_raw.purchase_invoices "
                "where (company_id, record_id) in (select company_id, record_id from sage_raw.purchase_invoices "
                "order by company_id, record_id limit %s) order by record_id, _extracted_at desc) v",
                (changed,),
            )
            conn.commit()
        daily = _dbt(["run"], dbname, tmp)
        daily_slowest = _slowest(tmp)
        daily_emissions = _emissions_models(tmp)
        # The fixed cost: a daily run with nothing landed since the last one (start-up, compile,
        # the views, the small tables), which no change set makes smaller.
        nothing_new = _dbt(["run"], dbname, tmp)
        nothing_new_slowest = _slowest(tmp)
        with psycopg.connect(dsn) as conn:
            started = time.perf_counter()
            quarters = conn.execute(
                "select count(*) from analytics.rpt_emissions_coverage where company_id = %s", (company,)
            ).fetchone()[0]
            coverage_query = time.perf_counter() - started
    ratio = daily / full
    return Result(
        "3 dbt",
        f"seconds, daily run ({changed:,} changed) vs full refresh, {versions:,} raw versions",
        daily,
        full,
        ratio,
        "<= 0.10 of full refresh",
        "PASS" if ratio <= 0.1 else "FAIL",
        {
            "raw_versions": versions,
            "changed": changed,
            "full_refresh_s": round(full, 1),
            "daily_s": round(daily, 1),
            "slowest_models_full": full_slowest,
            "slowest_models_daily": daily_slowest,
            "nothing_new_s": round(nothing_new, 1),
            "slowest_models_nothing_new": nothing_new_slowest,
            "load_average": [round(load, 2) for load in os.getloadavg()],
            "emissions_models_full": full_emissions,
            "emissions_models_daily": daily_emissions,
            "coverage_query_s": round(coverage_query, 1),
            "coverage_quarters": quarters,
        },
    )
