"""End to end: the fake Sage, the CLI, a company DAG run by Airflow, and `dbt build`.

After each step the modelled spend must equal what the fake Sage holds, computed here
independently from its records: GBP documents in the Synced From window, not void, draft or
deleted, credit notes and refunds negative, receipts left out.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from sage_sync.core.config import sage_settings
from sage_sync.sage.auth import OAuthClient, new_pkce_pair
from sage_sync.warehouse.token_store import PostgresTokenStore
from sandbox.fake_sage.server import FakeSageServer
from tests.dbt_kit import run_dbt

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SYNCED_FROM = "2025-Q1"
SPEND_STREAMS = ["purchase_invoices", "purchase_credit_notes", "purchase_quick_entries", "other_payments"]
pytestmark = [pytest.mark.airflow, pytest.mark.dbt]


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=11) as server:
        yield server


@pytest.fixture
def env(airflow_env: dict[str, str]) -> dict[str, str]:
    """The process environment of the CLI, Airflow and dbt (tests/conftest.py)."""
    return airflow_env


def _run(cmd: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(cmd[:4])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _connect_via_cli(sage: FakeSageServer, env: dict[str, str], business_id: str) -> None:
    verifier, challenge = new_pkce_pair()
    oauth = OAuthClient(sage_settings())
    assert "code_challenge=" in oauth.authorization_url("s", code_challenge=challenge)
    code = sage.authorize(code_challenge=challenge)
    _run(
        [
            str(BIN / "python"),
            "-m",
            "sage_sync",
            "connect",
            "--code",
            code,
            "--business-id",
            business_id,
            "--synced-from",
            SYNCED_FROM,
            "--code-verifier",
            verifier,
        ],
        env,
    )


def _dag_test(env: dict[str, str], dag_id: str) -> str:
    """Run the DAG; return its output, where `airflow dags test` writes the task logs (in-process)."""
    done = _run([str(BIN / "airflow"), "dags", "test", dag_id], env, timeout=600)
    return done.stdout + done.stderr


def _dbt_build(env: dict[str, str], tmp_path: Path) -> None:
    paths = ["--project-dir", str(ROOT / "dbt"), "--profiles-dir", str(ROOT / "dbt")]
    paths += ["--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")]
    done = run_dbt(["build", *paths], env)
    assert done.returncode == 0, f"dbt build failed:\n{done.stdout[-3000:]}"


def _expected_spend(sage: FakeSageServer, company: str) -> Decimal:
    """Spend per the scenario's rules, from what the fake Sage holds right now."""
    start = date.fromisoformat("2025-01-01")
    total = Decimal(0)
    sign_of = {"purchase_invoices": 1, "purchase_credit_notes": -1}
    for stream, lines in (("purchase_invoices", "invoice_lines"), ("purchase_credit_notes", "credit_note_lines")):
        for doc in sage.admin.records(company, stream):
            if (
                date.fromisoformat(doc["date"]) < start
                or doc["status"]["id"] in ("VOID", "DRAFT")
                or doc["currency"]["id"] != "GBP"
            ):
                continue
            total += sign_of[stream] * sum(Decimal(line["net_amount"]) for line in doc[lines])
    for doc in sage.admin.records(company, "purchase_quick_entries"):
        if (
            date.fromisoformat(doc["date"]) < start
            or doc["status"]["id"] in ("VOID", "DRAFT")
            or doc["currency"]["id"] != "GBP"
        ):
            continue
        total += (-1 if doc["quick_entry_type"]["id"] == "CREDIT_NOTE" else 1) * Decimal(doc["net_amount"])
    for doc in sage.admin.records(company, "other_payments"):
        kind = doc["transaction_type"]["id"]
        if date.fromisoformat(doc["date"]) < start or kind not in ("OTHER_PAYMENT", "OTHER_PAYMENT_REFUND"):
            continue
        sign = -1 if kind == "OTHER_PAYMENT_REFUND" else 1
        total += sign * sum(Decimal(line["net_amount"]) for line in doc["payment_lines"])
    return total


