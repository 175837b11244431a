"""The companies a DAG parse builds for, read once per parse of a DAG file.

The registry read itself, with its snapshot for when the warehouse is unreachable, is
``warehouse.snapshot``'s; this module decides who asks for it. A task run builds only its own
DAG (``get_parsing_context()``), so it reads the registry only when that DAG is a company's.
"""

from __future__ import annotations

from airflow.sdk import get_parsing_context

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
