"""A stream's task says where it stands: a real Airflow run (``dag.test``) against the fake Sage answering 503.

The company DAG's ``extract_load`` (and the backfill's stream tasks) carry
``records_stream_state``; here the same decorator wraps a task that reads one real stream with
the pipeline's own ``sync_stream``, in a DAG whose retry comes after seconds instead of minutes
(``airflow dags test``, a real task run with Airflow's retry).
Sage answers 503 until the client gives up: the first try records ``retrying`` with "Sage
answered 503" and the time Airflow's own rule gives for the next try; the second try reads the
stream and records ``done``. The company DAG is checked to wear the decorator.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from sandbox.fake_sage.server import FakeSageServer
from tests.faults.kit import connect

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=11, scale=0.1) as server:
        yield server


# The stream task of the company DAG, with a retry after seconds instead of minutes.
DAG_FILE = """
from datetime import datetime, timedelta
import os

from airflow.sdk import DAG, task

from sage_sync.orchestration.tasks import records_stream_state


@task(retries=1, retry_delay=timedelta(seconds=3))
@records_stream_state
def read(stream: str, sync_run_id: str, **context) -> dict:
    from sage_sync.pipeline import sync

    return sync.sync_stream(os.environ["STATES_COMPANY"], stream, sync_run_id)


with DAG(dag_id="test_stream_states", schedule=None, start_date=datetime(2026, 1, 1)):
    read("purchase_invoices", os.environ["STATES_RUN"])
"""


def _watch(dsn: str, run_id: str, seen: list[tuple], stop: threading.Event) -> None:
    """Every state the stream passes through, as a person refreshing the page would see it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(
                "select state, error, retry_at, try_number from sage_control.sync_stream_states "
                "where sync_run_id = %s and stream = 'purchase_invoices'",
                (run_id,),
            ).fetchone()
            if row and (not seen or seen[-1] != row):
                seen.append(row)
            time.sleep(0.05)


@pytest.mark.airflow
def test_a_stream_records_retrying_after_sages_503_then_done(
    sage: FakeSageServer, airflow_env: dict[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    from sage_sync.pipeline import sync

    company = connect(sage)
    run_id = sync.begin_run(company, airflow_run_id="manual__states", kind="daily")
    # Six 503s: the client's whole retry budget (Retry-After 0: at once), so the task's first try fails.
    sage.admin.add_fault("503", path="/purchase_invoices", count=6, retry_after=0)
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "stream_states_dag.py").write_text(DAG_FILE)
    env = {
        **airflow_env,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
        "STATES_COMPANY": company,
        "STATES_RUN": run_id,
    }
    seen: list[tuple] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(pg_dsn, run_id, seen, stop), daemon=True)
    watcher.start()
    try:
        done = subprocess.run(
            [str(BIN / "airflow"), "dags", "test", "test_stream_states"],
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )
    finally:
        time.sleep(0.3)
        stop.set()
        watcher.join(5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    states = [row[0] for row in seen]
    assert states[0] == "reading" and "retrying" in states and states[-1] == "done", seen
    retrying = next(row for row in seen if row[0] == "retrying")
    _, error, retry_at, try_number = retrying
    assert error == "Sage answered 503" and try_number == 1, retrying
    # Airflow's own rule: the failed try's end plus the retry delay (3 s here, no backoff).
    assert retry_at is not None and retry_at <= datetime.now(UTC), retrying
    assert datetime.now(UTC) - retry_at < timedelta(seconds=150), retrying
    last = seen[-1]
    assert last[1] is None and last[2] is None and last[3] == 2, last


def test_the_company_dag_and_the_backfill_record_their_streams_state() -> None:
    """The decorator sits on the tasks that read Sage (under the DAGs' own wrappers, over the body)."""
    for dag_file, task_name in (("sage_company_sync.py", "extract_load"), ("sage_backfill.py", "backfill")):
        source = (ROOT / "dags" / dag_file).read_text()
        decorators = source.split(f"def {task_name}(")[0].rsplit("@task(", 1)[1]
        assert "@records_stream_state" in decorators, dag_file
