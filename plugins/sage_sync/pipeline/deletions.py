"""Deletions: Sage's ``deleted_since`` feed, and the id reconciliation sweep for what it forgot.

Both land in ``sage_raw.deletions`` (``detection_method`` says which found it) in the transaction
of the page that found them, with the run's counters; the feed's watermark moves with its last page.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import psycopg

from sage_sync.core.errors import IncompleteListing, SageAPIError
from sage_sync.core.status import CompanyStatus
from sage_sync.pipeline.extract import MAX_PASSES, OVERLAP, parse_ts
from sage_sync.sage.client import SageClient
from sage_sync.sage.streams import DOCUMENT_STREAMS, MAX_PAGE_SIZE, STREAMS, Stream, deleted_params
from sage_sync.warehouse import loader, raw, registry, runs, watermarks

log = logging.getLogger(__name__)

# The id reconciliation sweep runs after a reconnect, and at least this often otherwise.
RECONCILE_EVERY = timedelta(days=7)


def read_deletions(
    conn: psycopg.Connection, client: SageClient, company: registry.Company, sync_run_id: str
) -> dict[str, int]:
    """Every stream's ``deleted_since`` feed, then the reconciliation sweep when it is due."""
    company_id = company.company_id
    found: dict[str, int] = {}
    marks = watermarks.get_watermarks(conn, company_id)
    floor = datetime.combine(company.synced_from.start_date, time.min, tzinfo=UTC)
    for stream in (s for s in STREAMS.values() if s.deletes):
        mark = marks.get(stream.name)
        since = (mark.deleted_since - OVERLAP) if mark and mark.deleted_since else floor
        found[stream.name] = _deletions_for(conn, client, stream, company_id, sync_run_id, since)
    if reconciliation_due(company):
        for name, count in reconcile_deletions(conn, client, company, sync_run_id).items():
            found[name] = found.get(name, 0) + count
    return found


def _deletions_for(
    conn: psycopg.Connection,
    client: SageClient,
    stream: Stream,
    company_id: str,
    sync_run_id: str,
    since: datetime,
) -> int:
    new = 0
    newest: datetime | None = None
    for page in client.iter_pages(stream.path, deleted_params(stream, since)):
        ceiling = page.stamp_ceiling  # a deletion stamped past Sage's clock is recorded, never a watermark
        with conn.transaction():
            added = loader.record_deletions(conn, stream.name, company_id, sync_run_id, page.items)
            new += added
            for item in page.items:
                stamp = parse_ts(item.get("deleted_at")) if isinstance(item, dict) else None
                if stamp and stamp <= ceiling and (newest is None or stamp > newest):
                    newest = stamp
            runs.add_stream_stats(conn, sync_run_id, stream.name, deletions=added)
            if page.next is None and newest is not None:
                watermarks.set_watermark(conn, company_id, stream.name, deleted_since=newest)
    return new


# -- id reconciliation sweep ------------------------------------------------------------------------


def reconciliation_due(company: registry.Company, now: datetime | None = None) -> bool:
    """A sweep is due after a reconnect, and weekly once the first sync is complete."""
    if company.reconcile_requested:
        return True
    if company.status != CompanyStatus.ACTIVE:
        return False
    last = company.last_reconciled_at
    return last is None or last <= (now or datetime.now(UTC)) - RECONCILE_EVERY


