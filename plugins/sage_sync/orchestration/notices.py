"""Notices: tell a person when a company needs them, once per incident, by webhook and e-mail.

Three incidents are worth waking someone for, because nothing fixes them by itself:

- ``needs_reauth``: Sage refused a company's grant; imports stop until a user authorises again;
- ``sync_failed`` / ``backfill_failed``: a run failed after its retries;
- ``first_sync_overdue``: a company's first sync has not completed 24 hours after it started.

Each notice names the company (name and id), says what happened (with Sage's or the run's
reason) and what to do (the page and the exact CLI command). It is built from our own words and
from error texts passed through :func:`redact`, never from a token or a secret.

**Once per incident.** The Airflow callbacks (``orchestration.notifier``, the only caller) call :func:`check_company`
after a task's final failure (not on a retry) and after each run; every failed task of a run, and
the run's own callback, arrive at the same open incident row (``warehouse.notices``), so only the
first sends. An incident is closed when its condition is gone (re-authorised, a successful run,
the first sync done) and the next occurrence sends a new notice.

**Where the 24-hour check runs.** :func:`check_all` runs in the callbacks of ``sage_transform``,
which runs at 06:00 UTC every day and after every landing, whatever state the company DAGs are
in. A late first sync is exactly the case where the company's own DAG is not getting anywhere (its
run still going, stuck in a queue, paused, or never parsed), so a check inside that DAG would not run.

**Nothing configured, nothing done**: without a webhook URL or recipients no query runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import smtplib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import psycopg
import requests

from sage_sync.core.config import NotifySettings, notify_settings, sage_settings, warehouse_dsn
from sage_sync.core.errors import ConfigError
from sage_sync.core.status import CompanyStatus
from sage_sync.orchestration import airflow_api
from sage_sync.warehouse import db, registry, runs
from sage_sync.warehouse import notices as store
from sage_sync.warehouse.token_store import PostgresTokenStore

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10  # per channel: a callback must not hang on a dead mail server or webhook
REASON_LIMIT = 600  # characters of an error text a notice quotes
PREFIX = "[Sage sync]"
# A company's first sync is overdue (a notice here, a flag on the status report) when it has not
# completed this long after it started.
INITIAL_SYNC_OVERDUE = timedelta(hours=24)

# Token-shaped text, whatever produced it. Sage's own ids (32 lowercase hex) and uuids do not match
# the last pattern, which asks for upper and lower case letters and digits in one long run.
_SECRET_PATTERNS = [
    re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"),
    re.compile(
        r"(?i)\b(access_token|refresh_token|id_token|client_secret|code_verifier|code|password|secret|token"
        r"|authorization)(\"?\s*[:=]\s*\"?)[^\s\"',;&}]+"
    ),
    re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]+:[^\s/@]+@"),  # credentials in a URL
    re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*)?"),  # a JWT
    re.compile(
        r"(?=[A-Za-z0-9_\-.~+/=]*[A-Z])(?=[A-Za-z0-9_\-.~+/=]*[a-z])(?=[A-Za-z0-9_\-.~+/=]*[0-9])"
        r"[A-Za-z0-9_\-.~+/=]{24,}"
    ),
]
REDACTED = "[redacted]"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secrets and without anything shaped like a token or credential."""
    for secret in sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    for pattern in _SECRET_PATTERNS[3:]:
        text = pattern.sub(REDACTED, text)
    return text


@dataclass(frozen=True)
class Failure:
    """A failed run as Airflow reports it to a callback."""

    kind: str  # the sync run kind: 'daily' or 'backfill' (manual and reset runs count as 'daily')
    dag_id: str
    run_id: str
    task: str | None = None  # the task that failed ("sync [contacts]": the stream), None for the whole run
    error: str | None = None  # the exception's text, not yet redacted


def _known_secrets(dsn: str, company_id: str) -> list[str]:
    """The secrets a reason could carry whole: the company's current tokens and our client secret."""
    found: list[str] = []
    with contextlib.suppress(ConfigError):
        found.append(sage_settings().client_secret)
    try:
        stored = PostgresTokenStore(dsn).load(company_id)
    except Exception:  # noqa: BLE001 - no key or no row: the patterns still apply
        stored = None
    if stored is not None:
        found += [stored.access_token, stored.refresh_token]
    return found


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"


def _airflow_url() -> str:
    """Airflow's address as people reach it (``AIRFLOW__API__BASE_URL``), for the links in a notice."""
    return (os.environ.get("AIRFLOW__API__BASE_URL") or airflow_api.api_url()).rstrip("/")


def _page(company_id: str) -> str:
    return f"{_airflow_url()}/sage/company/{company_id}"


