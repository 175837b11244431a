"""Where each stream of a run stands (``sage_control.sync_stream_states``): the pages' and ``status``'s view.

Why a row per stream, written by the stream's own task, rather than Airflow's task states read
over its REST API: what a person needs to see ("retrying at 13:15 after Sage answered 503") is
known only inside the task that failed; Airflow keeps the exception in the task's log, not in
any field its API returns. And the CLI's ``status`` and the pages must show it where no
api-server answers. The counters stay in ``sync_runs.stats``; a stream with no row has not
started yet ("waiting").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

STATES = ("reading", "retrying", "failed", "done")


def set_state(
    conn: psycopg.Connection,
    sync_run_id: str,
    stream: str,
    state: str,
    *,
    error: str | None = None,
    try_number: int | None = None,
    retry_at: datetime | None = None,
) -> None:
    """Record ``stream``'s state in the run (replacing the one before); the caller commits."""
    if state not in STATES:
        raise ValueError(f"not a stream state: {state!r}")
    conn.execute(
        "insert into sage_control.sync_stream_states "
        "(sync_run_id, stream, state, error, try_number, retry_at, updated_at) "
        "values (%s, %s, %s, %s, %s, %s, now()) "
        "on conflict (sync_run_id, stream) do update set state = excluded.state, error = excluded.error, "
        "try_number = excluded.try_number, retry_at = excluded.retry_at, updated_at = excluded.updated_at",
        (sync_run_id, stream, state, error, try_number, retry_at),
    )


def states_of(conn: psycopg.Connection, sync_run_ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{sync_run_id: {stream: {state, error, try_number, retry_at, updated_at}}}`` of the given runs."""
    if not sync_run_ids:
        return {}
    found: dict[str, dict[str, dict[str, Any]]] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "select sync_run_id, stream, state, error, try_number, retry_at, updated_at "
            "from sage_control.sync_stream_states where sync_run_id = any(%s)",
            (sync_run_ids,),
        )
        for row in cur.fetchall():
            found.setdefault(row.pop("sync_run_id"), {})[row.pop("stream")] = row
    return found


def done_in_unfinished_run(conn: psycopg.Connection, sync_run_id: str) -> frozenset[str]:
    """The streams an earlier try of ``sync_run_id`` read to the end, while the run is unfinished.

    A retry of a daily run skips them: it resumes where the failed try stopped. A run that ended
    in success (and is run again, by a clear in Airflow) or does not exist yet resumes nothing:
    a run asked for again reads every stream.
    """
    rows = conn.execute(
        "select s.stream from sage_control.sync_stream_states s "
        "join sage_control.sync_runs r using (sync_run_id) "
        "where s.sync_run_id = %s and s.state = 'done' and r.status <> 'success'",
        (sync_run_id,),
    ).fetchall()
    return frozenset(row[0] for row in rows)


def restamp_retries(conn: psycopg.Connection, sync_run_id: str, *, retrying: bool, retry_at: datetime | None) -> None:
    """Every stream of the run in ``retrying``: the time of the run's next try, or ``failed`` when
    no try is left (``retrying`` false)."""
    conn.execute(
        "update sage_control.sync_stream_states set retry_at = %s, "
        "state = case when %s then state else 'failed' end, updated_at = now() "
        "where sync_run_id = %s and state = 'retrying'",
        (retry_at, retrying, sync_run_id),
    )
