"""The dbt marts this package reads: their schema named once, each mart named once, read-only queries.

dbt builds the marts (``sage_transform``; dbt/macros/generate_schema_name.sql puts them in
``analytics``); this module only reads them, for the Connect pages (``mart_rows``) and the
emissions report (``quarter_rows``, ``companies_named``, ``base_currency``). A renamed dbt model
or schema is one line here. Until the first transform the marts do not exist: the pages get None
(:func:`mart_rows`), the report a :class:`~sage_sync.core.errors.ReportError` saying what to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from sage_sync.core.errors import ReportError

# Where dbt builds the marts, and the marts read here.
MARTS_SCHEMA = "analytics"
# int_emission_factors, the one model that reads the factor set in use, with its licence and attribution
INTERMEDIATE_SCHEMA = "sage_intermediate"
COMPANIES_MART = "dim_companies"
SYNC_HEALTH_MART = "rpt_sync_health"
CURRENCY_EXCEPTIONS_MART = "rpt_currency_exceptions"
SPEND_EXCEPTIONS_MART = "rpt_spend_exceptions"
EMISSIONS_BY_CATEGORY_QUARTER_MART = "rpt_emissions_by_category_quarter"
EMISSIONS_COVERAGE_MART = "rpt_emissions_coverage"
# What a page or a report reads together, in one snapshot (read_together): the Connect pages, the report.
PAGE_MARTS = (EMISSIONS_COVERAGE_MART, SYNC_HEALTH_MART, CURRENCY_EXCEPTIONS_MART, SPEND_EXCEPTIONS_MART)
REPORT_MARTS = (COMPANIES_MART, EMISSIONS_BY_CATEGORY_QUARTER_MART, EMISSIONS_COVERAGE_MART)


def _mart(name: str) -> sql.Identifier:
    return sql.Identifier(MARTS_SCHEMA, name)


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
    table = _mart(mart)
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


def _report_rows(conn: psycopg.Connection, query: sql.Composable, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a report query; a mart not built yet is a :class:`ReportError` saying what to run."""
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            cur.execute(query, params)
        except psycopg.errors.UndefinedTable as exc:
            conn.rollback()
            raise ReportError(
                "the emissions marts are not built yet: run the dbt transform (the sage_transform DAG or `dbt build`)"
            ) from exc
        return cur.fetchall()


def companies_named(conn: psycopg.Connection, company: str) -> list[dict[str, Any]]:
    """``company_id`` and ``company_name`` of the companies ``company`` names, as an id or a name
    (case-insensitive); an exact id first."""
    return _report_rows(
        conn,
        sql.SQL(
            "select company_id, coalesce(company_name, company_id) as company_name "
            "from {} where company_id = %(c)s or lower(company_name) = lower(%(c)s) "
            "order by company_id = %(c)s desc"
        ).format(_mart(COMPANIES_MART)),
        {"c": company},
    )


def base_currency(conn: psycopg.Connection, company_id: str) -> str | None:
    """The company's base currency as the marts know it (None when not known)."""
    rows = _report_rows(
        conn,
        # to_jsonb: a dim_companies built before base_currency existed reads as "not known", not an error
        sql.SQL("select to_jsonb(d) ->> 'base_currency' as base_currency from {} d where company_id = %(c)s").format(
            _mart(COMPANIES_MART)
        ),
        {"c": company_id},
    )
    return rows[0]["base_currency"] if rows else None


def quarter_query(
    mart: str, columns: list[str], company_id: str | None, from_date: date | None, extra_order: str = ""
) -> tuple[sql.Composed, dict[str, Any]]:
    """The query (and its parameters) of :func:`quarter_rows`: what the report, the pages and the
    marts bench run."""
    where = [sql.SQL("true")]
    if company_id is not None:
        where.append(sql.SQL("company_id = %(company_id)s"))
    if from_date is not None:
        where.append(sql.SQL("quarter_start_date >= %(from_date)s"))
    query = sql.SQL("select {} from {} where {} order by company_id, quarter{}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        _mart(mart),
        sql.SQL(" and ").join(where),
        sql.SQL(extra_order),
    )
    return query, {"company_id": company_id, "from_date": from_date}


def quarter_rows(
    conn: psycopg.Connection,
    mart: str,
    columns: list[str],
    company_id: str | None,
    from_date: date | None,
    extra_order: str = "",
) -> list[dict[str, Any]]:
    """``columns`` of a per-quarter mart, of one company (or all) from ``from_date`` (or all),
    ordered by company and quarter, then ``extra_order`` (``", kgco2e desc, category"``)."""
    return _report_rows(conn, *quarter_query(mart, columns, company_id, from_date, extra_order))


def factor_sets(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The factor set(s) the emissions marts were built with, with licence and attribution, as
    ``int_emission_factors`` carries them; [] before that model is built."""
    table = f"{INTERMEDIATE_SCHEMA}.int_emission_factors"
    if not conn.execute("select to_regclass(%s) is not null", (table,)).fetchone()[0]:
        return []
    return _report_rows(
        conn,
        sql.SQL("select distinct factor_set, licence, attribution from {} order by factor_set").format(
            sql.Identifier(INTERMEDIATE_SCHEMA, "int_emission_factors")
        ),
        {},
    )


def read_together(conn: psycopg.Connection, names: Sequence[str]) -> None:
    """Make ``conn`` read the marts ``names`` together: one read-only REPEATABLE READ transaction,
    so every query of a page or report sees the same published build (a build publishes all its
    marts in one transaction: dbt/macros/publish/). The marts are locked (ACCESS SHARE) before the
    first query takes the snapshot, so a publish that re-creates a view (a deploy that changes its
    columns) waits for this read instead of swapping the view under a snapshot that predates it."""
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    lock = sql.SQL("lock table {} in access share mode").format(sql.SQL(", ").join(_mart(name) for name in names))
    try:
        conn.execute(lock)
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):  # not built yet: nothing to wait for
        conn.rollback()
