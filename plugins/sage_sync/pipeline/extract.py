"""Reading one stream from Sage into ``sage_raw``: by ``updated_at`` cursor, or in whole passes.

Every page is loaded in its own transaction (new versions only, so a re-fetch adds nothing), with
the run's counters. A stream's watermark moves in the transaction of the page that proves it: each
page for a cursor read, the last page of a pass whose distinct ids cover Sage's ``$total`` for a
pass read. Page-offset paging over live data can skip a record that shifted between pages while
another was edited; such a pass is repeated instead of trusted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from sage_sync.sage.client import SageClient
from sage_sync.sage.prefetch import CursorReadAhead
from sage_sync.sage.streams import Stream, list_params
from sage_sync.warehouse import loader, registry, runs, watermarks

log = logging.getLogger(__name__)

# updated_or_created_since is inclusive and Sage's commit order is not its timestamp order, so
# every incremental read starts a little before the watermark; unchanged re-reads add nothing.
OVERLAP = timedelta(minutes=10)
# A pass whose distinct ids fall short of $total is repeated at most this many times in a run.
MAX_PASSES = 3


def empty_totals(passes: int = 0) -> dict[str, int | None]:
    """The counters a stream read returns; ``total_reported`` is Sage's ``$total`` for the window."""
    return {"pages": 0, "rows_seen": 0, "versions_added": 0, "quarantined": 0, "passes": passes, "total_reported": None}


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``: an ETA a person reads at a glance."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(stream: str, totals: dict[str, int | None], elapsed: float) -> str:
    """One task-log line per page: stream, page, records so far, ``$total``, rate and ETA.

    A first sync of thousands of pages is followed in the Airflow task log as it runs; the same
    figures are in ``sync_runs.stats`` for the Connect page.
    """
    pages, seen, total = totals["pages"] or 0, totals["rows_seen"] or 0, totals["total_reported"]
    rate = seen / elapsed if elapsed > 0 else 0.0
    text = f"{stream}: page {pages}, {seen:,} records"
    if total is not None:
        share = f" ({seen / total:.0%})" if total else ""
        text += f" of {total:,} ($total){share}"
    text += f", {rate:,.0f} records/s"
    if total is not None and rate > 0:
        text += f", ETA {_duration(max(total - seen, 0) / rate)}"
    return text


@dataclass
class StreamRead:
    """One stream of one company read under one run: where pages come from and where they go.

    ``totals`` accumulates this call's counters (what the task returns); the run's own counters in
    ``sage_control.sync_runs`` are added page by page in the page's transaction.
    """

    conn: psycopg.Connection
    client: SageClient
    stream: Stream
    company_id: str
    sync_run_id: str
    totals: dict[str, int | None] = field(default_factory=empty_totals)
    started: float = field(default_factory=time.monotonic)

    def load_page(self, items: list[Any], *, total_reported: int | None = None) -> loader.LoadResult:
        """Load one page's items and add its counters, in the caller's transaction."""
        result = loader.load_records(self.conn, self.stream.name, self.company_id, self.sync_run_id, items)
        counters = {
            "pages": 1,
            "rows_seen": result.rows_seen,
            "versions_added": result.versions_added,
            "quarantined": result.quarantined,
        }
        runs.add_stream_stats(self.conn, self.sync_run_id, self.stream.name, total_reported=total_reported, **counters)
        for key, value in counters.items():
            self.totals[key] = (self.totals[key] or 0) + value
        if total_reported is not None and self.totals["total_reported"] is None:
            self.totals["total_reported"] = total_reported
        log.info("%s", progress_line(self.stream.name, self.totals, time.monotonic() - self.started))
        return result

    def move_watermark(self, newest: datetime) -> None:
        """Record ``newest`` as the stream's ``updated_since`` watermark, in the caller's transaction."""
        watermarks.set_watermark(self.conn, self.company_id, self.stream.name, updated_since=newest)


def read_singleton(read: StreamRead) -> dict[str, int | None]:
    """A one-record endpoint (``financial_settings``, the business itself): one GET, one version at most."""
    stream = read.stream
    record = read.client.get(stream.path_for(read.company_id))
    with read.conn.transaction():
        result = loader.load_records(
            read.conn,
            stream.name,
            read.company_id,
            read.sync_run_id,
            [record],
            record_id_override=read.company_id if stream.name == "financial_settings" else None,
        )
        counters = {
            "pages": 1,
            "rows_seen": result.rows_seen,
            "versions_added": result.versions_added,
            "quarantined": result.quarantined,
        }
        runs.add_stream_stats(read.conn, read.sync_run_id, stream.name, **counters)
    log.info("%s: 1 record read (a single-record endpoint)", stream.name)
    return {**counters, "total_reported": None}


