"""One company's sync, step by step: the functions the company DAG's tasks call.

Each step is a transaction-shaped unit that can be re-run: pages are loaded in their own
transaction (new versions only, so a re-fetch adds nothing), and a stream's watermark moves in
the transaction of its last page, and only after a pass whose distinct ids cover the ``$total``
Sage reported. Page-offset paging over live data can skip a record that shifted between pages
while another was edited; such a pass is repeated instead of trusted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import psycopg
from psycopg import sql

from sage_sync import client as client_module
from sage_sync import loader, prefetch, ratelimit, registry, runs, watermarks
from sage_sync.auth import OAuthClient, TokenManager
from sage_sync.client import SageClient
from sage_sync.config import SageSettings, sage_settings, warehouse_dsn
from sage_sync.errors import ReauthorizationRequired, SageAPIError, SubscriptionInactive
from sage_sync.quarters import Quarter
from sage_sync.streams import DOCUMENT_STREAMS, MAX_PAGE_SIZE, STREAMS, Stream, deleted_params, list_params
from sage_sync.token_store import PostgresTokenStore

log = logging.getLogger(__name__)

# updated_or_created_since is inclusive and Sage's commit order is not its timestamp order, so
# every incremental read starts a little before the watermark; unchanged re-reads add nothing.
OVERLAP = timedelta(minutes=10)
# A pass whose distinct ids fall short of $total is repeated at most this many times in a run.
MAX_PASSES = 3
# A 'running' run row whose process committed nothing for this long is taken to be dead (a worker
# killed mid-run never closes its row) and a new run of the company may take over.
STALE_RUN_AFTER = timedelta(hours=float(os.environ.get("SAGE_STALE_RUN_HOURS", "6")))
# The id reconciliation sweep runs after a reconnect, and at least this often otherwise.
RECONCILE_EVERY = timedelta(days=7)


class CompanySkipped(Exception):
    """The company must not be synced now (disconnected); the message says why."""


class RunInProgress(RuntimeError):
    """Another run of the same company is still running; runs of one company never overlap."""


class UnknownCompany(LookupError):
    """No such company in the registry."""


@dataclass(frozen=True)
class SyncEnv:
    """Where the warehouse is and how to reach Sage; read from the Airflow connections by default.

    Sage settings are read only when a step talks to Sage, so bookkeeping steps (opening and
    closing a run) work even while the Sage connection is being reconfigured.
    """

    dsn: str
    sage: SageSettings | None = None

    @classmethod
    def from_config(cls) -> SyncEnv:
        return cls(dsn=warehouse_dsn())

    @property
    def settings(self) -> SageSettings:
        return self.sage or sage_settings()


def run_key(company_id: str, airflow_run_id: str) -> str:
    """The sync-run id of an Airflow run: the same for every task and every retry of that run."""
    return f"{company_id}:{airflow_run_id}"


@contextmanager
def _connect(env: SyncEnv, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A warehouse connection. Extraction uses ``autocommit=True``: each ``conn.transaction()``
    block is then a real transaction committed on exit (one per page), not a savepoint inside a
    transaction that an earlier read left open, which would lose every page on a late failure."""
    with psycopg.connect(env.dsn, application_name="sage_sync", autocommit=autocommit) as conn:
        yield conn


def token_manager(env: SyncEnv, company_id: str) -> TokenManager:
    """The company's token manager over the encrypted Postgres store."""
    return TokenManager(company_id, PostgresTokenStore(env.dsn), OAuthClient(env.settings))


def _limiter_sleep(seconds: float) -> None:
    # A wait for the shared budget is a client wait: the client's sleep hook, looked up at call time
    # (the limiter outlives any one client), so whatever pauses the client's retries pauses this too.
    client_module._sleep(seconds)