def reconcile_deletions(
    conn: psycopg.Connection, client: SageClient, company: registry.Company, sync_run_id: str
) -> dict[str, int]:
    """Compare each document stream's ids both ways: mark deleted what Sage no longer lists, and
    fetch what Sage lists that the warehouse lacks.

    Sage's ``deleted_since`` feed may not remember deletions made long ago (e.g. while a company
    was disconnected), so for each document stream the ids Sage lists now over the Synced From
    window (no ``attributes``: id, displayed_as and $path only, 200 a page) are compared with the
    warehouse's current records in that window. A stream is judged only from a complete listing
    (distinct ids cover ``$total``), and each missing id is confirmed with a GET that answers 404:
    a record whose date merely moved out of the window is not deleted. Confirmed ones go to
    ``sage_raw.deletions`` with ``detection_method = 'reconciliation'``. An id Sage lists that
    the warehouse does not hold as current (a read that lost it, whatever the cause) is fetched
    by id and loaded like any page, and counted as ``reconciled_fetched``.
    """
    floor = company.synced_from.start_date
    found: dict[str, int] = {}
    complete = True
    for stream in DOCUMENT_STREAMS:
        listed = _listed_ids(client, stream, floor)
        if listed is None:
            complete = False
            log.warning(
                "%s/%s: the id listing never covered $total; no reconciliation this time",
                company.company_id,
                stream.name,
            )
            continue
        held = raw.current_ids(conn, stream.name, company.company_id, floor)
        missing = sorted(held - listed)
        gone = [{"id": record_id} for record_id in missing if _is_gone(client, stream, record_id)]
        lacking = _fetch(client, stream, sorted(listed - held - raw.deleted_ids(conn, stream.name, company.company_id)))
        with conn.transaction():
            added = loader.record_deletions(
                conn, stream.name, company.company_id, sync_run_id, gone, method="reconciliation"
            )
            loaded = loader.load_records(conn, stream.name, company.company_id, sync_run_id, lacking)
            runs.add_stream_stats(
                conn,
                sync_run_id,
                stream.name,
                reconciled_deletions=added,
                reconciled_fetched=len(lacking),
                versions_added=loaded.versions_added,
            )
        found[stream.name] = added
    if complete:
        with conn.transaction():
            runs.fence(conn, sync_run_id, for_change=True)  # a write under the run like any page's
            registry.mark_reconciled(conn, company.company_id)
    log.info("%s: reconciliation sweep found %s deletions", company.company_id, found)
    return found


def _listed_ids(client: SageClient, stream: Stream, floor: date) -> set[str] | None:
    params: dict[str, Any] = {"items_per_page": MAX_PAGE_SIZE, "from_date": floor.isoformat()}
    if stream.sortable:
        params["sort"] = "created_at:asc"  # new records land on the last page, not between pages
    seen: set[str] = set()
    for _ in range(MAX_PASSES):
        this_pass: set[str] = set()
        total: int | None = None
        try:
            for page in client.iter_pages(stream.path, params):
                this_pass.update(str(item["id"]) for item in page.items if isinstance(item, dict) and item.get("id"))
                total = page.total
        except IncompleteListing as exc:  # pages shifted under a change: list again
            log.warning("%s: id listing incomplete (%s); listing again", stream.name, exc)
            seen |= this_pass
            continue
        # Ids from an earlier pass are kept: a record listed a moment ago is not one to mark deleted.
        seen |= this_pass
        if total is None or len(this_pass) >= total:
            return seen
    return None


def _fetch(client: SageClient, stream: Stream, record_ids: list[str]) -> list[dict[str, Any]]:
    """Each listed record the warehouse lacks, by id; one deleted meanwhile is skipped."""
    records: list[dict[str, Any]] = []
    for record_id in record_ids:
        try:
            record = client.get(f"{stream.path}/{record_id}")
        except SageAPIError as exc:
            if exc.status == 404:
                continue
            raise
        if isinstance(record, dict):
            records.append(record)
    if records:
        log.warning("%s: %d records Sage lists were missing from the warehouse; fetched", stream.name, len(records))
    return records


def _is_gone(client: SageClient, stream: Stream, record_id: str) -> bool:
    try:
        client.get(f"{stream.path}/{record_id}")
    except SageAPIError as exc:
        if exc.status == 404:
            return True
        raise
    log.info("%s %s is not listed in the window but still exists (date moved?): not deleted", stream.name, record_id)
    return False
