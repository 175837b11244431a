"""What the Connect pages show: the dashboard of companies and one company's page.

Plain data (dicts, lists) built from the control tables, the marts and Airflow's schedule, so the
web layer only renders. The rules a reader must be able to trust live here:

- **Names.** A company is shown by its name; when the registered name is missing or is just the
  id, the business name Sage holds for it (its ``businesses`` record) is used.
- **Progress compares like with like, per stream.** A stream's records read are set against the
  ``$total`` Sage reported *for that stream*; streams that report no ``$total`` are listed apart
  and never added to one side of a sum only. "Share done" counts every stream, those not
  started yet included, and each stream says where it stands (waiting, reading, retrying at
  a time after Sage's answer, failed, done).
- **Errors come with the action that fixes them** (:func:`problem`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from sage_sync.core.errors import AirflowUnavailable, LifecycleError
from sage_sync.core.lanes import lane_of_run
from sage_sync.core.status import CompanyStatus
from sage_sync.lifecycle.inputs import airflow_retention, backfill_quarters, require_company, warehouse
from sage_sync.orchestration import airflow_api
from sage_sync.pipeline.env import airflow_run_of
from sage_sync.reporting.report import latest_quarters
from sage_sync.reporting.status import (
    company_statuses,
    currency_note,
    describe_state,
    format_duration,
    run_label,
    stream_state,
)
from sage_sync.sage.streams import STREAMS
from sage_sync.warehouse import marts, reports, stream_states

log = logging.getLogger(__name__)

HISTORY_LENGTH = 10
EXCEPTIONS_SHOWN = 50


def display_name(company_id: str, registered: str | None, sage_name: str | None) -> str:
    """The name to show: the registered one, else Sage's business name, else (last resort) the id."""
    if registered and registered != company_id:
        return registered
    return sage_name or registered or company_id


def progress(
    stats: dict[str, Any],
    *,
    states: dict[str, dict[str, Any]] | None = None,
    run_status: str | None = "running",
    kind: str | None = None,
    elapsed_seconds: int | None = None,
) -> dict[str, Any]:
    """Per-stream progress of a run from its ``stats`` and its streams' states, and totals that add up.

    ``streams``: every registered stream with its state (:func:`~sage_sync.reporting.status.stream_state`:
    waiting, reading, retrying, failed, done), pages, records read, Sage's ``$total`` (None when
    it reported none) and its share done. ``records_done``/``total`` sum only the streams with a
    ``$total`` (each stream's records capped at its own total: a repeated pass re-reads
    records); ``records_untotalled`` are the records of streams without one.

    ``share`` is over **every** stream, each counting for its own part: done is whole, a stream
    under way counts its records against its own ``$total``, and a stream not started yet (or
    one without a total still reading) counts nothing. So "59 of 59 records" in the one stream
    read so far is not 100 % while eight streams wait. The ETA extrapolates the elapsed time over
    that share: an estimate that firms up as the sync runs, and none while a stream waits for a
    retry (the retry's time is the better estimate). A backfill (``kind``) reads the document
    streams only: the others are ``not read`` and not part of its share.
    """
    states = states or {}
    streams = []
    done = total = untotalled = 0
    parts = 0.0
    in_run = 0
    for name in [*STREAMS, *sorted(set(stats) - set(STREAMS))]:
        s = stats.get(name) or {}
        if kind is not None and name not in stats and airflow_api.stream_task(kind, name) is None:
            state = {"state": "not read", "error": None, "retry_at": None}
        else:
            state = stream_state(name, stats, states, run_status)
            in_run += 1
        records = int(s.get("rows_seen", 0))
        stream_total = int(s["total_reported"]) if s.get("total_reported") is not None else None
        share = None
        if stream_total is not None:
            done += min(records, stream_total)
            total += stream_total
            share = 1.0 if stream_total == 0 else min(records, stream_total) / stream_total
        else:
            untotalled += records
        if state["state"] != "not read":
            parts += 1.0 if state["state"] == "done" else (share or 0.0)
        streams.append(
            {
                "stream": name,
                "started": name in stats or state["state"] in ("reading", "retrying", "failed", "done"),
                "pages": int(s.get("pages", 0)),
                "records": records,
                "total": stream_total,
                "share": share,
                "quarantined": int(s.get("quarantined", 0)),
                **state,
                "described": describe_state(state),
            }
        )
    share = parts / in_run if in_run else None
    troubled = [x for x in streams if x["state"] in ("retrying", "failed")]
    eta = None
    if elapsed_seconds is not None and share and share < 1 and not troubled:
        eta = int(elapsed_seconds * (1 - share) / share)
    counts = {
        key: sum(1 for x in streams if x["state"] == key)
        for key in ("done", "reading", "retrying", "failed", "waiting")
    }
    return {
        "streams": streams,
        "records_done": done,
        "total": total,
        "records_untotalled": untotalled,
        "share": share,
        "counts": counts,
        "troubled": troubled,
        "in_run": in_run,
        "elapsed_seconds": elapsed_seconds,
        "eta_seconds": eta,
        "pages": sum(x["pages"] for x in streams),
    }


