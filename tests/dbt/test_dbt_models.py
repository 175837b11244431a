"""The dbt project against real PostgreSQL: crafted raw rows in, `dbt build` green, marts exact.

The scenario lands in two phases with a dbt run between them, as days do: phase 1, `dbt run` of
the incremental layers; phase 2 (an edit, a stale re-fetch, a void, a deletion detected late, a
payment re-typed as a receipt), then one `dbt build` (incremental models, seeds, schema tests, unit
tests, the raw-reconciliation test). The marts must then be exactly what a full build gives.

Company ``gbp_co`` (base GBP) holds the interesting cases; ``eur_co`` (base EUR) shows that a
non-GBP company's spend goes to rpt_currency_exceptions, never into the fact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from tests.conftest import ADMIN_URL, analyst_role
from tests.dbt_kit import run_dbt

pytestmark = pytest.mark.dbt

REPO = Path(__file__).resolve().parents[2]
DBT_PROJECT = REPO / "dbt"
DBT = str(Path(sys.executable).with_name("dbt"))

GBP_CO = "gbp_co"
EUR_CO = "eur_co"


# --------------------------------------------------------------------------- payload builders


def _link(id_: str | None, path: str) -> dict[str, Any] | None:
    if id_ is None:
        return None
    return {"id": id_, "displayed_as": id_, "$path": f"/{path}/{id_}"}


def _invoice_line(
    line_id: str, net: Any, tax: Any, tax_rate: str | None, ledger: str, description: str | None = None
) -> dict[str, Any]:
    total = Decimal(str(net)) + Decimal(str(tax))
    return {
        "id": line_id,
        "displayed_as": description,
        "description": description,
        "ledger_account": _link(ledger, "ledger_accounts"),
        "quantity": "1.0",
        "unit_price": str(net),
        "net_amount": net,
        "tax_rate": _link(tax_rate, "tax_rates"),
        "tax_amount": tax,
        "total_amount": str(total),
        "base_currency_net_amount": str(net),
    }


def _document(
    record_id: str,
    kind: str,
    lines: list[dict[str, Any]],
    *,
    status: str = "UNPAID",
    currency: str = "GBP",
    contact: str | None = "c_acme",
    contact_name: str | None = "Acme (old)",
    reference: str | None = None,
    date: str = "2024-05-01",
    updated_at: str = "2024-05-01T10:00:00Z",
) -> dict[str, Any]:
    lines_key, ttype = {
        "invoice": ("invoice_lines", "PURCHASE_INVOICE"),
        "credit_note": ("credit_note_lines", "PURCHASE_CREDIT_NOTE"),
    }[kind]
    net = sum(Decimal(str(line["net_amount"])) for line in lines)
    tax = sum(Decimal(str(line["tax_amount"])) for line in lines)
    return {
        "id": record_id,
        "displayed_as": record_id.upper(),
        "$path": f"/x/{record_id}",
        "created_at": "2024-05-01T09:00:00Z",
        "updated_at": updated_at,
        "deleted_at": None,
        "transaction_type": _link(ttype, "transaction_types"),
        "contact": _link(contact, "contacts"),
        "contact_name": contact_name,
        "date": date,
        "due_date": "2024-05-31",
        "reference": reference or record_id.upper(),
        "net_amount": str(net),
        "tax_amount": str(tax),
        "total_amount": str(net + tax),
        "currency": _link(currency, "currencies"),
        "exchange_rate": "1.0",
        "status": _link(status, "artefact_statuses"),
        lines_key: lines,
    }


def _quick_entry(
    record_id: str, qe_type: str, net: str, tax: str, tax_rate: str, ledger: str, details: str, status: str = "UNPAID"
) -> dict[str, Any]:
    return {
        "id": record_id,
        "displayed_as": record_id.upper(),
        "updated_at": "2024-05-03T10:00:00Z",
        "quick_entry_type": _link(qe_type, "quick_entry_types"),
        "transaction_type": _link(f"PURCHASE_QUICK_ENTRY_{qe_type}", "transaction_types"),
        "contact": _link("c_acme", "contacts"),
        "contact_name": "Acme (old)",
        "reference": record_id.upper(),
        "date": "2024-05-03",
        "ledger_account": _link(ledger, "ledger_accounts"),
        "details": details,
        "tax_rate": _link(tax_rate, "tax_rates"),
        "net_amount": net,
        "tax_amount": tax,
        "total_amount": str(Decimal(net) + Decimal(tax)),
        "currency": _link("GBP", "currencies"),
        "status": _link(status, "artefact_statuses"),
    }


def _other_payment(
    record_id: str, ttype: str, lines: list[tuple[str, str, str, str | None, str, str]], contact: str | None = None
) -> dict[str, Any]:
    payment_lines = [
        {
            "id": lid,
            "ledger_account": _link(ledger, "ledger_accounts"),
            "details": details,
            "tax_rate": _link(rate, "tax_rates"),
            "net_amount": net,
            "tax_amount": tax,
            "total_amount": str(Decimal(net) + Decimal(tax)),
        }
        for lid, net, tax, rate, ledger, details in lines
    ]
    return {
        "id": record_id,
        "displayed_as": record_id.upper(),
        "updated_at": "2024-05-04T10:00:00Z",
        "transaction_type": _link(ttype, "transaction_types"),
        "payment_method": _link("CASH", "pm"),
        "contact": _link(contact, "contacts"),
        "bank_account": _link("bank1", "bank_accounts"),
        "date": "2024-05-04",
        "reference": record_id.upper(),
        "payment_lines": payment_lines,
    }


# --------------------------------------------------------------------------- the scenario


@dataclass
class Row:
    stream: str
    company_id: str
    record_id: str
    payload: dict[str, Any]
    extracted_at: str = "2024-06-01T06:00:00Z"


def _scenario() -> list[Row]:
    rows = [
        Row("businesses", GBP_CO, GBP_CO, {"id": GBP_CO, "name": "GBP Co Ltd", "country": _link("GB", "c")}),
        Row("businesses", EUR_CO, EUR_CO, {"id": EUR_CO, "name": "EUR Co", "country": _link("IE", "c")}),
        Row("financial_settings", GBP_CO, GBP_CO, {"base_currency": _link("GBP", "currencies")}),
        Row("financial_settings", EUR_CO, EUR_CO, {"base_currency": _link("EUR", "currencies")}),
    ]
    for id_, name, code, type_ in [
        ("la_office", "Office Costs", 7500, "OVERHEADS"),
        ("la_materials", "Materials", 5000, "DIRECT_EXPENSES"),
        ("la_equipment", "Office Equipment", 30, "FIXED_ASSETS"),
    ]:
        rows.append(
            Row(
                "ledger_accounts",
                GBP_CO,
                id_,
                {
                    "id": id_,
                    "name": name,
                    "displayed_as": f"{name} ({code})",
                    "nominal_code": code,
                    "ledger_account_type": _link(type_, "ledger_account_types"),
                    "included_in_chart": True,
                },
            )
        )
    for id_, pct in [("GB_STANDARD", "20.0"), ("GB_LOWER", "5.0"), ("GB_ZERO", "0.0"), ("GB_EXEMPT", "0.0")]:
        rows.append(Row("tax_rates", GBP_CO, id_, {"id": id_, "name": id_, "percentage": pct}))
    rows += [
        # The supplier was renamed after the invoices were raised: the fact shows the current name.
        Row(
            "contacts",
            GBP_CO,
            "c_acme",
            {
                "id": "c_acme",
                "name": "Acme Ltd",
                "reference": "ACME001",
                "contact_types": [{"id": "VENDOR"}],
                "currency": _link("GBP", "currencies"),
                "updated_at": "2024-05-10T00:00:00Z",
            },
        ),
        Row(
            "contacts",
            GBP_CO,
            "c_customer",
            {"id": "c_customer", "name": "A Customer", "contact_types": [{"id": "CUSTOMER"}]},
        ),
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_1",
            _document(
                "pi_1",
                "invoice",
                [
                    _invoice_line("pi_1_l1", "100.00", "20.00", "GB_STANDARD", "la_office", "Paper"),
                    # a JSON number rather than a decimal string; no description -> the document reference
                    _invoice_line("pi_1_l2", 50.5, 0, "GB_ZERO", "la_materials"),
                ],
                reference="REF-1",
            ),
        ),
        # Two versions; the later one changed the amount. A stale re-fetch of version 1 landed last.
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_2",
            _document(
                "pi_2",
                "invoice",
                [_invoice_line("pi_2_l1", "200.00", "40.00", "GB_STANDARD", "la_office", "Rent v1")],
                updated_at="2024-05-01T10:00:00Z",
            ),
            "2024-05-01T12:00:00Z",
        ),
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_deleted",
            _document(
                "pi_deleted", "invoice", [_invoice_line("pi_deleted_l1", "999.00", "0", "GB_ZERO", "la_office", "Gone")]
            ),
        ),
        # voided only in phase 2
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_void",
            _document(
                "pi_void",
                "invoice",
                [_invoice_line("pi_void_l1", "300.00", "60.00", "GB_STANDARD", "la_office", "Void")],
            ),
        ),
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_draft",
            _document(
                "pi_draft",
                "invoice",
                [_invoice_line("pi_draft_l1", "40.00", "8.00", "GB_STANDARD", "la_office", "Draft")],
                status="DRAFT",
            ),
        ),
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_eur",
            _document(
                "pi_eur",
                "invoice",
                [_invoice_line("pi_eur_l1", "500.00", "0", "GB_ZERO", "la_office", "Euro bill")],
                currency="EUR",
            ),
        ),
        # No contact link, only the name snapshot; an unknown ledger account; no tax rate.
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_nocontact",
            _document(
                "pi_nocontact",
                "invoice",
                [_invoice_line("pi_nocontact_l1", "70.00", "0", None, "la_unknown", "Mystery")],
                contact=None,
                contact_name="Snapshot Supplies",
            ),
        ),
        Row(
            "purchase_credit_notes",
            GBP_CO,
            "pcn_1",
            _document(
                "pcn_1",
                "credit_note",
                [_invoice_line("pcn_1_l1", "30.00", "6.00", "GB_STANDARD", "la_office", "Returned paper")],
            ),
        ),
        Row(
            "purchase_quick_entries",
            GBP_CO,
            "qe_inv",
            _quick_entry("qe_inv", "INVOICE", "80.00", "4.00", "GB_LOWER", "la_materials", "Sand"),
        ),
        Row(
            "purchase_quick_entries",
            GBP_CO,
            "qe_cn",
            _quick_entry("qe_cn", "CREDIT_NOTE", "15.00", "0.00", "GB_EXEMPT", "la_materials", "Sand back"),
        ),
        Row(
            "other_payments",
            GBP_CO,
            "op_pay",
            _other_payment(
                "op_pay",
                "OTHER_PAYMENT",
                [
                    ("op_pay_l1", "60.00", "12.00", "GB_STANDARD", "la_equipment", "Laptop"),
                    ("op_pay_l2", "10.00", "0.00", "GB_NO_TAX", "la_office", "Stamps"),
                ],
                contact="c_acme",
            ),
        ),
        Row(
            "other_payments",
            GBP_CO,
            "op_refund",
            _other_payment(
                "op_refund",
                "OTHER_PAYMENT_REFUND",
                [("op_refund_l1", "5.00", "1.00", "GB_SPECIAL", "la_office", "Refund")],
            ),
        ),
        # first landed as a payment; phase 2 corrects it to a receipt (income, not spend)
        Row(
            "other_payments",
            GBP_CO,
            "op_receipt",
            _other_payment(
                "op_receipt", "OTHER_PAYMENT", [("op_receipt_l1", "1000.00", "0.00", "GB_ZERO", "la_office", "Income")]
            ),
        ),
        Row(
            "purchase_invoices",
            EUR_CO,
            "pi_b1",
            _document(
                "pi_b1",
                "invoice",
                [_invoice_line("pi_b1_l1", "700.00", "0", None, "la_x", "EUR company bill")],
                currency="EUR",
                contact=None,
            ),
        ),
        Row(
            "other_payments",
            EUR_CO,
            "op_b1",
            _other_payment(
                "op_b1", "OTHER_PAYMENT", [("op_b1_l1", "90.00", "0.00", None, "la_x", "EUR company payment")]
            ),
        ),
    ]
    return rows


LATER = "2024-06-02T06:00:00Z"
# The first (full) run's counters: Sage's $total per stream.
RUN1_STATS = {
    "ledger_accounts": {"pages": 1, "rows_seen": 3, "versions_added": 3, "total_reported": 3, "passes": 1},
    # pi_1, pi_2, pi_void, pi_draft, pi_eur, pi_nocontact (pi_deleted is gone): 6 current
    "purchase_invoices": {
        "pages": 1,
        "rows_seen": 7,
        "versions_added": 7,
        "total_reported": 6,
        "deletions": 1,
        "passes": 1,
    },
    # one more than the warehouse holds: not reconciled
    "purchase_credit_notes": {"pages": 1, "rows_seen": 1, "versions_added": 1, "total_reported": 2, "passes": 1},
}


def _later_rows() -> list[Row]:
    """Phase 2: what the next day's sync lands after the first dbt run."""
    receipt = _other_payment(
        "op_receipt", "OTHER_RECEIPT", [("op_receipt_l1", "1000.00", "0.00", "GB_ZERO", "la_office", "Income")]
    )
    receipt["updated_at"] = "2024-05-06T10:00:00Z"
    return [
        # pi_2 edited: version 2 changed the amount. A stale re-fetch of version 1 lands last.
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_2",
            _document(
                "pi_2",
                "invoice",
                [_invoice_line("pi_2_l1", "250.00", "50.00", "GB_STANDARD", "la_office", "Rent v2")],
                status="PAID",
                updated_at="2024-05-02T10:00:00Z",
            ),
            LATER,
        ),
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_2",
            _document(
                "pi_2",
                "invoice",
                [_invoice_line("pi_2_l1", "200.00", "40.00", "GB_STANDARD", "la_office", "Rent v1")],
                updated_at="2024-05-01T10:00:00Z",
            ),
            "2024-06-03T06:00:00Z",
        ),
        Row(
            "purchase_invoices",
            GBP_CO,
            "pi_void",
            _document(
                "pi_void",
                "invoice",
                [_invoice_line("pi_void_l1", "300.00", "60.00", "GB_STANDARD", "la_office", "Void")],
                status="VOID",
                updated_at="2024-05-05T10:00:00Z",
            ),
            LATER,
        ),
        Row("other_payments", GBP_CO, "op_receipt", receipt, LATER),
    ]


