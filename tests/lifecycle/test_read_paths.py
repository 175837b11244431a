"""Reading never changes the schema: migrations run at set-up and deploy only.

Migrations take ACCESS EXCLUSIVE locks (``alter table ... add column if not exists`` takes one even
when the column exists). Behind one long reader (a dbt build), a status page that migrated
queued every sync page of every company behind it. Migrations run at set-up and deploy
(``python -m sage_sync migrate``, under a ``lock_timeout``); a read path on a warehouse that was
never set up says, in one line, which command to run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sage_sync.core.config import warehouse_conn_json
from sage_sync.core.errors import LifecycleError, MigrationLockTimeout
from sage_sync.reporting import dashboard
from sage_sync.reporting import status as status_report
from sage_sync.warehouse.migrate import migrate

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ.get("SAGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MIGRATE_HINT = "python -m sage_sync migrate"


@pytest.fixture
def long_reader(pg_dsn: str, warehouse: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A reader in the middle of a long transaction (as a dbt build is): ACCESS SHARE on the
    control tables, held until the test ends. Only DDL conflicts with it."""
    warehouse.execute(
        "insert into sage_control.companies (company_id, company_name, synced_from_quarter) "
        "values ('b1aa', 'Greenleaf Bakery Ltd', '2024-Q1')"
    )
    warehouse.commit()
    with psycopg.connect(pg_dsn) as reader:
        reader.execute("select count(*) from sage_control.companies")
        reader.execute("select count(*) from sage_control.sync_runs")
        yield reader
        reader.rollback()


def _run(code: str, dsn: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (no per-process cache of an earlier test can hide a
    migration), every lock wait bounded by 3 s instead of hanging the test."""
    env = {
        **os.environ,
        "AIRFLOW_CONN_SAGE_WAREHOUSE": warehouse_conn_json(dsn),
        "PGOPTIONS": "-c lock_timeout=3000",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
    }
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )


STATUS_CLI = "from sage_sync.cli.commands import main; main(['status', '--json'])"
DASHBOARD = (
    "import json; from sage_sync.reporting import dashboard; "
    "print(json.dumps([i['company_id'] for i in dashboard.overview()]))"
)


def test_status_and_the_dashboard_run_no_ddl_behind_a_long_reader(long_reader: psycopg.Connection, pg_dsn: str) -> None:
    status = _run(STATUS_CLI, pg_dsn)
    assert status.returncode == 0, status.stderr[-2000:]
    assert [c["company_id"] for c in json.loads(status.stdout)] == ["b1aa"]
    page = _run(DASHBOARD, pg_dsn)
    assert page.returncode == 0, page.stderr[-2000:]
    assert json.loads(page.stdout.strip().splitlines()[-1]) == ["b1aa"]


@pytest.fixture
def empty_dsn() -> Iterator[str]:
    """A database that was never set up."""
    name = f"sage_unmigrated_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _schemas(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("select nspname from pg_namespace where nspname like 'sage%'")]


def test_reads_of_a_warehouse_never_set_up_say_which_command_to_run(empty_dsn: str) -> None:
    status = _run(STATUS_CLI, empty_dsn)
    assert status.returncode == 2
    line = status.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and MIGRATE_HINT in line, status.stderr
    with pytest.raises(LifecycleError, match=MIGRATE_HINT):
        dashboard.overview(dsn=empty_dsn)
    with pytest.raises(LifecycleError, match=MIGRATE_HINT):
        status_report.report(dsn=empty_dsn)
    assert _schemas(empty_dsn) == []  # nothing was created on the way
    # Set-up is the one step that creates it; then the same reads work.
    assert _run("from sage_sync.cli.commands import main; main(['migrate'])", empty_dsn).returncode == 0
    assert status_report.report(dsn=empty_dsn) == []


def test_migrate_gives_up_behind_a_long_reader_instead_of_queueing_everyone(
    long_reader: psycopg.Connection, pg_dsn: str
) -> None:
    started = datetime.now(UTC)
    with psycopg.connect(pg_dsn) as conn, pytest.raises(MigrationLockTimeout, match="lock") as refused:
        migrate(conn, lock_timeout_ms=200, attempts=2, retry_delay_s=0.1)
    assert datetime.now(UTC) - started < timedelta(seconds=10)
    assert "\n" not in str(refused.value)
    # Meanwhile nobody queued behind it: a write to the same tables goes through at once.
    with psycopg.connect(pg_dsn, options="-c lock_timeout=1000") as writer:
        writer.execute("update sage_control.companies set company_name = company_name")
    long_reader.rollback()
    with psycopg.connect(pg_dsn) as conn:
        assert "001_init.sql" in migrate(conn, lock_timeout_ms=2000)


def test_a_warehouse_older_than_the_code_is_refused_until_set_up_runs(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        migrate(conn)
        # As a warehouse set up by the previous release would be: its last migration is an older one.
        conn.execute("comment on schema sage_control is 'sage_sync migrations applied up to 001_init.sql'")
        conn.commit()
    with pytest.raises(LifecycleError, match=f"older than this code.*{MIGRATE_HINT}"):
        status_report.report(dsn=empty_dsn)
    assert _run("from sage_sync.cli.commands import main; main(['migrate'])", empty_dsn).returncode == 0
    assert status_report.report(dsn=empty_dsn) == []
