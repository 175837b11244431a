"""The Sage connections pages in a real headless Chromium against a real ``airflow standalone``.

What the in-process test (tests/lifecycle/test_connect_plugin.py) cannot show: the plugin is
mounted by Airflow's api-server at /sage, an anonymous browser is sent to Airflow's own login
page, the real login form's JWT cookie is accepted by the plugin, and the whole connect flow
(Sage's authorise page with state and PKCE, the redirect back to /sage/callback, the business
and Synced From form with its CSRF cookie) works with a browser's cookies and redirects.
Then the company is disconnected through its button.

Skipped when /usr/bin/chromium is missing (install it with ``scripts/ensure_chromium.sh``).
Screenshots of every step are saved in the test's tmp dir (printed with ``-s`` / on failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from psycopg import sql

from sandbox.fake_sage.server import FakeSageServer, free_port
from scripts.deployment import descendants, kill_strays

from .cdp import CHROMIUM, Page, chromium

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is absent: run scripts/ensure_chromium.sh (as root) to run the browser test",
)

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get("SAGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BUSINESS = "Greenleaf Bakery Ltd"
QUARTER = "2025-Q1"
STARTUP_TIMEOUT = 180.0  # four Airflow processes importing at once on a loaded CI box


class Airflow:
    """A running ``airflow standalone``: its URL, home and log."""

    def __init__(self, url: str, home: Path, log: Path) -> None:
        self.url = url
        self.home = home
        self.log = log

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def admin_password(self) -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]


@pytest.fixture
def metadata_db() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for Airflow's metadata, dropped afterwards."""
    name = f"sage_browser_{secrets.token_hex(5)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    p = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    yield (
        f"postgresql+psycopg://{p.get('user', 'postgres')}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{name}"
    )
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def airflow(
    tmp_path: Path, metadata_db: str, pg_dsn: str, warehouse: psycopg.Connection
) -> Iterator[tuple[Airflow, FakeSageServer]]:
    """``airflow standalone`` on a free port over this repo's DAGs and plugins, with the fake Sage.

    ``warehouse`` empties the test warehouse first: tests run before this one in the session
    leave their companies there, and the flow starts from "No company is connected yet"."""
    port = free_port()
    url = f"http://localhost:{port}"
    home = tmp_path / "airflow_home"
    home.mkdir()
    w = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    with FakeSageServer(seed=5) as sage:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW_CONN_SAGE_WAREHOUSE": json.dumps(
                {
                    "conn_type": "postgres",
                    "host": w.get("host", "127.0.0.1"),
                    "port": int(w.get("port", 5432)),
                    "login": w.get("user", "postgres"),
                    "schema": w["dbname"],
                }
            ),
            "AIRFLOW_CONN_SAGE_DEFAULT": sage.airflow_conn_json(f"{url}/sage/callback"),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
            # standalone starts its components as `airflow ...` by name
            "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",  # the log shows each component as it starts
            # a busy 2-core machine: parse the DAGs once, one file at a time
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            # the scheduler's and triggerer's log servers default to 8793/8794: never clash with a dev Airflow
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
        log = tmp_path / "standalone.log"
        started = time.monotonic()
        # No separate `airflow db migrate`: standalone migrates the empty database itself before it
        # starts any component, and one Airflow start-up less is ~10-15 s on a busy 2-core machine.
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(VENV_BIN / "airflow"), "standalone"],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            instance = Airflow(url, home, log)
            try:
                _wait_until_up(instance, process, started)
                print(f"airflow standalone up in {time.monotonic() - started:.1f}s at {url}")
                yield instance, sage
            finally:
                _stop(process)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet  # noqa: PLC0415

    return Fernet.generate_key().decode()


