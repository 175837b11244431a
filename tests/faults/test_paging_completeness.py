"""A read counts as complete only when Sage ended it and nothing could have shifted under it.

Issue 22, items 2, 3 and 8: a deletion while a backfill pages, a server whose `$next` goes back or
whose `$total` is too small, a record stamped two years ahead, and a server that pages for ever.
Each must end either with the warehouse equal to Sage or with a failed run that says why and
moves no watermark and no Synced From. Real PostgreSQL, the fake Sage over HTTP (its envelope
faults play the misbehaving server), ``sync.run_company`` / ``sync.run_backfill``.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from faults.kit import assert_warehouse_matches, connect, expected, hook_pages, latest
from sage_sync.core.errors import IncompleteListing, PageLimitExceeded
from sage_sync.core.quarters import Quarter
from sage_sync.pipeline import extract, sync
from sage_sync.sage.client import CLOCK_TOLERANCE
from sage_sync.warehouse import watermarks
from sandbox.fake_sage.server import FakeSageServer

INVOICES = "/purchase_invoices"
BACKFILL_FROM, CONNECTED_FROM = Quarter.parse("2024-Q1"), Quarter.parse("2025-Q1")


def _last_run(conn: psycopg.Connection, company: str) -> tuple[str, str | None, dict[str, Any]]:
    conn.commit()
    return conn.execute(
        "select status, error, stats from sage_control.sync_runs where company_id = %s "
        "order by started_at desc limit 1",
        (company,),
    ).fetchone()


def _invoices_dated(sage: FakeSageServer, company: str, start: date, end: date) -> dict[str, dict[str, Any]]:
    return {
        r["id"]: r
        for r in sage.admin.records(company, "purchase_invoices")
        if start <= date.fromisoformat(r["date"]) <= end
    }


def _template(sage: FakeSageServer, company: str) -> dict[str, Any]:
    invoice = next(iter(expected(sage, company, "purchase_invoices").values()))
    skip = ("id", "$path", "displayed_as", "created_at", "updated_at", "deleted_at")
    return {k: v for k, v in invoice.items() if k not in skip}


def _small_pages(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Pages of ``size`` records, so the small reference streams take several pages too."""
    params = extract.list_params
    monkeypatch.setattr(extract, "list_params", lambda *a, **kw: params(*a, **{**kw, "page_size": size}))


# -- item 2: a deletion while a backfill pages --------------------------------------------------------


