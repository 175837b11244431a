"""The ``sage_raw`` tables beside the loader's writes: a reset's wipe, and the ids the sweep compares.

The loader (``loader.py``) is the only writer of new versions and deletions. What else touches the
raw tables is here, so the raw tables have one folder of owners: the wipe a reset does before the
re-import (every raw table of the company, deletions and quarantine included), and the two id sets
the reconciliation sweep (``pipeline.deletions``) compares with what Sage lists.
"""

from __future__ import annotations

from datetime import date

import psycopg
from psycopg import sql

from sage_sync.warehouse.loader import STREAMS

# Every raw table holding a company's rows: one per stream, the deletions and the quarantine.
COMPANY_TABLES = tuple(sorted(STREAMS | {"deletions", "quarantine"}))


def wipe_company(conn: psycopg.Connection, company_id: str) -> dict[str, int]:
    """Delete the company's rows from every raw table, in the caller's transaction: rows per table."""
    wiped: dict[str, int] = {}
    for table in COMPANY_TABLES:
        cur = conn.execute(
            sql.SQL("delete from {} where company_id = %s").format(sql.Identifier("sage_raw", table)), (company_id,)
        )
        wiped[table] = cur.rowcount
    return wiped


def current_ids(conn: psycopg.Connection, stream: str, company_id: str, floor: date) -> set[str]:
    """Ids of the stream's records the warehouse holds as current: latest version dated on or
    after ``floor`` (Synced From's first day), not recorded as deleted."""
    rows = conn.execute(
        sql.SQL(
            "select v.record_id from ("
            "  select distinct on (record_id) record_id, payload ->> 'date' as doc_date from {} "
            "  where company_id = %(company)s order by record_id, _extracted_at desc) v "
            "where v.doc_date >= %(floor)s and not exists ("
            "  select 1 from sage_raw.deletions d where d.company_id = %(company)s "
            "  and d.stream = %(stream)s and d.record_id = v.record_id)"
        ).format(sql.Identifier("sage_raw", stream)),
        {"company": company_id, "floor": floor.isoformat(), "stream": stream},
    ).fetchall()
    return {r[0] for r in rows}


def deleted_ids(conn: psycopg.Connection, stream: str, company_id: str) -> set[str]:
    """Ids of the stream's records recorded as deleted (by the feed or a sweep)."""
    rows = conn.execute(
        "select record_id from sage_raw.deletions where company_id = %s and stream = %s", (company_id, stream)
    ).fetchall()
    return {r[0] for r in rows}