def _wait_until_up(instance: Airflow, process: subprocess.Popen[bytes], started: float) -> None:
    while time.monotonic() - started < STARTUP_TIMEOUT:
        if process.poll() is not None:
            pytest.fail(f"airflow standalone exited with {process.returncode}:\n{instance.tail()}")
        try:
            if requests.get(f"{instance.url}/api/v2/version", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"the api-server did not answer /api/v2/version in {STARTUP_TIMEOUT}s:\n{instance.tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop standalone, every component it started (they share its process group) and the task
    processes below them (each in a group of its own: a transform still building would go on
    writing into the session's warehouse while the next test empties and rebuilds it)."""
    tree = descendants(process.pid)
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # components that outlived standalone, too
        process.wait(10)
    kill_strays(tree)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with chromium(tmp_path / "chromium-profile") as browser_page:
        yield browser_page


def _status(page: Page, company_id: str) -> str | None:
    return page.eval(
        f"(() => {{ const c = document.querySelector('#company-{company_id} .status');"
        " return c ? c.innerText.trim() : null; })()"
    )


def _select(page: Page, selector: str, value: str) -> None:
    """Pick ``value`` in a <select> as a user would (the change event fires)."""
    page.eval(
        f"(() => {{ const s = document.querySelector({json.dumps(selector)}); s.value = {json.dumps(value)};"
        " s.dispatchEvent(new Event('change', {bubbles: true})); })()"
    )


def _section(page: Page, company_id: str) -> str | None:
    """The id of the status heading above the company's table."""
    return page.eval(
        f"(() => {{ const r = document.querySelector('#company-{company_id}');"
        " const h = r && r.closest('table').previousElementSibling; return h ? h.id : null; })()"
    )


def test_connect_and_disconnect_a_business_in_a_browser(
    airflow: tuple[Airflow, FakeSageServer], page: Page, pg_dsn: str, tmp_path: Path
) -> None:
    af, sage = airflow
    company_id = next(b["id"] for b in sage.admin.businesses() if b["name"] == BUSINESS)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        _flow(af, page, company_id, shots, pg_dsn)
    except Exception:
        page.screenshot(shots / "failure.png")
        print(f"screenshots in {shots}\nchromium:\n{page.console()}\nairflow:\n{af.tail()}")
        raise
    print(f"screenshots in {shots}")


def _flow(af: Airflow, page: Page, company_id: str, shots: Path, pg_dsn: str) -> None:
    # 1. Anonymous: the plugin sends the browser to Airflow's own login page.
    page.goto(f"{af.url}/sage/")
    page.wait_for(
        "location.pathname === '/auth/login' && !!document.querySelector('input[name=password]')",
        "Airflow's login form",
    )
    assert "next=" in page.location() and "%2Fsage%2F" in page.location()
    page.screenshot(shots / "01-login.png")

    # 2. The real login form: the SPA stores the JWT cookie and goes back to /sage/.
    page.type_into("input[name=username]", "admin")
    page.type_into("input[name=password]", af.admin_password())
    page.click("button[type=submit]")
    page.wait_for(
        "location.pathname === '/sage/' && !!document.querySelector('#connect')",
        "the Sage connections page after logging in",
    )
    assert "No company is connected yet" in page.text()
    page.screenshot(shots / "02-sage-list-empty.png")

    # 3. Connect: /sage/authorize -> the fake Sage's authorise page (consents at once) -> /sage/callback
    #    -> /sage/choose.
    page.click("#connect")
    page.wait_for(
        "location.pathname === '/sage/choose' && !!document.querySelector('#business')",
        "the business and Synced From form after Sage's consent",
    )
    options = page.eval("[...document.querySelectorAll('#business option')].map(o => o.innerText)")
    assert BUSINESS in options, options
    page.screenshot(shots / "03-choose.png")

    # 4. Pick the business and the quarter, submit.
    picked = page.eval(
        f"(() => {{ const s = document.querySelector('#business');"
        f" const o = [...s.options].find(o => o.innerText === {json.dumps(BUSINESS)});"
        " s.value = o.value; s.dispatchEvent(new Event('change', {bubbles: true}));"
        " return s.value; })()"
    )
    assert picked == company_id
    quarters = page.eval("[...document.querySelectorAll('#synced_from option')].map(o => o.value)")
    assert QUARTER in quarters and quarters == sorted(quarters, reverse=True), quarters  # a list, newest first
    _select(page, "#synced_from", QUARTER)
    assert page.eval("document.querySelector('#synced_from').value") == QUARTER
    page.click("#register")
    page.wait_for(
        f"location.pathname === '/sage/' && !!document.querySelector('#company-{company_id}')",
        "the company on the Sage connections page",
    )
    text = page.text()
    assert f"Connected {BUSINESS} from {QUARTER}" in text, text
    assert _status(page, company_id) == "initial_sync"
    assert _section(page, company_id) == "status-initial_sync"
    page.screenshot(shots / "04-connected.png")

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "select company_name, status, synced_from_quarter from sage_control.companies where company_id = %s",
            (company_id,),
        ).fetchone()
        assert row == (BUSINESS, "initial_sync", QUARTER)
        tokens = conn.execute(
            "select access_token_enc, refresh_token_enc from sage_control.oauth_tokens where company_id = %s",
            (company_id,),
        ).fetchone()
        assert tokens is not None and all(tokens), "no tokens stored for the company"
        assert conn.execute("select count(*) from sage_control.pending_authorisations").fetchone() == (0,)

    _dashboard_company_page_and_forms(af, page, company_id, shots, pg_dsn)

    # 5. Disconnect through its button (CSRF form): status disconnected, grant revoked at Sage.
    page.click(f"#disconnect-{company_id}")
    page.wait_for(
        f"location.pathname === '/sage/' && !!document.querySelector('#status-disconnected')"
        f" && !!document.querySelector('#company-{company_id}')",
        "the company listed as disconnected",
    )
    text = page.text()
    assert f"Disconnected {BUSINESS}" in text and "grant revoked at Sage" in text, text
    assert _status(page, company_id) == "disconnected"
    assert _section(page, company_id) == "status-disconnected"
    page.screenshot(shots / "05-disconnected.png")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute(
            "select status from sage_control.companies where company_id = %s", (company_id,)
        ).fetchone() == ("disconnected",)


AIRFLOW_RUN = "manual__browser_2025-01-01"


def _dashboard_company_page_and_forms(af: Airflow, page: Page, company_id: str, shots: Path, pg_dsn: str) -> None:
    """The dashboard's run history and its links into Airflow, the company page, the menu entry
    inside Airflow's UI, and the Move Synced From and Reset forms."""
    dag_id = f"sage_sync__{company_id}"
    # Two runs as the company DAG's tasks record them (the sync-run id carries the Airflow run id):
    # a finished one, and a first sync under way whose streams do and do not report $total.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # as if it had been connected three hours ago, when its first sync began
        conn.execute(
            "update sage_control.companies set created_at = now() - interval '3 hours' where company_id = %s",
            (company_id,),
        )
        conn.execute(
            "insert into sage_control.sync_runs (sync_run_id, company_id, kind, status, started_at, ended_at, stats) "
            "values (%s, %s, 'daily', 'failed', now() - interval '2 hours', now() - interval '119 minutes', %s), "
            "(%s, %s, 'daily', 'running', now() - interval '10 minutes', null, %s)",
            (
                f"{company_id}:{AIRFLOW_RUN}",
                company_id,
                json.dumps(
                    {"ledger_accounts": {"pages": 1, "rows_seen": 49, "versions_added": 49, "total_reported": 49}}
                ),
                f"{company_id}:manual__browser_2025-01-02",
                company_id,
                json.dumps(
                    {
                        "purchase_invoices": {"pages": 3, "rows_seen": 600, "total_reported": 1200},
                        "contacts": {"pages": 1, "rows_seen": 22},
                    }
                ),
            ),
        )

    # The dashboard: the name (not the id) links to the company page; progress adds up per stream.
    page.goto(f"{af.url}/sage/")
    page.wait_for(f"!!document.querySelector('#company-{company_id} .company-link')", "the company's link")
    assert page.eval(f"document.querySelector('#company-{company_id} .company-link').innerText") == BUSINESS
    progress = page.eval(f"document.querySelector('#company-{company_id} .progress').innerText")
    assert "600 of 1,200 records (50%)" in progress and "22 in streams that report no total" in progress, progress
    assert "to go" in progress and "flagged if not complete within 24 hours" in progress, progress
    links = page.eval(f"[...document.querySelectorAll('#history-{company_id} a')].map(a => a.pathname)")
    assert f"/dags/{dag_id}/runs/{AIRFLOW_RUN}" in links, links
    assert f"/dags/{dag_id}/runs/{AIRFLOW_RUN}/tasks/extract_load" in links, links
    page.eval(f"document.querySelector('#history-{company_id}').closest('details').open = true")
    page.screenshot(shots / "04a-dashboard.png")

    # A history link opens the run's task in Airflow's own UI.
    page.click(f"#history-{company_id} a.log-link")
    page.wait_for(
        f"location.pathname === '/dags/{dag_id}/runs/manual__browser_2025-01-02/tasks/extract_load'",
        "Airflow's task page of the run",
    )
    page.wait_for(
        "!!document.querySelector('#root') && document.querySelector('#root').innerText.length > 0",
        "Airflow's UI rendering the run",
    )

    # The company page: streams, history, sync health, exceptions.
    page.goto(f"{af.url}/sage/")
    page.click(f"#company-{company_id} .company-link")
    page.wait_for(
        f"location.pathname === '/sage/company/{company_id}' && !!document.querySelector('#streams')",
        "the company page",
    )
    for section in (
        "#initial-sync",
        "#streams",
        "#history",
        "#sync-health",
        "#non-gbp",
        "#void-draft",
        "#quarantined",
        "#stream-purchase_invoices",
        "#stream-contacts",
    ):
        assert page.eval(f"!!document.querySelector({json.dumps(section)})"), section
    assert page.eval("document.querySelector('h1').innerText") == BUSINESS
    streams = page.eval("document.querySelector('#stream-contacts').innerText")
    assert "not reported" in streams, streams
    page.screenshot(shots / "04b-company.png")

    # The menu entry: a top-level item of Airflow's navigation showing the page inside Airflow's UI.
    page.goto(f"{af.url}/")
    page.wait_for(
        "!!document.querySelector('a[href$=\"plugin/sage-connections\"]')",
        "the Sage connections entry in Airflow's navigation",
    )
    page.click('a[href$="plugin/sage-connections"]')
    page.wait_for(
        "location.pathname.startsWith('/plugin/sage-connections') && (() => {"
        " const f = document.querySelector('iframe');"
        " return !!(f && f.contentDocument && f.contentDocument.querySelector('#summary')); })()",
        "the dashboard inside Airflow's UI",
    )
    page.screenshot(shots / "04c-in-airflow.png")

    # Move Synced From (an active company): the company, its quarter, only the earlier quarters allowed.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # as if its first sync had completed
        conn.execute(
            "update sage_control.sync_runs set status = 'success', ended_at = now() where company_id = %s "
            "and status = 'running'",
            (company_id,),
        )
        conn.execute("update sage_control.companies set status = 'active' where company_id = %s", (company_id,))
    page.goto(f"{af.url}/sage/company/{company_id}")
    page.click(f"#synced-from-{company_id}")
    page.wait_for(
        "location.pathname === '/sage/synced-from' && !!document.querySelector('#synced_from')",
        "the Move Synced From form",
    )
    current = page.eval("document.querySelector('#current').innerText")
    assert BUSINESS in current and QUARTER in current, current
    offered = page.eval("[...document.querySelectorAll('#synced_from option')].map(o => o.value)")
    assert offered[0] == "2024-Q4" and QUARTER not in offered and offered == sorted(offered, reverse=True), offered
    page.screenshot(shots / "04d-synced-from.png")
    _select(page, "#synced_from", "2024-Q2")
    page.click("#check")
    page.wait_for("!!document.querySelector('#warning')", "the backfill warning")
    warning = page.eval("document.querySelector('#warning').innerText")
    assert "2024-04-01 to 2024-12-31" in warning and BUSINESS in warning, warning
    assert page.eval("!!document.querySelector('#confirm')")

    # Reset without ticking the box: refused in the page's words, nothing wiped.
    page.goto(f"{af.url}/sage/reset?company_id={company_id}")
    page.click("#do-reset")
    page.wait_for("!!document.querySelector('#error')", "the reset refusal")
    refusal = page.eval("document.querySelector('#error').innerText")
    assert "ticking the box" in refusal and "--yes" not in refusal, refusal
    page.screenshot(shots / "04e-reset-refused.png")
    page.goto(f"{af.url}/sage/")
    page.wait_for(f"!!document.querySelector('#disconnect-{company_id}')", "the dashboard again")
