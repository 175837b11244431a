"""One company's sync, step by step: the functions the company DAG's tasks call.

Each step is a transaction-shaped unit that can be re-run: pages are loaded in their own
transaction (new versions only, so a re-fetch adds nothing), and a stream's watermark moves in
the transaction of its last page, and only after a pass whose distinct ids cover the ``$total``
Sage reported. Page-offset paging over live data can skip a record that shifted between pages
while another was edited; such a pass is repeated instead of trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import psycopg

from sage_sync import loader, registry, runs, watermarks
from sage_sync.auth import OAuthClient, TokenManager
from sage_sync.client import SageClient
from sage_sync.config import SageSettings, sage_settings, warehouse_dsn
from sage_sync.errors import ReauthorizationRequired, SubscriptionInactive
from sage_sync.streams import STREAMS, Stream, deleted_params, list_params
from sage_sync.token_store import PostgresTokenStore

log = logging.getLogger(__name__)

# updated_or_created_since is inclusive and Sage's commit order is not its timestamp order, so
# every incremental read starts a little before the watermark; unchanged re-reads add nothing.
OVERLAP = timedelta(minutes=10)
# A pass whose distinct ids fall short of $total is repeated at most this many times in a run.
MAX_PASSES = 3


class CompanySkipped(Exception):
    """The company must not be synced now (disconnected); the message says why."""


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
def _connect(env: SyncEnv) -> Iterator[psycopg.Connection]:
    with psycopg.connect(env.dsn, application_name="sage_sync") as conn:
        yield conn


def token_manager(env: SyncEnv, company_id: str) -> TokenManager:
    """The company's token manager over the encrypted Postgres store."""
    return TokenManager(company_id, PostgresTokenStore(env.dsn), OAuthClient(env.settings))


def make_client(env: SyncEnv, company_id: str, **kwargs: Any) -> SageClient:
    """A client for one company's business (company id = Sage business id)."""
    return SageClient(env.settings.api_url, company_id, token_manager(env, company_id), **kwargs)


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
        sync_run_id = runs.start_run(conn, company_id, kind, sync_run_id=(
            run_key(company_id, airflow_run_id) if airflow_run_id else None))
        conn.commit()
    return sync_run_id


def _mark_needs_reauth(env: SyncEnv, company_id: str, error: Exception) -> None:
    with _connect(env) as conn:
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
    with _auth_guard(env, company_id):
        tokens = token_manager(env, company_id)
        tokens.refresh()
    log.info("grant of %s refreshed for run %s", company_id, sync_run_id)


def sync_stream(
    company_id: str, stream_name: str, sync_run_id: str, *, env: SyncEnv | None = None,
    client: SageClient | None = None,
) -> dict[str, int]:
    """Extract one stream since its watermark into ``sage_raw``; returns this call's counters."""
    env = env or SyncEnv.from_config()
    stream = STREAMS[stream_name]
    own_client = client is None
    client = client or make_client(env, company_id)
    try:
        with _auth_guard(env, company_id), _connect(env) as conn:
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
    params = list_params(stream, updated_since=since, from_date=from_date)
    totals = {"pages": 0, "rows_seen": 0, "versions_added": 0, "quarantined": 0, "passes": 0}
    for _ in range(MAX_PASSES):
        totals["passes"] += 1
        if _one_pass(conn, client, stream, company.company_id, sync_run_id, params, totals):
            return totals
        log.warning("%s/%s: a pass missed records that shifted between pages; reading again",
                    company.company_id, stream.name)
    raise RuntimeError(
        f"{stream.name}: Sage's data kept changing under paging for {MAX_PASSES} passes; "
        "the watermark was not moved, the next run reads the same window again"
    )


def _one_pass(
    conn: psycopg.Connection, client: SageClient, stream: Stream, company_id: str, sync_run_id: str,
    params: dict[str, Any], totals: dict[str, int],
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
                if complete and newest is not None:
                    # Same transaction as the last page: the watermark never runs ahead of the rows.
                    watermarks.set_watermark(conn, company_id, stream.name, updated_since=newest)
    return complete


def sync_deletions(company_id: str, sync_run_id: str, *, env: SyncEnv | None = None,
                   client: SageClient | None = None) -> dict[str, int]:
    """Record what Sage lists under ``deleted_since`` for every stream that has the feed."""
    env = env or SyncEnv.from_config()
    own_client = client is None
    client = client or make_client(env, company_id)
    found: dict[str, int] = {}
    try:
        with _auth_guard(env, company_id), _connect(env) as conn:
            company = registry.get_company(conn, company_id)
            if company is None:
                raise UnknownCompany(f"company {company_id!r} is not registered")
            marks = watermarks.get_watermarks(conn, company_id)
            floor = datetime.combine(company.synced_from.start_date, time.min, tzinfo=UTC)
            for stream in (s for s in STREAMS.values() if s.deletes):
                mark = marks.get(stream.name)
                since = (mark.deleted_since - OVERLAP) if mark and mark.deleted_since else floor
                found[stream.name] = _deletions_for(conn, client, stream, company_id, sync_run_id, since)
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
    return sync_run_id