def _insert_rows(conn: psycopg.Connection, rows: list[Row]) -> None:
    for row in rows:
        canonical = json.dumps(row.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        conn.execute(
            sql.SQL(
                "insert into sage_raw.{} (company_id, record_id, source_updated_at, payload, "
                "content_hash, _extracted_at, _sync_run_id) values (%s, %s, %s, %s, %s, %s, 'run1')"
            ).format(sql.Identifier(row.stream)),
            (
                row.company_id,
                row.record_id,
                row.payload.get("updated_at"),
                Jsonb(row.payload),
                hashlib.sha256(canonical.encode()).hexdigest(),
                row.extracted_at,
            ),
        )


def _load_later(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        _insert_rows(conn, _later_rows())
        # a deletion detected a day after the document was first modelled
        conn.execute(
            "insert into sage_raw.deletions (company_id, stream, record_id, source_deleted_at, "
            "detection_method, _extracted_at, _sync_run_id) values "
            "(%s, 'purchase_invoices', 'pi_deleted', '2024-05-20T00:00:00Z', 'deleted_since', %s, 'run1')",
            (GBP_CO, LATER),
        )


def _load_scenario(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "select quote_ident(schemaname) || '.' || quote_ident(tablename) from pg_tables "
            "where schemaname in ('sage_control', 'sage_raw')"
        ).fetchall()
        conn.execute("truncate " + ", ".join(t[0] for t in tables) + " restart identity cascade")
        conn.execute(
            "insert into sage_control.companies "
            "(company_id, company_name, status, synced_from_quarter, connected_at) values "
            "(%s, 'GBP Co', 'active', '2024-Q2', '2024-05-20T09:00:00Z'), "
            "(%s, 'EUR Co', 'active', '2024-Q2', '2024-05-21T09:00:00Z')",
            (GBP_CO, EUR_CO),
        )
        conn.execute(
            "insert into sage_control.sync_runs "
            "(sync_run_id, company_id, kind, status, started_at, ended_at, stats) "
            "values ('run1', %s, 'daily', 'success', '2024-06-01T06:00:00Z', '2024-06-01T06:05:00Z', %s), "
            "('run2', %s, 'daily', 'failed', '2024-06-02T06:00:00Z', '2024-06-02T06:01:00Z', '{}')",
            (GBP_CO, Jsonb(RUN1_STATS), GBP_CO),
        )
        _insert_rows(conn, _scenario())


# --------------------------------------------------------------------------- running dbt


def _dbt_env(dsn: str) -> dict[str, str]:
    params = conninfo_to_dict(dsn)
    env = dict(os.environ)
    env.update(
        {
            "SAGE_PG_HOST": str(params.get("host") or "127.0.0.1"),
            "SAGE_PG_PORT": str(params.get("port") or "5432"),
            "SAGE_PG_USER": str(params.get("user") or "postgres"),
            "SAGE_PG_PASSWORD": str(params.get("password") or ""),
            "SAGE_PG_DBNAME": str(params["dbname"]),
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        }
    )
    return env


def _dbt_paths(tmp: Path) -> list[str]:
    # Own target and log paths, so parallel runs (and a developer's dbt/target) never collide.
    return [
        "--project-dir",
        str(DBT_PROJECT),
        "--profiles-dir",
        str(DBT_PROJECT),
        "--target-path",
        str(tmp / "target"),
        "--log-path",
        str(tmp / "logs"),
    ]


def _dbt(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_dbt([*args, *_dbt_paths(tmp)], env, DBT_PROJECT)


@dataclass
class ParseJob:
    process: subprocess.Popen[str]
    target: Path


@pytest.fixture(scope="module")
def parse_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParseJob]:
    """`dbt parse` pointed at an unreachable database, started early so it overlaps the build."""
    tmp = tmp_path_factory.mktemp("dbt_parse")
    # Cosmos builds its DAG from a manifest made by `dbt parse`, possibly where no database is reachable.
    env = {**os.environ, "SAGE_PG_HOST": "192.0.2.1", "SAGE_PG_PORT": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "False"}
    process = subprocess.Popen(
        [DBT, "parse", *_dbt_paths(tmp)],
        env=env,
        cwd=DBT_PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield ParseJob(process, tmp / "target")
    if process.poll() is None:
        process.kill()
    process.communicate()


@pytest.fixture(scope="module")
def built(
    pg_dsn: str,
    tmp_path_factory: pytest.TempPathFactory,
    parse_job: ParseJob,
) -> Iterator[psycopg.Connection]:
    """The scenario loaded and `dbt build` run; yields a connection to read the marts."""
    env, tmp = _dbt_env(pg_dsn), tmp_path_factory.mktemp("dbt")
    # Start from an empty modelled layer: an earlier module may have built into this session's
    # database, and incremental models keep what they hold when raw is truncated.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists sage_staging, sage_intermediate, sage_marts, analytics cascade")
    _load_scenario(pg_dsn)
    # Day 1: only the incremental layers (the jsonb-heavy part), as a first daily run builds them.
    result = _dbt(["run", "--select", "+int_spend_lines_signed"], env, tmp)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # Day 2: later versions and a late deletion land; the build is incremental from here.
    _load_later(pg_dsn)
    result = _dbt(["build"], env, tmp)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # The daily build in Airflow leaves dbt's unit tests out (they check the SQL, not the data);
    # this build is where they run, every one of them.
    ran = json.loads((tmp / "target" / "run_results.json").read_text())["results"]
    unit_tests = json.loads((tmp / "target" / "manifest.json").read_text())["unit_tests"]
    assert {r["unique_id"] for r in ran if r["unique_id"].startswith("unit_test.")} == set(unit_tests)
    with psycopg.connect(pg_dsn) as conn:
        yield conn


def _rows(conn: psycopg.Connection, query: str) -> list[tuple]:
    return conn.execute(query).fetchall()


# --------------------------------------------------------------------------- the tests


def test_dbt_parse_needs_no_database(parse_job: ParseJob, built: psycopg.Connection) -> None:
    # `built` only so the parse runs while dbt build does (the parse job starts first).
    output, _ = parse_job.process.communicate(timeout=600)
    assert parse_job.process.returncode == 0, output[-3000:]
    manifest = json.loads((parse_job.target / "manifest.json").read_text())
    models = {n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    assert {
        "fct_spend_transactions",
        "dim_companies",
        "dim_suppliers",
        "rpt_currency_exceptions",
        "rpt_spend_exceptions",
        "int_spend_lines_unioned",
    } <= models
    unit_tests = {n["name"] for n in manifest.get("unit_tests", {}).values()}
    assert len(unit_tests) >= 3


def test_fact_rows_are_exact(built: psycopg.Connection) -> None:
    rows = _rows(
        built,
        """
        select record_id, line_id, transaction_type, amount, vat_amount, gross_amount, currency,
               nominal_code, nominal_code_name, category, supplier_name, transaction_description, tax_status,
               tax_rate_percentage, document_status, is_fully_paid
        from analytics.fct_spend_transactions where company_id = 'gbp_co' order by record_id, line_id
    """,
    )
    d = Decimal
    assert rows == [
        (
            "op_pay",
            "op_pay_l1",
            "OTHER_PAYMENT",
            d("60.00"),
            d("12.00"),
            d("72.00"),
            "GBP",
            "0030",
            "Office Equipment",
            "capital_expenditure",
            "Acme Ltd",
            "Laptop",
            "standard",
            d("20.0"),
            None,
            True,
        ),
        (
            "op_pay",
            "op_pay_l2",
            "OTHER_PAYMENT",
            d("10.00"),
            d("0.00"),
            d("10.00"),
            "GBP",
            "7500",
            "Office Costs",
            "office_costs",
            "Acme Ltd",
            "Stamps",
            "outside_scope",
            None,
            None,
            True,
        ),
        (
            "op_refund",
            "op_refund_l1",
            "OTHER_PAYMENT_REFUND",
            d("-5.00"),
            d("-1.00"),
            d("-6.00"),
            "GBP",
            "7500",
            "Office Costs",
            "office_costs",
            None,
            "Refund",
            "other",
            None,
            None,
            True,
        ),
        (
            "pcn_1",
            "pcn_1_l1",
            "PURCHASE_CREDIT_NOTE",
            d("-30.00"),
            d("-6.00"),
            d("-36.00"),
            "GBP",
            "7500",
            "Office Costs",
            "office_costs",
            "Acme Ltd",
            "Returned paper",
            "standard",
            d("20.0"),
            "UNPAID",
            False,
        ),
        (
            "pi_1",
            "pi_1_l1",
            "PURCHASE_INVOICE",
            d("100.00"),
            d("20.00"),
            d("120.00"),
            "GBP",
            "7500",
            "Office Costs",
            "office_costs",
            "Acme Ltd",
            "Paper",
            "standard",
            d("20.0"),
            "UNPAID",
            False,
        ),
        (
            "pi_1",
            "pi_1_l2",
            "PURCHASE_INVOICE",
            d("50.5"),
            d("0"),
            d("50.5"),
            "GBP",
            "5000",
            "Materials",
            "direct_expenses",
            "Acme Ltd",
            "REF-1",
            "zero_rated",
            d("0.0"),
            "UNPAID",
            False,
        ),
        (
            "pi_2",
            "pi_2_l1",
            "PURCHASE_INVOICE",
            d("250.00"),
            d("50.00"),
            d("300.00"),
            "GBP",
            "7500",
            "Office Costs",
            "office_costs",
            "Acme Ltd",
            "Rent v2",
            "standard",
            d("20.0"),
            "PAID",
            True,
        ),
        (
            "pi_nocontact",
            "pi_nocontact_l1",
            "PURCHASE_INVOICE",
            d("70.00"),
            d("0"),
            d("70.00"),
            "GBP",
            None,
            None,
            "uncategorised",
            "Snapshot Supplies",
            "Mystery",
            "no_vat",
            None,
            "UNPAID",
            False,
        ),
        (
            "qe_cn",
            "qe_cn",
            "PURCHASE_QUICK_ENTRY_CREDIT_NOTE",
            d("-15.00"),
            d("0.00"),
            d("-15.00"),
            "GBP",
            "5000",
            "Materials",
            "direct_expenses",
            "Acme Ltd",
            "Sand back",
            "exempt",
            d("0.0"),
            "UNPAID",
            False,
        ),
        (
            "qe_inv",
            "qe_inv",
            "PURCHASE_QUICK_ENTRY_INVOICE",
            d("80.00"),
            d("4.00"),
            d("84.00"),
            "GBP",
            "5000",
            "Materials",
            "direct_expenses",
            "Acme Ltd",
            "Sand",
            "reduced",
            d("5.0"),
            "UNPAID",
            False,
        ),
    ]


def test_fact_total_and_exclusions(built: psycopg.Connection) -> None:
    totals = _rows(built, "select company_id, sum(amount) from analytics.fct_spend_transactions group by 1")
    assert totals == [("gbp_co", Decimal("570.50"))]
    excluded = {r[0] for r in _rows(built, "select record_id from analytics.fct_spend_transactions")}
    assert not excluded & {"pi_deleted", "pi_void", "pi_draft", "pi_eur", "op_receipt", "pi_b1", "op_b1"}


def test_fact_keys_and_lineage_columns(built: psycopg.Connection) -> None:
    rows = _rows(
        built,
        """
        select spend_line_id, company_name, accounts_provider, transaction_date,
               first_synced_at, last_changed_at
        from analytics.fct_spend_transactions where record_id = 'pi_2'
    """,
    )
    assert len(rows) == 1
    spend_line_id, company_name, provider, txn_date, first_synced, last_changed = rows[0]
    assert spend_line_id == hashlib.md5(b"gbp_co-PURCHASE_INVOICE-pi_2-pi_2_l1").hexdigest()  # noqa: S324
    assert (company_name, provider, str(txn_date)) == ("GBP Co", "sage_accounting", "2024-05-01")
    # first seen with version 1; the current version (2) landed on 2 June, the stale re-fetch changes nothing
    assert first_synced.isoformat().startswith("2024-05-01T12:00:00")
    assert last_changed.isoformat().startswith("2024-06-02T06:00:00")


def test_currency_exceptions(built: psycopg.Connection) -> None:
    assert _rows(
        built,
        """
        select company_id, stream, record_id, transaction_date::text, currency, base_currency, amount, reason
        from analytics.rpt_currency_exceptions order by company_id, record_id
    """,
    ) == [
        (
            "eur_co",
            "other_payments",
            "op_b1",
            "2024-05-04",
            "EUR",
            "EUR",
            Decimal("90.00"),
            "company_base_currency_not_gbp",
        ),
        (
            "eur_co",
            "purchase_invoices",
            "pi_b1",
            "2024-05-01",
            "EUR",
            "EUR",
            Decimal("700.00"),
            "company_base_currency_not_gbp",
        ),
        (
            "gbp_co",
            "purchase_invoices",
            "pi_eur",
            "2024-05-01",
            "EUR",
            "GBP",
            Decimal("500.00"),
            "document_currency_not_gbp",
        ),
    ]


def test_spend_exceptions(built: psycopg.Connection) -> None:
    assert _rows(
        built,
        """
        select company_id, record_id, document_status, amount, reason
        from analytics.rpt_spend_exceptions order by record_id
    """,
    ) == [
        ("gbp_co", "pi_draft", "DRAFT", Decimal("40.00"), "draft"),
        ("gbp_co", "pi_void", "VOID", Decimal("300.00"), "void"),
    ]


def test_dim_companies(built: psycopg.Connection) -> None:
    rows = _rows(
        built,
        """
        select company_id, company_name, accounts_provider, status, synced_from_quarter, base_currency,
               is_gbp, connected_at is not null, last_successful_sync_at
        from analytics.dim_companies order by company_id
    """,
    )
    assert [r[:8] for r in rows] == [
        ("eur_co", "EUR Co", "sage_accounting", "active", "2024-Q2", "EUR", False, True),
        ("gbp_co", "GBP Co", "sage_accounting", "active", "2024-Q2", "GBP", True, True),
    ]
    assert rows[0][8] is None
    # the later failed run does not count
    assert rows[1][8].isoformat().startswith("2024-06-01T06:05:00")
    # a company with no successful sync yet is still in its initial sync: its data is partial
    complete = _rows(
        built, "select company_id, is_initial_sync_complete from analytics.dim_companies order by company_id"
    )
    assert complete == [("eur_co", False), ("gbp_co", True)]
    flags = _rows(built, "select distinct company_id, is_company_data_complete from analytics.fct_spend_transactions")
    assert flags == [("gbp_co", True)]


def test_dim_suppliers(built: psycopg.Connection) -> None:
    assert _rows(
        built,
        """
        select company_id, supplier_id, supplier_name, reference, currency, is_deleted
        from analytics.dim_suppliers order by 1, 2
    """,
    ) == [("gbp_co", "c_acme", "Acme Ltd", "ACME001", "GBP", False)]


def test_staging_marks_deletions(built: psycopg.Connection) -> None:
    assert _rows(
        built,
        """
        select record_id, is_deleted, deleted_at is not null, deletion_detection_method, version_count
        from sage_staging.stg_sage__purchase_invoices
        where company_id = 'gbp_co' and record_id in ('pi_deleted', 'pi_2') order by 1
    """,
    ) == [("pi_2", False, False, None, 3), ("pi_deleted", True, True, "deleted_since", 1)]


def test_incremental_layers_follow_later_changes(built: psycopg.Connection) -> None:
    # pi_deleted (deletion detected after day 1), pi_void (voided on day 2) and op_receipt (re-typed
    # as a receipt on day 2) had lines after day 1; the incremental build removed them.
    assert _rows(
        built,
        """
        select record_id, count(*) from sage_intermediate.int_spend_lines_signed
        where record_id in ('pi_deleted', 'pi_void', 'op_receipt', 'pi_2') group by 1 order by 1
    """,
    ) == [("pi_2", 1), ("pi_void", 1)]
    # deleted records stay in history (the latest-version layer and staging), marked deleted
    assert _rows(
        built,
        """
        select record_id, version_count, last_landed_at::text from sage_staging.base_sage__purchase_invoices_latest
        where record_id in ('pi_deleted', 'pi_2') order by 1
    """,
    ) == [("pi_2", 3, "2024-06-03 06:00:00+00"), ("pi_deleted", 1, "2024-06-02 06:00:00+00")]


def test_dim_nominal_accounts(built: psycopg.Connection) -> None:
    assert _rows(
        built,
        """
        select ledger_account_id, nominal_code, nominal_code_name, category, category_source, is_known_account
        from analytics.dim_nominal_accounts where company_id = 'gbp_co' order by 1
    """,
    ) == [
        ("la_equipment", "0030", "Office Equipment", "capital_expenditure", "uk_default_chart", True),
        # renamed from the default chart's "Cost of sales - goods": the type decides
        ("la_materials", "5000", "Materials", "direct_expenses", "ledger_account_type", True),
        ("la_office", "7500", "Office Costs", "office_costs", "uk_default_chart", True),
        ("la_unknown", None, None, "uncategorised", "none", False),
    ]


def test_spend_by_quarter_marts(built: psycopg.Connection) -> None:
    assert _rows(
        built,
        """
        select quarter, category, line_count, amount from analytics.rpt_spend_by_category_quarter
        where company_id = 'gbp_co' order by category
    """,
    ) == [
        ("2024-Q2", "capital_expenditure", 1, Decimal("60.00")),
        ("2024-Q2", "direct_expenses", 3, Decimal("115.50")),
        ("2024-Q2", "office_costs", 5, Decimal("325.00")),
        ("2024-Q2", "uncategorised", 1, Decimal("70.00")),
    ]
    assert _rows(
        built,
        """
        select supplier_key, supplier_name, document_count, amount from analytics.rpt_spend_by_supplier_quarter
        where company_id = 'gbp_co' order by 1
    """,
    ) == [
        ("contact:c_acme", "Acme Ltd", 6, Decimal("505.50")),
        ("name:snapshot supplies", "Snapshot Supplies", 1, Decimal("70.00")),
        ("unknown", "unknown supplier", 1, Decimal("-5.00")),
    ]
    by_supplier_and_category = _rows(
        built,
        """
        select supplier_key, category, line_count, amount from analytics.rpt_spend_by_supplier_category_quarter
        where company_id = 'gbp_co' order by 1, 2
    """,
    )
    # Acme's 505.50 split by what it was booked as; the two rows of office costs are the 325.00 above
    assert by_supplier_and_category == [
        ("contact:c_acme", "capital_expenditure", 1, Decimal("60.00")),
        ("contact:c_acme", "direct_expenses", 3, Decimal("115.50")),
        ("contact:c_acme", "office_costs", 4, Decimal("330.00")),
        ("name:snapshot supplies", "uncategorised", 1, Decimal("70.00")),
        ("unknown", "office_costs", 1, Decimal("-5.00")),
    ]


def test_sync_health(built: psycopg.Connection) -> None:
    rows = _rows(
        built,
        """
        select company_id, stream, freshness_status, last_run_status, total_reported, current_record_count,
               reconciliation_scope, is_reconciled
        from analytics.rpt_sync_health
        where stream in ('ledger_accounts', 'purchase_invoices', 'purchase_credit_notes', 'tax_rates')
        order by 1, 2
    """,
    )
    assert rows == [
        ("eur_co", "ledger_accounts", "never_synced", None, None, 0, "not_reported", None),
        ("eur_co", "purchase_credit_notes", "never_synced", None, None, 0, "not_reported", None),
        ("eur_co", "purchase_invoices", "never_synced", None, None, 1, "not_reported", None),
        ("eur_co", "tax_rates", "never_synced", None, None, 0, "not_reported", None),
        # the scenario's runs are from 2024: long stale; the last run failed
        ("gbp_co", "ledger_accounts", "stale", "failed", 3, 3, "full_read", True),
        ("gbp_co", "purchase_credit_notes", "stale", "failed", 2, 1, "full_read", False),
        ("gbp_co", "purchase_invoices", "stale", "failed", 6, 6, "full_read", True),
        ("gbp_co", "tax_rates", "stale", "failed", None, 4, "not_reported", None),
    ]


def test_analyst_role_reads_marts_only(built: psycopg.Connection) -> None:
    set_role = sql.SQL("set role {}").format(sql.Identifier(analyst_role(built.info.dsn)))
    with psycopg.connect(built.info.dsn) as conn:
        conn.execute(set_role)
        assert conn.execute("select count(*) from analytics.fct_spend_transactions").fetchone()[0] == 10
        conn.rollback()
        for forbidden in (
            "sage_control.oauth_tokens",
            "sage_control.companies",
            "sage_control.sync_runs",
            "sage_control.pending_authorisations",
            "sage_raw.purchase_invoices",
            "sage_intermediate.int_spend_lines_signed",
            "sage_staging.stg_sage__purchase_invoices",
        ):
            conn.execute(set_role)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select 1 from {forbidden} limit 1")
            conn.rollback()


def test_docs_generate_before_the_dev_target_was_built(built: psycopg.Connection, tmp_path: Path) -> None:
    """`make docs` after `make demo` on a fresh checkout: the demo built the prod schemas only.

    `dbt docs generate` compiles every model; a macro that queried a seed at compile time failed
    with 'relation "dev_sage_staging.emission_keyword_rules" does not exist'.
    """
    env = {**_dbt_env(built.info.dsn), "DBT_TARGET": "dev"}
    with psycopg.connect(built.info.dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists dev_sage_staging, dev_sage_intermediate, dev_analytics cascade")
    result = _dbt(["docs", "generate", "--target", "dev"], env, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert (tmp_path / "target" / "catalog.json").exists()


def _readme_queries() -> list[str]:
    """Every SQL statement of the README's ```sql blocks that an analyst runs for one company."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    # Statements that are only comments, or a role administrator's commands, are not analyst queries.
    return [s for s in statements if re.search(r"^\s*select\b", s, flags=re.M | re.I)]


def test_readme_queries_run_through_psql_as_written(built: psycopg.Connection) -> None:
    """The README's analyst queries, exactly as printed, through `psql -v company_id=...`.

    They are an analyst's first contact: a query that fails as written (`:company_id` unquoted
    gives "trailing junk after numeric literal") is the first thing a new user meets.
    """
    queries = _readme_queries()
    assert len(queries) >= 6, "the README's analyst queries were not found"
    params = conninfo_to_dict(built.info.dsn)
    env = {**os.environ, "PGHOST": str(params.get("host") or "127.0.0.1"), "PGPORT": str(params.get("port") or 5432)}
    env["PGUSER"], env["PGDATABASE"] = str(params.get("user") or "postgres"), str(params["dbname"])
    for query in queries:
        result = subprocess.run(
            [
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                f"company_id={GBP_CO}",
                "-c",
                f'set role "{analyst_role(built.info.dsn)}"',
                "-f",
                "-",
            ],
            input=query + ";\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"README query failed as written:\n{query}\n{result.stderr}"
        if "current_date" not in query:  # the scenario's documents are from 2024: "last four quarters" is empty
            assert "(0 rows)" not in result.stdout, f"README query found nothing for {GBP_CO}:\n{query}"


def test_an_analyst_of_one_warehouse_reads_no_other(built: psycopg.Connection, tmp_path: Path) -> None:
    """Two warehouses on one server, each built with the project's defaults: each one's analyst
    role reads its own marts and nothing of the other's (roles are cluster-wide, databases not)."""
    other = f"sage_test_other_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in _dbt_env(built.info.dsn).items() if k != "SAGE_ANALYST_ROLE"}
    mine = f"analyst_{conninfo_to_dict(built.info.dsn)['dbname']}"
    theirs = f"analyst_{other}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(other)))
    other_dsn = psycopg.conninfo.make_conninfo(built.info.dsn, dbname=other)
    try:
        with psycopg.connect(other_dsn, autocommit=True) as conn:
            conn.execute("create schema analytics")
            conn.execute("create table analytics.their_marts as select 1 as figure")
        # Any dbt command ends with the grant hook; a seed is the smallest.
        result = _dbt(["seed", "--select", "company_category_overrides"], {**env, "SAGE_PG_DBNAME": other}, tmp_path)
        assert result.returncode == 0, result.stdout[-4000:]
        with psycopg.connect(other_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(theirs)))
            assert conn.execute("select figure from analytics.their_marts").fetchone() == (1,)
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(mine)))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select figure from analytics.their_marts")
        with psycopg.connect(built.info.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(theirs)))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select count(*) from analytics.fct_spend_transactions")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(other)))
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(theirs)))


