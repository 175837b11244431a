"""A page or report reads its marts in one snapshot, so its queries show one published build.

A build publishes every mart at once (dbt/macros/publish/), which a single statement always sees
whole; a page runs several queries, and each would take its own snapshot in READ COMMITTED: the
coverage of one build beside the exception lists of the next. The pages and the report read in
one read-only REPEATABLE READ transaction, and lock the marts they read before the first query,
so a publish that re-creates a view (a deploy) waits for them instead of swapping it underneath.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sage_sync.core.errors import ReportError
from sage_sync.lifecycle import inputs
from sage_sync.reporting import dashboard, report
from sage_sync.warehouse import marts


def _lock_holders(conn: psycopg.Connection, relation: str) -> set[int]:
    return {
        r[0]
        for r in conn.execute(
            "select pid from pg_locks where relation = to_regclass(%s) and mode = 'AccessShareLock' and granted",
            (relation,),
        )
    }


def test_reading_marts_together_is_one_read_only_repeatable_read_snapshot(
    warehouse: psycopg.Connection, pg_dsn: str
) -> None:
    warehouse.autocommit = True
    with inputs.warehouse(pg_dsn, marts=("rpt_sync_health",)) as conn:  # no marts yet: reads on
        assert conn.execute("show transaction_isolation").fetchone()[0] == "repeatable read"
        assert conn.execute("show transaction_read_only").fetchone()[0] == "on"
    warehouse.execute("create schema analytics")
    warehouse.execute("create view analytics.rpt_sync_health as select 1 as company_id")
    with inputs.warehouse(pg_dsn, marts=("rpt_sync_health",)) as conn:
        pid = conn.info.backend_pid
        assert pid in _lock_holders(warehouse, "analytics.rpt_sync_health")  # before any query
        companies = conn.execute("select count(*) from sage_control.companies").fetchone()[0]
        # one snapshot: a row committed meanwhile (a build publishing, say) is not seen by this read
        warehouse.execute(
            "insert into sage_control.companies (company_id, company_name, synced_from_quarter) "
            "values ('c2', 'Later', '2024-Q1')"
        )
        assert conn.execute("select count(*) from sage_control.companies").fetchone()[0] == companies
    # DDL is not snapshotted, which is why the marts are locked first: a publish re-creating a view
    # waits for the reader
    with (
        inputs.warehouse(pg_dsn, marts=("rpt_sync_health",)) as conn,
        psycopg.connect(pg_dsn, autocommit=True, options="-c lock_timeout=300") as publish,
    ):
        with pytest.raises(psycopg.errors.LockNotAvailable):
            publish.execute("create or replace view analytics.rpt_sync_health as select 2 as company_id")
        assert conn.execute("select company_id from analytics.rpt_sync_health").fetchone()[0] == 1


def test_the_pages_and_the_report_read_their_marts_together(
    warehouse: psycopg.Connection, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []
    real = inputs.warehouse

    @contextmanager
    def spy(dsn: str | None = None, **kwargs: Any) -> Iterator[psycopg.Connection]:
        with real(dsn, **kwargs) as conn:
            yield conn
            seen.append((conn.execute("show transaction_isolation").fetchone()[0], tuple(kwargs.get("marts", ()))))

    monkeypatch.setattr(dashboard, "warehouse", spy)
    monkeypatch.setattr(report, "warehouse", spy)
    warehouse.execute(
        "insert into sage_control.companies (company_id, company_name, synced_from_quarter) "
        "values ('b1aa', 'Greenleaf Bakery Ltd', '2024-Q1')"
    )
    warehouse.commit()
    dashboard.overview(dsn=pg_dsn)
    dashboard.company_page("b1aa", dsn=pg_dsn)
    with pytest.raises(ReportError):  # no marts built: the report refuses, after reading
        report.company_report("b1aa", tmp_path, dsn=pg_dsn)
    assert seen[:2] == [("repeatable read", marts.PAGE_MARTS)] * 2
    assert seen[2:] == [] or seen[2] == ("repeatable read", marts.REPORT_MARTS)