def _sage_reason(last_error: str | None) -> str:
    """Sage's own words from a refused grant's message (``...; Sage said: <reason>``), else the message."""
    if not last_error:
        return "Sage refused the grant (no reason recorded)"
    marker = "Sage said: "
    return last_error.split(marker, 1)[1] if marker in last_error else last_error


def needs_reauth_message(company: registry.Company, secrets: Iterable[str]) -> str:
    """The notice of a refused grant."""
    since = f" at {company.updated_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if company.updated_at else ""
    return "\n".join(
        [
            f"{PREFIX} {company.company_name} ({company.company_id}) needs re-authorisation",
            f"Company: {company.company_name}, id {company.company_id}",
            f"What happened: Sage refused the grant{since}, so nothing is imported for this company. "
            f"Sage said: {_clip(redact(_sage_reason(company.last_error), secrets))}",
            f"What to do: a user of {company.company_name} in Sage authorises access again: on the Sage "
            f"connections page, {_page(company.company_id)}, press Reconnect; or run "
            "`python -m sage_sync authorize-url`, open the URL, sign in, then "
            f"`python -m sage_sync reconnect {company.company_id} --code <code from the callback URL> "
            "--code-verifier <code_verifier printed by authorize-url>`. The next run imports everything "
            "missed since.",
        ]
    )


def failed_run_message(company: registry.Company, failure: Failure, reason: str) -> str:
    """The notice of a failed sync or backfill."""
    what = "backfill (Move Synced From)" if failure.kind == "backfill" else "sync"
    where = f" in task {failure.task}" if failure.task else ""
    url = f"{_airflow_url()}/{airflow_api.ui_run_path(failure.dag_id, failure.run_id)}"
    if failure.kind == "backfill":
        todo = (
            "Synced From was not moved; read the task log, fix the cause, then move Synced From again on "
            f"the Sage connections page ({_page(company.company_id)}) or with "
            f"`python -m sage_sync set-synced-from {company.company_id} <quarter>`."
        )
    else:
        todo = (
            "read the task log, fix the cause if it is ours (Sage answering 5xx for hours clears by "
            "itself), then clear the failed tasks in Airflow, or run "
            f"`python -m sage_sync sync {company.company_id}`; otherwise tomorrow's run tries again. "
            f"`python -m sage_sync status` shows every company's last run."
        )
    return "\n".join(
        [
            f"{PREFIX} {company.company_name} ({company.company_id}): the {what} failed",
            f"Company: {company.company_name}, id {company.company_id}",
            f"What happened: run {failure.run_id} of {failure.dag_id} failed{where} after its retries: {reason}",
            f"Task log: {url}",
            f"What to do: {todo}",
        ]
    )


def overdue_message(company: registry.Company, started_at: datetime, hours: float) -> str:
    """The notice of a first sync past 24 hours."""
    dag_id = airflow_api.dag_id_for(company.company_id)
    return "\n".join(
        [
            f"{PREFIX} {company.company_name} ({company.company_id}): first sync not complete after "
            f"{INITIAL_SYNC_OVERDUE.total_seconds() / 3600:.0f} h",
            f"Company: {company.company_name}, id {company.company_id}",
            f"What happened: the first sync started {started_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC and has "
            f"not completed after {hours:.0f} h; the company's emissions stay empty until it does.",
            f"What to do: look at its runs in Airflow ({_airflow_url()}/dags/{dag_id}) and on the Sage "
            f"connections page ({_page(company.company_id)}): a run still reading is slow (its progress "
            "shows there), a failed run says why in its task log, and no run at all means the DAG is "
            "paused or not scheduled. `python -m sage_sync status` prints the first sync's progress.",
        ]
    )


# -- delivery -----------------------------------------------------------------------------------------


def _send_webhook(url: str, text: str) -> None:
    response = requests.post(
        url, data=json.dumps({"text": text}), headers={"Content-Type": "application/json"}, timeout=SEND_TIMEOUT_S
    )
    if not response.ok:
        # Only the status: the URL is a secret, and the body may echo the request.
        raise RuntimeError(f"the webhook answered HTTP {response.status_code}")


def _send_email(settings: NotifySettings, subject: str, text: str) -> None:
    smtp = settings.smtp
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = smtp.sender
    message["To"] = ", ".join(settings.email_to)
    message.set_content(text)
    server_class = smtplib.SMTP_SSL if smtp.ssl else smtplib.SMTP
    with server_class(smtp.host, smtp.port, timeout=SEND_TIMEOUT_S) as server:
        if smtp.starttls and not smtp.ssl:
            server.starttls(context=ssl.create_default_context())
        if smtp.login and smtp.password:
            server.login(smtp.login, smtp.password)
        server.send_message(message)


