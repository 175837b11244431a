"""The audit trail of sync runs (``sage_control.sync_runs``) and their per-stream counters.

Every write to ``sync_runs`` is in this module: opening a run (one running run per company),
adding counters, closing it, and closing a company's running runs when it is disconnected.

Counters are added by the page loader inside each page's transaction, so they always agree with the
rows that page committed (a rolled-back page also rolls back its counts). The addition is one
``UPDATE`` computing the new jsonb from the current row: under READ COMMITTED, concurrent updaters of
the same run queue on the row lock and each re-reads the row it waited for, so no increment is lost.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sage_sync.core.errors import RunInProgress, UnknownRunError

KINDS = frozenset({"daily", "backfill", "reset", "manual"})
FINAL_STATUSES = frozenset({"success", "failed", "skipped"})

# A 'running' run row whose process committed nothing for this long is taken to be dead (a worker
# killed mid-run never closes its row) and a new run of the company may take over.
STALE_RUN_AFTER = timedelta(hours=float(os.environ.get("SAGE_STALE_RUN_HOURS", "6")))

_COLUMNS = "sync_run_id, company_id, kind, status, started_at, ended_at, stats, error"


def start_run(conn: psycopg.Connection, company_id: str, kind: str, *, sync_run_id: str | None = None) -> str:
    """Record a ``running`` run and return its id; the caller commits.

    The id is a new uuid4 unless ``sync_run_id`` is given (e.g. derived from an Airflow run id so that
    every retry of that run shares one audit row): starting an existing run again sets it back to
    ``running`` and keeps its counters, which then also count the retry's work.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown sync run kind {kind!r}; expected one of {sorted(KINDS)}")
    row = conn.execute(
        "insert into sage_control.sync_runs as r (sync_run_id, company_id, kind) values (%s, %s, %s) "
        "on conflict (sync_run_id) do update set status = 'running', ended_at = null, error = null "
        "where r.company_id = excluded.company_id "
        "returning r.sync_run_id",
        (sync_run_id or str(uuid.uuid4()), company_id, kind),
    ).fetchone()
    if row is None:
        raise ValueError(f"sync run {sync_run_id!r} already exists for another company")
    return row[0]


def open_run(conn: psycopg.Connection, company_id: str, kind: str, *, sync_run_id: str | None = None) -> str:
    """Open a run of ``company_id`` unless another one is running; in the caller's transaction.

    Mutual exclusion of the daily run, a backfill, a reset and a manual sync is the partial
    unique index ``sync_runs_one_running`` (one 'running' row per company): it holds across
    Airflow tasks and processes, where a lock held by one process could not. A row left
    'running' by a process that died is closed as failed once it made no progress for
    ``STALE_RUN_AFTER``; a retry of the same run (same ``sync_run_id``) simply re-opens it.
    Raises :class:`RunInProgress` (Airflow retries the task later).
    """
    conn.execute(
        "update sage_control.sync_runs set status = 'failed', ended_at = now(), "
        "error = 'abandoned: no progress for ' || %(hours)s || ' h; taken over by a new run' "
        "where company_id = %(company)s and status = 'running' and sync_run_id is distinct from %(id)s "
        "and coalesce(last_progress_at, started_at) < now() - %(after)s",
        {
            "company": company_id,
            "id": sync_run_id,
            "after": STALE_RUN_AFTER,
            "hours": f"{STALE_RUN_AFTER.total_seconds() / 3600:g}",
        },
    )
    try:
        with conn.transaction():  # a savepoint: the violation must not abort the caller's transaction
            return start_run(conn, company_id, kind, sync_run_id=sync_run_id)
    except psycopg.errors.UniqueViolation:
        row = conn.execute(
            "select sync_run_id, kind, started_at from sage_control.sync_runs "
            "where company_id = %s and status = 'running'",
            (company_id,),
        ).fetchone()
        other = f"a {row[1]} run ({row[0]}, started {row[2]:%Y-%m-%d %H:%M} UTC)" if row else "another run"
        raise RunInProgress(
            f"{company_id}: {other} is still running; runs of one company never overlap, "
            f"so this {kind} run waits (retry later)"
        ) from None