def read_since_watermark(read: StreamRead, company: registry.Company) -> dict[str, int | None]:
    """A list stream since its watermark (less ``OVERLAP``), within the company's Synced From window."""
    stream = read.stream
    mark = watermarks.get_watermarks(read.conn, company.company_id).get(stream.name)
    since = mark.updated_since - OVERLAP if (stream.incremental and mark and mark.updated_since) else None
    from_date = company.synced_from.start_date if stream.date_filtered else None
    if stream.sortable and stream.incremental:
        with CursorReadAhead(read.client) as ahead:  # page n + 1 is fetched while page n loads
            totals = read_by_cursor(replace(read, client=ahead), since, from_date)  # type: ignore[arg-type]
    else:
        totals = read_window(read, list_params(stream, updated_since=since, from_date=from_date), move_watermark=True)
    if since is not None:
        totals["window_total"] = count_window(read, from_date)
    return totals


def count_window(read: StreamRead, from_date: date | None) -> int | None:
    """Sage's ``$total`` of the whole synced window (one request of one item), kept in the run's stats.

    An incremental read's ``$total`` counts only the changes; this one is what the warehouse's
    current records of the stream must add up to, so ``sync_health`` can reconcile the spend
    streams every day, not only after a full read.
    """
    params = {**list_params(read.stream, from_date=from_date, page_size=1), "page": 1}
    total = read.client.get_page(read.stream.path, params).total
    if total is not None:
        with read.conn.transaction():
            runs.add_stream_stats(read.conn, read.sync_run_id, read.stream.name, window_total=total)
    log.info(
        "%s: Sage holds %s records in the synced window",
        read.stream.name,
        "an unreported number of" if total is None else f"{total:,}",
    )
    return total


def read_by_cursor(read: StreamRead, since: datetime | None, from_date: date | None) -> dict[str, int | None]:
    """Page by ``updated_at`` instead of by page number.

    Page offsets over live data skip a record whenever one on an earlier page is deleted (every
    later record moves up one place). Here every request starts again at page 1 from the newest
    ``updated_at`` seen (inclusive), sorted by ``updated_at``: nothing can shift under us, an
    edit during the read just moves a record further on, and because everything older than the
    cursor has been read, the watermark can move with each page's own transaction, so a crash
    of a long first sync resumes where it stopped. Page numbers are only used while a whole page
    shares one timestamp; ids already read at the cursor's timestamp are not loaded twice.
    """
    read.totals, read.started = empty_totals(passes=1), time.monotonic()
    cursor, page_number = since, 1
    read_at_cursor: set[str] = set()
    while True:
        params = {**list_params(read.stream, updated_since=cursor, from_date=from_date), "page": page_number}
        page = read.client.get_page(read.stream.path, params)
        fresh = [i for i in page.items if not (isinstance(i, dict) and i.get("id") in read_at_cursor)]
        with read.conn.transaction():
            # Only the first request's $total covers the whole window (later ones start later).
            first = read.totals["pages"] == 0
            result = read.load_page(fresh, total_reported=page.total if first else None)
            newest = result.max_updated_at
            if newest is not None:
                read.move_watermark(newest)  # same transaction as the page: never ahead of the rows
        if page.is_last:
            return read.totals
        if newest is not None and (cursor is None or newest > cursor):
            cursor, page_number = newest, 1
            read_at_cursor = {
                i["id"] for i in page.items if isinstance(i, dict) and parse_ts(i.get("updated_at")) == newest
            }
        else:  # the whole page had one timestamp: step through that timestamp by page number
            page_number += 1
            read_at_cursor |= set(result.record_ids)


def read_window(read: StreamRead, params: dict[str, Any], *, move_watermark: bool) -> dict[str, int | None]:
    """Page through ``params`` until one pass covers ``$total`` (at most ``MAX_PASSES`` passes)."""
    read.totals, read.started = empty_totals(), time.monotonic()
    for _ in range(MAX_PASSES):
        read.totals["passes"] = (read.totals["passes"] or 0) + 1
        if _one_pass(read, params, move_watermark=move_watermark):
            return read.totals
        log.warning(
            "%s/%s: a pass missed records that shifted between pages; reading again", read.company_id, read.stream.name
        )
    raise RuntimeError(
        f"{read.stream.name}: Sage's data kept changing under paging for {MAX_PASSES} passes; "
        "the watermark was not moved, the next run reads the same window again"
    )


def _one_pass(read: StreamRead, params: dict[str, Any], *, move_watermark: bool) -> bool:
    """Read every page once; True (and the watermark moved) when the pass saw all of ``$total``."""
    seen: set[str] = set()
    quarantined = 0
    newest: datetime | None = None
    complete = True
    for page in read.client.iter_pages(read.stream.path, params):
        with read.conn.transaction():
            result = read.load_page(page.items, total_reported=page.total)
            seen.update(result.record_ids)
            quarantined += result.quarantined  # part of $total too: seen, just not loadable
            if result.max_updated_at and (newest is None or result.max_updated_at > newest):
                newest = result.max_updated_at
            if page.next is None:
                complete = page.total is None or len(seen) + quarantined >= page.total
                if complete and newest is not None and move_watermark:
                    # Same transaction as the last page: the watermark never runs ahead of the rows.
                    read.move_watermark(newest)
    return complete


def parse_ts(value: object) -> datetime | None:
    """An ISO 8601 timestamp from a payload (``Z`` or offset; naive taken as UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
