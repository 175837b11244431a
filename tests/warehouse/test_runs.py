"""Sync-run audit: lifecycle, counters that add up exactly under concurrent updates, and the run fence."""

import threading
import uuid

import psycopg
import pytest

from sage_sync.core.errors import RunFenced
from sage_sync.warehouse.registry import register_company
from sage_sync.warehouse.runs import (
    UnknownRunError,
    add_stream_stats,
    fence,
    finish_run,
    get_run,
    last_successful_run,
    open_run,
    skip_running_runs,
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


# -- the fence: a page's writes land only while its run is the company's live run -----------------


def _page(pg_dsn: str, run_id: str, outcome: list[object]) -> threading.Thread:
    """A page transaction of ``run_id`` in another connection: counters, then commit."""

    def work() -> None:
        with psycopg.connect(pg_dsn) as conn:
            try:
                outcome.append(add_stream_stats(conn, run_id, "contacts", pages=1))
                conn.commit()
            except RunFenced as exc:
                conn.rollback()
                outcome.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_a_page_in_flight_holds_off_a_close_and_the_next_page_is_fenced(
    pg_dsn: str, warehouse: psycopg.Connection, company: str
) -> None:
    run_id = start_run(warehouse, company, "daily")
    warehouse.commit()
    with psycopg.connect(pg_dsn) as page:
        add_stream_stats(page, run_id, "contacts", pages=1)  # passed the fence, not committed yet
        with psycopg.connect(pg_dsn, options="-c lock_timeout=300ms") as closer:
            with pytest.raises(psycopg.errors.LockNotAvailable):  # the close waits for the page
                finish_run(closer, run_id, "failed", error="a sibling failed")
            closer.rollback()
            with pytest.raises(psycopg.errors.LockNotAvailable):  # and so does a reset
                open_run(closer, company, "reset", new_generation=True)
        page.commit()
        finish_run(warehouse, run_id, "failed", error="a sibling failed")
        warehouse.commit()
        with pytest.raises(RunFenced, match="closed as failed \\(a sibling failed\\)"):
            add_stream_stats(page, run_id, "contacts", pages=1)
        page.rollback()
    assert get_run(warehouse, run_id)["stats"] == {"contacts": {"pages": 1}}  # the page before the close


def test_a_page_arriving_during_a_close_waits_for_it_then_keeps_nothing(
    pg_dsn: str, warehouse: psycopg.Connection, company: str
) -> None:
    run_id = start_run(warehouse, company, "daily")
    warehouse.commit()
    outcome: list[object] = []
    with psycopg.connect(pg_dsn) as closer:
        assert finish_run(closer, run_id, "failed", error="a sibling failed") is True  # not committed yet
        page = _page(pg_dsn, run_id, outcome)
        page.join(0.5)
        assert page.is_alive() and not outcome  # held at the fence until the close commits
        closer.commit()
    page.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], RunFenced), outcome
    assert get_run(warehouse, run_id)["stats"] == {}


def test_a_new_generation_fences_every_earlier_run(warehouse: psycopg.Connection, company: str) -> None:
    old = start_run(warehouse, company, "daily", sync_run_id="biz-1:scheduled__1")
    assert fence(warehouse, old) == company
    finish_run(warehouse, old, "failed", error="boom")
    reset = open_run(warehouse, company, "reset", new_generation=True)
    assert (get_run(warehouse, old)["generation"], get_run(warehouse, reset)["generation"]) == (0, 1)
    warehouse.commit()
    # The old Airflow run, retried: not re-opened, still failed.
    with pytest.raises(RunFenced, match="not re-opened: the company was reset or disconnected since it opened"):
        start_run(warehouse, company, "daily", sync_run_id=old)
    warehouse.rollback()
    assert get_run(warehouse, old)["status"] == "failed"
    # A running run whose generation is old (an unlikely leftover) may not write either.
    finish_run(warehouse, reset, "skipped", "wiped")
    warehouse.commit()
    stale = start_run(warehouse, company, "daily")
    warehouse.execute("update sage_control.companies set generation = generation + 1")
    with pytest.raises(RunFenced, match="generation 1, now 2"):
        fence(warehouse, stale)
    with pytest.raises(RunFenced, match="cannot become a success"):
        finish_run(warehouse, stale, "success")
    warehouse.rollback()
    # A disconnect closes the running run as skipped and starts a new generation.
    running = start_run(warehouse, company, "daily")
    assert skip_running_runs(warehouse, company, "company disconnected during the run") == 2
    with pytest.raises(RunFenced, match="closed as skipped \\(company disconnected during the run\\)") as fenced:
        add_stream_stats(warehouse, running, "contacts", pages=1)
    assert fenced.value.run_status == "skipped" and fenced.value.sync_run_id == running


def test_the_first_close_of_a_run_wins(warehouse: psycopg.Connection, company: str) -> None:
    run_id = start_run(warehouse, company, "daily")
    assert finish_run(warehouse, run_id, "failed", error="the specific reason") is True
    assert finish_run(warehouse, run_id, "failed", error="a task of this run failed") is False
    assert finish_run(warehouse, run_id, "skipped", error="disconnected") is False
    with pytest.raises(RunFenced, match="closed as failed \\(the specific reason\\); it cannot become a success"):
        finish_run(warehouse, run_id, "success")
    run = get_run(warehouse, run_id)
    assert (run["status"], run["error"]) == ("failed", "the specific reason")
    done = start_run(warehouse, company, "daily")
    assert finish_run(warehouse, done, "success") is True
    assert finish_run(warehouse, done, "success") is False  # a retried close: nothing changes
    assert finish_run(warehouse, done, "failed", error="late") is False
    assert get_run(warehouse, done)["status"] == "success"