def problem(
    status: str,
    last_error: str | None,
    last_run: dict[str, Any] | None,
    *,
    connected_at: datetime | None = None,
) -> dict[str, str] | None:
    """The company's current problem in words and the action that fixes it; None when all is well.

    ``action`` is one of ``reconnect``, ``log`` (read the failed run's task log) or ``wait``;
    ``fix`` says in words what to do. A failed run that ended before the company was last
    (re)connected is not a problem any more: the reconnect's catch-up run covers it, and its
    advice ("Sage refused the grant: reconnect") would only mislead.
    """
    detail = f" Sage said: {last_error}" if last_error else ""
    if status == CompanyStatus.NEEDS_REAUTH:
        return {
            "words": "Sage no longer accepts this company's authorisation: it was revoked in Sage, "
            "or it expired after a long time without a sync." + detail,
            "fix": "Reconnect the company and authorise access at Sage again; a catch-up run then "
            "imports every change since the last successful sync.",
            "action": "reconnect",
        }
    if status == CompanyStatus.BUSINESS_MISSING:
        return {
            "words": "The Sage login this company was connected with no longer reaches its business, so "
            "nothing is imported (another business's data is never stored in its place)." + detail,
            "fix": "Give that Sage user access to the business again, or reconnect the company with a user "
            "who has it; the next run checks again by itself.",
            "action": "reconnect",
        }
    if status == CompanyStatus.ERROR:
        return {
            "words": "Sage refuses access to this business: its Sage subscription is not active." + detail,
            "fix": "Renew the subscription in Sage (the business owner can); the next daily run picks "
            "it up again by itself.",
            "action": "wait",
        }
    if status == CompanyStatus.DISCONNECTED:
        return {
            "words": "Disconnected: nothing is imported; the data already imported is kept.",
            "fix": "Reconnect to resume the daily sync from where it stopped.",
            "action": "reconnect",
        }
    stale = bool(connected_at and last_run and last_run.get("ended_at") and last_run["ended_at"] < connected_at)
    if last_run and last_run["status"] == "failed" and not stale:
        return {
            "words": f"The last run ({last_run.get('label', last_run['kind'])}) failed: "
            f"{last_run.get('error') or 'see its log'}.",
            "fix": "Open the run's task log for the cause; once fixed, the next daily run catches up "
            "by itself (nothing is lost: watermarks move only after a complete read).",
            "action": "log",
        }
    return None


def _stream_links(company_id: str, kind: str, airflow_run: str | None) -> dict[str, str]:
    """Per stream, Airflow's page of the task instance that read it in this run (its log)."""
    if not airflow_run:
        return {}
    dag_id = airflow_api.run_dag_id(company_id, kind)
    links = {}
    for name in STREAMS:
        task = airflow_api.stream_task(kind, name)
        if task is not None:
            links[name] = airflow_api.ui_task_path(dag_id, airflow_run, *task)
    return links


def _log_path(company_id: str, run: dict[str, Any], airflow_run: str, states: dict[str, Any]) -> str:
    """The history's "task log" link: the task of the first stream in trouble, else the run's
    log task (a daily run reads every stream in its one ``sync`` task)."""
    dag_id = airflow_api.run_dag_id(company_id, run["kind"])
    for name in STREAMS:
        task = airflow_api.stream_task(run["kind"], name)
        if task is not None and states.get(name, {}).get("state") in ("retrying", "failed"):
            return airflow_api.ui_task_path(dag_id, airflow_run, *task)
    return airflow_api.ui_task_path(dag_id, airflow_run, airflow_api.log_task(run["kind"]))


