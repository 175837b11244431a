"""
### dbt transform of the Sage warehouse

Runs the dbt project (`dbt/`) that deduplicates the raw versions, applies deletions and builds
the analyst models: one task, `dbt_build`, runs one `dbt build` of every seed, model and data
test (astronomer-cosmos' `DbtBuildLocalOperator`, in-process through dbt's runner). Its log lists each
model and test with its status and time, the first error at the end; dbt's `run_results.json` is
in the task's target folder. dbt connects through the Airflow connection `sage_warehouse`; a
connection without a password (trust or peer auth) is accepted.

**Why one task, not one per model.** Measured on the CeleryExecutor deployment (2 cores,
`tests/deployment`): a task per model paid dbt's import and project load in each task process,
about 60 s each against about 5 s of SQL; cosmos' watcher mode (one build plus a deferrable
sensor per model) still cost two task start-ups per model, 264 task runs and 1,830 task-seconds
for two transform runs, against 774 for the 169 sync tasks of 13 companies that day, and the
sensors held the worker slots the syncs need. One task costs one start-up and the build itself.
A retry re-runs the build, which is safe: every model is incremental or replaced in place.

**When it runs.** Whenever any company's sync lands new data (the `sage_raw` Asset), and in any
case once a day when the nightly window the company runs are spread over ends (06:00 UTC by
default; `SAGE_DAILY_WINDOW_START_HOUR` + `SAGE_DAILY_WINDOW_HOURS`). It starts unpaused, like the
company DAGs.

**No landed data waits for a human.** Airflow records an asset event for a paused DAG but queues
no run for it (`AssetManager.register_asset_change` only queues DAGs with `is_paused` false), so
unpausing it later starts nothing: the daily run is what catches up, and it would also catch an
event lost any other way. Catching up is complete because every incremental model takes its
watermark from what its own table already holds (macros `incremental_watermark`,
`incremental_latest_versions`), never from the time of the last run: after a paused, skipped or
failed transform, the next run builds everything that landed since the last successful build.

**Marts change together, when a build succeeded.** dbt builds the marts in the private schema
`sage_marts`; analysts and the pages read `analytics.<mart>`, views of the last PUBLISHED build.
The build publishes at its end, in one transaction, only if every model, seed and test it ran
succeeded (`dbt/macros/publish/`): during the build, and after a failed one, every reader sees the
previous build in every mart at once. A failed run's retry, or the next run, publishes.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable
from cosmos import ProfileConfig
from cosmos import settings as cosmos_settings
from cosmos.constants import InvocationMode
from cosmos.operators.local import DbtBuildLocalOperator
from cosmos.profiles import PostgresUserPasswordProfileMapping

from sage_sync.orchestration.airflow_api import TRANSFORM_DAG_ID
from sage_sync.orchestration.defaults import DEFAULT_ARGS, SAGE_RAW, START_DATE
from sage_sync.orchestration.notifier import SageNotifier
from sage_sync.orchestration.schedule import daily_cron, daily_window

DBT_PROJECT = Path(os.environ.get("SAGE_DBT_PROJECT_DIR", Path(__file__).resolve().parent.parent / "dbt"))
DBT_EXECUTABLE = os.environ.get("SAGE_DBT_EXECUTABLE", str(Path(sys.executable).parent / "dbt"))
DBT_THREADS = int(os.environ.get("SAGE_DBT_THREADS", "4"))  # as dbt/profiles.yml
# The time-based half of the schedule: when the window the company runs are spread over ends
# (sage_sync.orchestration.schedule; 06:00 UTC by default). By then every company without a start
# time of its own has been due, so the catch-up sees the night's syncs (each landing has already
# triggered a build through the Asset; this run is the backstop for an event that did not, and
# the daily check of every company). Not at the window's start: at midnight, with runs spread
# until 06:00, it would build before almost every sync of the night.
DAILY_CATCH_UP_CRON = daily_cron(daily_window().end_minute)

DAG_ARGS = {
    "dag_id": TRANSFORM_DAG_ID,
    "dag_display_name": "Sage transform (dbt)",
    "description": "Builds the analyst models from the raw Sage tables",
    "doc_md": __doc__,
    "schedule": AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(DAILY_CATCH_UP_CRON, timezone="UTC"), assets=[SAGE_RAW]
    ),
    "start_date": START_DATE,
    "catchup": False,
    "max_active_runs": 1,
    # Paused on creation, asset events would queue no run (see above) and new data would wait.
    "is_paused_upon_creation": False,
    # One retry after 2 minutes, without backoff: a build is safe to re-run and the daily run
    # catches up anyway. A failure reaches the notices through the DAG's callbacks below, which
    # check every company; a task notice would name no company.
    "default_args": {
        **DEFAULT_ARGS,
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 0,
        "on_failure_callback": None,
    },
    "tags": ["sage", "dbt", "transform"],
    # The daily check of every company (refused grants, first syncs past 24 h): this DAG runs at
    # least once a day whatever the company DAGs do, and a late first sync is the case where the
    # company's own DAG is stuck. Whichever way the build ends.
    "on_success_callback": SageNotifier("check_all"),
    "on_failure_callback": SageNotifier("check_all"),
}


class OptionalPasswordPostgresMapping(PostgresUserPasswordProfileMapping):
    """The dbt profile from the `sage_warehouse` connection, with the password optional.

    Cosmos' Postgres mapping requires one and fails every dbt task with "Could not find a value
    for secret field password" on a connection without it (trust or peer auth, as the CLI and
    the sync accept). Without one, dbt gets an empty password, which libpq ignores.
    """

    required_fields: ClassVar[list[str]] = ["host", "user", "dbname"]

    def get_dbt_value(self, name: str) -> Any:
        value = super().get_dbt_value(name)
        return "" if name == "password" and value is None else value

    @property
    def mock_profile(self) -> dict[str, Any]:
        return {**super().mock_profile, "password": "mock_value"}  # dbt-postgres requires the key


def _warehouse_profile_mapping() -> OptionalPasswordPostgresMapping:
    """The profile mapping of the build: the password optional, and dbt's threads."""
    # Cosmos writes threads: 1 into the profile it builds unless told otherwise: one model or test
    # at a time, 327 nodes in a row. On the deployment test's busy 2 cores the build after the
    # last sync took about 60 s (48 s of it dbt); with 4 threads and the partial parse, 35-45 s.
    return OptionalPasswordPostgresMapping(
        conn_id="sage_warehouse", profile_args={"schema": "analytics", "threads": DBT_THREADS}
    )


