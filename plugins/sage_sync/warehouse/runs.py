"""The audit trail of sync runs (``sage_control.sync_runs``), their per-stream counters, and the fence.

Every write to ``sync_runs`` is in this module: opening a run (one running run per company),
adding counters, closing it, and closing a company's running runs when it is disconnected.

Counters are added by the page loader inside each page's transaction, so they always agree with the
rows that page committed (a rolled-back page also rolls back its counts). The addition is one
``UPDATE`` computing the new jsonb from the current row: under READ COMMITTED, concurrent updaters of
the same run queue on the row lock and each re-reads the row it waited for, so no increment is lost.

**The fence.** A page's writes (raw rows, deletions, quarantine, watermark, counters) land only while
its run is the company's live run: ``running``, and opened in the company's current *generation*
(``companies.generation``, one more at every reset and disconnect). Every page transaction checks
that (:func:`fence`, also inside :func:`add_stream_stats`) under a ``FOR SHARE`` lock on the
company's row, held until it commits. Everything that ends a run's right to write (closing it,
taking over an abandoned one, re-opening one, a reset or a disconnect bumping the generation)
first takes the same row ``FOR NO KEY UPDATE``. So the two orders are the only ones possible:

* a page that passed the fence commits before the close, reset or disconnect proceeds (a reset
  then wipes that page too);
* a page arriving after it waits for it to commit, then finds its run closed or its generation
  old, raises :class:`RunFenced` and rolls back: nothing of it is kept.

The company row is always locked before a run row (same order everywhere: no deadlock between a
page and a close). Pages of one run take the shared lock together, so sibling streams still load
in parallel.
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

from sage_sync.core.errors import RunFenced, RunInProgress, UnknownCompanyError, UnknownRunError
from sage_sync.core.lanes import Lane, lane_of_run
from sage_sync.warehouse.reports import RUN_FLAGS_SQL

KINDS = frozenset({"daily", "backfill", "reset", "manual"})
FINAL_STATUSES = frozenset({"success", "failed", "skipped"})

# A 'running' run row whose process committed nothing for this long is taken to be dead (a worker
# killed mid-run never closes its row) and a new run of the company may take over.
STALE_RUN_AFTER = timedelta(hours=float(os.environ.get("SAGE_STALE_RUN_HOURS", "6")))

_COLUMNS = "sync_run_id, company_id, kind, status, started_at, ended_at, stats, error, generation"

# The fence's two reads, sent in one pipeline: the company row locked first, then (a later
# statement, so a fresh READ COMMITTED snapshot that sees whatever a closer committed while this
# one waited for the lock) the run as it is now.
_LOCK_COMPANY_OF_RUN = (
    "select generation from sage_control.companies "
    "where company_id = (select company_id from sage_control.sync_runs where sync_run_id = %s) "
)
_RUN_NOW = "select company_id, status, generation, error from sage_control.sync_runs where sync_run_id = %s"
_NOT_KEPT = "this write was rolled back and nothing of it kept"


def _one_line(text: str | None, limit: int = 300) -> str:
    words = " ".join((text or "").split())
    return words if len(words) <= limit else words[:limit] + "..."


def _lock_company(conn: psycopg.Connection, company_id: str) -> int:
    """Lock the company's row against every page of its runs (until the caller commits); its generation.

    ``FOR NO KEY UPDATE`` conflicts with the pages' ``FOR SHARE``: it waits for the pages in
    flight to commit, and holds off new ones until this transaction ends.
    """
    row = conn.execute(
        "select generation from sage_control.companies where company_id = %s for no key update", (company_id,)
    ).fetchone()
    if row is None:
        raise UnknownCompanyError(f"company {company_id!r} is not registered")
    return int(row[0])


def _why_fenced(company_generation: int, run: tuple[Any, ...]) -> str | None:
    """Why the run (``company_id, status, generation, error``) may not write now, or None when it may."""
    _, status, generation, error = run
    if status != "running":
        return f"it was closed as {status}" + (f" ({_one_line(error)})" if error else "")
    if generation != company_generation:
        return (
            f"the company was reset or disconnected since it opened (generation {generation}, now {company_generation})"
        )
    return None


def _fenced(sync_run_id: str, run: tuple[Any, ...], why: str, outcome: str = _NOT_KEPT) -> RunFenced:
    return RunFenced(
        f"sync run {sync_run_id} of {run[0]} is no longer the live run: {why}; {outcome}",
        sync_run_id=sync_run_id,
        run_status=run[1],
    )


def fence(conn: psycopg.Connection, sync_run_id: str, *, for_change: bool = False) -> str:
    """Check, in the caller's transaction, that ``sync_run_id`` may write now; its company id.

    Locks the company's row until the caller commits (``FOR SHARE``; ``for_change`` takes
    ``FOR NO KEY UPDATE`` for a transaction that then updates the company row itself), so no close,
    reset or disconnect can slip in between this check and the commit. Raises :class:`RunFenced`
    (the caller's transaction must then be rolled back) or :class:`UnknownRunError`.
    """
    lock = _LOCK_COMPANY_OF_RUN + ("for no key update" if for_change else "for share")
    with conn.pipeline():
        locked = conn.execute(lock, (sync_run_id,))
        current = conn.execute(_RUN_NOW, (sync_run_id,))
    company, run = locked.fetchone(), current.fetchone()
    if company is None or run is None:
        raise UnknownRunError(f"sync run {sync_run_id!r} does not exist")
    why = _why_fenced(company[0], run)
    if why is not None:
        raise _fenced(sync_run_id, run, why)
    return str(run[0])


def start_run(conn: psycopg.Connection, company_id: str, kind: str, *, sync_run_id: str | None = None) -> str:
    """Record a ``running`` run in the company's current generation and return its id; the caller commits.

    The id is a new uuid4 unless ``sync_run_id`` is given (e.g. derived from an Airflow run id so that
    every retry of that run shares one audit row): starting an existing run again sets it back to
    ``running`` and keeps its counters, which then also count the retry's work. A run opened before
    the company's last reset or disconnect is not re-opened (:class:`RunFenced`): an old Airflow run
    retried after a reset would otherwise write again beside the reset's re-import.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown sync run kind {kind!r}; expected one of {sorted(KINDS)}")
    generation = _lock_company(conn, company_id)
    run_id = sync_run_id or str(uuid.uuid4())
    row = conn.execute(
        "insert into sage_control.sync_runs as r (sync_run_id, company_id, kind, generation) "
        "values (%s, %s, %s, %s) "
        "on conflict (sync_run_id) do update set status = 'running', ended_at = null, error = null "
        "where r.company_id = excluded.company_id and r.generation = excluded.generation "
        "returning r.sync_run_id",
        (run_id, company_id, kind, generation),
    ).fetchone()
    if row is not None:
        return str(row[0])
    existing = conn.execute(
        "select company_id, generation from sage_control.sync_runs where sync_run_id = %s", (run_id,)
    ).fetchone()
    if existing is None or existing[0] != company_id:
        raise ValueError(f"sync run {sync_run_id!r} already exists for another company")
    raise RunFenced(
        f"sync run {run_id} of {company_id} is not re-opened: the company was reset or disconnected since "
        f"it opened (generation {existing[1]}, now {generation}); the next scheduled run imports what it would have",
        sync_run_id=run_id,
    )


def open_run(
    conn: psycopg.Connection,
    company_id: str,
    kind: str,
    *,
    sync_run_id: str | None = None,
    new_generation: bool = False,
) -> str:
    """Open a run of ``company_id`` unless another one is running; in the caller's transaction.

    Mutual exclusion of the daily run, a backfill, a reset and a manual sync is the partial
    unique index ``sync_runs_one_running`` (one 'running' row per company): it holds across
    Airflow tasks and processes, where a lock held by one process could not. A row left
    'running' by a process that died is closed as failed once it made no progress for
    ``STALE_RUN_AFTER`` (and so fenced: should its process wake up, it keeps nothing); a retry of
    the same run (same ``sync_run_id``) simply re-opens it. ``new_generation`` (a reset) starts a
    new generation first: no run opened before it can write or be re-opened again.
    Raises :class:`RunInProgress` (Airflow retries the task later) or :class:`RunFenced`.
    """
    _lock_company(conn, company_id)
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
            if new_generation:
                _next_generation(conn, company_id)
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


def _next_generation(conn: psycopg.Connection, company_id: str) -> int:
    row = conn.execute(
        "update sage_control.companies set generation = generation + 1 where company_id = %s returning generation",
        (company_id,),
    ).fetchone()
    if row is None:
        raise UnknownCompanyError(f"company {company_id!r} is not registered")
    return int(row[0])


def skip_running_runs(conn: psycopg.Connection, company_id: str, reason: str) -> int:
    """End every run of the company (a disconnect); in the caller's transaction; the new generation.

    The running run (if any) is closed as skipped with ``reason``, and the generation moves on, so
    no task of any earlier run writes again or re-opens its run, even after a reconnect.
    """
    _lock_company(conn, company_id)
    conn.execute(
        "update sage_control.sync_runs set status = 'skipped', ended_at = now(), "
        "error = %s where company_id = %s and status = 'running'",
        (reason, company_id),
    )
    return _next_generation(conn, company_id)


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
    In the caller's transaction, behind the :func:`fence` (every page transaction calls this, so
    every page is fenced): raises :class:`RunFenced` when the run may no longer write, and the
    caller's transaction must then roll back. Returns the stream's counters after the update.
    """
    assigned = {
        name: value
        for name, value in (("total_reported", total_reported), ("window_total", window_total))
        if value is not None
    }
    for name, value in {**counters, **assigned}.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"counter {name!r} must be an int, got {type(value).__name__}")
    # One round trip per page, as before the fence: lock the company, read the run as it is now,
    # and add the counters only if the run may still write (the WHERE repeats the fence's test, so
    # a fenced run's counters never move even for the moment before the raise rolls them back).
    with conn.pipeline():
        locked = conn.execute(_LOCK_COMPANY_OF_RUN + "for share", (sync_run_id,))
        current = conn.execute(_RUN_NOW, (sync_run_id,))
        updated = conn.execute(
            "update sage_control.sync_runs as r set stats = r.stats || jsonb_build_object("
            "  %(stream)s::text,"
            "  coalesce(r.stats -> %(stream)s, '{}'::jsonb)"
            "  || coalesce((select jsonb_object_agg("
            "                 c.key, coalesce((r.stats -> %(stream)s ->> c.key)::bigint, 0) + c.value::bigint)"
            "               from jsonb_each_text(%(added)s) as c (key, value)), '{}'::jsonb)"
            "  || %(assigned)s) "
            "where r.sync_run_id = %(id)s and r.status = 'running' and r.generation = ("
            "  select c.generation from sage_control.companies c where c.company_id = r.company_id) "
            "returning r.stats -> %(stream)s",
            {"stream": stream, "added": Jsonb(counters), "assigned": Jsonb(assigned), "id": sync_run_id},
        )
    company, run, row = locked.fetchone(), current.fetchone(), updated.fetchone()
    if company is None or run is None:
        raise UnknownRunError(f"sync run {sync_run_id!r} does not exist")
    why = _why_fenced(company[0], run)
    if why is not None or row is None:
        raise _fenced(sync_run_id, run, why or "its company's generation moved while this page was written")
    return dict(row[0])


def finish_run(conn: psycopg.Connection, sync_run_id: str, status: str, error: str | None = None) -> bool:
    """Close a running run with a final status (and a failure's error text); in the caller's transaction.

    True when this call closed it. The first close wins: a run already closed keeps its status and
    reason (the task that failed wrote the specific one; the DAG's catch-all close only knows that
    some task failed), and a success is refused (:class:`RunFenced`) for a run closed as failed or
    skipped, or one whose company was reset since it opened: its tasks were stopped part-way.
    Closing waits for the run's pages in flight to commit (the company lock of :func:`fence`), so
    once it returns no task of the run can write.
    """
    if status not in FINAL_STATUSES:
        raise ValueError(f"unknown final run status {status!r}; expected one of {sorted(FINAL_STATUSES)}")
    owner = conn.execute(
        "select company_id from sage_control.sync_runs where sync_run_id = %s", (sync_run_id,)
    ).fetchone()
    if owner is None:
        raise UnknownRunError(f"sync run {sync_run_id!r} does not exist")
    generation = _lock_company(conn, owner[0])
    run = conn.execute(_RUN_NOW, (sync_run_id,)).fetchone()
    assert run is not None  # runs are never deleted
    current, run_error = run[1], run[3]
    why = _why_fenced(generation, run) if status == "success" and current != "success" else None
    if why is not None:
        raise _fenced(sync_run_id, run, why, "it cannot become a success (its tasks were stopped part-way)")
    if current != "running":
        if status == current == "failed" and run_error is None and error is not None:
            conn.execute("update sage_control.sync_runs set error = %s where sync_run_id = %s", (error, sync_run_id))
        return False
    conn.execute(
        "update sage_control.sync_runs set status = %s, ended_at = now(), error = %s where sync_run_id = %s",
        (status, error, sync_run_id),
    )
    return True


def get_run(conn: psycopg.Connection, sync_run_id: str) -> dict[str, Any]:
    """The run's row as a dict (``stats`` decoded); raises :class:`UnknownRunError`."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"select {_COLUMNS} from sage_control.sync_runs where sync_run_id = %s", (sync_run_id,))
        row = cur.fetchone()
    if row is None:
        raise UnknownRunError(f"sync run {sync_run_id!r} does not exist")
    return row


def lane_of(conn: psycopg.Connection, sync_run_id: str) -> Lane:
    """The lane the run's Sage requests go in (``core.lanes``): history for a backfill or a run that
    reads everything (no success before it since the company was created or last reset, the rule the
    pages label ``first sync`` by), daily otherwise, and for a run that does not exist.

    Fixed by the run's kind and start time, so every task and retry of the run agrees.
    """
    row = conn.execute(
        f"select r.kind, {RUN_FLAGS_SQL.format(run='r')} from sage_control.sync_runs r where r.sync_run_id = %s",
        (sync_run_id,),
    ).fetchone()
    if row is None:
        return Lane.DAILY
    kind, full_read, _after_reset = row
    return lane_of_run(kind, full_read=full_read)


def run_error(conn: psycopg.Connection, sync_run_id: str) -> str | None:
    """The error the run was closed with (None for a run without one, or no such run)."""
    row = conn.execute("select error from sage_control.sync_runs where sync_run_id = %s", (sync_run_id,)).fetchone()
    return row[0] if row else None


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
