"""Read-only queries behind the Connect pages: run history, per-stream state, quarantine, the marts.

Nothing here writes. Each mart the pages read is named once, below, so a rename of a dbt model
is one line here. The marts are built by ``sage_transform``; until its first run they do not
exist, and :func:`mart_rows` says so (None) rather than failing the page.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

# Where analysts and the pages read the marts: views of the last published build
# (dbt/macros/publish/; dbt builds them in sage_marts), and the ones the pages read.
MARTS_SCHEMA = "analytics"
SYNC_HEALTH_MART = "rpt_sync_health"
CURRENCY_EXCEPTIONS_MART = "rpt_currency_exceptions"
SPEND_EXCEPTIONS_MART = "rpt_spend_exceptions"
EMISSIONS_COVERAGE_MART = "rpt_emissions_coverage"
EMISSIONS_BY_CATEGORY_MART = "rpt_emissions_by_category_quarter"
# Every mart the Connect pages read: a page reads them in one snapshot (lifecycle.inputs.warehouse).
PAGE_MARTS = (EMISSIONS_COVERAGE_MART, SYNC_HEALTH_MART, CURRENCY_EXCEPTIONS_MART, SPEND_EXCEPTIONS_MART)

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


def mart_exists(conn: psycopg.Connection, mart: str) -> bool:
    """Whether ``sage_transform`` has built ``mart`` yet."""
    row = conn.execute("select to_regclass(%s) is not null", (f"{MARTS_SCHEMA}.{mart}",)).fetchone()
    return bool(row and row[0])


def mart_rows(
    conn: psycopg.Connection, mart: str, company_id: str, *, order_by: str, limit: int = 50
) -> tuple[int, list[dict[str, Any]]] | None:
    """The company's rows of ``mart`` (count, first ``limit`` by ``order_by``); None if not built yet.

    ``order_by`` is a comma-separated list of column names, ``-name`` for descending.
    """
    if not mart_exists(conn, mart):
        return None
    table = sql.Identifier(MARTS_SCHEMA, mart)
    total = conn.execute(
        sql.SQL("select count(*) from {} where company_id = %s").format(table), (company_id,)
    ).fetchone()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL("select * from {} where company_id = %s order by {} limit %s").format(
                table, sql.SQL(", ").join(_order_term(c) for c in order_by.split(","))
            ),
            (company_id, limit),
        )
        return int(total[0]) if total else 0, cur.fetchall()


def _order_term(column: str) -> sql.Composable:
    column = column.strip()
    if column.startswith("-"):
        return sql.SQL("{} desc nulls last").format(sql.Identifier(column[1:]))
    return sql.Identifier(column)
