"""One company's sync, step by step: the functions the company and backfill DAGs' tasks call.

Each step is a transaction-shaped unit that can be re-run. How a stream is read is
``extract.py``'s; the deletion feed and the reconciliation sweep are ``deletions.py``'s; every
write to ``sync_runs`` is ``warehouse/runs.py``'s. This module opens and closes runs, refuses
companies that must not sync, and strings the steps together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from sage_sync.core.errors import (
    CompanySkipped,
    GrantRefused,
    PageLimitExceeded,
    ReauthorizationRequired,
    RunFenced,
    RunInProgress,
    SageAPIError,
    TransientError,
    UnknownCompany,
    UnknownRunError,
    note_stream,
)
from sage_sync.core.lanes import POOL_OF, Lane
from sage_sync.core.quarters import Quarter
from sage_sync.core.status import CompanyStatus
from sage_sync.pipeline import env as run_env
from sage_sync.pipeline.deletions import read_deletions
from sage_sync.pipeline.env import SyncEnv, make_client, run_key
from sage_sync.pipeline.extract import StreamRead, empty_totals, read_backfill, read_since_watermark, read_singleton
from sage_sync.sage.client import SageClient
from sage_sync.sage.streams import DOCUMENT_STREAMS, STREAMS, Stream
from sage_sync.warehouse import registry, runs, stream_states

log = logging.getLogger(__name__)

# Re-exported for the DAG tasks and the callers that catch them by this module's name.
__all__ = [
    "CompanySkipped",
    "RunFenced",
    "RunInProgress",
    "SyncEnv",
    "UnknownCompany",
    "backfill_stream",
    "backfill_window",
    "begin_run",
    "check_auth",
    "finish_backfill",
    "finish_run",
    "make_client",
    "read_everything",
    "resume_point",
    "run_backfill",
    "run_company",
    "run_key",
    "run_lane",
    "run_steps",
    "sync_deletions",
    "sync_stream",
]


def begin_run(
    company_id: str, *, airflow_run_id: str | None = None, kind: str = "daily", env: SyncEnv | None = None
) -> str:
    """Open (or re-open, on a retry) the run's audit row; refuse companies that must not sync.

    A retry of an Airflow run opened before the company's last reset or disconnect raises
    :class:`RunFenced`: that run's work is over, the next one starts from the current state.
    """
    env = env or SyncEnv.from_config()
    with run_env.connect(env) as conn:
        company = run_env.get_company(conn, company_id)
        if company.status == CompanyStatus.DISCONNECTED:
            since = f" since {company.disconnected_at:%Y-%m-%d %H:%M} UTC" if company.disconnected_at else ""
            raise CompanySkipped(
                f"{company.company_name} ({company_id}) is disconnected{since}: no import until it is reconnected"
            )
        if company.status == CompanyStatus.NEEDS_REAUTH:
            raise ReauthorizationRequired(
                f"{company.company_name} ({company_id}) needs re-authorisation: "
                f"run `python -m sage_sync reconnect {company_id}` or use the Connect page"
            )
        sync_run_id = runs.open_run(
            conn, company_id, kind, sync_run_id=(run_key(company_id, airflow_run_id) if airflow_run_id else None)
        )
        conn.commit()
    return sync_run_id


def _require_live(conn: psycopg.Connection, sync_run_id: str) -> None:
    """Refuse at once a task whose run may no longer write (:class:`RunFenced`), before it reads Sage.

    Only a fail-fast: the guarantee is every page transaction's own fence (``runs.add_stream_stats``),
    since the run may be closed, or the company reset, while the task reads.
    """
    with conn.transaction():
        runs.fence(conn, sync_run_id)


@contextmanager
def closes_run_on_refusal(env: SyncEnv, company_id: str, sync_run_id: str) -> Iterator[None]:
    """A refused grant closes the run as failed at once, with the reason and what to do.

    The task then fails without retries; a run row left ``running`` meanwhile would read as
    "running: 0 pages" on the status page until someone noticed.
    """
    try:
        yield
    except GrantRefused as exc:
        finish_run(company_id, sync_run_id, status="failed", error=str(exc)[:2000], env=env)
        raise


def run_lane(env: SyncEnv, sync_run_id: str, conn: psycopg.Connection | None = None) -> Lane:
    """The run's lane (``runs.lane_of``: history for a backfill, a first sync or a full re-import),
    said once in the task log with its part of the Sage budget, so whoever reads a run's log sees
    which lane it queued in."""
    with ExitStack() as stack:
        if conn is None:
            conn = stack.enter_context(run_env.connect(env, autocommit=True))
        lane = runs.lane_of(conn, sync_run_id)
    log.info("run %s: %s; pool %s", sync_run_id, run_env.describe_budget(env, lane), POOL_OF[lane].name)
    return lane


def check_auth(company_id: str, sync_run_id: str, *, env: SyncEnv | None = None) -> Lane:
    """Refresh the grant now: proves it is alive, and a daily refresh keeps it from expiring.

    Returns the run's lane (:func:`run_lane`), whose part of the budget its requests took."""
    env = env or SyncEnv.from_config()
    run_env.require_connected(env, company_id)
    lane = run_lane(env, sync_run_id)
    with closes_run_on_refusal(env, company_id, sync_run_id), run_env.auth_guard(env, company_id):
        tokens = run_env.token_manager(env, company_id)
        stored = tokens.store.load(company_id)
        expires = stored.refresh_expires_at if stored else None
        if expires is not None and expires <= datetime.now(UTC):
            # Sage's refresh token dies after 31 days unused: only a new authorisation helps, and
            # saying so beats an opaque invalid_grant.
            raise ReauthorizationRequired(
                f"the refresh token expired on {expires:%Y-%m-%d} (unused for 31 days): authorise again"
            )
        tokens.refresh()
        run_env.check_business(env, company_id, tokens, lane=lane)
    log.info("grant of %s refreshed for run %s", company_id, sync_run_id)
    return lane