# --------------------------------------------------------------------------- day 3: incremental == full

DAY3 = "2024-06-04T06:00:00Z"
# Columns stamped by the build itself or by the clock: they differ between any two builds.
BUILD_STAMPED = {
    "dbt_loaded_at",
    "hours_since_last_success",
    "freshness_status",
    "duration_seconds",
    "invocation_id",
    "build_started_at",
}


def _day3_rows() -> list[Row]:
    """Changes of every kind an incremental mart must follow, not only new document versions."""
    moved = _document(
        "pi_1",
        "invoice",
        [
            _invoice_line("pi_1_l1", "100.00", "20.00", "GB_STANDARD", "la_office", "Paper"),
            _invoice_line("pi_1_l2", 50.5, 0, "GB_ZERO", "la_materials"),
        ],
        reference="REF-1",
        date="2024-07-15",
        updated_at="2024-06-03T10:00:00Z",
    )
    return [
        Row("purchase_invoices", GBP_CO, "pi_1", moved, DAY3),  # moved to the next quarter
        Row(
            "contacts",
            GBP_CO,
            "c_acme",
            {
                "id": "c_acme",
                "name": "Acme Group plc",
                "reference": "ACME001",
                "contact_types": [{"id": "VENDOR"}],
                "currency": _link("GBP", "currencies"),
                "updated_at": "2024-06-03T00:00:00Z",
            },
            DAY3,
        ),  # supplier renamed
        Row(
            "ledger_accounts",
            GBP_CO,
            "la_materials",
            {
                "id": "la_materials",
                "name": "Raw Materials",
                "displayed_as": "Raw Materials (5000)",
                "nominal_code": 5000,
                "ledger_account_type": _link("DIRECT_EXPENSES", "ledger_account_types"),
                "included_in_chart": True,
            },
            DAY3,
        ),  # nominal code renamed
        Row("tax_rates", GBP_CO, "GB_LOWER", {"id": "GB_LOWER", "name": "GB_LOWER", "percentage": "6.0"}, DAY3),
        # EUR Co moves its books to GBP: its GBP-denominated spend enters the fact
        Row("financial_settings", EUR_CO, EUR_CO, {"base_currency": _link("GBP", "currencies")}, DAY3),
    ]


