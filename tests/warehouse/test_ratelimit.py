"""The shared Sage request budget: a token bucket in PostgreSQL that every worker process draws from.

Real PostgreSQL; nobody really sleeps: each limiter's sleep hook records the wait it was told to take,
and since a take is a reservation (the balance may go below zero), the recorded waits are exactly
the schedule the takers would follow.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from sage_sync.core import config
from sage_sync.core.lanes import Lane
from sage_sync.warehouse import ratelimit
from sage_sync.warehouse.ratelimit import PostgresRateLimiter, RateLimitTimeout

ADMIN_URL = os.environ.get("SAGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def limiters(pg_dsn: str, warehouse: psycopg.Connection) -> Iterator[list[PostgresRateLimiter]]:
    """Limiters made in a test, closed after it; the warehouse fixture has emptied the bucket table."""
    made: list[PostgresRateLimiter] = []
    yield made
    for limiter in made:
        limiter.close()


def _limiter(made: list[PostgresRateLimiter], dsn: str, waits: list[float], **kwargs: object) -> PostgresRateLimiter:
    limiter = PostgresRateLimiter(dsn, sleep=waits.append, **kwargs)  # type: ignore[arg-type]
    made.append(limiter)
    return limiter


def _real_time_spent(limiter: PostgresRateLimiter, waits: list[float]) -> list[float]:
    """Seconds of real time from the first take to each recorded wait (the limiter's sleep is a
    stand-in that only records, so a wait is "due time less the real time already spent")."""
    started: list[float] = []
    spent: list[float] = []
    take = limiter.acquire

    def acquire() -> None:
        if not started:
            started.append(time.monotonic())
        before = len(waits)
        take()
        if len(waits) > before:
            spent.append(time.monotonic() - started[0])

    limiter.acquire = acquire  # type: ignore[method-assign]
    return spent


def _bucket(conn: psycopg.Connection, name: str = "sage_api") -> tuple[float, float, float] | None:
    conn.commit()
    return conn.execute(
        "select tokens, capacity, rate from sage_control.api_rate_buckets where name = %s", (name,)
    ).fetchone()


def test_takers_beyond_the_burst_wait_one_interval_each(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    waits: list[float] = []
    limiter = _limiter(limiters, pg_dsn, waits, rate=10.0, burst=3.0)
    spent = _real_time_spent(limiter, waits)
    for _ in range(8):
        limiter.acquire()
    assert limiter.granted == 8
    assert len(waits) == 5  # the burst of 3 went at once; 5 more waited for their token
    # the k-th taker past the burst is due k/rate after the first take, less the real time spent
    # since (measured: on a busy machine the takes themselves take a good part of an interval)
    for k, wait in enumerate(waits, start=1):
        assert k / 10 - spent[k - 1] - 0.01 < wait <= k / 10 + 1e-6
    assert waits == sorted(waits)
    tokens, capacity, rate = _bucket(warehouse)  # type: ignore[misc]
    assert (capacity, rate) == (3.0, 10.0)
    # 5 tokens owed, less what refilled between the first and the last take: at most rate x the
    # real time they spanned (a busy machine once spent 0.101 s there, so a fixed "< -4" was flaky)
    assert -5 - 1e-6 <= tokens <= -5 + 10 * spent[-1] + 1e-6


def test_two_processes_share_one_budget(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    a_waits: list[float] = []
    b_waits: list[float] = []
    a = _limiter(limiters, pg_dsn, a_waits, rate=5.0, burst=2.0)
    b = _limiter(limiters, pg_dsn, b_waits, rate=5.0, burst=2.0)
    started = time.monotonic()
    a.acquire()
    a.acquire()  # a spent the burst: b queues behind it, and a behind b
    b.acquire()
    b_first = time.monotonic() - started
    a.acquire()
    a_first = time.monotonic() - started
    b.acquire()
    b_second = time.monotonic() - started
    # Due 1/5, 2/5 and 3/5 after the first take, less the real time spent since (measured).
    assert 1 / 5 - b_first - 0.01 < b_waits[0] <= 1 / 5 + 1e-6
    assert 2 / 5 - a_first - 0.01 < a_waits[0] <= 2 / 5 + 1e-6
    assert 3 / 5 - b_second - 0.01 < b_waits[1] <= 3 / 5 + 1e-6  # five takes at 5/s with 2 in the bucket


def test_a_429_pauses_every_process(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    a_waits: list[float] = []
    b_waits: list[float] = []
    a = _limiter(limiters, pg_dsn, a_waits, rate=15.0)
    b = _limiter(limiters, pg_dsn, b_waits, rate=15.0)
    a.acquire()
    a.throttled(30)
    b.acquire()
    assert b_waits and 29 < b_waits[0] <= 30 + 1 / 15 + 1e-6


def test_a_wait_beyond_max_wait_is_refused_and_spends_nothing(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    waits: list[float] = []
    limiter = _limiter(limiters, pg_dsn, waits, rate=15.0, max_wait=5.0)
    limiter.acquire()
    limiter.throttled(60)
    before = _bucket(warehouse)
    with pytest.raises(RateLimitTimeout):
        limiter.acquire()
    assert _bucket(warehouse) == before
    assert waits == [] and limiter.granted == 1


def test_a_bucket_row_that_disappears_comes_back_full(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    waits: list[float] = []
    limiter = _limiter(limiters, pg_dsn, waits, rate=15.0, burst=4.0)
    limiter.acquire()
    warehouse.execute("truncate sage_control.api_rate_buckets")  # a test fixture, an operator's reset
    warehouse.commit()
    limiter.acquire()
    assert limiter.granted == 2 and waits == []
    tokens, capacity, _rate = _bucket(warehouse)  # type: ignore[misc]
    assert capacity == 4.0 and 2.9 < tokens <= 3.0


def test_settings_change_rate_and_capacity_but_keep_the_balance(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    warehouse.execute(
        "insert into sage_control.api_rate_buckets (name, tokens, capacity, rate) values ('sage_api', -3, 30, 15)"
    )
    warehouse.commit()
    waits: list[float] = []
    limiter = _limiter(limiters, pg_dsn, waits, rate=2.0, burst=10.0)
    limiter.acquire()
    tokens, capacity, rate = _bucket(warehouse)  # type: ignore[misc]
    assert (capacity, rate) == (10.0, 2.0)
    assert tokens < -3.5  # the debt other processes ran up is still owed
    assert waits and waits[0] == pytest.approx(2.0, abs=0.1)  # (1 - -3) / 2 a second


# -- DDL: from the migration; never needs CREATE in a migrated warehouse ---------------------------------


def test_the_bucket_table_comes_from_the_migrations(warehouse: psycopg.Connection) -> None:
    assert warehouse.execute("select to_regclass('sage_control.api_rate_buckets') is not null").fetchone() == (True,)


@pytest.fixture
def app_role(pg_dsn: str, warehouse: psycopg.Connection) -> Iterator[tuple[str, sql.Identifier]]:
    """A login role like a locked-down sync role: no CREATE anywhere, usage of sage_control only.
    Yields its DSN and name; the test grants what it needs on the bucket table."""
    role = f"sage_rl_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create role {} login").format(ident))
        admin.execute(sql.SQL("grant usage on schema sage_control to {}").format(ident))
        admin.execute(sql.SQL("revoke create on database {} from public").format(sql.Identifier(dbname)))
    try:
        yield psycopg.conninfo.make_conninfo(pg_dsn, user=role), ident
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (role,))
            admin.execute(sql.SQL("drop owned by {}").format(ident))
            admin.execute(sql.SQL("drop role {}").format(ident))


def test_a_role_without_create_rights_uses_the_migrated_table(
    pg_dsn: str,
    warehouse: psycopg.Connection,
    app_role: tuple[str, sql.Identifier],
    limiters: list[PostgresRateLimiter],
) -> None:
    dsn, role = app_role
    warehouse.execute(sql.SQL("grant select, insert, update on sage_control.api_rate_buckets to {}").format(role))
    warehouse.commit()
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(ratelimit._DDL)  # the lazy DDL would fail for this role, even with "if not exists"
    waits: list[float] = []
    limiter = _limiter(limiters, dsn, waits, rate=15.0)
    for _ in range(3):
        limiter.acquire()
    assert limiter.granted == 3
    assert _bucket(warehouse) is not None
    limiter.close()


def test_a_role_not_granted_the_table_sends_unmetered_not_fails(
    pg_dsn: str,
    warehouse: psycopg.Connection,
    app_role: tuple[str, sql.Identifier],
    limiters: list[PostgresRateLimiter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    dsn, _role = app_role  # usage on the schema, nothing on the table (granted before it existed)
    waits: list[float] = []
    limiter = _limiter(limiters, dsn, waits, rate=15.0)
    with caplog.at_level("DEBUG", logger="sage_sync.warehouse.ratelimit"):
        for _ in range(3):
            limiter.acquire()
    assert limiter.granted == 0 and waits == []
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "InsufficientPrivilege" in warnings[0].getMessage()  # once, not per request


def test_an_unmigrated_database_gets_the_table_on_first_use() -> None:
    name = f"sage_rl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        dsn = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
        with PostgresRateLimiter(dsn, sleep=lambda _s: None) as limiter:
            limiter.acquire()
            assert limiter.granted == 1
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select count(*) from sage_control.api_rate_buckets").fetchone() == (1,)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


# -- one limiter per process and warehouse ---------------------------------------------------------------


def test_shared_limiter_is_one_per_process_and_warehouse(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ratelimit.shared_limiter(pg_dsn, 7.0)
    assert ratelimit.shared_limiter(pg_dsn, 7.0) is first
    assert ratelimit.shared_limiter(pg_dsn, 8.0) is not first  # a changed setting takes effect
    real_pid = ratelimit.os.getpid()
    monkeypatch.setattr(ratelimit.os, "getpid", lambda: real_pid + 1)  # as in a forked child
    child = ratelimit.shared_limiter(pg_dsn, 7.0)
    assert child is not first
    assert first in ratelimit._inherited  # kept, never closed from the child


# -- the setting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "extra", "expected"),
    [
        (None, None, config.DEFAULT_RATE_LIMIT_PER_S),
        (None, {}, 12.0),
        ("5", None, 5.0),
        ("2.5", {"rate_limit_per_s": 9}, 2.5),  # the environment wins over the connection
        (None, {"rate_limit_per_s": 9}, 9.0),
        (None, {"rate_limit_per_s": "9.5"}, 9.5),
        ("0", None, None),
        ("off", {"rate_limit_per_s": 9}, None),
        ("OFF", None, None),
        (None, {"rate_limit_per_s": 0}, None),
        (None, {"rate_limit_per_s": "off"}, None),
        (" ", None, 12.0),  # blank: unset
    ],
)
def test_rate_limit_setting(
    monkeypatch: pytest.MonkeyPatch, env: str | None, extra: dict | None, expected: float | None
) -> None:
    if env is None:
        monkeypatch.delenv(config.RATE_LIMIT_ENV, raising=False)
    else:
        monkeypatch.setenv(config.RATE_LIMIT_ENV, env)
    assert config.rate_limit_per_s(extra) == expected


@pytest.mark.parametrize("bad", ["fast", "-1", "nan", "inf"])
def test_a_malformed_rate_limit_is_a_config_error(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(config.RATE_LIMIT_ENV, bad)
    with pytest.raises(config.ConfigError, match=config.RATE_LIMIT_ENV):
        config.rate_limit_per_s()


def test_the_sage_connection_extra_sets_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.RATE_LIMIT_ENV, raising=False)
    monkeypatch.setenv(
        "AIRFLOW_CONN_SAGE_DEFAULT",
        json.dumps(
            {
                "conn_type": "http",
                "host": "https://sage.example/v3.1",
                "login": "id",
                "password": "secret",
                "extra": {"rate_limit_per_s": 3},
            }
        ),
    )
    assert config.sage_settings().rate_limit_per_s == 3.0
    monkeypatch.setenv(config.RATE_LIMIT_ENV, "off")
    assert config.sage_settings().rate_limit_per_s is None


# -- two lanes, one budget: the history lane's bucket beside the daily one (core.lanes) ------------------


def test_the_lanes_split_the_rate_and_the_burst_and_never_exceed_them_together() -> None:
    daily = ratelimit.lane_budget(Lane.DAILY, 12.0, 1 / 3)
    history = ratelimit.lane_budget(Lane.HISTORY, 12.0, 1 / 3)
    assert (daily.bucket, history.bucket) == ("sage_api", "sage_history")  # named after the lanes' pools
    assert daily.rate == pytest.approx(8.0) and history.rate == pytest.approx(4.0)
    assert daily.rate + history.rate == pytest.approx(12.0)
    assert daily.burst + history.burst == pytest.approx(ratelimit.DEFAULT_BURST)
    assert (daily.spare, history.spare) == ("sage_history", None)  # only the daily lane borrows
    assert "history lane: 4 of the 12 Sage requests a second" in history.describe(12.0)
    assert ratelimit.lane_budget(Lane.HISTORY, 12.0, 0.01).burst == 1.0  # a bucket always holds a token


def _lane_limiters(
    made: list[PostgresRateLimiter], dsn: str, total: float, share: float
) -> tuple[PostgresRateLimiter, list[float], PostgresRateLimiter, list[float]]:
    """A daily and a history limiter as two worker processes would have them (their own objects and
    connections), with recording sleep hooks."""
    limiters = []
    for lane in (Lane.DAILY, Lane.HISTORY):
        waits: list[float] = []
        b = ratelimit.lane_budget(lane, total, share)
        limiter = _limiter(made, dsn, waits, name=b.bucket, rate=b.rate, burst=b.burst, spare=b.spare)
        limiters += [limiter, waits]
    return tuple(limiters)  # type: ignore[return-value]


def test_a_queue_in_the_history_lane_does_not_slow_the_daily_lane(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    """History busy (a first sync queued 20 tokens deep), then the daily runs come: they wait only for
    their own share, and each lane's queue drains at its own rate, together the total. (A total of
    1.2 a second, 0.4 + 0.8, so that no refill lands while the test takes its tokens.)"""
    daily, d_waits, history, h_waits = _lane_limiters(limiters, pg_dsn, 1.2, 1 / 3)
    h_spent = _real_time_spent(history, h_waits)
    d_spent = _real_time_spent(daily, d_waits)
    for _ in range(30):  # a burst of 10, then 20 queued at 0.4 a second
        history.acquire()
    for _ in range(30):  # a burst of 20, then 10 queued at 0.8 a second
        daily.acquire()
    assert history.granted == daily.granted == 30 and daily.borrowed == 0  # history owes: nothing to borrow
    assert len(h_waits) == 20 and len(d_waits) == 10
    for k, wait in enumerate(h_waits, start=1):
        assert k / 0.4 - h_spent[k - 1] - 0.01 < wait <= k / 0.4 + 1e-6
    for k, wait in enumerate(d_waits, start=1):  # due k / 0.8 s on, not behind the history queue's 50 s
        assert k / 0.8 - d_spent[k - 1] - 0.01 < wait <= k / 0.8 + 1e-6
    # Together: the 30 stored tokens, then never more than the total rate: past them, the n-th token
    # of either lane is due n / 1.2 s on at the earliest (a wait is its due time less the real time
    # already spent, hence the slack).
    slack = max([*h_spent, *d_spent])
    for n, wait in enumerate(sorted([*h_waits, *d_waits]), start=1):
        assert n <= 1.2 * (wait + slack) + 1e-6


def test_the_daily_lane_borrows_the_idle_history_share_and_history_never_borrows(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    daily, d_waits, history, h_waits = _lane_limiters(limiters, pg_dsn, 12.0, 1 / 3)
    history.acquire()  # the history bucket exists, 9 tokens idle (a first sync that has just ended)
    started = time.monotonic()
    for _ in range(20 + 9):
        daily.acquire()
    elapsed = time.monotonic() - started
    # 29 at once: its own 20 and the history lane's idle ones (its own refill, 8 a second, covers
    # only what the real time spent allows; measured, since the machine may be busy).
    assert d_waits == [] and daily.granted == 29
    assert daily.borrowed >= 9 - 8 * elapsed - 1e-6 and daily.borrowed >= 1
    # Borrowing takes only tokens the history bucket holds, never one it owes: the history lane's
    # next token is at most one refill (1/4 s) away.
    history.acquire()
    assert all(w <= 1 / 4 + 1e-6 for w in h_waits)

    # The other way round: a full daily bucket lends nothing to the history lane.
    warehouse.execute("truncate sage_control.api_rate_buckets")
    warehouse.commit()
    daily.acquire()  # a daily bucket with 19 tokens idle
    for _ in range(11):
        history.acquire()
    assert history.borrowed == 0
    tokens, _capacity, _rate = _bucket(warehouse, "sage_api")  # type: ignore[misc]
    assert tokens >= 19 - 1e-6  # untouched by the history lane's 11 (its burst is 10)


def test_a_429_in_either_lane_pauses_both(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    daily, d_waits, history, h_waits = _lane_limiters(limiters, pg_dsn, 12.0, 1 / 3)
    daily.acquire()
    history.acquire()
    history.throttled(30)  # a first sync's request met Sage's limit: the app's limit, every lane's
    daily.acquire()  # nothing borrowed from the paused history bucket either
    history.acquire()
    assert d_waits and 29 < d_waits[0] <= 30 + 1 / 8 + 1e-6
    assert h_waits and 29 < h_waits[0] <= 30 + 1 / 4 + 1e-6
    assert daily.borrowed == 0


def test_a_lane_bucket_made_during_a_pause_starts_paused(
    pg_dsn: str, warehouse: psycopg.Connection, limiters: list[PostgresRateLimiter]
) -> None:
    daily, _d_waits, history, h_waits = _lane_limiters(limiters, pg_dsn, 12.0, 1 / 3)
    daily.acquire()
    daily.throttled(30)  # no history bucket yet: the first sync's first request comes during the pause
    history.acquire()
    assert h_waits and 29 < h_waits[0] <= 30 + 1 / 4 + 1e-6
    tokens, capacity, _rate = _bucket(warehouse, "sage_history")  # type: ignore[misc]
    assert capacity == 10.0 and tokens <= 0


@pytest.mark.parametrize(("raw", "expected"), [(None, 1 / 3), ("0.25", 0.25), (" 0.5 ", 0.5), ("", 1 / 3)])
def test_the_history_share_setting(monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: float) -> None:
    if raw is None:
        monkeypatch.delenv(config.HISTORY_RATE_SHARE_ENV, raising=False)
    else:
        monkeypatch.setenv(config.HISTORY_RATE_SHARE_ENV, raw)
    assert config.history_rate_share() == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["nan", "-0.1", "0", "1", "1.5", "inf", "a third"])
def test_a_history_share_outside_0_to_1_is_refused_before_any_run(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    """Refused by name where the DAG files read it at parse (orchestration.defaults), so no run starts."""
    from sage_sync.orchestration.defaults import sage_task_args

    monkeypatch.setenv(config.HISTORY_RATE_SHARE_ENV, bad)
    with pytest.raises(config.ConfigError, match=config.HISTORY_RATE_SHARE_ENV):
        config.history_rate_share()
    with pytest.raises(config.ConfigError, match=config.HISTORY_RATE_SHARE_ENV):
        sage_task_args()
