"""Shared bench plumbing: scratch databases, a connected fake-Sage company, result lines."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sage_sync.core.config import warehouse_conn_json

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT / "plugins", ROOT):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

ADMIN_URL = os.environ.get("SAGE_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Result:
    name: str
    metric: str
    project: float
    baseline: float
    ratio: float
    target: str
    verdict: str
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"[{self.name}] {self.metric}: project {self.project:,.2f} vs baseline {self.baseline:,.2f} "
            f"-> ratio {self.ratio:.3f}; target {self.target}: {self.verdict}"
        )


@contextmanager
def scratch_db(prefix: str = "sage_bench") -> Iterator[str]:
    """A new, migrated database on the configured server, dropped afterwards (kept, and named on
    stderr, with SAGE_BENCH_KEEP_DB=1: to look at the plans of what the bench built)."""
    from sage_sync.warehouse.migrate import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    try:
        with psycopg.connect(dsn) as conn:
            migrate(conn)
        yield dsn
    finally:
        if os.environ.get("SAGE_BENCH_KEEP_DB") == "1":
            print(f"kept database {name} (SAGE_BENCH_KEEP_DB=1): drop it when done", file=sys.stderr)
        else:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def warehouse_env(dsn: str) -> dict[str, str]:
    return {"AIRFLOW_CONN_SAGE_WAREHOUSE": warehouse_conn_json(dsn)}


def ensure_fernet() -> None:
    if not os.environ.get("AIRFLOW__CORE__FERNET_KEY"):
        from cryptography.fernet import Fernet

        os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()


def connect_company(sage: Any, dsn: str, key: str) -> str:
    """Point the env at ``dsn`` and the fake, and connect business ``key`` through OAuth + PKCE."""
    ensure_fernet()
    os.environ.update(warehouse_env(dsn))
    os.environ["AIRFLOW_CONN_SAGE_DEFAULT"] = sage.airflow_conn_json()
    from sage_sync.core.config import sage_settings
    from sage_sync.core.quarters import Quarter
    from sage_sync.sage.auth import OAuthClient, new_pkce_pair
    from tests.helpers import connect_company as connect

    found = next(b for b in sage.admin.businesses() if b["key"] == key)
    verifier, challenge = new_pkce_pair()
    code = sage.authorize(login_hint=found["user"], code_challenge=challenge)
    tokens = OAuthClient(sage_settings()).exchange_code(code, code_verifier=verifier)
    # Synced From far back: a whole company's history is the initial sync being measured.
    connect(found["id"], found["name"], Quarter.parse("2000-Q1"), tokens)
    return found["id"]


class Timer:
    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started
