"""A deployment-wide Sage request budget, kept in PostgreSQL so every worker shares it.

Sage publishes two limits per registered app: 1,296,000 requests a day (15 a second on average) and
at most 150 concurrent requests. A token bucket in one process bounds only that process; Airflow runs
a company's tasks in many worker processes on many machines. This bucket lives in one row of
``sage_control.api_rate_buckets``: taking a token is one ``UPDATE`` that refills by elapsed time and
spends one token under the row lock, so concurrent takers queue on the lock and none over-spends.

Concurrency is bounded by the Airflow pools ``sage_api`` and ``sage_history`` (every Sage-calling task
takes one slot and a task sends one request at a time), so keep their slots together at or below 150.
``throttled()`` (the client calls it on a 429) empties every bucket of the table and pushes its refill
start forward, so every process sharing the budget backs off together instead of each retrying on its own.

**Two lanes, one budget** (``core.lanes``). The daily runs take tokens from the bucket ``sage_api``, first
syncs and backfills from ``sage_history``; :func:`lane_limiter` gives the history bucket
``SAGE_HISTORY_RATE_SHARE`` of the rate and of the burst, the daily bucket the rest, so the two never
exceed the configured rate together. A history lane that is idle would strand its share, so the daily
lane borrows it: a daily taker whose own bucket is empty takes a token the history bucket holds right
now (never one it owes). The history lane never borrows, so a first sync can never slow the daily
runs beyond its share. A 429 pauses both buckets (and a bucket made during a pause starts paused).

Usage: ``SageClient(..., limiter=PostgresRateLimiter(dsn))``; ``sync.make_client`` gives every client the
process's :func:`lane_limiter` of its run's lane (rate from ``SAGE_RATE_LIMIT_PER_S``, see
``config.sage_settings``, split by ``SAGE_HISTORY_RATE_SHARE``). The
table is created by migration ``004_api_rate_buckets.sql``; a limiter creates it itself only where it is
missing (a database that was never migrated), so a role without CREATE rights works in a migrated one.

Taking a token is a reservation: one round trip spends a token even when the balance is below one (the
balance may go negative, a queue of takers) and tells the taker how long to wait for its slot, which it
then sleeps outside any lock. Takers are served in order without polling, and a sleep hook that does not
really sleep (tests) cannot make a taker spin against the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from sage_sync.core.errors import RateLimitTimeout
from sage_sync.core.lanes import POOL_OF, Lane
from sage_sync.core.pools import SAGE_API
from sage_sync.warehouse import db

log = logging.getLogger(__name__)

SAGE_DAILY_LIMIT = 1_296_000  # requests per app per day (Sage's published limit)
SAGE_MAX_CONCURRENT = 150  # concurrent requests per app
DEFAULT_RATE = SAGE_DAILY_LIMIT / 86_400  # 15.0 per second
# Tokens a bucket stores: after a quiet spell, this many requests may go at once, then the rate.
DEFAULT_BURST = 30.0

# The table is created by migration 004; a database that was never migrated gets the same DDL here.
_DDL = (
    "create schema if not exists sage_control;\n"
    + (Path(__file__).with_name("migrations") / "004_api_rate_buckets.sql").read_text()
)

# Is the table there? A catalog lookup needs no privilege on the schema (to_regclass would).
_TABLE_EXISTS = """
select exists (select 1 from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
               where n.nspname = 'sage_control' and c.relname = 'api_rate_buckets')
"""

# The configured rate and capacity win (an operator may change them); the balance is kept. Writes only
# when something changed, so connecting does not rewrite the row. A new row starts full, unless a 429's
# pause is in force (another bucket refills only later): then it starts empty and paused as long.
_UPSERT = """
insert into sage_control.api_rate_buckets as b (name, tokens, capacity, rate, refilled_at)
select %(name)s, case when p.until > clock_timestamp() then 0 else %(capacity)s end, %(capacity)s, %(rate)s,
       greatest(clock_timestamp(), p.until)
