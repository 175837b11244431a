"""Connection lifecycle against the fake Sage over HTTP and a real warehouse, in-process.

The CLI refuses bad input before changing anything; disconnect stops imports and revokes the
grant; reconnect imports every change since the last watermark and sweeps for deletions;
a backfill moves Synced From earlier only on success and adds nothing for unchanged records;
reset wipes and re-imports; runs of one company never overlap.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from sage_sync.cli.commands import main
from sage_sync.core.config import warehouse_conn_json
from sage_sync.core.errors import LifecycleError, ReauthorizationRequired
from sage_sync.core.quarters import Quarter
from sage_sync.lifecycle import connections as lifecycle
from sage_sync.pipeline import deletions, sync
from sage_sync.sage.streams import STREAMS
from sandbox.fake_sage.server import FakeSageServer
from tests.lifecycle_kit import DOCUMENTS, business_id, current, deleted, expected, fresh_code, latest

FROM = Quarter.parse("2026-Q1")


def _connect(sage: FakeSageServer, key: str = "greenleaf", quarter: Quarter = FROM) -> str:
    company = business_id(sage, key)
    code, verifier = fresh_code(sage)
    lifecycle.connect(code, verifier, company, quarter)
    return company


def _snapshot(conn: psycopg.Connection) -> tuple:
    return (
        conn.execute("select * from sage_control.companies order by 1").fetchall(),
        conn.execute("select count(*) from sage_control.connection_events").fetchone(),
        conn.execute("select count(*) from sage_control.sync_runs").fetchone(),
        conn.execute("select count(*) from sage_control.oauth_tokens").fetchone(),
    )


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, (result.stderr if result.exit_code else result.stdout).strip()


def _events(conn: psycopg.Connection, company: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "select event_type from sage_control.connection_events where company_id = %s order by event_id", (company,)
        )
    ]


def test_every_command_refuses_bad_input_before_changing_anything(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    company = _connect(sage)
    sync.run_company(company)
    before = _snapshot(warehouse)
    code, verifier = fresh_code(sage)
    cases = [
        (["disconnect", "nope"], "unknown company 'nope'"),
        (["reconnect", "nope", "--code", code], "unknown company 'nope'"),
        (["reconnect", company, "--code", "expired-code"], "Sage refused the authorisation code"),
        (["set-synced-from", company, "2025-q3", "--yes", "--code", code], "malformed quarter"),
        (["set-synced-from", company, "2026-Q1", "--yes", "--code", code], "already syncs from 2026-Q1"),
        (["set-synced-from", company, "2026-Q2", "--yes", "--code", code], "later than the current"),
        (["set-synced-from", company, "2099-Q1", "--yes", "--code", code], "in the future"),
        (["set-synced-from", "nope", "2025-Q1", "--yes", "--code", code], "unknown company"),
        (["set-synced-from", company, "2025-Q1", "--code", code], "confirm with --yes"),
        (["set-synced-from", company, "2025-Q1", "--yes"], "needs a fresh Authorise Access"),
        (["reset", company], "confirm it explicitly"),
        (["reset", "nope", "--yes"], "unknown company"),
        (["connect", "--code", code, "--business-id", company, "--synced-from", "2024-Q5"], "malformed quarter"),
        (["connect", "--code", "stale", "--business-id", company, "--synced-from", "2024-Q1"], "refused"),
    ]
    for args, message in cases:
        exit_code, output = _cli(*args)
        assert exit_code == 2, (args, output)
        assert output.startswith("error: ") and message in output, (args, output)
        assert len(output.splitlines()) == 1, output
    other = business_id(sage, "harbour")  # a business of another Sage user
    exit_code, output = _cli(
        "connect", "--code", code, "--code-verifier", verifier, "--business-id", other, "--synced-from", "2025-Q1"
    )
    assert exit_code == 2 and "not one this user can reach" in output
    assert _snapshot(warehouse) == before
    assert _cli("set-synced-from", company, "2025-Q3", "--check")[0] == 0


def test_disconnect_stops_imports_revokes_and_keeps_data(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    company = _connect(sage)
    sync.run_company(company)
    rows = latest(warehouse, "purchase_invoices", company)
    sage.admin.clear_request_log()
    exit_code, output = _cli("disconnect", company)
    assert exit_code == 0 and "grant revoked at Sage" in output and "data kept" in output
    assert [r["status"] for r in sage.admin.request_log() if r["path"] == "/revoke"] == [200]
    assert warehouse.execute("select count(*) from sage_control.oauth_tokens").fetchone() == (0,)
    assert warehouse.execute("select status from sage_control.companies").fetchone() == ("disconnected",)
    assert lenv["paused"][-1] == (f"sage_sync__{company}", True)
    assert latest(warehouse, "purchase_invoices", company) == rows
    details = warehouse.execute(
        "select details from sage_control.connection_events where event_type = 'disconnected'"
    ).fetchone()[0]
    assert details["token_revoked"] is True and details["synced_from_quarter"] == "2026-Q1"
    with pytest.raises(sync.CompanySkipped, match="is disconnected"):
        sync.begin_run(company)
    assert _cli("disconnect", company) == (2, f"error: {company} is already disconnected")


def test_disconnect_mid_run_skips_the_rest_of_the_run(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    company = _connect(sage)
    run_id = sync.begin_run(company, airflow_run_id="manual__1")
    lifecycle.disconnect(company)
    with pytest.raises(sync.CompanySkipped, match="was disconnected"):
        sync.sync_stream(company, "purchase_invoices", run_id)
    assert warehouse.execute("select status from sage_control.sync_runs").fetchone() == ("skipped",)
    assert warehouse.execute("select status from sage_control.companies").fetchone() == ("disconnected",)


def test_reconnect_imports_everything_since_the_watermark_and_sweeps_deletions(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    company = _connect(sage)
    sync.run_company(company)
    lifecycle.disconnect(company)
    invoices = sorted(expected(sage, "purchase_invoices", company, FROM.start_date))
    sage.admin.advance_clock(5 * 86400)
    sage.admin.update(company, "purchase_invoices", invoices[0], {"vendor_reference": "WHILE-AWAY"})
    sage.admin.delete(company, "purchase_invoices", invoices[1])
    sage.admin.advance_clock(20 * 86400)  # reconnect weeks later
    code, verifier = fresh_code(sage)
    assert _cli("reconnect", company, "--code", code, "--code-verifier", verifier)[0] == 0
    state = warehouse.execute("select status, reconcile_requested from sage_control.companies").fetchone()
    assert state == ("active", True)
    assert lenv["paused"][-1] == (f"sage_sync__{company}", False)
    sync.run_company(company)
    for stream in DOCUMENTS:
        assert current(warehouse, stream, company, FROM.start_date) == expected(
            sage, stream, company, FROM.start_date
        ), stream
    assert latest(warehouse, "purchase_invoices", company)[invoices[0]]["vendor_reference"] == "WHILE-AWAY"
    assert deleted(warehouse, "purchase_invoices", company)[invoices[1]] == "deleted_since"
    assert warehouse.execute(
        "select reconcile_requested, last_reconciled_at is not null from sage_control.companies"
    ).fetchone() == (False, True)
    assert _events(warehouse, company) == ["connected", "initial_sync_completed", "disconnected", "reconnected"]


def test_reconciliation_sweep_finds_deletions_the_feed_forgot(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    company = _connect(sage)
    sync.run_company(company)
    docs = sorted(expected(sage, "other_payments", company, FROM.start_date))
    sage.admin.delete(company, "other_payments", docs[0])
    # A record whose date moved out of the window is not deleted: the GET confirms it exists.
    sage.admin.update(company, "other_payments", docs[1], {"date": "2025-06-30"})
    run_id = sync.begin_run(company)
    sage.admin.clear_request_log()
    with sync.make_client(sync.SyncEnv.from_config(), company) as client:
        from sage_sync.warehouse import registry

        found = deletions.reconcile_deletions(warehouse, client, registry.get_company(warehouse, company), run_id)
    assert found["other_payments"] == 1
    swept = {k for k, v in deleted(warehouse, "other_payments", company).items() if v == "reconciliation"}
    assert swept == {docs[0]}
    # Listing calls carried no attributes and 200 a page.
    lists = [r for r in sage.admin.request_log() if r["path"] == "/v3.1/other_payments"]
    assert lists and all("attributes" not in r["query"] and "items_per_page=200" in r["query"] for r in lists)
    sync.finish_run(company, run_id, status="success")


def test_backfill_moves_synced_from_and_keeps_unchanged_records(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    company = _connect(sage)
    sync.run_company(company)
    first_seen = dict(warehouse.execute("select record_id, _extracted_at from sage_raw.purchase_invoices").fetchall())
    marks = warehouse.execute("select stream, updated_since from sage_control.watermarks order by 1").fetchall()
    code, verifier = fresh_code(sage)
    exit_code, output = _cli(
        "set-synced-from", company, "2025-Q3", "--yes", "--here", "--code", code, "--code-verifier", verifier
    )
    assert exit_code == 0, output
    new_from = date(2025, 7, 1)
    for stream in DOCUMENTS:
        assert current(warehouse, stream, company, new_from) == expected(sage, stream, company, new_from), stream
    after = warehouse.execute(
        "select record_id, count(*), min(_extracted_at) from sage_raw.purchase_invoices group by 1"
    ).fetchall()
    assert all(n == 1 for _, n, _ in after)  # nothing duplicated
    assert all(first_seen[r] == seen for r, _, seen in after if r in first_seen)  # same first-seen time
    assert warehouse.execute("select stream, updated_since from sage_control.watermarks order by 1").fetchall() == marks
    assert warehouse.execute("select synced_from_quarter from sage_control.companies").fetchone() == ("2025-Q3",)
    moved = warehouse.execute(
        "select details from sage_control.connection_events where event_type = 'synced_from_moved'"
    ).fetchone()[0]
    assert (moved["previous_synced_from_quarter"], moved["synced_from_quarter"]) == ("2026-Q1", "2025-Q3")
    assert warehouse.execute("select kind, status from sage_control.sync_runs order by started_at").fetchall() == [
        ("manual", "success"),
        ("backfill", "success"),
    ]


def test_failed_backfill_leaves_synced_from_and_can_be_rerun(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sage_sync.sage.client.time.sleep", lambda _s: None)
    company = _connect(sage)
    sync.run_company(company)
    sage.admin.add_fault("500", path="/other_payments", count=20)
    with pytest.raises(Exception, match="500"):
        sync.run_backfill(company, "2025-Q3")
    assert warehouse.execute("select synced_from_quarter from sage_control.companies").fetchone() == ("2026-Q1",)
    sage.admin.clear_faults()
    sync.run_backfill(company, "2025-Q3")
    assert warehouse.execute("select synced_from_quarter from sage_control.companies").fetchone() == ("2025-Q3",)


def test_runs_of_one_company_never_overlap(sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection) -> None:
    company = _connect(sage)
    daily = sync.begin_run(company, airflow_run_id="scheduled__1", kind="daily")
    with pytest.raises(sync.RunInProgress, match=r"daily run .* is still running"):
        sync.begin_run(company, airflow_run_id="manual__b", kind="backfill")
    assert sync.begin_run(company, airflow_run_id="scheduled__1", kind="daily") == daily  # a retry re-opens
    with pytest.raises(LifecycleError, match="still running"):
        lifecycle.reset(company, confirm=True)
    # A run whose process died (no progress for hours) is taken over.
    warehouse.execute(
        "update sage_control.sync_runs set started_at = now() - interval '7 hours', "
        "last_progress_at = now() - interval '7 hours'"
    )
    backfill = sync.begin_run(company, airflow_run_id="manual__b", kind="backfill")
    rows = dict(warehouse.execute("select sync_run_id, status from sage_control.sync_runs").fetchall())
    assert rows == {daily: "failed", backfill: "running"}
    other = _connect(sage, "northwind")
    sync.begin_run(other, kind="daily")  # another company is not held up


def test_reset_wipes_and_reimports(sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection) -> None:
    company = _connect(sage)
    other = _connect(sage, "northwind")
    sync.run_company(company)
    sync.run_company(other)
    other_rows = warehouse.execute(
        "select count(*) from sage_raw.purchase_invoices where company_id = %s", (other,)
    ).fetchone()
    warehouse.execute(
        "insert into sage_raw.purchase_invoices (company_id, record_id, payload, content_hash, "
        "_sync_run_id) values (%s, 'bogus', '{\"date\": \"2026-02-01\"}', 'x', 'x')",
        (company,),
    )
    exit_code, output = _cli("reset", company, "--yes")
    assert exit_code == 0, output
    for stream in DOCUMENTS:
        assert current(warehouse, stream, company, FROM.start_date) == expected(
            sage, stream, company, FROM.start_date
        ), stream
    assert "bogus" not in latest(warehouse, "purchase_invoices", company)
    dupes = warehouse.execute(
        "select count(*) - count(distinct record_id) from sage_raw.purchase_invoices where company_id = %s", (company,)
    ).fetchone()
    assert dupes == (0,)
    assert (
        warehouse.execute("select count(*) from sage_raw.purchase_invoices where company_id = %s", (other,)).fetchone()
        == other_rows
    )
    assert warehouse.execute(
        "select status from sage_control.companies where company_id = %s", (company,)
    ).fetchone() == ("active",)
    assert _events(warehouse, company)[-2:] == ["reset", "initial_sync_completed"]
    exit_code, _ = _cli("reset", company, "--yes", "--no-sync")
    assert exit_code == 0
    assert warehouse.execute(
        "select count(*) from sage_raw.purchase_invoices where company_id = %s", (company,)
    ).fetchone() == (0,)
    assert warehouse.execute(
        "select count(*) from sage_control.watermarks where company_id = %s", (company,)
    ).fetchone() == (0,)


def test_expired_refresh_token_needs_reauth_and_status_tells(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    company = _connect(sage)
    warehouse.execute("update sage_control.companies set created_at = now() - interval '25 hours'")
    report = {r["company_id"]: r for r in json.loads(_cli("status", "--json")[1])}
    assert report[company]["status"] == "initial_sync"
    assert report[company]["initial_sync"]["overdue"] is False  # no run started yet
    run_id = sync.begin_run(company)
    sync.sync_stream(company, "purchase_invoices", run_id)
    warehouse.execute("update sage_control.sync_runs set started_at = now() - interval '25 hours'")
    report = {r["company_id"]: r for r in json.loads(_cli("status", "--json")[1])}
    initial, last = report[company]["initial_sync"], report[company]["last_run"]
    assert initial["overdue"] is True and initial["elapsed_seconds"] >= 25 * 3600
    assert last["pages"] >= 1 and last["records"] > 0 and last["total_reported"] == last["records"]
    assert "NOT COMPLETE AFTER 24 HOURS" in _cli("status")[1]
    sync.finish_run(company, run_id, status="failed", error="x")
    warehouse.execute("update sage_control.oauth_tokens set refresh_expires_at = now() - interval '1 day'")
    with pytest.raises(ReauthorizationRequired, match="unused for 31 days"):
        sync.check_auth(company, "r")
    assert warehouse.execute("select status from sage_control.companies").fetchone() == ("needs_reauth",)
    # One wording for people (issue 24); the enum value in machine output only.
    assert "needs re-authorisation" in _cli("status")[1]
    assert '"status": "needs_reauth"' in _cli("status", "--json")[1]
    assert set(STREAMS) >= set(DOCUMENTS)


# -- the CLI as a new user meets it -------------------------------------------------------------------


def _pending_id(output: str) -> str:
    match = re.search(r"--pending (\S+)", output)
    assert match, output
    return match.group(1)


def test_a_wrong_business_id_does_not_burn_the_code(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    mine, other = business_id(sage, "greenleaf"), business_id(sage, "harbour")
    code, verifier = fresh_code(sage)
    exit_code, output = _cli(
        "connect", "--code", code, "--code-verifier", verifier, "--business-id", other, "--synced-from", "2026-Q1"
    )
    assert exit_code == 2 and len(output.splitlines()) == 1, output
    assert f"business {other!r} is not one this user can reach" in output and mine in output  # the valid ids
    pending = _pending_id(output)
    assert warehouse.execute("select count(*) from sage_control.companies").fetchone()[0] == 0
    # The follow-up lists the businesses of the grant already exchanged...
    exit_code, listed = _cli("businesses", "--pending", pending)
    assert exit_code == 0 and mine in listed and other not in listed
    # ...and the pick connects with it: no second code needed.
    exit_code, output = _cli("connect", "--pending", pending, "--business-id", mine, "--synced-from", "2026-Q1")
    assert exit_code == 0 and output.startswith("connected ") and f"({mine})" in output, output
    status = warehouse.execute("select status from sage_control.companies where company_id = %s", (mine,)).fetchone()[0]
    assert status == "initial_sync"
    assert warehouse.execute("select count(*) from sage_control.oauth_tokens").fetchone()[0] == 1
    # A held grant serves once.
    exit_code, output = _cli("connect", "--pending", pending, "--business-id", mine, "--synced-from", "2026-Q1")
    assert exit_code == 2 and "expired (15 minutes) or was used" in output


def test_connect_without_a_business_id_lists_the_businesses(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection
) -> None:
    mine = business_id(sage, "greenleaf")
    code, verifier = fresh_code(sage)
    exit_code, output = _cli("connect", "--code", code, "--code-verifier", verifier, "--synced-from", "2026-Q1")
    assert exit_code == 0 and mine in output
    pending = _pending_id(output)
    assert _cli("connect", "--pending", pending, "--business-id", mine, "--synced-from", "2026-Q1")[0] == 0


def test_connect_accepts_a_url_encoded_code(sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection) -> None:
    mine = business_id(sage, "greenleaf")
    code, verifier = fresh_code(sage)
    encoded = "".join(f"%{byte:02X}" for byte in code.encode())  # as pasted from the callback URL
    exit_code, output = _cli(
        "connect", "--code", encoded, "--code-verifier", verifier, "--business-id", mine, "--synced-from", "2026-Q1"
    )
    assert exit_code == 0, output
    assert warehouse.execute("select count(*) from sage_control.companies").fetchone()[0] == 1


def test_connect_help_points_only_to_commands_that_exist() -> None:
    exit_code = CliRunner().invoke(main, ["connect", "--help"])
    assert exit_code.exit_code == 0
    named = set(re.findall(r"`(?:python -m sage_sync )?([a-z-]+)", exit_code.output))
    assert "businesses" in named
    assert named <= set(main.commands), named - set(main.commands)


def test_the_cli_runs_from_a_fresh_shell(pg_dsn: str, warehouse: psycopg.Connection, tmp_path: Path) -> None:
    """`python -m sage_sync` with none of the settings in the environment: the checkout's env file."""
    conn = warehouse_conn_json(pg_dsn)
    env_file = tmp_path / "env.sh"
    env_file.write_text(f"export AIRFLOW_CONN_SAGE_WAREHOUSE={shlex.quote(conn)}\n")
    fresh = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SAGE_ENV_FILE": str(env_file)}
    # The venv's python finds the package itself (no PYTHONPATH), from any folder.
    done = subprocess.run(
        [sys.executable, "-m", "sage_sync", "status"],
        env=fresh,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "no company connected yet" in done.stdout


def test_the_env_file_fills_in_only_what_is_missing(tmp_path: Path) -> None:
    from sage_sync.cli.localenv import load_missing

    env_file = tmp_path / "env.sh"
    env_file.write_text("export A=from-file\nexport B='two words'\n# export C=commented\nD=not-exported\n")
    environ = {"A": "set-by-user"}
    assert load_missing(environ, env_file) == ["B"]
    assert environ == {"A": "set-by-user", "B": "two words"}
    assert load_missing({}, tmp_path / "missing.sh") == []


def test_set_synced_from_checks_for_airflow_before_it_spends_the_code(
    sage: FakeSageServer, lenv: dict, warehouse: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an api-server the trigger failed after the one-time code was spent, and the advice
    ("run again with --here") then needed a new one. Airflow is checked first; the code still works."""
    from sandbox.fake_sage.server import free_port

    monkeypatch.setenv("SAGE_AIRFLOW_API_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    company = _connect(sage)
    sync.run_company(company)
    code, verifier = fresh_code(sage)
    exit_code, output = _cli(
        "set-synced-from", company, "2025-Q3", "--yes", "--code", code, "--code-verifier", verifier
    )
    assert exit_code == 2 and "the code is unused" in output and "--here" in output, output
    assert not [e for e in _events(warehouse, company) if e == "backfill_requested"]
    exit_code, output = _cli(
        "set-synced-from", company, "2025-Q3", "--yes", "--here", "--code", code, "--code-verifier", verifier
    )
    assert exit_code == 0, output  # the same code: it was never exchanged
    assert warehouse.execute("select synced_from_quarter from sage_control.companies").fetchone() == ("2025-Q3",)
