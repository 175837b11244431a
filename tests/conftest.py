"""Shared fixtures: a real, throwaway PostgreSQL database per test session.

The server comes from ``SAGE_TEST_PG_URL`` (set by ``make test`` to whatever server
``scripts/localpg.py`` found or started); a fresh database is created for the session and
dropped afterwards, so tests never touch a real warehouse.

``make test`` runs the suite in two pytest-xdist workers (one file stays on one worker). Each
worker is its own session, so it gets its own warehouse database from ``pg_dsn``; it also gets
its own copy of the migrated Airflow metadata DB (``pytest_configure`` below), so one worker's
``airflow dags test`` runs, and the tests that empty run tables, never see the other's.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from sage_sync.core.config import warehouse_conn_json
from sage_sync.warehouse.migrate import migrate

# dbt builds the production layout (schemas sage_staging, sage_intermediate, analytics: the names
# analysts read and the tests assert) into the session's throwaway database; see dbt/profiles.yml.
os.environ.setdefault("DBT_TARGET", "prod")

ADMIN_URL = os.environ.get("SAGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
METADATA_ENV = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
HOUSEKEEPING_METADATA_ENV = "SAGE_AIRFLOW_METADATA_DB_URL"  # sage_sync.orchestration.housekeeping
_WORKER_METADATA_DB = pytest.StashKey[str]()


def database_name(url: str) -> str:
    """The database of a libpq or SQLAlchemy (``postgresql+psycopg://``) URL."""
    return str(make_url(url).database)


def analyst_role(dsn: str) -> str:
    """The read-only role a dbt build of the warehouse at ``dsn`` grants its marts to (macro
    ``analyst_role``): ``SAGE_ANALYST_ROLE``, else ``analyst_<database>``."""
    return os.environ.get("SAGE_ANALYST_ROLE") or f"analyst_{psycopg.conninfo.conninfo_to_dict(dsn)['dbname']}"[:63]


def pytest_configure(config: pytest.Config) -> None:
    """Give an xdist worker its own metadata DB: a copy of the one ``make test`` migrated.

    Runs before any test module imports Airflow (Airflow reads the setting once, at import), and
    every subprocess the tests start inherits the changed environment."""
    worker, url = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(METADATA_ENV, "")
    # The housekeeping's own copy of the metadata URL follows the tests' one: .local/env.sh names
    # the checkout's development database there, which no test may clean.
    os.environ[HOUSEKEEPING_METADATA_ENV] = url
    # First syncs take the history lane's share of the Sage rate: a third of the default 12 a
    # second. The fake answers at once, so the suite's many first syncs would mostly wait on the
    # bucket (the suite once took 37 minutes so). The tests' Sage runs at 36 a second: first
    # syncs at 12, as before there was a lane. The budget's own tests set their rates.
    os.environ.setdefault("SAGE_RATE_LIMIT_PER_S", "36")
    if not worker or not url.startswith("postgresql"):
        return
    if "airflow.configuration" in sys.modules:
        raise pytest.UsageError("Airflow was imported before the worker's metadata DB was set")
    template = database_name(url)
    name = f"{template}_{worker}"
    create = sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(template))
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        for attempt in range(40):
            try:
                admin.execute(create)
                break
            except psycopg.errors.ObjectInUse:  # the other worker's copy is being made from it
                if attempt == 39:
                    raise
                time.sleep(0.5)
    config.stash[_WORKER_METADATA_DB] = name
    os.environ[METADATA_ENV] = url.replace(f"/{template}", f"/{name}", 1)
    os.environ[HOUSEKEEPING_METADATA_ENV] = os.environ[METADATA_ENV]
    if cache := os.environ.get("AIRFLOW__COSMOS__CACHE_DIR"):  # cosmos' dbt ls cache, per worker too
        os.environ["AIRFLOW__COSMOS__CACHE_DIR"] = str(Path(cache) / worker)


def pytest_unconfigure(config: pytest.Config) -> None:
    name = config.stash.get(_WORKER_METADATA_DB, None)
    if name is None:
        return
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a freshly created, migrated database, dropped at the end of the session."""
    name = f"sage_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    with psycopg.connect(dsn) as conn:
        migrate(conn)
    yield dsn
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def warehouse(pg_dsn: str) -> Iterator[psycopg.Connection]:
    """A connection to the test warehouse, emptied before each test."""
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "select quote_ident(schemaname) || '.' || quote_ident(tablename) from pg_tables "
            "where schemaname in ('sage_control', 'sage_raw')"
        ).fetchall()
        if rows:
            conn.execute("truncate " + ", ".join(r[0] for r in rows) + " restart identity cascade")
        # dbt's incremental tables outlive a truncated raw layer (in production raw is never
        # truncated): drop what dbt built so every test models from its own data only.
        conn.execute("drop schema if exists sage_staging, sage_intermediate, sage_marts, analytics cascade")
        conn.commit()
        yield conn


@pytest.fixture
def fernet_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh Fernet key in AIRFLOW__CORE__FERNET_KEY for the test."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", key)
    monkeypatch.delenv("SAGE_TOKEN_KEYS", raising=False)  # the pipeline's own keys win when set
    return key


@pytest.fixture
def airflow_env(
    sage: Any,
    pg_dsn: str,
    warehouse: psycopg.Connection,
    fernet_key: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> dict[str, str]:
    """The environment of the CLI, `airflow dags test` and dbt subprocesses, pointed at the test
    warehouse and the module's fake Sage (its own ``sage`` fixture), and set in this process too.
    Skips without Airflow's metadata DB."""
    if not os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        pytest.skip("needs Airflow's metadata DB: run with `. .local/env.sh` or through `make test`")
    sage.admin.reset()
    warehouse.autocommit = True  # dbt swaps the tables test reads touch: hold no lock across steps
    p = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    values = {
        "AIRFLOW_CONN_SAGE_WAREHOUSE": warehouse_conn_json(pg_dsn),
        "AIRFLOW_CONN_SAGE_DEFAULT": sage.airflow_conn_json(),
        "SAGE_PG_DBNAME": p["dbname"],
        "SAGE_REGISTRY_SNAPSHOT": str(tmp_path / "companies.json"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with Airflow runs and dbt builds first, then the other files with Airflow runs, then
    those with dbt builds, then the rest, each file's tests in their own order. xdist hands out
    whole files in this order: a long file collected last left one worker running it alone for
    minutes while the other sat idle (the browser test, unmarked, ran last in CI on 2026-12-08)."""

    def weight(item: pytest.Item) -> int:
        airflow, dbt = bool(item.get_closest_marker("airflow")), bool(item.get_closest_marker("dbt"))
        if item.get_closest_marker("cpu_bound"):
            return 1  # test_canonical_json's 4,500 examples, last in CI on 2026-12-08: 400 s of tail
        return 0 if airflow and dbt else 1 if airflow else 2 if dbt else 3

    rank: dict[str, int] = {}
    for item in items:
        rank[item.path.as_posix()] = min(rank.get(item.path.as_posix(), 3), weight(item))
    items.sort(key=lambda item: rank[item.path.as_posix()])  # stable: a file's tests keep their order