# Change logs: what an incremental build remembers about earlier states, so that the marts can
# rebuild what a change touches. A full refresh starts them afresh: it holds a subset of their rows
# (a document's old quarter, a dimension member that is gone are only in the incremental log).
CHANGE_LOGS = {"sage_intermediate.int_spend_document_quarters", "sage_intermediate.int_dimension_versions"}


def _differing(incremental: dict[str, list[str]], full: dict[str, list[str]]) -> list[str]:
    """The models whose rows differ between an incremental build and a full refresh: every model
    holds exactly the same rows, except that a change log may remember more."""
    return [
        name
        for name in full
        if (not set(full[name]) <= set(incremental[name]) if name in CHANGE_LOGS else incremental[name] != full[name])
    ]


def _snapshot(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Every model's rows, tables and views (minus build-stamped columns), as sorted JSON text."""
    tables = conn.execute("""
        select table_schema, table_name, array_agg(column_name::text order by ordinal_position)
        from information_schema.columns
        where table_schema in ('analytics', 'sage_intermediate', 'sage_staging')
        group by 1, 2
    """).fetchall()
    snapshot = {}
    for schema, table, columns in tables:
        kept = [c for c in columns if c not in BUILD_STAMPED]
        rows = conn.execute(
            sql.SQL("select json_build_array({})::text from {}.{}").format(
                sql.SQL(", ").join(map(sql.Identifier, kept)), sql.Identifier(schema), sql.Identifier(table)
            )
        ).fetchall()
        snapshot[f"{schema}.{table}"] = sorted(r[0] for r in rows)
    return snapshot


def test_reconciliation_waits_for_a_company_still_landing(
    built: psycopg.Connection, pg_dsn: str, tmp_path: Path
) -> None:
    """A sync landing while dbt builds is not a reconciliation failure; the same raw, landed by a
    run that had ended before the build, is one. (On the deployment, the syncs of other companies
    land while the asset-triggered build runs.)"""
    env = _dbt_env(pg_dsn)
    built.rollback()
    line = _invoice_line("pi_in_flight_l1", "50.00", "10.00", None, "la_office")
    invoice = _document("pi_in_flight", "invoice", [line])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "insert into sage_control.sync_runs (sync_run_id, company_id, kind, status, started_at) "
            "values ('run_live', %s, 'daily', 'running', now())",
            (GBP_CO,),
        )
        _insert_rows(conn, [Row("purchase_invoices", GBP_CO, "pi_in_flight", invoice, LATER)])
        try:
            test = ["test", "--select", "assert_fct_spend_reconciles_with_raw"]
            result = _dbt(test, env, tmp_path)
            assert result.returncode == 0, result.stdout[-4000:]  # still landing: left to the next build
            conn.execute(
                "update sage_control.sync_runs set status = 'success', ended_at = build.build_started_at "
                "- interval '1 minute' from sage_intermediate.int_build_started as build "
                "where sync_run_id = 'run_live'"
            )
            result = _dbt(test, env, tmp_path)
            assert result.returncode == 1, result.stdout[-4000:]  # landed before the build, not modelled
            assert "Got 1 result" in result.stdout, result.stdout[-4000:]
        finally:
            conn.execute("delete from sage_raw.purchase_invoices where record_id = 'pi_in_flight'")
            conn.execute("delete from sage_control.sync_runs where sync_run_id = 'run_live'")


