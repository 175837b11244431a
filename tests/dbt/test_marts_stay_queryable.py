"""Analysts query the marts while dbt builds them: no mart ever disappears or shows a partial state.

dbt's own table and view materialisations (and an incremental model's full refresh) swap in a
new relation and `drop ... cascade` the old one, which drops every view downstream until its own
turn in the build. The project's materialisations (dbt/macros/materializations/) replace in
place, in one transaction. Here a loop of analyst queries (as the `analyst` role) runs through a
daily `dbt build` that adds data and through a `dbt build --full-refresh`, on a few tens of
thousands of spend lines, and every answer must be the state before the build or the state
after it, with no error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import analyst_role
from tests.dbt.test_dbt_models import GBP_CO, _dbt, _dbt_env, _load_later, _load_scenario

pytestmark = pytest.mark.dbt

GENERATED_INVOICES = 8_000  # two lines each, per batch


def _land_invoices(dsn: str, batch: str, extracted_at: str) -> None:
    """Land `GENERATED_INVOICES` two-line GBP invoices of gbp_co, as a sync would (one version each)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            """
            insert into sage_raw.purchase_invoices
                (company_id, record_id, source_updated_at, payload, content_hash, _extracted_at, _sync_run_id)
            select %(company)s, doc.payload ->> 'id', (doc.payload ->> 'updated_at')::timestamptz, doc.payload,
                   md5(doc.payload::text), %(extracted_at)s, 'run1'
            from generate_series(1, %(count)s) as n
            cross join lateral (select
                (n %% 89 + 1) || '.' || lpad((n %% 100)::text, 2, '0') as net_1,
                (n %% 13 + 1) || '.50' as net_2,
                date '2024-04-01' + (n %% 180) as doc_date
            ) as amounts
            cross join lateral (select jsonb_build_object(
                'id', 'pi_' || %(batch)s || '_' || n, 'displayed_as', 'PI-' || %(batch)s || '-' || n,
                'updated_at', '2024-05-15T10:00:00Z', 'deleted_at', null,
                'transaction_type', jsonb_build_object('id', 'PURCHASE_INVOICE'),
                'contact', jsonb_build_object('id', 'c_acme'), 'contact_name', 'Acme (old)',
                'date', amounts.doc_date::text, 'reference', 'GEN-' || n,
                'net_amount', (amounts.net_1::numeric + amounts.net_2::numeric)::text,
                'tax_amount', '0', 'total_amount', (amounts.net_1::numeric + amounts.net_2::numeric)::text,
                'currency', jsonb_build_object('id', 'GBP'), 'exchange_rate', '1.0',
                'status', jsonb_build_object('id', 'UNPAID'),
                'invoice_lines', jsonb_build_array(
                    jsonb_build_object('id', 'l1_' || %(batch)s || '_' || n, 'description', 'Paper',
                        'ledger_account', jsonb_build_object('id', 'la_office'), 'net_amount', amounts.net_1,
                        'tax_rate', jsonb_build_object('id', 'GB_ZERO'), 'tax_amount', '0',
                        'total_amount', amounts.net_1),
                    jsonb_build_object('id', 'l2_' || %(batch)s || '_' || n, 'description', 'Sand',
                        'ledger_account', jsonb_build_object('id', 'la_materials'), 'net_amount', amounts.net_2,
                        'tax_rate', jsonb_build_object('id', 'GB_ZERO'), 'tax_amount', '0',
                        'total_amount', amounts.net_2))
            ) as payload) as doc
        """,
            {"company": GBP_CO, "batch": batch, "extracted_at": extracted_at, "count": GENERATED_INVOICES},
        )


@dataclass
class AnalystLoop:
    """Queries the marts as the analyst role, over and over, until stopped; keeps what it saw."""

    dsn: str
    marts: list[str]
    totals: list[Decimal] = field(default_factory=list)  # gbp_co's rpt_spend_by_category_quarter total
    company_counts: list[int] = field(default_factory=list)  # rows of dim_companies
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(analyst_role(self.dsn))))
            while not self.stop.is_set():
                try:
                    missing = conn.execute(
                        "select coalesce(array_agg(name), '{}') from unnest(%s::text[]) as name "
                        "where to_regclass('analytics.' || quote_ident(name)) is null",
                        (self.marts,),
                    ).fetchone()[0]
                    if missing:
                        self.errors.append(f"missing marts: {missing}")
                    for mart in self.marts:  # every mart answers a query
                        conn.execute(f'select 1 from analytics."{mart}" limit 1').fetchall()
                    self.totals.append(
                        conn.execute(
                            "select coalesce(sum(amount), 0) from analytics.rpt_spend_by_category_quarter "
                            "where company_id = %s",
                            (GBP_CO,),
                        ).fetchone()[0]
                    )
                    self.company_counts.append(
                        conn.execute("select count(*) from analytics.dim_companies").fetchone()[0]
                    )
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {error}".strip())
                    time.sleep(0.05)


