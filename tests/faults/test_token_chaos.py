"""Token chaos: several processes run the real sync while grants are pushed around, and no live grant dies.

Against one fake Sage whose clock follows the wall clock and whose access tokens live 5 seconds:

* sync processes run ``sync.run_company`` for random companies, back to back, and their
  warehouse connections are refused at random moments;
* the token endpoint's answers are dropped (the connection closed before Sage acts), delayed,
  or turned into 500/503 at random;
* another process reconnects companies (a new grant, then the replaced one revoked at Sage)
  and resets them, racing the runs;
* one Sage user's grant is really revoked half way through.

It passes when no company whose stored grant the fake still honours ends ``needs_reauth``, every
``needs_reauth`` ever set (even one a later reconnect healed) names a grant the fake really
revoked, and no stored refresh token was rotated away (a lost pair). Bounded for ``make test``
(about 40 s of chaos, a minute in all); ``SOAK=1`` runs it for 10 minutes.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from faults.kit import connect
from sage_sync.core.config import sage_settings
from sage_sync.core.errors import SageError
from sage_sync.lifecycle import connections as lifecycle
from sage_sync.orchestration import airflow_api
from sage_sync.pipeline import sync
from sage_sync.sage.auth import OAuthClient, new_pkce_pair
from sage_sync.warehouse import db
from sage_sync.warehouse.token_store import PostgresTokenStore
from sandbox.fake_sage.server import FakeSageServer

SOAK = os.environ.get("SOAK") == "1"
CHAOS_SECONDS = 600 if SOAK else 40
SYNC_PROCESSES = 3 if SOAK else 2
REFUSED_CONNECTIONS = 0.01  # share of new warehouse connections refused in the chaos processes
DEMO = ("greenleaf", "northwind", "atlantic")  # one Sage user; reconnected and reset while runs go on
REVOKED = "harbour"  # another user, whose grant is revoked at Sage half way through
USERS = {"greenleaf": "demo@example.com", "northwind": "demo@example.com", "atlantic": "demo@example.com"}


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    """A fake of its own: 5-second tokens and a clock that moves, so tokens really expire mid-run."""
    with FakeSageServer(seed=23, token_ttl=5) as server:
        yield server


def _refuse_some_connections(seed: int) -> None:
    """In this process, refuse a share of new warehouse connections, as a restart or max_connections would."""
    chance = random.Random(seed)
    real_connect = db.connect

    def flaky_connect(*args: Any, **kwargs: Any) -> psycopg.Connection:
        if chance.random() < REFUSED_CONNECTIONS:
            raise psycopg.OperationalError("chaos: connection refused")
        return real_connect(*args, **kwargs)

    db.connect = flaky_connect  # type: ignore[assignment]


def _sync_worker(seed: int, companies: list[str], deadline: float, outcomes: Any) -> None:
    _refuse_some_connections(seed)
    pick = random.Random(seed)
    while time.time() < deadline:
        company = pick.choice(companies)
        try:
            sync.run_company(company)
            outcomes.put(("sync", "success"))
        except Exception as exc:  # noqa: BLE001 - every failure is counted; the statuses are judged at the end
            outcomes.put(("sync", type(exc).__name__))
            time.sleep(pick.uniform(0.2, 1.0))  # as a task's retry would wait, not at once


def _grant_worker(seed: int, companies: dict[str, str], sage: FakeSageServer, deadline: float, outcomes: Any) -> None:
    """Reconnect (then revoke the replaced grant at Sage, as a careful operator would) and reset."""
    _refuse_some_connections(seed)
    pick = random.Random(seed)
    oauth = OAuthClient(sage_settings())
    store = PostgresTokenStore(db_dsn())
    while time.time() < deadline:
        time.sleep(pick.uniform(0.5, 2.0))
        company = pick.choice(list(companies))
        try:
            if pick.random() < 0.7:
                old = store.load(company)
                verifier, challenge = new_pkce_pair()
                code = sage.authorize(login_hint=companies[company], code_challenge=challenge)
                lifecycle.reconnect(company, code, verifier)
                if old is not None:
                    oauth.revoke(old.refresh_token)  # a no-op at Sage if a refresh already rotated it
                outcomes.put(("reconnect", "success"))
            else:
                lifecycle.close_reset_run(lifecycle.reset(company, confirm=True))
                outcomes.put(("reset", "success"))
        except Exception as exc:  # noqa: BLE001 - counted; a refused reset (a run in progress) is expected
            outcomes.put(("grant", type(exc).__name__))


def db_dsn() -> str:
    from sage_sync.core.config import warehouse_dsn

    return warehouse_dsn()


def _token_faults(sage: FakeSageServer, deadline: float, revoke_at: float, revoked: threading.Event) -> None:
    """Drop, delay or fail token-endpoint answers at random; revoke one user's grants half way."""
    pick = random.Random(7)
    while time.time() < deadline:
        kind = pick.choice(["drop", "slow", "slow", "500", "503"])
        sage.admin.add_fault(kind, path="/token", count=1, delay_ms=pick.randint(100, 1500) if kind == "slow" else None)
        if not revoked.is_set() and time.time() >= revoke_at:
            sage.admin.revoke_grants("other@example.com")
            revoked.set()
        time.sleep(pick.uniform(0.2, 1.0))


