"""Grants flagged dead while alive: each race or lost answer that once cost a company its grant.

Real PostgreSQL, the fake Sage over HTTP (its "hold", "drop" and "lose" faults and its grant
oracle ``token_state``), the real token store, lifecycle and sync steps. Threads stand in for
the second worker, browser tab or reconnecting user.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from faults.kit import business, connect, latest
from sage_sync.core.config import sage_settings
from sage_sync.core.errors import ReauthorizationRequired
from sage_sync.lifecycle import authorisation
from sage_sync.lifecycle import connections as lifecycle
from sage_sync.orchestration import airflow_api
from sage_sync.pipeline import env as run_env
from sage_sync.pipeline import sync
from sage_sync.sage.auth import OAuthClient, new_pkce_pair
from sage_sync.warehouse.token_store import PostgresTokenStore
from sandbox.fake_sage.server import FakeSageServer


@pytest.fixture(autouse=True)
def _no_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    # Connect and reconnect unpause the company's DAG through Airflow's API; none runs here.
    monkeypatch.setattr(airflow_api, "set_dag_paused", lambda dag_id, *, paused, caller=None: True)


def _status(conn: psycopg.Connection, company: str) -> str:
    conn.commit()
    return conn.execute("select status from sage_control.companies where company_id = %s", (company,)).fetchone()[0]


def _stored_refresh_token(pg_dsn: str, company: str) -> str:
    tokens = PostgresTokenStore(pg_dsn).load(company)
    assert tokens is not None
    return tokens.refresh_token


def _expire_stored_access_token(conn: psycopg.Connection, company: str) -> None:
    """The next step must refresh (a fresh stored access token is used as it is)."""
    conn.execute(
        "update sage_control.oauth_tokens set access_expires_at = now() - interval '1 minute' where company_id = %s",
        (company,),
    )
    conn.commit()


def _code(sage: FakeSageServer, key: str) -> tuple[str, str]:
    verifier, challenge = new_pkce_pair()
    return sage.authorize(login_hint=business(sage, key)["user"], code_challenge=challenge), verifier


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _token_posts(sage: FakeSageServer) -> int:
    return sum(1 for e in sage.admin.request_log() if e["path"] == "/token")


class _Thread(threading.Thread):
    """A thread that keeps what its target returned or raised."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_fn()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc


# -- 7. reconnect racing a refresh in flight ---------------------------------------------------------


def test_a_refresh_refused_while_a_reconnect_saves_a_new_grant_never_marks_the_company(
    sage: FakeSageServer, env: psycopg.Connection, pg_dsn: str
) -> None:
    company = connect(sage)
    run_id = sync.begin_run(company, kind="manual")
    old = _stored_refresh_token(pg_dsn, company)
    _expire_stored_access_token(env, company)
    sage.admin.clear_request_log()
    sage.admin.add_fault("hold", path="/token", count=1, delay_ms=20_000)
    refresh = _Thread(lambda: sync.check_auth(company, run_id))
    refresh.start()
    _wait_for(lambda: _token_posts(sage) == 1, "the refresh to reach Sage")
    # The user revokes the app at Sage and authorises it again while that refresh is in flight.
    OAuthClient(sage_settings()).revoke(old)
    code, verifier = _code(sage, "greenleaf")
    reconnect = _Thread(lambda: lifecycle.reconnect(company, code, verifier))
    reconnect.start()
    time.sleep(0.5)
    sage.admin.release_held()
    refresh.join(30)
    reconnect.join(30)
    assert reconnect.error is None
    assert _status(env, company) != "needs_reauth"
    assert sage.admin.token_state(_stored_refresh_token(pg_dsn, company)) == "live"


def test_a_refresh_in_flight_never_overwrites_the_grant_a_reconnect_saved(
    sage: FakeSageServer, env: psycopg.Connection, pg_dsn: str
) -> None:
    company = connect(sage)
    manager = run_env.token_manager(run_env.SyncEnv.from_config(), company)
    _expire_stored_access_token(env, company)
    sage.admin.clear_request_log()
    sage.admin.add_fault("hold", path="/token", count=1, delay_ms=20_000)
    refresh = _Thread(manager.refresh)
    refresh.start()
    _wait_for(lambda: _token_posts(sage) == 1, "the refresh to reach Sage")
    code, verifier = _code(sage, "greenleaf")
    reconnect = _Thread(lambda: lifecycle.reconnect(company, code, verifier))
    reconnect.start()
    reconnect.join(2)  # before the fix the reconnect saved at once, beside the refresh in flight
    sage.admin.release_held()
    refresh.join(30)
    reconnect.join(30)
    assert refresh.error is None and reconnect.error is None
    refreshed_old_grant = manager._tokens
    assert refreshed_old_grant is not None
    # The store holds the reconnect's grant, not the refreshed pair of the grant it replaced.
    assert _stored_refresh_token(pg_dsn, company) != refreshed_old_grant.refresh_token
    assert sage.admin.token_state(_stored_refresh_token(pg_dsn, company)) == "live"


