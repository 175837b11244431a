"""Every task that talks to Sage has a time limit (issue 22, item 8: paging without an end).

A server that never ends a list is stopped by the client's page cap; ``execution_timeout`` is the
backstop for whatever else could hold a task (and the deployment's shared request budget) for ever.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from sage_sync.core.config import warehouse_conn_json
from sage_sync.core.pools import POOL

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture
def dagbag(warehouse: psycopg.Connection, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from airflow.dag_processing.dagbag import DagBag

    warehouse.execute(
        "insert into sage_control.companies (company_id, company_name, synced_from_quarter) "
        "values ('b1aa', 'Greenleaf Bakery Ltd', '2024-Q1')"
    )
    warehouse.commit()
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_WAREHOUSE", warehouse_conn_json(pg_dsn))
    monkeypatch.setenv("SAGE_REGISTRY_SNAPSHOT", str(tmp_path / "companies.json"))
    monkeypatch.setenv("SAGE_TASK_TIMEOUT_HOURS", "5.5")
    return DagBag(dag_folder=str(DAGS), safe_mode=False)


def test_every_sage_task_of_the_sync_and_backfill_dags_has_the_timeout(dagbag) -> None:
    assert dagbag.import_errors == {}
    sage_tasks = [
        (dag_id, task)
        for dag_id in ("sage_sync__b1aa", "sage_backfill")
        for task in dagbag.dags[dag_id].tasks
        if task.pool == POOL
    ]
    assert len(sage_tasks) >= 2 + 2 + 4  # refresh_auth, extract_load, record_deletions; the backfill's
    for dag_id, task in sage_tasks:
        assert task.execution_timeout == timedelta(hours=5.5), f"{dag_id}.{task.task_id}"


def test_the_timeout_defaults_to_hours_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    from sage_sync.core import config
    from sage_sync.core.errors import ConfigError

    monkeypatch.delenv("SAGE_TASK_TIMEOUT_HOURS", raising=False)
    assert config.task_timeout() == timedelta(hours=12)  # a first sync of 1M records fits, shared budget and all
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv("SAGE_TASK_TIMEOUT_HOURS", bad)
        with pytest.raises(ConfigError, match="SAGE_TASK_TIMEOUT_HOURS"):
            config.task_timeout()
