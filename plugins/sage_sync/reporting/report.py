"""Emissions reports: what `python -m sage_sync report`, the Sage connections page and the demo show.

Reads the dbt marts only (through ``warehouse.marts``): ``rpt_emissions_by_category_quarter`` and
``rpt_emissions_coverage``; every figure is computed in dbt, so a report, the page and an analyst's
query always agree. Writes a CSV per table, one Excel workbook with both, and a PNG chart of
kg CO2e by quarter stacked by category (pandas + openpyxl + matplotlib, headless).

The factors' licence and attribution come from the rows of ``int_emission_factors``, the one dbt
model that reads the factor set in use: a build with another set prints that set's licence.

The queries are ``warehouse.marts``'s, not the plugin's, so the page stays HTTP and HTML only.

**No cell is a formula.** Names come from Sage (a business, a supplier, a category someone typed):
text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return would run as a formula
when the CSV or the workbook opens in a spreadsheet. Every writer passes its text through
:func:`inert`, which prefixes such text with ``'`` (OWASP's advice for CSV injection); numbers,
negative ones included, are written as numbers.

pandas and matplotlib are imported inside the writers, only when a report is written: the CLI
and the pages import this module for its queries, and loading those two costs seconds.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from sage_sync.core.errors import ReportError
from sage_sync.core.quarters import Quarter
from sage_sync.lifecycle.inputs import warehouse
from sage_sync.warehouse import marts

CATEGORY_COLUMNS = [
    "company_id",
    "company_name",
    "quarter",
    "category",
    "factor_set",
    "line_count",
    "net_gbp",
    "mapped_gbp",
    "unmapped_gbp",
    "out_of_scope_gbp",
    "kgco2e",
    "upstream_only_kgco2e",
    "low_confidence_kgco2e",
    "share_of_quarter_kgco2e",
]
COVERAGE_COLUMNS = [
    "company_id",
    "company_name",
    "quarter",
    "factor_set",
    "is_company_data_complete",
    "line_count",
    "net_gbp",
    "mapped_gbp",
    "unmapped_gbp",
    "out_of_scope_gbp",
    "in_scope_gbp",
    "coverage_share",
    "low_confidence_gbp",
    "kgco2e",
    "upstream_only_kgco2e",
]


# Shares (0..1) are exact numerics in the marts, 20 decimals deep: 4 places (0.01 %) is what a
# report shows, in the CSVs and the workbook alike.
SHARE_COLUMNS = frozenset({"coverage_share", "share_of_quarter_kgco2e"})
SHARE_PLACES = Decimal("0.0001")
# Spend and emissions are counted in pounds only (the marts convert nothing).
COUNTED_CURRENCY = "GBP"


def shown(column: str, value: Any) -> Any:
    """``value`` as the report writes it: a share rounded to :data:`SHARE_PLACES`, text made inert."""
    if column in SHARE_COLUMNS and value is not None:
        return Decimal(str(value)).quantize(SHARE_PLACES)
    return inert(value)


# A spreadsheet reads a cell starting with one of these as a formula (tab and CR: Excel trims them first).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def inert(value: Any) -> Any:
    """``value`` safe for a spreadsheet cell: text that would start a formula gets a leading ``'``.

    Text that is a plain number (``-12.50``) is left alone, it is data and no formula; numbers
    (``Decimal``, ``float``) are never touched, so a credit note's negative sum stays a number.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return f"'{value}"
    return value


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote."""

    category_csv: Path
    coverage_csv: Path
    workbook: Path
    chart: Path


def resolve_company(conn: psycopg.Connection, company: str) -> tuple[str, str]:
    """``(company_id, company_name)`` for a company id or name (case-insensitive)."""
    rows = marts.companies_named(conn, company)
    if not rows:
        raise ReportError(f"unknown company {company!r}: give a company id or name from `status`")
    if len(rows) > 1 and rows[0]["company_id"] != company:
        raise ReportError(f"{company!r} names {len(rows)} companies: give the company id")
    return rows[0]["company_id"], rows[0]["company_name"]


def emissions_by_category_quarter(
    conn: psycopg.Connection, company_id: str | None = None, from_quarter: Quarter | None = None
) -> list[dict[str, Any]]:
    """Rows of ``rpt_emissions_by_category_quarter`` (largest kg first within a quarter)."""
    return marts.quarter_rows(
        conn,
        marts.EMISSIONS_BY_CATEGORY_QUARTER_MART,
        CATEGORY_COLUMNS,
        company_id,
        from_quarter.start_date if from_quarter else None,
        ", kgco2e desc, category",
    )


def emissions_coverage(
    conn: psycopg.Connection, company_id: str | None = None, from_quarter: Quarter | None = None
) -> list[dict[str, Any]]:
    """Rows of ``rpt_emissions_coverage``: per company and quarter, kg and the share of £ mapped."""
    return marts.quarter_rows(
        conn,
        marts.EMISSIONS_COVERAGE_MART,
        COVERAGE_COLUMNS,
        company_id,
        from_quarter.start_date if from_quarter else None,
    )


def latest_quarters(conn: psycopg.Connection, quarters: int = 4) -> dict[str, list[dict[str, Any]]]:
    """Per company id, its latest ``quarters`` quarters of coverage rows, oldest first (the page)."""
    try:
        rows = emissions_coverage(conn)
    except ReportError:
        return {}
    by_company: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_company.setdefault(row["company_id"], []).append(row)
    return {cid: items[-quarters:] for cid, items in by_company.items()}


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    import pandas as pd

    frame = pd.DataFrame([{c: shown(c, row[c]) for c in columns} for row in rows], columns=columns)
    # the marts' numerics arrive as Decimal (exact in the CSVs); Excel and the chart take floats
    for column in frame.columns:
        if any(isinstance(value, Decimal) for value in frame[column]):
            frame[column] = frame[column].astype(float)
    return frame


def factor_attribution(conn: psycopg.Connection) -> str:
    """What the report says about its emission factors: the set in use, its attribution and licence,
    as the rows of ``int_emission_factors`` carry them (seed ``emission_factor_sets``)."""
    sets = marts.factor_sets(conn)
    if not sets:
        return "Emission factors: the set in use is not built yet (dbt model int_emission_factors)."
    said = []
    for row in sets:
        text = f"Emission factors: {row['factor_set']}."
        text += f" {row['attribution']}." if row["attribution"] else ""
        if not row["attribution"] or (row["licence"] or "") not in row["attribution"]:
            text += f" Licence: {row['licence'] or 'unknown'}."
        said.append(text)
    return " ".join(said)


def report_files(out_dir: Path, company_id: str) -> ReportFiles:
    """The report's file names in ``out_dir``. The id is percent-quoted: ids are checked where they
    enter (``core.ids``), and a ``/`` or ``..`` that got in anyway must not write outside ``out_dir``."""
    stem = f"emissions_{quote(company_id, safe='-_')}".replace(".", "%2E")
    return ReportFiles(
        out_dir / f"{stem}_by_category_quarter.csv",
        out_dir / f"{stem}_coverage.csv",
        out_dir / f"{stem}.xlsx",
        out_dir / f"{stem}_by_quarter.png",
    )


def not_counted(conn: psycopg.Connection, company_id: str) -> str | None:
    """``base currency EUR: not counted (GBP only)`` for a company whose books are not in pounds
    (its spend is kept out of every mart, so it has no emissions: it is not merely late); None
    for a GBP company."""
    currency = marts.base_currency(conn, company_id)
    if currency is None or currency == COUNTED_CURRENCY:
        return None
    return f"base currency {currency}: not counted ({COUNTED_CURRENCY} only)"


def write_report(
    conn: psycopg.Connection, company: str, out_dir: Path, from_quarter: Quarter | None = None
) -> ReportFiles:
    """Write the company's quarter/category emissions and coverage as CSV, XLSX and a PNG chart.

    Refuses (:class:`ReportError`, in words) a company with no spend, one whose base currency is
    not GBP saying so."""
    company_id, company_name = resolve_company(conn, company)
    note = not_counted(conn, company_id)
    if note:
        raise ReportError(f"{company_name} ({company_id}): {note}, so it has no emissions report")
    categories = emissions_by_category_quarter(conn, company_id, from_quarter)
    coverage = emissions_coverage(conn, company_id, from_quarter)
    if not coverage:
        since = f" from {from_quarter}" if from_quarter else ""
        raise ReportError(f"{company_name} ({company_id}) has no spend{since} in the emissions marts")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = report_files(out_dir, company_id)
    _write_csv(files.category_csv, categories, CATEGORY_COLUMNS)
    _write_csv(files.coverage_csv, coverage, COVERAGE_COLUMNS)
    category_frame = _frame(categories, CATEGORY_COLUMNS)
    coverage_frame = _frame(coverage, COVERAGE_COLUMNS)
    attribution = factor_attribution(conn)
    import pandas as pd

    with pd.ExcelWriter(files.workbook, engine="openpyxl") as writer:
        category_frame.to_excel(writer, sheet_name="by category and quarter", index=False)
        coverage_frame.to_excel(writer, sheet_name="coverage", index=False)
        pd.DataFrame(
            {
                "about": [
                    inert(f"{company_name} ({company_id})"),
                    inert(attribution),
                    "Unmapped and out-of-scope spend carry no kg (they are not zero "
                    "emissions): read coverage_share for how much of the spend the kg "
                    "estimate covers. upstream_only_kgco2e (fuel, gas, heating oil) "
                    "misses the buyer's own combustion.",
                ]
            }
        ).to_excel(writer, sheet_name="about", index=False)
    _write_chart(files.chart, category_frame, coverage_frame, company_name, attribution)
    return files


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: shown(c, row[c]) for c in columns})


def _write_chart(path: Path, categories: Any, coverage: Any, company_name: str, attribution: str) -> None:
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    pivot = categories.pivot_table(
        index="quarter", columns="category", values="kgco2e", aggfunc="sum", fill_value=0
    ).reindex(coverage["quarter"], fill_value=0)
    # largest categories at the bottom of each stack, the rest in the legend's order
    pivot = pivot[pivot.sum().sort_values(ascending=False).index]
    figure, axis = plt.subplots(figsize=(11, 6))
    pivot.plot.bar(stacked=True, ax=axis, width=0.8, colormap="tab20")
    shares = dict(zip(coverage["quarter"], coverage["coverage_share"], strict=True))
    labels = [q if pd.isna(shares.get(q)) else f"{q}\n{shares[q]:.0%}" for q in pivot.index]  # % of £ mapped
    axis.set_xticklabels(labels, rotation=0, fontsize=8)
    axis.set_xlabel("quarter, and the share of its in-scope £ with a factor")
    axis.set_ylabel("kg CO2e")
    axis.set_title(f"{company_name}: kg CO2e by quarter and spend category (spend-based estimate)")
    axis.legend(title="category", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    figure.text(0.01, 0.01, attribution, fontsize=6, wrap=True)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_summary(coverage: list[dict[str, Any]]) -> str:
    """Plain-text table of quarters: kg CO2e, £ net, mapped, unmapped, out of scope, coverage."""
    header = (
        f"{'quarter':<9} {'kg CO2e':>13} {'net £':>13} {'mapped £':>13} {'unmapped £':>12} "
        f"{'out of scope £':>14} {'coverage':>8}"
    )
    lines = [header]
    for row in coverage:
        share = "-" if row["coverage_share"] is None else f"{row['coverage_share']:.1%}"
        lines.append(
            f"{row['quarter']:<9} {row['kgco2e']:>13,.1f} {row['net_gbp']:>13,.2f} "
            f"{row['mapped_gbp']:>13,.2f} {row['unmapped_gbp']:>12,.2f} "
            f"{row['out_of_scope_gbp']:>14,.2f} {share:>8}"
        )
    return "\n".join(lines)


def overall_coverage(coverage: list[dict[str, Any]]) -> Decimal | None:
    """Share of in-scope £ mapped over all the given quarters (None when nothing is in scope)."""
    mapped = sum((row["mapped_gbp"] for row in coverage), Decimal(0))
    in_scope = mapped + sum((row["unmapped_gbp"] for row in coverage), Decimal(0))
    return None if in_scope == 0 else mapped / in_scope


@dataclass(frozen=True)
class CompanyReport:
    """What the ``report`` command did: the files and coverage rows, or why there is no report
    (``note``: a base currency that is not counted; not a failure)."""

    files: ReportFiles | None
    coverage: list[dict[str, Any]]
    note: str | None = None


def company_report(
    company: str, out_dir: Path, from_quarter: Quarter | None = None, *, dsn: str | None = None
) -> CompanyReport:
    """The use case the CLI calls: write the report files and return them with the coverage rows.

    A company whose base currency is not GBP gets no files and the note that says why.
    """
    # one snapshot: the files and the coverage returned show the same published build
    with warehouse(dsn, marts=marts.REPORT_MARTS) as conn:
        company_id, company_name = resolve_company(conn, company)
        note = not_counted(conn, company_id)
        if note:
            return CompanyReport(None, [], f"{company_name} ({company_id}): {note}; no report written")
        files = write_report(conn, company, out_dir, from_quarter)
        coverage = emissions_coverage(conn, company_id, from_quarter)
    return CompanyReport(files, coverage)
