"""A new user's walk through the Sage connections pages: real headless Chromium, real ``airflow standalone``.

What the in-process test (tests/web/test_connect_plugin.py) cannot show, walked as a new
user would on the demo (the fake Sage with its consent page and its second user, whose business
is not connected yet):

1. Airflow's own login page, then the empty dashboard;
2. **connect**: Sage's consent page (sign in as the second user, Allow), the business and Synced
   From form, the company on the dashboard;
3. **first sync**, by Airflow's scheduler: Sage answers 503 on one stream, and the page says the
   stream is retrying, when, and why; the task is cleared in Airflow as a person would, and the
   sync completes. Every "task log" link is checked against the real api-server (each stream's
   own mapped instance) and one is opened in Airflow's UI;
4. **move Synced From** earlier: the warning, a fresh consent, the backfill DAG; Synced From
   moves when it succeeds;
5. **disconnect**, after its confirmation page; 6. **reconnect**, which starts the catch-up run;
7. the menu entry inside Airflow's UI, its label whole.

Skipped when /usr/bin/chromium is missing (install it with ``scripts/ensure_chromium.sh``).
Screenshots of every step go to ``$SAGE_BROWSER_SHOTS`` (the README's are made with
``SAGE_BROWSER_SHOTS=docs``), else the test's tmp dir (printed with ``-s`` / on failure).
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

from sage_sync.core.config import warehouse_conn_json
from sage_sync.core.pools import POOLS
from sage_sync.sage.streams import STREAMS
from sandbox.fake_sage.server import FakeSageServer, free_port
from scripts.deployment import descendants, kill_strays

from .cdp import CHROMIUM, Page, chromium

pytestmark = [
    # a real standalone Airflow: the marker also has xdist hand this long file out first
    pytest.mark.airflow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"{CHROMIUM} is absent: run scripts/ensure_chromium.sh (as root) to run the browser test",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get("SAGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The demo's second Sage user and the business the demo leaves unconnected (sandbox/fake_sage/seed.py).
USER = "other@example.com"
BUSINESS = "Harbour Cafe Ltd"
QUARTER = "2026-Q1"
EARLIER = "2025-Q3"
FAILING_STREAM = "purchase_credit_notes"  # Sage answers 503 here during the first sync's first try
STARTUP_TIMEOUT = 180.0  # four Airflow processes importing at once on a loaded CI box
RUN_TIMEOUT = 420.0  # a DAG run's tasks, each a process, on a loaded 2-core CI box


class Airflow:
    """A running ``airflow standalone``: its URL, home and log."""

    def __init__(self, url: str, home: Path, log: Path, env: dict[str, str]) -> None:
        self.url = url
        self.home = home
        self.log = log
        self.env = env

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def admin_password(self) -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]

    def api(self, method: str, path: str, **kwargs: object) -> requests.Response:
        """Airflow's REST API (``/api/v2``) as the admin user."""
        token = requests.post(
            f"{self.url}/auth/token", json={"username": "admin", "password": self.admin_password()}, timeout=30
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        return requests.request(method, f"{self.url}/api/v2{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def airflow(self, *args: str) -> None:
        """An ``airflow`` CLI command in this Airflow's settings (e.g. ``dags reserialize``)."""
        done = subprocess.run(
            [str(VENV_BIN / "airflow"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


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
    # The demo's fake Sage: its consent page and two users (scaled down: a first sync in seconds).
    with FakeSageServer(seed=42, consent="screen", scale=0.3) as sage:
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
            "AIRFLOW_CONN_SAGE_WAREHOUSE": warehouse_conn_json(pg_dsn),
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
            instance = Airflow(url, home, log, env)
            try:
                _wait_until_up(instance, process, started)
                # Every Sage-calling task takes a slot of its lane's pool (`make airflow-db` creates
                # them): a first sync's tasks sage_history's, the daily runs' sage_api's.
                for declared in POOLS:
                    pool = instance.api("POST", "/pools", json={"name": declared.name, "slots": declared.slots})
                    assert pool.status_code == 201, pool.text
                print(f"airflow standalone up in {time.monotonic() - started:.1f}s at {url}")
                yield instance, sage
            finally:
                _stop(process)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

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


def _query(pg_dsn: str, query: str, *params: object) -> tuple | None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()


def _until(what: str, check: object, timeout: float = RUN_TIMEOUT) -> object:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()  # type: ignore[operator]
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Shots:
    """Screenshots of the walk, numbered in order: ``walk-01-consent.png`` ..."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page, self.folder, self.count = page, folder, 0

    def take(self, name: str, *, full_page: bool = False) -> None:
        self.count += 1
        self.page.screenshot(self.folder / f"walk-{self.count:02d}-{name}.png", full_page=full_page)


def test_a_new_user_walks_connect_first_sync_move_disconnect_reconnect(
    airflow: tuple[Airflow, FakeSageServer], page: Page, pg_dsn: str, tmp_path: Path
) -> None:
    af, sage = airflow
    company_id = next(b["id"] for b in sage.admin.businesses() if b["name"] == BUSINESS)
    folder = Path(os.environ.get("SAGE_BROWSER_SHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("walk-*.png"):
        old.unlink()
    shots = Shots(page, folder)
    try:
        _walk(af, sage, page, company_id, shots, pg_dsn)
    except Exception:
        page.screenshot(tmp_path / "failure.png")
        print(f"screenshots in {folder}, failure in {tmp_path}\nchromium:\n{page.console()}\nairflow:\n{af.tail()}")
        raise
    print(f"screenshots in {folder}")


def _consent(page: Page, shots: Shots | None = None) -> None:
    """At the fake Sage's consent page: sign in as the demo's second user and Allow."""
    page.wait_for("!!document.querySelector('#allow')", "Sage's consent page")
    page.click(f"input[name=login][value={json.dumps(USER)}]")
    assert page.eval(f"document.querySelector('input[value={json.dumps(USER)}]').checked")
    if shots:
        shots.take("consent")
    page.click("#allow")


def _walk(af: Airflow, sage: FakeSageServer, page: Page, company_id: str, shots: Shots, pg_dsn: str) -> None:
    dag_id = f"sage_sync__{company_id}"
    # 1. Anonymous: the plugin sends the browser to Airflow's own login page; the real login form.
    page.goto(f"{af.url}/sage/")
    page.wait_for(
        "location.pathname === '/auth/login' && !!document.querySelector('input[name=password]')",
        "Airflow's login form",
    )
    assert "next=" in page.location() and "%2Fsage%2F" in page.location()
    page.type_into("input[name=username]", "admin")
    page.type_into("input[name=password]", af.admin_password())
    page.click("button[type=submit]")
    page.wait_for(
        "location.pathname === '/sage/' && !!document.querySelector('#connect')",
        "the Sage connections page after logging in",
    )
    assert "No company is connected yet" in page.text()

    # 2. Connect: Sage's consent page (a person decides), then the business and Synced From form.
    page.click("#connect")
    _consent(page, shots)
    page.wait_for(
        "location.pathname === '/sage/choose' && !!document.querySelector('#business')",
        "the business and Synced From form after Sage's consent",
    )
    options = page.eval("[...document.querySelectorAll('#business option')].map(o => o.innerText)")
    assert options == [BUSINESS], options  # the second user's one business, not connected yet
    _select(page, "#synced_from", QUARTER)
    shots.take("choose")
    # Sage will answer 503 on one stream until the client gives up, in the first sync to come.
    sage.admin.add_fault("503", path=f"/{FAILING_STREAM}", count=6, retry_after=0, business=company_id)
    page.click("#register")
    page.wait_for(
        f"location.pathname === '/sage/' && !!document.querySelector('#company-{company_id}')",
        "the company on the Sage connections page",
    )
    assert f"Connected {BUSINESS} from {QUARTER}" in page.text()
    assert _status(page, company_id) == "First sync" and _section(page, company_id) == "status-initial_sync"
    shots.take("connected")

    # 3. The first sync, by Airflow's scheduler once it has parsed the new company's DAG. Sage
    #    answers 503 on one stream until the client gives up: the sync task reads the others, then
    #    waits for its retry.
    af.airflow("dags", "reserialize")
    row = f"#stream-{FAILING_STREAM}"
    page.goto(f"{af.url}/sage/company/{company_id}")

    def retrying() -> bool:
        page.goto(f"{af.url}/sage/company/{company_id}")
        page.wait_for(f"!!document.querySelector('{row}')", "the company page")
        return "retrying at" in page.eval(f"document.querySelector('{row}').innerText")

    _until(f"{FAILING_STREAM} retrying on the company page", retrying)
    said = page.eval(f"document.querySelector('{row}').innerText")
    assert 'after "Sage answered 503"' in said, said
    shots.take("first-sync-retrying", full_page=True)
    page.goto(f"{af.url}/sage/")
    page.wait_for(f"!!document.querySelector('#trouble-{company_id}-{FAILING_STREAM}')", "the stream in trouble")
    progress = page.eval(f"document.querySelector('#company-{company_id} .progress').innerText")
    assert "retrying" in progress and "(100%)" not in progress, progress
    shots.take("dashboard-retrying")

    # A person clears the waiting task in Airflow instead of waiting for its retry; the sync completes.
    run_id = af.api("GET", f"/dags/{dag_id}/dagRuns").json()["dag_runs"][0]["dag_run_id"]
    cleared = af.api(
        "POST",
        f"/dags/{dag_id}/clearTaskInstances",
        json={
            "dry_run": False,
            "only_failed": False,
            "reset_dag_runs": False,
            "dag_run_id": run_id,
            "task_ids": ["sync"],
        },
    )
    assert cleared.ok, cleared.text
    _until(
        "the first sync to complete",
        lambda: (
            _query(pg_dsn, "select status from sage_control.companies where company_id = %s", company_id) == ("active",)
        ),
    )

    # Every "task log" link opens a task instance the real api-server has: the run's one sync task.
    page.goto(f"{af.url}/sage/company/{company_id}")
    page.wait_for("!!document.querySelector('a.stream-log')", "the streams' task-log links")
    links = page.eval("[...document.querySelectorAll('a.stream-log')].map(a => a.pathname)")
    assert len(links) == len(STREAMS), links
    history = page.eval(f"[...document.querySelectorAll('#history-{company_id} a.log-link')].map(a => a.pathname)")
    assert history, "the history has no task-log link"
    for link in [*links, *history]:
        dag, run, task, mapped = _ui_task(link)
        assert (task, mapped) == ("sync", None), link
        found = af.api("GET", f"/dags/{dag}/dagRuns/{run}/taskInstances/{task}")
        assert found.status_code == 200 and found.json()["state"] == "success", (link, found.text)
    assert page.eval(f"document.querySelector('#history-{company_id} .run-kind').innerText") == "first sync"
    shots.take("company-after-first-sync", full_page=True)
    page.click(f"{row} a.stream-log")
    page.wait_for(
        f"location.pathname.endsWith('/tasks/sync') && document.body.innerText.includes({json.dumps(FAILING_STREAM)})",
        "Airflow's page of the task that read the stream, its log",
        timeout=60,
    )
    time.sleep(2)  # its log panel
    assert "was not found" not in page.text(), page.text()[:1500]
    shots.take("task-log-in-airflow")

    # 4. Move Synced From earlier: the warning, a fresh consent, the backfill; Synced From moves on success.
    page.goto(f"{af.url}/sage/company/{company_id}")
    page.click(f"#synced-from-{company_id}")
    page.wait_for("!!document.querySelector('#synced_from')", "the Move Synced From form")
    _select(page, "#synced_from", EARLIER)
    page.click("#check")
    page.wait_for("!!document.querySelector('#warning')", "the backfill warning")
    warning = page.eval("document.querySelector('#warning').innerText")
    assert "2025-07-01 to 2025-12-31" in warning and BUSINESS in warning, warning
    shots.take("move-synced-from-warning")
    page.click("#confirm")
    _consent(page)
    page.wait_for("!!document.querySelector('#message')", "the backfill banner")
    banner = page.eval("document.querySelector('#message').innerText")
    assert f"Backfill of {BUSINESS} to {EARLIER} authorised" in banner and "the backfill run started" in banner, banner
    moved = "select synced_from_quarter from sage_control.companies where company_id = %s"
    _until("Synced From to move", lambda: _query(pg_dsn, moved, company_id) == (EARLIER,))
    # The transform (scheduled on the syncs' Asset) builds the marts: wait until they show this company.
    built = "select to_regclass('analytics.rpt_sync_health'), to_regclass('analytics.rpt_emissions_coverage')"
    fresh = "select count(*) from analytics.rpt_sync_health where company_id = %s and freshness_status = 'fresh'"
    emitted = "select count(*) from analytics.rpt_emissions_coverage where company_id = %s"
    _until(
        "the marts built after the first sync",
        lambda: (
            None not in (_query(pg_dsn, built) or (None,))
            and _query(pg_dsn, fresh, company_id) != (0,)
            and _query(pg_dsn, emitted, company_id) != (0,)
        ),
    )
    page.goto(f"{af.url}/sage/company/{company_id}")
    page.wait_for("!!document.querySelector('#health-purchase_invoices')", "sync health")
    assert page.eval("document.querySelector('#company-synced-from').innerText").startswith(EARLIER)
    shots.take("company-after-backfill", full_page=True)

    # 5. Disconnect asks first: it revokes the grant at Sage.
    page.goto(f"{af.url}/sage/")
    page.click(f"#disconnect-{company_id}")
    page.wait_for("!!document.querySelector('#do-disconnect')", "the Disconnect confirmation")
    assert "revokes its grant at Sage" in page.eval("document.querySelector('#warning').innerText")
    shots.take("disconnect-confirm")
    page.click("#do-disconnect")
    page.wait_for(
        f"location.pathname === '/sage/' && !!document.querySelector('#status-disconnected')"
        f" && !!document.querySelector('#company-{company_id}')",
        "the company listed as disconnected",
    )
    text = page.text()
    assert f"Disconnected {BUSINESS}" in text and "grant revoked at Sage" in text, text
    assert _status(page, company_id) == "Disconnected"
    shots.take("disconnected")

    # 6. Reconnect: a fresh consent, and the catch-up run starts now (not at midnight).
    runs_before = af.api("GET", f"/dags/{dag_id}/dagRuns").json()["total_entries"]
    page.click(f"#reconnect-{company_id}")
    _consent(page)
    page.wait_for("!!document.querySelector('#message')", "the reconnect banner")
    banner = page.eval("document.querySelector('#message').innerText")
    assert f"Reconnected {BUSINESS}" in banner and "the catch-up run started" in banner, banner
    assert af.api("GET", f"/dags/{dag_id}/dagRuns").json()["total_entries"] == runs_before + 1
    assert _status(page, company_id) == "Active" and not page.eval(f"!!document.querySelector('#problem-{company_id}')")
    shots.take("reconnected", full_page=True)

    # 7. The menu entry: a top-level item of Airflow's navigation, its label whole, the page inside Airflow.
    page.goto(f"{af.url}/")
    link = 'a[href$="plugin/sage-connections"]'
    page.wait_for(f"!!document.querySelector('{link}')", "the Sage entry in Airflow's navigation")
    label = page.eval(f"document.querySelector('{link}').innerText.trim()")
    assert label == "Sage", label
    page.click(link)
    page.wait_for(
        "location.pathname.startsWith('/plugin/sage-connections') && (() => {"
        " const f = document.querySelector('iframe');"
        " return !!(f && f.contentDocument && f.contentDocument.querySelector('#summary')); })()",
        "the dashboard inside Airflow's UI",
    )
    time.sleep(1)
    shots.take("in-airflow")

    # Reset without ticking the box: refused in the page's words, nothing wiped.
    page.goto(f"{af.url}/sage/reset?company_id={company_id}")
    page.click("#do-reset")
    page.wait_for("!!document.querySelector('#error')", "the reset refusal")
    refusal = page.eval("document.querySelector('#error').innerText")
    assert "ticking the box" in refusal and "--yes" not in refusal, refusal


def _ui_task(path: str) -> tuple[str, str, str, str | None]:
    """``/dags/D/runs/R/tasks/T[/mapped[/I]]`` -> (D, R, T, I or None), each segment still quoted."""
    parts = path.strip("/").split("/")
    assert parts[0] == "dags" and parts[2] == "runs" and parts[4] == "tasks", path
    mapped = parts[7] if len(parts) > 7 else None
    return parts[1], parts[3], parts[5], mapped
