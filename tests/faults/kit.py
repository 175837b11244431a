"""Shared helpers for the fault and bad-input suites: connect a fake-Sage company, compare, hook pages.

Everything runs in-process against a real PostgreSQL and the fake Sage over HTTP, through
``sync.run_company`` (the DAG's steps in order), so a fault hits the same code a scheduled run uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import psycopg
import pytest

from sage_sync.core.config import sage_settings, warehouse_conn_json
from sage_sync.core.quarters import Quarter
from sage_sync.sage.auth import OAuthClient, new_pkce_pair
from sage_sync.sage.client import SageClient
from sandbox.fake_sage.server import FakeSageServer

DOCUMENTS = ("purchase_invoices", "purchase_credit_notes", "purchase_quick_entries", "other_payments")
SYNCED_FROM = Quarter.parse("2024-Q1")
RAW_STREAMS = ("businesses", "financial_settings", "ledger_accounts", "contacts", "tax_rates", *DOCUMENTS)


def point_env_at(monkeypatch: pytest.MonkeyPatch, dsn: str, sage: FakeSageServer) -> None:
    """Make ``config.warehouse_dsn()`` and ``config.sage_settings()`` name this database and fake."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_SAGE_WAREHOUSE",
        warehouse_conn_json(dsn),
    )
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_DEFAULT", sage.airflow_conn_json())


def business(sage: FakeSageServer, key: str) -> dict[str, Any]:
    return next(b for b in sage.admin.businesses() if b["key"] == key)


def connect(sage: FakeSageServer, key: str = "greenleaf", quarter: Quarter = SYNCED_FROM) -> str:
    """Connect the fake business ``key`` (Synced From ``quarter``) through the real authorise + PKCE exchange."""
    from tests.helpers import connect_company

    found = business(sage, key)
    verifier, challenge = new_pkce_pair()
    code = sage.authorize(login_hint=found["user"], code_challenge=challenge)
    tokens = OAuthClient(sage_settings()).exchange_code(code, code_verifier=verifier)
    connect_company(found["id"], found["name"], quarter, tokens)
    return found["id"]


def in_window(record: dict[str, Any]) -> bool:
    return date.fromisoformat(record["date"]) >= SYNCED_FROM.start_date


def latest(conn: psycopg.Connection, stream: str, company_id: str) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        f"select distinct on (record_id) record_id, payload from sage_raw.{stream} "
        "where company_id = %s order by record_id, _extracted_at desc",
        (company_id,),
    ).fetchall()
    return dict(rows)


def expected(sage: FakeSageServer, company_id: str, stream: str) -> dict[str, dict[str, Any]]:
    records = sage.admin.records(company_id, stream)
    if stream in DOCUMENTS:
        records = [r for r in records if in_window(r)]
    if stream == "contacts":
        records = [r for r in records if any(t.get("id") == "VENDOR" for t in r.get("contact_types") or [])]
    return {r["id"]: r for r in records}


def deleted_ids(conn: psycopg.Connection, company_id: str, stream: str) -> set[str]:
    rows = conn.execute(
        "select record_id from sage_raw.deletions where company_id = %s and stream = %s", (company_id, stream)
    ).fetchall()
    return {r[0] for r in rows}


def assert_warehouse_matches(sage: FakeSageServer, conn: psycopg.Connection, company_id: str) -> None:
    """Latest versions equal Sage's live records (deleted ones recorded as deletions), none doubled."""
    conn.commit()  # a fresh snapshot
    for stream in (*DOCUMENTS, "contacts", "ledger_accounts", "tax_rates"):
        want = expected(sage, company_id, stream)
        have = latest(conn, stream, company_id)
        gone = deleted_ids(conn, company_id, stream)
        missing = set(want) - set(have)
        assert not missing, f"{stream}: {len(missing)} records Sage holds are missing, e.g. {sorted(missing)[:3]}"
        extra = set(have) - set(want) - gone
        assert not extra, f"{stream}: {len(extra)} records Sage no longer lists, e.g. {sorted(extra)[:3]}"
        stale = [rid for rid in want if have[rid] != want[rid]]
        assert not stale, f"{stream}: {len(stale)} records differ from Sage, e.g. {stale[:3]}"
    assert_no_doubles(conn, company_id)


def assert_no_doubles(conn: psycopg.Connection, company_id: str) -> None:
    """No record has two versions with the same content (a re-read never adds a version)."""
    for stream in RAW_STREAMS:
        doubled = conn.execute(
            f"select record_id, count(*) from sage_raw.{stream} where company_id = %s "
            "group by record_id, content_hash having count(*) > 1 limit 3",
            (company_id,),
        ).fetchall()
        assert not doubled, f"{stream}: versions doubled: {doubled}"


def assert_watermark_not_ahead(sage: FakeSageServer, conn: psycopg.Connection, company_id: str, stream: str) -> None:
    """Every record Sage holds at or below the stream's watermark is already in the warehouse."""
    from sage_sync.warehouse import watermarks

    mark = watermarks.get_watermarks(conn, company_id).get(stream)
    if mark is None or mark.updated_since is None:
        return
    stamp = mark.updated_since.strftime("%Y-%m-%dT%H:%M:%SZ")
    covered = {rid for rid, rec in expected(sage, company_id, stream).items() if rec["updated_at"] <= stamp}
    missing = covered - set(latest(conn, stream, company_id))
    assert not missing, f"{stream}: watermark {stamp} is ahead of {len(missing)} records not loaded"


def version_counts(conn: psycopg.Connection, stream: str, company_id: str) -> dict[str, int]:
    rows = conn.execute(
        f"select record_id, count(*) from sage_raw.{stream} where company_id = %s group by record_id", (company_id,)
    ).fetchall()
    return dict(rows)


def hook_pages(monkeypatch: pytest.MonkeyPatch, action: Callable[[str, int, Any], None]) -> list[tuple[str, int]]:
    """Call ``action(path, page_index, page)`` after each page a client yields (1-based, per call).

    The action runs after the sync has taken (and committed) the page and asked for the next one,
    i.e. exactly "between pages". Returns the list of (path, index) seen, for assertions.
    """
    original = SageClient.iter_pages
    seen: list[tuple[str, int]] = []

    def iter_pages(self: SageClient, path: str, params: Any = None) -> Iterator[Any]:
        for index, page in enumerate(original(self, path, params), start=1):
            yield page
            seen.append((path, index))
            action(path, index, page)

    # Cursor paging (the spend streams) fetches one page per call: count pages per path across
    # calls, and run the action for a page just before the next page of that path is asked for.
    original_get_page = SageClient.get_page
    pending: dict[str, tuple[int, Any]] = {}

    def get_page(self: SageClient, path: str, params: Any = None) -> Any:
        if path in pending:
            index, previous = pending[path]
            seen.append((path, index))
            action(path, index, previous)
        page = original_get_page(self, path, params)
        pending[path] = (pending.get(path, (0, None))[0] + 1, page)
        return page

    monkeypatch.setattr(SageClient, "iter_pages", iter_pages)
    monkeypatch.setattr(SageClient, "get_page", get_page)
    return seen
