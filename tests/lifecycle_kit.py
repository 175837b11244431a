"""What the connection-lifecycle tests share: the fake Sage over HTTP, a real warehouse (fixtures
``sage`` and ``lenv``, taken in by the conftest of tests/lifecycle, tests/web and
tests/orchestration) and the helpers that read what landed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import psycopg
import pytest

from sage_sync.core.config import warehouse_conn_json
from sage_sync.orchestration import airflow_api
from sage_sync.sage.auth import new_pkce_pair
from sandbox.fake_sage.server import FakeSageServer

DOCUMENTS = ["purchase_invoices", "purchase_credit_notes", "purchase_quick_entries", "other_payments"]


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=5) as server:
        yield server


@pytest.fixture
def lenv(
    sage: FakeSageServer, warehouse: psycopg.Connection, pg_dsn: str, fernet_key: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, list]:
    """Settings pointed at the fake and the test warehouse; DAG pausing recorded, not done."""
    sage.admin.reset()
    warehouse.autocommit = True  # test reads must hold no lock across steps
    monkeypatch.setenv(
        "AIRFLOW_CONN_SAGE_WAREHOUSE",
        warehouse_conn_json(pg_dsn),
    )
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_DEFAULT", sage.airflow_conn_json())
    pauses: list[tuple[str, bool]] = []

    def record(dag_id: str, *, paused: bool, caller: object = None) -> bool:
        pauses.append((dag_id, paused))
        return True

    monkeypatch.setattr(airflow_api, "set_dag_paused", record)
    return {"paused": pauses}


def fresh_code(sage: FakeSageServer, login: str | None = None) -> tuple[str, str]:
    """The browser step of Authorise Access: a (code, verifier) pair."""
    verifier, challenge = new_pkce_pair()
    return sage.authorize(login_hint=login, code_challenge=challenge), verifier


def business_id(sage: FakeSageServer, key: str) -> str:
    return next(b["id"] for b in sage.admin.businesses() if b["key"] == key)


def in_window(record: dict, start: date) -> bool:
    return date.fromisoformat(record["date"]) >= start


def latest(conn: psycopg.Connection, stream: str, company_id: str) -> dict[str, dict]:
    rows = conn.execute(
        f"select distinct on (record_id) record_id, payload from sage_raw.{stream} "
        "where company_id = %s order by record_id, _extracted_at desc",
        (company_id,),
    ).fetchall()
    return dict(rows)


def deleted(conn: psycopg.Connection, stream: str, company_id: str) -> dict[str, str]:
    rows = conn.execute(
        "select record_id, detection_method from sage_raw.deletions where company_id = %s and stream = %s",
        (company_id, stream),
    ).fetchall()
    return dict(rows)


def current(conn: psycopg.Connection, stream: str, company_id: str, start: date) -> dict[str, dict]:
    """What the warehouse holds as current in the window: latest versions not deleted."""
    gone = deleted(conn, stream, company_id)
    return {k: v for k, v in latest(conn, stream, company_id).items() if k not in gone and in_window(v, start)}


def expected(sage: FakeSageServer, stream: str, company_id: str, start: date) -> dict[str, dict]:
    return {r["id"]: r for r in sage.admin.records(company_id, stream) if in_window(r, start)}
