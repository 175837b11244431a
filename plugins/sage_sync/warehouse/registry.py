"""The registry of connected companies (``sage_control.companies``) and their event log.

Its rows come back typed (:class:`Company`: a :class:`CompanyStatus`, a :class:`Quarter`), parsed
here once, so no caller compares or parses the column text again.

Every function works inside the caller's transaction and never commits: registering a company,
storing its first tokens and logging the event belong together, and the caller decides when they
become visible. The event log (``connection_events``) is append-only so the history of a connection
(connected, re-authorised, disconnected, errors) survives status changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import kwargs_row
from psycopg.types.json import Jsonb

from sage_sync.core.errors import UnknownCompanyError
from sage_sync.core.ids import check_company_id
from sage_sync.core.quarters import Quarter
from sage_sync.core.status import STATUSES, CompanyStatus, check_transition, parse_status

_COLUMNS = (
    "company_id, company_name, accounts_provider, status, synced_from_quarter, last_error, "
    "created_at, updated_at, connected_at, disconnected_at, reconcile_requested, last_reconciled_at, "
    "daily_start_minute"
)


@dataclass(frozen=True)
class Company:
    """One connected Sage business; ``company_id`` is Sage's business id."""

    company_id: str
    company_name: str
    accounts_provider: str
    status: CompanyStatus
    synced_from: Quarter
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    connected_at: datetime | None
    disconnected_at: datetime | None
    reconcile_requested: bool = False
    last_reconciled_at: datetime | None = None
    # Its own daily start, minutes after 00:00 UTC; None: spread over the window
    # (sage_sync.orchestration.schedule decides the time, this only holds the choice).
    daily_start_minute: int | None = None

    @property
    def synced_from_quarter(self) -> str:
        """Synced From as the column holds it (``2024-Q1``): for messages and event details."""
        return str(self.synced_from)


def _company(*, status: str, synced_from_quarter: str, **columns: Any) -> Company:
    """A row of :data:`_COLUMNS` as a :class:`Company`: the one place its status and quarter are parsed."""
    return Company(status=parse_status(status), synced_from=Quarter.parse(synced_from_quarter), **columns)


_COMPANY_ROW = kwargs_row(_company)


def register_company(
    conn: psycopg.Connection, company_id: str, company_name: str, synced_from_quarter: Quarter | str
) -> Company:
    """Insert the company, or re-register it after a disconnect or re-authorisation.

    A re-registration keeps ``synced_from_quarter`` (moving it is a backfill's job, not a login's)
    and goes back to ``initial_sync`` unless a sync has already succeeded, in which case it is
    ``active`` straight away. Logs a ``connected`` event.

    Raises :class:`~sage_sync.core.errors.InvalidCompanyId` for an id outside the rule of
    :mod:`sage_sync.core.ids`: the registry is what every DAG is built from, so nothing else gets in.
    """
    check_company_id(company_id)
    quarter = str(Quarter.of(synced_from_quarter))
    existing = get_company(conn, company_id)
    with conn.cursor(row_factory=_COMPANY_ROW) as cur:
        cur.execute(
            "insert into sage_control.companies as c "
            "(company_id, company_name, synced_from_quarter, status, connected_at) "
            "values (%(id)s, %(name)s, %(quarter)s, 'initial_sync', now()) "
            "on conflict (company_id) do update set "
            "company_name = excluded.company_name, "
            "status = case when exists (select 1 from sage_control.sync_runs r "
            "                           where r.company_id = c.company_id and r.status = 'success') "
            "              then 'active' else 'initial_sync' end, "
            "last_error = null, connected_at = now(), disconnected_at = null, updated_at = now() "
            f"returning {_COLUMNS}",
            {"id": company_id, "name": company_name, "quarter": quarter},
        )
        company = cur.fetchone()
    assert company is not None  # an upsert with RETURNING always yields the row
    log_event(
        conn,
        company_id,
        "connected",
        {
            "company_name": company_name,
            "reconnected": existing is not None,
            "status": company.status,
            "synced_from_quarter": company.synced_from_quarter,
        },
    )
    return company


