"""Which companies get a daily DAG: every valid one in the registry, however many, whatever else is there.

The factory (the bottom of ``dags/sage_company_sync.py``) must never cap the registry silently
(a company past the cap stays ``initial_sync`` forever with no error anywhere), and one row
Airflow cannot take as a dag_id or tag must not take every other company's DAG down with it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from types import ModuleType

import psycopg
import pytest

from sage_sync.core.config import warehouse_conn_json
from sage_sync.orchestration.airflow_api import dag_id_for
from sage_sync.warehouse.snapshot import companies_for_dags

DAGS = Path(__file__).resolve().parents[2] / "dags"
MANY = 10_001

# Ids a registry row could hold that Airflow refuses as a dag_id (space, slash, other punctuation,
# non-ASCII, more than the tag's 100 characters) or that are unsafe in a URL path or a file name.
ODD_IDS = [
    "has space",
    "a/b",
    "../../etc/passwd",
    "x" * 93,
    "q?x=1#frag",
    "café",
    "dot.ted",
    "-leading-dash",
    "tab\tin",
    "",
]


@pytest.fixture
def registry_env(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The DAG files read the test warehouse; their snapshot goes to a temporary file."""
    snapshot = tmp_path / "companies.json"
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_WAREHOUSE", warehouse_conn_json(pg_dsn))
    monkeypatch.setenv("SAGE_REGISTRY_SNAPSHOT", str(snapshot))
    return snapshot


def _insert_companies(conn: psycopg.Connection, ids: list[str]) -> None:
    """Rows written straight into the table, as an old version or a hand-made insert could have."""
    with conn.cursor() as cur:
        cur.executemany(
            "insert into sage_control.companies (company_id, company_name, synced_from_quarter) "
            "values (%s, %s, '2024-Q1')",
            [(i, f"Company {i}") for i in ids],
        )
    conn.commit()


def _load_factory(monkeypatch: pytest.MonkeyPatch, parsing_dag_id: str | None) -> ModuleType:
    """Execute the DAG file as the DAG processor (no dag_id) or a task runner (its dag_id) would."""
    if parsing_dag_id is None:
        monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    else:
        monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", parsing_dag_id)
    spec = importlib.util.spec_from_file_location("sage_company_sync_under_test", DAGS / "sage_company_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ten_thousand_and_one_companies_all_get_a_dag(
    warehouse: psycopg.Connection, registry_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [f"{n:032x}" for n in range(MANY)]  # Sage-shaped: 32 hex characters
    warehouse.execute(
        "insert into sage_control.companies (company_id, company_name, synced_from_quarter) "
        "select lpad(to_hex(n), 32, '0'), 'Company ' || n, '2024-Q1' from generate_series(0, %s) n",
        (MANY - 1,),
    )
    warehouse.commit()

    assert [c.company_id for c in companies_for_dags()] == ids  # the registry read, in id order
    assert len(json.loads(registry_env.read_text())) == MANY  # and the snapshot an outage falls back on

    # A task of the last company (sorted last, so past any cap) builds its DAG ...
    last = dag_id_for(ids[-1])
    module = _load_factory(monkeypatch, last)
    assert isinstance(getattr(module, last, None), module.DAG)
    # ... and the scheduler's parse (no parsing context) asks for every company's DAG.
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID")
    assert {dag_id_for(c.company_id) for c in module._companies_to_build()} == {dag_id_for(i) for i in ids}


def test_an_odd_id_in_the_registry_is_skipped_with_the_reason_and_the_rest_parse(
    warehouse: psycopg.Connection, registry_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    good = ["b1aa", "0d40342d0287cd6b13555c54afca6c90", "biz-1", "co_2", "x" * 64]
    _insert_companies(warehouse, good + ODD_IDS)

    with caplog.at_level(logging.WARNING):
        bag = DagBag(dag_folder=str(DAGS), safe_mode=False)
    assert bag.import_errors == {}
    assert {d for d in bag.dags if d.startswith("sage_sync__")} == {dag_id_for(i) for i in good}
    # The backfill form offers the valid companies only: the others could not be synced anyway.
    assert bag.dags["sage_backfill"].params.get_param("company_id").schema["enum"] == sorted(good)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    for odd in ODD_IDS:
        assert any(repr(odd) in line for line in skipped), (odd, skipped)
    # The snapshot an outage falls back on never carries them either.
    assert {row["company_id"] for row in json.loads(registry_env.read_text())} == set(good)


def test_an_odd_id_in_an_old_snapshot_is_skipped_too(
    registry_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"company_id": i, "company_name": i, "status": "active", "synced_from_quarter": "2024-Q1"}
        for i in ["b1aa", "a/b", "has space"]
    ]
    registry_env.write_text(json.dumps(rows))
    monkeypatch.setenv(  # the warehouse is unreachable: the snapshot is what the parse has
        "AIRFLOW_CONN_SAGE_WAREHOUSE",
        warehouse_conn_json("host=127.0.0.1 port=1 user=postgres dbname=x"),
    )
    with caplog.at_level(logging.WARNING):
        assert [c.company_id for c in companies_for_dags()] == ["b1aa"]
    assert any("'a/b'" in r.getMessage() for r in caplog.records)
