"""Notices: once per incident, by webhook and e-mail, naming the company, never a token.

Real parts: the fake Sage over HTTP, a real warehouse, `airflow dags test` of the company DAG and
of ``sage_transform`` (its dbt task marked successful: the check runs in the DAG's callbacks), a
local HTTP receiver standing in for Slack and a local SMTP sink standing in for the mail server.
"""

from __future__ import annotations

import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from airflow.sdk import DAG
from faults.kit import connect

from sage_sync.core.config import notify_settings
from sage_sync.core.errors import SageAPIError, note_stream
from sage_sync.lifecycle import connections
from sage_sync.orchestration import notices
from sage_sync.orchestration.notifier import SageNotifier
from sage_sync.sage.auth import new_pkce_pair
from sage_sync.sage.streams import STREAMS
from sage_sync.warehouse.token_store import PostgresTokenStore
from sandbox.fake_sage.server import FakeSageServer

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.airflow]


# -- a webhook receiver and an SMTP sink ----------------------------------------------------------------


class Webhook:
    """A local HTTP endpoint that keeps every JSON body POSTed to it; ``status`` is what it answers."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.status == 200:
                    outer.bodies.append(json.loads(body))
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def texts(self) -> list[str]:
        return [b["text"] for b in self.bodies]


class SmtpSink:
    """The smallest SMTP server smtplib talks to: it keeps each message's envelope and content."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(f"{line}\r\n".encode())

            def handle(self) -> None:
                sender, recipients = "", []
                self.reply("220 sink ESMTP")
                while line := self.rfile.readline():
                    verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.reply("250-sink")
                        self.reply("250 8BITMIME")
                    elif verb == "MAIL":
                        sender = line.decode().split(":", 1)[1].strip()
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(line.decode().split(":", 1)[1].strip())
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 go on")
                        data = b""
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data += chunk[1:] if chunk.startswith(b"..") else chunk
                        outer.messages.append((sender, recipients, message_from_bytes(data, policy=policy.default)))
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:  # HELO, RSET, NOOP
                        self.reply("250 OK")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def bodies(self) -> list[str]:
        return [m.get_content() for _s, _r, m in self.messages]


