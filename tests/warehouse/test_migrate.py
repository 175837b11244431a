"""The warehouse schema is created by the project and re-running set-up changes nothing."""

import psycopg

from sage_sync.warehouse.migrate import migrate


def _schema_snapshot(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select table_schema, table_name, column_name, data_type from information_schema.columns "
        "where table_schema in ('sage_control', 'sage_raw') order by 1, 2, 3"
    ).fetchall()


def test_migrate_twice_changes_nothing(warehouse: psycopg.Connection) -> None:
    before = _schema_snapshot(warehouse)
    warehouse.execute(
        "insert into sage_control.companies (company_id, company_name, synced_from_quarter) "
        "values ('b1', 'Acme', '2024-Q1')"
    )
    warehouse.commit()
    assert migrate(warehouse) == [
        "001_init.sql",
        "002_lifecycle.sql",
        "003_landing_time_indexes.sql",
        "004_api_rate_buckets.sql",
        "005_run_fencing.sql",
        "006_grants.sql",
        "007_notices.sql",
        "008_sync_stream_states.sql",
        "009_daily_start.sql",
    ]
    assert _schema_snapshot(warehouse) == before
    assert warehouse.execute("select count(*) from sage_control.companies").fetchone() == (1,)
    tables = {r[1] for r in before if r[0] == "sage_raw"}
    assert {
        "purchase_invoices",
        "purchase_credit_notes",
        "purchase_quick_entries",
        "other_payments",
        "ledger_accounts",
        "contacts",
        "tax_rates",
        "financial_settings",
        "businesses",
        "deletions",
        "quarantine",
    } <= tables


def test_synced_from_must_be_a_quarter(warehouse: psycopg.Connection) -> None:
    try:
        warehouse.execute(
            "insert into sage_control.companies (company_id, company_name, synced_from_quarter) "
            "values ('b1', 'Acme', '2024-Q5')"
        )
    except psycopg.errors.CheckViolation:
        warehouse.rollback()
    else:  # pragma: no cover - the assertion below explains the failure
        raise AssertionError("a malformed quarter was accepted")
