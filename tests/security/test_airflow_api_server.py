"""The Connect pages' security checks against a real ``airflow api-server`` with SimpleAuthManager.

The in-process tests (tests/security/test_connect_pages.py) replace Airflow's login and its REST
API; here both are Airflow's own, as under ``make airflow``: users log in at ``/auth/token``, the
plugin runs inside the api-server, and its pause, unpause and trigger calls go to the api-server's
real ``/api/v2`` with a real JWT. What is walked, as a new user would:

- connect a business through the page (POST /authorize with the CSRF token, Sage's consent, the
  business form), then Airflow parses its DAG;
- a Viewer and an editor send a forged ``Host``: nothing reaches that host, the trigger goes to
  the configured api-server, and no foreign body reaches a page;
- a GET link to ``/authorize`` starts nothing; the pages refuse foreign frames, sniffing and
  caching; ``?msg=`` free text is not shown;
- Disconnect on the page pauses the DAG in Airflow; the CLI's service login (``/auth/token``)
  unpauses and pauses it; Reconnect on the page unpauses it again.

One api-server (no scheduler, no DAG processor: ``airflow dags reserialize`` parses the DAGs once),
about a minute on a quiet 2-core machine.
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
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests
from psycopg import sql

from sage_sync.core.config import warehouse_conn_json
from sandbox.fake_sage.server import FakeSageServer, free_port
from scripts.deployment import descendants, kill_strays

from .recorder import Recorder

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get("SAGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
STARTUP_TIMEOUT = 180.0
PASSWORDS = {
    "admin": secrets.token_urlsafe(12),
    "viewer": secrets.token_urlsafe(12),
    "sage_sync": secrets.token_urlsafe(12),
}
PHISH = "Your session expired. Call 0800 000 000 to restore access"


class ApiServer:
    """A running ``airflow api-server``: its URL, environment and log."""

    def __init__(self, url: str, env: dict[str, str], log: Path) -> None:
        self.url, self.env, self.log = url, env, log

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def token(self, user: str) -> str:
        """A JWT from SimpleAuthManager's ``/auth/token``, as the CLI's service login gets one."""
        answer = requests.post(
            f"{self.url}/auth/token", json={"username": user, "password": PASSWORDS[user]}, timeout=30
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["access_token"])

    def session(self, user: str) -> requests.Session:
        """A browser-like session signed in as ``user`` (Airflow's ``_token`` cookie)."""
        session = requests.Session()
        session.cookies.set("_token", self.token(user))
        return session

    def dag(self, dag_id: str) -> dict[str, Any]:
        answer = requests.get(
            f"{self.url}/api/v2/dags/{dag_id}", headers={"Authorization": f"Bearer {self.token('admin')}"}, timeout=30
        )
        assert answer.ok, answer.text
        return dict(answer.json())

    def airflow(self, *args: str) -> None:
        done = subprocess.run(
            [str(VENV_BIN / "airflow"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"airflow {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture
def metadata_db() -> Iterator[str]:
    name = f"sage_apiserver_{secrets.token_hex(5)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    p = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    yield f"postgresql+psycopg://{p.get('user', 'postgres')}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def api_server(
    tmp_path: Path, metadata_db: str, pg_dsn: str, warehouse: psycopg.Connection
) -> Iterator[tuple[ApiServer, FakeSageServer]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp_path / "airflow_home"
    home.mkdir()
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    with FakeSageServer(seed=5) as sage:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SAGE_AIRFLOW_API", "SAGE_TOKEN_KEYS"))},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer,sage_sync:user",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW_CONN_SAGE_WAREHOUSE": warehouse_conn_json(pg_dsn),
            "AIRFLOW_CONN_SAGE_DEFAULT": sage.airflow_conn_json(f"{url}/sage/callback"),
            "SAGE_REGISTRY_SNAPSHOT": str(tmp_path / "companies.json"),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
            "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
        server = ApiServer(url, env, tmp_path / "api-server.log")
        started = time.monotonic()
        server.airflow("db", "migrate")
        with server.log.open("wb") as out:
            process = subprocess.Popen(
                [str(VENV_BIN / "airflow"), "api-server"],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                _wait_until_up(server, process, started)
                print(f"airflow api-server up in {time.monotonic() - started:.1f}s at {url}")
                yield server, sage
            finally:
                _stop(process)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _wait_until_up(server: ApiServer, process: subprocess.Popen[bytes], started: float) -> None:
    while time.monotonic() - started < STARTUP_TIMEOUT:
        if process.poll() is not None:
            pytest.fail(f"airflow api-server exited with {process.returncode}:\n{server.tail()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.url}/api/v2/version", timeout=2).ok:
                return
        time.sleep(0.5)
    pytest.fail(f"the api-server did not answer in {STARTUP_TIMEOUT}s:\n{server.tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    tree = descendants(process.pid)
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    kill_strays(tree)


@pytest.fixture
def elsewhere() -> Iterator[Recorder]:
    recorder = Recorder(body=json.dumps({"detail": PHISH}))
    yield recorder
    recorder.close()


def _csrf(server: ApiServer, session: requests.Session) -> str:
    page = session.get(f"{server.url}/sage/", allow_redirects=False, timeout=30)
    assert page.status_code == 200, (page.status_code, page.text[:500])
    return str(session.cookies.get("sage_csrf"))


def _authorise(server: ApiServer, session: requests.Session, form: dict[str, str]) -> requests.Response:
    """POST /sage/authorize with the CSRF token, consent at the fake Sage, back to /sage/callback."""
    start = session.post(
        f"{server.url}/sage/authorize", data={**form, "csrf": _csrf(server, session)}, allow_redirects=False, timeout=30
    )
    assert start.status_code == 303, (start.status_code, start.text[:500])
    consent = requests.get(start.headers["location"], allow_redirects=False, timeout=30)
    assert consent.headers["location"].startswith(f"{server.url}/sage/callback"), consent.headers["location"]
    return session.get(consent.headers["location"], allow_redirects=False, timeout=30)


def _banner(server: ApiServer, session: requests.Session, answer: requests.Response) -> str:
    assert answer.status_code == 303, (answer.status_code, answer.text[:500])
    page = session.get(f"{server.url}{answer.headers['location']}", allow_redirects=False, timeout=30)
    assert page.status_code == 200, page.text[:500]
    start = page.text.find('id="message">')
    return page.text[start : page.text.find("</div>", start)] if start >= 0 else ""


def test_the_pages_on_a_real_api_server(
    api_server: tuple[ApiServer, FakeSageServer], elsewhere: Recorder, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, sage = api_server
    try:
        _walk(server, sage, elsewhere, pg_dsn, monkeypatch)
    except Exception:
        print(f"api-server log:\n{server.tail(120)}")
        raise


def _walk(
    server: ApiServer, sage: FakeSageServer, elsewhere: Recorder, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = server.session("admin")
    greenleaf = next(b for b in sage.admin.businesses() if b["key"] == "greenleaf")
    company, dag_id = greenleaf["id"], f"sage_sync__{greenleaf['id']}"

    # Connect through the page, then Airflow parses the new company's DAG.
    chosen = _authorise(server, admin, {"purpose": "connect"})
    assert chosen.status_code == 303 and chosen.headers["location"].startswith("/sage/choose?pending="), chosen.text
    pending = parse_qs(urlsplit(chosen.headers["location"]).query)["pending"][0]
    registered = admin.post(
        f"{server.url}/sage/register",
        data={"pending": pending, "business_id": company, "synced_from": "2025-Q1", "csrf": _csrf(server, admin)},
        allow_redirects=False,
        timeout=30,
    )
    assert f"Connected {greenleaf['name']} from 2025-Q1" in _banner(server, admin, registered)
    server.airflow("dags", "reserialize")
    assert server.dag(dag_id)["is_paused"] is False

    # 1. A forged Host: a Viewer's dashboard and an editor's Reset send nothing there.
    viewer = server.session("viewer")
    forged = {"Host": elsewhere.netloc}
    assert viewer.get(f"{server.url}/sage/", headers=forged, allow_redirects=False, timeout=30).status_code == 200
    reset = admin.post(
        f"{server.url}/sage/reset",
        data={"company_id": company, "confirm": "yes", "csrf": _csrf(server, admin)},
        headers=forged,
        allow_redirects=False,
        timeout=30,
    )
    assert reset.status_code == 303, reset.text[:500]
    assert elsewhere.requests == [], "a forged Host decided where the Airflow call (and its bearer token) went"
    assert "0800" not in reset.headers["location"]
    banner = _banner(server, admin, reset)
    assert "full sync started" in banner and "0800" not in banner, banner
    runs = requests.get(
        f"{server.url}/api/v2/dags/{dag_id}/dagRuns",
        headers={"Authorization": f"Bearer {server.token('admin')}"},
        timeout=30,
    ).json()
    assert runs["total_entries"] == 1, runs  # the trigger reached the configured (local) api-server

    # 3. A GET link starts nothing: no redirect to Sage, no flow cookie (even for a company it could backfill).
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("update sage_control.companies set status = 'active'")
    link = admin.get(
        f"{server.url}/sage/authorize?purpose=backfill&company_id={company}&synced_from=2024-Q1",
        allow_redirects=False,
        timeout=30,
    )
    assert link.status_code == 405 and "sage_oauth" not in link.headers.get("set-cookie", "")

    # 5. Framing, sniffing, caching, and ?msg= free text.
    page = admin.get(f"{server.url}/sage/", params={"msg": PHISH}, allow_redirects=False, timeout=30)
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff" and "no-store" in page.headers["cache-control"]
    assert "0800" not in page.text

    # 2. Disconnect on the page pauses the DAG in Airflow, as the signed-in user.
    out = admin.post(
        f"{server.url}/sage/disconnect",
        data={"company_id": company, "csrf": _csrf(server, admin), "confirm": "yes"},
        allow_redirects=False,
        timeout=30,
    )
    banner = _banner(server, admin, out)
    assert "grant revoked at Sage" in banner and "DAG paused" in banner, banner
    assert server.dag(dag_id)["is_paused"] is True

    # The CLI's service login (SimpleAuthManager's /auth/token) unpauses and pauses too.
    from sage_sync.orchestration import airflow_api

    monkeypatch.setenv("SAGE_AIRFLOW_API_URL", server.url)
    monkeypatch.setenv("SAGE_AIRFLOW_API_USERNAME", "sage_sync")
    monkeypatch.setenv("SAGE_AIRFLOW_API_PASSWORD", PASSWORDS["sage_sync"])
    assert airflow_api.set_dag_paused(dag_id, paused=False) is True
    assert server.dag(dag_id)["is_paused"] is False
    assert airflow_api.set_dag_paused(dag_id, paused=True) is True
    assert server.dag(dag_id)["is_paused"] is True
    monkeypatch.setenv("SAGE_AIRFLOW_API_PASSWORD", "wrong")
    assert airflow_api.set_dag_paused(dag_id, paused=False) is False  # refused: logged, not raised

    # Reconnect on the page unpauses the DAG the CLI paused, and starts the catch-up run at once.
    def runs() -> int:
        found = requests.get(
            f"{server.url}/api/v2/dags/{dag_id}/dagRuns",
            headers={"Authorization": f"Bearer {server.token('admin')}"},
            timeout=30,
        )
        return int(found.json()["total_entries"])

    before = runs()
    back = _authorise(server, admin, {"purpose": "reconnect", "company_id": company})
    banner = _banner(server, admin, back)
    assert "Reconnected" in banner and "the catch-up run started" in banner, banner
    assert server.dag(dag_id)["is_paused"] is False
    assert runs() == before + 1
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("select status from sage_control.companies").fetchone() == ("initial_sync",)