def get_company(conn: psycopg.Connection, company_id: str) -> Company | None:
    """The company, or None if it was never registered."""
    with conn.cursor(row_factory=_COMPANY_ROW) as cur:
        cur.execute(f"select {_COLUMNS} from sage_control.companies where company_id = %s", (company_id,))
        return cur.fetchone()


def list_companies(conn: psycopg.Connection, statuses: Iterable[str] | None = None) -> list[Company]:
    """All companies, or those in one of ``statuses``, ordered by id (a stable DAG order)."""
    with conn.cursor(row_factory=_COMPANY_ROW) as cur:
        if statuses is None:
            cur.execute(f"select {_COLUMNS} from sage_control.companies order by company_id")
        else:
            wanted = _check_statuses(statuses)
            cur.execute(
                f"select {_COLUMNS} from sage_control.companies where status = any(%s) order by company_id",
                (wanted,),
            )
        return cur.fetchall()


def set_status(
    conn: psycopg.Connection,
    company_id: str,
    status: str,
    *,
    last_error: str | None = None,
    event_type: str | None = None,
    details: dict[str, Any] | None = None,
) -> Company:
    """Set the company's status and ``last_error`` (None clears it); log ``event_type`` if given.

    Moving to ``disconnected`` stamps ``disconnected_at``. Raises :class:`UnknownCompanyError`.
    """
    _check_statuses([status])
    current = conn.execute(
        "select status from sage_control.companies where company_id = %s for update", (company_id,)
    ).fetchone()
    if current is None:
        raise UnknownCompanyError(f"company {company_id!r} is not registered")
    status = check_transition(current[0], status).value  # the one place the allowed moves are enforced
    with conn.cursor(row_factory=_COMPANY_ROW) as cur:
        cur.execute(
            "update sage_control.companies set status = %(status)s, last_error = %(error)s, "
            "disconnected_at = case when %(status)s = 'disconnected' then now() else disconnected_at end, "
            f"updated_at = now() where company_id = %(id)s returning {_COLUMNS}",
            {"status": status, "error": last_error, "id": company_id},
        )
        company = cur.fetchone()
    if company is None:
        raise UnknownCompanyError(f"company {company_id!r} is not registered")
    if event_type is not None:
        event_details = {"status": status, **(details or {})}
        if last_error is not None:
            event_details.setdefault("error", last_error)
        log_event(conn, company_id, event_type, event_details)
    return company


def reauthorise(conn: psycopg.Connection, company_id: str, *, details: dict[str, Any] | None = None) -> Company:
    """A re-authorised company: back to ``active`` (``initial_sync`` if no sync ever succeeded).

    Clears ``last_error`` and ``disconnected_at`` and asks the next run for an id reconciliation
    sweep: deletions made while the grant was dead may be older than Sage's deletion history.
    Logs ``reconnected`` with ``details``. Raises :class:`UnknownCompanyError`.
    """
    with conn.cursor(row_factory=_COMPANY_ROW) as cur:
        cur.execute(
            "update sage_control.companies as c set "
            # Complete data = a successful sync since the last reset wiped the company's rows.
            "status = case when exists (select 1 from sage_control.sync_runs r "
            "    where r.company_id = c.company_id and r.status = 'success' and r.started_at >= coalesce("
            "        (select max(e.occurred_at) from sage_control.connection_events e "
            "         where e.company_id = c.company_id and e.event_type = 'reset'), '-infinity')) "
            "    then 'active' else 'initial_sync' end, "
            "last_error = null, connected_at = now(), disconnected_at = null, reconcile_requested = true, "
            f"updated_at = now() where company_id = %s returning {_COLUMNS}",
            (company_id,),
        )
        company = cur.fetchone()
    if company is None:
        raise UnknownCompanyError(f"company {company_id!r} is not registered")
    log_event(
        conn,
        company_id,
        "reconnected",
        {"status": company.status, "synced_from_quarter": company.synced_from_quarter, **(details or {})},
    )
    return company


