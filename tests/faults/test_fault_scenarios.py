"""Faults injected into whole syncs: each ends with the warehouse equal to Sage after at most one re-run.

Real PostgreSQL, the fake Sage over HTTP with its fault switches, ``sync.run_company`` (the DAG's
steps in order). Retry delays are recorded, not slept (fixture ``sleeps``).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Any

import psycopg
import pytest

from faults.kit import (
    assert_no_doubles,
    assert_warehouse_matches,
    assert_watermark_not_ahead,
    connect,
    expected,
    hook_pages,
    version_counts,
)
from sage_sync.core.errors import RateLimited, ReauthorizationRequired, TransientError
from sage_sync.pipeline import env as run_env
from sage_sync.pipeline import sync
from sage_sync.warehouse import watermarks
from sandbox.fake_sage.server import FakeSageServer

INVOICES = "/purchase_invoices"


def _run_at_most_twice(company: str) -> int:
    """run_company, and once more if the first run failed; returns how many runs it took."""
    try:
        sync.run_company(company)
        return 1
    except Exception:  # noqa: BLE001 - any failure is allowed once; the re-run must heal it
        sync.run_company(company)
        return 2


def _last_run(conn: psycopg.Connection, company: str) -> tuple[str, dict[str, Any]]:
    conn.commit()
    return conn.execute(
        "select status, stats from sage_control.sync_runs where company_id = %s order by started_at desc limit 1",
        (company,),
    ).fetchone()


# -- 429 storms --------------------------------------------------------------------------------------


def test_429_storm_is_absorbed_without_failing_the_run(
    sage: FakeSageServer, env: psycopg.Connection, sleeps: list[float]
) -> None:
    company = connect(sage)
    sage.admin.add_fault("429", path=INVOICES, count=5, retry_after=7)  # 5 < max_attempts (6)
    sage.admin.add_fault("429", path="/other_payments", count=5)  # no Retry-After: backoff
    sage.admin.add_fault("429", path="/contacts", count=3, retry_after=0)
    sage.admin.add_fault("429", path=None, count=4)  # whatever comes next
    sync.run_company(company)
    assert _last_run(env, company)[0] == "success"
    assert_warehouse_matches(sage, env, company)
    assert sleeps.count(7) == 5  # Retry-After honoured
    assert not sage.admin.faults()
    statuses = [r["status"] for r in sage.admin.request_log()]
    assert statuses.count(429) == 17


def test_429_storm_longer_than_the_retry_budget_heals_on_rerun(sage: FakeSageServer, env: psycopg.Connection) -> None:
    company = connect(sage)
    # longer than the client's throttling budget (30 attempts a call)
    sage.admin.add_fault("429", path="/purchase_credit_notes", count=40)
    with pytest.raises(RateLimited):
        sync.run_company(company)
    assert _last_run(env, company)[0] == "failed"
    marks = watermarks.get_watermarks(env, company)
    assert "purchase_credit_notes" not in marks  # the watermark never ran ahead of the rows
    sage.admin.clear_faults()
    sync.run_company(company)
    assert_warehouse_matches(sage, env, company)


# -- 5xx and dropped connections mid-pagination ------------------------------------------------------


def test_5xx_and_drops_mid_pagination_are_retried(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)

    def after(path: str, index: int, _page: Any) -> None:
        if path == INVOICES and index == 1:  # page 2 of the first pass
            sage.admin.add_fault("500", path=INVOICES)
            sage.admin.add_fault("drop", path=INVOICES)
            sage.admin.add_fault("503", path=INVOICES, retry_after=1)
        if path == INVOICES and index == 2:
            sage.admin.add_fault("drop", path=INVOICES, count=2)

    seen = hook_pages(monkeypatch, after)
    sync.run_company(company)
    assert (INVOICES, 3) in seen  # there really was a page after the faults
    faulted = [r.get("fault") for r in sage.admin.request_log() if r["path"] == "/v3.1" + INVOICES]
    assert faulted.count("drop") == 3 and "500" in faulted and "503" in faulted
    assert_warehouse_matches(sage, env, company)


def test_connection_dropped_for_good_mid_pagination_heals_on_rerun(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    fired = []

    def after(path: str, index: int, _page: Any) -> None:
        if path == INVOICES and index == 1 and not fired:
            fired.append(1)
            sage.admin.add_fault("drop", path=INVOICES, count=6)  # every attempt of page 2

    hook_pages(monkeypatch, after)
    with pytest.raises(TransientError):
        sync.run_company(company)
    env.commit()
    assert_watermark_not_ahead(sage, env, company, "purchase_invoices")  # it moved only with committed pages
    sync.run_company(company)
    assert_warehouse_matches(sage, env, company)


def test_pages_committed_before_a_failure_survive_it(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    fired = []

    def after(path: str, index: int, _page: Any) -> None:
        if path == INVOICES and index == 1 and not fired:
            fired.append(1)
            sage.admin.add_fault("drop", path=INVOICES, count=6)

    hook_pages(monkeypatch, after)
    with pytest.raises(TransientError):
        sync.run_company(company)
    env.commit()
    assert len(version_counts(env, "purchase_invoices", company)) == 200  # page 1 kept


# -- timeouts ----------------------------------------------------------------------------------------


def test_read_timeouts_are_retried(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    original = run_env.make_client
    monkeypatch.setattr(run_env, "make_client", lambda e, c, **kw: original(e, c, timeout=(2, 0.3), **kw))

    def after(path: str, index: int, _page: Any) -> None:
        if path == INVOICES and index == 1:
            sage.admin.add_fault("slow", path=INVOICES, count=2, delay_ms=900)  # > 0.3 s read timeout

    hook_pages(monkeypatch, after)
    sync.run_company(company)
    faulted = [r.get("fault") for r in sage.admin.request_log() if r["path"] == "/v3.1" + INVOICES]
    assert faulted.count("slow") == 2
    assert_warehouse_matches(sage, env, company)


# -- truncated or malformed JSON ---------------------------------------------------------------------


def test_truncated_json_bodies_are_retried_or_healed_on_rerun(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    sage.admin.add_fault("truncate", path="/ledger_accounts", count=2)
    sage.admin.add_fault("truncate", path="/financial_settings")
    fired: list[int] = []

    def after(path: str, index: int, _page: Any) -> None:
        if path == INVOICES and index == 1 and not fired:
            fired.append(1)
            sage.admin.add_fault("truncate", path=INVOICES, count=6)  # beyond the retry budget

    hook_pages(monkeypatch, after)
    runs = _run_at_most_twice(company)
    assert runs == 2
    assert_warehouse_matches(sage, env, company)


# -- records changing between pages ------------------------------------------------------------------


def test_record_edited_on_an_earlier_page_while_paging_is_neither_missed_nor_doubled(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    edited: list[str] = []

    def after(path: str, index: int, page: Any) -> None:
        if path == INVOICES and index == 1 and not edited:
            # Under sort=updated_at:asc the edited record jumps to the end; every later record moves
            # one place up, so the first record of page 2 slides onto page 1, already read.
            record = page.items[5]
            sage.admin.advance_clock(60)
            sage.admin.update(company, "purchase_invoices", record["id"], {"notes": "edited while paging"})
            edited.append(record["id"])

    hook_pages(monkeypatch, after)
    sync.run_company(company)
    assert_warehouse_matches(sage, env, company)
    counts = version_counts(env, "purchase_invoices", company)
    assert counts[edited[0]] == 2  # before and after the edit
    assert all(n == 1 for rid, n in counts.items() if rid != edited[0])


def test_record_edited_on_a_later_page_and_created_while_paging(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    done: list[str] = []
    invoices = sorted(expected(sage, company, "purchase_invoices").values(), key=lambda r: r["updated_at"])
    later = invoices[-20]
    template = {
        k: v
        for k, v in invoices[0].items()
        if k not in ("id", "$path", "displayed_as", "created_at", "updated_at", "deleted_at")
    }

    def after(path: str, index: int, _page: Any) -> None:
        if path == INVOICES and index == 1 and not done:
            sage.admin.advance_clock(60)
            sage.admin.update(company, "purchase_invoices", later["id"], {"vendor_reference": "MOVED"})
            new = sage.admin.create(
                company,
                "purchase_invoices",
                {**template, "date": sage.admin.now()[:10], "reference": "NEW-WHILE-PAGING"},
            )
            done.append(new["id"])

    hook_pages(monkeypatch, after)
    sync.run_company(company)
    assert done
    assert_warehouse_matches(sage, env, company)
    counts = version_counts(env, "purchase_invoices", company)
    assert counts[later["id"]] == 1 and counts[done[0]] == 1  # each read once, after the change


def test_record_deleted_on_an_earlier_page_while_paging_does_not_hide_another(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    removed: list[str] = []

    def after(path: str, index: int, page: Any) -> None:
        if path == INVOICES and index == 1 and not removed:
            sage.admin.advance_clock(60)
            sage.admin.delete(company, "purchase_invoices", page.items[3]["id"])
            removed.append(page.items[3]["id"])

    hook_pages(monkeypatch, after)
    sync.run_company(company)
    sage.admin.advance_clock(3600)
    sync.run_company(company)  # the one re-run allowed
    assert removed[0] in {
        r[0] for r in env.execute("select record_id from sage_raw.deletions where company_id = %s", (company,))
    }
    assert_warehouse_matches(sage, env, company)


# -- invalid_grant on refresh -----------------------------------------------------------------------


def test_invalid_grant_marks_only_that_company_needs_reauth_and_loses_nothing(
    sage: FakeSageServer, env: psycopg.Connection
) -> None:
    greenleaf = connect(sage, "greenleaf")
    harbour = connect(sage, "harbour")  # another Sage user: its own grant
    sync.run_company(greenleaf)
    sync.run_company(harbour)
    before = version_counts(env, "purchase_invoices", harbour)
    assert before
    harbour_user = next(b["user"] for b in sage.admin.businesses() if b["id"] == harbour)
    assert sage.admin.revoke_grants(harbour_user) >= 1
    sage.admin.advance_clock(3600)
    sage.admin.update(
        greenleaf,
        "purchase_invoices",
        next(iter(expected(sage, greenleaf, "purchase_invoices"))),
        {"notes": "after revoke"},
    )

    with pytest.raises(ReauthorizationRequired):
        sync.run_company(harbour)
    sync.run_company(greenleaf)  # unaffected

    env.commit()
    statuses = dict(env.execute("select company_id, status from sage_control.companies").fetchall())
    assert statuses == {harbour: "needs_reauth", greenleaf: "active"}
    assert version_counts(env, "purchase_invoices", harbour) == before  # nothing lost
    assert (
        env.execute("select count(*) from sage_control.oauth_tokens where company_id = %s", (harbour,)).fetchone()[0]
        == 1
    )  # kept for diagnosis; a reconnect replaces it
    assert_warehouse_matches(sage, env, greenleaf)
    with pytest.raises(ReauthorizationRequired):
        sync.begin_run(harbour)  # later runs refuse cleanly until reconnected


# -- killed between loading rows and committing the watermark ----------------------------------------


def _airflow_like_run(company: str, airflow_run_id: str) -> None:
    """The company DAG's steps under one Airflow run id (a task retry re-opens the same run row)."""
    from sage_sync.sage.streams import STREAMS

    run_id = sync.begin_run(company, airflow_run_id=airflow_run_id, kind="daily")
    sync.check_auth(company, run_id)
    for name in STREAMS:
        sync.sync_stream(company, name, run_id)
    sync.sync_deletions(company, run_id)
    sync.finish_run(company, run_id, status="success")


