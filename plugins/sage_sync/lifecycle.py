"""A company connection's lifecycle: connect, disconnect, reconnect, move Synced From, reset, status.

The CLI (``python -m sage_sync ...``) and the Airflow web plugin (``plugins/sage_connect_plugin.py``)
both call these functions, so the two paths behave the same. Every function checks its input
first and raises :class:`LifecycleError` (a one-line, user-facing refusal) before changing
anything; only then does it act. Nothing here imports Airflow, except the best-effort DAG
pausing, which imports it lazily and does nothing where Airflow is not configured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from sage_sync import registry, runs, sync, watermarks
from sage_sync.auth import OAuthClient
from sage_sync.client import SageClient
from sage_sync.config import ConfigError, SageSettings, sage_settings, warehouse_dsn
from sage_sync.errors import ReauthorizationRequired, SageError
from sage_sync.loader import STREAMS as RAW_STREAMS
from sage_sync.migrate import ensure_migrated
from sage_sync.quarters import Quarter
from sage_sync.token_store import PostgresTokenStore
from sage_sync.tokens import TokenSet

log = logging.getLogger(__name__)

# The first sync of a company is flagged when it has not completed after this long.
INITIAL_SYNC_OVERDUE = timedelta(hours=24)
BACKFILL_DAG_ID = "sage_backfill"


class LifecycleError(ValueError):
    """A refused lifecycle action; the message is one line a user can act on."""


def dag_id_for(company_id: str) -> str:
    """The daily DAG of a company."""
    return f"sage_sync__{company_id}"


@dataclass(frozen=True)
class Authorisation:
    """The result of Sage's code exchange: the token pair and the businesses the user can reach."""

    tokens: TokenSet = field(repr=False)
    businesses: list[dict[str, Any]]

    def business(self, business_id: str) -> dict[str, Any]:
        """The business with this id, or :class:`LifecycleError` naming the ones the user has."""
        match = next((b for b in self.businesses if b.get("id") == business_id), None)
        if match is None:
            known = ", ".join(f"{b.get('id')} ({business_name(b)})" for b in self.businesses)
            raise LifecycleError(f"business {business_id!r} is not one this user can reach; "
                                 f"theirs: {known or 'none'}")
        return match


def business_name(business: dict[str, Any]) -> str:
    """The name to show for a ``/businesses`` item."""
    return str(business.get("name") or business.get("displayed_as") or business.get("id"))


@contextmanager
def _warehouse(dsn: str | None) -> Iterator[psycopg.Connection]:
    try:
        conn = psycopg.connect(dsn or warehouse_dsn(), connect_timeout=10, application_name="sage_lifecycle")
    except (ConfigError, psycopg.Error) as exc:
        raise LifecycleError(f"cannot reach the warehouse: {exc}".splitlines()[0]) from None
    with conn:
        yield conn


def _settings(settings: SageSettings | None) -> SageSettings:
    if settings is not None:
        return settings
    try:
        return sage_settings()
    except ConfigError as exc:
        raise LifecycleError(str(exc)) from None


# -- input checks -----------------------------------------------------------------------------------


def parse_quarter(text: str, *, today: datetime | None = None) -> Quarter:
    """``YYYY-Qn`` as a :class:`Quarter`; refuses malformed and future quarters."""
    try:
        quarter = Quarter.parse(text)
    except ValueError as exc:
        raise LifecycleError(str(exc)) from None
    if quarter.start_date > (today or datetime.now(UTC)).date():
        raise LifecycleError(f"Synced From {quarter} is in the future")
    return quarter


def require_company(conn: psycopg.Connection, company_id: str) -> registry.Company:
    """The registered company, or :class:`LifecycleError`."""
    company = registry.get_company(conn, company_id)
    if company is None:
        raise LifecycleError(f"unknown company {company_id!r}: see `python -m sage_sync status`")
    return company


