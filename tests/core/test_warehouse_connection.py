"""The warehouse's Airflow connection is written from a DSN by one builder, and read back unchanged."""

from __future__ import annotations

import json

import pytest
from psycopg.conninfo import conninfo_to_dict

from sage_sync.core.config import warehouse_conn_json, warehouse_dsn


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port=5432 dbname=sage_warehouse user=postgres",
        "host=/var/run/postgresql port=5433 dbname='a b' user=u password='p\\'w' sslmode=require",
    ],
)
def test_the_connection_built_from_a_dsn_gives_the_same_dsn_back(monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_WAREHOUSE", warehouse_conn_json(dsn))
    assert conninfo_to_dict(warehouse_dsn()) == conninfo_to_dict(dsn)


def test_trust_auth_writes_no_password_key() -> None:
    conn = json.loads(warehouse_conn_json("host=127.0.0.1 dbname=w"))
    assert "password" not in conn
    assert conn == {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "w"}