def skip_running_runs(conn: psycopg.Connection, company_id: str, reason: str) -> None:
    """Close the company's running run (if any) as skipped with ``reason``; in the caller's transaction."""
    conn.execute(
        "update sage_control.sync_runs set status = 'skipped', ended_at = now(), "
        "error = %s where company_id = %s and status = 'running'",
        (reason, company_id),
    )


def add_stream_stats(
    conn: psycopg.Connection,
    sync_run_id: str,
    stream: str,
    *,
    total_reported: int | None = None,
    window_total: int | None = None,
    **counters: int,
) -> dict[str, int]:
    """Add ``counters`` (e.g. ``pages=1, rows_seen=200``) to ``stats[stream]``; set the two totals.

    ``total_reported`` is Sage's ``$total`` of the list the run read; ``window_total`` its
    ``$total`` of the whole synced window, counted after an incremental read (what the
    warehouse's current records must add up to). Both are set, not added.
    One statement, in the caller's transaction; returns the stream's counters after the update.
    """
    assigned = {
        name: value
        for name, value in (("total_reported", total_reported), ("window_total", window_total))
        if value is not None
    }
    for name, value in {**counters, **assigned}.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"counter {name!r} must be an int, got {type(value).__name__}")
    row = conn.execute(
        "update sage_control.sync_runs as r set stats = r.stats || jsonb_build_object("
        "  %(stream)s::text,"
        "  coalesce(r.stats -> %(stream)s, '{}'::jsonb)"
        "  || coalesce((select jsonb_object_agg("
        "                 c.key, coalesce((r.stats -> %(stream)s ->> c.key)::bigint, 0) + c.value::bigint)"
        "               from jsonb_each_text(%(added)s) as c (key, value)), '{}'::jsonb)"
        "  || %(assigned)s) "
        "where r.sync_run_id = %(id)s "
        "returning r.stats -> %(stream)s",
        {"stream": stream, "added": Jsonb(counters), "assigned": Jsonb(assigned), "id": sync_run_id},
    ).fetchone()
    if row is None:
        raise UnknownRunError(f"sync run {sync_run_id!r} does not exist")
    return dict(row[0])


def finish_run(conn: psycopg.Connection, sync_run_id: str, status: str, error: str | None = None) -> None:
    """Close the run with a final status (and the error text of a failure); in the caller's transaction.

    A run already closed as failed keeps its first reason (the task that failed wrote the specific
    one; the DAG's catch-all close only knows that some task failed).
    """
    if status not in FINAL_STATUSES:
        raise ValueError(f"unknown final run status {status!r}; expected one of {sorted(FINAL_STATUSES)}")
    cur = conn.execute(
        "update sage_control.sync_runs set status = %(status)s, ended_at = now(), error = case "
        "when %(status)s = 'failed' and status = 'failed' and error is not null then error else %(error)s end "
        "where sync_run_id = %(id)s",
        {"status": status, "error": error, "id": sync_run_id},
    )
    if cur.rowcount == 0:
        raise UnknownRunError(f"sync run {sync_run_id!r} does not exist")


def get_run(conn: psycopg.Connection, sync_run_id: str) -> dict[str, Any]:
    """The run's row as a dict (``stats`` decoded); raises :class:`UnknownRunError`."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"select {_COLUMNS} from sage_control.sync_runs where sync_run_id = %s", (sync_run_id,))
        row = cur.fetchone()
    if row is None:
        raise UnknownRunError(f"sync run {sync_run_id!r} does not exist")
    return row


def last_successful_run(
    conn: psycopg.Connection, company_id: str, kinds: Iterable[str] | None = None
) -> dict[str, Any] | None:
    """The company's most recently started successful run (optionally of ``kinds``), or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"select {_COLUMNS} from sage_control.sync_runs "
            "where company_id = %s and status = 'success' and (%s::text[] is null or kind = any(%s::text[])) "
            "order by started_at desc, ended_at desc nulls last limit 1",
            (company_id, None if kinds is None else list(kinds), None if kinds is None else list(kinds)),
        )
        return cur.fetchone()