def make_client(env: SyncEnv, company_id: str, **kwargs: Any) -> SageClient:
    """A client for one company's business (company id = Sage business id).

    Every request it sends first takes a token from the deployment's shared budget in the warehouse
    (``sage_control.api_rate_buckets``, one limiter per process and warehouse) at
    ``SAGE_RATE_LIMIT_PER_S``; pass ``limiter=`` to use another one, or ``limiter=None`` for none.
    """
    settings = env.settings
    if "limiter" not in kwargs and settings.rate_limit_per_s:
        kwargs["limiter"] = ratelimit.shared_limiter(env.dsn, settings.rate_limit_per_s, sleep=_limiter_sleep)
    return SageClient(settings.api_url, company_id, token_manager(env, company_id), **kwargs)


def begin_run(
    company_id: str, *, airflow_run_id: str | None = None, kind: str = "daily", env: SyncEnv | None = None
) -> str:
    """Open (or re-open, on a retry) the run's audit row; refuse companies that must not sync."""
    env = env or SyncEnv.from_config()
    with _connect(env) as conn:
        company = registry.get_company(conn, company_id)
        if company is None:
            raise UnknownCompany(f"company {company_id!r} is not registered")
        if company.status == "disconnected":
            since = f" since {company.disconnected_at:%Y-%m-%d %H:%M} UTC" if company.disconnected_at else ""
            raise CompanySkipped(
                f"{company.company_name} ({company_id}) is disconnected{since}: "
                "no import until it is reconnected"
            )
        if company.status == "needs_reauth":
            raise ReauthorizationRequired(
                f"{company.company_name} ({company_id}) needs re-authorisation: "
                f"run `python -m sage_sync reconnect {company_id}` or use the Connect page"
            )
        sync_run_id = open_run(conn, company_id, kind, sync_run_id=(
            run_key(company_id, airflow_run_id) if airflow_run_id else None))
        conn.commit()
    return sync_run_id


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
        {"company": company_id, "id": sync_run_id, "after": STALE_RUN_AFTER,
         "hours": f"{STALE_RUN_AFTER.total_seconds() / 3600:g}"},
    )
    try:
        with conn.transaction():  # a savepoint: the violation must not abort the caller's transaction
            return runs.start_run(conn, company_id, kind, sync_run_id=sync_run_id)
    except psycopg.errors.UniqueViolation:
        row = conn.execute(
            "select sync_run_id, kind, started_at from sage_control.sync_runs "
            "where company_id = %s and status = 'running'", (company_id,)).fetchone()
        other = f"a {row[1]} run ({row[0]}, started {row[2]:%Y-%m-%d %H:%M} UTC)" if row else "another run"
        raise RunInProgress(
            f"{company_id}: {other} is still running; runs of one company never overlap, "
            f"so this {kind} run waits (retry later)") from None


def _mark_needs_reauth(env: SyncEnv, company_id: str, error: Exception) -> None:
    with _connect(env) as conn:
        company = registry.get_company(conn, company_id)
        if company is None or company.status in ("disconnected", "needs_reauth"):
            return  # a disconnect deleted the tokens on purpose; the status already says why
        registry.set_status(
            conn, company_id, "needs_reauth", last_error=str(error), event_type="needs_reauth",
            details={"reason": type(error).__name__},
        )
        conn.commit()


@contextmanager
def _auth_guard(env: SyncEnv, company_id: str) -> Iterator[None]:
    """Turn a dead grant into the company status a user can act on, then re-raise."""
    try:
        yield
    except ReauthorizationRequired as exc:
        _mark_needs_reauth(env, company_id, exc)
        raise
    except SubscriptionInactive as exc:
        with _connect(env) as conn:
            registry.set_status(conn, company_id, "error", last_error=str(exc), event_type="error")
            conn.commit()
        raise