@pytest.fixture
def analysts(warehouse: psycopg.Connection, pg_dsn: str) -> Iterator[Callable[[list[str]], AnalystLoop]]:
    """Start an AnalystLoop over the given marts; stopped (and joined) at the end."""
    started: list[tuple[AnalystLoop, threading.Thread]] = []

    def start(marts: list[str]) -> AnalystLoop:
        loop = AnalystLoop(pg_dsn, marts)
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        started.append((loop, thread))
        return loop

    yield start
    for loop, thread in started:
        loop.stop.set()
        thread.join(timeout=60)


def _relation_ids(conn: psycopg.Connection) -> dict[str, int]:
    """The identity (oid) of every relation dbt built: unchanged when replaced in place."""
    return dict(
        conn.execute(
            "select n.nspname || '.' || c.relname, c.oid::int from pg_class as c "
            "join pg_namespace as n on n.oid = c.relnamespace "
            "where n.nspname in ('analytics', 'sage_intermediate', 'sage_staging') and c.relkind in ('r', 'v')"
        ).fetchall()
    )


def _total(conn: psycopg.Connection) -> Decimal:
    return conn.execute(
        "select coalesce(sum(amount), 0) from analytics.rpt_spend_by_category_quarter where company_id = %s", (GBP_CO,)
    ).fetchone()[0]


def _run_while_analysts_query(
    analysts: Callable[[list[str]], AnalystLoop], marts: list[str], args: list[str], dsn: str, tmp_path: Path
) -> AnalystLoop:
    loop = analysts(marts)
    while not loop.totals and not loop.errors:  # the loop is querying before the build starts
        time.sleep(0.05)
    result = _dbt(args, _dbt_env(dsn), tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    time.sleep(0.3)  # a few reads of the finished state
    loop.stop.set()
    return loop


def test_marts_stay_whole_during_a_daily_build_and_a_full_refresh(
    warehouse: psycopg.Connection, pg_dsn: str, analysts: Callable[[list[str]], AnalystLoop], tmp_path: Path
) -> None:
    warehouse.autocommit = True
    _load_scenario(pg_dsn)
    _land_invoices(pg_dsn, "a", "2024-06-01T06:00:00Z")
    # the first build creates every relation; a build here is the daily one (no dbt unit tests)
    result = _dbt(["build", "--exclude", "test_type:unit"], _dbt_env(pg_dsn), tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    marts = [
        r[0]
        for r in warehouse.execute(
            "select table_name from information_schema.tables where table_schema = 'analytics' order by 1"
        )
    ]
    assert {
        "fct_spend_transactions",
        "rpt_spend_by_category_quarter",
        "rpt_spend_by_supplier_quarter",
        "rpt_spend_exceptions",
        "rpt_currency_exceptions",
        "dim_companies",
        "dim_nominal_accounts",
        "dim_suppliers",
        "rpt_sync_health",
    } <= set(marts)
    lines = warehouse.execute("select count(*) from sage_intermediate.int_spend_lines_signed").fetchone()[0]
    assert lines > 2 * GENERATED_INVOICES
    before, relation_ids = _total(warehouse), _relation_ids(warehouse)

    # The next day's sync lands more invoices and the scenario's edits, void and deletion.
    _land_invoices(pg_dsn, "b", "2024-06-02T06:00:00Z")
    _load_later(pg_dsn)
    assert _total(warehouse) == before  # landed, not yet built
    daily = _run_while_analysts_query(analysts, marts, ["build", "--exclude", "test_type:unit"], pg_dsn, tmp_path)
    after = _total(warehouse)
    assert after != before
    assert daily.errors == [], daily.errors[:5]
    assert len(daily.totals) >= 10, "the analyst loop barely ran during the build"
    assert set(daily.totals) <= {before, after}, sorted(set(daily.totals) - {before, after})[:5]
    assert daily.totals[-1] == after
    assert set(daily.company_counts) == {2}
    assert _relation_ids(warehouse) == relation_ids  # every relation was replaced in place

    full = _run_while_analysts_query(
        analysts, marts, ["build", "--full-refresh", "--exclude", "test_type:unit"], pg_dsn, tmp_path
    )
    assert _total(warehouse) == after
    assert full.errors == [], full.errors[:5]
    assert len(full.totals) >= 10, "the analyst loop barely ran during the build"
    assert set(full.totals) == {after}
    assert set(full.company_counts) == {2}
    # seeds are dbt's own (`--full-refresh` re-creates them); every model was replaced in place
    seeds = {
        "sage_staging.company_category_overrides",
        "sage_staging.ledger_account_type_categories",
        "sage_staging.uk_default_chart_categories",
    }
    after_full = _relation_ids(warehouse)
    assert {k: v for k, v in after_full.items() if k not in seeds} == {
        k: v for k, v in relation_ids.items() if k not in seeds
    }
