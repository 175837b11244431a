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
from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param, PokeReturnValue, get_parsing_context, task
from airflow.sdk.exceptions import AirflowFailException

from sage_sync.core.config import task_timeout
from sage_sync.core.quarters import QUARTER_PATTERN, SYNCED_FROM, Quarter
from sage_sync.lifecycle.airflow_api import (
    BACKFILL_DAG_ID,
    POOL,
    fails_fast_on_refused_grant,
    records_stream_state,
    sage_raw_asset,
)
from sage_sync.lifecycle.notifier import SageNotifier
from sage_sync.sage.streams import DOCUMENT_STREAMS
from sage_sync.warehouse.snapshot import DagCompany, companies_for_dags

log = logging.getLogger(__name__)


def _form_companies() -> list[DagCompany]:
    # The lists are for the trigger form; a task run (parsing context set) skips the registry
    # read and checks the request in `validate` instead.
    return [] if get_parsing_context().dag_id is not None else companies_for_dags()


def valid_quarters(companies: list[DagCompany], today: datetime | None = None) -> list[str]:
    """Every quarter some company may move Synced From to (the one policy, ``SYNCED_FROM``: earlier
    than its own, not before the floor), latest first.

    One list for the whole form (a trigger form cannot make one field depend on another);
    `validate` refuses, in one line, a quarter that is not earlier than the chosen company's.
    """
    day = (today or datetime.now(UTC)).date()
    found = {q for c in companies for q in SYNCED_FROM.earlier_quarters(c.synced_from, day)}
    return [str(q) for q in sorted(found, reverse=True)]


def _quarter_param(companies: list[DagCompany]) -> Param:
    description = (
        "A quarter earlier than the company's current Synced From (shown beside the company), not "
        "before six years back; documents dated from its first day are imported. Uses the grant the "
        "company already gave (no re-authorisation: use the Sage connections page for that)"
    )
    quarters = valid_quarters(companies)
    if not quarters:  # no company (yet), or none that may move: free text, checked by `validate`
        return Param(
            str(Quarter.containing(datetime.now(UTC).date()).previous()),
            type="string",
            pattern=f"^{QUARTER_PATTERN}$",
            title="New Synced From",
            description=description,
        )
    # The default is the latest quarter the default company may move to, when it may move at all.
    own = SYNCED_FROM.earlier_quarters(companies[0].synced_from, datetime.now(UTC).date())
    default = str(own[0]) if own else quarters[0]
    return Param(
        default,
        type="string",
        enum=quarters,
        title="New Synced From",
        description=description,
        values_display={q: f"{q} (from {Quarter.parse(q).start_date:%-d %b %Y})" for q in quarters},
    )


def _company_param(companies: list[DagCompany]) -> Param:
    if not companies:
        # No registry (yet): a free-text id, checked by `validate` at run time.
        return Param(
            "",
            type="string",
            minLength=1,
            title="Company",
            description="Sage business id of a connected company (none is connected yet)",
        )
    return Param(
        companies[0].company_id,
        type="string",
        title="Company",
        enum=[c.company_id for c in companies],
        values_display={
            c.company_id: f"{c.company_name} ({c.status}, from {c.synced_from_quarter})" for c in companies
        },
        description="The connected company whose Synced From moves earlier",
    )


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
    from sage_sync.lifecycle import connections as lifecycle  # noqa: PLC0415 - keep DAG parsing free of the sync stack
    from sage_sync.pipeline import sync  # noqa: PLC0415

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


# Every task that talks to Sage stops after SAGE_TASK_TIMEOUT_HOURS (default 12).
SAGE_TASK_TIMEOUT = task_timeout()


@task(pool=POOL, execution_timeout=SAGE_TASK_TIMEOUT)
@fails_fast_on_refused_grant
def refresh_auth(sync_run_id: str, **context) -> None:
    """Make sure the grant is alive before reading Sage."""
    from sage_sync.pipeline import sync  # noqa: PLC0415

    sync.check_auth(context["params"]["company_id"], sync_run_id)


@task(pool=POOL, execution_timeout=SAGE_TASK_TIMEOUT)
@fails_fast_on_refused_grant
@records_stream_state  # where the stream stands, for the pages
def backfill(stream: str, sync_run_id: str, **context) -> dict:
    """Read one document stream's older window into sage_raw (new versions only)."""
    from sage_sync.pipeline import sync  # noqa: PLC0415

    params = context["params"]
    return sync.backfill_stream(params["company_id"], stream, sync_run_id, params["synced_from"])


@task(outlets=[sage_raw_asset()])
@fails_fast_on_refused_grant
def finish(sync_run_id: str, **context) -> None:
    """Close the run and move Synced From in one transaction; the outlet schedules the transform.

    A run closed meanwhile is not turned into a success (RunFenced, without retries)."""
    from sage_sync.pipeline import sync  # noqa: PLC0415

    params = context["params"]
    sync.finish_backfill(params["company_id"], sync_run_id, params["synced_from"])


@task(trigger_rule="one_failed", retries=0)
def record_failure(**context) -> None:
    """Close the run as failed; Synced From stays where it was."""
    from sage_sync.pipeline import sync  # noqa: PLC0415

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
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,  # backfills are rare and heavy: one at a time, whatever the company
    # Paused, a run triggered from Airflow's own form or `airflow dags trigger` would wait queued
    # for a human (the Connections page and the CLI unpause it first; nothing else does).
    is_paused_upon_creation=False,
    default_args={
        "owner": "data-engineering",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "on_failure_callback": SageNotifier("task_failed"),  # a task's last try: one notice per backfill
    },
    on_success_callback=SageNotifier("run_succeeded"),
    on_failure_callback=SageNotifier("run_failed"),
    tags=["sage", "backfill"],
    params={
        "company_id": _company_param(_companies := _form_companies()),
        "synced_from": _quarter_param(_companies),
    },
) as dag:
    run_id = validate()
    auth = refresh_auth(run_id)
    loads = [backfill.override(task_id=f"backfill_{stream.name}")(stream.name, run_id) for stream in DOCUMENT_STREAMS]
    done = finish(run_id)
    failed = record_failure()
    auth >> loads  # type: ignore[operator]
    loads >> done  # type: ignore[operator]
    [run_id, auth, *loads] >> failed  # type: ignore[operator]