def check_auth(company_id: str, sync_run_id: str, *, env: SyncEnv | None = None) -> None:
    """Refresh the grant now: proves it is alive, and a daily refresh keeps it from expiring."""
    env = env or SyncEnv.from_config()
    _require_connected(env, company_id)
    with _auth_guard(env, company_id):
        tokens = token_manager(env, company_id)
        stored = tokens.store.load(company_id)
        expires = stored.refresh_expires_at if stored else None
        if expires is not None and expires <= datetime.now(UTC):
            # Sage's refresh token dies after 31 days unused: only a new authorisation helps, and
            # saying so beats an opaque invalid_grant.
            raise ReauthorizationRequired(
                f"the refresh token expired on {expires:%Y-%m-%d} (unused for 31 days): authorise again")
        tokens.refresh()
    log.info("grant of %s refreshed for run %s", company_id, sync_run_id)


def _require_connected(env: SyncEnv, company_id: str) -> registry.Company:
    """The company, or :class:`CompanySkipped` when it was disconnected (perhaps mid-run)."""
    with _connect(env) as conn:
        company = registry.get_company(conn, company_id)
    if company is None:
        raise UnknownCompany(f"company {company_id!r} is not registered")
    if company.status == "disconnected":
        raise CompanySkipped(f"{company.company_name} ({company_id}) was disconnected: no import until it "
                             "is reconnected")
    return company


def sync_stream(
    company_id: str, stream_name: str, sync_run_id: str, *, env: SyncEnv | None = None,
    client: SageClient | None = None,
) -> dict[str, int]:
    """Extract one stream since its watermark into ``sage_raw``; returns this call's counters."""
    env = env or SyncEnv.from_config()
    stream = STREAMS[stream_name]
    _require_connected(env, company_id)
    own_client = client is None
    client = client or make_client(env, company_id)
    try:
        with _auth_guard(env, company_id), _connect(env, autocommit=True) as conn:
            company = registry.get_company(conn, company_id)
            if company is None:
                raise UnknownCompany(f"company {company_id!r} is not registered")
            if stream.kind == "singleton":
                return _sync_singleton(conn, client, stream, company_id, sync_run_id)
            return _sync_list(conn, client, stream, company, sync_run_id)
    finally:
        if own_client:
            client.close()


def _sync_singleton(
    conn: psycopg.Connection, client: SageClient, stream: Stream, company_id: str, sync_run_id: str
) -> dict[str, int]:
    record = client.get(stream.path_for(company_id))
    with conn.transaction():
        result = loader.load_records(
            conn, stream.name, company_id, sync_run_id, [record],
            record_id_override=company_id if stream.name == "financial_settings" else None,
        )
        counters = {"pages": 1, "rows_seen": result.rows_seen, "versions_added": result.versions_added,
                    "quarantined": result.quarantined}
        runs.add_stream_stats(conn, sync_run_id, stream.name, **counters)
    return counters


def _sync_list(
    conn: psycopg.Connection, client: SageClient, stream: Stream, company: registry.Company, sync_run_id: str
) -> dict[str, int]:
    mark = watermarks.get_watermarks(conn, company.company_id).get(stream.name)
    since = mark.updated_since - OVERLAP if (stream.incremental and mark and mark.updated_since) else None
    from_date = company.synced_from.start_date if stream.date_filtered else None
    if stream.sortable and stream.incremental:
        with prefetch.CursorReadAhead(client) as ahead:  # page n + 1 is fetched while page n loads
            return _read_by_cursor(conn, ahead, stream, company.company_id, sync_run_id, since, from_date)
    params = list_params(stream, updated_since=since, from_date=from_date)
    return _read_window(conn, client, stream, company, sync_run_id, params, move_watermark=True)


