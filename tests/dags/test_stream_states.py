"""Each stream says where it stands: a real Airflow run (``airflow dags test``) of the company DAG's
own ``sync`` task against the fake Sage answering 503 for one stream.

The test DAG holds the company DAG's ``sync`` task itself (imported from ``dags/``), with a retry
after seconds instead of minutes. Sage answers 503 to the purchase invoices until the client gives
up: the first try reads every other stream to the end (each ``done``), records the invoices
``retrying`` with "Sage answered 503" and the time Airflow's own rule gives for the next try, and
fails; the second try resumes: it reads only the invoices (``done``), then the deletions, and
closes the run as a success. The backfill's stream tasks wear ``records_stream_state``.
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


# The company DAG's own sync task, with a retry after seconds instead of minutes.
DAG_FILE = """
import os
import sys
from datetime import datetime, timedelta

from airflow.sdk import DAG

sys.path.insert(0, os.environ["STATES_DAGS"])
from sage_company_sync import sync  # noqa: E402

with DAG(dag_id="test_stream_states", schedule=None, start_date=datetime(2026, 1, 1)):
    sync.override(retries=1, retry_delay=timedelta(seconds=3), retry_exponential_backoff=False)(
        os.environ["STATES_COMPANY"]
    )
"""


def _watch(dsn: str, company: str, seen: dict[str, list[tuple]], stop: threading.Event) -> None:
    """Every state each stream of the company's run passes through, as a person refreshing the page would see it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            rows = conn.execute(
                "select s.stream, s.state, s.error, s.retry_at, s.try_number "
                "from sage_control.sync_stream_states s join sage_control.sync_runs r using (sync_run_id) "
                "where r.company_id = %s",
                (company,),
            ).fetchall()
            for stream, *row in rows:
                states = seen.setdefault(stream, [])
                if not states or states[-1] != tuple(row):
                    states.append(tuple(row))
            time.sleep(0.05)


@pytest.mark.airflow
def test_a_stream_records_retrying_after_sages_503_and_the_retry_resumes(
    sage: FakeSageServer, airflow_env: dict[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    from sage_sync.sage.streams import STREAMS

    company = connect(sage)
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
        "STATES_DAGS": str(ROOT / "dags"),
    }
    seen: dict[str, list[tuple]] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(pg_dsn, company, seen, stop), daemon=True)
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
    invoices = seen["purchase_invoices"]
    states = [row[0] for row in invoices]
    assert states[0] == "reading" and "retrying" in states and states[-1] == "done", invoices
    retrying = next(row for row in invoices if row[0] == "retrying" and row[2] is not None)
    _, error, retry_at, try_number = retrying
    assert error == "Sage answered 503" and try_number == 1, retrying
    # Airflow's own rule: the failed try's end plus the retry delay (3 s here, no backoff).
    assert retry_at <= datetime.now(UTC), retrying
    assert datetime.now(UTC) - retry_at < timedelta(seconds=150), retrying
    last = invoices[-1]
    assert last[1] is None and last[2] is None and last[3] == 2, last
    # Every other stream was read to the end by the first try, and the retry did not read it again.
    others = {name: rows for name, rows in seen.items() if name != "purchase_invoices"}
    assert set(others) == set(STREAMS) - {"purchase_invoices"}, seen
    for name, rows in others.items():
        assert rows[-1] == ("done", None, None, 1) and {r[3] for r in rows} == {1}, (name, rows)
    with psycopg.connect(pg_dsn) as conn:
        status, stats = conn.execute(
            "select status, stats from sage_control.sync_runs where company_id = %s", (company,)
        ).fetchone()
    assert status == "success"
    assert stats["purchase_invoices"]["versions_added"] > 0, stats


def test_the_backfill_records_its_streams_state() -> None:
    """The decorator sits on the backfill's tasks that read Sage (under the DAG's own wrappers, over the body)."""
    source = (ROOT / "dags" / "sage_backfill.py").read_text()
    decorators = source.split("def backfill(")[0].rsplit("@task(", 1)[1]
    assert "@records_stream_state" in decorators
