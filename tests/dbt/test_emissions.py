"""The emissions models and the report, against real PostgreSQL and real dbt.

Company ``carbon_co`` (GBP) books one line per case to a Sage 50 style chart; every expected kg is
computed by hand from the seeds as round(round(net_gbp * deflator, 2) * factor, 3). A copy of the
dbt project then proves that edits are picked up (a keyword rule, an override, a renamed account)
and that bad input fails the build with a named test (an override naming an unknown SIC group, a
factor set missing a year the spend needs).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sage_sync.core.config import warehouse_conn_json
from sage_sync.reporting import report
from sage_sync.warehouse.migrate import migrate
from tests.conftest import ADMIN_URL
from tests.dbt.test_dbt_models import (
    DBT_PROJECT,
    REPO,
    Row,
    _document,
    _insert_rows,
    _invoice_line,
    _link,
    _other_payment,
)
from tests.dbt_kit import run_dbt

pytestmark = pytest.mark.dbt

CO = "carbon_co"
EU = "euro_co"  # books in EUR: its spend is not counted (GBP only), and the report and page say so
ACCOUNTS = [  # id, name, nominal code, ledger_account_type
    ("la_elec", "Electricity", 7200, "OVERHEADS"),
    ("la_gas", "Gas", 7201, "OVERHEADS"),
    ("la_wages", "Gross wages", 7000, "OVERHEADS"),
    ("la_travel", "Travelling", 7400, "OVERHEADS"),
    ("la_general", "General Expenses", 8200, "OVERHEADS"),
    ("la_office", "Office costs", 7500, "OVERHEADS"),
    ("la_bank", "Bank current account", 1200, "BANK"),
]
# line id -> (emission_status, mapping_rule, sic_code, factor_year, kgco2e), all by hand:
EXPECTED = {
    # in-year 2022 factor of 35.1: 1000.00 x 1.43389
    "inyear_l1": ("mapped", "chart_account_name", "35.1", 2022, Decimal("1433.890")),
    # June 2025: deflated round(130.5 / 138.9, 6) = 0.939525 -> 469.76 x 1.17676 (2023)
    "deflated_l1": ("mapped", "chart_account_name", "35.1", 2023, Decimal("552.795")),
    # a credit note reduces emissions: -200.00 x 1.17676
    "credit_l1": ("mapped", "chart_account_name", "35.1", 2023, Decimal("-235.352")),
    # gas, upstream only: 300.00 x 1.13841
    "gas_l1": ("mapped", "chart_account_name", "35.2-3", 2023, Decimal("341.523")),
    "wages_l1": ("out_of_scope", "chart_account_name", None, None, None),
    "bank_l1": ("out_of_scope", "ledger_account_type", None, None, None),
    "sundry_l1": ("unmapped", "chart_account_name", None, None, None),
    # travel refined by its description ("Rail"): 250.00 x 0.4234 (49.1-2, 2023)
    "rail_l1": ("mapped", "line_description_keyword", "49.1-2", 2023, Decimal("105.850")),
    # general expenses refined by the supplier's name (British Gas): 120.00 x 1.13841
    "bg_l1": ("mapped", "supplier_keyword", "35.2-3", 2023, Decimal("136.609")),
    # 2013: before the factor years, the 2015 factor of 82 (office costs), flagged: 40.00 x 0.212873
    "old_l1": ("mapped", "chart_account_name", "82", 2015, Decimal("8.515")),
}


CAT1 = (3, 1, "Purchased goods and services")
CAT3 = (3, 3, "Fuel- and energy-related activities")
CAT6 = (3, 6, "Business travel")
SCOPE2 = (2, None, None)
DEFAULT = "default_purchased_goods_and_services"
# line id -> (scope_mapping_id, ghg_scope, scope3_category, scope3_category_name, method, data_quality),
# by hand from seed emission_scope_categories (first match: ledger account type, keyword rule, SIC
# group, account name, default); data quality 4 for a high or medium confidence mapping, 5 for low:
EXPECTED_SCOPES = {
    # electricity (35.1): its factor includes generation, so Scope 2; medium confidence
    "inyear_l1": ("electricity_scope_2", *SCOPE2, "spend_based", 4),
    "deflated_l1": ("electricity_scope_2", *SCOPE2, "spend_based", 4),
    "credit_l1": ("electricity_scope_2", *SCOPE2, "spend_based", 4),
    # gas (35.2-3): the factor is its upstream only, category 3; low confidence
    "gas_l1": ("gas_fuel_and_energy", *CAT3, "spend_based", 5),
    # out of scope: no scope, no method, no score
    "wages_l1": (None, None, None, None, None, None),
    "bank_l1": (None, None, None, None, None, None),
    # unmapped: the default category (its £ belongs somewhere), but no kg, so no method or score
    "sundry_l1": (DEFAULT, *CAT1, None, None),
    # rail (49.1-2, by the description's keyword rule, which has no row of its own): category 6
    "rail_l1": ("rail_business_travel", *CAT6, "spend_based", 4),
    # British Gas by the supplier's name, keyword rule gas: its SIC group's row, category 3
    "bg_l1": ("gas_fuel_and_energy", *CAT3, "spend_based", 5),
    # office costs (82, low): no row names it, the default
    "old_l1": (DEFAULT, *CAT1, "spend_based", 5),
}


def _scenario() -> list[Row]:
    rows = [
        Row("businesses", CO, CO, {"id": CO, "name": "Carbon Co Ltd", "country": _link("GB", "c")}),
        Row("financial_settings", CO, CO, {"base_currency": _link("GBP", "currencies")}),
        Row(
            "contacts", CO, "c_bg", {"id": "c_bg", "name": "British Gas Business", "contact_types": [{"id": "VENDOR"}]}
        ),
    ]
    for id_, name, code, type_ in ACCOUNTS:
        rows.append(
            Row(
                "ledger_accounts",
                CO,
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

    def invoice(record_id: str, ledger: str, net: str, date: str, description: str, **kw: object) -> Row:
        return Row(
            "purchase_invoices",
            CO,
            record_id,
            _document(
                record_id,
                "invoice",
                [_invoice_line(f"{record_id}_l1", net, "0", "GB_STANDARD", ledger, description)],
                date=date,
                contact=None,
                contact_name=kw.get("contact_name", "Some Supplier"),
            ),
        )  # type: ignore[arg-type]

    rows += [
        invoice("inyear", "la_elec", "1000.00", "2022-03-15", "Electricity Q1"),
        invoice("deflated", "la_elec", "500.00", "2025-06-10", "Electricity June"),
        Row(
            "purchase_credit_notes",
            CO,
            "credit",
            _document(
                "credit",
                "credit_note",
                [_invoice_line("credit_l1", "200.00", "0", "GB_STANDARD", "la_elec", "Overcharge")],
                date="2023-05-01",
                contact=None,
                contact_name="Some Supplier",
            ),
        ),
        invoice("gas", "la_gas", "300.00", "2023-10-01", "Gas Q3"),
        Row(
            "other_payments",
            CO,
            "wages",
            _other_payment(
                "wages", "OTHER_PAYMENT", [("wages_l1", "2500.00", "0.00", "GB_NO_TAX", "la_wages", "May wages")]
            ),
        ),
        Row(
            "other_payments",
            CO,
            "bank",
            _other_payment(
                "bank", "OTHER_PAYMENT", [("bank_l1", "75.00", "0.00", "GB_NO_TAX", "la_bank", "Transfer to savings")]
            ),
        ),
        invoice("sundry", "la_general", "80.00", "2023-07-01", "Sundries"),
        invoice("rail", "la_travel", "250.00", "2023-09-01", "Rail to Leeds"),
        invoice("bg", "la_general", "120.00", "2023-08-15", "Monthly bill", contact_name="British Gas Business"),
        invoice("old", "la_office", "40.00", "2013-06-01", "Sundry items"),
    ]
    return rows


def _euro_company() -> list[Row]:
    """A company whose base currency is EUR, with one invoice: kept out of every GBP figure."""
    line = _invoice_line("eu_inv_l1", "100.00", "0", "GB_STANDARD", "la_elec", "Electricity")
    return [
        Row("businesses", EU, EU, {"id": EU, "name": "Euro Co", "country": _link("IE", "c")}),
        Row("financial_settings", EU, EU, {"base_currency": _link("EUR", "currencies")}),
        Row(
            "purchase_invoices",
            EU,
            "eu_inv",
            _document("eu_inv", "invoice", [line], date="2023-03-01", contact=None, contact_name="ESB"),
        ),  # type: ignore[arg-type]
    ]


def _dbt_env(dsn: str) -> dict[str, str]:
    params = conninfo_to_dict(dsn)
    return {
        **os.environ,
        "SAGE_PG_HOST": str(params.get("host") or "127.0.0.1"),
        "SAGE_PG_PORT": str(params.get("port") or "5432"),
        "SAGE_PG_USER": str(params.get("user") or "postgres"),
        "SAGE_PG_PASSWORD": str(params.get("password") or ""),
        "SAGE_PG_DBNAME": str(params["dbname"]),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
    }


def _dbt(args: list[str], dsn: str, project: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    paths = ["--project-dir", str(project), "--profiles-dir", str(project)]
    paths += ["--target-path", str(tmp / "target"), "--log-path", str(tmp / "logs")]
    return run_dbt([*args, *paths], _dbt_env(dsn))


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    """A database of this module's own (the scenario truncates nothing another module reads)."""
    name = f"sage_test_emissions_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = make_conninfo(ADMIN_URL, dbname=name)
    with psycopg.connect(dsn) as conn:
        migrate(conn)
        conn.execute(
            "insert into sage_control.companies (company_id, company_name, status, "
            "synced_from_quarter, connected_at) values (%s, 'Carbon Co', 'active', '2013-Q1', now())",
            (CO,),
        )
        conn.execute(
            "insert into sage_control.companies (company_id, company_name, status, "
            "synced_from_quarter, connected_at) values (%s, 'Euro Co', 'active', '2013-Q1', now())",
            (EU,),
        )
        _insert_rows(conn, _scenario() + _euro_company())
    yield dsn
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the dbt project whose seeds the tests may edit."""
    copy = tmp_path_factory.mktemp("dbt_project") / "dbt"
    shutil.copytree(DBT_PROJECT, copy, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    return copy


@pytest.fixture(scope="module")
def built(dsn: str, project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[psycopg.Connection]:
    result = _dbt(["build"], dsn, project, tmp_path_factory.mktemp("dbt_build"))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def _lines(conn: psycopg.Connection) -> dict[str, tuple]:
    rows = conn.execute(
        "select line_id, emission_status, mapping_rule, sic_code, factor_year, kgco2e "
        "from analytics.fct_spend_emissions where company_id = %s",
        (CO,),
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_every_case_has_its_hand_computed_kg(built: psycopg.Connection) -> None:
    assert _lines(built) == EXPECTED


def test_flags_and_provenance(built: psycopg.Connection) -> None:
    rows = {
        r[0]: r[1:]
        for r in built.execute(
            "select line_id, is_upstream_only, scope_coverage, price_adjustment, is_before_factor_years, "
            "factor_set, out_of_scope_reason, deflator from analytics.fct_spend_emissions"
        ).fetchall()
    }
    assert rows["gas_l1"][:2] == (True, "upstream_only") and rows["bg_l1"][:2] == (True, "upstream_only")
    assert rows["inyear_l1"][:2] == (False, "supply_chain")
    assert rows["deflated_l1"][2] == "cpi_monthly" and rows["deflated_l1"][6] == Decimal("0.939525")
    assert rows["old_l1"][2:4] == ("cpi_earliest_year", True)
    assert {r[4] for r in rows.values()} == {"defra_leeds_2023"}
    assert rows["wages_l1"][5] == "payroll" and rows["bank_l1"][5] == "balance_sheet"


def test_coverage_adds_up(built: psycopg.Connection) -> None:
    q3 = built.execute(
        "select net_gbp, mapped_gbp, unmapped_gbp, out_of_scope_gbp, coverage_share, kgco2e, upstream_only_kgco2e "
        "from analytics.rpt_emissions_coverage where company_id = %s and quarter = '2023-Q3'",
        (CO,),
    ).fetchone()
    # rail 250 + British Gas 120 mapped, sundries 80 unmapped
    assert q3 == (
        Decimal("450.00"),
        Decimal("370.00"),
        Decimal("80.00"),
        Decimal("0"),
        Decimal("0.8222"),
        Decimal("242.459"),
        Decimal("136.609"),
    )
    by_category = built.execute(
        "select sum(kgco2e) from analytics.rpt_emissions_by_category_quarter where company_id = %s", (CO,)
    ).fetchone()
    assert by_category[0] == sum(v[4] for v in EXPECTED.values() if v[4] is not None)


def _scopes(conn: psycopg.Connection) -> dict[str, tuple]:
    rows = conn.execute(
        "select line_id, scope_mapping_id, ghg_scope, scope3_category, scope3_category_name, method, data_quality "
        "from analytics.fct_spend_emissions where company_id = %s",
        (CO,),
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_every_line_has_its_scope_category_and_method(built: psycopg.Connection) -> None:
    assert _scopes(built) == EXPECTED_SCOPES


def test_emissions_by_scope_quarter(built: psycopg.Connection) -> None:
    """2023-Q3 by hand: sundries 80.00 unmapped (category 1), British Gas 120.00 (category 3, kg
    136.609, upstream only), rail 250.00 (category 6, kg 105.850); excluded 80 of 450 = 0.1778,
    over the 5 % cap. 2024-Q2 holds only payroll and a bank transfer: all excluded."""
    rows = built.execute(
        "select ghg_scope, scope3_category, line_count, net_gbp, mapped_gbp, unmapped_gbp, out_of_scope_gbp, "
        "spend_based_gbp, spend_based_share, activity_based_share, kgco2e, upstream_only_kgco2e, "
        "share_of_quarter_kgco2e, excluded_gbp, quarter_net_gbp, quarter_excluded_gbp, quarter_excluded_share, "
        "exclusion_cap_share, is_within_exclusion_cap "
        "from analytics.rpt_emissions_by_scope_quarter where company_id = %s and quarter = %s "
        "order by ghg_scope, scope3_category",
        (CO, "2023-Q3"),
    ).fetchall()
    d = Decimal
    quarter = (d("450.00"), d("80.00"), d("0.1778"), d("0.05"), False)
    assert rows == [
        (3, 1, 1, d("80.00"), 0, d("80.00"), 0, 0, d("0.0000"), d("0.0000"), 0, 0, d("0.0000"), d("80.00"), *quarter),
        (3, 3, 1, d("120.00"), d("120.00"), 0, 0, d("120.00"), d("1.0000"), d("0.0000"), d("136.609"),
         d("136.609"), d("0.5634"), 0, *quarter),
        (3, 6, 1, d("250.00"), d("250.00"), 0, 0, d("250.00"), d("1.0000"), d("0.0000"), d("105.850"), 0,
         d("0.4366"), 0, *quarter),
    ]  # fmt: skip
    out_of_scope = built.execute(
        "select ghg_scope, scope3_category, net_gbp, out_of_scope_gbp, spend_based_share, quarter_excluded_share, "
        "is_within_exclusion_cap from analytics.rpt_emissions_by_scope_quarter "
        "where company_id = %s and quarter = '2024-Q2'",
        (CO,),
    ).fetchall()
    assert out_of_scope == [(None, None, d("2575.00"), d("2575.00"), None, d("1.0000"), False)]
    by_scope = dict(
        built.execute(
            "select coalesce(ghg_scope, 0), sum(kgco2e) from analytics.rpt_emissions_by_scope_quarter "
            "where company_id = %s group by 1",
            (CO,),
        ).fetchall()
    )
    # Scope 2: 1433.890 + 552.795 - 235.352; Scope 3: 341.523 + 136.609 + 105.850 + 8.515
    assert by_scope == {0: 0, 2: d("1751.333"), 3: d("592.497")}
    assert sum(by_scope.values()) == sum(v[4] for v in EXPECTED.values() if v[4] is not None)
    within = built.execute(
        "select quarter, bool_and(is_within_exclusion_cap) from analytics.rpt_emissions_by_scope_quarter "
        "where company_id = %s group by quarter order by quarter",
        (CO,),
    ).fetchall()
    # nothing excluded but in 2023-Q3 (unmapped sundries) and 2024-Q2 (payroll, bank)
    assert within == [
        ("2013-Q2", True),
        ("2022-Q1", True),
        ("2023-Q2", True),
        ("2023-Q3", False),
        ("2023-Q4", True),
        ("2024-Q2", False),
        ("2025-Q2", True),
    ]


def test_report_command_writes_csv_xlsx_and_png(built: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    p = conninfo_to_dict(dsn)
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}",
        "AIRFLOW_CONN_SAGE_WAREHOUSE": warehouse_conn_json(make_conninfo(dsn, password=p.get("password") or "unused")),
    }
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "sage_sync", "report", CO, "--from", "2022-Q1", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        f"emissions_{CO}.xlsx",
        f"emissions_{CO}_by_category_quarter.csv",
        f"emissions_{CO}_by_quarter.png",
        f"emissions_{CO}_coverage.csv",
    ]
    assert (out / f"emissions_{CO}_by_quarter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / f"emissions_{CO}_by_category_quarter.csv").open() as handle:
        category_rows = list(csv.DictReader(handle))
    with (out / f"emissions_{CO}_coverage.csv").open() as handle:
        coverage_rows = list(csv.DictReader(handle))
    mart_kg, mart_gbp = built.execute(
        "select sum(kgco2e), sum(net_gbp) from analytics.rpt_emissions_coverage "
        "where company_id = %s and quarter >= '2022-Q1'",
        (CO,),
    ).fetchone()
    assert sum(Decimal(r["kgco2e"]) for r in category_rows) == mart_kg
    assert sum(Decimal(r["kgco2e"]) for r in coverage_rows) == mart_kg
    assert sum(Decimal(r["net_gbp"]) for r in coverage_rows) == mart_gbp
    assert "2013-Q2" not in {r["quarter"] for r in coverage_rows}  # --from
    import openpyxl

    workbook = openpyxl.load_workbook(out / f"emissions_{CO}.xlsx")
    assert workbook.sheetnames == ["by category and quarter", "coverage", "about"]
    assert workbook["coverage"].max_row == len(coverage_rows) + 1
    assert "2023-Q3" in result.stdout

    refused = subprocess.run(
        [sys.executable, "-m", "sage_sync", "report", "nobody", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert refused.returncode == 2 and "unknown company 'nobody'" in refused.stderr

    # A company whose books are in EUR is not "late": the report says why there is none, and succeeds.
    euro = subprocess.run(
        [sys.executable, "-m", "sage_sync", "report", EU, "--out", str(tmp_path / "euro")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert euro.returncode == 0, euro.stdout + euro.stderr
    assert "Euro Co (euro_co): base currency EUR: not counted (GBP only); no report written" in euro.stdout
    assert not (tmp_path / "euro").exists()
    # Shares are written to 4 places, not the marts' 20 decimals.
    shares = [r["coverage_share"] for r in coverage_rows if r["coverage_share"]]
    shares += [r["share_of_quarter_kgco2e"] for r in category_rows if r["share_of_quarter_kgco2e"]]
    assert shares and all(len(x.split(".")[-1]) <= 4 for x in shares), shares


def test_connections_page_shows_latest_quarters_emissions(
    built: psycopg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = pytest.importorskip("sage_sync.web.app")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    p = conninfo_to_dict(dsn)
    monkeypatch.setenv(
        "AIRFLOW_CONN_SAGE_WAREHOUSE",
        warehouse_conn_json(make_conninfo(dsn, password=p.get("password") or "unused")),
    )
    parent = FastAPI()
    parent.mount("/sage", plugin.app)
    plugin.app.dependency_overrides[plugin.current_user] = lambda: "tester"
    plugin.app.dependency_overrides[plugin.edit_rights] = lambda: False
    try:
        page = TestClient(parent).get("/sage/").text
    finally:
        plugin.app.dependency_overrides.clear()
    cell = page.split(f'id="emissions-{CO}">', 1)[1].split("</table>", 1)[0]
    # the latest four quarters, oldest first: kg rounded, coverage = share of in-scope £ mapped
    assert '<td>2023-Q3</td><td class="num">242</td><td class="num">82%</td>' in cell
    assert '<td>2023-Q4</td><td class="num">342</td><td class="num">100%</td>' in cell
    # only payroll and a bank transfer: out of scope
    assert '<td>2024-Q2</td><td class="num">0</td><td class="num">-</td>' in cell
    assert '<td>2025-Q2</td><td class="num">553</td><td class="num">100%</td>' in cell
    assert "2023-Q2" not in cell
    # EUR books: said where the emissions would show, not "no emissions yet" (which reads as late)
    euro = page.split(f'id="emissions-{EU}">', 1)[1].split("</div>", 1)[0]
    assert "base currency EUR: not counted (GBP only)" in euro and "no emissions yet" not in euro, euro


def _write(path: Path, rows: list[str]) -> None:
    path.write_text("\n".join(rows) + "\n")


SEEDS = "seeds/emission_factors"


def test_edits_re_map_history_on_the_next_build(
    built: psycopg.Connection, dsn: str, project: Path, tmp_path: Path
) -> None:
    """A new keyword rule, a line override and a renamed account all show on the next incremental build."""
    rules = project / SEEDS / "emission_keyword_rules.csv"
    rules.write_text(rules.read_text() + "sundries,5,sundries,32,,low,false\n")
    _write(
        project / SEEDS / "emission_line_overrides.csv",
        [
            "company_id,record_id,line_id,sic_code,out_of_scope_reason,reason",
            f"{CO},bg,bg_l1,61,,the British Gas bill is a phone contract",
        ],
    )
    _insert_rows(
        built,
        [
            Row(
                "ledger_accounts",
                CO,
                "la_travel",
                {
                    "id": "la_travel",
                    "name": "Hotels",
                    "displayed_as": "Hotels (7400)",
                    "nominal_code": 7400,
                    "ledger_account_type": _link("OVERHEADS", "ledger_account_types"),
                    "included_in_chart": True,
                },
                "2024-07-01T06:00:00Z",
            )
        ],
    )
    result = _dbt(["build"], dsn, project, tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    lines = _lines(built)
    # 80.00 x 0.67801 (32, 2023)
    assert lines["sundry_l1"] == ("mapped", "line_description_keyword", "32", 2023, Decimal("54.241"))
    # 120.00 x 0.0946355 (61, 2023)
    assert lines["bg_l1"] == ("mapped", "line_override", "61", 2023, Decimal("11.356"))
    # renamed "Hotels": no longer mixed, so "Rail" no longer refines it; 250.00 x 0.289716 (55, 2023)
    assert lines["rail_l1"] == ("mapped", "chart_account_name", "55", 2023, Decimal("72.429"))
    # the scope follows the new mapping: the sundries' keyword (32, low) has no row of its own, the
    # default; a line override is high confidence; "Hotels" (55) is business travel by its group
    scopes = _scopes(built)
    assert scopes["sundry_l1"] == (DEFAULT, *CAT1, "spend_based", 5)
    assert scopes["bg_l1"] == (DEFAULT, *CAT1, "spend_based", 4)
    assert scopes["rail_l1"] == ("hotels_business_travel", *CAT6, "spend_based", 4)
    fingerprints = built.execute(
        "select count(distinct keyword_rules_fingerprint) from sage_intermediate.int_emission_line_keywords"
    ).fetchone()
    assert fingerprints == (1,)


def test_an_override_naming_an_unknown_sic_group_fails_the_build(
    built: psycopg.Connection, dsn: str, project: Path, tmp_path: Path
) -> None:
    overrides = project / SEEDS / "emission_account_overrides.csv"
    before = overrides.read_text()
    _write(
        overrides,
        [
            "company_id,ledger_account_id,nominal_code,sic_code,out_of_scope_reason,reason",
            f"{CO},la_general,,99.9,,a group that does not exist",
        ],
    )
    try:
        result = _dbt(["build"], dsn, project, tmp_path)
    finally:
        overrides.write_text(before)
    assert result.returncode != 0
    assert "Failure in test assert_emission_overrides_use_known_sic_groups" in result.stdout, result.stdout[-4000:]


def test_a_factor_set_missing_a_year_the_spend_needs_is_refused(
    built: psycopg.Connection, dsn: str, project: Path, tmp_path: Path
) -> None:
    source = project / SEEDS / "emission_factors__defra_leeds_2023.csv"
    gap = project / SEEDS / "emission_factors__test_without_2022.csv"
    lines = source.read_text().splitlines()
    _write(
        gap,
        [lines[0]]
        + [line.replace("defra_leeds_2023", "test_without_2022", 1) for line in lines[1:] if ",2022," not in line],
    )
    sets = project / SEEDS / "emission_factor_sets.csv"
    before = sets.read_text()
    sets.write_text(before + before.splitlines()[1].replace("defra_leeds_2023", "test_without_2022", 1) + "\n")
    try:
        result = _dbt(["build", "--vars", "{emission_factor_set: test_without_2022}"], dsn, project, tmp_path)
    finally:
        sets.write_text(before)
        gap.unlink()
    assert result.returncode != 0
    assert "Failure in test assert_factor_set_covers_spend" in result.stdout, result.stdout[-4000:]


def test_every_factor_set_names_the_hash_of_its_factors_and_its_approval() -> None:
    """A factor edited without a new hash in emission_factor_sets fails here: the set's row is
    what an assurer reads, so it must describe exactly the factors the build uses."""
    with (DBT_PROJECT / SEEDS / "emission_factor_sets.csv").open(newline="") as handle:
        sets = list(csv.DictReader(handle))
    assert sets
    for row in sets:
        factors = DBT_PROJECT / SEEDS / f"emission_factors__{row['factor_set']}.csv"
        assert row["factors_sha256"] == hashlib.sha256(factors.read_bytes()).hexdigest(), row["factor_set"]
        assert row["approved"] in ("true", "false"), row["factor_set"]
        if row["approved"] == "true":
            assert row["approved_by"] and date.fromisoformat(row["approved_on"]), row["factor_set"]
        assert date.fromisoformat(row["release_date"]) and row["gwp_basis"], row["factor_set"]


def test_a_factor_set_not_approved_is_refused_and_the_published_figures_stay(
    built: psycopg.Connection, dsn: str, project: Path, tmp_path: Path
) -> None:
    def published() -> tuple:
        return built.execute(
            "select sum(kgco2e), array_agg(distinct factor_set) from analytics.fct_spend_emissions"
        ).fetchone()

    built.rollback()
    before = published()
    assert before[0] > 0 and before[1] == ["defra_leeds_2023"]
    source = project / SEEDS / "emission_factors__defra_leeds_2023.csv"
    candidate = project / SEEDS / "emission_factors__test_candidate.csv"
    # the same groups and years at twice the factor: a candidate release whose figures would differ
    with source.open(newline="") as handle:
        factors = list(csv.DictReader(handle))
    with candidate.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(factors[0]), lineterminator="\n")
        writer.writeheader()
        for factor in factors:
            doubled = Decimal(factor["kgco2e_per_gbp"]) * 2
            writer.writerow({**factor, "factor_set": "test_candidate", "kgco2e_per_gbp": str(doubled)})
    sets = project / SEEDS / "emission_factor_sets.csv"
    before_sets = sets.read_text()
    with sets.open(newline="") as handle:
        row = next(csv.DictReader(handle))
    row = {**row, "factor_set": "test_candidate", "approved": "false", "approved_by": "", "approved_on": ""}
    row["factors_sha256"] = hashlib.sha256(candidate.read_bytes()).hexdigest()
    with sets.open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(row), lineterminator="\n").writerow(row)
    try:
        refused = _dbt(["build", "--vars", "{emission_factor_set: test_candidate}"], dsn, project, tmp_path)
    finally:
        sets.write_text(before_sets)
        candidate.unlink()
    assert refused.returncode != 0
    assert "Failure in test assert_factor_set_is_approved" in refused.stdout, refused.stdout[-4000:]
    built.rollback()
    assert published() == before  # the refused build published nothing

    # approved again (the set in use is the default): the next build publishes the default's figures
    again = _dbt(["build"], dsn, project, tmp_path)
    assert again.returncode == 0, again.stdout[-4000:]
    built.rollback()
    assert published() == before


def test_the_report_prints_the_licence_of_the_set_in_use(
    built: psycopg.Connection, dsn: str, project: Path, tmp_path: Path
) -> None:
    """Switching the factor set switches the licence and attribution the report prints: they ride
    on int_emission_factors' rows (the one model that reads the var), not on text in Python."""
    with (project / SEEDS / "emission_factor_sets.csv").open(newline="") as handle:
        default = next(csv.DictReader(handle))
    shown = report.factor_attribution(built)
    assert default["attribution"] in shown and default["licence"] in shown, shown

    source = project / SEEDS / "emission_factors__defra_leeds_2023.csv"
    other = project / SEEDS / "emission_factors__test_other_licence.csv"
    lines = source.read_text().splitlines()
    _write(other, [lines[0]] + [line.replace("defra_leeds_2023", "test_other_licence", 1) for line in lines[1:]])
    sets = project / SEEDS / "emission_factor_sets.csv"
    before = sets.read_text()
    row = before.splitlines()[1].replace("defra_leeds_2023", "test_other_licence", 1)
    sets.write_text(before + row.replace("Open Government Licence v3.0", "Test Licence 9.9") + "\n")
    # what the set in use decides (the emission marts are views over these)
    select = ["--select", "emission_factor_sets", "int_emission_factors", "int_emission_price_periods"]
    try:
        switched = _dbt(
            [
                "build",
                *select,
                "emission_factors__test_other_licence",
                "--vars",
                "{emission_factor_set: test_other_licence}",
            ],
            dsn,
            project,
            tmp_path,
        )
        assert switched.returncode == 0, switched.stdout[-4000:]
        shown = report.factor_attribution(built)
    finally:
        sets.write_text(before)
        other.unlink()
        restored = _dbt(["build", *select], dsn, project, tmp_path)
    assert restored.returncode == 0, restored.stdout[-4000:]
    assert shown.startswith("Emission factors: test_other_licence.") and "Test Licence 9.9" in shown, shown
    assert "Open Government Licence" not in shown, shown
    assert "Open Government Licence v3.0" in report.factor_attribution(built)