def _transform_dag() -> DAG:
    with DAG(**DAG_ARGS) as dag:  # noqa: AIR002 - schedule is in DAG_ARGS
        DbtBuildLocalOperator(
            task_id="dbt_build",
            task_display_name="dbt build (every seed, model and data test)",
            # dbt's unit tests check the SQL against fixed inputs, so they say the same thing every
            # day: CI runs them (tests/dbt), the daily build does not, as dbt advises. Measured: they
            # were 15 of the build's 361 nodes and about 11 of its 70 thread-seconds.
            exclude="test_type:unit",
            project_dir=str(DBT_PROJECT),
            profile_config=ProfileConfig(
                profile_name="sage_carbon",
                target_name="airflow",
                profile_mapping=_warehouse_profile_mapping(),
            ),
            dbt_executable_path=DBT_EXECUTABLE,
            invocation_mode=InvocationMode.DBT_RUNNER,
            install_deps=False,
            # Where cosmos keeps dbt's partial-parse file between runs. Each run builds in a fresh
            # copy of the project, and an operator outside a cosmos DbtDag has no cache dir of its
            # own: without one every run parsed the whole project again (about 6 s).
            cache_dir=cosmos_settings.cache_dir / TRANSFORM_DAG_ID,
            # The models are the product's tables, not Airflow assets: nothing is scheduled on them.
            emit_datasets=False,
        )
    return dag


sage_transform = _transform_dag()