def set_synced_from(
    conn: psycopg.Connection, company_id: str, quarter: Quarter, *, details: dict[str, Any] | None = None
) -> Company:
    """Move the company's Synced From to ``quarter`` and log ``synced_from_moved`` (caller commits)."""
    before = get_company(conn, company_id)
    if before is None:
        raise UnknownCompanyError(f"company {company_id!r} is not registered")
    with conn.cursor(row_factory=_COMPANY_ROW) as cur:
        cur.execute(
            "update sage_control.companies set synced_from_quarter = %s, updated_at = now() "
            f"where company_id = %s returning {_COLUMNS}",
            (str(quarter), company_id),
        )
        company = cur.fetchone()
    assert company is not None
    log_event(
        conn,
        company_id,
        "synced_from_moved",
        {
            "previous_synced_from_quarter": before.synced_from_quarter,
            "synced_from_quarter": str(quarter),
            **(details or {}),
        },
    )
    return company


def set_daily_start(conn: psycopg.Connection, company_id: str, minute: int | None) -> Company:
    """Set the company's own daily start (minutes after 00:00 UTC), or clear it (None: the spread),
    and log ``daily_start_changed`` (caller commits). The column's check refuses a minute outside
    the day; callers validate first, with a message a person can act on."""
    before = get_company(conn, company_id)
    if before is None:
        raise UnknownCompanyError(f"company {company_id!r} is not registered")
    with conn.cursor(row_factory=_COMPANY_ROW) as cur:
        cur.execute(
            "update sage_control.companies set daily_start_minute = %s, updated_at = now() "
            f"where company_id = %s returning {_COLUMNS}",
            (minute, company_id),
        )
        company = cur.fetchone()
    assert company is not None
    log_event(
        conn,
        company_id,
        "daily_start_changed",
        {"previous_daily_start_minute": before.daily_start_minute, "daily_start_minute": minute},
    )
    return company


def mark_reconciled(conn: psycopg.Connection, company_id: str) -> None:
    """Record a complete id reconciliation sweep (clears the request made by a reconnect)."""
    conn.execute(
        "update sage_control.companies set reconcile_requested = false, last_reconciled_at = now() "
        "where company_id = %s",
        (company_id,),
    )


def forget_reconciliation(conn: psycopg.Connection, company_id: str) -> None:
    """Forget the last sweep and any request for one (a reset: the wiped rows need none)."""
    conn.execute(
        "update sage_control.companies set reconcile_requested = false, last_reconciled_at = null "
        "where company_id = %s",
        (company_id,),
    )


def previous_status(conn: psycopg.Connection, company_id: str) -> str | None:
    """The status the company's latest event other than a disconnect recorded (None if none did)."""
    row = conn.execute(
        "select details ->> 'status' from sage_control.connection_events where company_id = %s "
        "and details ? 'status' and event_type <> 'disconnected' order by event_id desc limit 1",
        (company_id,),
    ).fetchone()
    return row[0] if row else None


def log_event(
    conn: psycopg.Connection, company_id: str, event_type: str, details: dict[str, Any] | None = None
) -> None:
    """Append an event to ``connection_events`` (details must be JSON-serialisable, no secrets)."""
    if not event_type:
        raise ValueError("event_type must be a non-empty string")
    conn.execute(
        "insert into sage_control.connection_events (company_id, event_type, details) values (%s, %s, %s)",
        (company_id, event_type, Jsonb(details or {})),
    )


def _check_statuses(statuses: Iterable[str]) -> list[str]:
    wanted = list(statuses)
    unknown = sorted(set(wanted) - STATUSES)
    if unknown:
        raise ValueError(f"unknown company status {unknown}; expected one of {sorted(STATUSES)}")
    return wanted
