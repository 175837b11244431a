"""The companies a DAG parse builds for, read once per parse of a DAG file.

The registry read itself, with its snapshot for when the warehouse is unreachable, is
``warehouse.snapshot``'s; this module decides who asks for it. A task run builds only its own
DAG (``get_parsing_context()``), so it reads the registry only when that DAG is a company's.
"""

from __future__ import annotations

from airflow.sdk import get_parsing_context

from sage_sync.core.lanes import Lane, lane_of_company
from sage_sync.orchestration.airflow_api import DAG_ID_PREFIX, dag_id_for
from sage_sync.warehouse.snapshot import DagCompany, companies_for_dags


def companies_to_build() -> list[DagCompany]:
    """Every company when the scheduler parses; only the one being run when a task runs."""
    running = get_parsing_context().dag_id
    if running is not None and not running.startswith(DAG_ID_PREFIX):
        return []  # a task of another DAG: no registry read at all
    companies = companies_for_dags()
    return [c for c in companies if running is None or dag_id_for(c.company_id) == running]


def form_companies() -> list[DagCompany]:
    """The companies a trigger form offers; none in a task run (parsing context set), which skips
    the registry read and checks the request in the task instead."""
    return [] if get_parsing_context().dag_id is not None else companies_for_dags()


def lane_for(company: DagCompany) -> Lane:
    """The lane (``core.lanes``) of the company DAG's Sage tasks: history until a run has succeeded
    since the company was connected or last reset (its first sync, a full re-import), else daily.

    **Why at parse time.** Airflow fixes a task's pool in the DAG file, and writes it on each task
    instance when the run's instances are made; a retry keeps its instance's pool. So the pool is
    read from the registry at each parse (the query this parse makes anyway), not chosen by a
    branch task at run time: a branch would add a task run and a second copy of every Sage task to
    every company's DAG, the parse and CPU cost the deployment can least afford. This is correct
    as the runs go: the first run after a connect is made from a parse that saw no success yet
    (history); a first sync that ends mid-day is re-parsed within the dag-processor's interval,
    long before the next scheduled run (daily); the retries of a run keep its instances' pool.

    **Where it can lag.** A run made within one parse interval of the change reads the old lane's
    pool, e.g. the run a reset triggers at once from the Connect page (its instances take
    ``sage_api`` slots). Its Sage requests are still metered in the right lane: each task picks its
    bucket from the run itself (``warehouse.runs.lane_of``), which the parse rule mirrors, and says
    so in its log.
    """
    return lane_of_company(synced_since_reset=company.synced_since_reset)