def _modelled_spend(conn: psycopg.Connection, company: str) -> Decimal:
    row = conn.execute(
        "select coalesce(sum(amount), 0) from analytics.fct_spend_transactions where company_id = %s", (company,)
    ).fetchone()
    return Decimal(row[0])


def test_company_dag_then_dbt_equals_what_sage_holds(
    sage: FakeSageServer, env: dict[str, str], pg_dsn: str, warehouse: psycopg.Connection, tmp_path: Path
) -> None:
    company = next(b["id"] for b in sage.admin.businesses() if b["key"] == "greenleaf")
    env = {**env, "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp_path / "airflow-logs")}  # this run's log files
    _connect_via_cli(sage, env, company)
    dag_id = f"sage_sync__{company}"
    token_pairs, task_logs = [_stored_tokens(pg_dsn, company)], []

    task_logs.append(_dag_test(env, dag_id))
    token_pairs.append(_stored_tokens(pg_dsn, company))
    # The task log follows a first sync page by page: records so far of Sage's $total, rate, ETA.
    held = len([r for r in sage.admin.records(company, "purchase_invoices") if r["date"] >= "2025-01-01"])
    assert re.search(
        rf"purchase_invoices: page 1, [0-9,]+ records of {held:,} \(\$total\) \([0-9]+%\), "
        r"[0-9,]+ records/s, ETA [0-9hms]+",
        task_logs[0],
    ), task_logs[0][-3000:]
    _dbt_build(env, tmp_path)
    assert _modelled_spend(warehouse, company) == _expected_spend(sage, company)
    runs = warehouse.execute("select kind, status from sage_control.sync_runs").fetchall()
    assert runs == [("daily", "success")]
    assert warehouse.execute("select status from sage_control.companies").fetchone() == ("active",)

    # Between runs in Sage: an edit, a deletion, a void and a new bill.
    invoices = [
        r
        for r in sage.admin.records(company, "purchase_invoices")
        if r["date"] >= "2025-01-01" and r["status"]["id"] not in ("VOID", "DRAFT") and r["currency"]["id"] == "GBP"
    ]
    sage.admin.advance_clock(86400)
    edited = invoices[0]
    new_lines = [
        {**edited["invoice_lines"][0], "net_amount": "999.99", "tax_amount": "200.00", "total_amount": "1199.99"}
    ]
    sage.admin.update(company, "purchase_invoices", edited["id"], {"invoice_lines": new_lines})
    sage.admin.delete(company, "purchase_invoices", invoices[1]["id"])
    sage.admin.void(company, "purchase_invoices", invoices[2]["id"], "entered twice")
    versions_before = warehouse.execute("select count(*) from sage_raw.purchase_invoices").fetchone()[0]

    task_logs.append(_dag_test(env, dag_id))
    token_pairs.append(_stored_tokens(pg_dsn, company))
    _assert_no_token_in_task_logs(task_logs, tmp_path / "airflow-logs", token_pairs)
    _dbt_build(env, tmp_path)
    versions_after = warehouse.execute("select count(*) from sage_raw.purchase_invoices").fetchone()[0]
    assert versions_after == versions_before + 2  # the edit and the void; the deletion is a tombstone
    deleted = warehouse.execute(
        "select record_id from sage_raw.deletions where stream = 'purchase_invoices' and record_id = %s",
        (invoices[1]["id"],),
    ).fetchall()
    assert deleted == [(invoices[1]["id"],)]
    assert _modelled_spend(warehouse, company) == _expected_spend(sage, company)
    in_fact = {
        r[0]
        for r in warehouse.execute(
            "select distinct record_id from analytics.fct_spend_transactions where company_id = %s", (company,)
        )
    }
    assert invoices[1]["id"] not in in_fact and invoices[2]["id"] not in in_fact and edited["id"] in in_fact
    duplicates = warehouse.execute(
        "select count(*) - count(distinct spend_line_id) from analytics.fct_spend_transactions"
    ).fetchone()[0]
    assert duplicates == 0
    # README query 3 after a daily (incremental) run: the spend streams are reconciled against
    # Sage's count of the whole synced window, not left NULL.
    health = warehouse.execute(
        "select stream, reconciliation_scope, is_reconciled, window_total, current_record_count "
        "from analytics.rpt_sync_health where company_id = %s and stream_kind = 'document' order by stream",
        (company,),
    ).fetchall()
    assert [h[0] for h in health] == sorted(SPEND_STREAMS)
    for stream, scope, reconciled, window_total, held_now in health:
        expected = len([r for r in sage.admin.records(company, stream) if r["date"] >= "2025-01-01"])
        assert (scope, reconciled, window_total, held_now) == ("window_count", True, expected, expected), stream

    # Sage revokes the grant: the next run fails at once (no retry waits) with one line saying what
    # to do, the company is needs_reauth and the run is closed as failed with that reason.
    sage.admin.revoke_grants()
    sage.admin.advance_clock(86400)
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "airflow"), "dags", "test", dag_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert time.monotonic() - started < 240, "the refused grant was retried"  # retry_delay is 5 minutes
    name = warehouse.execute("select company_name from sage_control.companies").fetchone()[0]
    assert f"Sage refused the grant for {name}: re-authorise it on the Sage connections page" in output, output[-4000:]
    assert "sage/client.py" not in output  # no chained frames of the client under the line
    status = warehouse.execute("select status from sage_control.companies").fetchone()[0]
    assert status == "needs_reauth"
    last = warehouse.execute(
        "select status, error from sage_control.sync_runs order by started_at desc limit 1"
    ).fetchone()
    assert last[0] == "failed" and last[1].startswith(f"Sage refused the grant for {name}"), last


