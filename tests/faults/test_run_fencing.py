"""Run fencing: a page's writes land only while its run is the company's live run.

Issue 22, item 1: one stream task of a daily run failed for good, the run was closed as failed at
once while a sibling task was still reading a big stream, the operator pressed Reset (accepted: no
run was ``running``), and the sibling then committed its page and watermark after the wipe. The
reset's "full" re-import read only from that watermark and most invoices were never imported.

Real PostgreSQL, the fake Sage over HTTP; the sibling is kept mid-stream by the fake's "hold" fault.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from faults.kit import DOCUMENTS, RAW_STREAMS, assert_warehouse_matches, connect, expected
from sage_sync.core import errors
from sage_sync.lifecycle import connections as lifecycle
from sage_sync.pipeline import deletions, sync
from sage_sync.sage.streams import STREAMS
from sandbox.fake_sage.server import FakeSageServer

INVOICES = "/purchase_invoices"
RECORD_FAILURE = "a task of this run failed; see its log in Airflow"  # what the DAG's record_failure writes


def _pages(conn: psycopg.Connection, run_id: str, stream: str) -> int:
    conn.commit()
    row = conn.execute(
        "select coalesce((stats -> %s ->> 'pages')::int, 0) from sage_control.sync_runs where sync_run_id = %s",
        (stream, run_id),
    ).fetchone()
    return row[0] if row else 0


def _hold_second_invoice_page(
    sage: FakeSageServer, conn: psycopg.Connection, company: str, run_id: str
) -> tuple[threading.Thread, list[Any]]:
    """Start the run's invoices task in a thread; return once its first page is committed and the
    request for its second page is held at the fake (a big stream, still reading)."""
    sage.admin.add_fault("slow", path=INVOICES, count=1, delay_ms=0, business=company)  # page 1 passes
    sage.admin.add_fault("hold", path=INVOICES, count=1, delay_ms=120_000, business=company)  # page 2 waits
    outcome: list[Any] = []

    def task() -> None:
        try:
            outcome.append(sync.sync_stream(company, "purchase_invoices", run_id))
        except Exception as exc:  # noqa: BLE001 - the assertions look at it
            outcome.append(exc)

    sibling = threading.Thread(target=task, name="sibling")
    sibling.start()
    deadline = time.monotonic() + 60
    while sage.admin.faults() or _pages(conn, run_id, "purchase_invoices") < 1:
        assert time.monotonic() < deadline, "the sibling never reached its second invoice page"
        assert sibling.is_alive(), outcome
        time.sleep(0.05)
    return sibling, outcome


@pytest.fixture
def held(sage: FakeSageServer) -> Iterator[None]:
    """Whatever a test leaves held at the fake is let go (a failed assertion must not hang the suite)."""
    yield
    sage.admin.clear_faults()
    sage.admin.release_held()


def test_a_reset_while_an_old_task_still_loads_loses_nothing(
    sage: FakeSageServer, env: psycopg.Connection, held: None
) -> None:
    company = connect(sage)
    assert len(expected(sage, company, "purchase_invoices")) > 200  # more than one page: a big stream
    daily = sync.begin_run(company, airflow_run_id="scheduled__2026-01-05", kind="daily")
    sibling, outcome = _hold_second_invoice_page(sage, env, company, daily)
    # Another stream task failed for good: the DAG's record_failure closes the run at once.
    sync.finish_run(company, daily, status="failed", error=RECORD_FAILURE)
    # The operator presses Reset (wipe only; the next daily run does the full sync).
    reset_run = lifecycle.reset(company, confirm=True)
    lifecycle.close_reset_run(reset_run)
    sage.admin.release_held()  # the sibling's page arrives now, after the wipe
    sibling.join(120)
    assert not sibling.is_alive()
    sync.run_company(company, kind="daily")  # the reset's full re-import
    assert_warehouse_matches(sage, env, company)
    env.commit()
    assert env.execute("select status from sage_control.companies").fetchone() == ("active",)
    # The sibling was told, in one line, that its run is no longer the live one; nothing of it landed.
    assert len(outcome) == 1 and isinstance(outcome[0], errors.RunFenced), outcome
    assert daily in str(outcome[0]) and "\n" not in str(outcome[0])
    landed = env.execute(
        "select count(*) from sage_raw.purchase_invoices where company_id = %s and _sync_run_id = %s",
        (company, daily),
    ).fetchone()
    assert landed == (0,)
    run = env.execute("select status, error from sage_control.sync_runs where sync_run_id = %s", (daily,)).fetchone()
    assert run == ("failed", RECORD_FAILURE)


def test_a_disconnect_mid_page_keeps_no_write_of_the_run(
    sage: FakeSageServer, env: psycopg.Connection, held: None
) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from sage_sync.orchestration.tasks import skips_disconnected

    company = connect(sage)
    daily = sync.begin_run(company, airflow_run_id="scheduled__2026-01-06", kind="daily")
    sibling, outcome = _hold_second_invoice_page(sage, env, company, daily)
    rows_before = env.execute(
        "select count(*) from sage_raw.purchase_invoices where company_id = %s", (company,)
    ).fetchone()
    marks_before = env.execute("select * from sage_control.watermarks").fetchall()
    # Sage cannot answer the revoke: the access token the task holds stays valid, its page is served.
    sage.admin.add_fault("503", path="/revoke", count=20)
    lifecycle.disconnect(company)
    sage.admin.release_held()
    sibling.join(120)
    env.commit()
    assert (
        env.execute("select count(*) from sage_raw.purchase_invoices where company_id = %s", (company,)).fetchone()
        == rows_before
    )
    assert env.execute("select * from sage_control.watermarks").fetchall() == marks_before
    assert env.execute("select status from sage_control.sync_runs").fetchone() == ("skipped",)
    assert len(outcome) == 1 and isinstance(outcome[0], errors.RunFenced), outcome
    with pytest.raises(AirflowSkipException, match="disconnected"):  # the task is skipped, with the reason

        def fenced() -> None:
            raise outcome[0]

        skips_disconnected(fenced)()


def _warehouse_state(conn: psycopg.Connection, company: str) -> tuple:
    conn.commit()
    counts = tuple(
        conn.execute(f"select count(*) from sage_raw.{table} where company_id = %s", (company,)).fetchone()[0]
        for table in (*RAW_STREAMS, "deletions", "quarantine")
    )
    return (
        counts,
        conn.execute("select * from sage_control.watermarks order by stream").fetchall(),
        conn.execute("select sync_run_id, status, stats, error from sage_control.sync_runs order by 1").fetchall(),
        conn.execute("select reconcile_requested, last_reconciled_at from sage_control.companies").fetchall(),
    )


class _ClosesRunAfter:
    """The document streams, then the run closed (by another connection), just before the sweep's
    last transaction (the one marking the company reconciled)."""

    def __init__(self, streams: tuple[Any, ...], close: Any) -> None:
        self.streams, self.close = streams, close

    def __iter__(self) -> Iterator[Any]:
        yield from self.streams
        self.close()


@pytest.mark.parametrize("closed_by", ["failure", "reset"])
def test_every_writer_of_a_closed_run_writes_nothing(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, closed_by: str
) -> None:
    """Each page transaction checks the fence, not only a task's start: a task that started while its
    run was live (the start check is switched off here to stand for that) keeps nothing afterwards."""
    company = connect(sage)
    victim = next(r for r in expected(sage, company, "purchase_invoices").values())
    sage.admin.delete(company, "purchase_invoices", victim["id"])  # the deletion feed has a page to record
    env.execute("update sage_control.companies set reconcile_requested = true")
    env.commit()
    run = sync.begin_run(company, airflow_run_id="scheduled__2026-01-07", kind="daily")
    sync.finish_run(company, run, status="failed", error=RECORD_FAILURE)
    if closed_by == "reset":
        lifecycle.close_reset_run(lifecycle.reset(company, confirm=True))
        env.execute("update sage_control.companies set reconcile_requested = true")
        env.commit()
    monkeypatch.setattr(sync, "_require_live", lambda *_a, **_k: None, raising=False)
    before = _warehouse_state(env, company)
    for name in STREAMS:
        with pytest.raises(errors.RunFenced):
            sync.sync_stream(company, name, run)
    with pytest.raises(errors.RunFenced):
        sync.sync_deletions(company, run)
    with pytest.raises(errors.RunFenced):
        sync.backfill_stream(company, DOCUMENTS[0], run, "2023-Q1")
    assert _warehouse_state(env, company) == before

    # The sweep's last transaction too: the run is live for every stream, closed just before it.
    live = sync.begin_run(company, airflow_run_id="scheduled__2026-01-08", kind="daily")

    def close() -> None:
        sync.finish_run(company, live, status="failed", error=RECORD_FAILURE)

    monkeypatch.setattr(deletions, "DOCUMENT_STREAMS", _ClosesRunAfter(deletions.DOCUMENT_STREAMS, close))
    with pytest.raises(errors.RunFenced):
        sync.sync_deletions(company, live)
    env.commit()
    assert env.execute("select reconcile_requested, last_reconciled_at from sage_control.companies").fetchone() == (
        True,
        None,
    )


def test_an_old_airflow_run_retried_after_a_reset_does_not_reopen(
    sage: FakeSageServer, env: psycopg.Connection
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from sage_sync.orchestration.tasks import skips_disconnected

    company = connect(sage)
    old = sync.begin_run(company, airflow_run_id="scheduled__2026-01-09", kind="daily")
    sync.finish_run(company, old, status="failed", error=RECORD_FAILURE)
    lifecycle.close_reset_run(lifecycle.reset(company, confirm=True))
    # The old Airflow run's check_connection is retried (or cleared by hand) after the reset.
    with pytest.raises(AirflowFailException, match="reset or disconnected since"):
        skips_disconnected(sync.begin_run)(company, airflow_run_id="scheduled__2026-01-09", kind="daily")
    env.commit()
    rows = dict(env.execute("select sync_run_id, status from sage_control.sync_runs").fetchall())
    assert rows[old] == "failed" and "running" not in rows.values()
    # A retry of the same Airflow run without a reset in between still re-opens its row.
    again = sync.begin_run(company, airflow_run_id="scheduled__2026-01-10", kind="daily")
    sync.finish_run(company, again, status="failed", error=RECORD_FAILURE)
    assert sync.begin_run(company, airflow_run_id="scheduled__2026-01-10", kind="daily") == again


def test_a_run_closed_as_failed_never_becomes_a_success(sage: FakeSageServer, env: psycopg.Connection) -> None:
    company = connect(sage)
    daily = sync.begin_run(company, airflow_run_id="scheduled__2026-01-11", kind="daily")
    sync.finish_run(company, daily, status="failed", error=RECORD_FAILURE)
    with pytest.raises(errors.RunFenced, match="closed as failed"):
        sync.finish_run(company, daily, status="success")
    env.commit()
    assert env.execute("select status, error from sage_control.sync_runs").fetchone() == ("failed", RECORD_FAILURE)
    assert env.execute("select status from sage_control.companies").fetchone() == ("initial_sync",)
    # Nor does a backfill's: its Synced From stays where it was.
    sync.run_company(company)
    backfill = sync.begin_run(company, airflow_run_id="manual__b", kind="backfill")
    sync.finish_run(company, backfill, status="failed", error="a task of this backfill failed")
    with pytest.raises(errors.RunFenced):
        sync.finish_backfill(company, backfill, "2023-Q1")
    env.commit()
    assert env.execute("select synced_from_quarter from sage_control.companies").fetchone() == ("2024-Q1",)
