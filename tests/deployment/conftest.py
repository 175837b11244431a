"""Fixtures of the deployment test: the scripted CeleryExecutor deployment over a fake Sage.

One deployment serves the whole module (starting it costs about a minute): its own metadata
database (copied from the migrated test one), its own warehouse database, its own Redis, and
7 fake-Sage companies connected through the real authorise + PKCE flow (VOLUMES).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from cryptography.fernet import Fernet
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sage_sync.core.config import warehouse_conn_json
from sage_sync.lifecycle import connections
from sage_sync.orchestration import airflow_api
from sage_sync.sage.auth import new_pkce_pair
from sage_sync.warehouse.migrate import migrate
from sandbox.fake_sage.server import FakeSageServer
from tests.conftest import database_name

ROOT = Path(__file__).resolve().parents[2]


def _load_script(name: str) -> ModuleType:
    """scripts/<name>.py by path: this test package is itself called `deployment`."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


deploy = _load_script("deployment")

ADMIN_URL = os.environ.get("SAGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SYNCED_FROM = "2024-Q1"  # faults.kit compares the raw layer over this window
# Each lane's pool (daily, history: core.lanes) below the task slots (2 workers x 3), so the pool is
# what bounds the Sage calls: day one's first syncs by the history pool, day two's runs by the daily.
POOL_SLOTS = 5
LARGE = "greenleaf"  # about 50 pages of invoices in its first sync
EUR = "atlantic"


def _shop(invoices: int) -> dict[str, int]:
    return {
        "purchase_invoices": invoices,
        "purchase_credit_notes": max(1, invoices // 10),
        "purchase_quick_entries": max(1, invoices // 4),
        "other_payments": max(1, invoices // 3),
    }


# 6 GBP companies of mixed sizes (one large) plus atlantic, whose base currency is EUR. Seven
# companies keep the pool full on day one (5 slots, at least 11 Sage-calling tasks a company); the 13 there were
# until 2026-12-08 added only task runs, and CPU is the deployment test's bound (about 340 task
# runs on 2 cores beside the rest of the suite; CI ran past its 25 minutes).
VOLUMES: dict[str, dict[str, int]] = {
    LARGE: {
        "purchase_invoices": 10000,
        "purchase_credit_notes": 60,
        "purchase_quick_entries": 120,
        "other_payments": 150,
    },
    "northwind": _shop(240),
    "harbour": _shop(60),
    EUR: _shop(120),
    "shop01": _shop(5),
    "shop05": _shop(45),  # day two edits it
    "shop09": _shop(180),  # day two disconnects it
}

# Test-only knobs (everything else is scripts/deploy_settings.py): a dead worker's task is failed
# after 20 s without a heartbeat instead of 120 s, and no retry waits more than 40 s (the product's
# are minutes). A task message lost with a SIGKILLed worker (taken off Redis, not yet in its
# unacked set: seen once, the task sat queued until Airflow's 10-minute task_queued_timeout
# re-sent it) is re-sent after 2 minutes instead. A backfill that finds its company's run slot
# taken looks again after 15 s (the product: 5 minutes).
OVERRIDES = {
    "SAGE_BACKFILL_SLOT_POKE_S": "15",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__CORE__MAX_TASK_RETRY_DELAY": "40",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "3",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "30",
}


def libpq_url(sqlalchemy_url: str) -> str:
    """``postgresql+psycopg://...`` (Airflow's form) as a libpq URL."""
    return "postgresql://" + sqlalchemy_url.split("://", 1)[1]


@dataclass
class Env:
    """What the tests need: the deployment, the fake, both databases, the company ids by key."""

    dep: Any  # scripts/deployment.py's Deployment
    sage: FakeSageServer
    warehouse_dsn: str
    metadata_dsn: str
    companies: dict[str, str]  # fake business key -> company id
    started_at: float

    def meta(self, query: str, params: Any = ()) -> list[tuple]:
        with psycopg.connect(self.metadata_dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []  # an update returns no rows

    def wh(self, query: str, params: Any = ()) -> list[tuple]:
        with psycopg.connect(self.warehouse_dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []  # an update returns no rows

    def dag_ids(self) -> list[str]:
        return [airflow_api.dag_id_for(c) for c in self.companies.values()]


def _create_db(name: str, template: str | None = None) -> bool:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        query = sql.SQL("create database {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(template))
        try:
            admin.execute(query)
        except psycopg.errors.ObjectInUse:  # someone is connected to the template: migrate instead
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
            return False
    return bool(template)


def _forget_other_runs(name: str) -> None:
    """Empty what the suite left in the copied metadata DB: its DAGs, runs, asset events and jobs.
    Left there, the deployment's scheduler went on with them (runs of companies that no longer
    exist, failing "Dag not found"; a transform run for an old asset event), taking worker slots."""
    dsn = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    with psycopg.connect(dsn) as conn:
        conn.execute("truncate dag_run, asset_event, asset_dag_run_queue, dag, job, log cascade")


def _drop_db(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def denv() -> Iterator[Env]:
    metadata_url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if not metadata_url.startswith("postgresql"):
        pytest.skip("needs Airflow's metadata DB on PostgreSQL: run through `make test`")
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is missing (the Celery broker): run scripts/ensure_redis.sh (as root)")
    began = time.monotonic()
    suffix = uuid.uuid4().hex[:8]
    warehouse_db, metadata_db = f"sage_deploy_wh_{suffix}", f"sage_deploy_meta_{suffix}"
    template = database_name(metadata_url)
    _create_db(warehouse_db)
    copied = _create_db(metadata_db, template)
    if copied:
        _forget_other_runs(metadata_db)
    warehouse_dsn = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=warehouse_db)
    with psycopg.connect(warehouse_dsn) as conn:
        migrate(conn)
    metadata_sa = metadata_url.replace(f"/{template}", f"/{metadata_db}")
    p = psycopg.conninfo.conninfo_to_dict(warehouse_dsn)
    # Under the checkout, not pytest's temporary folder: other pytest runs on the machine prune
    # that folder, and the state file is what stops the deployment's processes.
    state_dir = ROOT / ".local" / f"deploy-test-{suffix}"
    with FakeSageServer(seed=97, volumes=VOLUMES) as sage, pytest.MonkeyPatch.context() as mp:
        values = {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_sa,
            "AIRFLOW_CONN_SAGE_WAREHOUSE": warehouse_conn_json(
                make_conninfo(warehouse_dsn, dbname=warehouse_db, password=p.get("password") or "unused")
            ),
            "AIRFLOW_CONN_SAGE_DEFAULT": sage.airflow_conn_json(),
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "SAGE_PG_DBNAME": warehouse_db,
        }
        for key, value in values.items():
            mp.setenv(key, value)
        # Connecting from this process must not reach into an Airflow: the deployment parses the DAGs.
        mp.setattr(airflow_api, "set_dag_paused", lambda dag_id, *, paused, caller=None: False)
        dep = deploy.up(
            state_dir,
            workers=2,
            overrides={**values, **OVERRIDES},
            migrate=not copied,
            pool_slots=POOL_SLOTS,
            history_pool_slots=POOL_SLOTS,
        )
        try:
            env = Env(dep, sage, warehouse_dsn, libpq_url(metadata_sa), {}, began)
            print(f"deployment up: {time.monotonic() - began:.0f}s", flush=True)
            _unpause_transform(env)
            for key in VOLUMES:
                env.companies[key] = _connect(sage, key)
            print(f"deployment test set-up: {time.monotonic() - began:.0f}s", flush=True)
            yield env
        finally:
            deploy.down(state_dir)
            print(f"deployment test total: {time.monotonic() - began:.0f}s", flush=True)
    _drop_db(warehouse_db)
    _drop_db(metadata_db)


def _connect(sage: FakeSageServer, key: str) -> str:
    """Authorise Access (PKCE) at the fake, exchange the code and register: what `connect` does."""
    business = next(b for b in sage.admin.businesses() if b["key"] == key)
    verifier, challenge = new_pkce_pair()
    code = sage.authorize(login_hint=business["user"], code_challenge=challenge)
    connections.connect(code, verifier, business["id"], SYNCED_FROM)
    return business["id"]


def _unpause_transform(env: Env, timeout: float = 120.0) -> None:
    """sage_transform must be unpaused before the first sync lands (Airflow drops asset events for a
    paused DAG); done here explicitly so the test holds whatever its paused-at-creation default is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # What `airflow dags unpause` does, without its 10 s of start-up.
        if env.meta("update dag set is_paused = false where dag_id = 'sage_transform' returning dag_id"):
            return
        time.sleep(1)
    raise AssertionError("sage_transform was never parsed by the deployment's dag-processor")
