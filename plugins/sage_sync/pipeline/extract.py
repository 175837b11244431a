"""Reading one stream from Sage into ``sage_raw``: by ``updated_at`` cursor, or in whole passes.

Every page is loaded in its own transaction (new versions only, so a re-fetch adds nothing), with
the run's counters. A read counts as complete only when Sage ended it (``$next: null``) and
nothing could have shifted under it:

* The spend streams (daily reads and backfills) page by ``updated_at`` cursor: a deletion cannot
  move a record past the cursor, and the watermark moves with each page.
* The streams Sage cannot sort by ``updated_at`` (contacts, ledger accounts, tax rates) page by
  offset, where a deletion on an earlier page moves a record onto a page already read. A pass
  must end with ``$next: null`` and distinct ids covering ``$total``; a pass of more than one
  page is then checked against a second listing of ids, and what it missed is fetched by id.
  Only then does the watermark move. A pass that stops any other way is read again, and after
  ``MAX_PASSES`` the read fails with the reason (``IncompleteListing``).

A record stamped later than Sage's clock (its ``Date``) plus a tolerance is loaded and counted
as ``future_stamped``, but never becomes a cursor or a watermark.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from sage_sync.core.config import DEFAULT_MAX_PAGES
from sage_sync.core.errors import IncompleteListing, SageAPIError
from sage_sync.sage.client import Page, PageBudget, SageClient
from sage_sync.sage.prefetch import CursorReadAhead
from sage_sync.sage.streams import Stream, list_params
from sage_sync.warehouse import loader, registry, runs, watermarks

log = logging.getLogger(__name__)

# updated_or_created_since is inclusive and Sage's commit order is not its timestamp order, so
# every incremental read starts a little before the watermark; unchanged re-reads add nothing.
OVERLAP = timedelta(minutes=10)
# A pass that is not complete is read again, at most this many passes in a run.
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

    def load_page(
        self, items: list[Any], *, total_reported: int | None = None, future_stamped: int = 0
    ) -> loader.LoadResult:
        """Load one page's items and add its counters, in the caller's transaction."""
        result = loader.load_records(self.conn, self.stream.name, self.company_id, self.sync_run_id, items)
        counters = {
            "pages": 1,
            "rows_seen": result.rows_seen,
            "versions_added": result.versions_added,
            "quarantined": result.quarantined,
        }
        if future_stamped:
            # Loaded as Sage sent them, flagged here; the cursor and the watermark ignore them.
            counters["future_stamped"] = future_stamped
            log.warning(
                "%s/%s: %d records stamped later than Sage's clock; loaded, never used as a cursor",
                self.company_id,
                self.stream.name,
                future_stamped,
            )
        runs.add_stream_stats(self.conn, self.sync_run_id, self.stream.name, total_reported=total_reported, **counters)
        for key, value in counters.items():
            self.totals[key] = (self.totals.get(key) or 0) + value
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


def read_backfill(read: StreamRead, start: date, end: date) -> dict[str, int | None]:
    """A document stream's older window (``start`` to ``end`` by document date), by cursor.

    By ``updated_at`` cursor, not by page offset: a document deleted while the backfill pages
    cannot move another past the read. No watermark moves: the daily one stands for every
    document's changes up to a point in time, which an older window does not cover.
    """
    if not read.stream.sortable:
        raise ValueError(f"{read.stream.name} cannot be read by updated_at cursor")
    with CursorReadAhead(read.client) as ahead:  # page n + 1 is fetched while page n loads
        return read_by_cursor(
            replace(read, client=ahead),  # type: ignore[arg-type]
            None,
            start,
            to_date=end,
            move_watermark=False,
        )


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


def read_by_cursor(
    read: StreamRead,
    since: datetime | None,
    from_date: date | None,
    *,
    to_date: date | None = None,
    move_watermark: bool = True,
) -> dict[str, int | None]:
    """Page by ``updated_at`` instead of by page number.

    Page offsets over live data skip a record whenever one on an earlier page is deleted (every
    later record moves up one place). Here every request starts again at page 1 from the newest
    ``updated_at`` seen (inclusive), sorted by ``updated_at``: nothing can shift under us, an
    edit during the read just moves a record further on, and because everything older than the
    cursor has been read, the watermark can move with each page's own transaction, so a crash
    of a long first sync resumes where it stopped. Page numbers are only used while a whole page
    shares one timestamp; ids already read at the cursor's timestamp are not loaded twice.

    The read ends only on ``$next: null`` with the last answer holding its whole ``$total``; a
    record stamped past Sage's clock never becomes the cursor (it sorts last and is read there).
    A page cap from ``$total`` (``PageBudget``) ends a server that pages for ever.
    """
    read.totals, read.started = empty_totals(passes=1), time.monotonic()
    budget = PageBudget(getattr(read.client, "max_pages", DEFAULT_MAX_PAGES), read.stream.path)
    cursor, page_number = since, 1
    read_at_cursor: set[str] = set()
    while True:
        params = {
            **list_params(read.stream, updated_since=cursor, from_date=from_date, to_date=to_date),
            "page": page_number,
        }
        page = read.client.get_page(read.stream.path, params)
        if cursor is not None and cursor == since and not read.totals["pages"] and since > page.stamp_ceiling:
            _forget_future_watermark(read, since, page, move_watermark)
            cursor, page_number = None, 1
            continue
        if page.page != page_number:
            # Sage answers a page past the end with its last page: a deletion at this timestamp
            # shifted the pages. Start the timestamp again from page 1; read ids are skipped.
            log.warning(
                "%s: asked for page %d, Sage served page %d; again from page 1",
                read.stream.name,
                page_number,
                page.page,
            )
            page_number = 1
            continue
        fresh = [i for i in page.items if not (isinstance(i, dict) and i.get("id") in read_at_cursor)]
        budget.spend_cursor(page, already_read=read.totals["rows_seen"] or 0, fresh=len(fresh))
        newest, future = page.cursor_stamp()
        with read.conn.transaction():
            # Only the first request's $total covers the whole window (later ones start later).
            first = read.totals["pages"] == 0
            result = read.load_page(fresh, total_reported=page.total if first else None, future_stamped=future)
            if newest is not None and move_watermark:
                read.move_watermark(newest)  # same transaction as the page: never ahead of the rows
        if page.is_last:
            if not page.served_all():
                raise IncompleteListing(
                    f"{read.stream.name}: Sage ended the list with {len(page.items)} records on page "
                    f"{page.page}, short of its $total of {page.total}",
                    path=read.stream.path,
                )
            return read.totals
        if newest is not None and (cursor is None or newest > cursor):
            cursor, page_number = newest, 1
            read_at_cursor = {
                i["id"] for i in page.items if isinstance(i, dict) and parse_ts(i.get("updated_at")) == newest
            }
        else:  # the whole page had one timestamp (or only future ones): step through it by page number
            page_number += 1
            read_at_cursor |= set(result.record_ids)


def _forget_future_watermark(read: StreamRead, since: datetime, page: Page, move_watermark: bool) -> None:
    """A stored watermark is past Sage's clock: a future-stamped record set it before it was bounded.

    Nothing after the last honest cursor is known to be read, so the whole window is read again
    (unchanged records add nothing) and the watermark is rebuilt from honest stamps.
    """
    log.warning(
        "%s/%s: watermark %s is past Sage's clock (%s); reading the whole window again",
        read.company_id,
        read.stream.name,
        since.isoformat(),
        page.server_time.isoformat() if page.server_time else "local clock",
    )
    if move_watermark:
        with read.conn.transaction():
            watermarks.forget_updated_since(read.conn, read.company_id, read.stream.name)


def read_window(read: StreamRead, params: dict[str, Any], *, move_watermark: bool) -> dict[str, int | None]:
    """Page through ``params`` until one pass is complete (at most ``MAX_PASSES`` passes).

    Raises :class:`IncompleteListing` with the last pass's reason when none was: the watermark
    has not moved, so the next run (or the task's retry) reads the same window again.
    """
    read.totals, read.started = empty_totals(), time.monotonic()
    reason = ""
    for attempt in range(1, MAX_PASSES + 1):
        read.totals["passes"] = attempt
        with read.conn.transaction():
            runs.add_stream_stats(read.conn, read.sync_run_id, read.stream.name, passes=1)
        try:
            shortfall = _one_pass(read, params, move_watermark=move_watermark)
        except IncompleteListing as exc:
            shortfall = str(exc)
        if shortfall is None:
            return read.totals
        reason = shortfall
        log.warning("%s/%s: pass %d incomplete (%s); reading again", read.company_id, read.stream.name, attempt, reason)
    raise IncompleteListing(
        f"{read.stream.name}: no complete pass in {MAX_PASSES} ({reason}); the watermark was not moved, "
        "the next run reads the same window again",
        path=read.stream.path,
    )


def _one_pass(read: StreamRead, params: dict[str, Any], *, move_watermark: bool) -> str | None:
    """Read every page once; None (and the watermark moved) when the pass is complete.

    Returns the reason when Sage ended the list short of its ``$total``; an ``IncompleteListing``
    from the client (a page served again, ``$next`` going back) propagates.
    """
    seen: set[str] = set()
    quarantined = pages = 0
    newest: datetime | None = None
    last: Page | None = None
    for page in read.client.iter_pages(read.stream.path, params):
        stamp, future = page.cursor_stamp()
        with read.conn.transaction():
            result = read.load_page(page.items, total_reported=page.total, future_stamped=future)
        seen.update(result.record_ids)
        quarantined += result.quarantined  # part of $total too: seen, just not loadable
        if stamp is not None and (newest is None or stamp > newest):
            newest = stamp
        last, pages = page, pages + 1
    if last is not None and last.total is not None and len(seen) + quarantined < last.total:
        return f"its {len(seen) + quarantined} distinct ids fell short of Sage's $total of {last.total}"
    # One page cannot shift under a deletion; more can: a second listing of ids shows what moved.
    missed = _unlisted_by_pass(read, params, seen) if pages > 1 else []
    with read.conn.transaction():
        if missed:
            _load_by_id(read, missed)
        if newest is not None and move_watermark:
            # After the check, in its transaction: the watermark never runs ahead of the rows.
            read.move_watermark(newest)
    return None


def _unlisted_by_pass(read: StreamRead, params: dict[str, Any], seen: set[str]) -> list[str]:
    """Ids Sage lists now under ``params`` that the pass did not read (shifted past it)."""
    listing = {k: v for k, v in params.items() if k != "attributes"}  # ids only: id, displayed_as, $path
    listed: set[str] = set()
    for page in read.client.iter_pages(read.stream.path, listing):
        listed.update(str(i["id"]) for i in page.items if isinstance(i.get("id"), str) and i["id"])
    missed = sorted(listed - seen)
    if missed:
        log.warning(
            "%s/%s: %d records moved past the pass; fetching them by id", read.company_id, read.stream.name, len(missed)
        )
    return missed


def _load_by_id(read: StreamRead, record_ids: list[str]) -> None:
    """GET each record and load it, in the caller's transaction; one deleted meanwhile is skipped."""
    records = []
    for record_id in record_ids:
        try:
            records.append(read.client.get(f"{read.stream.path}/{record_id}"))
        except SageAPIError as exc:
            if exc.status != 404:
                raise
    result = loader.load_records(read.conn, read.stream.name, read.company_id, read.sync_run_id, records)
    runs.add_stream_stats(
        read.conn, read.sync_run_id, read.stream.name, refetched=len(records), versions_added=result.versions_added
    )
    read.totals["versions_added"] = (read.totals["versions_added"] or 0) + result.versions_added


def parse_ts(value: object) -> datetime | None:
    """An ISO 8601 timestamp from a payload (``Z`` or offset; naive taken as UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
