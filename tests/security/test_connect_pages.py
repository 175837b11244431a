"""The Connect pages under attack, in-process: a forged Host, a GET that would start a flow, a
phishing ``?msg=``, framing and caching, and the grants nobody uses.

Real PostgreSQL, the fake Sage over HTTP, and two small HTTP servers of the test's own: the
Airflow api-server the pages are configured with, and a host nobody configured. The real
api-server's side of the same checks is tests/security/test_airflow_api_server.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient
from faults.kit import business, connect, point_env_at

from sage_sync.core.config import sage_settings
from sage_sync.lifecycle import authorisation, connections
from sage_sync.sage.auth import new_pkce_pair
from sage_sync.warehouse.token_store import PostgresTokenStore
from sandbox.fake_sage.server import FakeSageServer

from .recorder import Recorder

plugin = pytest.importorskip("sage_sync.web.app")

PHISH = "Your session expired. Call 0800 000 000 to restore access"


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=5) as server:
        yield server


@pytest.fixture
def airflow_api() -> Iterator[Recorder]:
    """The api-server the pages are configured with (SAGE_AIRFLOW_API_URL)."""
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture
def elsewhere() -> Iterator[Recorder]:
    """A host nobody configured: a forged Host header names it."""
    recorder = Recorder(body=json.dumps({"detail": PHISH}))
    yield recorder
    recorder.close()


@pytest.fixture
def env(
    sage: FakeSageServer,
    warehouse: psycopg.Connection,
    pg_dsn: str,
    fernet_key: str,
    airflow_api: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> psycopg.Connection:
    sage.admin.reset()
    warehouse.autocommit = True
    point_env_at(monkeypatch, pg_dsn, sage)
    monkeypatch.setenv("SAGE_AIRFLOW_API_URL", airflow_api.url)
    for name in ("SAGE_AIRFLOW_API_TOKEN", "SAGE_AIRFLOW_API_USERNAME", "SAGE_AIRFLOW_API_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return warehouse


def _client(base_url: str = "http://testserver") -> TestClient:
    parent = FastAPI()
    parent.mount("/sage", plugin.app)
    client = TestClient(parent, base_url=base_url, follow_redirects=False)
    client.cookies.set("_token", "the-users-airflow-jwt")
    return client


@pytest.fixture
def client(env: psycopg.Connection) -> Iterator[TestClient]:
    plugin.app.dependency_overrides[plugin.current_user] = lambda: "tester"
    plugin.app.dependency_overrides[plugin.edit_rights] = lambda: True
    yield _client()
    plugin.app.dependency_overrides.clear()


def _csrf(client: TestClient) -> str:
    assert client.get("/sage/").status_code == 200
    return str(client.cookies.get("sage_csrf"))


def _alive(sage: FakeSageServer, access_token: str) -> bool:
    """Whether Sage still honours the grant behind ``access_token`` (a revoked grant's tokens die)."""
    answer = requests.get(
        f"{sage_settings().api_url}/businesses", headers={"Authorization": f"Bearer {access_token}"}, timeout=30
    )
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


# -- 1. the Airflow API's address never comes from the request -----------------------------------------


def test_a_forged_host_header_never_receives_the_users_token(
    client: TestClient, sage: FakeSageServer, airflow_api: Recorder, elsewhere: Recorder
) -> None:
    company = connect(sage)
    csrf = _csrf(client)
    forged = {"host": elsewhere.netloc}
    done = client.post("/sage/reset", data={"company_id": company, "csrf": csrf, "confirm": "yes"}, headers=forged)
    assert done.status_code == 303, done.text
    client.get("/sage/", headers=forged)  # the dashboard asks Airflow for the next runs
    assert elsewhere.requests == [], "a forged Host decided where the Airflow call (and its bearer token) went"
    calls = [(r["method"], r["path"]) for r in airflow_api.requests]
    assert ("POST", f"/api/v2/dags/sage_sync__{company}/dagRuns") in calls, calls
    assert {r["authorization"] for r in airflow_api.requests} == {"Bearer the-users-airflow-jwt"}


def test_an_airflow_answer_is_never_echoed_into_a_page(
    client: TestClient, sage: FakeSageServer, airflow_api: Recorder
) -> None:
    company = connect(sage)
    csrf = _csrf(client)
    airflow_api.status, airflow_api.body = 500, json.dumps({"detail": PHISH})
    # Served at the api-server's own address, as under `make airflow`.
    same_host = {"host": airflow_api.netloc}
    done = client.post("/sage/reset", data={"company_id": company, "csrf": csrf, "confirm": "yes"}, headers=same_host)
    assert done.status_code == 303
    assert "0800" not in done.headers["location"]
    assert airflow_api.requests, "the trigger never reached Airflow"
    page = client.get(done.headers["location"], headers=same_host)
    assert page.status_code == 200 and "0800" not in page.text
    assert "trigger it by hand" in page.text  # what failed is still said, in the app's own words


# -- 3. every state-changing flow starts from a POST carrying the CSRF token -------------------------


def test_a_get_link_starts_no_authorisation(client: TestClient, sage: FakeSageServer, env: psycopg.Connection) -> None:
    company = connect(sage)
    env.execute("update sage_control.companies set status = 'active'")
    link = f"/sage/authorize?purpose=backfill&company_id={company}&synced_from=2023-Q2"
    answer = client.get(link)
    assert answer.status_code == 405, (answer.status_code, answer.headers.get("location"))
    assert "sage_oauth" not in answer.headers.get("set-cookie", "")
    form = {"purpose": "backfill", "company_id": company, "synced_from": "2023-Q2"}
    assert client.post("/sage/authorize", data=form).status_code == 400  # no CSRF token
    assert client.post("/sage/authorize", data={**form, "csrf": "forged"}).status_code == 400
    started = client.post("/sage/authorize", data={**form, "csrf": _csrf(client)})
    assert started.status_code == 303 and started.headers["location"].startswith(sage_settings().authorize_url[:20])
    assert "sage_oauth" in started.headers["set-cookie"]


def test_the_pages_offer_no_state_changing_link(
    client: TestClient, sage: FakeSageServer, env: psycopg.Connection
) -> None:
    company = connect(sage)
    env.execute("update sage_control.companies set status = 'needs_reauth'")
    pages = [client.get("/sage/").text, client.get(f"/sage/company/{company}").text]
    env.execute("update sage_control.companies set status = 'active', synced_from_quarter = '2026-Q1'")
    pages.append(client.get(f"/sage/synced-from?company_id={company}&synced_from=2025-Q3").text)
    for text in pages:
        assert "/authorize?" not in text and "action=" in text
        assert 'action="/sage/authorize"' in text


# -- 5. the banner shows only the app's own messages ----------------------------------------------------


def test_msg_renders_only_the_apps_own_messages(client: TestClient, sage: FakeSageServer) -> None:
    company = connect(sage)
    name = business(sage, "greenleaf")["name"]
    for path in ("/sage/", f"/sage/company/{company}"):
        page = client.get(path, params={"msg": PHISH})
        assert page.status_code == 200 and "0800" not in page.text, path
        assert 'id="message"' not in page.text, path
    known = client.get("/sage/", params={"msg": "disconnected", "company_id": company, "note": "revoked"})
    assert f"Disconnected {name}" in known.text and "grant revoked at Sage" in known.text
    forged_note = client.get("/sage/", params={"msg": "disconnected", "company_id": company, "note": PHISH})
    assert "0800" not in forged_note.text
    stranger = client.get("/sage/", params={"msg": "disconnected", "company_id": "<b>nobody</b>"})
    assert 'id="message"' not in stranger.text


# -- 5. framing, sniffing, caching, cookies ------------------------------------------------------------


def test_pages_refuse_foreign_frames_sniffing_and_caching(client: TestClient, sage: FakeSageServer) -> None:
    company = connect(sage)
    first = client.get("/sage/")
    assert "sage_csrf=" in first.headers["set-cookie"] and "Secure" not in first.headers["set-cookie"]  # plain http
    for path in ("/sage/", f"/sage/company/{company}", f"/sage/reset?company_id={company}", "/sage/company/none"):
        headers = client.get(path).headers
        assert headers["x-frame-options"] == "SAMEORIGIN", path
        assert "frame-ancestors 'self'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path
        assert "no-store" in headers["cache-control"], path


def test_cookies_are_secure_under_https(env: psycopg.Connection) -> None:
    plugin.app.dependency_overrides[plugin.current_user] = lambda: "tester"
    plugin.app.dependency_overrides[plugin.edit_rights] = lambda: True
    try:
        client = _client("https://testserver")
        page = client.get("/sage/")
        assert "sage_csrf=" in page.headers["set-cookie"] and "Secure" in page.headers["set-cookie"]
        started = client.post("/sage/authorize", data={"purpose": "connect", "csrf": client.cookies.get("sage_csrf")})
        assert started.status_code == 303
        assert "sage_oauth=" in started.headers["set-cookie"] and "Secure" in started.headers["set-cookie"]
    finally:
        plugin.app.dependency_overrides.clear()


# -- 5. grants nobody uses are revoked at Sage -----------------------------------------------------------


def _consent(client: TestClient, form: dict[str, str]) -> requests.Response:
    """POST /authorize, consent at the fake Sage, follow the redirect back to /callback."""
    start = client.post("/sage/authorize", data={**form, "csrf": _csrf(client)})
    assert start.status_code == 303, start.text
    consent = requests.get(start.headers["location"], allow_redirects=False, timeout=30)
    back = parse_qs(urlsplit(consent.headers["location"]).query)
    return client.get(f"/sage/callback?code={back['code'][0]}&state={back['state'][0]}")


def _pending_tokens(env: psycopg.Connection, pending_id: str) -> str:
    held = authorisation.held(pending_id)
    assert held is not None
    return held.tokens.access_token


def test_a_pending_grant_nobody_picked_is_revoked_when_replaced_or_expired(
    client: TestClient, sage: FakeSageServer, env: psycopg.Connection
) -> None:
    first = _consent(client, {"purpose": "connect"})
    first_id = parse_qs(urlsplit(first.headers["location"]).query)["pending"][0]
    first_token = _pending_tokens(env, first_id)
    assert _alive(sage, first_token)

    # The same browser connects again (back button, a second tab): the first grant is replaced.
    second = _consent(client, {"purpose": "connect"})
    second_id = parse_qs(urlsplit(second.headers["location"]).query)["pending"][0]
    second_token = _pending_tokens(env, second_id)
    assert not _alive(sage, first_token), "the replaced pending grant is still alive at Sage"
    assert authorisation.held(first_id) is None

    # Nobody picks a business from the second one: once it expires, the next sweep revokes it.
    env.execute(
        "update sage_control.pending_authorisations set created_at = now() - make_interval(mins => %s)",
        (authorisation.PENDING_MINUTES + 1,),
    )
    authorisation.revoke_abandoned()
    assert not _alive(sage, second_token), "the expired pending grant is still alive at Sage"
    assert env.execute("select count(*) from sage_control.pending_authorisations").fetchone() == (0,)


def test_the_grant_a_reconnect_replaced_is_revoked(
    sage: FakeSageServer, env: psycopg.Connection, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections.airflow_api, "set_dag_paused", lambda *_, **__: False)
    company = connect(sage)
    old = PostgresTokenStore(pg_dsn).load(company)
    assert old is not None and _alive(sage, old.access_token)
    verifier, challenge = new_pkce_pair()
    code = sage.authorize(login_hint=business(sage, "greenleaf")["user"], code_challenge=challenge)
    connections.reconnect(company, code, verifier)
    new = PostgresTokenStore(pg_dsn).load(company)
    assert new is not None and new.refresh_token != old.refresh_token
    assert not _alive(sage, old.access_token), "the grant the reconnect replaced is still alive at Sage"
    assert _alive(sage, new.access_token)