def test_incremental_build_equals_a_full_refresh(built: psycopg.Connection, pg_dsn: str, tmp_path: Path) -> None:
    """Day 3 (runs last: it changes the scenario): renames, a re-categorised account, a tax rate,
    a document moved to another quarter, a deletion and a company turning GBP; the incremental
    `dbt run` must leave every model exactly as `dbt run --full-refresh` builds it, while rewriting
    none of the lines of documents nothing touched."""
    env = _dbt_env(pg_dsn)
    built.rollback()  # the other tests' reads left a transaction open: it would block dbt's table swaps
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _insert_rows(conn, _day3_rows())
        conn.execute(
            "insert into sage_raw.deletions (company_id, stream, record_id, source_deleted_at, "
            "detection_method, _extracted_at, _sync_run_id) values "
            "(%s, 'purchase_quick_entries', 'qe_inv', '2024-06-03T00:00:00Z', 'deleted_since', %s, 'run1')",
            (GBP_CO, DAY3),
        )
        untouched_before = dict(
            conn.execute(
                "select line_id, dbt_loaded_at from sage_intermediate.int_spend_lines_signed "
                "where record_id in ('pi_nocontact', 'op_refund')"
            ).fetchall()
        )
        assert untouched_before

        result = _dbt(["run"], env, tmp_path)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        # Every stored mart read only what changed since it was last built, even a mart whose last
        # build wrote no row (an empty exception list once re-checked every record, every day).
        compiled = {
            path.stem: path.read_text(encoding="utf-8")
            for path in (tmp_path / "target" / "compiled" / "sage_carbon" / "models" / "marts").rglob("*.sql")
        }
        incremental_marts = {name for name, text in compiled.items() if "dbt_loaded_at >" in text}
        assert {"rpt_invalid_values", "rpt_spend_exceptions", "rpt_emissions_coverage"} <= incremental_marts
        assert not [name for name in incremental_marts if "'-infinity'" in compiled[name]]
        incremental = _snapshot(conn)
        fact = incremental["analytics.fct_spend_transactions"]
        assert any("Acme Group plc" in row for row in fact) and not any("Acme Ltd" in row for row in fact)
        assert any("Raw Materials" in row for row in fact)
        assert not any('"qe_inv"' in row for row in fact)
        assert any('"op_b1"' in row for row in fact)  # EUR Co's base-currency payment, now GBP
        assert any("2024-Q3" in row for row in incremental["analytics.rpt_spend_by_category_quarter"])
        assert (
            dict(
                conn.execute(
                    "select line_id, dbt_loaded_at from sage_intermediate.int_spend_lines_signed "
                    "where record_id in ('pi_nocontact', 'op_refund')"
                ).fetchall()
            )
            == untouched_before
        )

        result = _dbt(["run", "--full-refresh"], env, tmp_path)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        full = _snapshot(conn)
    assert set(incremental) == set(full)
    # the emissions models are compared like every other model
    assert {
        "analytics.fct_spend_emissions",
        "analytics.rpt_emissions_by_category_quarter",
        "analytics.rpt_emissions_by_supplier_quarter",
        "analytics.rpt_emissions_coverage",
        "analytics.rpt_emissions_by_scope_quarter",
        "sage_intermediate.int_emission_line_keywords",
        "sage_intermediate.int_emission_account_mappings",
    } <= set(full)
    assert any("Acme Group plc" in row for row in incremental["analytics.fct_spend_emissions"])
    differing = _differing(incremental, full)
    assert not differing, {name: (sorted(set(incremental[name]) ^ set(full[name])))[:6] for name in differing}