def validate_earlier_quarter(company: registry.Company, text: str, *, today: datetime | None = None) -> Quarter:
    """The quarter a backfill may move Synced From to: strictly earlier than the current one.

    Also refuses companies that can't be backfilled now: still in their first sync (their
    window isn't complete yet) or without a live grant.
    """
    quarter = parse_quarter(text, today=today)
    current = company.synced_from
    if quarter == current:
        raise LifecycleError(f"{company.company_id} already syncs from {current}; pick an earlier quarter")
    if quarter > current:
        raise LifecycleError(f"{quarter} is later than the current Synced From {current}: Synced From only "
                             "moves earlier (use reset to start again)")
    if company.status == "initial_sync":
        raise LifecycleError(f"{company.company_id} is still in its initial sync: move Synced From once it "
                             "has completed")
    if company.status in ("disconnected", "needs_reauth"):
        raise LifecycleError(f"{company.company_id} is {company.status}: reconnect it first")
    return quarter


# -- Sage authorisation -----------------------------------------------------------------------------


class _FixedToken:
    """A token source for the one call made right after the code exchange."""

    def __init__(self, token: str) -> None:
        self._token = token

    def access_token(self) -> str:
        return self._token

    def refresh(self, rejected_token: str | None = None) -> str:
        raise SageError("the freshly issued access token was rejected")


def list_businesses(settings: SageSettings, access_token: str) -> list[dict[str, Any]]:
    """``GET /businesses`` with a fresh access token (no ``X-Business``: it lists them all)."""
    with SageClient(settings.api_url, "", _FixedToken(access_token), check_business=False) as client:
        body = client.get("/businesses")
    items = body.get("$items", []) if isinstance(body, dict) else body
    return [b for b in items if isinstance(b, dict)]


def exchange(code: str, code_verifier: str | None, *, settings: SageSettings | None = None) -> Authorisation:
    """Trade the callback's code for tokens and list the user's businesses; refuses a bad code."""
    if not code or not code.strip():
        raise LifecycleError("the authorisation code is empty")
    settings = _settings(settings)
    try:
        tokens = OAuthClient(settings).exchange_code(code.strip(), code_verifier=code_verifier or None)
        businesses = list_businesses(settings, tokens.access_token)
    except ReauthorizationRequired as exc:
        raise LifecycleError(f"Sage refused the authorisation code (expired, already used or issued for "
                             f"another redirect): {exc}") from None
    except SageError as exc:
        raise LifecycleError(f"Sage authorisation failed: {exc}") from None
    return Authorisation(tokens, businesses)


# -- connect ----------------------------------------------------------------------------------------


def register(auth: Authorisation, business_id: str, quarter: Quarter | str, *, dsn: str | None = None
             ) -> registry.Company:
    """Register a business the user picked from ``auth`` and store its tokens.

    A business that is already registered keeps its Synced From (moving it is a backfill) and
    is re-authorised instead.
    """
    quarter = parse_quarter(quarter) if isinstance(quarter, str) else quarter
    business = auth.business(business_id)
    dsn = dsn or _dsn()
    with _warehouse(dsn) as conn:
        ensure_migrated(conn)
        existing = registry.get_company(conn, business_id)
    if existing is not None:
        return _reauthorise(existing, auth, dsn=dsn, via="connect")
    with _warehouse(dsn) as conn:
        company = registry.register_company(conn, business_id, business_name(business), quarter)
        conn.commit()
    PostgresTokenStore(dsn).save(business_id, auth.tokens)
    set_dag_paused(dag_id_for(business_id), paused=False)
    return company


def connect(code: str, code_verifier: str | None, business_id: str, quarter: Quarter | str, *,
            dsn: str | None = None, settings: SageSettings | None = None) -> registry.Company:
    """Exchange ``code`` and register ``business_id`` from ``quarter`` (the CLI's ``connect``)."""
    quarter = parse_quarter(quarter) if isinstance(quarter, str) else quarter
    auth = exchange(code, code_verifier, settings=settings)
    auth.business(business_id)  # refuse before anything is stored
    return register(auth, business_id, quarter, dsn=dsn)


def _dsn() -> str:
    try:
        return warehouse_dsn()
    except ConfigError as exc:
        raise LifecycleError(str(exc)) from None


# -- disconnect / reconnect -------------------------------------------------------------------------