# -- 8. two submissions of the business-choice form --------------------------------------------------


def test_one_pending_grant_gives_exactly_one_company(
    sage: FakeSageServer, env: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = pytest.importorskip("sage_sync.web.app")
    code, verifier = _code(sage, "greenleaf")
    auth = authorisation.exchange(code, verifier)
    lifecycle.migrate_warehouse()
    pending = authorisation.hold(auth)
    first, second = business(sage, "greenleaf")["id"], business(sage, "northwind")["id"]
    # Both submissions read the held grant before either stores anything (a double click).
    both_read = threading.Barrier(2, timeout=10)
    held = authorisation.held

    def held_then_wait(pending_id: str) -> authorisation.Authorisation | None:
        found = held(pending_id)
        both_read.wait()
        return found

    monkeypatch.setattr(authorisation, "held", held_then_wait)
    parent = FastAPI()
    parent.mount("/sage", app.app)
    app.app.dependency_overrides[app.current_user] = lambda: "tester"
    app.app.dependency_overrides[app.edit_rights] = lambda: True
    try:

        def submit(business_id: str) -> int:
            with TestClient(parent, follow_redirects=False) as browser:
                browser.get("/sage/")  # the CSRF cookie
                csrf = browser.cookies.get("sage_csrf")
                form = {"pending": pending, "business_id": business_id, "synced_from": "2026-Q1", "csrf": csrf}
                return browser.post("/sage/register", data=form).status_code

        tabs = [_Thread(lambda b=b: submit(b)) for b in (first, second)]
        for tab in tabs:
            tab.start()
        for tab in tabs:
            tab.join(60)
    finally:
        app.app.dependency_overrides.clear()
    assert [t.error for t in tabs] == [None, None]
    assert sorted(t.result for t in tabs) == [303, 400]
    env.commit()
    assert env.execute("select count(*) from sage_control.companies").fetchone() == (1,)
    assert env.execute("select count(*) from sage_control.oauth_tokens").fetchone() == (1,)


# -- 9. the rotated refresh token lost in transit ----------------------------------------------------


def test_a_refresh_answer_lost_in_transit_says_so(sage: FakeSageServer, env: psycopg.Connection) -> None:
    company = connect(sage)
    run_id = sync.begin_run(company, kind="manual")
    _expire_stored_access_token(env, company)
    sage.admin.add_fault("lose", path="/token", count=1)  # Sage rotates, the answer never arrives
    with pytest.raises(ReauthorizationRequired, match="token response lost in transit; re-authorise"):
        sync.check_auth(company, run_id)
    env.commit()
    assert _status(env, company) == "needs_reauth"
    reason = env.execute("select last_error from sage_control.companies").fetchone()[0]
    assert "lost in transit" in reason and "invalid, expired or revoked" not in reason  # not Sage's refusal text


def test_a_refresh_dropped_before_sage_saw_it_is_sent_again_and_the_grant_lives(
    sage: FakeSageServer, env: psycopg.Connection, pg_dsn: str
) -> None:
    company = connect(sage)
    run_id = sync.begin_run(company, kind="manual")
    _expire_stored_access_token(env, company)
    sage.admin.add_fault("drop", path="/token", count=1)  # closed before Sage handled it
    sync.check_auth(company, run_id)
    assert _status(env, company) == "initial_sync"
    assert sage.admin.token_state(_stored_refresh_token(pg_dsn, company)) == "live"


# -- 10. fail closed on the wrong business -----------------------------------------------------------


def test_a_business_the_grant_no_longer_reaches_stops_the_run_and_writes_nothing(
    sage: FakeSageServer, env: psycopg.Connection
) -> None:
    greenleaf = connect(sage, "greenleaf")
    northwind = connect(sage, "northwind")  # the same Sage user: one login reaches both
    sync.run_company(greenleaf)
    sync.run_company(northwind)
    env.commit()
    before = {s: latest(env, s, northwind) for s in ("purchase_invoices", "contacts", "businesses")}
    greenleaf_ids = set(latest(env, "purchase_invoices", greenleaf))
    # The user loses access to northwind, and Sage answers its X-Business with the lead
    # business (greenleaf) without naming the business it used.
    sage.admin.remove_access(business(sage, "northwind")["user"], northwind)
    sage.admin.misbehave(foreign_business_as_lead=True)
    sage.admin.advance_clock(3600)

    with pytest.raises(Exception, match="no longer among the businesses"):
        sync.run_company(northwind)
    env.commit()
    assert _status(env, northwind) == "business_missing"
    after = {s: latest(env, s, northwind) for s in before}
    assert after == before
    assert not greenleaf_ids & set(after["purchase_invoices"])
    last = env.execute(
        "select status, error from sage_control.sync_runs where company_id = %s order by started_at desc limit 1",
        (northwind,),
    ).fetchone()
    assert last[0] == "failed" and "no longer among the businesses" in last[1]
    sage.admin.misbehave(foreign_business_as_lead=False)
    sync.run_company(greenleaf)  # the other business syncs on
    assert _status(env, greenleaf) == "active"
