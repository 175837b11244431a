"""The Sage connections pages, in-process (FastAPI's test client) against the fake Sage.

Airflow's login is replaced by a fixed user here; the real login, cookie and api-server are
exercised by the browser test. What is checked: state and PKCE on the way to Sage, the
callback's state check, choosing a business and Synced From, status by section, disconnect,
reconnect, the backfill's validation, warning and trigger, and reset with confirmation.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from sage_sync.core.quarters import Quarter, quarters_between
from sage_sync.lifecycle import connections, inputs
from sage_sync.orchestration import airflow_api
from sage_sync.orchestration.schedule import DailyWindow, spread_minute
from sage_sync.pipeline import sync
from sage_sync.reporting import dashboard, status
from sage_sync.warehouse import registry
from sage_sync.web import pages
from sandbox.fake_sage.server import FakeSageServer
from tests.lifecycle_kit import business_id, fresh_code

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


def _authorize(client: TestClient, url: str, csrf: str | None = None):
    """POST /authorize (a link starts nothing): ``url``'s query as the form, with the CSRF token."""
    parts = urlsplit(url)
    if csrf is None:
        client.get(parts.path.rsplit("/", 1)[0] + "/")  # any page sets the CSRF cookie
        csrf = client.cookies.get("sage_csrf")
    form = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return client.post(parts.path, data={**form, "csrf": csrf})


def _banner(client: TestClient, response) -> str:
    """The banner of the page a redirect leads to."""
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"]).text
    start = page.find('id="message">')
    return page[start : page.find("</div>", start)] if start >= 0 else ""


def _through_sage(client: TestClient, sage: FakeSageServer, url: str, *, tamper: bool = False):
    start = _authorize(client, url)
    assert start.status_code == 303, start.text
    location = start.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"] and query["state"][0] and query["code_challenge"][0]
    consent = requests.get(location, allow_redirects=False, timeout=30)  # the user consents at Sage
    back = parse_qs(urlsplit(consent.headers["location"]).query)
    state = "forged" if tamper else back["state"][0]
    return client.get(f"/sage/callback?code={back['code'][0]}&state={state}")


def test_connect_status_disconnect_reconnect_backfill_reset(
    client: TestClient, sage: FakeSageServer, warehouse: psycopg.Connection
) -> None:
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
    refused = client.post(
        "/sage/register", data={"pending": pending, "business_id": company, "synced_from": "2026-Q9", "csrf": csrf}
    )
    assert refused.status_code == 400 and "malformed quarter" in refused.text
    assert (
        client.post(
            "/sage/register",
            data={"pending": pending, "business_id": company, "synced_from": "2026-Q1", "csrf": "wrong"},
        ).status_code
        == 400
    )
    done = client.post(
        "/sage/register", data={"pending": pending, "business_id": company, "synced_from": "2026-Q1", "csrf": csrf}
    )
    assert "Connected Northwind Joinery Ltd from 2026-Q1" in _banner(client, done)
    page = client.get("/sage/").text
    assert 'id="status-initial_sync"' in page and f'id="company-{company}"' in page

    sync.run_company(company)
    page = client.get("/sage/").text
    assert 'id="status-active"' in page and "pages" in page

    # Disconnect revokes the grant at Sage: a page says so and asks first; a bare POST does nothing.
    button = client.get("/sage/").text
    assert f'href="/sage/disconnect?company_id={company}"' in button
    unconfirmed = client.post("/sage/disconnect", data={"company_id": company, "csrf": client.cookies.get("sage_csrf")})
    assert unconfirmed.status_code == 400 and "confirm it on the Disconnect page" in unconfirmed.text
    assert warehouse.execute("select status from sage_control.companies").fetchone() == ("active",)
    confirm = client.get(f"/sage/disconnect?company_id={company}").text
    assert "revokes its grant at Sage" in confirm and 'id="do-disconnect"' in confirm and 'name="confirm"' in confirm
    out = client.post(
        "/sage/disconnect", data={"company_id": company, "csrf": client.cookies.get("sage_csrf"), "confirm": "yes"}
    )
    assert "grant revoked at Sage" in _banner(client, out)
    assert 'id="status-disconnected"' in client.get("/sage/").text

    # Reconnect starts the catch-up run at once (not at the next scheduled run).
    back = _through_sage(client, sage, f"/sage/authorize?purpose=reconnect&company_id={company}")
    banner = _banner(client, back)
    assert "Reconnected Northwind Joinery Ltd" in banner and "the catch-up run started" in banner, banner
    assert client.triggered == [(f"sage_sync__{company}", None)]
    client.triggered.clear()
    assert warehouse.execute("select status from sage_control.companies").fetchone() == ("active",)

    later = client.get(f"/sage/synced-from?company_id={company}&synced_from=2026-Q2")
    assert later.status_code == 400 and "later than the current" in later.text
    warning = client.get(f"/sage/synced-from?company_id={company}&synced_from=2025-Q3")
    assert 'id="warning"' in warning.text and "2025-07-01 to 2025-12-31" in warning.text
    started = _through_sage(client, sage, f"/sage/authorize?purpose=backfill&company_id={company}&synced_from=2025-Q3")
    assert "Backfill of Northwind Joinery Ltd to 2025-Q3" in _banner(client, started)
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
    for method, path in (("GET", "/sage/"), ("POST", "/sage/authorize"), ("GET", "/sage/callback?code=x&state=y")):
        response = client.request(method, path, data={"purpose": "connect"} if method == "POST" else None)
        assert response.status_code == 303 and response.headers["location"].startswith("/auth/login"), path


