"""
### Sage backfill: move a company's Synced From earlier

Triggered (by the Sage connections page, by `python -m sage_sync set-synced-from`, or by hand
from this trigger form) with conf `{"company_id": "...", "synced_from": "YYYY-Qn"}`. The quarters
offered and accepted are the one Synced From policy of the page and the CLI: earlier than the
company's own, not before six years back.

**Why this form asks for no re-authorisation.** The page and the CLI have a user of the business
authorise access again before Synced From moves, as Sage's own product does: a person of the
business agrees to share older books. This form is for an Airflow operator (DAG edit rights)
acting on the grant the company already gave, whose read-only scope covers documents of every
date; when the business should confirm, use Move Synced From on the Sage connections page.

1. `validate` refuses, before anything changes, an unknown company, a malformed quarter, or a
   quarter that is not earlier than the company's current Synced From; then it takes the
   company's run slot, so the daily run and a backfill of one company never import at once
   (a backfill that finds the slot taken waits: it looks again every few minutes, for up to a
   day, without holding a worker; a daily run that finds it taken fails and Airflow retries it).
2. `backfill_<stream>` reads every document dated from the new quarter up to the day before
   the current Synced From. Unchanged documents add nothing (same single version, same
   first-seen time); watermarks are not touched.
3. `finish` moves Synced From and logs `synced_from_moved`, in one transaction, only when every
   stream succeeded. A failed backfill changes no Synced From and can simply be run again.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from airflow.sdk import DAG, PokeReturnValue, task
from airflow.sdk.exceptions import AirflowFailException

from sage_sync.orchestration import backfill_form
from sage_sync.orchestration.airflow_api import BACKFILL_DAG_ID, BACKFILL_TASK_PREFIX, backfill_streams
from sage_sync.orchestration.defaults import DEFAULT_ARGS, HISTORY, SAGE_RAW, START_DATE, sage_task_args
from sage_sync.orchestration.notifier import SageNotifier
from sage_sync.orchestration.tasks import fails_fast_on_refused_grant, records_stream_state

# Only `orchestration` is imported to parse this file; each task imports the pipeline (and
# `validate` the use cases) in its body, so a parse never loads the sync stack.

log = logging.getLogger(__name__)


# While another run holds the company (its daily run, a reset, a manual sync), `validate` looks
# again every SLOT_POKE_S seconds, for up to SLOT_WAIT, and holds no worker slot in between
# (reschedule mode). Three retries gave up after 30 minutes and lost the request.
SLOT_WAIT = timedelta(hours=24)
SLOT_POKE_S = float(os.environ.get("SAGE_BACKFILL_SLOT_POKE_S", "300"))


@task.sensor(
    poke_interval=SLOT_POKE_S,
    timeout=SLOT_WAIT.total_seconds(),
    mode="reschedule",
    retries=2,
    retry_delay=timedelta(minutes=1),
)
def validate(**context) -> PokeReturnValue:
    """Refuse a bad request before anything changes, then open the backfill run once the company's
    run slot is free."""
    from sage_sync.lifecycle import connections as lifecycle
    from sage_sync.pipeline import sync

    params = context["params"]
    try:
        lifecycle.prepare_backfill(params["company_id"], params["synced_from"])
    except lifecycle.LifecycleError as exc:
        # A bad request: retrying can't help. One line that says what to pick, no traceback chain.
        message = f"Synced From not moved to {params['synced_from']}: {exc}"
        log.error("%s", message)
        raise AirflowFailException(message) from None
    try:
        run = sync.begin_run(params["company_id"], airflow_run_id=context["run_id"], kind="backfill")
    except sync.RunInProgress as exc:
        log.info("%s; looking again in %.0f s", exc, SLOT_POKE_S)
        return PokeReturnValue(is_done=False)
    except sync.RunFenced as exc:  # this request predates a reset or disconnect: ask again
        log.error("%s", exc)
        raise AirflowFailException(str(exc)) from None
    return PokeReturnValue(is_done=True, xcom_value=run)


# Every task that talks to Sage takes a slot of the history lane's pool (a backfill reads years of
# documents: it must not hold the daily runs' slots) and stops after SAGE_TASK_TIMEOUT_HOURS.
SAGE_TASK = sage_task_args(HISTORY)


@task(**SAGE_TASK)
@fails_fast_on_refused_grant
def refresh_auth(sync_run_id: str, **context) -> None:
    """Make sure the grant is alive before reading Sage."""
    from sage_sync.pipeline import sync

    sync.check_auth(context["params"]["company_id"], sync_run_id)


@task(**SAGE_TASK)
@fails_fast_on_refused_grant
@records_stream_state  # where the stream stands, for the pages
def backfill(stream: str, sync_run_id: str, **context) -> dict:
    """Read one document stream's older window into sage_raw (new versions only)."""
    from sage_sync.pipeline import sync

    params = context["params"]
    return sync.backfill_stream(params["company_id"], stream, sync_run_id, params["synced_from"])


@task(outlets=[SAGE_RAW])
@fails_fast_on_refused_grant
def finish(sync_run_id: str, **context) -> None:
    """Close the run and move Synced From in one transaction; the outlet schedules the transform.

    A run closed meanwhile is not turned into a success (RunFenced, without retries)."""
    from sage_sync.pipeline import sync

    params = context["params"]
    sync.finish_backfill(params["company_id"], sync_run_id, params["synced_from"])


@task(trigger_rule="one_failed", retries=0)
def record_failure(**context) -> None:
    """Close the run as failed; Synced From stays where it was."""
    from sage_sync.pipeline import sync

    params = context["params"]
    sync.finish_run(
        params["company_id"],
        sync.run_key(params["company_id"], context["run_id"]),
        status="failed",
        error="a task of this backfill failed; see its log in Airflow",
    )


with DAG(
    dag_id=BACKFILL_DAG_ID,
    dag_display_name="Sage backfill: move Synced From earlier",
    description="Imports a company's older documents and moves its Synced From earlier",
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # backfills are rare and heavy: one at a time, whatever the company
    # Paused, a run triggered from Airflow's own form or `airflow dags trigger` would wait queued
    # for a human (the Connections page and the CLI unpause it first; nothing else does).
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,  # a task's last failed try: one notice per backfill
    on_success_callback=SageNotifier("run_succeeded"),
    on_failure_callback=SageNotifier("run_failed"),
    tags=["sage", "backfill"],
    params=backfill_form.params(),
) as dag:
    run_id = validate()
    auth = refresh_auth(run_id)
    loads = [
        backfill.override(task_id=f"{BACKFILL_TASK_PREFIX}{stream}")(stream, run_id) for stream in backfill_streams()
    ]
    done = finish(run_id)
    failed = record_failure()
    auth >> loads  # type: ignore[operator]
    loads >> done  # type: ignore[operator]
    [run_id, auth, *loads] >> failed  # type: ignore[operator]