def _read_by_cursor(
    conn: psycopg.Connection, client: SageClient, stream: Stream, company_id: str, sync_run_id: str,
    since: datetime | None, from_date: date | None,
) -> dict[str, int]:
    """Page by ``updated_at`` instead of by page number.

    Page offsets over live data skip a record whenever one on an earlier page is deleted (every
    later record moves up one place). Here every request starts again at page 1 from the newest
    ``updated_at`` seen (inclusive), sorted by ``updated_at``: nothing can shift under us, an
    edit during the read just moves a record further on, and because everything older than the
    cursor has been read, the watermark can move with each page's own transaction, so a crash
    of a long first sync resumes where it stopped. Page numbers are only used while a whole page
    shares one timestamp; ids already read at the cursor's timestamp are not loaded twice.
    """
    totals = {"pages": 0, "rows_seen": 0, "versions_added": 0, "quarantined": 0, "passes": 1}
    cursor, page_number = since, 1
    read_at_cursor: set[str] = set()
    while True:
        params = {**list_params(stream, updated_since=cursor, from_date=from_date), "page": page_number}
        page = client.get_page(stream.path, params)
        fresh = [i for i in page.items if not (isinstance(i, dict) and i.get("id") in read_at_cursor)]
        with conn.transaction():
            result = loader.load_records(conn, stream.name, company_id, sync_run_id, fresh)
            counters = {"pages": 1, "rows_seen": result.rows_seen, "versions_added": result.versions_added,
                        "quarantined": result.quarantined}
            # Only the first request's $total covers the whole window (later ones start later).
            first = totals["pages"] == 0
            runs.add_stream_stats(conn, sync_run_id, stream.name,
                                  total_reported=page.total if first else None, **counters)
            newest = result.max_updated_at
            if newest is not None:
                # Same transaction as the page: the watermark never runs ahead of the rows.
                watermarks.set_watermark(conn, company_id, stream.name, updated_since=newest)
        for key, value in counters.items():
            totals[key] += value
        if page.is_last:
            return totals
        if newest is not None and (cursor is None or newest > cursor):
            cursor, page_number = newest, 1
            read_at_cursor = {i["id"] for i in page.items
                              if isinstance(i, dict) and _parse_ts(i.get("updated_at")) == newest}
        else:  # the whole page had one timestamp: step through that timestamp by page number
            page_number += 1
            read_at_cursor |= set(result.record_ids)


def _read_window(
    conn: psycopg.Connection, client: SageClient, stream: Stream, company: registry.Company, sync_run_id: str,
    params: dict[str, Any], *, move_watermark: bool,
) -> dict[str, int]:
    """Page through ``params`` until one pass covers ``$total`` (at most ``MAX_PASSES`` passes)."""
    totals = {"pages": 0, "rows_seen": 0, "versions_added": 0, "quarantined": 0, "passes": 0}
    for _ in range(MAX_PASSES):
        totals["passes"] += 1
        if _one_pass(conn, client, stream, company.company_id, sync_run_id, params, totals,
                     move_watermark=move_watermark):
            return totals
        log.warning("%s/%s: a pass missed records that shifted between pages; reading again",
                    company.company_id, stream.name)
    raise RuntimeError(
        f"{stream.name}: Sage's data kept changing under paging for {MAX_PASSES} passes; "
        "the watermark was not moved, the next run reads the same window again"
    )


def _one_pass(
    conn: psycopg.Connection, client: SageClient, stream: Stream, company_id: str, sync_run_id: str,
    params: dict[str, Any], totals: dict[str, int], *, move_watermark: bool = True,
) -> bool:
    """Read every page once; True (and the watermark moved) when the pass saw all of ``$total``."""
    seen: set[str] = set()
    quarantined = 0
    newest: datetime | None = None
    complete = True
    for page in client.iter_pages(stream.path, params):
        with conn.transaction():
            result = loader.load_records(conn, stream.name, company_id, sync_run_id, page.items)
            seen.update(result.record_ids)
            quarantined += result.quarantined  # part of $total too: seen, just not loadable
            if result.max_updated_at and (newest is None or result.max_updated_at > newest):
                newest = result.max_updated_at
            counters = {"pages": 1, "rows_seen": result.rows_seen, "versions_added": result.versions_added,
                        "quarantined": result.quarantined}
            runs.add_stream_stats(conn, sync_run_id, stream.name, total_reported=page.total, **counters)
            for key, value in counters.items():
                totals[key] += value
            if page.next is None:
                complete = page.total is None or len(seen) + quarantined >= page.total
                if complete and newest is not None and move_watermark:
                    # Same transaction as the last page: the watermark never runs ahead of the rows.
                    watermarks.set_watermark(conn, company_id, stream.name, updated_since=newest)
    return complete