@dataclass(frozen=True)
class Disconnected:
    """What a disconnect did."""

    company: registry.Company
    token_revoked: bool
    revoke_error: str | None
    dag_paused: bool


def disconnect(company_id: str, *, dsn: str | None = None, settings: SageSettings | None = None,
               pause_dag: bool = True) -> Disconnected:
    """Stop imports for good until a reconnect: status, event, grant revoked at Sage, DAG paused.

    The status goes first (committed), so a run in flight stops at its next step with a clear
    skip reason instead of tripping over the deleted tokens; its open run row is closed as
    skipped. Data is kept. A revoke Sage cannot answer is reported in the event, not fatal: the
    tokens are deleted here either way, so the grant is unusable and dies within 31 days.
    """
    dsn = dsn or _dsn()
    with _warehouse(dsn) as conn:
        company = require_company(conn, company_id)
        if company.status == "disconnected":
            raise LifecycleError(f"{company_id} is already disconnected")
    settings = _settings(settings)
    with _warehouse(dsn) as conn:
        registry.set_status(conn, company_id, "disconnected")
        conn.execute(
            "update sage_control.sync_runs set status = 'skipped', ended_at = now(), "
            "error = 'company disconnected during the run' where company_id = %s and status = 'running'",
            (company_id,))
        conn.commit()
    store = PostgresTokenStore(dsn)
    revoked, revoke_error = False, None
    with store.refresh_lock(company_id):  # no refresh can rotate the token while it is revoked
        tokens = store.load(company_id)
        if tokens is None:
            revoke_error = "no stored grant"
        else:
            try:
                OAuthClient(settings).revoke(tokens.refresh_token)
                revoked = True
            except SageError as exc:
                revoke_error = str(exc)[:300]
        store.delete(company_id)
    paused = set_dag_paused(dag_id_for(company_id), paused=True) if pause_dag else False
    with _warehouse(dsn) as conn:
        company = require_company(conn, company_id)
        registry.log_event(conn, company_id, "disconnected", {
            "status": "disconnected", "previous_status": _previous_status(conn, company_id),
            "synced_from_quarter": company.synced_from_quarter, "token_revoked": revoked,
            "revoke_error": revoke_error, "dag_paused": paused})
        conn.commit()
    return Disconnected(company, revoked, revoke_error, paused)


def _previous_status(conn: psycopg.Connection, company_id: str) -> str | None:
    row = conn.execute(
        "select details ->> 'status' from sage_control.connection_events where company_id = %s "
        "and details ? 'status' and event_type <> 'disconnected' order by event_id desc limit 1",
        (company_id,)).fetchone()
    return row[0] if row else None


def reconnect(company_id: str, code: str, code_verifier: str | None, *, dsn: str | None = None,
              settings: SageSettings | None = None) -> registry.Company:
    """Re-authorise a company (disconnected, needing re-authorisation, or any other status).

    Watermarks are kept, so the next run imports everything created or updated since the last
    successful watermark, and it also runs an id reconciliation sweep for deletions Sage may
    no longer list in ``deleted_since``.
    """
    dsn = dsn or _dsn()
    with _warehouse(dsn) as conn:
        company = require_company(conn, company_id)
    auth = exchange(code, code_verifier, settings=settings)
    auth.business(company_id)
    return _reauthorise(company, auth, dsn=dsn, via="reconnect")


def _reauthorise(company: registry.Company, auth: Authorisation, *, dsn: str, via: str) -> registry.Company:
    PostgresTokenStore(dsn).save(company.company_id, auth.tokens)
    with _warehouse(dsn) as conn:
        updated = registry.reauthorise(conn, company.company_id, details={
            "previous_status": company.status, "via": via})
        conn.commit()
    set_dag_paused(dag_id_for(company.company_id), paused=False)
    return updated


# -- Synced From (backfill) -------------------------------------------------------------------------


def prepare_backfill(company_id: str, quarter_text: str, *, dsn: str | None = None) -> tuple[registry.Company,
                                                                                            Quarter]:
    """Refuse an unknown company or a quarter that is not earlier than Synced From."""
    with _warehouse(dsn) as conn:
        company = require_company(conn, company_id)
    return company, validate_earlier_quarter(company, quarter_text)


