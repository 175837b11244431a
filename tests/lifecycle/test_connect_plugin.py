"""The Sage connections pages, in-process (FastAPI's test client) against the fake Sage.

Airflow's login is replaced by a fixed user here; the real login, cookie and api-server are
exercised by the browser test. What is checked: state and PKCE on the way to Sage, the
callback's state check, choosing a business and Synced From, status by section, disconnect,
reconnect, the backfill's validation, warning and trigger, and reset with confirmation.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sage_sync.lifecycle import airflow_api
from sage_sync.pipeline import sync
from sandbox.fake_sage.server import FakeSageServer

from .conftest import business_id

plugin = pytest.importorskip("sage_sync.web.app")


@pytest.fixture
def client(lenv: dict, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    triggered: list = []
    monkeypatch.setattr(airflow_api, "trigger", lambda dag_id, conf, user: triggered.append((dag_id, conf)) or "run-1")
    parent = FastAPI()
    parent.mount("/sage", plugin.app)
    plugin.app.dependency_overrides[plugin.current_user] = lambda: "tester"
    plugin.app.dependency_overrides[plugin.edit_rights] = lambda: True
    test_client = TestClient(parent, follow_redirects=False)
    test_client.triggered = triggered  # type: ignore[attr-defined]
    yield test_client
    plugin.app.dependency_overrides.clear()


def _through_sage(client: TestClient, sage: FakeSageServer, url: str, *, tamper: bool = False):
    start = client.get(url)
    assert start.status_code == 303, start.text
    location = start.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"] and query["state"][0] and query["code_challenge"][0]
    consent = requests.get(location, allow_redirects=False, timeout=30)  # the user consents at Sage
    back = parse_qs(urlsplit(consent.headers["location"]).query)
    state = "forged" if tamper else back["state"][0]
    return client.get(f"/sage/callback?code={back['code'][0]}&state={state}")


def test_connect_status_disconnect_reconnect_backfill_reset(client: TestClient, sage: FakeSageServer,
                                                            warehouse: psycopg.Connection) -> None:
    company = business_id(sage, "northwind")
    assert "No company is connected yet" in client.get("/sage/").text

    forged = _through_sage(client, sage, "/sage/authorize?purpose=connect", tamper=True)
    assert forged.status_code == 400 and "state does not match" in forged.text

    chosen = _through_sage(client, sage, "/sage/authorize?purpose=connect")
    assert chosen.status_code == 303 and chosen.headers["location"].startswith("/sage/choose?pending=")
    form = client.get(chosen.headers["location"])
    assert "Greenleaf" in form.text and company in form.text
    pending = parse_qs(urlsplit(chosen.headers["location"]).query)["pending"][0]
    csrf = client.cookies.get("sage_csrf")
    refused = client.post("/sage/register", data={"pending": pending, "business_id": company,
                                                  "synced_from": "2026-Q9", "csrf": csrf})
    assert refused.status_code == 400 and "malformed quarter" in refused.text
    assert client.post("/sage/register", data={"pending": pending, "business_id": company,
                                               "synced_from": "2026-Q1", "csrf": "wrong"}).status_code == 400
    done = client.post("/sage/register", data={"pending": pending, "business_id": company,
                                               "synced_from": "2026-Q1", "csrf": csrf})
    assert done.status_code == 303 and "Connected" in done.headers["location"]
    page = client.get("/sage/").text
    assert 'id="status-initial_sync"' in page and f'id="company-{company}"' in page

    sync.run_company(company)
    page = client.get("/sage/").text
    assert 'id="status-active"' in page and "pages" in page

    out = client.post("/sage/disconnect", data={"company_id": company, "csrf": client.cookies.get("sage_csrf")})
    assert out.status_code == 303 and "grant+revoked" in out.headers["location"].replace("%20", "+")
    assert 'id="status-disconnected"' in client.get("/sage/").text

    back = _through_sage(client, sage, f"/sage/authorize?purpose=reconnect&company_id={company}")
    assert back.status_code == 303 and "Reconnected" in back.headers["location"]
    assert warehouse.execute("select status from sage_control.companies").fetchone() == ("active",)

    later = client.get(f"/sage/synced-from?company_id={company}&synced_from=2026-Q2")
    assert later.status_code == 400 and "later than the current" in later.text
    warning = client.get(f"/sage/synced-from?company_id={company}&synced_from=2025-Q3")
    assert 'id="warning"' in warning.text and "2025-07-01 to 2025-12-31" in warning.text
    started = _through_sage(client, sage, f"/sage/authorize?purpose=backfill&company_id={company}"
                                          "&synced_from=2025-Q3")
    assert started.status_code == 303 and "Backfill" in started.headers["location"]
    assert client.triggered == [("sage_backfill", {"company_id": company, "synced_from": "2025-Q3"})]

    csrf = client.cookies.get("sage_csrf")
    unconfirmed = client.post("/sage/reset", data={"company_id": company, "csrf": csrf})
    assert unconfirmed.status_code == 400 and "confirm it explicitly" in unconfirmed.text
    wiped = client.post("/sage/reset", data={"company_id": company, "csrf": csrf, "confirm": "yes"})
    assert wiped.status_code == 303
    assert client.triggered[-1] == (f"sage_sync__{company}", None)
    assert warehouse.execute("select count(*) from sage_raw.purchase_invoices").fetchone() == (0,)
    assert warehouse.execute("select status from sage_control.companies").fetchone() == ("initial_sync",)


def test_pages_need_an_airflow_login(lenv: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    class _Manager:
        async def get_user_from_token(self, token: str) -> str:
            raise ValueError("bad token")

        def get_url_login(self, next_url: str) -> str:
            return f"/auth/login?next={next_url}"

    monkeypatch.setattr("airflow.api_fastapi.app.get_auth_manager", _Manager)
    parent = FastAPI()
    parent.mount("/sage", plugin.app)
    client = TestClient(parent, follow_redirects=False)
    client.cookies.set("_token", "forged")
    for path in ("/sage/", "/sage/authorize?purpose=connect", "/sage/callback?code=x&state=y"):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["location"].startswith("/auth/login"), path


def test_links_redirects_and_cookies_follow_a_sub_path_base_url(lenv: dict, sage: FakeSageServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow under a sub-path (``base_url = https://host/airflow``): every link, redirect and
    cookie path carries the prefix, none points at a bare ``/sage``."""
    parent = FastAPI()
    parent.mount("/sage", plugin.app)
    plugin.app.dependency_overrides[plugin.current_user] = lambda: "tester"
    plugin.app.dependency_overrides[plugin.edit_rights] = lambda: True
    try:
        client = TestClient(parent, follow_redirects=False, root_path="/airflow")
        page = client.get("/airflow/sage/")
        assert page.status_code == 200
        assert 'href="/airflow/sage/authorize?purpose=connect"' in page.text
        assert 'href="/airflow/"' in page.text and 'href="/sage/' not in page.text
        assert "Path=/airflow/sage" in page.headers["set-cookie"]
        start = client.get("/airflow/sage/authorize?purpose=connect")
        assert start.status_code == 303 and "Path=/airflow/sage" in start.headers["set-cookie"]
        consent = requests.get(start.headers["location"], allow_redirects=False, timeout=30)
        back = parse_qs(urlsplit(consent.headers["location"]).query)
        chosen = client.get(f"/airflow/sage/callback?code={back['code'][0]}&state={back['state'][0]}")
        assert chosen.status_code == 303 and chosen.headers["location"].startswith("/airflow/sage/choose?pending=")
        choose = client.get(chosen.headers["location"])
        assert 'action="/airflow/sage/register"' in choose.text
    finally:
        plugin.app.dependency_overrides.clear()
