"""Fixtures of the fault suite: one fake Sage per module (multi-page volumes), no real sleeping."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from faults.kit import point_env_at
from sandbox.fake_sage.server import FakeSageServer

# 1,000 invoices in greenleaf: about 2-3 pages of 200 inside Synced From (2024-Q1 on).
VOLUMES = {"greenleaf": {"purchase_invoices": 1000}}


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=11, volumes=VOLUMES) as server:
        yield server


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every retry delay the client and the OAuth client asked for, without waiting."""
    delays: list[float] = []
    monkeypatch.setattr("sage_sync.sage.client._sleep", delays.append)
    monkeypatch.setattr("sage_sync.sage.auth._sleep", delays.append)
    return delays


@pytest.fixture
def env(
    sage: FakeSageServer,
    warehouse: psycopg.Connection,
    pg_dsn: str,
    fernet_key: str,
    monkeypatch: pytest.MonkeyPatch,
    sleeps: list[float],
) -> psycopg.Connection:
    """A reset fake, an empty warehouse, env pointing at both; yields the warehouse connection."""
    sage.admin.reset()
    point_env_at(monkeypatch, pg_dsn, sage)
    return warehouse
