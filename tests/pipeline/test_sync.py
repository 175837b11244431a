"""A company's whole sync against the fake Sage over HTTP, into a real PostgreSQL.

The warehouse must end up holding exactly what Sage holds (within Synced From), re-runs must
add nothing, edits add one version, deletions are recorded, and a dead grant turns into the
`needs_reauth` status a user can act on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date

import psycopg
import pytest

from sage_sync.core import config
from sage_sync.core.config import sage_settings, warehouse_conn_json
from sage_sync.core.errors import ReauthorizationRequired
from sage_sync.core.lanes import Lane
from sage_sync.core.quarters import Quarter
from sage_sync.pipeline import sync
from sage_sync.sage.auth import OAuthClient, new_pkce_pair
from sage_sync.warehouse import ratelimit
from sage_sync.warehouse.token_store import PostgresTokenStore
from sandbox.fake_sage.server import FakeSageServer
from tests.helpers import connect_company

DOCUMENTS = ["purchase_invoices", "purchase_credit_notes", "purchase_quick_entries", "other_payments"]
SYNCED_FROM = Quarter.parse("2024-Q1")


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=7) as server:
        yield server


@pytest.fixture
def company(
    sage: FakeSageServer, warehouse: psycopg.Connection, pg_dsn: str, fernet_key: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The first demo business, connected through the real code exchange."""
    sage.admin.reset()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SAGE_WAREHOUSE",
        warehouse_conn_json(pg_dsn),
    )
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_DEFAULT", sage.airflow_conn_json())
    business = sage.admin.businesses()[0]
    verifier, challenge = new_pkce_pair()
    code = sage.authorize(code_challenge=challenge)
    tokens = OAuthClient(sage_settings()).exchange_code(code, code_verifier=verifier)
    connect_company(business["id"], business["name"], SYNCED_FROM, tokens)
    return business["id"]


def _in_window(record: dict) -> bool:
    return date.fromisoformat(record["date"]) >= SYNCED_FROM.start_date


def _latest(conn: psycopg.Connection, stream: str, company_id: str) -> dict[str, dict]:
    rows = conn.execute(
        f"select distinct on (record_id) record_id, payload from sage_raw.{stream} "
        "where company_id = %s order by record_id, _extracted_at desc",
        (company_id,),
    ).fetchall()
    return dict(rows)


def _deleted(conn: psycopg.Connection, stream: str, company_id: str) -> set[str]:
    rows = conn.execute(
        "select record_id from sage_raw.deletions where company_id = %s and stream = %s", (company_id, stream)
    ).fetchall()
    return {r[0] for r in rows}


def _versions(conn: psycopg.Connection) -> int:
    return sum(
        conn.execute(f"select count(*) from sage_raw.{s}").fetchone()[0]
        for s in [*DOCUMENTS, "contacts", "ledger_accounts", "tax_rates", "businesses", "financial_settings"]
    )


def test_first_sync_lands_what_sage_holds(sage: FakeSageServer, company: str, warehouse: psycopg.Connection) -> None:
    run_id = sync.run_company(company)
    for stream in DOCUMENTS:
        expected = {r["id"]: r for r in sage.admin.records(company, stream) if _in_window(r)}
        landed = _latest(warehouse, stream, company)
        assert set(landed) == set(expected), stream
        assert landed == expected, stream  # the payload is kept exactly as Sage sent it
    ledger = {r["id"] for r in sage.admin.records(company, "ledger_accounts")}
    assert set(_latest(warehouse, "ledger_accounts", company)) == ledger
    status, stats = warehouse.execute(
        "select status, stats from sage_control.sync_runs where sync_run_id = %s", (run_id,)
    ).fetchone()
    assert status == "success"
    landed = _latest(warehouse, "purchase_invoices", company)
    assert stats["purchase_invoices"]["versions_added"] == len(landed)
    assert stats["purchase_invoices"]["pages"] >= 1
    assert warehouse.execute("select status from sage_control.companies").fetchone() == ("active",)
    requests_made = sage.admin.request_log()
    api_calls = [r for r in requests_made if r["path"].startswith("/v3.1/")]
    # One call lists the grant's businesses (no X-Business: it asks for them all) to check the
    # company's is still among them; every other call names the company's business.
    listing = [r for r in api_calls if r["path"] == "/v3.1/businesses"]
    assert [r["x_business"] for r in listing] == [None]
    assert api_calls and all(r["x_business"] == company for r in api_calls if r not in listing)