class StreamTask:
    """One stream task's context: one warehouse connection, one read of the company, the run guard
    and the Sage client, closed together on exit.

    Entering opens the connection (autocommit: each page's ``conn.transaction()`` is a real
    transaction, committed with its page) and reads the company from it, refusing one that was
    disconnected (:class:`CompanySkipped`). :meth:`start` then refuses a run that may no longer
    write (:func:`_require_live`) and sets up the client inside the guards every Sage call needs:
    a refused grant marks the company and closes the run as failed (:func:`closes_run_on_refusal`,
    ``env.auth_guard``). A backfill looks at the company between the two, to return early when
    Synced From has moved already.
    """

    def __init__(
        self, company_id: str, sync_run_id: str, *, env: SyncEnv | None = None, client: SageClient | None = None
    ) -> None:
        self.company_id, self.sync_run_id = company_id, sync_run_id
        self.env = env or SyncEnv.from_config()
        self._given = client
        self._stack = ExitStack()

    def __enter__(self) -> StreamTask:
        with ExitStack() as stack:
            self.conn: psycopg.Connection = stack.enter_context(run_env.connect(self.env, autocommit=True))
            self.company = run_env.connected_company(self.conn, self.company_id)
            self._stack = stack.pop_all()
        return self

    def start(self) -> SageClient:
        """Check the run may still write, then the client (in the run's lane), inside the grant's guards."""
        _require_live(self.conn, self.sync_run_id)
        lane = run_lane(self.env, self.sync_run_id, self.conn)
        self._stack.enter_context(closes_run_on_refusal(self.env, self.company_id, self.sync_run_id))
        self.client = self._stack.enter_context(run_env.client_for(self.env, self.company_id, self._given, lane=lane))
        self._stack.enter_context(run_env.auth_guard(self.env, self.company_id))
        return self.client

    def read(self, stream: Stream) -> StreamRead:
        """The started task's read of ``stream`` (:class:`StreamRead`)."""
        return StreamRead(self.conn, self.client, stream, self.company_id, self.sync_run_id)

    def __exit__(self, *exc: Any) -> bool:
        return self._stack.__exit__(*exc)


def sync_stream(
    company_id: str,
    stream_name: str,
    sync_run_id: str,
    *,
    env: SyncEnv | None = None,
    client: SageClient | None = None,
) -> dict[str, int | None]:
    """Extract one stream since its watermark into ``sage_raw``.

    Returns this call's counters with Sage's ``$total`` as ``total_reported`` (the task's XCom);
    each page logs one progress line (records so far, ``$total``, rate, ETA).
    """
    stream = STREAMS[stream_name]
    with StreamTask(company_id, sync_run_id, env=env, client=client) as task:
        task.start()
        if stream.kind == "singleton":
            return read_singleton(task.read(stream))
        return read_since_watermark(task.read(stream), task.company)