@pytest.fixture
def channels(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Webhook, SmtpSink, dict[str, str]]]:
    """Both channels configured, in this process and in the environment of `airflow dags test`."""
    hook, sink = Webhook(), SmtpSink()
    values = {
        "SAGE_NOTIFY_WEBHOOK_URL": hook.url,
        "SAGE_NOTIFY_EMAIL_TO": "data-team@example.com, owner@example.com",
        "AIRFLOW_CONN_SAGE_SMTP": f"smtp://127.0.0.1:{sink.port}?from=sage-sync%40example.com",
        # Airflow's retries of a failing task come after a second, not after 5 minutes (the cap
        # applies to the company DAG's exponential backoff).
        "AIRFLOW__CORE__MAX_TASK_RETRY_DELAY": "1",
        "AIRFLOW__API__BASE_URL": "http://airflow.example.com:8080",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    yield hook, sink, values
    hook.server.shutdown()
    sink.server.shutdown()


def _dags_test(env: dict[str, str], dag_id: str, *extra: str) -> str:
    done = subprocess.run(
        [str(BIN / "airflow"), "dags", "test", dag_id, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done.stdout + done.stderr


def _incidents(conn: psycopg.Connection, company: str) -> list[tuple[str, bool, bool]]:
    """(incident, notified, resolved) of each incident, oldest first."""
    rows = conn.execute(
        "select incident, notified_at is not null, resolved_at is not null from sage_control.notices "
        "where company_id = %s order by notice_id",
        (company,),
    ).fetchall()
    return [tuple(r) for r in rows]


def _reconnect(sage: FakeSageServer, company: str) -> None:
    user = next(b["user"] for b in sage.admin.businesses() if b["id"] == company)
    verifier, challenge = new_pkce_pair()
    connections.reconnect(company, sage.authorize(login_hint=user, code_challenge=challenge), verifier)


def _last_run_status(conn: psycopg.Connection, company: str) -> str:
    return conn.execute(
        "select status from sage_control.sync_runs where company_id = %s order by started_at desc limit 1", (company,)
    ).fetchone()[0]


# -- end to end: the company DAG ---------------------------------------------------------------------------


def test_a_refused_grant_is_noticed_once_until_reconnected_and_again_when_it_recurs(
    sage: FakeSageServer,
    airflow_env: dict[str, str],
    channels: tuple[Webhook, SmtpSink, dict[str, str]],
    warehouse: psycopg.Connection,
) -> None:
    hook, sink, values = channels
    env = {**airflow_env, **values}
    company = connect(sage)
    name = warehouse.execute("select company_name from sage_control.companies").fetchone()[0]
    dag_id = f"sage_sync__{company}"

    _dags_test(env, dag_id)
    assert _last_run_status(warehouse, company) == "success"
    assert hook.bodies == [] and sink.messages == [], "a healthy run sent a notice"

    # Midnight: Sage refuses the grant. Then the next day's run meets the same refused grant.
    sage.admin.revoke_grants()
    sage.admin.advance_clock(86400)
    out = _dags_test(env, dag_id)
    assert "needs re-authorisation" in out or "Sage refused the grant" in out, out[-3000:]
    _dags_test(env, dag_id)
    assert _last_run_status(warehouse, company) == "failed"
    assert len(hook.texts) == 1 and len(sink.messages) == 1, hook.texts
    text = hook.texts[0]
    assert text.startswith(f"[Sage sync] {name} ({company}) needs re-authorisation")
    assert f"id {company}" in text and "Sage said: " in text and "invalid_grant" in text
    assert f"python -m sage_sync reconnect {company} --code" in text
    assert f"http://airflow.example.com:8080/sage/company/{company}" in text
    _sender, recipients, mail = sink.messages[0]
    assert mail["Subject"] == text.splitlines()[0] and mail["From"] == "sage-sync@example.com"
    assert sorted(recipients) == ["<data-team@example.com>", "<owner@example.com>"] or sorted(recipients) == [
        "data-team@example.com",
        "owner@example.com",
    ]
    assert sink.bodies[0].replace("\r\n", "\n").strip() == text
    assert _incidents(warehouse, company) == [("needs_reauth", True, False)]

    # Re-authorised: the next run succeeds and closes the incident, sending nothing.
    _reconnect(sage, company)
    _dags_test(env, dag_id)
    assert _last_run_status(warehouse, company) == "success"
    assert _incidents(warehouse, company) == [("needs_reauth", True, True)]
    assert len(hook.texts) == 1

    # Refused again: a new incident, a new notice.
    sage.admin.revoke_grants()
    _dags_test(env, dag_id)
    assert _incidents(warehouse, company) == [("needs_reauth", True, True), ("needs_reauth", True, False)]
    assert len(hook.texts) == 2 and len(sink.messages) == 2
    assert hook.texts[1].startswith(f"[Sage sync] {name} ({company}) needs re-authorisation")


def test_a_failed_run_is_noticed_once_across_its_retries_and_failed_tasks(
    sage: FakeSageServer,
    airflow_env: dict[str, str],
    channels: tuple[Webhook, SmtpSink, dict[str, str]],
    warehouse: psycopg.Connection,
) -> None:
    hook, sink, values = channels
    env = {**airflow_env, **values}
    company = connect(sage)
    name = warehouse.execute("select company_name from sage_control.companies").fetchone()[0]
    dag_id = f"sage_sync__{company}"

    # Sage answers 503 to every stream's calls for this business: each stream fails after the
    # client's 6 attempts, the sync task fails once all were tried, three times (Airflow's 2
    # retries), and the run fails. The grant's check of /businesses is left alone, so the run gets
    # as far as the streams.
    for stream in STREAMS.values():
        sage.admin.add_fault("503", path=stream.path_for(company), count=10_000, retry_after=0, business=company)
    _dags_test(env, dag_id)
    faulted = sum(1 for r in sage.admin.request_log() if r.get("fault") == "503")
    assert faulted >= 3 * 6, f"the tasks were not retried ({faulted} requests answered 503)"
    assert _last_run_status(warehouse, company) == "failed"
    assert len(hook.texts) == 1 and len(sink.messages) == 1, hook.texts
    text = hook.texts[0]
    assert text.startswith(f"[Sage sync] {name} ({company}): the sync failed")
    first_stream = next(iter(STREAMS))  # the first stream read, whose failure the task raises
    assert f"in task sync [{first_stream}]" in text and "TransientError" in text and "503" in text
    assert f"python -m sage_sync sync {company}" in text
    assert f"http://airflow.example.com:8080/dags/{dag_id}/runs/" in text
    assert _incidents(warehouse, company) == [("sync_failed", True, False)]

    # Sage recovers: a successful run closes the incident; the next failure is a new one.
    sage.admin.clear_faults()
    _dags_test(env, dag_id)
    assert _last_run_status(warehouse, company) == "success"
    assert _incidents(warehouse, company) == [("sync_failed", True, True)]
    sage.admin.add_fault("503", count=10_000, retry_after=0, business=company)
    _dags_test(env, dag_id)
    assert _incidents(warehouse, company) == [("sync_failed", True, True), ("sync_failed", True, False)]
    assert len(hook.texts) == 2 and len(sink.messages) == 2


# -- end to end: the daily check in sage_transform ---------------------------------------------------------


def test_a_first_sync_past_24_hours_is_noticed_by_the_transform_dags_check(
    sage: FakeSageServer,
    airflow_env: dict[str, str],
    channels: tuple[Webhook, SmtpSink, dict[str, str]],
    warehouse: psycopg.Connection,
) -> None:
    hook, _sink, values = channels
    env = {**airflow_env, **values}
    company = connect(sage)
    name = warehouse.execute("select company_name from sage_control.companies").fetchone()[0]
    transform = ["sage_transform", "--mark-success-pattern", "dbt_build"]  # the check, not dbt

    _dags_test(env, *transform)
    assert hook.bodies == [], "a first sync connected a moment ago was reported late"

    # Connected 25 hours ago and no run ever started (its DAG paused, say).
    warehouse.execute(
        "update sage_control.companies set created_at = now() - interval '25 hours', "
        "connected_at = now() - interval '25 hours'"
    )
    _dags_test(env, *transform)
    out = _dags_test(env, *transform)
    assert len(hook.texts) == 1, out[-6000:]
    assert hook.texts[0].startswith(f"[Sage sync] {name} ({company}): first sync not complete after 24 h")
    assert "python -m sage_sync status" in hook.texts[0]
    assert _incidents(warehouse, company) == [("first_sync_overdue", True, False)]

    # The first sync completes: the next check closes the incident.
    warehouse.execute("update sage_control.companies set status = 'active'")
    _dags_test(env, *transform)
    assert _incidents(warehouse, company) == [("first_sync_overdue", True, True)]
    assert len(hook.texts) == 1


# -- in-process: the notifier as Airflow calls it ------------------------------------------------------------


class _Ti:
    task_id = "sync"
    map_index = -1
    rendered_map_index = None


def test_a_failure_whose_error_carries_a_token_never_sends_it(
    sage: FakeSageServer,
    lenv: dict[str, list],
    pg_dsn: str,
    channels: tuple[Webhook, SmtpSink, dict[str, str]],
    warehouse: psycopg.Connection,
) -> None:
    hook, sink, _values = channels
    company = connect(sage)
    stored = PostgresTokenStore(pg_dsn).load(company)
    assert stored is not None
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw"
    opaque = "Zq8vR2xW9mK4pL7nB3cT6yH1jD5fG0sA"
    error = SageAPIError(
        400,
        [{"$dataCode": "InvalidToken", "$message": f"token {stored.access_token} bad; refresh {stored.refresh_token}"}],
        path=f"/v3.1/contacts?access_token={opaque}",
    )
    failure = RuntimeError(f"{error}; Authorization: Bearer {jwt}; client key {opaque}")
    note_stream(failure, "contacts")  # as the sync task's read of the contacts raises it
    context = {
        "dag": DAG(dag_id=f"sage_sync__{company}", schedule=None),
        "run_id": "scheduled__2026-03-05T00:00:00+00:00",
        "ti": _Ti(),
        "exception": failure,
    }
    SageNotifier("task_failed")(context)
    SageNotifier("task_failed")(context)  # the run's next failed task: the same incident
    SageNotifier("run_failed")(context)  # and the run's own callback

    assert len(hook.texts) == 1 and len(sink.messages) == 1
    sent = [hook.texts[0], sink.bodies[0], json.dumps(hook.bodies), str(sink.messages[0][2])]
    sent.append(warehouse.execute("select message from sage_control.notices").fetchone()[0])
    secrets = {stored.access_token, stored.refresh_token, jwt, opaque}
    assert all(len(s) >= 24 for s in secrets)
    for text in sent:
        for secret in secrets:
            for part in (secret, secret[:20], secret[-20:], f"Bearer {secret}"):
                assert part not in text, f"a secret is in a notice: {text[:300]}"
    assert "in task sync [contacts]" in hook.texts[0] and "InvalidToken" in hook.texts[0]


def test_nothing_configured_sends_nothing_and_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("SAGE_NOTIFY_WEBHOOK_URL", "SAGE_NOTIFY_EMAIL_TO"):
        monkeypatch.delenv(key, raising=False)
    # A warehouse nobody can reach: any query would fail (or hang) the callback.
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_WAREHOUSE", "postgres://nobody@192.0.2.1:5432/none")
    assert notify_settings().enabled is False
    context = {"dag": DAG(dag_id="sage_sync__x", schedule=None), "run_id": "r", "exception": ValueError("x")}
    SageNotifier("task_failed")(context)
    assert notices.check_company("x", None) == [] and notices.check_all() == []


def test_a_notice_no_channel_took_is_sent_at_the_next_check(
    sage: FakeSageServer,
    lenv: dict[str, list],
    channels: tuple[Webhook, SmtpSink, dict[str, str]],
    warehouse: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hook, _sink, _values = channels
    monkeypatch.delenv("SAGE_NOTIFY_EMAIL_TO")
    company = connect(sage)
    warehouse.execute("update sage_control.companies set status = 'needs_reauth', last_error = 'Sage said: gone'")
    hook.status = 503
    assert notices.check_all() == []
    assert _incidents(warehouse, company) == [("needs_reauth", False, False)]
    hook.status = 200
    assert [n.incident for n in notices.check_all()] == ["needs_reauth"]
    assert notices.check_all() == []
    assert len(hook.texts) == 1 and "Sage said: gone" in hook.texts[0]