def sync_deletions(company_id: str, sync_run_id: str, *, env: SyncEnv | None = None,
                   client: SageClient | None = None) -> dict[str, int]:
    """Record what Sage lists under ``deleted_since`` for every stream that has the feed."""
    env = env or SyncEnv.from_config()
    _require_connected(env, company_id)
    own_client = client is None
    client = client or make_client(env, company_id)
    found: dict[str, int] = {}
    try:
        with _auth_guard(env, company_id), _connect(env, autocommit=True) as conn:
            company = registry.get_company(conn, company_id)
            if company is None:
                raise UnknownCompany(f"company {company_id!r} is not registered")
            marks = watermarks.get_watermarks(conn, company_id)
            floor = datetime.combine(company.synced_from.start_date, time.min, tzinfo=UTC)
            for stream in (s for s in STREAMS.values() if s.deletes):
                mark = marks.get(stream.name)
                since = (mark.deleted_since - OVERLAP) if mark and mark.deleted_since else floor
                found[stream.name] = _deletions_for(conn, client, stream, company_id, sync_run_id, since)
            if reconciliation_due(company):
                for name, count in reconcile_deletions(conn, client, company, sync_run_id).items():
                    found[name] = found.get(name, 0) + count
    finally:
        if own_client:
            client.close()
    return found


def _deletions_for(
    conn: psycopg.Connection, client: SageClient, stream: Stream, company_id: str, sync_run_id: str,
    since: datetime,
) -> int:
    new = 0
    newest: datetime | None = None
    for page in client.iter_pages(stream.path, deleted_params(stream, since)):
        with conn.transaction():
            added = loader.record_deletions(conn, stream.name, company_id, sync_run_id, page.items)
            new += added
            for item in page.items:
                stamp = _parse_ts(item.get("deleted_at")) if isinstance(item, dict) else None
                if stamp and (newest is None or stamp > newest):
                    newest = stamp
            runs.add_stream_stats(conn, sync_run_id, stream.name, deletions=added)
            if page.next is None and newest is not None:
                watermarks.set_watermark(conn, company_id, stream.name, deleted_since=newest)
    return new