def _judge(sage: FakeSageServer, conn: psycopg.Connection, dsn: str) -> dict[str, tuple[str, str]]:
    """``{company: (status, state of its stored refresh token at the fake)}``, checked against the rules."""
    conn.commit()
    store = PostgresTokenStore(dsn)
    seen: dict[str, tuple[str, str]] = {}
    for company, status in conn.execute("select company_id, status from sage_control.companies").fetchall():
        tokens = store.load(company)
        state = sage.admin.token_state(tokens.refresh_token) if tokens else "none"
        seen[company] = (status, state)
    for company, (status, state) in seen.items():
        assert state != "spent", f"{company}: the store holds a rotated-away refresh token (a lost pair): {seen}"
        if state == "live":
            assert status != "needs_reauth", f"{company} holds a live grant but ends needs_reauth: {seen}"
        if status == "needs_reauth":
            assert state == "revoked", f"{company} is needs_reauth but the fake never revoked its grant: {seen}"
    return seen


def _judge_marks(sage: FakeSageServer, conn: psycopg.Connection, revoked_company: str) -> int:
    """Every ``needs_reauth`` ever set names a refused grant the fake really revoked (a wrong mark
    costs the company its figures until someone reconnects it, even if a reconnect healed it later)."""
    conn.commit()
    marks = conn.execute(
        "select company_id, details ->> 'refused' from sage_control.connection_events where event_type = 'needs_reauth'"
    ).fetchall()
    for company, refused in marks:
        state = sage.admin.token_state(fingerprint=refused) if refused else None
        justified = state == "revoked" if refused else company == revoked_company
        assert justified, f"{company} was marked needs_reauth for a grant the fake did not revoke ({state}): {marks}"
    return len(marks)


def test_token_chaos_never_kills_a_live_grant(
    sage: FakeSageServer, env: psycopg.Connection, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(airflow_api, "set_dag_paused", lambda dag_id, *, paused, caller=None: True)
    # Real waits here (the fixture ``sleeps`` records them instead): the processes back off as in production.
    monkeypatch.setattr("sage_sync.sage.client._sleep", time.sleep)
    monkeypatch.setattr("sage_sync.sage.auth._sleep", time.sleep)
    monkeypatch.setenv("SAGE_TOKEN_SAVE_RETRY_SECONDS", "120")
    companies = {key: connect(sage, key) for key in (*DEMO, REVOKED)}
    sage.admin.run_clock(True)
    demo = {companies[key]: USERS[key] for key in DEMO}

    context = multiprocessing.get_context("fork")
    outcomes = context.Queue()
    start = time.time()
    deadline = start + CHAOS_SECONDS
    workers = [
        context.Process(target=_sync_worker, args=(seed, list(companies.values()), deadline, outcomes))
        for seed in range(SYNC_PROCESSES)
    ]
    workers.append(context.Process(target=_grant_worker, args=(99, demo, sage, deadline, outcomes)))
    for worker in workers:
        worker.start()
    revoked = threading.Event()
    try:
        _token_faults(sage, deadline, start + CHAOS_SECONDS / 2, revoked)
    finally:
        for worker in workers:
            worker.join(300)
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    counts: Counter[tuple[str, str]] = Counter()
    while True:
        try:
            counts[outcomes.get_nowait()] += 1
        except queue.Empty:
            break
    assert all(w.exitcode == 0 for w in workers), f"a chaos process crashed: {[w.exitcode for w in workers]}"
    assert revoked.is_set()
    _judge(sage, env, pg_dsn)
    _judge_marks(sage, env, companies[REVOKED])
    assert counts["sync", "success"] >= 2 and counts["reconnect", "success"] >= 1, counts

    # Calm again: one clean run each. The revoked user's company ends needs_reauth, every other one syncs.
    sage.admin.clear_faults()
    # A run whose closing write was refused by the chaos stays 'running' until a later run takes it
    # over once it shows no progress; every chaos process has ended, so close them now.
    env.execute("update sage_control.sync_runs set status = 'failed', ended_at = now() where status = 'running'")
    env.commit()
    for key, company in companies.items():
        try:
            sync.run_company(company)
        except SageError:
            assert key == REVOKED, f"{key} failed its clean run after the chaos"
    seen = _judge(sage, env, pg_dsn)
    _judge_marks(sage, env, companies[REVOKED])
    print(f"token chaos: {CHAOS_SECONDS} s, outcomes {dict(counts)}, end {seen}")
    assert seen[companies[REVOKED]] == ("needs_reauth", "revoked"), seen
    for key in DEMO:
        assert seen[companies[key]] == ("active", "live"), (key, seen, counts)