from (select max(refilled_at) as until from sage_control.api_rate_buckets) p
on conflict (name) do update set capacity = excluded.capacity, rate = excluded.rate
where (b.capacity, b.rate) is distinct from (excluded.capacity, excluded.rate)
"""

# Refill by elapsed time (never above capacity; a refilled_at in the future, set by throttled(),
# refills nothing until then), then reserve one token: the balance may go below zero, and the taker
# waits until its token has refilled (plus any pause). A reservation longer than max_wait (NULL: no
# limit) is refused and spends nothing. clock_timestamp() so a long transaction can't freeze time.
# With a spare bucket (the daily lane borrows the history lane's, see the module docstring): when the
# own bucket has no token now and the spare has one now, the token is the spare's, at no wait. Both
# rows are locked in name order, as throttled() locks them, so two takers (or a taker and a pause)
# never deadlock.
_TAKE = """
with b as materialized (
    select name, rate,
           least(capacity, tokens + greatest(0, extract(epoch from clock_timestamp() - refilled_at)) * rate)
               as available,
           greatest(refilled_at, clock_timestamp()) as at,
           greatest(0, extract(epoch from refilled_at - clock_timestamp())) as paused
    from sage_control.api_rate_buckets where name = %(name)s or name = %(spare)s order by name for update
), pick as (
    select case when exists (select 1 from b where name = %(name)s and (paused > 0 or available < 1))
                 and exists (select 1 from b where name = %(spare)s and paused = 0 and available >= 1)
                then %(spare)s else %(name)s end as name
), r as (
    select b.name, available, at, paused + greatest(0, 1 - available) / rate as wait from b join pick using (name)
)
update sage_control.api_rate_buckets t
set tokens = case when %(max_wait)s::float8 is null or r.wait <= %(max_wait)s::float8
                  then r.available - 1 else r.available end,
    refilled_at = r.at
from r where t.name = r.name
returning %(max_wait)s::float8 is null or r.wait <= %(max_wait)s::float8 as granted, r.wait::float8,
          r.name <> %(name)s as borrowed
"""

# A 429: every bucket of the table (one Sage app, every lane) is emptied and paused, its rows
# locked in name order first (as _TAKE locks them).
_THROTTLE = """
with locked as (select name from sage_control.api_rate_buckets order by name for update)
update sage_control.api_rate_buckets t
set tokens = least(t.tokens, 0),
    refilled_at = greatest(t.refilled_at, clock_timestamp() + make_interval(secs => %s))
