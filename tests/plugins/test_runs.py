"""Sync-run audit: lifecycle, and counters that add up exactly under concurrent updates."""

import threading
import uuid

import psycopg
import pytest

from sage_sync.warehouse.registry import register_company
from sage_sync.warehouse.runs import (
    UnknownRunError,
    add_stream_stats,
    finish_run,
    get_run,
    last_successful_run,
    start_run,
)


@pytest.fixture
def company(warehouse: psycopg.Connection) -> str:
    register_company(warehouse, "biz-1", "Acme", "2024-Q1")
    warehouse.commit()
    return "biz-1"


def test_lifecycle(warehouse: psycopg.Connection, company: str) -> None:
    run_id = start_run(warehouse, company, "daily")
    assert uuid.UUID(run_id).version == 4
    run = get_run(warehouse, run_id)
    assert (run["status"], run["kind"], run["stats"], run["ended_at"]) == ("running", "daily", {}, None)
    finish_run(warehouse, run_id, "failed", error="HTTP 503 from Sage")
    run = get_run(warehouse, run_id)
    assert (run["status"], run["error"]) == ("failed", "HTTP 503 from Sage")
    assert run["ended_at"] is not None


def test_validation(warehouse: psycopg.Connection, company: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        start_run(warehouse, company, "weekly")
    run_id = start_run(warehouse, company, "manual")
    with pytest.raises(ValueError, match="final run status"):
        finish_run(warehouse, run_id, "running")
    with pytest.raises(UnknownRunError):
        finish_run(warehouse, "missing", "success")
    with pytest.raises(UnknownRunError):
        get_run(warehouse, "missing")
    with pytest.raises(UnknownRunError):
        add_stream_stats(warehouse, "missing", "contacts", pages=1)
    with pytest.raises(TypeError, match="int"):
        add_stream_stats(warehouse, run_id, "contacts", pages=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        add_stream_stats(warehouse, run_id, "contacts", pages=True)


def test_stats_add_and_set(warehouse: psycopg.Connection, company: str) -> None:
    run_id = start_run(warehouse, company, "daily")
    add_stream_stats(
        warehouse, run_id, "purchase_invoices", pages=1, rows_seen=200, versions_added=150, total_reported=950
    )
    after = add_stream_stats(
        warehouse,
        run_id,
        "purchase_invoices",
        pages=1,
        rows_seen=200,
        versions_added=0,
        quarantined=2,
        total_reported=951,
    )
    assert after == {"pages": 2, "rows_seen": 400, "versions_added": 150, "quarantined": 2, "total_reported": 951}
    add_stream_stats(warehouse, run_id, "contacts", deletions=3)
    add_stream_stats(warehouse, run_id, "contacts")  # nothing to add: creates nothing harmful
    assert get_run(warehouse, run_id)["stats"] == {"purchase_invoices": after, "contacts": {"deletions": 3}}


def test_stats_roll_back_with_the_page(warehouse: psycopg.Connection, company: str) -> None:
    run_id = start_run(warehouse, company, "daily")
    warehouse.commit()
    add_stream_stats(warehouse, run_id, "contacts", pages=1)
    warehouse.rollback()
    assert get_run(warehouse, run_id)["stats"] == {}


def test_concurrent_increments_are_atomic(pg_dsn: str, warehouse: psycopg.Connection, company: str) -> None:
    run_id = start_run(warehouse, company, "daily")
    warehouse.commit()
    workers, rounds = 4, 25
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with psycopg.connect(pg_dsn) as conn:
                barrier.wait(10)
                for _ in range(rounds):
                    add_stream_stats(conn, run_id, "contacts", pages=1, rows_seen=7)
                    add_stream_stats(conn, run_id, "tax_rates", pages=1)
                    conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    stats = get_run(warehouse, run_id)["stats"]
    assert stats == {
        "contacts": {"pages": workers * rounds, "rows_seen": 7 * workers * rounds},
        "tax_rates": {"pages": workers * rounds},
    }


def test_last_successful_run(warehouse: psycopg.Connection, company: str) -> None:
    assert last_successful_run(warehouse, company) is None
    first = start_run(warehouse, company, "backfill")
    finish_run(warehouse, first, "success")
    warehouse.commit()  # started_at is the transaction time: separate transactions order the runs
    second = start_run(warehouse, company, "daily")
    finish_run(warehouse, second, "success")
    warehouse.commit()
    failed = start_run(warehouse, company, "daily")
    finish_run(warehouse, failed, "failed", error="x")
    warehouse.commit()
    last = last_successful_run(warehouse, company)
    assert last is not None and last["sync_run_id"] == second
    backfill = last_successful_run(warehouse, company, kinds=["backfill"])
    assert backfill is not None and backfill["sync_run_id"] == first
    assert last_successful_run(warehouse, company, kinds=["reset"]) is None


def test_start_run_with_a_given_id_is_restartable(warehouse: psycopg.Connection, company: str) -> None:
    run_id = start_run(warehouse, company, "daily", sync_run_id="biz-1:scheduled__2024-05-01")
    add_stream_stats(warehouse, run_id, "contacts", pages=1)
    finish_run(warehouse, run_id, "failed", error="boom")
    assert start_run(warehouse, company, "daily", sync_run_id=run_id) == run_id
    run = get_run(warehouse, run_id)
    assert (run["status"], run["error"], run["ended_at"], run["stats"]) == (
        "running",
        None,
        None,
        {"contacts": {"pages": 1}},
    )
    register_company(warehouse, "biz-2", "Other", "2024-Q1")
    with pytest.raises(ValueError, match="another company"):
        start_run(warehouse, "biz-2", "daily", sync_run_id=run_id)