# --------------------------------------------------------------------------- days 4+: each dimension change

DIM_CO = "dim_co"
DAY4 = "2024-06-05T06:00:00Z"
DAY5 = "2024-06-06T06:00:00Z"
DAY6 = "2024-06-07T06:00:00Z"
EMISSION_SEEDS = Path("seeds/emission_factors")
# dim_co's accounts: id -> (name, nominal code, ledger_account_type)
DIM_ACCOUNTS = {
    "la_rent": ("Rent and rates", 7100, "OVERHEADS"),  # renamed: category and emission mapping change
    "la_phone": ("Telephone and internet", 7502, "OVERHEADS"),  # re-categorised by an override seed row
    "la_legal": ("Legal and professional fees", 7600, "OVERHEADS"),  # an emission account override
    "la_power": ("Electricity", 7200, "OVERHEADS"),  # its SIC group's factor changes
    "la_hire": ("Plant hire", 7710, "OVERHEADS"),  # a new scope mapping row names it
    "la_goods": ("Cost of sales - goods", 5000, "DIRECT_EXPENSES"),  # everything else
}
# dim_co's documents: record id -> what the document uses (one dimension member each, so that no
# change is rebuilt by way of another change on the same lines)
DIM_DOCUMENTS = {
    "d_supplier": {"contact": "c_renamed"},
    "d_account": {"ledger": "la_rent"},
    "d_category": {"ledger": "la_phone"},
    "d_tax": {"tax_rate": "DIM_RATE"},
    "d_emit": {"ledger": "la_legal"},
    "d_factor": {"ledger": "la_power"},
    "d_scope": {"ledger": "la_hire"},
    "d_line": {},  # a line override
    "d_move": {},  # moves to the next quarter
    "d_delete": {},  # deleted
    "d_void": {},  # voided
    "d_keep": {},  # nothing happens to it
}