def send(settings: NotifySettings, notice: store.Notice) -> bool:
    """Send ``notice`` on every configured channel; True when at least one took it.

    A channel that fails is logged (its kind and the error class only) and does not stop the other;
    a notice no channel took stays unsent and is tried again at the next check.
    """
    subject, _, _body = notice.message.partition("\n")
    delivered = False
    channels = []
    if settings.webhook_url:
        channels.append(("webhook", lambda: _send_webhook(settings.webhook_url or "", notice.message)))
    if settings.email_to:
        channels.append(("e-mail", lambda: _send_email(settings, subject, notice.message)))
    for name, deliver in channels:
        try:
            deliver()
            delivered = True
        except Exception as exc:  # noqa: BLE001 - a dead channel must not fail the task or the other channel
            log.warning(
                "the %s notice of %s for %s was not sent: %s",
                name,
                notice.incident,
                notice.company_id,
                type(exc).__name__,
            )
    if delivered:
        log.info("notice sent: %s", subject)
    return delivered


# -- the checks ---------------------------------------------------------------------------------------


def _first_sync_start(conn: psycopg.Connection, company: registry.Company) -> datetime | None:
    """When the company's first sync started (its first run since connecting or the last reset, as
    ``status`` counts it), else when it was connected: a DAG that never ran is the latest of all."""
    return store.first_sync_started_at(conn, company.company_id) or company.connected_at or company.created_at


def _incidents_now(
    conn: psycopg.Connection, company: registry.Company, failure: Failure | None, dsn: str
) -> list[tuple[str, str, str | None]]:
    """(incident, message, sync run id) of every incident the company is in right now."""
    found: list[tuple[str, str, str | None]] = []
    secrets = _known_secrets(dsn, company.company_id)
    if company.status == CompanyStatus.NEEDS_REAUTH:
        found.append(("needs_reauth", needs_reauth_message(company, secrets), None))
    elif failure is not None and company.status != CompanyStatus.DISCONNECTED:
        # A run failing on a refused grant is the needs_reauth incident, not a second one.
        sync_run_id = f"{company.company_id}:{failure.run_id}"
        reason = failure.error or runs.run_error(conn, sync_run_id) or "no reason recorded; see the task log"
        incident = "backfill_failed" if failure.kind == "backfill" else "sync_failed"
        found.append((incident, failed_run_message(company, failure, _clip(redact(reason, secrets))), sync_run_id))
    if company.status == CompanyStatus.INITIAL_SYNC:
        started = _first_sync_start(conn, company)
        now = conn.execute("select now()").fetchone()[0]
        if started is not None and now - started > INITIAL_SYNC_OVERDUE:
            hours = (now - started).total_seconds() / 3600
            found.append(("first_sync_overdue", overdue_message(company, started, hours), None))
    return found


def check_company(
    company_id: str, failure: Failure | None = None, *, settings: NotifySettings | None = None, dsn: str | None = None
) -> list[store.Notice]:
    """Close the company's incidents that are over, open the ones it is in, send what is unsent.

    ``failure`` is the failed run a callback reports (None after a success, or from the periodic
    check). Returns the notices sent by this call (none when nothing is configured).
    """
    settings = settings or notify_settings()
    if not settings.enabled:
        return []
    dsn = dsn or warehouse_dsn()
    with db.connect(dsn, app="sage_notices", autocommit=True) as conn:
        return _check(conn, company_id, failure, settings, dsn)


def _check(
    conn: psycopg.Connection, company_id: str, failure: Failure | None, settings: NotifySettings, dsn: str
) -> list[store.Notice]:
    company = registry.get_company(conn, company_id)
    if company is None:
        log.info("no notice: company %s is not registered", company_id)
        return []
    with conn.transaction():
        store.resolve_gone(conn, company_id)
    for incident, message, sync_run_id in _incidents_now(conn, company, failure, dsn):
        with conn.transaction():
            store.open_incident(conn, company_id, incident, message, sync_run_id=sync_run_id)
    return store.deliver_unsent(conn, company_id, lambda notice: send(settings, notice))


def check_all(*, settings: NotifySettings | None = None, dsn: str | None = None) -> list[store.Notice]:
    """The periodic check: every company with a refused grant, a first sync or an open incident."""
    settings = settings or notify_settings()
    if not settings.enabled:
        return []
    sent: list[store.Notice] = []
    dsn = dsn or warehouse_dsn()
    with db.connect(dsn, app="sage_notices", autocommit=True) as conn:
        for company_id in store.companies_to_check(conn):
            sent += _check(conn, company_id, None, settings, dsn)
    return sent
