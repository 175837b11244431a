"""
### Airflow metadata housekeeping

Deletes Airflow's own records (dag runs, task instances, XComs, task-instance history, the audit
log, jobs, ...) older than `SAGE_AIRFLOW_RETENTION_DAYS` (default 30, at least 7) with
`airflow db clean --skip-archive --yes`, so that 140,000 task instances a day at 10,000
companies do not grow the metadata database without bound. Each DAG's latest scheduled run and
the `dag` table are kept; the warehouse (the product's data, run history and progress) is not
touched. What is kept and why: `sage_sync.orchestration.housekeeping`.

**When.** Daily, two hours after the nightly window of the company runs ends (08:00 UTC by
default), so its deletes do not compete with the night's syncs.

**Needs** `SAGE_AIRFLOW_METADATA_DB_URL` on the workers (the metadata DB's SQLAlchemy URL, as
`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`): Airflow 3 keeps tasks out of the metadata database, so
this task is given it explicitly. Without it, or with a bad retention, the task fails and says
which setting.
"""

from __future__ import annotations

from airflow.sdk import DAG, task

from sage_sync.orchestration.defaults import DEFAULT_ARGS, START_DATE, daily_at
from sage_sync.orchestration.housekeeping import HOUSEKEEPING_DAG_ID
from sage_sync.orchestration.schedule import daily_window, housekeeping_minute


@task
def clean_airflow_metadata() -> list[str]:
    """`airflow db clean` of what is older than the retention; returns the command it ran."""
    from sage_sync.orchestration import housekeeping

    return housekeeping.clean_airflow_metadata()


with DAG(
    dag_id=HOUSEKEEPING_DAG_ID,
    dag_display_name="Airflow metadata housekeeping",
    description="Deletes Airflow's run records older than SAGE_AIRFLOW_RETENTION_DAYS",
    doc_md=__doc__,
    schedule=daily_at(housekeeping_minute(daily_window())),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    # Unpaused: a deployment nobody remembered to unpause this in would grow without bound.
    is_paused_upon_creation=False,
    # A failure is about Airflow, not a company: the task's Sage notice would name none.
    default_args={**DEFAULT_ARGS, "on_failure_callback": None},
    tags=["sage", "maintenance"],
):
    clean_airflow_metadata()