def sync_deletions(
    company_id: str, sync_run_id: str, *, env: SyncEnv | None = None, client: SageClient | None = None
) -> dict[str, int]:
    """Record what Sage lists under ``deleted_since`` for every stream that has the feed."""
    with StreamTask(company_id, sync_run_id, env=env, client=client) as task:
        return read_deletions(task.conn, task.start(), task.company, sync_run_id)


def finish_run(
    company_id: str, sync_run_id: str, *, status: str, error: str | None = None, env: SyncEnv | None = None
) -> None:
    """Close the audit row; a first successful sync makes the company ``active``.

    Only the call that closes the run touches the company: a run closed already (a sibling task
    failed, a disconnect skipped it) keeps its first status, and a success is refused
    (:class:`RunFenced`) for a run closed otherwise or superseded by a reset.
    """
    env = env or SyncEnv.from_config()
    with run_env.connect(env) as conn:
        try:
            closed = runs.finish_run(conn, sync_run_id, status, error)
        except UnknownRunError:
            log.warning("run %s was never opened; nothing to close", sync_run_id)
            return
        company = registry.get_company(conn, company_id) if closed else None
        if company is not None:
            if status == "success" and company.status in (
                CompanyStatus.INITIAL_SYNC,
                CompanyStatus.ERROR,
                CompanyStatus.BUSINESS_MISSING,
            ):
                registry.set_status(
                    conn,
                    company_id,
                    CompanyStatus.ACTIVE,
                    event_type="sync_succeeded" if company.status == CompanyStatus.ERROR else "initial_sync_completed",
                )
            elif status == "failed" and company.status in (CompanyStatus.INITIAL_SYNC, CompanyStatus.ACTIVE):
                registry.set_status(conn, company_id, company.status, last_error=error)
        conn.commit()


def run_company(company_id: str, *, kind: str = "manual", env: SyncEnv | None = None) -> str:
    """A whole sync in one process (the CLI's `sync`, tests, benchmarks): the DAG's steps in order."""
    env = env or SyncEnv.from_config()
    sync_run_id = begin_run(company_id, kind=kind, env=env)
    run_steps(company_id, sync_run_id, env=env)
    return sync_run_id


# A stream's own trouble: the run's other streams are still read before the task fails and retries.
STREAM_ERRORS = (TransientError, SageAPIError, PageLimitExceeded)


def read_everything(
    company_id: str,
    sync_run_id: str,
    *,
    env: SyncEnv | None = None,
    skip: Collection[str] = (),
    watch: Callable[[str], AbstractContextManager[object]] | None = None,
) -> dict[str, Any]:
    """A run's whole read in one call: the grant, every stream since its watermark, then the deletions.

    The daily DAG runs this as one task, not one task per stream: a task run costs the deployment
    about 0.6 core-seconds whatever it does (its process, the scheduler's and the api-server's
    bookkeeping), and a small company's streams are a request or two each (bench/RESULTS.md).

    - ``skip``: streams an earlier try of the same run read to the end (:func:`resume_point`):
      a retry resumes where the failed try stopped. A stream that failed part-way resumes from
      its own watermark, which moves with every page it landed.
    - ``watch(stream)``: a context around each stream's read (the DAG task records the stream's
      state for the pages there: reading, done, retrying at HH:MM, failed).
    - A stream's own trouble (Sage answered 5xx or 4xx, a malformed page, the page cap) does not
      stop the others: each is read, then the first failure is raised, so the task retries with
      every other stream's rows landed. The deletions are read only once every stream was, as the
      per-stream tasks had them. Anything else (a refused grant, a disconnect, a fenced run, a
      missing business) stops the read at once.
    """
    env = env or SyncEnv.from_config()
    lane = check_auth(company_id, sync_run_id, env=env)
    results: dict[str, Any] = {}
    failed: list[tuple[str, BaseException]] = []
    with run_env.make_client(env, company_id, lane=lane) as client:
        for name in STREAMS:
            if name in skip:
                log.info("%s: read to the end by an earlier try of run %s; not read again", name, sync_run_id)
                continue
            try:
                with watch(name) if watch is not None else nullcontext():
                    results[name] = sync_stream(company_id, name, sync_run_id, env=env, client=client)
            except STREAM_ERRORS as exc:
                log.error("%s failed (%s: %s); the run's other streams are read first", name, type(exc).__name__, exc)
                note_stream(exc, name)
                failed.append((name, exc))
        if failed:
            log.error("run %s: %d stream(s) failed: %s", sync_run_id, len(failed), ", ".join(n for n, _ in failed))
            raise failed[0][1]
        results["deletions"] = sync_deletions(company_id, sync_run_id, env=env, client=client)
    return results