def _stored_tokens(dsn: str, company: str) -> tuple[str, str]:
    """The company's current token pair, decrypted with the test's Fernet key."""
    stored = PostgresTokenStore(dsn).load(company)
    assert stored is not None
    return stored.access_token, stored.refresh_token


def _assert_no_token_in_task_logs(outputs: list[str], log_folder: Path, token_pairs: list[tuple[str, str]]) -> None:
    """Every task log of the runs (`dags test` output and any log file Airflow wrote) is free of every
    access token, refresh token and Authorization header value the runs held."""
    texts = [*outputs, *(f.read_text(errors="replace") for f in sorted(log_folder.rglob("*")) if f.is_file())]
    everything = "\n".join(texts)
    # The logs really are the task logs (else this test could not fail): our tasks and our code logged.
    assert "sage_sync.pipeline.sync" in everything and "purchase_invoices" in everything, everything[-2000:]
    assert len(set(token_pairs)) >= 2  # the runs rotated the grant: several pairs to look for
    tokens = {t for pair in token_pairs for t in pair}
    assert all(len(t) >= 80 for t in tokens)
    for token in tokens:  # whole, or cut short at either end; and as the Authorization header's value
        for text in (token, token[:40], token[-40:], f"Bearer {token}"):
            assert text not in everything, "a Sage token (or the Authorization header) is in a task log"


def test_disconnected_company_run_is_skipped_with_reason(
    sage: FakeSageServer, env: dict[str, str], warehouse: psycopg.Connection
) -> None:
    company = next(b["id"] for b in sage.admin.businesses() if b["key"] == "northwind")
    _connect_via_cli(sage, env, company)
    warehouse.execute("update sage_control.companies set status = 'disconnected', disconnected_at = now()")
    out = _dag_test(env, f"sage_sync__{company}")
    assert "is disconnected" in out
    assert warehouse.execute("select count(*) from sage_control.sync_runs").fetchone() == (0,)
    assert warehouse.execute("select count(*) from sage_raw.purchase_invoices").fetchone() == (0,)
