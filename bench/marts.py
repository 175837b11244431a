"""Benchmark 7: the marts at analyst speed, each query beside its floor.

What an analyst, a BI tool, the company page and the report ask of the marts, timed on a warm
cache (median and p95 of several runs):

- **per company**: one company with N spend lines (default 1M and 5M): every analyst query of the
  README's ``sql`` blocks exactly as printed (``:'company_id'`` bound), the report's two queries
  (coverage and kg by category, the company page's emissions) and the overview page's latest
  quarters of every company. Target: <= 0.5 s each.
- **portfolio**: 500 companies sharing N lines (default 5M): every company's kg and £ by category
  for one quarter, and the overview page's read of every company's coverage. Target: <= 1 s.

The floor of each query is the same answer read from a plain table that already holds it (made
with ``create table ... as`` the query itself): what a query costs when nothing is left to
compute. The ratio query / floor is the measure; the target is in seconds.

The warehouse is built the way benchmark 3 builds it: a real initial sync of the fake's greenleaf,
its purchase invoices multiplied server-side (new ids, same shapes) to the lines asked for, then
``dbt seed`` and ``dbt run --full-refresh`` on the production target (timed and reported). The
portfolio copies that company's raw rows and control rows to 499 more company ids first.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from bench.common import ROOT, Result, connect_company, scratch_db
from bench.dbt_build import _dbt

RUNS = 9
PER_COMPANY_TARGET_S = 0.5
PORTFOLIO_TARGET_S = 1.0

# Every company's kg CO2e and £ by category for one quarter: the portfolio view of a warehouse.
PORTFOLIO_SQL = (
    "select category, sum(kgco2e) as kgco2e, sum(mapped_gbp) as mapped_gbp, "
    "sum(unmapped_gbp) as unmapped_gbp, sum(out_of_scope_gbp) as out_of_scope_gbp, count(distinct company_id) "
    "as companies from analytics.rpt_emissions_by_category_quarter where quarter = %(quarter)s "
    "group by category order by kgco2e desc nulls last"
)


def readme_queries() -> list[tuple[str, str]]:
    """(name, SQL) of every analyst query in the README's ``sql`` blocks, ``:'company_id'`` bound.

    Picked as tests/dbt/test_dbt_models.py picks the ones it runs through psql: a statement with
    a ``select``, named by its leading ``-- N.`` comment.
    """
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    found = []
    for statement in statements:
        if not re.search(r"^\s*select\b", statement, flags=re.M | re.I):
            continue
        title = re.search(r"--\s*(\d+)\.", statement)
        name = f"README {title.group(1)}" if title else f"README #{len(found) + 1}"
        found.append((name, statement.replace(":'company_id'", "%(company_id)s")))
    return found


def _timed(run: Callable[[], Any], runs: int = RUNS) -> tuple[float, float]:
    """Median and p95 (nearest rank) of ``runs`` timings after one warm-up run, in seconds."""
    run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    ranked = sorted(times)
    return statistics.median(ranked), ranked[min(len(ranked) - 1, round(0.95 * len(ranked)) - 1)]


def _query_result(
    conn: psycopg.Connection, name: str, query: str, params: dict[str, Any], target: float, label: str
) -> Result:
    """Time ``query`` and its floor (the same answer stored in a plain table), as one Result."""
    median, p95 = _timed(lambda: conn.execute(query, params).fetchall())
    floor_table = sql.Identifier("bench_floor", re.sub(r"\W+", "_", name.lower()).strip("_"))
    conn.execute(sql.SQL("drop table if exists {}").format(floor_table))
    conn.execute(sql.SQL("create table {} as ").format(floor_table) + sql.SQL(query), params)
    conn.execute(sql.SQL("analyze {}").format(floor_table))
    conn.commit()
    rows = conn.execute(sql.SQL("select count(*) from {}").format(floor_table)).fetchone()[0]
    floor_median, floor_p95 = _timed(lambda: conn.execute(sql.SQL("select * from {}").format(floor_table)).fetchall())
    return Result(
        "7 marts",
        f"seconds, {name} ({label})",
        median,
        floor_median,
        median / floor_median if floor_median else 0.0,
        f"<= {target} s",
        "PASS" if median <= target else "FAIL",
        {
            "median_s": round(median, 4),
            "p95_s": round(p95, 4),
            "floor_median_s": round(floor_median, 5),
            "floor_p95_s": round(floor_p95, 5),
            "rows": rows,
        },
    )


def _coverage_query(company_id: str | None) -> tuple[Any, dict[str, Any]]:
    """The report's and the pages' coverage query, of one company or (the overview) of all."""
    from sage_sync.reporting import report
    from sage_sync.warehouse import marts

    return marts.quarter_query(marts.EMISSIONS_COVERAGE_MART, report.COVERAGE_COLUMNS, company_id, None)


def _multiply_invoices(conn: psycopg.Connection, lines: int) -> int:
    """Copy the company's purchase invoices (new ids) until they hold about ``lines`` lines."""
    base_lines, base_invoices = conn.execute(
        "select coalesce(sum(jsonb_array_length(payload -> 'invoice_lines')), 0), count(*) "
        "from sage_raw.purchase_invoices"
    ).fetchone()
    per_invoice = max(1.0, base_lines / max(1, base_invoices))
    copies = max(0, round((lines - base_lines) / (per_invoice * base_invoices)))
    conn.execute(
        "insert into sage_raw.purchase_invoices select company_id, record_id || '-' || g, "
        "source_updated_at, jsonb_set(payload, '{id}', to_jsonb(record_id || '-' || g)), "
        "md5(content_hash || g), _extracted_at, _sync_run_id "
        "from sage_raw.purchase_invoices cross join generate_series(1, %s::int) g",
        (copies,),
    )
    return copies


