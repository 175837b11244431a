"""Per company and stream: how far Sage's change feed and deletion feed have been read.

A watermark is set inside the transaction of the page that justifies it (the caller commits the raw
rows, the run counters and the watermark together), so it can never get ahead of the data it stands
for: a crash before commit loses both, and the next run re-reads from the old watermark. Values are
in Sage's clock (timestamps seen in payloads), never the local one.

Watermarks only move forward (``greatest()``), so a late or repeated page can't rewind them; the
ways back are :func:`clear_watermarks`, used by a reset, and :func:`forget_updated_since`, for a
watermark a future-stamped record pushed past Sage's clock before stamps were bounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg


@dataclass(frozen=True)
class Watermark:
    """``updated_since`` feeds ``updated_or_created_since``; ``deleted_since`` feeds ``deleted_since``."""

    updated_since: datetime | None = None
    deleted_since: datetime | None = None


def get_watermarks(conn: psycopg.Connection, company_id: str) -> dict[str, Watermark]:
    """Every stream's watermark for the company; a stream never synced is absent."""
    rows = conn.execute(
        "select stream, updated_since, deleted_since from sage_control.watermarks where company_id = %s",
        (company_id,),
    ).fetchall()
    return {stream: Watermark(updated, deleted) for stream, updated, deleted in rows}


def set_watermark(
    conn: psycopg.Connection,
    company_id: str,
    stream: str,
    *,
    updated_since: datetime | None = None,
    deleted_since: datetime | None = None,
) -> Watermark:
    """Advance the stream's watermarks (None leaves one as it is); returns the stored result.

    Runs in the caller's transaction. A value older than the stored one is ignored, not an error:
    pages may legitimately carry older timestamps than an earlier pass saw.
    """
    for name, value in (("updated_since", updated_since), ("deleted_since", deleted_since)):
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError(f"{name} must be timezone-aware (Sage's clock is UTC)")
    row = conn.execute(
        "insert into sage_control.watermarks as w (company_id, stream, updated_since, deleted_since) "
        "values (%s, %s, %s, %s) "
        "on conflict (company_id, stream) do update set "
        # greatest() ignores NULLs, so None keeps the stored value and a smaller value is a no-op.
        "updated_since = greatest(w.updated_since, excluded.updated_since), "
        "deleted_since = greatest(w.deleted_since, excluded.deleted_since), "
        "updated_at = now() "
        "returning updated_since, deleted_since",
        (company_id, stream, updated_since, deleted_since),
    ).fetchone()
    assert row is not None  # an upsert with RETURNING always yields the row
    return Watermark(row[0], row[1])


def forget_updated_since(conn: psycopg.Connection, company_id: str, stream: str) -> None:
    """Drop one stream's ``updated_since`` (its ``deleted_since`` stays), in the caller's transaction.

    Only for a watermark past Sage's own clock: nothing after the last honest one is known to be
    read, so the stream is read in full again.
    """
    conn.execute(
        "update sage_control.watermarks set updated_since = null, updated_at = now() "
        "where company_id = %s and stream = %s",
        (company_id, stream),
    )


def clear_watermarks(conn: psycopg.Connection, company_id: str, streams: Iterable[str] | None = None) -> int:
    """Forget the company's watermarks (all, or only ``streams``) so the next sync re-reads in full.

    Runs in the caller's transaction; returns how many were removed.
    """
    if streams is None:
        cur = conn.execute("delete from sage_control.watermarks where company_id = %s", (company_id,))
    else:
        cur = conn.execute(
            "delete from sage_control.watermarks where company_id = %s and stream = any(%s)",
            (company_id, list(streams)),
        )
    return cur.rowcount
