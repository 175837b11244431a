"""The incident log behind notices (``sage_control.notices``): every write to it is here.

A notice fires once per incident, not once per retry, task or callback that sees it: an incident
is a row, at most one open per company and kind (partial unique index ``notices_one_open``), and
only the caller that inserted it, or that locks it while it is still unsent, sends it. Resolution
is read from the state the rest of the pipeline already writes (company status, ``connected_at``,
successful runs), so a reconnect followed by a new refusal opens a new incident even when no
check ran in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row

INCIDENTS = ("needs_reauth", "sync_failed", "backfill_failed", "first_sync_overdue")
# The run kinds whose success ends a failed-run incident: a daily run does not make up for a
# failed backfill (Synced From still waits), and a backfill does not import the daily changes.
RESOLVING_KINDS = {"sync_failed": ["daily", "manual", "reset"], "backfill_failed": ["backfill"]}


@dataclass(frozen=True)
class Notice:
    """One incident of one company and what was (or is to be) sent about it."""

    notice_id: int
    company_id: str
    incident: str
    opened_at: datetime
    notified_at: datetime | None
    resolved_at: datetime | None
    sync_run_id: str | None
    message: str


_COLUMNS = "notice_id, company_id, incident, opened_at, notified_at, resolved_at, sync_run_id, message"

# An open incident whose condition is gone. Each rule reads only what other modules write anyway:
# - needs_reauth: the company is no longer needs_reauth, or was re-authorised (connected_at moves)
#   after the incident opened (it may have been refused again since: that is a new incident);
# - first_sync_overdue: no longer in initial_sync, or a reset or reconnect restarted it since;
# - a failed sync or backfill: a run of the same family succeeded after the incident opened.
_RESOLVE = """
update sage_control.notices n set resolved_at = now()
from sage_control.companies c
where n.company_id = c.company_id and n.resolved_at is null and n.company_id = %(company)s and (
    (n.incident = 'needs_reauth' and (c.status <> 'needs_reauth' or c.connected_at > n.opened_at))
 or (n.incident = 'first_sync_overdue' and (c.status <> 'initial_sync' or c.connected_at > n.opened_at
     or exists (select 1 from sage_control.connection_events e where e.company_id = c.company_id
                and e.event_type = 'reset' and e.occurred_at > n.opened_at)))
 or (n.incident in ('sync_failed', 'backfill_failed') and exists (
        select 1 from sage_control.sync_runs r where r.company_id = n.company_id and r.status = 'success'
        and r.ended_at > n.opened_at
        and r.kind = any(case n.incident when 'sync_failed' then %(sync_kinds)s::text[]
                                         else %(backfill_kinds)s::text[] end)))
)
returning n.incident
"""


def resolve_gone(conn: psycopg.Connection, company_id: str) -> list[str]:
    """Close the company's open incidents whose condition is gone; returns their kinds (caller commits)."""
    rows = conn.execute(
        _RESOLVE,
        {
            "company": company_id,
            "sync_kinds": RESOLVING_KINDS["sync_failed"],
            "backfill_kinds": RESOLVING_KINDS["backfill_failed"],
        },
    ).fetchall()
    return [r[0] for r in rows]


def open_incident(
    conn: psycopg.Connection, company_id: str, incident: str, message: str, *, sync_run_id: str | None = None
) -> bool:
    """Record the incident unless one of its kind is already open; True when this call opened it.

    The insert is the deduplication: retries, the other failed tasks of the run and the DAG's own
    callback all arrive here, and only the first finds no open row (caller commits).
    """
    if incident not in INCIDENTS:
        raise ValueError(f"unknown incident {incident!r}; expected one of {INCIDENTS}")
    row = conn.execute(
        "insert into sage_control.notices (company_id, incident, message, sync_run_id) values (%s, %s, %s, %s) "
        "on conflict (company_id, incident) where resolved_at is null do nothing returning notice_id",
        (company_id, incident, message, sync_run_id),
    ).fetchone()
    return row is not None


def deliver_unsent(conn: psycopg.Connection, company_id: str, send: Callable[[Notice], bool]) -> list[Notice]:
    """Send each open, unsent notice of the company once; returns those sent.

    Each row is locked (``skip locked``) while ``send`` runs, so two callbacks at the same moment
    never both send it; a ``send`` that returns False (no channel took it) leaves it unsent, to be
    tried again at the next check. One transaction per notice, committed here.
    """
    sent: list[Notice] = []
    tried: list[int] = []  # sent, or refused by every channel in this call: not tried twice in a row
    while True:
        with conn.transaction(), conn.cursor(row_factory=class_row(Notice)) as cur:
            cur.execute(
                f"select {_COLUMNS} from sage_control.notices where company_id = %s and resolved_at is null "
                "and notified_at is null and not (notice_id = any(%s)) order by notice_id limit 1 "
                "for update skip locked",
                (company_id, tried),
            )
            notice = cur.fetchone()
            if notice is None:
                return sent
            tried.append(notice.notice_id)
            if send(notice):
                cur.execute(
                    "update sage_control.notices set notified_at = now() where notice_id = %s", (notice.notice_id,)
                )
                sent.append(notice)


def notices_of(conn: psycopg.Connection, company_id: str) -> list[Notice]:
    """Every incident of the company, oldest first (tests and audits)."""
    with conn.cursor(row_factory=class_row(Notice)) as cur:
        cur.execute(
            f"select {_COLUMNS} from sage_control.notices where company_id = %s order by notice_id", (company_id,)
        )
        return cur.fetchall()


def first_sync_started_at(conn: psycopg.Connection, company_id: str) -> datetime | None:
    """The start of the company's first run since it was created or last reset (None: no run yet)."""
    row = conn.execute(
        "select min(f.started_at) from sage_control.sync_runs f join sage_control.companies c using (company_id) "
        "where f.company_id = %(id)s and f.started_at >= coalesce((select max(e.occurred_at) "
        "from sage_control.connection_events e where e.company_id = %(id)s and e.event_type = 'reset'), c.created_at)",
        {"id": company_id},
    ).fetchone()
    return row[0] if row else None


def companies_to_check(conn: psycopg.Connection) -> list[str]:
    """Companies a periodic check must look at: refused grants, first syncs, and open incidents."""
    rows = conn.execute(
        "select company_id from sage_control.companies where status in ('needs_reauth', 'initial_sync') "
        "union select company_id from sage_control.notices where resolved_at is null order by 1"
    ).fetchall()
    return [r[0] for r in rows]
