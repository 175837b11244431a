"""Under ``make test``'s xdist workers, each worker must run Airflow against its own metadata DB.

Tests empty Airflow's run tables and run ``airflow dags test``; on a shared metadata DB one
worker's cleanup would delete the other's running DAG run. ``tests/conftest.py`` copies the
migrated DB per worker; this proves the copy is what Airflow and its subprocesses use.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import ADMIN_URL, METADATA_ENV, database_name


@pytest.mark.skipif(not os.environ.get("PYTEST_XDIST_WORKER"), reason="one pytest process: one metadata DB")
def test_each_worker_has_its_own_migrated_metadata_db() -> None:
    worker = os.environ["PYTEST_XDIST_WORKER"]
    name = database_name(os.environ[METADATA_ENV])
    assert name.endswith(f"_{worker}")
    with psycopg.connect(ADMIN_URL.rsplit("/", 1)[0] + f"/{name}") as conn:
        assert conn.execute("select count(*) from alembic_version").fetchone()[0] == 1
    # a subprocess (as `airflow dags test` is) reads the same database
    probe = "from airflow.configuration import conf; print(conf.get('database', 'sql_alchemy_conn'))"
    seen = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert database_name(seen) == name
