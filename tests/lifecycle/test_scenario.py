"""The whole connection lifecycle end to end: CLI, Airflow (`dags test`), dbt, the fake Sage.

connect -> daily runs -> edits and deletions -> disconnect -> edits and deletions while
disconnected -> reconnect -> Synced From moved two quarters earlier (the sage_backfill DAG) ->
reset. After each step the modelled spend equals what the fake Sage holds in the window,
nothing is duplicated, and fct_connected_periods tells the story.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from sage_sync.lifecycle import connections as lifecycle
from sage_sync.orchestration import airflow_api
from sage_sync.pipeline import sync
from sandbox.fake_sage.server import FakeSageServer
from tests.dbt_kit import run_dbt
from tests.lifecycle_kit import business_id, fresh_code

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.airflow, pytest.mark.dbt]


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=23) as server:
        yield server


@pytest.fixture
def env(airflow_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The shared Airflow/dbt environment (tests/conftest.py); DAG pausing is not this test's business."""
    monkeypatch.setattr(airflow_api, "set_dag_paused", lambda dag_id, *, paused, caller=None: False)
    return airflow_env


def _run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(cmd[:5])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _cli(env: dict[str, str], *args: str) -> str:
    return _run([str(BIN / "python"), "-m", "sage_sync", *args], env)


def _dbt_build(env: dict[str, str], tmp_path: Path) -> None:
    # dbt's unit tests are tests/dbt's business (and one needs a prior build): models and data tests here.
    paths = ["--project-dir", str(ROOT / "dbt"), "--profiles-dir", str(ROOT / "dbt")]
    paths += ["--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")]
    done = run_dbt(["build", "--exclude", "test_type:unit", *paths], env)
    assert done.returncode == 0, f"dbt build failed:\n{done.stdout[-3000:]}"


def _expected_spend(sage: FakeSageServer, company: str, start: date) -> Decimal:
    """Spend by the models' rules, computed independently from what the fake Sage holds now."""
    total = Decimal(0)

    def counted(doc: dict) -> bool:
        return (
            date.fromisoformat(doc["date"]) >= start
            and doc["status"]["id"] not in ("VOID", "DRAFT")
            and doc["currency"]["id"] == "GBP"
        )

    for stream, lines, sign in (
        ("purchase_invoices", "invoice_lines", 1),
        ("purchase_credit_notes", "credit_note_lines", -1),
    ):
        for doc in filter(counted, sage.admin.records(company, stream)):
            total += sign * sum(Decimal(line["net_amount"]) for line in doc[lines])
    for doc in filter(counted, sage.admin.records(company, "purchase_quick_entries")):
        total += (-1 if doc["quick_entry_type"]["id"] == "CREDIT_NOTE" else 1) * Decimal(doc["net_amount"])
    for doc in sage.admin.records(company, "other_payments"):
        kind = doc["transaction_type"]["id"]
        if date.fromisoformat(doc["date"]) >= start and kind in ("OTHER_PAYMENT", "OTHER_PAYMENT_REFUND"):
            sign = -1 if kind == "OTHER_PAYMENT_REFUND" else 1
            total += sign * sum(Decimal(line["net_amount"]) for line in doc["payment_lines"])
    return total


def _check_models(conn: psycopg.Connection, sage: FakeSageServer, company: str, start: date) -> None:
    modelled = conn.execute(
        "select coalesce(sum(amount), 0) from analytics.fct_spend_transactions where company_id = %s", (company,)
    ).fetchone()[0]
    assert Decimal(modelled) == _expected_spend(sage, company, start)
    duplicates = conn.execute(
        "select count(*) - count(distinct spend_line_id) from analytics.fct_spend_transactions"
    ).fetchone()[0]
    assert duplicates == 0


def _edit_and_delete(sage: FakeSageServer, company: str, start: date, tag: str) -> tuple[str, str]:
    invoices = [
        r
        for r in sage.admin.records(company, "purchase_invoices")
        if r["date"] >= start.isoformat()
        and r["status"]["id"] not in ("VOID", "DRAFT")
        and r["currency"]["id"] == "GBP"
    ]
    sage.admin.advance_clock(86400)
    edited, removed = invoices[0], invoices[1]
    lines = [
        {
            **edited["invoice_lines"][0],
            "net_amount": f"{len(tag)}11.00",
            "tax_amount": "0.00",
            "total_amount": f"{len(tag)}11.00",
        }
    ]
    sage.admin.update(company, "purchase_invoices", edited["id"], {"invoice_lines": lines, "notes": tag})
    sage.admin.delete(company, "purchase_invoices", removed["id"])
    sage.admin.advance_clock(60)
    return edited["id"], removed["id"]