def _copy_company(conn: psycopg.Connection, company_id: str, copies: int) -> None:
    """Copy every raw and control row of ``company_id`` to ``copies`` new company ids."""
    tables = conn.execute(
        "select table_schema, table_name, array_agg(column_name::text order by ordinal_position) "
        "from information_schema.columns where table_schema in ('sage_raw', 'sage_control') "
        "and table_name in (select table_name from information_schema.columns c2 "
        "where c2.table_schema = columns.table_schema and c2.column_name = 'company_id') "
        "and (column_default is null or column_name = 'company_id') "
        "and table_name not in ('oauth_tokens', 'pending_authorisations', 'notices', 'api_rate_buckets') "
        "group by table_schema, table_name order by table_schema = 'sage_control' desc, table_name = 'companies' desc"
    ).fetchall()
    suffixed = {"company_id", "sync_run_id"}
    for schema, table, columns in tables:
        selected = [
            sql.SQL("{} || '-c' || g").format(sql.Identifier(c)) if c in suffixed else sql.Identifier(c)
            for c in columns
        ]
        conn.execute(
            sql.SQL(
                "insert into {} ({}) select {} from {} cross join generate_series(1, %s::int) g where company_id = %s"
            ).format(
                sql.Identifier(schema, table),
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(selected),
                sql.Identifier(schema, table),
            ),
            (copies, company_id),
        )


def _build(lines: int, companies: int, dsn: str, tmp: str, sage: Any) -> tuple[str, dict[str, Any]]:
    """A synced, multiplied (and for companies > 1, copied) warehouse built by dbt; its figures."""
    from sage_sync.pipeline import sync

    company = connect_company(sage, dsn, "greenleaf")
    sync.run_company(company)
    with psycopg.connect(dsn) as conn:
        _multiply_invoices(conn, lines // companies)
        if companies > 1:
            _copy_company(conn, company, companies - 1)
        conn.execute("create schema if not exists bench_floor")
        conn.commit()
        conn.execute("analyze")
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    _dbt(["seed"], dbname, tmp)
    full = _dbt(["run", "--full-refresh"], dbname, tmp)
    with psycopg.connect(dsn) as conn:
        spend_lines = conn.execute("select count(*) from analytics.fct_spend_transactions").fetchone()[0]
    return company, {"full_refresh_s": round(full, 1), "spend_lines": spend_lines}


def per_company(lines: int) -> list[Result]:
    """Every README query, the report's and the overview's, for one company of ``lines`` lines."""
    from sage_sync.reporting import report
    from sage_sync.warehouse import marts
    from sandbox.fake_sage.server import FakeSageServer

    with (
        FakeSageServer(seed=4, scale=4.0) as sage,
        scratch_db("sage_bench_marts") as dsn,
        tempfile.TemporaryDirectory() as tmp,
    ):
        company, built = _build(lines, 1, dsn, tmp, sage)
        label = f"{built['spend_lines']:,} lines in 1 company"
        results = []
        with psycopg.connect(dsn) as conn:
            for name, query in readme_queries():
                results.append(_query_result(conn, name, query, {"company_id": company}, PER_COMPANY_TARGET_S, label))
            for name, (composed, params) in (
                ("report coverage", _coverage_query(company)),
                (
                    "report kg by category",
                    marts.quarter_query(
                        marts.EMISSIONS_BY_CATEGORY_QUARTER_MART,
                        report.CATEGORY_COLUMNS,
                        company,
                        None,
                        ", kgco2e desc, category",
                    ),
                ),
                ("overview latest quarters", _coverage_query(None)),
            ):
                query = composed.as_string(conn)
                results.append(_query_result(conn, name, query, params, PER_COMPANY_TARGET_S, label))
        for result in results:
            result.details.update(built)
        return results


def portfolio(lines: int, companies: int) -> list[Result]:
    """Every company's kg and £ by category for the busiest quarter, and the overview page's read of
    every company's coverage, ``lines`` over ``companies``."""
    from sandbox.fake_sage.server import FakeSageServer

    with (
        FakeSageServer(seed=4, scale=4.0) as sage,
        scratch_db("sage_bench_portfolio") as dsn,
        tempfile.TemporaryDirectory() as tmp,
    ):
        _company, built = _build(lines, companies, dsn, tmp, sage)
        label = f"{built['spend_lines']:,} lines in {companies} companies"
        with psycopg.connect(dsn) as conn:
            quarter = conn.execute(
                "select quarter from analytics.rpt_emissions_by_category_quarter "
                "group by quarter order by sum(net_gbp) desc nulls last limit 1"
            ).fetchone()[0]
            results = [
                _query_result(
                    conn, "portfolio by category", PORTFOLIO_SQL, {"quarter": quarter}, PORTFOLIO_TARGET_S, label
                ),
                # the overview page: every company's latest quarters of coverage
                _query_result(
                    conn,
                    "overview, every company",
                    _coverage_query(None)[0].as_string(conn),
                    {},
                    PORTFOLIO_TARGET_S,
                    label,
                ),
            ]
        for result in results:
            result.details.update(built, quarter=quarter)
        return results


def run(lines: list[int], portfolio_lines: int, portfolio_companies: int) -> list[Result]:
    """Benchmark 7 at each per-company size, then the portfolio."""
    results: list[Result] = []
    for size in lines:
        results.extend(per_company(size))
    if portfolio_lines and portfolio_companies:
        results.extend(portfolio(portfolio_lines, portfolio_companies))
    return results
