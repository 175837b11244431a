"""Read-only queries behind the status report and the Connect pages: companies with their latest
run, run history, watermarks, quarantine.

Nothing here writes. The dbt marts the pages read are ``marts``'s.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

# A run that is a full read, whichever its kind: none succeeded before it since the company was
# created or last reset (then its watermarks are empty and every stream is read from Synced From).
RUN_FLAGS_SQL = """
    not exists (select 1 from sage_control.sync_runs p
                where p.company_id = {run}.company_id and p.status = 'success' and p.started_at < {run}.started_at
                  and p.started_at >= coalesce((select max(e.occurred_at) from sage_control.connection_events e
                      where e.company_id = {run}.company_id and e.event_type = 'reset'
                        and e.occurred_at <= {run}.started_at), '-infinity')) as is_full_read,
    exists (select 1 from sage_control.connection_events e where e.company_id = {run}.company_id
            and e.event_type = 'reset' and e.occurred_at <= {run}.started_at) as after_reset
"""
# The base currency Sage holds for the company: its latest financial_settings.
BASE_CURRENCY_SQL = """
    (select f.payload -> 'base_currency' ->> 'id' from sage_raw.financial_settings f
     where f.company_id = {company}.company_id order by f._extracted_at desc limit 1)
"""


# The latest version of the company's ``businesses`` record: the name Sage shows for it.
_SAGE_NAME = """
    (select coalesce(nullif(b.payload ->> 'name', ''), nullif(b.payload ->> 'displayed_as', ''))
     from sage_raw.businesses b where b.company_id = c.company_id
     order by b._extracted_at desc limit 1)
"""


def company_names(conn: psycopg.Connection) -> dict[str, str | None]:
    """Per company, the business name Sage holds for it (None before its first sync)."""
    rows = conn.execute(f"select c.company_id, {_SAGE_NAME} from sage_control.companies c").fetchall()
    return {company_id: name for company_id, name in rows}


def company_status_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every company with its latest run (``run_status``, the :data:`RUN_FLAGS_SQL` flags), its base
    currency, the database's ``now()`` (``db_now``) and when its first sync since connecting or the
    last reset started (``initial_sync_started_at``): the rows of the status report."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            select c.company_id, c.company_name, c.status, c.synced_from_quarter, c.last_error,
                   c.connected_at, c.disconnected_at, c.created_at, c.daily_start_minute, now() as db_now,
                   r.sync_run_id, r.kind, r.status as run_status, r.started_at, r.ended_at, r.stats,
                   r.is_full_read, r.after_reset, {base_currency} as base_currency,
                   (select min(f.started_at) from sage_control.sync_runs f
                    where f.company_id = c.company_id and f.started_at >= coalesce(
                        (select max(e.occurred_at) from sage_control.connection_events e
                         where e.company_id = c.company_id and e.event_type = 'reset'), c.created_at)
                   ) as initial_sync_started_at
            from sage_control.companies c
            left join lateral (
                select r.*, {run_flags} from sage_control.sync_runs r
                where r.company_id = c.company_id order by r.started_at desc limit 1
            ) r on true
            order by c.company_name, c.company_id
            """.format(run_flags=RUN_FLAGS_SQL.format(run="r"), base_currency=BASE_CURRENCY_SQL.format(company="c"))
        )
        return cur.fetchall()


def recent_runs(conn: psycopg.Connection, company_id: str, limit: int = 10) -> list[dict[str, Any]]:
    """The company's last ``limit`` runs, newest first, with their per-stream counters and
    whether each was a full read (:data:`RUN_FLAGS_SQL`)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "select r.sync_run_id, r.kind, r.status, r.started_at, r.ended_at, r.stats, r.error, "
                "now() as db_now, {} from sage_control.sync_runs r where r.company_id = %s "
                "order by r.started_at desc, r.sync_run_id desc limit %s"
            ).format(sql.SQL(RUN_FLAGS_SQL.format(run="r"))),
            (company_id, limit),
        )
        return cur.fetchall()


def base_currencies(conn: psycopg.Connection) -> dict[str, str | None]:
    """Per company, the base currency Sage holds for it (its latest ``financial_settings``)."""
    rows = conn.execute(
        sql.SQL("select c.company_id, {} from sage_control.companies c").format(
            sql.SQL(BASE_CURRENCY_SQL.format(company="c"))
        )
    ).fetchall()
    return {company_id: currency for company_id, currency in rows}


def last_success_ended(conn: psycopg.Connection, company_id: str) -> Any:
    """When the company's last successful sync ended: every stream, Sage's deletion list included,
    was read then (a backfill reads older documents only, not the deletion list)."""
    row = conn.execute(
        "select max(coalesce(ended_at, started_at)) from sage_control.sync_runs "
        "where company_id = %s and status = 'success' and kind <> 'backfill'",
        (company_id,),
    ).fetchone()
    return row[0] if row else None


def run_stats(conn: psycopg.Connection, company_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stats of each company's latest run (by ``started_at``): ``{company_id: stats}``."""
    return {company_id: run["stats"] for company_id, run in latest_runs(conn, company_ids).items()}


def latest_runs(conn: psycopg.Connection, company_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each company's latest run (by ``started_at``): ``{company_id: {sync_run_id, kind, status, stats}}``."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "select distinct on (company_id) company_id, sync_run_id, kind, status, stats from sage_control.sync_runs "
            "where company_id = any(%s) order by company_id, started_at desc, sync_run_id desc",
            (company_ids,),
        )
        return {row["company_id"]: {**row, "stats": row["stats"] or {}} for row in cur.fetchall()}


def watermarks(conn: psycopg.Connection, company_id: str) -> dict[str, dict[str, Any]]:
    """Per stream: how far its change feed (``updated_since``) and deletion feed have been read."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "select stream, updated_since, deleted_since, updated_at from sage_control.watermarks "
            "where company_id = %s",
            (company_id,),
        )
        return {row["stream"]: row for row in cur.fetchall()}


def quarantined(conn: psycopg.Connection, company_id: str, limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
    """How many records of the company are quarantined, and the newest ``limit`` with their reasons."""
    total = conn.execute("select count(*) from sage_raw.quarantine where company_id = %s", (company_id,)).fetchone()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "select stream, record_id, reason, _extracted_at as landed_at from sage_raw.quarantine "
            "where company_id = %s order by _extracted_at desc limit %s",
            (company_id, limit),
        )
        return int(total[0]) if total else 0, cur.fetchall()