def _periods(conn: psycopg.Connection, company: str) -> list[tuple]:
    return conn.execute(
        "select connection_state, synced_from_quarter, period_ended_at is null, records_imported_on_reconnection, "
        "deletions_detected_on_reconnection from analytics.fct_connected_periods where company_id = %s "
        "order by period_number",
        (company,),
    ).fetchall()


def test_connection_lifecycle_end_to_end(
    sage: FakeSageServer, env: dict[str, str], warehouse: psycopg.Connection, tmp_path: Path
) -> None:
    company = business_id(sage, "greenleaf")
    start = date(2026, 1, 1)

    # connect, then a daily run by Airflow
    code, verifier = fresh_code(sage)
    _cli(
        env,
        "connect",
        "--code",
        code,
        "--code-verifier",
        verifier,
        "--business-id",
        company,
        "--synced-from",
        "2026-Q1",
    )
    _run([str(BIN / "airflow"), "dags", "test", f"sage_sync__{company}"], env)
    _dbt_build(env, tmp_path)
    _check_models(warehouse, sage, company, start)

    # edits and deletions, the next daily run
    _edit_and_delete(sage, company, start, "first")
    sync.run_company(company, kind="daily")
    _dbt_build(env, tmp_path)
    _check_models(warehouse, sage, company, start)

    # disconnect; Sage changes meanwhile; runs skip
    assert "grant revoked at Sage" in _cli(env, "disconnect", company)
    edited, removed = _edit_and_delete(sage, company, start, "while-away")
    with pytest.raises(sync.CompanySkipped):
        sync.run_company(company, kind="daily")

    # reconnect: everything since the watermark is imported, the deletion detected
    code, verifier = fresh_code(sage)
    _cli(env, "reconnect", company, "--code", code, "--code-verifier", verifier)
    sync.run_company(company, kind="daily")
    _dbt_build(env, tmp_path)
    _check_models(warehouse, sage, company, start)
    assert removed in {
        r[0] for r in warehouse.execute("select record_id from sage_raw.deletions where company_id = %s", (company,))
    }
    assert warehouse.execute(
        "select count(*) from analytics.fct_spend_transactions where record_id = %s", (removed,)
    ).fetchone() == (0,)  # deleted records leave the spend models
    kept = warehouse.execute(
        "select detection_method, _extracted_at is not null from sage_raw.deletions where record_id = %s", (removed,)
    ).fetchall()
    assert ("deleted_since", True) in kept  # ... and stay in history with when and how it was detected
    assert edited in {
        r[0]
        for r in warehouse.execute(
            "select record_id from analytics.fct_spend_transactions where company_id = %s", (company,)
        )
    }

    # Synced From two quarters earlier: validated, re-authorised, the sage_backfill DAG
    code, verifier = fresh_code(sage)
    quarter = lifecycle.authorise_backfill(company, "2025-Q3", code, verifier)
    _run(
        [
            str(BIN / "airflow"),
            "dags",
            "test",
            "sage_backfill",
            "-c",
            json.dumps(lifecycle.backfill_conf(company, quarter)),
        ],
        env,
    )
    assert warehouse.execute("select synced_from_quarter from sage_control.companies").fetchone() == ("2025-Q3",)
    _dbt_build(env, tmp_path)
    _check_models(warehouse, sage, company, date(2025, 7, 1))

    # reset: wiped and re-imported from Synced From
    _cli(env, "reset", company, "--yes")
    _dbt_build(env, tmp_path)
    _check_models(warehouse, sage, company, date(2025, 7, 1))

    periods = _periods(warehouse, company)
    assert [p[:3] for p in periods] == [
        ("connected", "2026-Q1", False),
        ("disconnected", "2026-Q1", False),
        ("connected", "2026-Q1", False),
        ("connected", "2025-Q3", True),
    ]
    imported, deletions = periods[1][3], periods[1][4]
    assert imported >= 1 and deletions >= 1  # the edit and the deletion made while disconnected
    assert all(p[3] is None for p in periods if p[0] == "connected")