def authorise_backfill(company_id: str, quarter_text: str, code: str, code_verifier: str | None, *,
                       dsn: str | None = None, settings: SageSettings | None = None) -> Quarter:
    """Validate the move, then store the grant of the fresh Authorise Access it requires."""
    company, quarter = prepare_backfill(company_id, quarter_text, dsn=dsn)
    auth = exchange(code, code_verifier, settings=settings)
    auth.business(company_id)
    PostgresTokenStore(dsn or _dsn()).save(company.company_id, auth.tokens)
    with _warehouse(dsn) as conn:
        registry.log_event(conn, company_id, "backfill_requested", {
            "synced_from_quarter": company.synced_from_quarter, "requested_synced_from_quarter": str(quarter)})
        conn.commit()
    return quarter


def backfill_conf(company_id: str, quarter: Quarter) -> dict[str, str]:
    """The ``sage_backfill`` DAG's run conf."""
    return {"company_id": company_id, "synced_from": str(quarter)}


# -- reset ------------------------------------------------------------------------------------------


def reset(company_id: str, *, confirm: bool, dsn: str | None = None) -> str:
    """Wipe the company's raw rows (versions, deletions, quarantine) and watermarks.

    Returns the id of the ``reset`` run opened for it: the caller either runs the full sync
    under it (:func:`sage_sync.sync.run_steps`) or closes it (:func:`close_reset_run`) and lets
    the next daily run do the full sync. Opening the run takes the company's run slot, so a
    reset never interleaves with a daily run or a backfill. The modelled rows are dbt's: its
    incremental models drop the rows of a company older than its last ``reset`` event (macro
    forget_reset_companies), so nothing here writes to a dbt table.
    """
    if not confirm:
        raise LifecycleError("reset wipes the company's imported data and re-imports it from Synced From: "
                             "confirm it explicitly (--yes)")
    dsn = dsn or _dsn()
    with _warehouse(dsn) as conn:
        company = require_company(conn, company_id)
        if company.status in ("disconnected", "needs_reauth"):
            raise LifecycleError(f"{company_id} is {company.status}: reconnect it before a reset")
        try:
            run_id = sync.open_run(conn, company_id, "reset")
        except sync.RunInProgress as exc:
            raise LifecycleError(str(exc)) from None
        wiped: dict[str, int] = {}
        for table in sorted(RAW_STREAMS | {"deletions", "quarantine"}):
            cur = conn.execute(sql.SQL("delete from {} where company_id = %s").format(
                sql.Identifier("sage_raw", table)), (company_id,))
            wiped[table] = cur.rowcount
        cleared = watermarks.clear_watermarks(conn, company_id)
        conn.execute("update sage_control.companies set reconcile_requested = false, last_reconciled_at = null "
                     "where company_id = %s", (company_id,))
        registry.set_status(conn, company_id, "initial_sync", event_type="reset", details={
            "synced_from_quarter": company.synced_from_quarter, "rows_deleted": wiped,
            "watermarks_cleared": cleared, "sync_run_id": run_id})
        conn.commit()
    return run_id


def close_reset_run(run_id: str, *, dsn: str | None = None) -> None:
    """Close a wipe-only reset run; the next daily run does the full sync (status stays initial_sync)."""
    with _warehouse(dsn) as conn:
        runs.finish_run(conn, run_id, "skipped", "wiped; the full sync is left to the next daily run")
        conn.commit()


# -- status -----------------------------------------------------------------------------------------


