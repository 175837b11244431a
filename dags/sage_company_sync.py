"""
### Sage sync, one DAG per connected company

Generated from the company registry (`sage_control.companies`): a company connected through
the CLI or the Connect page gets its DAG `sage_sync__<company_id>` at the next parse, with no
restart. Each daily run is one task, `sync`: it checks the connection, refreshes the OAuth grant,
extracts every stream since its watermark into the append-only `sage_raw` tables, records
deletions, and then emits the `sage_raw` Asset that schedules `sage_transform` (dbt). Its log
has a progress line per page of each stream; the company page shows each stream's state. A
retry resumes where the failed try stopped. `record_failure` runs only when `sync` failed for good.

**When.** Once a day at the company's own minute: spread over the nightly window
(`SAGE_DAILY_WINDOW_START_HOUR`, `SAGE_DAILY_WINDOW_HOURS`; default 00:00-06:00 UTC) by a hash
of its id, unless a start time was set for it (`python -m sage_sync set-daily-start`). So
10,000 companies do not all become due at midnight. Missed days are not caught up; the next
run reads everything since the watermarks.

Nothing is ever written back to Sage. Re-running a run, or one of its tasks, adds no duplicate:
unchanged records add no version and watermarks only move with the rows they cover.
A company's Sage calls take the `sage_api` pool, or `sage_history` (and the history lane's share
of the Sage rate) until its first sync has succeeded: see `sage_sync.orchestration.companies.lane_for`.

A task run builds only its own company's DAG (`get_parsing_context()`), and the registry is read
once per parse of this file (a snapshot stands in when the warehouse is unreachable). Every
registered company gets its DAG, with no cap; one company whose row cannot make a DAG (an id
outside `sage_sync.core.ids`' rule) is skipped with a logged reason, and the others still parse.
"""

from __future__ import annotations

import logging

from airflow.sdk import DAG, task

from sage_sync.orchestration.airflow_api import dag_id_for
from sage_sync.orchestration.companies import companies_to_build as _companies_to_build
from sage_sync.orchestration.companies import lane_for
from sage_sync.orchestration.defaults import DEFAULT_ARGS, SAGE_RAW, START_DATE, daily_at, sage_task_args
from sage_sync.orchestration.notifier import SageNotifier, report_run_succeeded
from sage_sync.orchestration.schedule import daily_start_minute, daily_window
from sage_sync.orchestration.tasks import retry_times, skips_disconnected, stream_state

# Only `orchestration` is imported to parse this file; each task imports the pipeline in its
# body, so a parse never loads the sync stack.

log = logging.getLogger(__name__)

default_args = {
    **DEFAULT_ARGS,
    # The scheduler queues syncs before the transform when both wait for an executor slot: every
    # company's landing is short, the transform's dbt build is long (35-60 s on 2 busy cores, see
    # bench/RESULTS.md), and the transform runs again on the Asset anyway. What is already in the
    # Celery queue still runs first-in first-out; a queue of its own for the dbt task would keep
    # it off the sync workers entirely.
    "priority_weight": 100,
    "weight_rule": "absolute",
}
# Every task that talks to Sage takes a slot of the Sage pool and stops after SAGE_TASK_TIMEOUT_HOURS.
SAGE_TASK = sage_task_args()


# One task reads everything, rather than a task per step and per stream: a task run costs the
# deployment about 0.6 core-seconds whatever it does (its process, the scheduler's and the
# api-server's bookkeeping), and a small company's day is a request or two per stream
# (bench/RESULTS.md, issue 28). Each stream still says where it stands, on the pages and in this
# task's log, and a retry resumes where the failed try stopped.
@task(**SAGE_TASK, outlets=[SAGE_RAW])
@skips_disconnected
def sync(company_id: str, **context) -> None:
    """Open the run (skipped, with the reason, for a disconnected company), refresh the grant, read
    every stream since its watermark and Sage's deletions, then close the run as a success; the
    outlet tells sage_transform there is new data.

    A backfill or reset of the same company still running raises RunInProgress: the task fails and
    Airflow retries it later, so the two never import at once. A run closed meanwhile (a disconnect
    skipped it, a newer run took it over) is not turned into a success: RunFenced, without retries."""
    from sage_sync.pipeline import sync as pipeline

    ti = context["ti"]
    done = pipeline.resume_point(company_id, context["run_id"])
    sync_run_id = pipeline.begin_run(company_id, airflow_run_id=context["run_id"], kind="daily")
    with retry_times(sync_run_id, ti):
        pipeline.read_everything(
            company_id, sync_run_id, skip=done, watch=lambda stream: stream_state(sync_run_id, stream, ti)
        )
    pipeline.finish_run(company_id, sync_run_id, status="success")
    report_run_succeeded(company_id)  # closes the company's failed-run incident, if one is open


@task(trigger_rule="one_failed", retries=0)
def record_failure(company_id: str, **context) -> None:
    """Close the audit row as failed so `status` and the health model show it."""
    from sage_sync.pipeline import sync as pipeline

    # The run's id is derived, not read from XCom: `sync` may have failed before it opened the run.
    pipeline.finish_run(
        company_id,
        pipeline.run_key(company_id, context["run_id"]),
        status="failed",
        error="a task of this run failed; see its log in Airflow",
    )


def build_company_dag(company_id: str, company_name: str, start_minute: int, *, sage_task: dict | None = None) -> DAG:
    """The daily DAG of one company, due every day at ``start_minute`` (after 00:00 UTC); its Sage
    tasks take ``sage_task`` (their lane's pool and time limit)."""
    sage_task = sage_task or SAGE_TASK
    with DAG(
        dag_id=dag_id_for(company_id),
        dag_display_name=f"Sage sync: {company_name}",
        description=f"Daily one-way sync of {company_name}'s Sage spend into the warehouse",
        doc_md=__doc__,
        schedule=daily_at(start_minute),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        # Connecting a company asks for its daily sync: its DAG starts unpaused (Airflow's default
        # would leave it paused until someone finds it). A disconnect pauses it; that sticks.
        is_paused_upon_creation=False,
        default_args=default_args,
        # The run's failure is a backstop for one no task reported (and sends a notice a dead
        # webhook kept back). A success is reported by `sync` itself, not by a success callback:
        # Airflow runs a DAG's callbacks in the dag-processor, which parses this whole file (every
        # company's DAG) for each one, once per company a day (bench/RESULTS.md, issue 28).
        on_failure_callback=SageNotifier("run_failed"),
        tags=["sage", "sync", f"company:{company_id}"],
    ) as dag:
        sync.override(**sage_task)(company_id) >> record_failure(company_id)  # type: ignore[operator]
    return dag


def _build_all() -> None:
    """One DAG per company, each on its own: a row that cannot make a DAG costs only its own."""
    # Read once per parse. A bad setting fails the file's import with its name, as a bad
    # SAGE_TASK_TIMEOUT_HOURS does: a guessed window would move every company's run unnoticed.
    window = daily_window()
    for company in _companies_to_build():
        try:
            start = daily_start_minute(company.company_id, company.daily_start_minute, window)
            globals()[dag_id_for(company.company_id)] = build_company_dag(
                company.company_id, company.company_name, start, sage_task=sage_task_args(lane_for(company))
            )
        except Exception:  # an import error here would drop every company's DAG
            log.exception("company %r skipped: its DAG could not be built", company.company_id)


_build_all()