def test_each_page_logs_its_progress_and_the_task_returns_the_total(
    sage: FakeSageServer,
    company: str,
    warehouse: psycopg.Connection,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small pages, so a stream takes several requests and several progress lines, as a first
    # sync of thousands of pages does.
    from sage_sync.pipeline import extract

    params = extract.list_params
    monkeypatch.setattr(extract, "list_params", lambda *a, **kw: params(*a, **kw, page_size=5))
    run_id = sync.begin_run(company)
    sync.check_auth(company, run_id)
    caplog.set_level("INFO", logger="sage_sync.pipeline.extract")
    result = sync.sync_stream(company, "purchase_invoices", run_id)
    expected = len([r for r in sage.admin.records(company, "purchase_invoices") if _in_window(r)])
    assert result["total_reported"] == expected  # Sage's $total is in the task's return value
    lines = [r.getMessage() for r in caplog.records if r.name == "sage_sync.pipeline.extract"]
    assert len(lines) == result["pages"] >= 2
    last = lines[-1]
    assert last.startswith(
        f"purchase_invoices: page {result['pages']}, {result['rows_seen']:,} records of {expected:,} ($total) (100%), "
    )
    assert "records/s" in last and "ETA 0s" in last
    assert all("ETA" in line and "($total)" in line for line in lines)


def test_a_daily_read_counts_the_whole_window_at_sage(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection
) -> None:
    first = sync.run_company(company)
    sage.admin.advance_clock(86400)
    second = sync.run_company(company)
    stats = dict(warehouse.execute("select sync_run_id, stats from sage_control.sync_runs").fetchall())
    for stream in DOCUMENTS:
        assert "window_total" not in stats[first][stream]  # a full read: its $total is the window's
        expected = len([r for r in sage.admin.records(company, stream) if _in_window(r)])
        assert stats[second][stream]["window_total"] == expected, stream
    assert "window_total" not in stats[second]["tax_rates"]  # read in full every day


def test_progress_line_reads_as_a_person_would_want() -> None:
    from sage_sync.pipeline.extract import empty_totals, progress_line

    totals = {**empty_totals(), "pages": 10, "rows_seen": 2000, "total_reported": 200_000}
    assert progress_line("purchase_invoices", totals, elapsed=20.0) == (
        "purchase_invoices: page 10, 2,000 records of 200,000 ($total) (1%), 100 records/s, ETA 33m00s"
    )
    no_total = {**empty_totals(), "pages": 1, "rows_seen": 3}
    assert progress_line("tax_rates", no_total, elapsed=1.0) == "tax_rates: page 1, 3 records, 3 records/s"


def test_rerun_adds_nothing_and_edits_add_one_version(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection
) -> None:
    sync.run_company(company)
    before = _versions(warehouse)
    sync.run_company(company)
    assert _versions(warehouse) == before  # unchanged records add no version

    invoices = [r for r in sage.admin.records(company, "purchase_invoices") if _in_window(r)]
    edited, removed = invoices[0], invoices[1]
    sage.admin.advance_clock(3600)
    sage.admin.update(company, "purchase_invoices", edited["id"], {"vendor_reference": "EDITED-1"})
    sage.admin.delete(company, "purchase_invoices", removed["id"])
    created = sage.admin.create(
        company,
        "other_payments",
        {
            "transaction_type": {"id": "OTHER_PAYMENT"},
            "date": sage.admin.now()[:10],
            "reference": "NEW-1",
            "payment_lines": [
                {
                    "ledger_account": {"id": sage.admin.records(company, "ledger_accounts")[0]["id"]},
                    "net_amount": "10.00",
                    "tax_amount": "2.00",
                    "total_amount": "12.00",
                    "tax_rate": {"id": "GB_STANDARD"},
                    "details": "New payment",
                }
            ],
            "net_amount": "10.00",
            "tax_amount": "2.00",
            "total_amount": "12.00",
        },
    )
    sage.admin.advance_clock(60)
    sync.run_company(company)

    assert _versions(warehouse) == before + 2  # the edit and the new payment, nothing else
    assert _latest(warehouse, "purchase_invoices", company)[edited["id"]]["vendor_reference"] == "EDITED-1"
    assert removed["id"] in _deleted(warehouse, "purchase_invoices", company)
    assert created["id"] in _latest(warehouse, "other_payments", company)


def test_tokens_rotate_and_are_stored_encrypted(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection, pg_dsn: str
) -> None:
    store = PostgresTokenStore(pg_dsn)
    first = store.load(company)
    sage.admin.advance_clock(3600)  # the access token has expired
    sync.run_company(company)
    second = store.load(company)
    assert second.refresh_token != first.refresh_token
    stored = warehouse.execute("select access_token_enc, refresh_token_enc from sage_control.oauth_tokens").fetchone()
    assert second.refresh_token not in stored[1] and second.access_token not in stored[0]


def test_revoked_grant_marks_company_needs_reauth(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection
) -> None:
    sage.admin.revoke_grants()
    with pytest.raises(ReauthorizationRequired):
        sync.run_company(company)
    state = warehouse.execute("select status from sage_control.companies").fetchone()[0]
    assert state == "needs_reauth"
    events = [r[0] for r in warehouse.execute("select event_type from sage_control.connection_events")]
    assert "needs_reauth" in events
    with pytest.raises(ReauthorizationRequired, match="re-authorisation"):
        sync.begin_run(company)


def test_a_refused_grant_fails_the_task_at_once_with_one_line(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from sage_sync.orchestration.tasks import skips_disconnected

    name = warehouse.execute("select company_name from sage_control.companies").fetchone()[0]
    run_id = sync.begin_run(company, airflow_run_id="scheduled__2026-01-01")
    warehouse.commit()
    sage.admin.revoke_grants()
    with pytest.raises(AirflowFailException) as failed:  # Airflow does not retry this one
        skips_disconnected(sync.sync_stream)(company, "purchase_invoices", run_id)
    message = str(failed.value)
    assert message.startswith(
        f"Sage refused the grant for {name}: re-authorise it on the Sage connections "
        f"page or with `python -m sage_sync reconnect {company} --code ...`"
    )
    assert "\n" not in message
    # No chained client traceback under it: the task log shows the line, not 20 frames of the client.
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    status, last_error = warehouse.execute("select status, last_error from sage_control.companies").fetchone()
    assert (status, last_error) == ("needs_reauth", message)  # marked at once, in the same words
    # The run is closed with the reason at once: not "running: 0 pages" until someone looks.
    run = warehouse.execute(
        "select status, error, ended_at from sage_control.sync_runs where sync_run_id = %s", (run_id,)
    ).fetchone()
    assert run[0] == "failed" and run[1] == message and run[2] is not None
    # The DAG's catch-all close afterwards keeps that reason.
    sync.finish_run(company, run_id, status="failed", error="a task of this run failed; see its log in Airflow")
    warehouse.commit()
    assert (
        warehouse.execute("select error from sage_control.sync_runs where sync_run_id = %s", (run_id,)).fetchone()[0]
        == message
    )
    # The next run's first task fails the same way, without opening a run.
    with pytest.raises(AirflowFailException, match="needs re-authorisation"):
        skips_disconnected(sync.begin_run)(company)


def test_transient_errors_keep_their_retries(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sage_sync.core.errors import TransientError
    from sage_sync.orchestration.tasks import skips_disconnected

    monkeypatch.setattr("sage_sync.sage.client.time.sleep", lambda _s: None)
    run_id = sync.begin_run(company)
    sage.admin.add_fault("503", path="/purchase_invoices", count=50)
    with pytest.raises(TransientError):  # a plain failure: the task's retries apply
        skips_disconnected(sync.sync_stream)(company, "purchase_invoices", run_id)
    assert warehouse.execute("select status from sage_control.companies").fetchone()[0] != "needs_reauth"
    sage.admin.clear_faults()


def test_rate_limits_and_server_errors_are_absorbed(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sage_sync.sage.client.time.sleep", lambda _s: None)
    sage.admin.add_fault("429", path="/purchase_invoices", count=2, retry_after=1)
    sage.admin.add_fault("429", path="/other_payments", count=1)
    sage.admin.add_fault("503", path="/purchase_credit_notes", count=2)
    sage.admin.add_fault("truncate", path="/purchase_quick_entries", count=1)
    sync.run_company(company)
    for stream in DOCUMENTS:
        expected = {r["id"] for r in sage.admin.records(company, stream) if _in_window(r)}
        assert set(_latest(warehouse, stream, company)) == expected, stream


# -- the shared request budget (sage_sync.warehouse.ratelimit) -------------------------------------------------


def _api_requests(sage: FakeSageServer) -> int:
    return sum(1 for r in sage.admin.request_log() if r["path"].startswith("/v3.1/"))


def _bucket(conn: psycopg.Connection, name: str = "sage_api") -> tuple[float, float, float] | None:
    conn.commit()
    return conn.execute(
        "select tokens, capacity, rate from sage_control.api_rate_buckets where name = %s", (name,)
    ).fetchone()


def test_every_request_of_a_sync_draws_from_its_lanes_bucket(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first sync (a full read) takes every token from the history lane's bucket, at its share of
    the rate; the next run, a daily one, from the daily lane's (core.lanes)."""
    total, share = 4.0, 0.5
    rate = total * share
    monkeypatch.setenv("SAGE_RATE_LIMIT_PER_S", str(total))
    monkeypatch.setenv("SAGE_HISTORY_RATE_SHARE", str(share))
    waits: list[float] = []  # the client's sleep hook: with no faults, only waits for the budget
    monkeypatch.setattr("sage_sync.sage.client._sleep", waits.append)
    env = sync.SyncEnv.from_config()
    limiter = sync.make_client(env, company, lane=Lane.HISTORY).limiter
    assert isinstance(limiter, ratelimit.PostgresRateLimiter) and (limiter.name, limiter.rate) == ("sage_history", rate)
    assert sync.make_client(env, company, lane=Lane.HISTORY).limiter is limiter  # one per process, warehouse, lane
    daily = sync.make_client(env, company).limiter
    assert isinstance(daily, ratelimit.PostgresRateLimiter) and (daily.name, daily.rate) == ("sage_api", total - rate)
    granted, daily_granted = limiter.granted, daily.granted
    # Other workers' first syncs have just spent the whole history share: every request of this
    # first sync must wait its turn (and may not borrow from the daily lane).
    warehouse.execute(
        "insert into sage_control.api_rate_buckets (name, tokens, capacity, rate) values ('sage_history', 0, 15, %s)",
        (rate,),
    )
    warehouse.commit()
    started = time.monotonic()
    sync.run_company(company)
    elapsed = time.monotonic() - started
    made = _api_requests(sage)
    assert made >= 10
    assert limiter.granted - granted == made  # one token per request, retries included
    assert daily.granted == daily_granted  # none from the daily lane
    # n requests at `rate` a second from an empty bucket take n / rate seconds: what the run did not
    # spend really working, it was told to wait (the last request's wait is the whole schedule).
    assert max(waits, default=0) >= made / rate - elapsed - 0.05
    assert max(waits, default=0) <= made / rate + 0.05
    tokens, _capacity, bucket_rate = _bucket(warehouse, "sage_history")  # type: ignore[misc]
    assert bucket_rate == rate
    assert tokens <= -made + rate * elapsed + 0.05  # the shared balance owes what the run took

    sage.admin.clear_request_log()
    sync.run_company(company)  # the first sync succeeded: this one is daily
    assert daily.granted - daily_granted == _api_requests(sage) > 0
    assert limiter.granted - granted == made


def test_the_budget_is_on_by_default(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAGE_RATE_LIMIT_PER_S", raising=False)
    started = time.monotonic()
    sync.run_company(company)  # a first sync: the history lane, a third of the default 12 a second
    elapsed = time.monotonic() - started
    tokens, capacity, rate = _bucket(warehouse, "sage_history")  # type: ignore[misc]
    assert config.DEFAULT_RATE_LIMIT_PER_S == 12.0 and rate == pytest.approx(12.0 / 3)
    assert tokens <= capacity - _api_requests(sage) + rate * elapsed  # drawn from, refilling meanwhile


@pytest.mark.parametrize("off", ["0", "off"])
def test_the_budget_can_be_turned_off(
    sage: FakeSageServer, company: str, warehouse: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, off: str
) -> None:
    monkeypatch.setenv("SAGE_RATE_LIMIT_PER_S", off)
    assert sync.make_client(sync.SyncEnv.from_config(), company).limiter is None
    sync.run_company(company)
    assert _api_requests(sage) > 0
    assert _bucket(warehouse) is None and _bucket(warehouse, "sage_history") is None  # nobody took a token