def company_statuses(conn: psycopg.Connection, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every company with its status, its last run's progress and, in initial sync, how long it has taken."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            select c.company_id, c.company_name, c.status, c.synced_from_quarter, c.last_error,
                   c.connected_at, c.disconnected_at, c.created_at, now() as db_now,
                   r.sync_run_id, r.kind, r.status as run_status, r.started_at, r.ended_at, r.stats,
                   (select min(f.started_at) from sage_control.sync_runs f
                    where f.company_id = c.company_id and f.started_at >= coalesce(
                        (select max(e.occurred_at) from sage_control.connection_events e
                         where e.company_id = c.company_id and e.event_type = 'reset'), c.created_at)
                   ) as initial_sync_started_at
            from sage_control.companies c
            left join lateral (
                select * from sage_control.sync_runs r
                where r.company_id = c.company_id order by r.started_at desc limit 1
            ) r on true
            order by c.company_name, c.company_id
            """
        )
        rows = cur.fetchall()
    report = []
    for row in rows:
        now_ = now or row["db_now"]
        stats = row["stats"] or {}
        last_run = None
        if row["started_at"] is not None:
            end = row["ended_at"] or now_
            totals = [int(s["total_reported"]) for s in stats.values() if "total_reported" in s]
            last_run = {
                "sync_run_id": row["sync_run_id"], "kind": row["kind"], "status": row["run_status"],
                "started_at": row["started_at"].isoformat(),
                "ended_at": row["ended_at"].isoformat() if row["ended_at"] else None,
                "elapsed_seconds": int((end - row["started_at"]).total_seconds()),
                "pages": sum(int(s.get("pages", 0)) for s in stats.values()),
                "records": sum(int(s.get("rows_seen", 0)) for s in stats.values()),
                "versions_added": sum(int(s.get("versions_added", 0)) for s in stats.values()),
                "total_reported": sum(totals) if totals else None,
            }
        initial = None
        if row["status"] == "initial_sync":
            started = row["initial_sync_started_at"]
            elapsed = (now_ - started).total_seconds() if started else None
            initial = {
                "started_at": started.isoformat() if started else None,
                "elapsed_seconds": int(elapsed) if elapsed is not None else None,
                "overdue": elapsed is not None and elapsed > INITIAL_SYNC_OVERDUE.total_seconds(),
            }
        report.append({
            "company_id": row["company_id"], "company_name": row["company_name"], "status": row["status"],
            "synced_from": row["synced_from_quarter"], "last_error": row["last_error"],
            "connected_at": row["connected_at"].isoformat() if row["connected_at"] else None,
            "disconnected_at": row["disconnected_at"].isoformat() if row["disconnected_at"] else None,
            "initial_sync": initial, "last_run": last_run,
        })
    return report


def format_duration(seconds: int | None) -> str:
    """``3h 05m`` / ``42s``."""
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def describe(item: dict[str, Any]) -> str:
    """One line of ``status`` for a company."""
    line = f"{item['company_name']} ({item['company_id']}): {item['status']}, Synced From {item['synced_from']}"
    initial = item.get("initial_sync")
    if initial and initial["started_at"]:
        line += f"; initial sync running for {format_duration(initial['elapsed_seconds'])}"
        if initial["overdue"]:
            line += " (NOT COMPLETE AFTER 24 HOURS)"
    run = item["last_run"]
    if run:
        total = f" of {run['total_reported']} reported" if run["total_reported"] is not None else ""
        line += (f"; last {run['kind']} run {run['status']} at {run['started_at'][:19]} "
                 f"({format_duration(run['elapsed_seconds'])}): {run['pages']} pages, "
                 f"{run['records']} records{total}, {run['versions_added']} new versions")
    if item["last_error"]:
        line += f"; last error: {item['last_error']}"
    return line


# -- Airflow, best effort ---------------------------------------------------------------------------


def set_dag_paused(dag_id: str, *, paused: bool) -> bool:
    """Pause or unpause a DAG in Airflow's metadata DB; False when Airflow isn't reachable here.

    Best effort on purpose: the run itself skips a disconnected company whatever the pause state,
    and the CLI must work on a machine that only reaches the warehouse.
    """
    try:
        from airflow.models.dag import DagModel  # noqa: PLC0415 - only where Airflow is configured
        from airflow.utils.session import create_session  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - no Airflow here
        return False
    try:
        with create_session() as session:
            found = session.query(DagModel).filter(DagModel.dag_id == dag_id).update(
                {DagModel.is_paused: paused}, synchronize_session=False)
        return bool(found)
    except Exception as exc:  # noqa: BLE001 - a missing metadata DB must not fail a disconnect
        log.info("could not %s %s in Airflow: %s", "pause" if paused else "unpause", dag_id, type(exc).__name__)
        return False
