"""A deployment-wide Sage request budget, kept in PostgreSQL so every worker shares it.

Sage publishes two limits per registered app: 1,296,000 requests a day (15 a second on average) and
at most 150 concurrent requests. A token bucket in one process bounds only that process; Airflow runs
a company's tasks in many worker processes on many machines. This bucket lives in one row of
``sage_control.api_rate_buckets``: taking a token is one ``UPDATE`` that refills by elapsed time and
spends one token under the row lock, so concurrent takers queue on the lock and none over-spends.

Concurrency is bounded by the Airflow pool ``sage_api`` (every Sage-calling task takes one slot and a
task sends one request at a time), so keep that pool at or below 150 slots. ``throttled()`` (the
client calls it on a 429) empties the bucket and pushes its refill start forward, so every process
sharing the budget backs off together instead of each retrying on its own.

Usage: ``SageClient(..., limiter=PostgresRateLimiter(dsn))``. The bucket row and table are created on
first use (``create table if not exists``), so no migration is needed to try it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

SAGE_DAILY_LIMIT = 1_296_000  # requests per app per day (Sage's published limit)
SAGE_MAX_CONCURRENT = 150  # concurrent requests per app
DEFAULT_RATE = SAGE_DAILY_LIMIT / 86_400  # 15.0 per second

_DDL = """
create schema if not exists sage_control;
create table if not exists sage_control.api_rate_buckets (
    name        text primary key,
    tokens      double precision not null,
    capacity    double precision not null,
    rate        double precision not null,   -- tokens per second
    refilled_at timestamptz not null default clock_timestamp()
);
"""

# Refill by elapsed time (never above capacity; a refilled_at in the future, set by throttled(),
# refills nothing until then), then spend one token if there is one. Returns the balance after the
# attempt and whether a token was spent; clock_timestamp() so a long transaction can't freeze time.
_TAKE = """
with b as (
    select name, capacity, rate,
           least(capacity, tokens + greatest(0, extract(epoch from clock_timestamp() - refilled_at)) * rate)
               as available,
           greatest(refilled_at, clock_timestamp()) as at
    from sage_control.api_rate_buckets where name = %(name)s for update
)
update sage_control.api_rate_buckets t
set tokens = case when b.available >= 1 then b.available - 1 else b.available end,
    refilled_at = b.at
from b where t.name = b.name
returning b.available >= 1 as granted, t.tokens, t.rate,
          extract(epoch from t.refilled_at - clock_timestamp()) as paused_for
"""


class RateLimitTimeout(TimeoutError):
    """No token became available within the limiter's ``max_wait``."""


class PostgresRateLimiter:
    """A token bucket shared by every process that uses the same database and bucket ``name``.

    ``rate`` tokens a second (default 15 = 1,296,000 a day), at most ``burst`` stored. ``acquire``
    blocks (sleeping, never holding a lock while asleep) until a token is granted. One short autocommit
    connection is kept per limiter; the limiter is not thread-safe (one per client, like the client).
    """

    def __init__(self, dsn: str, name: str = "sage_api", *, rate: float = DEFAULT_RATE, burst: float = 30.0,
                 max_wait: float | None = 3600.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.dsn = dsn
        self.name = name
        self.rate = rate
        self.burst = burst
        self.max_wait = max_wait
        self._sleep = sleep
        self._conn: psycopg.Connection | None = None
        self.granted = 0
        self.waited = 0.0

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, application_name="sage_sync.ratelimit")
            # Concurrent first uses would race on "create table if not exists" (pg_type unique index).
            with self._conn.transaction():
                self._conn.execute("select pg_advisory_xact_lock(%s)", (0x5A6E_0005,))
                self._conn.execute(_DDL)
            # The configured rate and capacity win (an operator may change them); the balance is kept.
            self._conn.execute(
                "insert into sage_control.api_rate_buckets (name, tokens, capacity, rate) "
                "values (%s, %s, %s, %s) on conflict (name) do update "
                "set capacity = excluded.capacity, rate = excluded.rate",
                (self.name, self.burst, self.burst, self.rate))
        return self._conn

    def acquire(self) -> None:
        """Block until one request may be sent under the shared budget."""
        started = time.monotonic()
        while True:
            try:
                row = self._connection().execute(_TAKE, {"name": self.name}).fetchone()
            except psycopg.OperationalError:
                # The budget is a courtesy to Sage, not a correctness guard: a warehouse blip must not
                # fail the sync. Reconnect next time; Sage's own 429s still protect the app.
                log.warning("rate limiter unavailable; sending without it this time")
                self.close()
                return
            assert row is not None
            granted, tokens, rate, paused_for = row
            if granted:
                self.granted += 1
                return
            wait = max(float(paused_for or 0), (1 - float(tokens)) / float(rate), 0.001)
            if self.max_wait is not None and time.monotonic() - started + wait > self.max_wait:
                raise RateLimitTimeout(f"no Sage request budget for {self.max_wait:.0f} s ({self.name})")
            self.waited += wait
            self._sleep(wait)

    def throttled(self, seconds: float) -> None:
        """Sage answered 429: empty the bucket and refill nothing for ``seconds``, for every process."""
        try:
            self._connection().execute(
                "update sage_control.api_rate_buckets set tokens = 0, "
                "refilled_at = greatest(refilled_at, clock_timestamp() + make_interval(secs => %s)) "
                "where name = %s", (max(0.0, float(seconds)), self.name))
        except psycopg.OperationalError:
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> PostgresRateLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def initial_syncs_per_day(requests_per_sync: float, daily_limit: int = SAGE_DAILY_LIMIT,
                          reserve_for_daily: float = 0.0) -> int:
    """How many companies' initial syncs fit in a day's budget, after ``reserve_for_daily`` requests."""
    if requests_per_sync <= 0:
        raise ValueError("requests_per_sync must be positive")
    return int(max(0.0, daily_limit - reserve_for_daily) // requests_per_sync)


__all__ = ["DEFAULT_RATE", "SAGE_DAILY_LIMIT", "SAGE_MAX_CONCURRENT", "PostgresRateLimiter",
           "RateLimitTimeout", "initial_syncs_per_day"]
