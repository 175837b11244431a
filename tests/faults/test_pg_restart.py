"""PostgreSQL restarted mid-run: the run fails cleanly (no hang), committed pages survive, one re-run heals.

The shared test server must never be restarted, so this module starts a throwaway cluster of its
own (``initdb`` into a temporary directory, a free port) and restarts *that* one from inside the
sync, between two ``purchase_invoices`` pages, while the sync's connections are open.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from faults.kit import (
    assert_warehouse_matches,
    assert_watermark_not_ahead,
    connect,
    expected,
    hook_pages,
    point_env_at,
    version_counts,
)
from faults.test_fault_scenarios import _airflow_like_run
from sage_sync.pipeline import sync
from sage_sync.warehouse import watermarks
from sage_sync.warehouse.migrate import migrate
from sandbox.fake_sage.server import FakeSageServer
from scripts.localpg import _as_postgres_user, _pg_bin

INVOICES = "/purchase_invoices"
RESTART_AFTER_PAGE = 2  # restart once two invoice pages are committed, before the third is loaded

pytestmark = pytest.mark.timeout(120)  # a sync hanging on a dead connection fails here, not forever


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster: its data directory, port and ``pg_ctl``."""

    pg_ctl: str
    data: Path
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_postgres_user([self.pg_ctl, "-D", str(self.data), *args]),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self) -> None:
        done = self._ctl(
            "-l",
            str(self.data / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        )
        assert done.returncode == 0, f"pg_ctl start failed: {done.stdout}{done.stderr}{self.log()}"

    def restart(self) -> None:
        """Fast shutdown (every backend is terminated, open transactions roll back), then start."""
        done = self._ctl("-l", str(self.data / "server.log"), "-w", "-t", "30", "-m", "fast", "restart")
        assert done.returncode == 0, f"pg_ctl restart failed: {done.stdout}{done.stderr}{self.log()}"

    def stop(self) -> None:
        self._ctl("-w", "-t", "30", "-m", "immediate", "stop")

    def log(self) -> str:
        path = self.data / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL's initdb/pg_ctl not found: cannot start a throwaway cluster to restart")
    root = Path(tempfile.mkdtemp(prefix="sage-pg-restart-"))
    data = root / "data"
    made = Cluster(pg_ctl=pg_ctl, data=data, port=_free_port())
    try:
        if os.geteuid() == 0:  # initdb refuses root; the helpers run it as the postgres account
            shutil.chown(root, "postgres")
        done = subprocess.run(
            _as_postgres_user([initdb, "-D", str(data), "--auth=trust", "-U", "postgres", "--no-sync"]),
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            pytest.skip(f"initdb could not create a throwaway cluster: {done.stderr.strip()[:500]}")
        made.start()
        yield made
    finally:
        made.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def restart_env(
    cluster: Cluster, sage: FakeSageServer, fernet_key: str, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> Iterator[str]:
    """A fresh, migrated warehouse on the throwaway cluster, env pointing at it; yields its DSN."""
    name = f"sage_restart_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(cluster.admin_url, dbname=name)
    with psycopg.connect(dsn) as conn:
        migrate(conn)
    sage.admin.reset()
    point_env_at(monkeypatch, dsn, sage)
    # The restart must fall exactly between two committed pages. With the read-ahead, the request
    # for page n + 1 (where the page hook fires) goes out while page n is still being loaded, so the
    # restart would land inside page n's transaction instead: a different scenario.
    monkeypatch.setenv("SAGE_READ_AHEAD_PAGES", "0")
    yield dsn
    with psycopg.connect(cluster.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@dataclass
class Restart:
    """What the hook saw: the invoice ids of the pages committed before the restart, and whether it fired."""

    before: set[str]
    fired: list[int]


def _restart_after_invoice_page(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Restart:
    """Restart the cluster, synchronously, once ``RESTART_AFTER_PAGE`` invoice pages are committed.

    The hook runs after the sync committed a page and asked for the next one, so the sync's open
    connection is killed under it and the next page's transaction is the first to notice.
    """
    seen = Restart(before=set(), fired=[])

    def after(path: str, index: int, page: Any) -> None:
        if path != INVOICES or seen.fired:
            return
        seen.before |= {item["id"] for item in page.items}
        if index == RESTART_AFTER_PAGE:
            cluster.restart()
            seen.fired.append(index)

    hook_pages(monkeypatch, after)
    return seen


def _runs(conn: psycopg.Connection, company: str) -> list[tuple[str, str, str | None]]:
    return conn.execute(
        "select sync_run_id, status, error from sage_control.sync_runs where company_id = %s order by started_at",
        (company,),
    ).fetchall()


def _assert_survivors(sage: FakeSageServer, conn: psycopg.Connection, company: str, restart: Restart) -> None:
    """What was committed before the restart is still there, and the watermark is not ahead of it."""
    loaded = version_counts(conn, "purchase_invoices", company)
    assert set(loaded) == restart.before  # every record of the committed pages, nothing of later ones
    assert len(loaded) < len(expected(sage, company, "purchase_invoices"))  # the restart cut the stream short
    assert version_counts(conn, "tax_rates", company)  # streams before it are committed
    assert version_counts(conn, "contacts", company)
    assert "purchase_credit_notes" not in watermarks.get_watermarks(conn, company)  # never reached
    assert_watermark_not_ahead(sage, conn, company, "purchase_invoices")


def _assert_healed(sage: FakeSageServer, conn: psycopg.Connection, company: str) -> None:
    assert_warehouse_matches(sage, conn, company)
    counts = version_counts(conn, "purchase_invoices", company)
    assert set(counts.values()) == {1}, "a re-read of the committed pages added versions"


def test_postgres_restarted_mid_run_fails_cleanly_and_one_rerun_heals(
    sage: FakeSageServer, restart_env: str, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    company = connect(sage)
    restart = _restart_after_invoice_page(cluster, monkeypatch)

    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as failure:  # AdminShutdown / "server closed the connection"
        sync.run_company(company)
    assert time.monotonic() - started < 60, "the run noticed the dead connection only after a long wait"
    assert restart.fired == [RESTART_AFTER_PAGE]

    with psycopg.connect(restart_env) as conn:  # the server is back: a new connection works
        _assert_survivors(sage, conn, company, restart)
        [(first_run, status, error)] = _runs(conn, company)
        # run_steps closed the audit row on a fresh connection: not left 'running'
        assert status == "failed", status
        assert error and str(failure.value)[:200] in error
        status_row = conn.execute(
            "select status from sage_control.companies where company_id = %s", (company,)
        ).fetchone()
        assert status_row[0] == "initial_sync"  # a failed first sync is retried, not given up on

    second_run = sync.run_company(company)  # the one re-run allowed (the hook fires once only)

    with psycopg.connect(restart_env) as conn:
        _assert_healed(sage, conn, company)
        assert _runs(conn, company) == [(first_run, "failed", error), (second_run, "success", None)]
        assert (
            conn.execute("select status from sage_control.companies where company_id = %s", (company,)).fetchone()[0]
            == "active"
        )


def test_postgres_restarted_mid_airflow_task_then_the_task_retry_heals(
    sage: FakeSageServer, restart_env: str, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DAG's steps without ``run_steps``' own failure handling: the row stays 'running' until the
    task's retry (same Airflow run id) re-opens it, and the stale row does not block that retry."""
    company = connect(sage)
    restart = _restart_after_invoice_page(cluster, monkeypatch)

    with pytest.raises(psycopg.OperationalError):
        _airflow_like_run(company, "scheduled__2026-11-27")
    assert restart.fired == [RESTART_AFTER_PAGE]

    with psycopg.connect(restart_env) as conn:
        _assert_survivors(sage, conn, company, restart)
        [(run_id, status, _error)] = _runs(conn, company)
        assert run_id == sync.run_key(company, "scheduled__2026-11-27")
        assert status == "running"  # nothing closed it: that is the DAG's mark-failed task's job

    _airflow_like_run(company, "scheduled__2026-11-27")  # the task's retry: same Airflow run

    with psycopg.connect(restart_env) as conn:
        _assert_healed(sage, conn, company)
        assert _runs(conn, company) == [(run_id, "success", None)]