def _killed_child(company: str) -> None:
    real = watermarks.set_watermark

    def die(conn: psycopg.Connection, company_id: str, stream: str, **kwargs: Any) -> Any:
        if stream == "purchase_invoices":
            os._exit(137)  # SIGKILL-like: no cleanup, no commit, no finish_run
        return real(conn, company_id, stream, **kwargs)

    watermarks.set_watermark = die  # type: ignore[assignment]
    _airflow_like_run(company, "scheduled__2026-11-27")
    os._exit(0)


def test_process_killed_before_the_watermark_commit_loses_nothing(
    sage: FakeSageServer, env: psycopg.Connection
) -> None:
    company = connect(sage)
    env.commit()
    child = multiprocessing.get_context("fork").Process(target=_killed_child, args=(company,))
    child.start()
    child.join(120)
    assert child.exitcode == 137
    env.commit()
    loaded = version_counts(env, "purchase_invoices", company)
    assert len(loaded) < len(expected(sage, company, "purchase_invoices"))  # the last page died with it
    assert version_counts(env, "tax_rates", company)  # streams before it are committed
    assert "purchase_invoices" not in watermarks.get_watermarks(env, company)
    assert (
        env.execute("select status from sage_control.sync_runs where company_id = %s", (company,)).fetchone()[0]
        == "running"
    )  # the audit row shows the run never ended
    _airflow_like_run(company, "scheduled__2026-11-27")  # the task's retry: same Airflow run
    assert_warehouse_matches(sage, env, company)


