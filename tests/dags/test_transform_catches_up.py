"""No landed data waits for a human: after a failed and a skipped transform, the next transform
builds everything that landed since the last successful build.

Day 1 lands and is built. Day 2 lands and its transform fails midway (the base models are built,
the line table is not: a lock held on it runs dbt into its lock timeout). Day 3 lands while the
transform is paused (no run). Then the transform resumes (the dbt task of the real `sage_transform`
DAG, run by Airflow and cosmos, then the whole build): the marts must hold both days' changes,
exactly as a full refresh builds them.
That works because every incremental model takes its watermark from what its own table holds.

The DAG's task runs against a warehouse connection given as a URI without a password
(`postgresql://postgres@127.0.0.1:5432/db`, trust auth), which cosmos' stock Postgres profile
mapping refuses ("Could not find a value for secret field password").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.dbt.test_dbt_models import (
    DAY3,
    GBP_CO,
    _day3_rows,
    _dbt,
    _dbt_env,
    _differing,
    _insert_rows,
    _load_later,
    _load_scenario,
    _snapshot,
)

pytestmark = [pytest.mark.airflow, pytest.mark.dbt]
BIN = Path(sys.executable).parent


def _passwordless_env(dsn: str, tmp_path: Path) -> dict[str, str]:
    if not os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        pytest.skip("needs Airflow's metadata DB: run with `. .local/env.sh` or through `make test`")
    p = conninfo_to_dict(dsn)
    if p.get("password"):
        pytest.skip("the test server needs a password: this test is about a server that does not")
    host = p.get("host") or "127.0.0.1"
    if host.startswith("/"):
        pytest.skip("the test server is reached over a unix socket")
    uri = f"postgresql://{p.get('user') or 'postgres'}@{host}:{p.get('port') or 5432}/{p['dbname']}"
    return {
        **_dbt_env(dsn),
        "AIRFLOW_CONN_SAGE_WAREHOUSE": uri,
        "SAGE_REGISTRY_SNAPSHOT": str(tmp_path / "companies.json"),
    }


def _fact(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select record_id, line_id, amount, supplier_name from analytics.fct_spend_transactions "
        "where company_id = %s order by 1, 2",
        (GBP_CO,),
    ).fetchall()


def test_one_transform_after_a_failed_and_a_skipped_one_builds_both_days(
    warehouse: psycopg.Connection, pg_dsn: str, tmp_path: Path
) -> None:
    env = _passwordless_env(pg_dsn, tmp_path)
    warehouse.autocommit = True
    _load_scenario(pg_dsn)
    day1 = _dbt(["build"], env, tmp_path)
    assert day1.returncode == 0, day1.stdout[-6000:]
    fact_day1 = _fact(warehouse)

    # Day 2 lands (an edit, a void, a deletion, a payment re-typed as a receipt); its transform
    # fails midway: the latest-version tables are built, the line table and the marts are not.
    _load_later(pg_dsn)
    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("lock table sage_intermediate.int_spend_lines_signed in access exclusive mode")
        failed = _dbt(["run"], {**env, "PGOPTIONS": "-c lock_timeout=2s"}, tmp_path)
        blocker.rollback()
    assert failed.returncode != 0
    results = {
        r["unique_id"].split(".")[-1]: r["status"]
        for r in json.loads((tmp_path / "target" / "run_results.json").read_text())["results"]
    }
    assert results["base_sage__purchase_invoices_latest"] == "success"
    assert results["int_spend_lines_signed"] == "error"
    assert _fact(warehouse) == fact_day1  # nothing of day 2 reached the marts

    # Day 3 lands while the transform is paused: no run at all.
    _insert_rows(warehouse, _day3_rows())
    warehouse.execute(
        "insert into sage_raw.deletions (company_id, stream, record_id, source_deleted_at, "
        "detection_method, _extracted_at, _sync_run_id) values "
        "(%s, 'purchase_quick_entries', 'qe_inv', '2024-06-03T00:00:00Z', 'deleted_since', %s, 'run1')",
        (GBP_CO, DAY3),
    )

    # The transform resumes. First the dbt task of the real DAG (cosmos, through the passwordless
    # connection): the line table picks up the day-2 versions the failed run had already
    # deduplicated. Then the whole build.
    done = subprocess.run(
        [str(BIN / "airflow"), "tasks", "test", "sage_transform", "dbt_build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "secret field password" not in output
    assert "OK created sql incremental model sage_intermediate.int_spend_lines_signed" in output, output[-4000:]
    assert warehouse.execute(
        "select net_amount from sage_intermediate.int_spend_lines_signed where line_id = 'pi_2_l1'"
    ).fetchone() == (Decimal("250.00"),)
    resumed = _dbt(["build"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-6000:]

    fact = _fact(warehouse)
    records = {row[0] for row in fact}
    amounts = {row[1]: row[2] for row in fact}
    assert str(amounts["pi_2_l1"]) == "250.00"  # day 2: the edit
    assert not records & {"pi_void", "pi_deleted", "op_receipt"}  # day 2: void, deletion, receipt
    assert "qe_inv" not in records and "op_b1" not in records  # day 3: deletion; op_b1 is EUR Co's
    assert {row[3] for row in fact if row[3] and row[3].startswith("Acme")} == {"Acme Group plc"}  # day 3
    eur_fact = warehouse.execute(
        "select record_id from analytics.fct_spend_transactions where company_id = 'eur_co'"
    ).fetchall()
    assert ("op_b1",) in eur_fact  # day 3: EUR Co's books turned GBP

    caught_up = _snapshot(warehouse)
    full = _dbt(["run", "--full-refresh"], env, tmp_path)
    assert full.returncode == 0, full.stdout[-6000:]
    rebuilt = _snapshot(warehouse)
    assert set(caught_up) == set(rebuilt)
    # every model equal, except that a change log may remember more (as in tests/dbt/test_dbt_models.py)
    differing = _differing(caught_up, rebuilt)
    assert not differing, {name: sorted(set(caught_up[name]) ^ set(rebuilt[name]))[:6] for name in differing}