@pytest.mark.parametrize("shape", ["shifted", "served_again"])
def test_a_document_deleted_while_a_backfill_pages_loses_no_other(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    """Offset paging: a deletion on page 1 moves the first record of page 2 onto page 1, already
    read ("shifted"); with 201 records page 2 is then past the end and Sage serves page 1 again
    ("served_again"). Either way one live document was never imported and the backfill succeeded."""
    company = connect(sage, quarter=CONNECTED_FROM)
    window = (BACKFILL_FROM.start_date, CONNECTED_FROM.start_date - timedelta(days=1))
    if shape == "served_again":
        for record_id in sorted(_invoices_dated(sage, company, *window))[201:]:
            sage.admin.delete(company, "purchase_invoices", record_id)
    assert len(_invoices_dated(sage, company, *window)) > 200  # two pages of 200
    sync.run_company(company)
    removed: list[str] = []

    def after(path: str, index: int, page: Any) -> None:
        if path == INVOICES and index == 1 and not removed:
            sage.admin.advance_clock(60)
            sage.admin.delete(company, "purchase_invoices", page.items[3]["id"])
            removed.append(page.items[3]["id"])

    hook_pages(monkeypatch, after)
    # Failing with the reason is allowed; succeeding without the document is not.
    with contextlib.suppress(IncompleteListing):
        sync.run_backfill(company, BACKFILL_FROM)
    assert removed
    status, _error, _stats = _last_run(env, company)
    synced_from = env.execute("select synced_from_quarter from sage_control.companies").fetchone()[0]
    if status == "success":
        assert synced_from == str(BACKFILL_FROM)
        want = _invoices_dated(sage, company, *window)
        have = {k: v for k, v in latest(env, "purchase_invoices", company).items() if k in want}
        assert set(want) - set(have) == set(), "a live document of the backfill window was never imported"
    else:
        assert synced_from == str(CONNECTED_FROM)


# -- item 2: a $total too small, a $next that goes back -------------------------------------------------


def test_a_total_too_small_does_not_end_a_read(sage: FakeSageServer, env: psycopg.Connection) -> None:
    company = connect(sage)
    sage.admin.add_fault("short_total", path=INVOICES, count=100_000)
    sage.admin.add_fault("short_total", path="/contacts", count=100_000)
    sync.run_company(company)
    sage.admin.clear_faults()
    assert _last_run(env, company)[0] == "success"
    assert_warehouse_matches(sage, env, company)


def test_a_next_that_goes_back_once_is_read_again(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    _small_pages(monkeypatch, 5)
    sage.admin.add_fault("next_back", path="/ledger_accounts", count=1)  # page 1 of the first pass
    sync.run_company(company)
    status, _error, stats = _last_run(env, company)
    assert status == "success"
    assert stats["ledger_accounts"]["passes"] == 2
    assert_warehouse_matches(sage, env, company)


def test_a_next_that_keeps_going_back_fails_the_run_with_the_reason(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    _small_pages(monkeypatch, 5)
    sage.admin.add_fault("next_back", path="/contacts", count=100_000)
    with pytest.raises(IncompleteListing, match="goes back"):
        sync.run_company(company)
    sage.admin.clear_faults()
    status, error, _stats = _last_run(env, company)
    assert status == "failed" and "contacts" in error and "goes back" in error
    assert "contacts" not in watermarks.get_watermarks(env, company)  # no pass completed: no watermark


def test_a_contact_deleted_while_contacts_page_hides_no_other(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contacts cannot be sorted by updated_at: offset pages, then a listing of ids checks them."""
    company = connect(sage)
    _small_pages(monkeypatch, 5)
    removed: list[str] = []

    def delete_on_first_page(path: str, index: int, page: Any) -> None:
        if path == "/contacts" and index == 1 and not removed and page.items and "name" in page.items[0]:
            sage.admin.advance_clock(60)
            sage.admin.delete(company, "contacts", page.items[0]["id"])
            removed.append(page.items[0]["id"])

    hook_pages(monkeypatch, delete_on_first_page)
    sync.run_company(company)
    assert removed
    assert _last_run(env, company)[0] == "success"
    assert_warehouse_matches(sage, env, company)


# -- item 2: the id sweep both ways ---------------------------------------------------------------------


def test_the_id_sweep_fetches_what_sage_lists_and_the_warehouse_lacks(
    sage: FakeSageServer, env: psycopg.Connection
) -> None:
    company = connect(sage)
    sync.run_company(company)  # first sync: the company becomes active, no sweep yet
    lost = sorted(expected(sage, company, "purchase_invoices"))[7]
    env.execute("delete from sage_raw.purchase_invoices where company_id = %s and record_id = %s", (company, lost))
    env.commit()
    sage.admin.advance_clock(3600)
    sync.run_company(company)  # weekly sweep due (never reconciled)
    _status, _error, stats = _last_run(env, company)
    assert stats["purchase_invoices"]["reconciled_fetched"] == 1
    assert_warehouse_matches(sage, env, company)


# -- item 3: a record stamped in the future -------------------------------------------------------------


def test_a_future_stamped_record_is_loaded_flagged_and_never_a_cursor(
    sage: FakeSageServer, env: psycopg.Connection
) -> None:
    company = connect(sage)
    now = datetime.fromisoformat(sage.admin.now())
    ahead = (now + timedelta(days=730)).strftime("%Y-%m-%dT%H:%M:%SZ")
    template = _template(sage, company)
    future = sage.admin.create(
        company, "purchase_invoices", {**template, "date": now.date().isoformat(), "updated_at": ahead}
    )
    sync.run_company(company)
    status, _error, stats = _last_run(env, company)
    assert status == "success"
    assert stats["purchase_invoices"]["future_stamped"] == 1
    assert future["id"] in latest(env, "purchase_invoices", company)  # loaded, only flagged
    for mark in watermarks.get_watermarks(env, company).values():
        assert mark.updated_since is None or mark.updated_since <= now + CLOCK_TOLERANCE

    # A week later: a new £999 invoice and an edit must both arrive.
    sage.admin.advance_clock(7 * 86400)
    new = sage.admin.create(
        company,
        "purchase_invoices",
        {**template, "date": sage.admin.now()[:10], "reference": "NEW-999", "net_amount": "999.00"},
    )
    edited = sorted(expected(sage, company, "purchase_invoices"))[3]
    sage.admin.update(company, "purchase_invoices", edited, {"vendor_reference": "EDITED-LATER"})
    sync.run_company(company)
    assert _last_run(env, company)[0] == "success"
    have = latest(env, "purchase_invoices", company)
    assert new["id"] in have and have[edited]["vendor_reference"] == "EDITED-LATER"
    assert_warehouse_matches(sage, env, company)


def test_a_watermark_a_future_record_already_poisoned_heals(sage: FakeSageServer, env: psycopg.Connection) -> None:
    company = connect(sage)
    sync.run_company(company)
    poisoned = datetime.now(UTC) + timedelta(days=730)
    with env.transaction():
        watermarks.set_watermark(env, company, "purchase_invoices", updated_since=poisoned)
    env.commit()
    sage.admin.advance_clock(3600)
    new = sage.admin.create(company, "purchase_invoices", {**_template(sage, company), "date": sage.admin.now()[:10]})
    sync.run_company(company)
    assert new["id"] in latest(env, "purchase_invoices", company)
    mark = watermarks.get_watermarks(env, company)["purchase_invoices"].updated_since
    assert mark is not None and mark <= datetime.fromisoformat(sage.admin.now()) + CLOCK_TOLERANCE


# -- item 8: paging without an end ----------------------------------------------------------------------


def test_paging_without_an_end_stops_at_the_cap_with_the_reason(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    monkeypatch.setenv("SAGE_MAX_PAGES", "3")
    sage.admin.add_fault("endless", path=INVOICES, count=100_000)
    sage.admin.clear_request_log()
    with pytest.raises(PageLimitExceeded, match="3 pages"):
        sync.run_company(company)
    sage.admin.clear_faults()
    lists = [r for r in sage.admin.request_log() if r["path"] == "/v3.1/purchase_invoices"]
    assert len(lists) <= 3 + 1  # the cap, and at most the read-ahead's page beyond it
    status, error, _stats = _last_run(env, company)
    assert status == "failed" and "no $total" in error and "SAGE_MAX_PAGES" in error