from locked where t.name = locked.name
"""


class PostgresRateLimiter:
    """A token bucket shared by every process that uses the same database and bucket ``name``.

    ``rate`` tokens a second (default 15 = 1,296,000 a day), at most ``burst`` stored. ``acquire``
    reserves a token and sleeps until it is due (never holding a lock while asleep). One short
    autocommit connection is kept per limiter; threads may share a limiter (the round trip is
    serialised, the sleep is not), so a process needs only one (see :func:`shared_limiter`).
    ``spare`` names a bucket whose idle tokens this one may take when it has none (the daily
    lane borrowing the history lane's unused share); ``borrowed`` counts them.
    """

    def __init__(
        self,
        dsn: str,
        name: str = SAGE_API.name,
        *,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        max_wait: float | None = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        spare: str | None = None,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.dsn = dsn
        self.name = name
        self.spare = spare
        self.borrowed = 0
        self.rate = rate
        self.burst = burst
        self.max_wait = max_wait
        self._sleep = sleep
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self.granted = 0
        self.waited = 0.0
        self._unavailable = False

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = db.connect(self.dsn, app="sage_sync.ratelimit", autocommit=True)
            try:
                if not conn.execute(_TABLE_EXISTS).fetchone()[0]:  # type: ignore[index]
                    # Not migrated: create it. Concurrent first uses would race on "create table if
                    # not exists" (pg_type unique index), hence the lock.
                    with conn.transaction():
                        conn.execute("select pg_advisory_xact_lock(%s)", (0x5A6E_0005,))
                        conn.execute(_DDL)
                self._ensure_row(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _ensure_row(self, conn: psycopg.Connection) -> None:
        conn.execute(_UPSERT, {"name": self.name, "capacity": self.burst, "rate": self.rate})

    def _reserve(self) -> tuple[bool, float]:
        take = {"name": self.name, "spare": self.spare, "max_wait": self.max_wait}
        with self._lock:
            conn = self._connection()
            row = conn.execute(_TAKE, take).fetchone()
            if row is None:  # the row went away (truncated, deleted): a full bucket again
                self._ensure_row(conn)
                row = conn.execute(_TAKE, take).fetchone()
            assert row is not None
            granted, wait, borrowed = row
            if granted:
                self.granted += 1
                self.borrowed += int(bool(borrowed))
                self.waited += float(wait)
            return bool(granted), float(wait)

    def acquire(self) -> None:
        """Block until one request may be sent under the shared budget."""
        try:
            granted, wait = self._reserve()
        except (psycopg.OperationalError, psycopg.errors.InsufficientPrivilege) as exc:
            # The budget is a courtesy to Sage, not a correctness guard: a warehouse blip (or a role
            # not granted the bucket table) must not fail the sync. Reconnect next time; Sage's own
            # 429s still protect the app. Said once per outage, not once per request.
            (log.debug if self._unavailable else log.warning)(
                "rate limiter unavailable (%s); sending without it until it is back", type(exc).__name__
            )
            self._unavailable = True
            self.close()
            return
        self._unavailable = False
        if not granted:
            raise RateLimitTimeout(
                f"no Sage request budget for {self.max_wait:.0f} s ({self.name}): the next token is {wait:.0f} s away"
            )
        if wait > 0:
            self._sleep(wait)

    def throttled(self, seconds: float) -> None:
        """Sage answered 429: empty every bucket (both lanes) and refill nothing for ``seconds``, for
        every process. The 429 is the app's limit, whichever lane's request met it."""
        try:
            with self._lock:
                # least(tokens, 0): takers already queued (a negative balance) stay ahead of new ones.
                self._connection().execute(_THROTTLE, (max(0.0, float(seconds)),))
        except psycopg.OperationalError:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    def __enter__(self) -> PostgresRateLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: dict[tuple[str, str, float, float, str | None], PostgresRateLimiter] = {}
_inherited: list[PostgresRateLimiter] = []  # a parent's, kept alive in a child: never finalised here
_shared_pid = os.getpid()
_shared_lock = threading.Lock()


def shared_limiter(
    dsn: str,
    rate: float = DEFAULT_RATE,
    *,
    name: str = SAGE_API.name,
    burst: float = DEFAULT_BURST,
    sleep: Callable[[float], None] = time.sleep,
    spare: str | None = None,
) -> PostgresRateLimiter:
    """This process's limiter for ``dsn`` (and bucket, rate, burst, spare): one connection per process,
    not one per client or page. A forked child (Airflow runs tasks in forked processes) gets its own:
    it must not use, or close, a connection its parent opened."""
    global _shared_pid  # noqa: PLW0603
    key = (dsn, name, float(rate), float(burst), spare)
    with _shared_lock:
        if _shared_pid != os.getpid():
            # The parent's limiters (and sockets) are the parent's: set aside, never used or closed
            # (finalising one would send the server a Terminate on the parent's socket).
            _inherited.extend(_shared.values())
            _shared.clear()
            _shared_pid = os.getpid()
        limiter = _shared.get(key)
        if limiter is None:
            limiter = _shared[key] = PostgresRateLimiter(dsn, name, rate=rate, burst=burst, sleep=sleep, spare=spare)
        return limiter


@dataclass(frozen=True)
class LaneBudget:
    """A lane's part of the Sage budget: its bucket, rate and burst, and the bucket it may borrow from."""

    lane: Lane
    bucket: str
    rate: float
    burst: float
    spare: str | None

    def describe(self, total: float) -> str:
        """``history lane: 4 of the 12 Sage requests a second (bucket sage_history)``, for task logs."""
        borrow = f", and {self.spare}'s idle share" if self.spare else ""
        return f"{self.lane} lane: {self.rate:g} of the {total:g} Sage requests a second (bucket {self.bucket}{borrow})"


def lane_budget(lane: Lane, total_rate: float, history_share: float, burst: float = DEFAULT_BURST) -> LaneBudget:
    """The split of ``total_rate`` (and of ``burst``): ``history_share`` of it to the history lane, the
    rest to the daily lane, which may borrow what the history lane leaves idle. Each bucket is named
    after its lane's pool (``core.lanes.POOL_OF``)."""
    if not 0 < history_share < 1:
        raise ValueError("history_share must be above 0 and below 1")
    share = history_share if lane == Lane.HISTORY else 1 - history_share
    spare = POOL_OF[Lane.HISTORY].name if lane == Lane.DAILY else None
    # A bucket holds at least one token, or no request could ever go; so a tiny share's burst is 1.
    return LaneBudget(lane, POOL_OF[lane].name, total_rate * share, max(1.0, burst * share), spare)


def lane_limiter(
    dsn: str,
    lane: Lane,
    total_rate: float,
    history_share: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> PostgresRateLimiter:
    """This process's limiter for ``lane``'s part of the budget (:func:`lane_budget`)."""
    budget = lane_budget(lane, total_rate, history_share)
    return shared_limiter(dsn, budget.rate, name=budget.bucket, burst=budget.burst, sleep=sleep, spare=budget.spare)


def initial_syncs_per_day(
    requests_per_sync: float, daily_limit: int = SAGE_DAILY_LIMIT, reserve_for_daily: float = 0.0
) -> int:
    """How many companies' initial syncs fit in a day's budget, after ``reserve_for_daily`` requests."""
    if requests_per_sync <= 0:
        raise ValueError("requests_per_sync must be positive")
    return int(max(0.0, daily_limit - reserve_for_daily) // requests_per_sync)


__all__ = [
    "DEFAULT_RATE",
    "SAGE_DAILY_LIMIT",
    "SAGE_MAX_CONCURRENT",
    "LaneBudget",
    "PostgresRateLimiter",
    "RateLimitTimeout",
    "initial_syncs_per_day",
    "lane_budget",
    "lane_limiter",
    "shared_limiter",
]