def resume_point(company_id: str, airflow_run_id: str, *, env: SyncEnv | None = None) -> frozenset[str]:
    """The streams an earlier, unfinished try of this Airflow run read to the end (none for a new run,
    or for a run that succeeded and is asked for again)."""
    env = env or SyncEnv.from_config()
    with run_env.connect(env, autocommit=True) as conn:
        return stream_states.done_in_unfinished_run(conn, run_key(company_id, airflow_run_id))


def run_steps(company_id: str, sync_run_id: str, *, env: SyncEnv | None = None) -> None:
    """Every step of a sync under an already opened run, closing it as success or failed."""
    env = env or SyncEnv.from_config()
    try:
        read_everything(company_id, sync_run_id, env=env)
    except Exception as exc:
        finish_run(company_id, sync_run_id, status="failed", error=str(exc)[:2000], env=env)
        raise
    finish_run(company_id, sync_run_id, status="success", env=env)


# -- backfill (moving Synced From earlier) ----------------------------------------------------------


def backfill_window(company: registry.Company, quarter: Quarter) -> tuple[date, date]:
    """The document dates a backfill to ``quarter`` reads: up to the day before Synced From."""
    return quarter.start_date, company.synced_from.start_date - timedelta(days=1)


def backfill_stream(
    company_id: str,
    stream_name: str,
    sync_run_id: str,
    quarter: Quarter | str,
    *,
    env: SyncEnv | None = None,
    client: SageClient | None = None,
) -> dict[str, int | None]:
    """Load one document stream's older window (``quarter`` to before Synced From).

    No ``updated_or_created_since``: every document in the window is read, and the loader adds a
    version only for what the warehouse does not hold as it is, so unchanged records keep their
    only version and first-seen time. Watermarks are left alone: the window is older documents,
    while the daily watermark stands for changes to every document up to a point in time, which
    a backfill does not cover. A failed backfill is simply run again.
    """
    quarter = Quarter.of(quarter)
    stream = STREAMS[stream_name]
    if stream.kind != "document":
        raise ValueError(f"only document streams are backfilled, not {stream_name!r}")
    with StreamTask(company_id, sync_run_id, env=env, client=client) as task:
        if quarter >= task.company.synced_from:
            # Synced From already moved (a re-run after success): nothing older is left to read.
            return empty_totals()
        task.start()
        start, end = backfill_window(task.company, quarter)
        return read_backfill(task.read(stream), start, end)


def finish_backfill(
    company_id: str, sync_run_id: str, quarter: Quarter | str, *, env: SyncEnv | None = None
) -> registry.Company:
    """Close a successful backfill and move Synced From, in one transaction.

    A backfill run closed as failed (or fenced by a reset) raises :class:`RunFenced` and moves nothing.
    """
    env = env or SyncEnv.from_config()
    quarter = Quarter.of(quarter)
    with run_env.connect(env) as conn:
        runs.finish_run(conn, sync_run_id, "success")
        company = run_env.get_company(conn, company_id)
        if quarter < company.synced_from:
            company = registry.set_synced_from(conn, company_id, quarter, details={"sync_run_id": sync_run_id})
        conn.commit()
    return company


def run_backfill(
    company_id: str, quarter: Quarter | str, *, env: SyncEnv | None = None, sync_run_id: str | None = None
) -> str:
    """A whole backfill in one process (the CLI's ``set-synced-from --here``, tests)."""
    env = env or SyncEnv.from_config()
    if sync_run_id is None:
        sync_run_id = begin_run(company_id, kind="backfill", env=env)
    try:
        lane = check_auth(company_id, sync_run_id, env=env)  # a backfill: history
        with run_env.make_client(env, company_id, lane=lane) as client:
            for stream in DOCUMENT_STREAMS:
                backfill_stream(company_id, stream.name, sync_run_id, quarter, env=env, client=client)
    except Exception as exc:
        finish_run(company_id, sync_run_id, status="failed", error=str(exc)[:2000], env=env)
        raise
    finish_backfill(company_id, sync_run_id, quarter, env=env)
    return sync_run_id