def _run_row(
    company_id: str, run: dict[str, Any], states: dict[str, Any] | None = None, *, retention: timedelta | None = None
) -> dict[str, Any]:
    stats = run["stats"] or {}
    states = states or {}
    end = run["ended_at"] or run["db_now"]
    airflow_run = airflow_run_of(company_id, run["sync_run_id"])
    # Airflow's records of a run older than the retention are deleted by the housekeeping DAG
    # (orchestration.housekeeping): no link to a page Airflow no longer has.
    expired = airflow_run is not None and retention is not None and run["started_at"] < run["db_now"] - retention
    if expired:
        airflow_run = None
    dag_id = airflow_api.run_dag_id(company_id, run["kind"])
    return {
        "sync_run_id": run["sync_run_id"],
        "kind": run["kind"],
        "label": run_label(
            run["kind"], is_full_read=run.get("is_full_read", False), after_reset=run.get("after_reset", False)
        ),
        # The lane its Sage work queued in (core.lanes): its own pool and share of the rate.
        "lane": str(lane_of_run(run["kind"], full_read=run.get("is_full_read", False))),
        "status": run["status"],
        "started_at": run["started_at"],
        "ended_at": run["ended_at"],
        "duration": format_duration(int((end - run["started_at"]).total_seconds())),
        "pages": sum(int(s.get("pages", 0)) for s in stats.values()),
        "records": sum(int(s.get("rows_seen", 0)) for s in stats.values()),
        "versions_added": sum(int(s.get("versions_added", 0)) for s in stats.values()),
        "deletions": sum(int(s.get("deletions", 0)) for s in stats.values()),
        "quarantined": sum(int(s.get("quarantined", 0)) for s in stats.values()),
        "error": run["error"],
        "airflow_run_id": airflow_run,
        "airflow_expired": expired,
        "run_path": airflow_api.ui_run_path(dag_id, airflow_run) if airflow_run else None,
        "log_path": _log_path(company_id, run, airflow_run, states) if airflow_run else None,
        "stream_paths": _stream_links(company_id, run["kind"], airflow_run),
    }


def _next_runs(caller: airflow_api.Caller | None) -> dict[str, datetime | None] | None:
    try:
        return airflow_api.next_runs(caller)
    except AirflowUnavailable as exc:
        log.warning("next scheduled runs unknown: %s", exc)
        return None


def overview(caller: airflow_api.Caller | None = None, *, dsn: str | None = None) -> list[dict[str, Any]]:
    """Every company for the dashboard: name, status, Synced From, next run, problem, progress, history.

    Raises :class:`LifecycleError` when the warehouse cannot be reached. The next scheduled run
    comes from Airflow; when no api-server answers it is None and ``next_run_known`` False.
    """
    with warehouse(dsn, marts=marts.PAGE_MARTS) as conn:  # a read: it never migrates (set-up does)
        read = _overview_reads(conn)
    return _overview_items(read, _next_runs(caller))


def _overview_reads(conn: psycopg.Connection) -> dict[str, Any]:
    """What overview() reads, on an open connection: company_page reads its own marts after it
    in the same snapshot."""
    items = company_statuses(conn)
    retention = airflow_retention()
    runs = {i["company_id"]: reports.recent_runs(conn, i["company_id"], HISTORY_LENGTH) for i in items}
    states = stream_states.states_of(conn, [r["sync_run_id"] for found in runs.values() for r in found])
    return {
        "items": items,
        "names": reports.company_names(conn),
        "latest": reports.latest_runs(conn, [i["company_id"] for i in items]),
        "states": states,
        "history": {
            company_id: [_run_row(company_id, r, states.get(r["sync_run_id"]), retention=retention) for r in found]
            for company_id, found in runs.items()
        },
        # last: until the transform has built the emissions marts this rolls the connection back
        "emissions": latest_quarters(conn),
    }


def _overview_items(read: dict[str, Any], schedule: dict[str, Any] | None) -> list[dict[str, Any]]:
    """overview()'s entries from what it read and Airflow's schedule (None: no api-server answered)."""
    items, names, latest, states = read["items"], read["names"], read["latest"], read["states"]
    history, emissions = read["history"], read["emissions"]
    for item in items:
        company_id = item["company_id"]
        item["name"] = display_name(company_id, item["company_name"], names.get(company_id))
        item["history"] = history[company_id]
        item["currency_note"] = currency_note(item["base_currency"])
        item["emissions"] = [] if item["currency_note"] else emissions.get(company_id, [])
        last = item["history"][0] if item["history"] else None
        connected = datetime.fromisoformat(item["connected_at"]) if item["connected_at"] else None
        item["problem"] = problem(item["status"], item["last_error"], last, connected_at=connected)
        item["next_run_known"] = schedule is not None
        item["next_run"] = (schedule or {}).get(airflow_api.dag_id_for(company_id))
        if item["status"] in (CompanyStatus.DISCONNECTED,):
            item["next_run"] = None
        run = item["last_run"]
        elapsed = run["elapsed_seconds"] if run and run["status"] == "running" else None
        found = latest.get(company_id)
        item["progress"] = (
            progress(
                found["stats"],
                states=states.get(found["sync_run_id"], {}),
                run_status=found["status"],
                kind=found["kind"],
                elapsed_seconds=elapsed,
            )
            if found
            else None
        )
    return items


