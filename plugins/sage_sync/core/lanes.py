"""The two lanes Sage work runs in: ``daily`` (everyone's nightly run) and ``history`` (first syncs, backfills).

A company's first sync can take up to a day and a backfill reads years of documents; sharing one
pool and one request budget with the daily runs, one big onboarding would delay every other
company's nightly figures. So each lane has its own Airflow pool (``core.pools``) and its own
token bucket of the shared Sage rate (``warehouse.ratelimit.lane_limiter``): the history lane
gets ``SAGE_HISTORY_RATE_SHARE`` of ``SAGE_RATE_LIMIT_PER_S``, the daily lane the rest, and a
429 from Sage pauses both.

**Which runs are history.** A backfill, and a run that reads everything: no run of the company
succeeded before it since it was connected or last reset (its first sync, or the full re-import
after a reset). That is a property of the run, fixed when it starts, so every retry of its tasks
is in the same lane, and the first run after a first sync that ended mid-day is daily. The same
rule is read in two places: the DAG parse (``warehouse.snapshot``: has the company a successful
run since its last reset?) picks the pool, and each task (``warehouse.runs.lane_of``) picks the
bucket. See ``orchestration.companies.lane_for`` for where the two can differ.
"""

from __future__ import annotations

from enum import StrEnum

from sage_sync.core.pools import SAGE_API, SAGE_HISTORY, Pool


class Lane(StrEnum):
    """Where a run's Sage work queues: its pool and its share of the request rate."""

    DAILY = "daily"
    HISTORY = "history"


POOL_OF: dict[Lane, Pool] = {Lane.DAILY: SAGE_API, Lane.HISTORY: SAGE_HISTORY}


def lane_of_run(kind: str, *, full_read: bool) -> Lane:
    """A backfill, or a run that reads everything (no success before it since connect or reset), is history."""
    return Lane.HISTORY if kind == "backfill" or full_read else Lane.DAILY


def lane_of_company(*, synced_since_reset: bool) -> Lane:
    """The lane of a company's next run: history until a run has succeeded since it was connected or reset."""
    return Lane.DAILY if synced_since_reset else Lane.HISTORY
