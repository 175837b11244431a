"""The status report: every company, its status, its last run's progress, the 24-hour flag.

What ``python -m sage_sync status`` prints and the Connect page lists, from one query. The
words people read are defined here once and shared by the pages and the CLI's text: a status
as a label (``Needs re-authorisation``; the enum value ``needs_reauth`` only in ``--json``), a
run's kind as what it did (a daily run that read everything is the ``first sync`` or a
``full re-import`` after a reset), where each stream stands, and a base currency other than
GBP, whose spend is not counted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from sage_sync.core.lanes import Lane, lane_of_run
from sage_sync.core.status import CompanyStatus
from sage_sync.lifecycle.inputs import daily_window, warehouse
from sage_sync.orchestration.notices import INITIAL_SYNC_OVERDUE
from sage_sync.orchestration.schedule import describe_start
from sage_sync.sage.streams import STREAMS
from sage_sync.warehouse import reports, stream_states

# The order the Connect page lists the statuses in: what needs a human first.
DISPLAY_ORDER = [
    CompanyStatus.NEEDS_REAUTH,
    CompanyStatus.BUSINESS_MISSING,
    CompanyStatus.ERROR,
    CompanyStatus.INITIAL_SYNC,
    CompanyStatus.ACTIVE,
    CompanyStatus.DISCONNECTED,
]
# A status in people's words (pages, the CLI's text); machine output keeps the enum value.
STATUS_LABELS = {
    CompanyStatus.NEEDS_REAUTH: "Needs re-authorisation",
    CompanyStatus.ERROR: "Error at Sage",
    CompanyStatus.INITIAL_SYNC: "First sync",
    CompanyStatus.ACTIVE: "Active",
    CompanyStatus.DISCONNECTED: "Disconnected",
}
# Spend and emissions are counted in pounds only: other base currencies are listed, not converted.
COUNTED_CURRENCY = "GBP"


def status_label(status: str) -> str:
    """``needs_reauth`` as people read it: ``Needs re-authorisation``."""
    return STATUS_LABELS.get(status, status.replace("_", " ").capitalize())


def run_label(kind: str, *, is_full_read: bool = False, after_reset: bool = False) -> str:
    """A run's kind as what it did: ``first sync`` / ``full re-import`` for a daily or manual run
    that read everything, else the kind (``daily``, ``backfill``, ``reset``, ``manual``)."""
    if kind in ("daily", "manual") and is_full_read:
        return "full re-import" if after_reset else "first sync"
    return kind


def currency_note(base_currency: str | None) -> str | None:
    """``base currency EUR: not counted (GBP only)``, or None for GBP (or not known yet)."""
    if base_currency is None or base_currency == COUNTED_CURRENCY:
        return None
    return f"base currency {base_currency}: not counted ({COUNTED_CURRENCY} only)"


def stream_state(
    stream: str, stats: dict[str, Any], states: dict[str, dict[str, Any]], run_status: str | None
) -> dict[str, Any]:
    """Where ``stream`` stands in a run: ``waiting`` (not started), ``reading``, ``retrying`` (with
    the time and Sage's answer), ``failed``, ``done``; ``not read`` when the run ended without it.

    The stream's own task records its state (``warehouse.stream_states``); a run from before
    that is read from its counters and its status.
    """
    found = states.get(stream)
    if found is not None:
        retry_at = found["retry_at"].isoformat() if found["retry_at"] else None
        return {"state": found["state"], "error": found["error"], "retry_at": retry_at}
    if run_status in (None, "running"):
        state = "reading" if stream in stats else "waiting"
    else:
        state = "done" if run_status == "success" else "not read"
    return {"state": state, "error": None, "retry_at": None}


def describe_state(state: dict[str, Any]) -> str:
    """``retrying at 13:15 UTC after "Sage answered 503"`` and the like, for the CLI and the pages."""
    text = state["state"]
    if state["state"] == "retrying":
        when = f" at {datetime.fromisoformat(state['retry_at']).astimezone(UTC):%H:%M} UTC" if state["retry_at"] else ""
        text = f"retrying{when}"
    if state["error"]:
        text += f' after "{state["error"]}"' if state["state"] == "retrying" else f': "{state["error"]}"'
    return text


def report(*, dsn: str | None = None) -> list[dict[str, Any]]:
    """:func:`company_statuses` on a new connection. A read: it never migrates.

    Raises :class:`~sage_sync.core.errors.LifecycleError` when the warehouse cannot be reached,
    or was never set up (the message names the command that sets it up).
    """
    with warehouse(dsn) as conn:
        return company_statuses(conn)


def company_statuses(conn: psycopg.Connection, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every company with its status, its daily start, its last run's progress and, in initial
    sync, how long it has taken."""
    window = daily_window()  # a bad setting is refused in one line before the read
    rows = reports.company_status_rows(conn)
    states = stream_states.states_of(conn, [r["sync_run_id"] for r in rows if r["sync_run_id"]])
    report = []
    for row in rows:
        now_ = now or row["db_now"]
        stats = row["stats"] or {}
        last_run = None
        if row["started_at"] is not None:
            end = row["ended_at"] or now_
            # Like with like: a stream's records count against a $total only if that stream reported one.
            totalled = [s for s in stats.values() if s.get("total_reported") is not None]
            run_states = states.get(row["sync_run_id"], {})
            last_run = {
                "sync_run_id": row["sync_run_id"],
                "kind": row["kind"],
                "label": run_label(row["kind"], is_full_read=row["is_full_read"], after_reset=row["after_reset"]),
                # The lane its Sage work queued in (core.lanes): its pool and its share of the rate.
                "lane": str(lane_of_run(row["kind"], full_read=row["is_full_read"])),
                "status": row["run_status"],
                "started_at": row["started_at"].isoformat(),
                "ended_at": row["ended_at"].isoformat() if row["ended_at"] else None,
                "elapsed_seconds": int((end - row["started_at"]).total_seconds()),
                "pages": sum(int(s.get("pages", 0)) for s in stats.values()),
                "records": sum(int(s.get("rows_seen", 0)) for s in stats.values()),
                "versions_added": sum(int(s.get("versions_added", 0)) for s in stats.values()),
                "total_reported": sum(int(s["total_reported"]) for s in totalled) if totalled else None,
                "records_of_total": sum(min(int(s.get("rows_seen", 0)), int(s["total_reported"])) for s in totalled),
                "streams": {name: stream_state(name, stats, run_states, row["run_status"]) for name in STREAMS},
            }
        initial = None
        if row["status"] == CompanyStatus.INITIAL_SYNC:
            started = row["initial_sync_started_at"]
            elapsed = (now_ - started).total_seconds() if started else None
            initial = {
                "started_at": started.isoformat() if started else None,
                "elapsed_seconds": int(elapsed) if elapsed is not None else None,
                "overdue": elapsed is not None and elapsed > INITIAL_SYNC_OVERDUE.total_seconds(),
            }
        report.append(
            {
                "company_id": row["company_id"],
                "company_name": row["company_name"],
                "status": row["status"],
                "status_label": status_label(row["status"]),
                "base_currency": row["base_currency"],
                "synced_from": row["synced_from_quarter"],
                "last_error": row["last_error"],
                "connected_at": row["connected_at"].isoformat() if row["connected_at"] else None,
                "disconnected_at": row["disconnected_at"].isoformat() if row["disconnected_at"] else None,
                # When its daily run starts (UTC), and whether that is its own time or the spread.
                "daily_start": describe_start(row["company_id"], row["daily_start_minute"], window),
                "initial_sync": initial,
                "last_run": last_run,
            }
        )
    return report


def format_duration(seconds: int | None) -> str:
    """``3h 05m`` / ``42s``."""
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def plural(count: int, noun: str) -> str:
    """``1 page``, ``2 pages``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def utc_minute(stamp: str) -> str:
    """An ISO timestamp as ``2026-12-07 09:30 UTC``: a time without its zone reads as local."""
    return f"{datetime.fromisoformat(stamp).astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def describe(item: dict[str, Any]) -> str:
    """One line of ``status`` for a company."""
    label = status_label(item["status"])
    line = f"{item['company_name']} ({item['company_id']}): {label[0].lower()}{label[1:]}"
    line += f", Synced From {item['synced_from']}"
    start = item.get("daily_start")
    if start:
        line += f", daily at {describe_daily_start(start)}"
    note = currency_note(item.get("base_currency"))
    if note:
        line += f"; {note}"
    initial = item.get("initial_sync")
    if initial and initial["started_at"]:
        line += f"; initial sync running for {format_duration(initial['elapsed_seconds'])}"
        if initial["overdue"]:
            line += " (NOT COMPLETE AFTER 24 HOURS)"
    run = item["last_run"]
    if run:
        total = (
            f" ({run['records_of_total']} of {run['total_reported']} in the streams that report a total)"
            if run["total_reported"] is not None
            else ""
        )
        line += (
            f"; last run ({run.get('label', run['kind'])}) {run['status']} at {utc_minute(run['started_at'])} "
            f"({format_duration(run['elapsed_seconds'])}): {plural(run['pages'], 'page')}, "
            f"{plural(run['records'], 'record')}{total}, {plural(run['versions_added'], 'new version')}"
        )
        if run.get("lane") == Lane.HISTORY:
            line += ", in the history lane"
        if run["status"] == "running" and run.get("streams"):
            line += f"; streams: {describe_streams(run['streams'])}"
    if item["last_error"]:
        line += f"; last error: {item['last_error']}"
    return line


def describe_daily_start(start: dict[str, Any]) -> str:
    """``02:17 UTC (spread over 00:00-06:00 UTC)`` or ``07:30 UTC (set for this company)``."""
    why = "set for this company" if start["source"] == "set" else f"spread over {start['window']}"
    return f"{start['time']} UTC ({why})"


def describe_streams(streams: dict[str, dict[str, Any]]) -> str:
    """``2 done, 1 reading, purchase_invoices retrying at 13:15 UTC after "Sage answered 503", 6 waiting``."""
    parts = []
    for state in ("done", "reading", "waiting", "not read"):
        count = sum(1 for s in streams.values() if s["state"] == state)
        if count:
            parts.append(f"{count} {state}")
    parts += [f"{name} {describe_state(s)}" for name, s in streams.items() if s["state"] in ("retrying", "failed")]
    return ", ".join(parts)
