"""Which lane a run is in (``core.lanes``): history for a first sync, a full re-import or a backfill,
daily otherwise; read per run by the tasks (``runs.lane_of``) and per company by the DAG parse
(``snapshot``'s ``synced_since_reset``), which must agree. Real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from sage_sync.core.lanes import Lane
from sage_sync.core.status import CompanyStatus
from sage_sync.orchestration.companies import lane_for
from sage_sync.pipeline import sync
from sage_sync.warehouse import registry, runs
from sage_sync.warehouse.snapshot import DagCompany, companies_for_dags


@pytest.fixture
def company(warehouse: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SAGE_REGISTRY_SNAPSHOT", str(tmp_path / "companies.json"))
    registry.register_company(warehouse, "biz-1", "Acme", "2024-Q1")
    warehouse.commit()
    return "biz-1"


def _parsed_lane(pg_dsn: str) -> Lane:
    """The lane the next parse gives the company's DAG (the one company registered)."""
    (company,) = companies_for_dags(pg_dsn)
    return lane_for(company)


def _run(conn: psycopg.Connection, company: str, kind: str, run_id: str, status: str | None = None) -> str:
    """Open a run (a transaction of its own, so each has its own start time), and close it if asked."""
    runs.open_run(conn, company, kind, sync_run_id=run_id)
    conn.commit()
    if status is not None:
        _finish(conn, company, run_id, status)
    return run_id


def _finish(conn: psycopg.Connection, company: str, run_id: str, status: str) -> None:
    """Close the run as the DAG's finish task does (a first success makes the company active)."""
    dsn = conn.info.dsn
    sync.finish_run(company, run_id, status=status, env=sync.SyncEnv(dsn=dsn))


def test_history_until_a_run_succeeds_then_daily_and_a_run_keeps_its_lane(
    pg_dsn: str, warehouse: psycopg.Connection, company: str
) -> None:
    assert _parsed_lane(pg_dsn) == Lane.HISTORY  # connected, nothing synced: the first run is history
    first = _run(warehouse, company, "daily", "biz-1:day1", "failed")
    assert runs.lane_of(warehouse, first) == Lane.HISTORY
    assert _parsed_lane(pg_dsn) == Lane.HISTORY  # a failed first sync: the next run reads everything too

    second = _run(warehouse, company, "daily", "biz-1:day2")
    assert runs.lane_of(warehouse, second) == Lane.HISTORY
    runs.open_run(warehouse, company, "daily", sync_run_id=second)  # Airflow retries the run: re-opened
    warehouse.commit()
    assert runs.lane_of(warehouse, second) == Lane.HISTORY
    _finish(warehouse, company, second, "success")  # the first sync ends, mid-day
    assert runs.lane_of(warehouse, second) == Lane.HISTORY  # fixed by its start: still the first sync
    assert _parsed_lane(pg_dsn) == Lane.DAILY  # the next parse moves the DAG's tasks to the daily pool

    third = _run(warehouse, company, "daily", "biz-1:day3")
    assert runs.lane_of(warehouse, third) == Lane.DAILY
    _finish(warehouse, company, third, "success")
    backfill = _run(warehouse, company, "backfill", "biz-1:backfill", "success")
    assert runs.lane_of(warehouse, backfill) == Lane.HISTORY  # a backfill always
    assert _parsed_lane(pg_dsn) == Lane.DAILY
    assert runs.lane_of(warehouse, "biz-1:never-opened") == Lane.DAILY


def test_a_reset_puts_the_company_back_in_the_history_lane_until_its_re_import_succeeds(
    pg_dsn: str, warehouse: psycopg.Connection, company: str
) -> None:
    _run(warehouse, company, "daily", "biz-1:day1", "success")
    assert _parsed_lane(pg_dsn) == Lane.DAILY
    # What lifecycle.reset does, in one transaction: the reset's run, a new generation, the event.
    reset = runs.open_run(warehouse, company, "reset", new_generation=True)
    registry.set_status(warehouse, company, CompanyStatus.INITIAL_SYNC, event_type="reset")
    warehouse.commit()
    assert runs.lane_of(warehouse, reset) == Lane.HISTORY  # the full re-import under the reset's run
    assert _parsed_lane(pg_dsn) == Lane.HISTORY
    runs.finish_run(warehouse, reset, "skipped")  # wipe only: the next daily run re-imports
    warehouse.commit()
    next_run = _run(warehouse, company, "daily", "biz-1:day2")
    assert runs.lane_of(warehouse, next_run) == Lane.HISTORY
    _finish(warehouse, company, next_run, "success")
    assert _parsed_lane(pg_dsn) == Lane.DAILY


@pytest.mark.parametrize("status", [CompanyStatus.ERROR, CompanyStatus.BUSINESS_MISSING])
def test_a_company_in_another_status_is_asked_of_its_runs(
    pg_dsn: str, warehouse: psycopg.Connection, company: str, status: CompanyStatus
) -> None:
    """Neither active nor in its first sync by status (Sage refused it mid-way): whether a run has
    succeeded since the last reset decides, so a first sync that stalled stays in the history lane."""
    registry.set_status(warehouse, company, status)
    warehouse.commit()
    assert _parsed_lane(pg_dsn) == Lane.HISTORY
    run = _run(warehouse, company, "daily", "biz-1:day1")
    runs.finish_run(warehouse, run, "success")  # counted, whatever the status says
    registry.set_status(warehouse, company, status)
    warehouse.commit()
    assert _parsed_lane(pg_dsn) == Lane.DAILY


def test_a_snapshot_from_before_the_lanes_reads_as_daily() -> None:
    old_row = {"company_id": "b1aa", "company_name": "B", "status": "active", "synced_from_quarter": "2024-Q1"}
    assert lane_for(DagCompany(**old_row)) == Lane.DAILY