def _dim_account(id_: str, name: str, code: int, type_: str) -> Row:
    payload = {
        "id": id_,
        "name": name,
        "displayed_as": f"{name} ({code})",
        "nominal_code": code,
        "ledger_account_type": _link(type_, "ledger_account_types"),
        "included_in_chart": True,
    }
    return Row("ledger_accounts", DIM_CO, id_, payload, DAY4)


def _dim_contact(id_: str, name: str, extracted_at: str = DAY4) -> Row:
    payload = {"id": id_, "name": name, "contact_types": [{"id": "VENDOR"}], "currency": _link("GBP", "currencies")}
    return Row("contacts", DIM_CO, id_, payload, extracted_at)


def _dim_invoice(record_id: str, extracted_at: str = DAY4, **changes: str) -> Row:
    uses = {"contact": "c_kept", "ledger": "la_goods", "tax_rate": "GB_ZERO", **DIM_DOCUMENTS[record_id]}
    line = _invoice_line(f"{record_id}_l1", "100.00", "0.00", uses["tax_rate"], uses["ledger"], "Widget")
    document = _document(
        record_id,
        "invoice",
        [line],
        contact=uses["contact"],
        contact_name="Dim Supplier",
        date=changes.get("date", "2024-05-15"),
        status=changes.get("status", "UNPAID"),
        updated_at=changes.get("updated_at", "2024-05-15T10:00:00Z"),
    )
    return Row("purchase_invoices", DIM_CO, record_id, document, extracted_at)


def _dim_co_rows() -> list[Row]:
    rows = [
        Row("businesses", DIM_CO, DIM_CO, {"id": DIM_CO, "name": "Dim Co Ltd", "country": _link("GB", "c")}, DAY4),
        Row("financial_settings", DIM_CO, DIM_CO, {"base_currency": _link("GBP", "currencies")}, DAY4),
        Row("tax_rates", DIM_CO, "GB_ZERO", {"id": "GB_ZERO", "name": "GB_ZERO", "percentage": "0.0"}, DAY4),
        Row("tax_rates", DIM_CO, "DIM_RATE", {"id": "DIM_RATE", "name": "DIM_RATE", "percentage": "10.0"}, DAY4),
        _dim_contact("c_renamed", "Northwind Partners"),
        _dim_contact("c_kept", "Contoso Partners"),
    ]
    rows += [_dim_account(id_, *account) for id_, account in DIM_ACCOUNTS.items()]
    return rows + [_dim_invoice(record_id) for record_id in DIM_DOCUMENTS]


