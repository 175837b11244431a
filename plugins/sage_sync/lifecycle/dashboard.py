"""What the Connect pages show: the dashboard of companies and one company's page.

Plain data (dicts, lists) built from the control tables, the marts and Airflow's schedule, so the
web layer only renders. The rules a reader must be able to trust live here:

- **Names.** A company is shown by its name; when the registered name is missing or is just the
  id, the business name Sage holds for it (its ``businesses`` record) is used.
- **Progress compares like with like, per stream.** A stream's records read are set against the
  ``$total`` Sage reported *for that stream*; streams that report no ``$total`` are listed apart
  and never added to one side of a sum only. "Share done" is over the streams with a total.
- **Errors come with the action that fixes them** (:func:`problem`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sage_sync.core.errors import AirflowUnavailable, LifecycleError
from sage_sync.core.status import CompanyStatus
from sage_sync.lifecycle import airflow_api
from sage_sync.lifecycle.inputs import backfill_quarters, connect_quarters, require_company, warehouse
from sage_sync.lifecycle.report import latest_quarters
from sage_sync.lifecycle.status import DISPLAY_ORDER, company_statuses, format_duration
from sage_sync.pipeline.env import airflow_run_of
from sage_sync.sage.streams import STREAMS
from sage_sync.warehouse import reports

log = logging.getLogger(__name__)

HISTORY_LENGTH = 10
EXCEPTIONS_SHOWN = 50

__all__ = [
    "DISPLAY_ORDER",
    "HISTORY_LENGTH",
    "backfill_quarters",
    "company_page",
    "connect_quarters",
    "display_name",
    "format_duration",
    "overview",
    "problem",
    "progress",
]


def display_name(company_id: str, registered: str | None, sage_name: str | None) -> str:
    """The name to show: the registered one, else Sage's business name, else (last resort) the id."""
    if registered and registered != company_id:
        return registered
    return sage_name or registered or company_id


def progress(stats: dict[str, Any], *, elapsed_seconds: int | None = None) -> dict[str, Any]:
    """Per-stream progress of a run from its ``stats``, and totals that add up.

    ``streams``: every registered stream with pages, records read, Sage's ``$total`` (None when it
    reported none) and its share done. ``records_done``/``total`` sum only the streams with a
    ``$total`` (each stream's records capped at its own total: a repeated pass re-reads records);
    ``records_untotalled`` are the records of streams without one. The ETA extrapolates the
    elapsed time over the share done, so it is an estimate that firms up as the sync runs.
    """
    streams = []
    done = total = untotalled = 0
    for name in [*STREAMS, *sorted(set(stats) - set(STREAMS))]:
        s = stats.get(name)
        if s is None:
            streams.append(
                {
                    "stream": name,
                    "started": False,
                    "pages": 0,
                    "records": 0,
                    "total": None,
                    "share": None,
                    "quarantined": 0,
                }
            )
            continue
        records = int(s.get("rows_seen", 0))
        stream_total = int(s["total_reported"]) if s.get("total_reported") is not None else None
        share = None
        if stream_total is not None:
            done += min(records, stream_total)
            total += stream_total
            share = 1.0 if stream_total == 0 else min(records, stream_total) / stream_total
        else:
            untotalled += records
        streams.append(
            {
                "stream": name,
                "started": True,
                "pages": int(s.get("pages", 0)),
                "records": records,
                "total": stream_total,
                "share": share,
                "quarantined": int(s.get("quarantined", 0)),
            }
        )
    share = done / total if total else None
    eta = None
    if elapsed_seconds is not None and share and share < 1:
        eta = int(elapsed_seconds * (1 - share) / share)
    return {
        "streams": streams,
        "records_done": done,
        "total": total,
        "records_untotalled": untotalled,
        "share": share,
        "elapsed_seconds": elapsed_seconds,
        "eta_seconds": eta,
        "pages": sum(s["pages"] for s in streams),
    }