# -- two runs of the same company at once ------------------------------------------------------------


def _two_overlapping_runs(
    sage: FakeSageServer, company: str, monkeypatch: pytest.MonkeyPatch
) -> list[BaseException | str]:
    """Run A pauses after its first invoice page while run B runs; then A finishes."""
    release = threading.Event()
    paused = threading.Event()
    outcomes: list[BaseException | str] = []

    def after(path: str, index: int, _page: Any) -> None:
        if path == INVOICES and index == 1 and threading.current_thread().name == "run-a" and not paused.is_set():
            paused.set()
            release.wait(4)

    hook_pages(monkeypatch, after)

    def run_a() -> None:
        try:
            outcomes.append(sync.run_company(company))
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            outcomes.append(exc)

    worker = threading.Thread(target=run_a, name="run-a")
    worker.start()
    assert paused.wait(30)
    try:
        outcomes.append(sync.run_company(company))
    except Exception as exc:  # noqa: BLE001
        outcomes.append(exc)
    release.set()
    worker.join(60)
    return outcomes


def test_two_runs_at_once_one_waits_or_skips_never_both_write(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    outcomes = _two_overlapping_runs(sage, company, monkeypatch)
    assert len(outcomes) == 2 and sum(isinstance(o, str) for o in outcomes) >= 1, outcomes
    env.commit()
    writers = set()
    for stream in (
        "businesses",
        "financial_settings",
        "ledger_accounts",
        "contacts",
        "tax_rates",
        "purchase_invoices",
        "purchase_credit_notes",
        "purchase_quick_entries",
        "other_payments",
    ):
        writers |= {
            r[0]
            for r in env.execute(
                f"select distinct _sync_run_id from sage_raw.{stream} where company_id = %s", (company,)
            )
        }
    assert len(writers) == 1, f"{len(writers)} runs wrote rows of the same company at once"
    assert_no_doubles(env, company)
    sync.run_company(company)
    assert_warehouse_matches(sage, env, company)