@pytest.fixture(scope="module")
def day4_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the dbt project whose seeds the dimension-change steps edit."""
    copy = tmp_path_factory.mktemp("dbt_day4") / "dbt"
    shutil.copytree(DBT_PROJECT, copy, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    return copy


def _project_dbt(
    args: list[str], env: dict[str, str], project: Path, tmp: Path, factor_set: str | None
) -> subprocess.CompletedProcess[str]:
    vars_ = ["--vars", f"{{emission_factor_set: {factor_set}}}"] if factor_set else []
    paths = ["--project-dir", str(project), "--profiles-dir", str(project)]
    paths += ["--target-path", str(tmp / "target"), "--log-path", str(tmp / "logs")]
    result = run_dbt([*args, *vars_, *paths], env, project)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return result


def _incremental_then_full(
    conn: psycopg.Connection,
    env: dict[str, str],
    project: Path,
    tmp: Path,
    factor_set: str | None = None,
    after_incremental: Callable[[], None] | None = None,
) -> dict[str, list[str]]:
    """`dbt seed` and an incremental `dbt run` (then `after_incremental`), then `dbt run
    --full-refresh`: every model must hold the same rows after both. Returns the incremental
    snapshot."""
    _project_dbt(["seed"], env, project, tmp, factor_set)
    _project_dbt(["run"], env, project, tmp, factor_set)
    incremental = _snapshot(conn)
    if after_incremental is not None:
        after_incremental()
    _project_dbt(["run", "--full-refresh"], env, project, tmp, factor_set)
    full = _snapshot(conn)
    assert set(incremental) == set(full)
    differing = _differing(incremental, full)
    assert not differing, {name: (sorted(set(incremental[name]) ^ set(full[name])))[:6] for name in differing}
    return incremental


def _dim_lines(conn: psycopg.Connection, columns: str, mart: str = "fct_spend_transactions") -> dict[str, tuple]:
    rows = conn.execute(
        sql.SQL("select record_id, {} from analytics.{} where company_id = %s").format(
            sql.SQL(columns), sql.Identifier(mart)
        ),
        (DIM_CO,),
    ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_each_dimension_change_shows_after_the_next_build(
    built: psycopg.Connection, pg_dsn: str, day4_project: Path, tmp_path: Path
) -> None:
    """Day 4 and 5 (after the day-3 test): one change of every kind of dimension, each on lines
    no other change touches (so none is rebuilt by way of another), then the incremental build
    must equal a full refresh: a renamed supplier, a renamed account (its category and emission
    mapping follow), a category override seed row, a tax rate, a company's name, an emission
    account override, a line override, a factor's value, a new scope mapping row (seed
    emission_scope_categories), a document moved to the next quarter, a deleted and a voided
    document."""
    env = _dbt_env(pg_dsn)
    built.rollback()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "insert into sage_control.companies (company_id, company_name, status, synced_from_quarter, "
            "connected_at) values (%s, 'Dim Co', 'active', '2024-Q2', '2024-06-04T09:00:00Z')",
            (DIM_CO,),
        )
        conn.execute(
            "insert into sage_control.sync_runs (sync_run_id, company_id, kind, status, started_at, ended_at, "
            "stats) values ('run_dim', %s, 'daily', 'success', %s, %s, '{}')",
            (DIM_CO, DAY4, DAY4),
        )
        _insert_rows(conn, _dim_co_rows())
        _project_dbt(["seed"], env, day4_project, tmp_path, None)
        _project_dbt(["run"], env, day4_project, tmp_path, None)
        before = _dim_lines(conn, "supplier_name, nominal_code_name, category, tax_rate_percentage")
        assert set(before) == set(DIM_DOCUMENTS)
        emissions_before = _dim_lines(conn, "mapping_rule, sic_code, kgco2e", "fct_spend_emissions")
        scope_columns = "scope_mapping_id, scope3_category, method"
        assert _dim_lines(conn, scope_columns, "fct_spend_emissions")["d_scope"] == (
            "default_purchased_goods_and_services",
            1,
            "spend_based",  # "Plant hire": keyword rule hire, 77
        )

        # Day 5: the changes.
        _insert_rows(
            conn,
            [
                _dim_contact("c_renamed", "Northwind Partners Group", DAY5),
                replace(_dim_account("la_rent", "Legal fees", 7100, "OVERHEADS"), extracted_at=DAY5),
                Row(
                    "tax_rates", DIM_CO, "DIM_RATE", {"id": "DIM_RATE", "name": "DIM_RATE", "percentage": "12.5"}, DAY5
                ),
                _dim_invoice("d_move", DAY5, date="2024-08-10", updated_at="2024-06-05T10:00:00Z"),
                _dim_invoice("d_void", DAY5, status="VOID", updated_at="2024-06-05T10:00:00Z"),
            ],
        )
        conn.execute(
            "insert into sage_raw.deletions (company_id, stream, record_id, source_deleted_at, "
            "detection_method, _extracted_at, _sync_run_id) values "
            "(%s, 'purchase_invoices', 'd_delete', '2024-06-05T00:00:00Z', 'deleted_since', %s, 'run_dim')",
            (DIM_CO, DAY5),
        )
        conn.execute(
            "update sage_control.companies set company_name = 'EUR Co Renamed' where company_id = %s", (EUR_CO,)
        )
        seeds = day4_project / "seeds"
        _append(seeds / "company_category_overrides.csv", f"{DIM_CO},7502,it_and_software,test: re-categorised")
        _append(seeds / EMISSION_SEEDS.name / "emission_account_overrides.csv", f"{DIM_CO},la_legal,,62,,test")
        _append(seeds / EMISSION_SEEDS.name / "emission_line_overrides.csv", f"{DIM_CO},d_line,d_line_l1,61,,test")
        _append(
            seeds / EMISSION_SEEDS.name / "emission_scope_categories.csv",
            "plant_hire_leased,account_name,Plant Hire,OVERHEADS,,,3,8,Upstream leased assets,test",
        )
        factors = seeds / EMISSION_SEEDS.name / "emission_factors__defra_leeds_2023.csv"
        factors.write_text(
            "".join(
                re.sub(r",2023,[0-9.]+,", ",2023,9.87654,", line) if line.startswith("defra_leeds_2023,35.1,") else line
                for line in factors.read_text().splitlines(keepends=True)
            )
        )
        untouched_query = (
            "select 'fct_spend_transactions', dbt_loaded_at from analytics.fct_spend_transactions "
            "where company_id = %(c)s and record_id = 'd_keep' union all "
            "select 'fct_spend_emissions', dbt_loaded_at from analytics.fct_spend_emissions "
            "where company_id = %(c)s and record_id = 'd_keep'"
        )
        untouched = conn.execute(untouched_query, {"c": DIM_CO}).fetchall()
        assert len(untouched) == 2

        def d_keep_not_rewritten() -> None:
            # the stored facts rewrote only what the changes touch
            assert conn.execute(untouched_query, {"c": DIM_CO}).fetchall() == untouched

        _incremental_then_full(conn, env, day4_project, tmp_path, after_incremental=d_keep_not_rewritten)

        after = _dim_lines(conn, "supplier_name, nominal_code_name, category, tax_rate_percentage")
        assert after["d_supplier"][0] == "Northwind Partners Group"
        assert after["d_account"][1] == "Legal fees" and after["d_account"][2] != before["d_account"][2]
        assert after["d_category"][2] == "it_and_software"
        assert after["d_tax"][3] == Decimal("12.5")
        assert "d_delete" not in after and "d_void" not in after
        assert after["d_keep"] == before["d_keep"]
        emissions = _dim_lines(conn, "mapping_rule, sic_code, kgco2e", "fct_spend_emissions")
        assert emissions["d_emit"][:2] == ("account_override", "62")
        assert emissions["d_line"][:2] == ("line_override", "61")
        assert emissions["d_factor"][2] != emissions_before["d_factor"][2]
        assert emissions["d_account"][:2] == ("chart_account_name", "69.1") != emissions_before["d_account"][:2]
        scopes = _dim_lines(conn, scope_columns, "fct_spend_emissions")
        assert scopes["d_scope"] == ("plant_hire_leased", 8, "spend_based")
        assert scopes["d_keep"] == ("default_purchased_goods_and_services", 1, None)  # unmapped: no method
        categories = conn.execute(
            "select scope3_category, line_count, kgco2e from analytics.rpt_emissions_by_scope_quarter "
            "where company_id = %s and quarter = '2024-Q2' and scope3_category = 8",
            (DIM_CO,),
        ).fetchall()
        assert categories == [(8, 1, emissions["d_scope"][2])]
        quarters = conn.execute(
            "select quarter, line_count from analytics.rpt_spend_by_category_quarter where company_id = %s "
            "and category = %s order by quarter",
            (DIM_CO, before["d_keep"][2]),
        ).fetchall()
        assert quarters == [("2024-Q2", 4), ("2024-Q3", 1)], quarters  # d_supplier, d_tax, d_line, d_keep; d_move
        names = conn.execute(
            "select distinct company_name from analytics.rpt_emissions_coverage where company_id = %s", (EUR_CO,)
        ).fetchall()
        assert names == [("EUR Co Renamed",)]


def _append(path: Path, row: str) -> None:
    path.write_text(path.read_text().rstrip("\n") + "\n" + row + "\n")


def test_a_keyword_rule_change_shows_after_the_next_build(
    built: psycopg.Connection, pg_dsn: str, day4_project: Path, tmp_path: Path
) -> None:
    """Day 6: a new keyword rule re-maps the lines it matches (every "Widget" of a mixed account)."""
    env = _dbt_env(pg_dsn)
    built.rollback()
    _append(
        day4_project / "seeds" / EMISSION_SEEDS.name / "emission_keyword_rules.csv", "widgets,5,widget,32,,low,false"
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _incremental_then_full(conn, env, day4_project, tmp_path)
        emissions = _dim_lines(conn, "mapping_rule, sic_code", "fct_spend_emissions")
    assert emissions["d_keep"] == ("line_description_keyword", "32")


def test_a_factor_set_change_shows_after_the_next_build(
    built: psycopg.Connection, pg_dsn: str, day4_project: Path, tmp_path: Path
) -> None:
    """Day 7: another factor set (var emission_factor_set) re-computes every line with it; a build
    with nothing new then changes nothing."""
    env = _dbt_env(pg_dsn)
    built.rollback()
    seeds = day4_project / "seeds" / EMISSION_SEEDS.name
    lines = (seeds / "emission_factors__defra_leeds_2023.csv").read_text().splitlines()
    (seeds / "emission_factors__test_doubled.csv").write_text(
        "\n".join(
            [lines[0]]
            + [re.sub(r"^defra_leeds_2023,(.*?),(\d{4}),([0-9.]+),", _doubled, line, count=1) for line in lines[1:]]
        )
        + "\n"
    )
    sets = (seeds / "emission_factor_sets.csv").read_text().splitlines()
    _append(seeds / "emission_factor_sets.csv", sets[1].replace("defra_leeds_2023", "test_doubled", 1))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        before = _dim_lines(conn, "kgco2e", "fct_spend_emissions")
        _incremental_then_full(conn, env, day4_project, tmp_path, "test_doubled")
        after = _dim_lines(conn, "factor_set, kgco2e", "fct_spend_emissions")
        assert {row[0] for row in after.values()} == {"test_doubled"}
        assert abs(after["d_keep"][1] - 2 * before["d_keep"][0]) <= Decimal("0.001")
        # nothing new: the incremental build equals the full refresh it follows
        _incremental_then_full(conn, env, day4_project, tmp_path, "test_doubled")


def _doubled(match: re.Match[str]) -> str:
    return f"test_doubled,{match.group(1)},{match.group(2)},{Decimal(match.group(3)) * 2},"


def test_a_company_reset_shows_after_the_next_build(
    built: psycopg.Connection, pg_dsn: str, day4_project: Path, tmp_path: Path
) -> None:
    """Day 8: a reset (sage_sync.lifecycle.connections.reset) wipes the company's raw rows and
    records a `reset` event; the re-import lands part of what it had. The incremental models
    forget the company's older rows (macro forget_reset_companies): the build equals a full one."""
    env = _dbt_env(pg_dsn)
    built.rollback()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        raw_tables = conn.execute("select tablename from pg_tables where schemaname = 'sage_raw'").fetchall()
        for (table,) in raw_tables:
            conn.execute(
                sql.SQL("delete from sage_raw.{} where company_id = %s").format(sql.Identifier(table)), (DIM_CO,)
            )
        conn.execute(
            "insert into sage_control.connection_events (company_id, event_type, occurred_at) "
            "values (%s, 'reset', now())",
            (DIM_CO,),
        )
        reimported = [row for row in _dim_co_rows() if row.record_id not in ("d_keep", "d_tax", "d_supplier")]
        _insert_rows(conn, [replace(row, extracted_at=DAY6) for row in reimported])
        _incremental_then_full(conn, env, day4_project, tmp_path, "test_doubled")
        kept = _dim_lines(conn, "amount")
    assert set(kept) == set(DIM_DOCUMENTS) - {"d_keep", "d_tax", "d_supplier"}
