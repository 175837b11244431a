"""What every DAG of ours starts from: the start date, the default task arguments, the ``sage_raw`` Asset.

One ``DEFAULT_ARGS`` for every DAG; a DAG that differs says so next to its ``DAG(...)`` with
``{**DEFAULT_ARGS, ...}`` and its reason. ``START_DATE`` is timezone-aware (UTC), as Airflow 3
recommends: a naive one means whatever ``default_timezone`` the deployment configures.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, CronTriggerTimetable

from sage_sync.core.config import history_rate_share, task_timeout
from sage_sync.core.lanes import POOL_OF, Lane
from sage_sync.orchestration.airflow_api import SAGE_RAW_ASSET_NAME, SAGE_RAW_ASSET_URI
from sage_sync.orchestration.notifier import SageNotifier
from sage_sync.orchestration.schedule import daily_cron

START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
HISTORY = Lane.HISTORY  # the backfill's lane, for the DAG files (which import orchestration only)

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "data-engineering",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
    # A task's last failed try (not a retry) reports the run's failure, with its exception as the
    # reason; every failed task of a run reaches the same incident, so one notice goes out.
    "on_failure_callback": SageNotifier("task_failed"),
}

# The Asset every load emits and `sage_transform` is scheduled on.
SAGE_RAW = Asset(name=SAGE_RAW_ASSET_NAME, uri=SAGE_RAW_ASSET_URI)


def sage_task_args(lane: Lane = Lane.DAILY) -> dict[str, Any]:
    """The arguments of every task that talks to Sage: a slot of its lane's pool, and a time limit.

    The limit is ``SAGE_TASK_TIMEOUT_HOURS`` (default 12), read at each parse: a backstop to the
    client's page cap, long enough for a big first sync sharing the request budget. The lane's
    share of the Sage rate (``SAGE_HISTORY_RATE_SHARE``) is checked here too, so a bad value fails
    the DAG file's parse with its name before any run starts, as a bad timeout does.
    """
    history_rate_share()
    return {"pool": POOL_OF[lane].name, "execution_timeout": task_timeout()}


def daily_at(minute: int) -> CronTriggerTimetable:
    """A run every day at ``minute`` (after 00:00 UTC), triggered like ``@daily`` was.

    Airflow 3 reads ``schedule="@daily"`` as ``CronTriggerTimetable("@daily")``: a run at the
    cron time, whose logical date is that time and whose data interval is empty. The same
    timetable at another minute keeps everything but the time of day: no catch-up of missed days
    (``catchup=False`` on the DAG, and ``run_immediately`` left off as ``@daily`` had it), and
    nothing in the sync reads the logical date or the interval (it reads from watermarks).
    A built-in timetable, so the scheduler needs no plugin to deserialise it.
    """
    return CronTriggerTimetable(daily_cron(minute), timezone="UTC")