def test_links_redirects_and_cookies_follow_a_sub_path_base_url(
    lenv: dict, sage: FakeSageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
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
        assert 'action="/airflow/sage/authorize"' in page.text
        assert 'href="/airflow/"' in page.text and 'href="/sage/' not in page.text
        assert 'action="/sage/' not in page.text
        assert "Path=/airflow/sage" in page.headers["set-cookie"]
        start = _authorize(client, "/airflow/sage/authorize?purpose=connect", client.cookies.get("sage_csrf"))
        assert start.status_code == 303 and "Path=/airflow/sage" in start.headers["set-cookie"]
        consent = requests.get(start.headers["location"], allow_redirects=False, timeout=30)
        back = parse_qs(urlsplit(consent.headers["location"]).query)
        chosen = client.get(f"/airflow/sage/callback?code={back['code'][0]}&state={back['state'][0]}")
        assert chosen.status_code == 303 and chosen.headers["location"].startswith("/airflow/sage/choose?pending=")
        choose = client.get(chosen.headers["location"])
        assert 'action="/airflow/sage/register"' in choose.text
    finally:
        plugin.app.dependency_overrides.clear()


# -- the dashboard, the company page, the forms, and who may do what ------------------------------------


def _connected(sage: FakeSageServer, key: str = "northwind", quarter: str = "2026-Q1") -> str:
    company = business_id(sage, key)
    code, verifier = fresh_code(sage)
    connections.connect(code, verifier, company, quarter)
    return company


def test_dashboard_and_company_page_show_runs_with_airflow_links(
    client: TestClient, sage: FakeSageServer, monkeypatch: pytest.MonkeyPatch, warehouse: psycopg.Connection
) -> None:
    company = _connected(sage)
    nightly = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
    monkeypatch.setattr(airflow_api, "next_runs", lambda caller=None: {f"sage_sync__{company}": nightly})
    run_id = sync.begin_run(company, airflow_run_id="scheduled__2026-12-02T00:00:00+00:00", kind="daily")
    sync.run_steps(company, run_id)
    sync.run_company(company, kind="manual")  # outside Airflow: no link

    page = client.get("/sage/").text
    assert "Northwind Joinery Ltd" in page and f'href="/sage/company/{company}"' in page
    assert "2026-12-03 00:00 UTC" in re.sub(r"<[^>]+>", "", page)  # the next scheduled run, from Airflow
    history = page[page.index(f'id="history-{company}"') :]
    assert history.count('class="run"') == 2 and "run outside Airflow" in history
    airflow_run = "scheduled__2026-12-02T00%3A00%3A00%2B00%3A00"
    assert f'href="/dags/sage_sync__{company}/runs/{airflow_run}"' in history
    # The daily run reads every stream in its one task: the task log is that task's
    assert f'href="/dags/sage_sync__{company}/runs/{airflow_run}/tasks/sync"' in history
    assert "/mapped" not in history

    detail = client.get(f"/sage/company/{company}")
    assert detail.status_code == 200
    text = detail.text
    for section in (
        'id="streams"',
        'id="history"',
        'id="sync-health"',
        'id="non-gbp"',
        'id="void-draft"',
        'id="quarantined"',
        'id="stream-purchase_invoices"',
    ):
        assert section in text, section
    assert "Not built yet: it appears after the first sage_transform run" in text  # no dbt run here
    assert client.get("/sage/company/no-such-company").status_code == 404
    # When its daily run starts: its minute in the nightly window, until a time is set for it.
    spread = spread_minute(company, DailyWindow(0, 360))
    daily = text[text.index('id="company-daily-start"') :]
    assert daily.startswith(f'id="company-daily-start">{spread // 60:02d}:{spread % 60:02d} UTC'), daily[:200]
    assert "its place in the nightly window, 00:00-06:00 UTC" in daily[:300]
    connections.set_daily_start(company, "07:30")
    daily = client.get(f"/sage/company/{company}").text.split('id="company-daily-start">', 1)[1]
    assert daily.startswith("07:30 UTC") and "set for this company" in daily[:200]

    # A run older than Airflow keeps (the housekeeping DAG deleted it there): no link to a 404.
    monkeypatch.setenv("SAGE_AIRFLOW_RETENTION_DAYS", "7")
    warehouse.execute(
        "update sage_control.sync_runs set started_at = started_at - interval '8 days', "
        "ended_at = ended_at - interval '8 days' where sync_run_id = %s",
        (run_id,),
    )
    history = client.get("/sage/").text
    history = history[history.index(f'id="history-{company}"') :]
    assert f"/runs/{airflow_run}" not in history and "older than Airflow keeps" in history


def test_progress_compares_each_stream_with_its_own_total() -> None:
    """ "62 of 60": a stream without $total must not add records to one side only."""
    stats = {
        "purchase_invoices": {"pages": 1, "rows_seen": 40, "total_reported": 40},
        "contacts": {"pages": 1, "rows_seen": 22},  # Sage reported no $total
        "ledger_accounts": {"pages": 1, "rows_seen": 25, "total_reported": 20},  # a repeated pass
        "tax_rates": {"pages": 0, "rows_seen": 0, "total_reported": 20},
    }
    p = dashboard.progress(stats, elapsed_seconds=600)
    assert (p["records_done"], p["total"], p["records_untotalled"]) == (60, 80, 22)
    # The share counts every stream: two of nine read in full, five not started yet (it said 75%).
    assert p["share"] == 2 / 9 and p["eta_seconds"] == 2100
    by_name = {s["stream"]: s for s in p["streams"]}
    assert by_name["contacts"]["total"] is None and by_name["ledger_accounts"]["share"] == 1.0
    assert by_name["purchase_credit_notes"]["started"] is False
    html = pages.env.get_template("macros.html").module.progress_summary(p, {"company_id": "c", "initial_sync": None})
    assert "60 of 80 records" in html and "22 in streams that report no total" in html


def test_problems_say_what_to_do() -> None:
    reauth = dashboard.problem("needs_reauth", "invalid_grant", None)
    assert reauth["action"] == "reconnect" and "Reconnect" in reauth["fix"]
    failed = dashboard.problem("active", None, {"status": "failed", "kind": "daily", "error": "HTTP 500"})
    assert failed["action"] == "log" and "HTTP 500" in failed["words"]
    assert dashboard.problem("active", None, {"status": "success", "kind": "daily"}) is None


def test_move_synced_from_offers_only_the_allowed_quarters(client: TestClient, sage: FakeSageServer) -> None:
    company = _connected(sage, quarter="2026-Q1")
    sync.run_company(company)
    form = client.get(f"/sage/synced-from?company_id={company}")
    assert form.status_code == 200
    assert "Northwind Joinery Ltd" in form.text and "<strong>2026-Q1</strong>" in form.text
    offered = re.findall(r'<option value="([0-9]{4}-Q[1-4])">', form.text)
    floor = inputs.earliest_quarter()
    assert offered[0] == "2025-Q4" and offered[-1] == str(floor) and "2026-Q1" not in offered
    assert len(offered) == len(set(offered)) == len(quarters_between(Quarter.parse("2025-Q4"), floor))
    too_early = client.get(f"/sage/synced-from?company_id={company}&synced_from={floor.previous()}")
    assert too_early.status_code == 400 and "the earliest Synced From offered" in too_early.text

    csrf = client.cookies.get("sage_csrf")
    refused = client.post("/sage/reset", data={"company_id": company, "csrf": csrf})
    assert refused.status_code == 400 and "ticking the box" in refused.text and "--yes" not in refused.text
    unknown = client.get("/sage/reset?company_id=nobody")
    assert "unknown company" in unknown.text and "python -m" not in unknown.text


def test_names_are_escaped(client: TestClient, warehouse: psycopg.Connection) -> None:
    registry.register_company(warehouse, "abc123", "<script>alert(1)</script> & Sons", "2026-Q1")
    for path in ("/sage/", "/sage/company/abc123", "/sage/reset?company_id=abc123"):
        text = client.get(path).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Sons" in text, path
        assert "<script>alert" not in text, path


def test_a_hex_id_is_never_the_only_name(
    client: TestClient, sage: FakeSageServer, warehouse: psycopg.Connection
) -> None:
    company = _connected(sage)
    sync.run_company(company)  # lands the businesses record: Sage's name for it
    warehouse.execute("update sage_control.companies set company_name = company_id")
    assert dashboard.display_name(company, company, None) == company  # the last resort only
    page = client.get("/sage/").text
    assert "<strong>Northwind Joinery Ltd</strong>" in page


class _Manager:
    """An auth manager whose token is a viewer's: logged in, may not edit DAGs."""

    async def get_user_from_token(self, token: str) -> str:
        return "viewer" if token == "viewer-token" else _refuse(token)

    def is_authorized_dag(self, *, method: str, user: str, **_: object) -> bool:
        return method == "GET"

    def get_url_login(self, next_url: str) -> str:
        return f"/auth/login?next={next_url}"


def _refuse(token: str) -> str:
    raise ValueError(f"bad token {token}")


def test_every_route_is_closed_without_a_login_and_changes_need_the_editor_role(
    lenv: dict, sage: FakeSageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("airflow.api_fastapi.app.get_auth_manager", _Manager)
    plugin.app.get("/added-later")(lambda: "open")  # a route added the usual way, nobody thought to protect it
    added = plugin.app.router.routes[-1]
    try:
        parent = FastAPI()
        parent.mount("/sage", plugin.app)
        anonymous = TestClient(parent, follow_redirects=False)
        routes = [r for r in plugin.app.routes if isinstance(r, APIRoute)]
        assert len(routes) >= 12
        for route in routes:
            path = "/sage" + route.path.replace("{company_id}", "x")
            for method in route.methods:
                response = anonymous.request(method, path)
                assert response.status_code == 303, (method, path)
                assert response.headers["location"].startswith("/auth/login"), (method, path)
    finally:
        plugin.app.router.routes.remove(added)

    company = _connected(sage)
    viewer = TestClient(parent, follow_redirects=False)
    viewer.cookies.set("_token", "viewer-token")
    page = viewer.get("/sage/")
    assert page.status_code == 200 and 'id="read-only"' in page.text
    assert 'id="connect"' not in page.text and f'id="disconnect-{company}"' not in page.text
    assert viewer.get(f"/sage/company/{company}").status_code == 200
    csrf = viewer.cookies.get("sage_csrf")
    for method, path, data in (
        ("POST", "/sage/disconnect", {"company_id": company, "csrf": csrf, "confirm": "yes"}),
        ("GET", f"/sage/disconnect?company_id={company}", None),
        ("POST", "/sage/reset", {"company_id": company, "csrf": csrf, "confirm": "yes"}),
        ("POST", "/sage/authorize", {"purpose": "connect", "csrf": csrf}),
        ("GET", f"/sage/synced-from?company_id={company}", None),
        ("GET", f"/sage/reset?company_id={company}", None),
    ):
        refused = viewer.request(method, path, data=data)
        assert refused.status_code == 403, path
        assert "needs permission to edit DAGs" in refused.text and refused.headers["content-type"].startswith(
            "text/html"
        ), path
    assert connections.require_known(company).status == "initial_sync"  # nothing changed


def test_the_status_line_compares_like_with_like(lenv: dict, warehouse: psycopg.Connection) -> None:
    """The CLI's status line: no more "62 of 60 records" from a stream without $total."""
    registry.register_company(warehouse, "c1", "Acme Ltd", "2026-Q1")
    warehouse.execute(
        "insert into sage_control.sync_runs (sync_run_id, company_id, kind, stats) values ('r1', 'c1', 'daily', %s)",
        (
            json.dumps(
                {
                    "purchase_invoices": {"pages": 1, "rows_seen": 40, "total_reported": 40},
                    "ledger_accounts": {"pages": 1, "rows_seen": 20, "total_reported": 20},
                    "contacts": {"pages": 1, "rows_seen": 2},
                }
            ),
        ),
    )
    line = status.describe(status.company_statuses(warehouse)[0])
    assert "62 records (60 of 60 in the streams that report a total)" in line, line


def test_the_status_line_says_one_version_and_gives_times_in_utc(lenv: dict, warehouse: psycopg.Connection) -> None:
    """ "1 new versions" and a time without its zone were what a new user read first."""
    registry.register_company(warehouse, "c1", "Acme Ltd", "2026-Q1")
    warehouse.execute(
        "insert into sage_control.sync_runs (sync_run_id, company_id, kind, started_at, stats) "
        "values ('r1', 'c1', 'daily', '2026-12-07 09:30:00+00', %s)",
        (json.dumps({"purchase_invoices": {"pages": 1, "rows_seen": 1, "versions_added": 1, "total_reported": 1}}),),
    )
    warehouse.execute("set timezone = 'America/New_York'")  # the session's zone must not leak into the line
    line = status.describe(status.company_statuses(warehouse)[0])
    assert "at 2026-12-07 09:30 UTC" in line, line
    assert "1 page, 1 record (1 of 1 in the streams that report a total), 1 new version" in line, line


def test_a_stream_waiting_for_its_retry_is_visible_and_unstarted_streams_count(
    client: TestClient, sage: FakeSageServer, warehouse: psycopg.Connection
) -> None:
    """Sage answering 503 on one stream once read "running ... 59 of 59 records (100 %)" for five
    minutes. Each stream now says where it stands, and the share counts the streams not started."""
    from sage_sync.warehouse import stream_states

    company = _connected(sage)
    run_id = sync.begin_run(company, airflow_run_id="scheduled__2026-12-02T00:00:00+00:00", kind="daily")
    warehouse.execute(
        "update sage_control.sync_runs set stats = %s where sync_run_id = %s",
        (json.dumps({"ledger_accounts": {"pages": 1, "rows_seen": 59, "total_reported": 59}}), run_id),
    )
    retry_at = datetime(2026, 12, 2, 13, 15, tzinfo=UTC)
    stream_states.set_state(warehouse, run_id, "ledger_accounts", "done", try_number=1)
    stream_states.set_state(warehouse, run_id, "businesses", "done", try_number=1)
    stream_states.set_state(warehouse, run_id, "contacts", "reading", try_number=1)
    stream_states.set_state(
        warehouse, run_id, "purchase_invoices", "retrying", error="Sage answered 503", try_number=1, retry_at=retry_at
    )

    page = client.get("/sage/").text
    progress = page[page.index(f'id="company-{company}"') :]
    progress = progress[
        progress.index('class="progress"') : progress.index("</td>", progress.index('class="progress"'))
    ]
    progress = re.sub(r"<[^>]+>", "", progress)
    assert "2 of 9 streams done (22%)" in progress and "5 not started yet" in progress, progress
    assert "1 retrying" in progress and "100%" not in progress, progress
    assert "purchase_invoices retrying at 13:15 UTC after &#34;Sage answered 503&#34;" in progress, progress

    detail = client.get(f"/sage/company/{company}").text
    row = detail[detail.index('id="stream-purchase_invoices"') :]
    assert "retrying at 13:15 UTC after &#34;Sage answered 503&#34;" in row[: row.index("</tr>")]
    for stream, state in (("contacts", "reading"), ("ledger_accounts", "done"), ("tax_rates", "waiting")):
        row = detail[detail.index(f'id="stream-{stream}"') :]
        assert f">{state}</span>" in row[: row.index("</tr>")], (stream, row[: row.index("</tr>")])
    # Each stream links the log of the task that read it: the daily run's one sync task.
    airflow_run = "scheduled__2026-12-02T00%3A00%3A00%2B00%3A00"
    assert f'runs/{airflow_run}/tasks/sync"' in detail and "/mapped" not in detail
    # The history's task log opens the task of the stream in trouble.
    history = detail[detail.index('id="history-') :]
    assert f'class="log-link" href="/dags/sage_sync__{company}/runs/{airflow_run}/tasks/sync"' in history

    line = status.describe(status.company_statuses(warehouse)[0])
    assert 'purchase_invoices retrying at 13:15 UTC after "Sage answered 503"' in line and "5 waiting" in line, line


# -- what a new user tripped over (issue 24) -------------------------------------------------------


def test_one_wording_for_a_status_people_read(
    client: TestClient, sage: FakeSageServer, warehouse: psycopg.Connection
) -> None:
    """`needs_reauth` and "needs reauth" were both shown: people read one label, machines the enum."""
    company = _connected(sage)
    warehouse.execute("update sage_control.companies set status = 'needs_reauth' where company_id = %s", (company,))

    def words(html: str) -> str:  # what a person reads: the page's main part, without its markup
        return re.sub(r"<[^>]+>", " ", html.split("<main>", 1)[1])

    text = words(client.get("/sage/").text)
    assert "Needs re-authorisation" in text and "needs_reauth" not in text and "needs reauth" not in text.lower()
    detail = words(client.get(f"/sage/company/{company}").text)
    assert "Needs re-authorisation" in detail and "needs_reauth" not in detail
    item = status.company_statuses(warehouse)[0]
    assert item["status"] == "needs_reauth"  # `status --json`: the enum value
    assert ": needs re-authorisation, Synced From" in status.describe(item)


def test_none_never_reads_as_python_none() -> None:
    """The exception list's Status column showed Python's `None`."""
    rendered = pages.env.from_string("<td>{{ e.document_status }}</td><td>{{ e.gone }}</td>").render(
        e={"document_status": None}
    )
    assert rendered == "<td>-</td><td></td>" and "None" not in rendered


def test_a_company_not_in_gbp_says_so_instead_of_looking_late(
    client: TestClient, sage: FakeSageServer, warehouse: psycopg.Connection
) -> None:
    """Atlantic (base EUR) showed "no emissions yet", as if it were merely late."""
    company = _connected(sage, key="atlantic", quarter="2026-Q1")
    sync.run_company(company)
    note = "base currency EUR: not counted (GBP only)"
    cell = client.get("/sage/").text.split(f'id="emissions-{company}">', 1)[1].split("</div>", 1)[0]
    assert note in cell and "no emissions yet" not in cell, cell
    assert note in client.get(f"/sage/company/{company}").text
    assert note in status.describe(status.company_statuses(warehouse)[0])


def test_after_a_reconnect_the_old_failure_is_not_the_current_problem(
    client: TestClient, sage: FakeSageServer, warehouse: psycopg.Connection
) -> None:
    """ "last run failed: Sage refused the grant" stayed, with its advice, after the reconnect."""
    company = _connected(sage)
    run_id = sync.begin_run(company, kind="daily")
    warehouse.execute(
        "update sage_control.sync_runs set status = 'failed', ended_at = now(), error = 'Sage refused the grant' "
        "where sync_run_id = %s",
        (run_id,),
    )
    assert "Sage refused the grant" in client.get("/sage/").text.split(f'id="problem-{company}"', 1)[1]
    code, verifier = fresh_code(sage)
    connections.reconnect(company, code, verifier)
    page = client.get("/sage/").text
    assert f'id="problem-{company}"' not in page, page[page.index(f'id="company-{company}"') :][:2000]


def test_the_connect_form_marks_connected_businesses_and_offers_the_move(
    client: TestClient, sage: FakeSageServer, warehouse: psycopg.Connection
) -> None:
    """The form listed businesses already connected and dropped a different quarter silently."""
    company = _connected(sage, quarter="2026-Q1")
    sync.run_company(company)  # active: its Synced From can move
    chosen = _through_sage(client, sage, "/sage/authorize?purpose=connect")
    form = client.get(chosen.headers["location"]).text
    option = re.search(rf'<option value="{company}"[^>]*>([^<]*)</option>', form)
    assert option and "(connected already, Synced From 2026-Q1)" in option.group(1), form
    assert "keeps its Synced From" in form
    others = re.findall(r'<option value="[0-9a-f]{32}"[^>]*>([^<]*)</option>', form)
    assert others[0].endswith("Ltd"), others  # a new business first
    pending = parse_qs(urlsplit(chosen.headers["location"]).query)["pending"][0]
    done = client.post(
        "/sage/register",
        data={
            "pending": pending,
            "business_id": company,
            "synced_from": "2025-Q1",
            "csrf": client.cookies["sage_csrf"],
        },
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/sage/synced-from?"), done.headers
    move = client.get(done.headers["location"]).text
    assert "keeps Synced From 2026-Q1" in move and "To import from 2025-Q1" in move, move
    assert 'id="warning"' in move and "2025-01-01 to 2025-12-31" in move  # the move's own confirmation
    assert warehouse.execute("select synced_from_quarter from sage_control.companies").fetchone() == ("2026-Q1",)


def test_runs_say_what_they_did_and_sync_health_says_what_it_compared(
    client: TestClient, sage: FakeSageServer, warehouse: psycopg.Connection
) -> None:
    """The first sync and a reset's full sync read `daily`; "Sage's $total 1" sat beside "held 228"."""
    company = _connected(sage)
    sync.run_company(company, kind="daily")
    sync.run_company(company, kind="daily")
    run_id = connections.reset(company, confirm=True)
    connections.close_reset_run(run_id)
    sync.run_company(company, kind="daily")
    history = dashboard.company_page(company)["history"]
    labels = [r["label"] for r in history]
    assert labels == ["full re-import", "reset", "daily", "first sync"], labels
    # Each run says the lane its Sage work queued in: what read everything went in the history lane.
    assert [r["lane"] for r in history] == ["history", "history", "daily", "history"]
    line = status.describe(status.company_statuses(warehouse)[0])
    assert "last run (full re-import) success" in line and "in the history lane" in line
    page = client.get(f"/sage/company/{company}").text
    assert page.count('<td class="run-lane">history</td>') == 3 and page.count('<td class="run-lane">daily</td>') == 1

    window = dashboard._health_row(
        {"reconciliation_scope": "window_count", "total_reported": 1, "window_total": 228, "current_record_count": 228}
    )
    assert window["compared_with"] == 228 and window["compared"] == "Sage's count of the whole synced window"
    full = dashboard._health_row({"reconciliation_scope": "full_read", "total_reported": 50, "window_total": None})
    assert full["compared_with"] == 50
    detail = client.get(f"/sage/company/{company}").text
    assert "Deletions listed" in detail and "Deletions checked" in detail
    row = detail[detail.index('id="stream-purchase_invoices"') :]
    assert "newest deletion" in row[: row.index("</tr>")] or "UTC" in row[: row.index("</tr>")]


def test_the_menu_entry_fits_airflows_navigation() -> None:
    """ "Sage con…": Airflow's navigation cuts labels longer than about ten characters."""
    from sage_connect_plugin import SageConnectPlugin

    (view,) = SageConnectPlugin.external_views
    assert len(view["name"]) <= 10, view["name"]
