"""Every task that talks to Sage has a time limit (issue 22, item 8: paging without an end), and the
pool of its lane (``core.lanes``): history for a company whose first sync has not succeeded and for
the backfill, daily otherwise.

A server that never ends a list is stopped by the client's page cap; ``execution_timeout`` is the
backstop for whatever else could hold a task (and the deployment's shared request budget) for ever.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from sage_sync.core.config import warehouse_conn_json
from sage_sync.core.pools import POOLS, SAGE_API, SAGE_HISTORY

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture
def dagbag(warehouse: psycopg.Connection, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from airflow.dag_processing.dagbag import DagBag

    warehouse.execute(
        "insert into sage_control.companies (company_id, company_name, synced_from_quarter, status) "
        "values ('b1aa', 'Greenleaf Bakery Ltd', '2024-Q1', 'initial_sync'), "
        "('b2cc', 'Harbour Cafe Ltd', '2024-Q1', 'active')"
    )
    # b2cc's first sync has succeeded (so it is active); b1aa's has not begun.
    warehouse.execute(
        "insert into sage_control.sync_runs (sync_run_id, company_id, kind, status) "
        "values ('b2cc:first', 'b2cc', 'daily', 'success')"
    )
    warehouse.commit()
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_WAREHOUSE", warehouse_conn_json(pg_dsn))
    monkeypatch.setenv("SAGE_REGISTRY_SNAPSHOT", str(tmp_path / "companies.json"))
    monkeypatch.setenv("SAGE_TASK_TIMEOUT_HOURS", "5.5")
    return DagBag(dag_folder=str(DAGS), safe_mode=False)


SAGE_TASKS = {"sync"}  # the company DAG's task that calls Sage (record_failure does not)


def test_every_sage_task_of_the_sync_and_backfill_dags_has_the_timeout(dagbag) -> None:
    assert dagbag.import_errors == {}
    sage_tasks = [
        (dag_id, task)
        for dag_id in ("sage_sync__b1aa", "sage_sync__b2cc", "sage_backfill")
        for task in dagbag.dags[dag_id].tasks
        if task.pool in {p.name for p in POOLS}
    ]
    assert len(sage_tasks) == 1 + 1 + 5  # each company's sync; the backfill's refresh_auth and four streams
    for dag_id, task in sage_tasks:
        assert task.execution_timeout == timedelta(hours=5.5), f"{dag_id}.{task.task_id}"


def test_each_sage_task_takes_the_pool_of_its_lane(dagbag) -> None:
    """First sync not done: the history pool; done: the daily pool; the backfill: always history.
    The tasks that do not call Sage take no Sage pool."""
    first_sync, daily, backfill = (dagbag.dags[d] for d in ("sage_sync__b1aa", "sage_sync__b2cc", "sage_backfill"))
    for dag, pool in ((first_sync, SAGE_HISTORY.name), (daily, SAGE_API.name)):
        assert {t.task_id: t.pool for t in dag.tasks if t.task_id in SAGE_TASKS} == dict.fromkeys(SAGE_TASKS, pool)
        assert {t.pool for t in dag.tasks if t.task_id not in SAGE_TASKS} == {"default_pool"}
    reads = {
        t.task_id: t.pool for t in backfill.tasks if t.task_id == "refresh_auth" or t.task_id.startswith("backfill_")
    }
    assert len(reads) == 5 and set(reads.values()) == {SAGE_HISTORY.name}


def test_the_timeout_defaults_to_hours_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    from sage_sync.core import config
    from sage_sync.core.errors import ConfigError

    monkeypatch.delenv("SAGE_TASK_TIMEOUT_HOURS", raising=False)
    assert config.task_timeout() == timedelta(hours=12)  # a first sync of 1M records fits, shared budget and all
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv("SAGE_TASK_TIMEOUT_HOURS", bad)
        with pytest.raises(ConfigError, match="SAGE_TASK_TIMEOUT_HOURS"):
            config.task_timeout()