def problem(status: str, last_error: str | None, last_run: dict[str, Any] | None) -> dict[str, str] | None:
    """The company's current problem in words and the action that fixes it; None when all is well.

    ``action`` is one of ``reconnect``, ``log`` (read the failed run's task log) or ``wait``;
    ``fix`` says in words what to do.
    """
    detail = f" Sage said: {last_error}" if last_error else ""
    if status == CompanyStatus.NEEDS_REAUTH:
        return {
            "words": "Sage no longer accepts this company's authorisation: it was revoked in Sage, "
            "or it expired after a long time without a sync." + detail,
            "fix": "Reconnect the company and authorise access at Sage again; the next run then "
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
    if last_run and last_run["status"] == "failed":
        return {
            "words": f"The last {last_run['kind']} run failed: {last_run.get('error') or 'see its log'}.",
            "fix": "Open the run's task log for the cause; once fixed, the next daily run catches up "
            "by itself (nothing is lost: watermarks move only after a complete read).",
            "action": "log",
        }
    return None


def _run_row(company_id: str, run: dict[str, Any]) -> dict[str, Any]:
    stats = run["stats"] or {}
    end = run["ended_at"] or run["db_now"]
    airflow_run = airflow_run_of(company_id, run["sync_run_id"])
    dag_id = airflow_api.run_dag_id(company_id, run["kind"])
    return {
        "sync_run_id": run["sync_run_id"],
        "kind": run["kind"],
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
        "run_path": airflow_api.ui_run_path(dag_id, airflow_run) if airflow_run else None,
        "log_path": (
            airflow_api.ui_task_path(dag_id, airflow_run, airflow_api.log_task(run["kind"])) if airflow_run else None
        ),
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
    with warehouse(dsn) as conn:  # a read: it never migrates (set-up does)
        items = company_statuses(conn)
        names = reports.company_names(conn)
        stats = reports.run_stats(conn, [i["company_id"] for i in items])
        history = {
            i["company_id"]: [
                _run_row(i["company_id"], r) for r in reports.recent_runs(conn, i["company_id"], HISTORY_LENGTH)
            ]
            for i in items
        }
        # last: until the transform has built the emissions marts this rolls the connection back
        emissions = latest_quarters(conn)
    schedule = _next_runs(caller)
    for item in items:
        company_id = item["company_id"]
        item["name"] = display_name(company_id, item["company_name"], names.get(company_id))
        item["history"] = history[company_id]
        item["emissions"] = emissions.get(company_id, [])
        last = item["history"][0] if item["history"] else None
        item["problem"] = problem(item["status"], item["last_error"], last)
        item["next_run_known"] = schedule is not None
        item["next_run"] = (schedule or {}).get(airflow_api.dag_id_for(company_id))
        if item["status"] in (CompanyStatus.DISCONNECTED,):
            item["next_run"] = None
        run = item["last_run"]
        elapsed = run["elapsed_seconds"] if run and run["status"] == "running" else None
        item["progress"] = progress(stats.get(company_id, {}), elapsed_seconds=elapsed) if run else None
    return items


def company_page(
    company_id: str, caller: airflow_api.Caller | None = None, *, dsn: str | None = None
) -> dict[str, Any]:
    """One company: its dashboard entry, streams (progress and watermarks), sync_health and exceptions.

    Each mart is None until ``sage_transform`` has built it. Raises :class:`LifecycleError` for
    an unknown company.
    """
    items = {i["company_id"]: i for i in overview(caller, dsn=dsn)}
    if company_id not in items:
        with warehouse(dsn) as conn:
            require_company(conn, company_id)  # raises the one-line refusal
        raise LifecycleError(f"unknown company {company_id!r}")
    item = items[company_id]
    with warehouse(dsn) as conn:
        company = require_company(conn, company_id)
        marks = reports.watermarks(conn, company_id)
        health = reports.mart_rows(conn, reports.SYNC_HEALTH_MART, company_id, order_by="stream", limit=100)
        currency = reports.mart_rows(
            conn,
            reports.CURRENCY_EXCEPTIONS_MART,
            company_id,
            order_by="-transaction_date,record_id",
            limit=EXCEPTIONS_SHOWN,
        )
        spend = reports.mart_rows(
            conn,
            reports.SPEND_EXCEPTIONS_MART,
            company_id,
            order_by="-transaction_date,record_id",
            limit=EXCEPTIONS_SHOWN,
        )
        quarantine_count, quarantine = reports.quarantined(conn, company_id, EXCEPTIONS_SHOWN)
    streams = (item["progress"] or progress({}))["streams"]
    for stream in streams:
        mark = marks.get(stream["stream"]) or {}
        stream["updated_since"] = mark.get("updated_since")
        stream["deleted_since"] = mark.get("deleted_since")
    return {
        **item,
        "streams": streams,
        "company": company,
        "backfill_quarters": [str(q) for q in backfill_quarters(company)],
        "sync_health": health[1] if health else None,
        "currency_exceptions": currency,
        "spend_exceptions": spend,
        "quarantine": (quarantine_count, quarantine),
        "as_of": datetime.now(UTC),
    }


def named_company(company_id: str, *, dsn: str | None = None) -> tuple[Any, str]:
    """The registered company and the name to show for it; :class:`LifecycleError` if unknown."""
    with warehouse(dsn) as conn:
        company = require_company(conn, company_id)
        sage_name = reports.company_names(conn).get(company_id)
    return company, display_name(company_id, company.company_name, sage_name)