def _parse_ts(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def finish_run(
    company_id: str, sync_run_id: str, *, status: str, error: str | None = None, env: SyncEnv | None = None
) -> None:
    """Close the audit row; a first successful sync makes the company ``active``."""
    env = env or SyncEnv.from_config()
    with _connect(env) as conn:
        try:
            runs.finish_run(conn, sync_run_id, status, error)
        except runs.UnknownRunError:
            log.warning("run %s was never opened; nothing to close", sync_run_id)
            return
        company = registry.get_company(conn, company_id)
        if company is not None:
            if status == "success" and company.status in ("initial_sync", "error"):
                registry.set_status(conn, company_id, "active", event_type="sync_succeeded"
                                    if company.status == "error" else "initial_sync_completed")
            elif status == "failed" and company.status in ("initial_sync", "active"):
                registry.set_status(conn, company_id, company.status, last_error=error)
        conn.commit()


def run_company(company_id: str, *, kind: str = "manual", env: SyncEnv | None = None) -> str:
    """A whole sync in one process (the CLI's `sync`, tests, benchmarks): the DAG's steps in order."""
    env = env or SyncEnv.from_config()
    sync_run_id = begin_run(company_id, kind=kind, env=env)
    run_steps(company_id, sync_run_id, env=env)
    return sync_run_id


def run_steps(company_id: str, sync_run_id: str, *, env: SyncEnv | None = None) -> None:
    """Every step of a sync under an already opened run, closing it as success or failed."""
    env = env or SyncEnv.from_config()
    try:
        check_auth(company_id, sync_run_id, env=env)
        with make_client(env, company_id) as client:
            for name in STREAMS:
                sync_stream(company_id, name, sync_run_id, env=env, client=client)
            sync_deletions(company_id, sync_run_id, env=env, client=client)
    except Exception as exc:
        finish_run(company_id, sync_run_id, status="failed", error=str(exc)[:2000], env=env)
        raise
    finish_run(company_id, sync_run_id, status="success", env=env)


# -- id reconciliation sweep ------------------------------------------------------------------------


def reconciliation_due(company: registry.Company, now: datetime | None = None) -> bool:
    """A sweep is due after a reconnect, and weekly once the first sync is complete."""
    if company.reconcile_requested:
        return True
    if company.status != "active":
        return False
    last = company.last_reconciled_at
    return last is None or last <= (now or datetime.now(UTC)) - RECONCILE_EVERY


def reconcile_deletions(
    conn: psycopg.Connection, client: SageClient, company: registry.Company, sync_run_id: str
) -> dict[str, int]:
    """Mark deleted the records the warehouse holds as current that Sage no longer lists.

    Sage's ``deleted_since`` feed may not remember deletions made long ago (e.g. while a company
    was disconnected), so for each document stream the ids Sage lists now over the Synced From
    window (no ``attributes``: id, displayed_as and $path only, 200 a page) are compared with the
    warehouse's current records in that window. A stream is judged only from a complete listing
    (distinct ids cover ``$total``), and each missing id is confirmed with a GET that answers 404:
    a record whose date merely moved out of the window is not deleted. Confirmed ones go to
    ``sage_raw.deletions`` with ``detection_method = 'reconciliation'``.
    """
    floor = company.synced_from.start_date
    found: dict[str, int] = {}
    complete = True
    for stream in DOCUMENT_STREAMS:
        listed = _listed_ids(client, stream, floor)
        if listed is None:
            complete = False
            log.warning("%s/%s: the id listing never covered $total; no reconciliation this time",
                        company.company_id, stream.name)
            continue
        missing = sorted(_current_ids(conn, stream, company.company_id, floor) - listed)
        gone = [{"id": record_id} for record_id in missing if _is_gone(client, stream, record_id)]
        with conn.transaction():
            added = loader.record_deletions(conn, stream.name, company.company_id, sync_run_id, gone,
                                            method="reconciliation")
            runs.add_stream_stats(conn, sync_run_id, stream.name, reconciled_deletions=added)
        found[stream.name] = added
    if complete:
        with conn.transaction():
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
        for page in client.iter_pages(stream.path, params):
            this_pass.update(str(item["id"]) for item in page.items if isinstance(item, dict) and item.get("id"))
            total = page.total
        # Ids from an earlier pass are kept: a record listed a moment ago is not one to mark deleted.
        seen |= this_pass
        if total is None or len(this_pass) >= total:
            return seen
    return None


def _current_ids(conn: psycopg.Connection, stream: Stream, company_id: str, floor: date) -> set[str]:
    rows = conn.execute(
        sql.SQL(
            "select v.record_id from ("
            "  select distinct on (record_id) record_id, payload ->> 'date' as doc_date from {} "
            "  where company_id = %(company)s order by record_id, _extracted_at desc) v "
            "where v.doc_date >= %(floor)s and not exists ("
            "  select 1 from sage_raw.deletions d where d.company_id = %(company)s "
            "  and d.stream = %(stream)s and d.record_id = v.record_id)"
        ).format(sql.Identifier("sage_raw", stream.name)),
        {"company": company_id, "floor": floor.isoformat(), "stream": stream.name},
    ).fetchall()
    return {r[0] for r in rows}


def _is_gone(client: SageClient, stream: Stream, record_id: str) -> bool:
    try:
        client.get(f"{stream.path}/{record_id}")
    except SageAPIError as exc:
        if exc.status == 404:
            return True
        raise
    log.info("%s %s is not listed in the window but still exists (date moved?): not deleted",
             stream.name, record_id)
    return False


# -- backfill (moving Synced From earlier) ----------------------------------------------------------


def backfill_window(company: registry.Company, quarter: Quarter) -> tuple[date, date]:
    """The document dates a backfill to ``quarter`` reads: up to the day before Synced From."""
    return quarter.start_date, company.synced_from.start_date - timedelta(days=1)


def backfill_stream(
    company_id: str, stream_name: str, sync_run_id: str, quarter: Quarter | str, *,
    env: SyncEnv | None = None, client: SageClient | None = None,
) -> dict[str, int]:
    """Load one document stream's older window (``quarter`` to before Synced From).

    No ``updated_or_created_since``: every document in the window is read, and the loader adds a
    version only for what the warehouse does not hold as it is, so unchanged records keep their
    only version and first-seen time. Watermarks are left alone: the window is older documents,
    while the daily watermark stands for changes to every document up to a point in time, which
    a backfill does not cover. A failed backfill is simply run again.
    """
    env = env or SyncEnv.from_config()
    quarter = Quarter.parse(quarter) if isinstance(quarter, str) else quarter
    stream = STREAMS[stream_name]
    if stream.kind != "document":
        raise ValueError(f"only document streams are backfilled, not {stream_name!r}")
    company = _require_connected(env, company_id)
    if quarter >= company.synced_from:
        # Synced From already moved (a re-run after success): nothing older is left to read.
        return {"pages": 0, "rows_seen": 0, "versions_added": 0, "quarantined": 0, "passes": 0}
    start, end = backfill_window(company, quarter)
    own_client = client is None
    client = client or make_client(env, company_id)
    try:
        with _auth_guard(env, company_id), _connect(env, autocommit=True) as conn:
            params = list_params(stream, from_date=start, to_date=end)
            return _read_window(conn, client, stream, company, sync_run_id, params, move_watermark=False)
    finally:
        if own_client:
            client.close()


def finish_backfill(company_id: str, sync_run_id: str, quarter: Quarter | str, *, env: SyncEnv | None = None
                    ) -> registry.Company:
    """Close a successful backfill and move Synced From, in one transaction."""
    env = env or SyncEnv.from_config()
    quarter = Quarter.parse(quarter) if isinstance(quarter, str) else quarter
    with _connect(env) as conn:
        runs.finish_run(conn, sync_run_id, "success")
        company = registry.get_company(conn, company_id)
        if company is None:
            raise UnknownCompany(f"company {company_id!r} is not registered")
        if quarter < company.synced_from:
            company = registry.set_synced_from(conn, company_id, quarter, details={"sync_run_id": sync_run_id})
        conn.commit()
    return company


def run_backfill(company_id: str, quarter: Quarter | str, *, env: SyncEnv | None = None,
                 sync_run_id: str | None = None) -> str:
    """A whole backfill in one process (the CLI's ``set-synced-from --here``, tests)."""
    env = env or SyncEnv.from_config()
    if sync_run_id is None:
        sync_run_id = begin_run(company_id, kind="backfill", env=env)
    try:
        check_auth(company_id, sync_run_id, env=env)
        with make_client(env, company_id) as client:
            for stream in DOCUMENT_STREAMS:
                backfill_stream(company_id, stream.name, sync_run_id, quarter, env=env, client=client)
    except Exception as exc:
        finish_run(company_id, sync_run_id, status="failed", error=str(exc)[:2000], env=env)
        raise
    finish_backfill(company_id, sync_run_id, quarter, env=env)
    return sync_run_id