def company_page(
    company_id: str, caller: airflow_api.Caller | None = None, *, dsn: str | None = None
) -> dict[str, Any]:
    """One company: its dashboard entry, streams (state, progress, links, what was read when),
    sync_health and exceptions.

    Each mart is None until ``sage_transform`` has built it. Raises :class:`LifecycleError` for
    an unknown company.
    """
    # One snapshot for the whole page: its entry's emissions and the marts below show one build.
    with warehouse(dsn, marts=marts.PAGE_MARTS) as conn:
        read = _overview_reads(conn)
        if company_id not in {i["company_id"] for i in read["items"]}:
            require_company(conn, company_id)  # raises the one-line refusal
            raise LifecycleError(f"unknown company {company_id!r}")
        company = require_company(conn, company_id)
        marks = reports.watermarks(conn, company_id)
        checked = reports.last_success_ended(conn, company_id)
        health = marts.mart_rows(conn, marts.SYNC_HEALTH_MART, company_id, order_by="stream", limit=100)
        currency = marts.mart_rows(
            conn,
            marts.CURRENCY_EXCEPTIONS_MART,
            company_id,
            order_by="-transaction_date,record_id",
            limit=EXCEPTIONS_SHOWN,
        )
        spend = marts.mart_rows(
            conn,
            marts.SPEND_EXCEPTIONS_MART,
            company_id,
            order_by="-transaction_date,record_id",
            limit=EXCEPTIONS_SHOWN,
        )
        quarantine_count, quarantine = reports.quarantined(conn, company_id, EXCEPTIONS_SHOWN)
    item = {i["company_id"]: i for i in _overview_items(read, _next_runs(caller))}[company_id]
    streams = (item["progress"] or progress({}, run_status=None))["streams"]
    last = item["history"][0] if item["history"] else None
    for stream in streams:
        mark = marks.get(stream["stream"]) or {}
        stream["updated_since"] = mark.get("updated_since")
        stream["deleted_since"] = mark.get("deleted_since")
        stream["has_deletions"] = stream["stream"] in STREAMS and STREAMS[stream["stream"]].deletes
        stream["deletions_checked_at"] = checked if stream["has_deletions"] else None
        stream["log_path"] = (last or {}).get("stream_paths", {}).get(stream["stream"])
    return {
        **item,
        "streams": streams,
        "company": company,
        "backfill_quarters": [str(q) for q in backfill_quarters(company)],
        "sync_health": [_health_row(h) for h in health[1]] if health else None,
        "currency_exceptions": currency,
        "spend_exceptions": spend,
        "quarantine": (quarantine_count, quarantine),
        "as_of": datetime.now(UTC),
    }


# What a sync-health row compared, in words: the count Sage gave for the same records as "held".
COMPARED = {
    "full_read": "Sage's $total of the last full read",
    "window_count": "Sage's count of the whole synced window",
    "changes_only": "not compared: the last run read changes only",
    "not_reported": "not compared: Sage reported no total",
}


def _health_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``rpt_sync_health`` row with the number it was reconciled against, and what that was.

    A daily run's ``$total`` counts only the changes it listed (often 1); the warehouse's records
    are compared with Sage's count of the whole window instead, and that is the number to show
    beside "Records held".
    """
    scope = row.get("reconciliation_scope")
    compared_with = {"full_read": row.get("total_reported"), "window_count": row.get("window_total")}.get(scope)
    return {**row, "compared_with": compared_with, "compared": COMPARED.get(scope, scope)}


def registered_businesses(business_ids: list[str], *, dsn: str | None = None) -> dict[str, dict[str, str]]:
    """Which of ``business_ids`` are registered already: ``{id: {status, synced_from}}`` (the
    Connect form marks them, so a user sees which business is new)."""
    with warehouse(dsn) as conn:
        found = {i["company_id"]: i for i in company_statuses(conn) if i["company_id"] in set(business_ids)}
    return {cid: {"status": i["status"], "synced_from": i["synced_from"]} for cid, i in found.items()}


def named_company(company_id: str, *, dsn: str | None = None) -> tuple[Any, str]:
    """The registered company and the name to show for it; :class:`LifecycleError` if unknown."""
    with warehouse(dsn) as conn:
        company = require_company(conn, company_id)
        sage_name = reports.company_names(conn).get(company_id)
    return company, display_name(company_id, company.company_name, sage_name)
