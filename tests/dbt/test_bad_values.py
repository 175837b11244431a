"""One company's impossible value never stops or poisons another company's figures (issue 22, 5 and 6).

Raw rows as a loader from before load validation stored them: one company (``bad_co``) has a
document dated ``0000-00-00``, lines with ``"NaN"``, ``"1e400"``, ``-Infinity`` and boolean
amounts, a line array that is an object, reference records with an unreadable nominal code, flag,
percentage, timestamp and year end. A real ``dbt build`` must pass; the other company's
(``good_co``) marts must be exactly its own figures; ``bad_co``'s sound documents stay in the
fact, its bad ones are kept out whole and listed in ``rpt_invalid_values``; no sum is NaN.
(Before the guards the build failed on the first cast and skipped every mart, ``rpt_sync_health``
included; a NaN line made every total NaN with every test green.)
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.dbt.test_dbt_models import (
    Row,
    _dbt,
    _dbt_env,
    _document,
    _insert_rows,
    _invoice_line,
    _link,
    _other_payment,
    _quick_entry,
)

pytestmark = pytest.mark.dbt

GOOD = "good_co"
BAD = "bad_co"


def _invoice(company: str, record_id: str, net: str, **changes: Any) -> Row:
    payload = _document(
        record_id, "invoice", [_invoice_line(f"{record_id}_l1", net, "0.00", "GB_ZERO", "la_office", "Paper")]
    )
    payload.update(changes)
    return Row("purchase_invoices", company, record_id, payload)


def _with_line(company: str, record_id: str, **line_changes: Any) -> Row:
    row = _invoice(company, record_id, "10.00")
    row.payload["invoice_lines"][0].update(line_changes)
    return row


def _rows() -> list[Row]:
    rows: list[Row] = []
    for company in (GOOD, BAD):
        rows += [
            Row("businesses", company, company, {"id": company, "name": company, "country": _link("GB", "c")}),
            Row(
                "ledger_accounts",
                company,
                "la_office",
                {
                    "id": "la_office",
                    "name": "Office Costs",
                    "nominal_code": 7500,
                    "ledger_account_type": _link("OVERHEADS", "t"),
                    "included_in_chart": True,
                },
            ),
            Row("tax_rates", company, "GB_ZERO", {"id": "GB_ZERO", "name": "Zero", "percentage": "0.0"}),
        ]
    rows += [
        Row("financial_settings", GOOD, GOOD, {"base_currency": _link("GBP", "currencies")}),
        Row(
            "financial_settings",
            BAD,
            BAD,
            {"base_currency": _link("GBP", "currencies"), "year_end_date": "2025-02-30"},
        ),
        _invoice(GOOD, "g1", "100.00"),
        _invoice(GOOD, "g2", "50.25", date="2024-05-20"),
        # bad_co: one sound invoice, and every way a typed field can be broken
        _invoice(BAD, "b_ok", "70.00"),
        _invoice(BAD, "b_date", "11.00", date="0000-00-00"),
        _invoice(BAD, "b_due", "12.00", due_date="2026-02-30"),
        _with_line(BAD, "b_nan", net_amount="NaN"),
        _with_line(BAD, "b_big", net_amount="1e400", total_amount="1e400"),
        _with_line(BAD, "b_bool", net_amount=True),
        _with_line(BAD, "b_comma", tax_amount="1,234.00"),
        _with_line(BAD, "b_ledger", ledger_account={"id": 7500}),
        _invoice(BAD, "b_total", "13.00", total_amount="Infinity", created_at="yesterday"),
        _invoice(BAD, "b_lines_object", "14.00", invoice_lines={"id": "x", "net_amount": "14.00"}),
        Row(
            "purchase_credit_notes",
            BAD,
            "b_cn",
            _document("b_cn", "credit_note", [_invoice_line("b_cn_l1", "5.00", "0.00", "GB_ZERO", "la_office", "Back")])
            | {"original_invoice_date": "2026-13-01"},
        ),
        Row(
            "purchase_quick_entries",
            BAD,
            "b_qe",
            _quick_entry("b_qe", "INVOICE", "NaN", "0.00", "GB_ZERO", "la_office", "Sand"),
        ),
        Row(
            "other_payments",
            BAD,
            "b_op",
            _other_payment("b_op", "OTHER_PAYMENT", [("b_op_l1", "-Infinity", "0.00", "GB_ZERO", "la_office", "X")]),
        ),
        Row(
            "ledger_accounts",
            BAD,
            "la_bad",
            {"id": "la_bad", "name": "Bad", "nominal_code": "75OO", "included_in_chart": "maybe"},
        ),
        Row("tax_rates", BAD, "GB_ODD", {"id": "GB_ODD", "name": "Odd", "percentage": "NaN"}),
        Row(
            "contacts",
            BAD,
            "c_bad",
            {"id": "c_bad", "name": "Bad", "contact_types": [{"id": "VENDOR"}], "created_at": "2024-02-30T00:00:00Z"},
        ),
    ]
    return rows


EXPECTED_INVALID = {
    ("financial_settings", BAD): "year_end_date",
    ("ledger_accounts", "la_bad"): "nominal_code, included_in_chart",
    ("tax_rates", "GB_ODD"): "percentage",
    ("contacts", "c_bad"): "created_at",
    ("purchase_invoices", "b_date"): "date",
    ("purchase_invoices", "b_due"): "due_date",
    ("purchase_invoices", "b_nan"): "invoice_lines",
    ("purchase_invoices", "b_big"): "invoice_lines",
    ("purchase_invoices", "b_bool"): "invoice_lines",
    ("purchase_invoices", "b_comma"): "invoice_lines",
    ("purchase_invoices", "b_ledger"): "invoice_lines",
    ("purchase_invoices", "b_total"): "created_at, total_amount",
    ("purchase_invoices", "b_lines_object"): "invoice_lines",
    ("purchase_credit_notes", "b_cn"): "original_invoice_date",
    ("purchase_quick_entries", "b_qe"): "net_amount, total_amount",
    ("other_payments", "b_op"): "payment_lines",
}


def _load(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "select quote_ident(schemaname) || '.' || quote_ident(tablename) from pg_tables "
            "where schemaname in ('sage_control', 'sage_raw')"
        ).fetchall()
        conn.execute("truncate " + ", ".join(t[0] for t in tables) + " restart identity cascade")
        conn.execute(
            "insert into sage_control.companies "
            "(company_id, company_name, status, synced_from_quarter, connected_at) values "
            "(%s, 'Good Co', 'active', '2024-Q2', '2024-05-20T09:00:00Z'), "
            "(%s, 'Bad Co', 'active', '2024-Q2', '2024-05-21T09:00:00Z')",
            (GOOD, BAD),
        )
        _insert_rows(conn, _rows())


@pytest.fixture(scope="module")
def built(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[psycopg.Connection]:
    """The two companies landed and one real `dbt build` run (it must pass)."""
    env, tmp = _dbt_env(pg_dsn), tmp_path_factory.mktemp("dbt_bad_values")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists sage_staging, sage_intermediate, sage_marts, analytics cascade")
    _load(pg_dsn)
    result = _dbt(["build"], env, tmp)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    with psycopg.connect(pg_dsn) as conn:
        yield conn


def test_one_companys_bad_values_do_not_stop_the_build_or_the_other_company(built: psycopg.Connection) -> None:
    fact = built.execute(
        "select company_id, record_id, amount from analytics.fct_spend_transactions order by company_id, record_id"
    ).fetchall()
    # bad_co keeps its sound invoice; every document with a bad value is kept out whole.
    assert fact == [(BAD, "b_ok", Decimal("70.00")), (GOOD, "g1", Decimal("100.00")), (GOOD, "g2", Decimal("50.25"))]
    quarters = built.execute(
        "select company_id, sum(amount), bool_and(share_of_quarter_amount = 1) "
        "from analytics.rpt_spend_by_category_quarter group by company_id order by company_id"
    ).fetchall()
    assert quarters == [(BAD, Decimal("70.00"), True), (GOOD, Decimal("150.25"), True)]
    health = built.execute(
        "select company_id, count(*) from analytics.rpt_sync_health group by company_id order by company_id"
    ).fetchall()
    assert [company for company, streams in health if streams > 0] == [BAD, GOOD]


def test_no_sum_is_non_finite(built: psycopg.Connection) -> None:
    row = built.execute(
        "select count(*) filter (where net_amount = 'NaN' or abs(net_amount) = 'Infinity' "
        "  or total_amount = 'NaN' or abs(total_amount) = 'Infinity'), count(*) "
        "from sage_intermediate.int_spend_lines_signed"
    ).fetchone()
    assert row == (0, 3)
    for mart in ("rpt_spend_by_category_quarter", "rpt_spend_by_supplier_quarter", "rpt_emissions_coverage"):
        columns = [
            name
            for (name,) in built.execute(
                "select column_name from information_schema.columns where table_schema = 'analytics' "
                "and table_name = %s and data_type = 'numeric'",
                (mart,),
            ).fetchall()
        ]
        assert columns, mart
        non_finite = sql.SQL(" or ").join(
            sql.SQL("{c} = 'NaN' or abs({c}) = 'Infinity'").format(c=sql.Identifier(c)) for c in columns
        )
        query = sql.SQL("select count(*) from {} where {}").format(sql.Identifier("analytics", mart), non_finite)
        bad = built.execute(query).fetchone()
        assert bad == (0,), mart


def test_bad_values_read_as_null_and_are_listed(built: psycopg.Connection) -> None:
    listed = built.execute(
        "select stream, record_id, company_id, invalid_fields from analytics.rpt_invalid_values"
    ).fetchall()
    assert {(stream, record_id): fields for stream, record_id, company, fields in listed} == EXPECTED_INVALID
    assert {company for _, _, company, _ in listed} == {BAD}
    dates = built.execute(
        "select record_id, transaction_date, due_date from sage_staging.stg_sage__purchase_invoices "
        "where record_id in ('b_date', 'b_due') order by record_id"
    ).fetchall()
    assert dates == [("b_date", None, dates[0][2]), ("b_due", dates[1][1], None)]
    assert built.execute(
        "select nominal_code, is_included_in_chart from sage_staging.stg_sage__ledger_accounts "
        "where ledger_account_id = 'la_bad'"
    ).fetchone() == (None, None)
    assert built.execute(
        "select tax_rate_percentage from sage_staging.stg_sage__tax_rates where tax_rate_id = 'GB_ODD'"
    ).fetchone() == (None,)
    assert built.execute(
        "select line_count from sage_staging.stg_sage__purchase_invoices where record_id = 'b_lines_object'"
    ).fetchone() == (0,)


def test_the_line_model_refuses_non_finite_amounts(built: psycopg.Connection, pg_dsn: str, tmp_path: Path) -> None:
    """The backstop: were a NaN to reach the line table, the build's test on it fails."""
    built.execute(
        "insert into sage_intermediate.int_spend_lines_signed (company_id, stream, transaction_type, record_id, "
        "line_id, line_number, sign_multiplier, net_amount, tax_amount, total_amount, dbt_loaded_at) "
        "values (%s, 'purchase_invoices', 'PURCHASE_INVOICE', 'smuggled', 'l', 1, 1, 'NaN', 0, 'NaN', now())",
        (GOOD,),
    )
    built.commit()
    try:
        result = _dbt(
            ["test", "--select", "int_spend_lines_signed,test_name:finite_amount"], _dbt_env(pg_dsn), tmp_path
        )
        assert result.returncode == 1, result.stdout[-3000:]
        assert "finite_amount" in result.stdout and "FAIL 1" in result.stdout
    finally:
        built.execute("delete from sage_intermediate.int_spend_lines_signed where record_id = 'smuggled'")
        built.commit()
