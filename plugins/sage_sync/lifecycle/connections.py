"""A company connection's use cases: connect, disconnect, reconnect, move Synced From, reset.

Long on purpose: the use cases share their refusals and their order of steps, and
reading them side by side is how one checks that they agree.

The CLI (``python -m sage_sync ...``) and the Connect pages (``sage_sync.web``) both call these
functions, so the two paths behave the same. Every function checks its input first and raises
:class:`LifecycleError` (a one-line, user-facing refusal) before changing anything; only then does
it act. Airflow is reached only through ``orchestration.airflow_api``; Sage's authorisation is
``lifecycle.authorisation``'s; the status report is ``reporting.status``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TypeVar

from sage_sync.core.config import SageSettings
from sage_sync.core.errors import (
    CompanySkipped,
    CryptoError,
    GrantReplaced,
    LifecycleError,
    MigrationLockTimeout,
    RunFenced,
    RunInProgress,
    SageError,
)
from sage_sync.core.ids import check_company_id
from sage_sync.core.quarters import Quarter
from sage_sync.core.status import NOT_CONNECTED, CompanyStatus
from sage_sync.lifecycle import authorisation
from sage_sync.lifecycle.authorisation import Authorisation, business_name, exchange, revoke_grant
from sage_sync.lifecycle.inputs import (
    daily_window,
    dsn_or_refuse,
    parse_daily_start,
    require_company,
    settings_or_refuse,
    synced_from_input,
    validate_earlier_quarter,
    warehouse,
)
from sage_sync.orchestration import airflow_api, schedule
from sage_sync.orchestration.airflow_api import BACKFILL_DAG_ID, dag_id_for
from sage_sync.pipeline import sync
from sage_sync.sage.auth import OAuthClient
from sage_sync.sage.tokens import TokenSet
from sage_sync.warehouse import raw, registry, runs, watermarks
from sage_sync.warehouse.migrate import migrate
from sage_sync.warehouse.token_store import PostgresTokenStore, read_recovery_record

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# -- connect ----------------------------------------------------------------------------------------


def register(
    auth: Authorisation,
    business_id: str,
    quarter: Quarter | str,
    *,
    dsn: str | None = None,
    caller: airflow_api.Caller | None = None,
) -> registry.Company:
    """Register a business the user picked from ``auth`` and store its tokens.

    A business that is already registered keeps its Synced From (moving it is a backfill) and
    is re-authorised instead. An id outside the rule of :mod:`sage_sync.core.ids` is refused
    before anything is stored, even when Sage lists it: no DAG, URL or file could carry it.
    ``caller``: who unpauses its DAG in Airflow (the page's user).
    """
    check_company_id(business_id)
    quarter = synced_from_input(quarter)
    business = auth.business(business_id)
    dsn = dsn or dsn_or_refuse()
    with warehouse(dsn) as conn:
        existing = registry.get_company(conn, business_id)
    if existing is not None:
        return _reauthorise(existing, auth, dsn=dsn, via="connect", caller=caller)
    with warehouse(dsn) as conn:
        company = registry.register_company(conn, business_id, business_name(business), quarter)
        conn.commit()
    _store_grant(business_id, auth.tokens, dsn=dsn)
    airflow_api.set_dag_paused(dag_id_for(business_id), paused=False, caller=caller)
    return company


def register_held(
    pending_id: str,
    business_id: str,
    quarter: Quarter | str,
    *,
    dsn: str | None = None,
    caller: airflow_api.Caller | None = None,
) -> registry.Company:
    """Register ``business_id`` from the grant :func:`~sage_sync.lifecycle.authorisation.hold` kept.

    The input is checked against the held grant first (a refusal leaves it held for another try);
    then the grant is taken out of the holding table atomically, so a double click or a second
    browser tab can never give one refresh token to two companies (the first refresh of one
    would kill the other).
    """
    quarter = synced_from_input(quarter)
    found = authorisation.held(pending_id)
    if found is None:
        raise LifecycleError(_PENDING_GONE)
    found.business(business_id)
    taken = authorisation.take(pending_id)
    if taken is None:
        raise LifecycleError(_PENDING_GONE)
    return register(taken, business_id, quarter, dsn=dsn, caller=caller)


_PENDING_GONE = "This authorisation expired or was already used: connect again"


def connect(
    code: str,
    code_verifier: str | None,
    business_id: str,
    quarter: Quarter | str,
    *,
    dsn: str | None = None,
    settings: SageSettings | None = None,
) -> registry.Company:
    """Exchange ``code`` and register ``business_id`` from ``quarter`` (the CLI's ``connect``)."""
    check_company_id(business_id)  # before the one-time code is spent
    quarter = synced_from_input(quarter)
    auth = exchange(code, code_verifier, settings=settings)
    auth.business(business_id)  # refuse before anything is stored
    return register(auth, business_id, quarter, dsn=dsn)


# -- disconnect / reconnect -------------------------------------------------------------------------


@dataclass(frozen=True)
class Disconnected:
    """What a disconnect did."""

    company: registry.Company
    token_revoked: bool
    revoke_error: str | None
    dag_paused: bool


def disconnect(
    company_id: str,
    *,
    dsn: str | None = None,
    settings: SageSettings | None = None,
    pause_dag: bool = True,
    caller: airflow_api.Caller | None = None,
) -> Disconnected:
    """Stop imports for good until a reconnect: status, event, grant revoked at Sage, DAG paused.

    The status goes first (committed), so a run in flight stops at its next step with a clear
    skip reason instead of tripping over the deleted tokens; its open run row is closed as
    skipped and the company's generation moves on, in the same transaction, under the run
    fence's company lock (``warehouse.runs``): a page in flight commits before it, and no page
    of that run (or of any earlier one) commits after it, so nothing can land once the
    disconnect is done. That is why a disconnect needs no refusal while a run is running,
    unlike a reset: it is what stops the run's writes. Data is kept. A revoke Sage cannot answer
    is reported in the event, not fatal: the tokens are deleted here either way, so the grant is
    unusable and dies within 31 days.
    """
    dsn = dsn or dsn_or_refuse()
    with warehouse(dsn) as conn:
        company = require_company(conn, company_id)
        if company.status == CompanyStatus.DISCONNECTED:
            raise LifecycleError(f"{company_id} is already disconnected")
    settings = settings_or_refuse(settings)
    with warehouse(dsn) as conn:
        registry.set_status(conn, company_id, CompanyStatus.DISCONNECTED)
        runs.skip_running_runs(conn, company_id, "company disconnected during the run")
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
    paused = airflow_api.set_dag_paused(dag_id_for(company_id), paused=True, caller=caller) if pause_dag else False
    with warehouse(dsn) as conn:
        company = require_company(conn, company_id)
        registry.log_event(
            conn,
            company_id,
            "disconnected",
            {
                "status": "disconnected",
                "previous_status": registry.previous_status(conn, company_id),
                "synced_from_quarter": company.synced_from_quarter,
                "token_revoked": revoked,
                "revoke_error": revoke_error,
                "dag_paused": paused,
            },
        )
        conn.commit()
    return Disconnected(company, revoked, revoke_error, paused)


def reconnect(
    company_id: str,
    code: str,
    code_verifier: str | None,
    *,
    dsn: str | None = None,
    settings: SageSettings | None = None,
    caller: airflow_api.Caller | None = None,
) -> registry.Company:
    """Re-authorise a company (disconnected, needing re-authorisation, or any other status).

    Watermarks are kept, so the next run imports everything created or updated since the last
    successful watermark, and it also runs an id reconciliation sweep for deletions Sage may
    no longer list in ``deleted_since``.
    """
    dsn = dsn or dsn_or_refuse()
    with warehouse(dsn) as conn:
        company = require_company(conn, company_id)
    auth = exchange(code, code_verifier, settings=settings)
    auth.business(company_id)
    return _reauthorise(company, auth, dsn=dsn, via="reconnect", caller=caller, settings=settings)


def _reauthorise(
    company: registry.Company,
    auth: Authorisation,
    *,
    dsn: str,
    via: str,
    caller: airflow_api.Caller | None = None,
    settings: SageSettings | None = None,
) -> registry.Company:
    # The new grant and the status it brings are written under the refresh lock: a refresh of the
    # old grant in flight can then neither overwrite the new grant nor mark the company
    # needs_reauth after it was reconnected (pipeline.env.auth_guard marks under the same lock).
    def mark_reauthorised() -> registry.Company:
        with warehouse(dsn) as conn:
            updated = registry.reauthorise(
                conn, company.company_id, details={"previous_status": company.status, "via": via}
            )
            conn.commit()
        return updated

    updated = _store_grant(company.company_id, auth.tokens, dsn=dsn, settings=settings, under_lock=mark_reauthorised)
    airflow_api.set_dag_paused(dag_id_for(company.company_id), paused=False, caller=caller)
    return updated


def _store_grant(
    company_id: str,
    tokens: TokenSet,
    *,
    dsn: str,
    settings: SageSettings | None = None,
    under_lock: Callable[[], _T] | None = None,
) -> _T | None:
    """Store a company's new grant under the refresh lock, then revoke at Sage the grant it replaced.

    Under the lock, a refresh of the old grant in flight either finishes before (and is
    overwritten) or starts after (and refreshes the new grant); it never overwrites it.
    ``under_lock`` runs before the lock is released (the status the new grant brings).
    Nobody holds a replaced grant any more, yet Sage honours its refresh token for up to 31
    days: a copy of it (a backup, a log of old) would read the company's books all that time.
    The revoke is best effort: the new grant is saved whatever Sage answers.
    """
    result = None
    with PostgresTokenStore(dsn).refresh_lock(company_id) as held:
        try:
            replaced = held.load()
        except CryptoError:  # unreadable (a key since removed): nothing left to revoke with
            replaced = None
        held.save(tokens)
        if under_lock is not None:
            result = under_lock()
    if replaced is not None and replaced.refresh_token != tokens.refresh_token:
        revoke_grant(replaced.refresh_token, settings, why=f"the grant {company_id}'s new one replaced")
    return result


def restore_tokens(path: Path, *, force: bool = False, dsn: str | None = None) -> registry.Company:
    """Put back a refreshed pair the warehouse could not take (a recovery record; see token_store).

    Refused when the store no longer holds the refresh token the pair replaced (the company was
    reconnected since: its new grant wins) unless ``force``. A company marked ``needs_reauth``
    meanwhile is re-authorised by it. The record is deleted once the pair is stored.
    """
    try:
        company_id, tokens, replacing = read_recovery_record(path)
    except (OSError, ValueError, KeyError, CryptoError) as exc:
        raise LifecycleError(f"{path} is not a recovery record this key can read ({type(exc).__name__})") from None
    dsn = dsn or dsn_or_refuse()
    with warehouse(dsn) as conn:
        company = require_company(conn, company_id)
    with PostgresTokenStore(dsn).refresh_lock(company_id) as held:
        try:
            held.save(tokens, replacing=None if force else replacing)
        except GrantReplaced:
            raise LifecycleError(
                f"{company_id} holds another grant since this record was written (reconnected?): nothing restored",
                cli_hint="(--force restores it anyway)",
            ) from None
        if company.status == CompanyStatus.NEEDS_REAUTH:
            with warehouse(dsn) as conn:
                company = registry.reauthorise(
                    conn, company_id, details={"previous_status": company.status, "via": "restore-tokens"}
                )
                conn.commit()
    path.unlink()
    return company


# -- Synced From (backfill) -------------------------------------------------------------------------


def prepare_backfill(company_id: str, quarter_text: str, *, dsn: str | None = None) -> tuple[registry.Company, Quarter]:
    """Refuse an unknown company, or a quarter the Synced From policy does not allow it to move to
    (:data:`~sage_sync.core.quarters.SYNCED_FROM`: earlier than now, not before the floor)."""
    with warehouse(dsn) as conn:
        company = require_company(conn, company_id)
    return company, validate_earlier_quarter(company, quarter_text)


def backfill_dates(company: registry.Company, quarter: Quarter) -> tuple[date, date]:
    """The document dates a move of ``company``'s Synced From to ``quarter`` imports, shown before
    the user confirms (the window itself is the pipeline's rule, ``sync.backfill_window``)."""
    return sync.backfill_window(company, quarter)


def authorise_backfill(
    company_id: str,
    quarter_text: str,
    code: str,
    code_verifier: str | None,
    *,
    dsn: str | None = None,
    settings: SageSettings | None = None,
) -> Quarter:
    """Validate the move, then store the grant of the fresh Authorise Access it requires."""
    company, quarter = prepare_backfill(company_id, quarter_text, dsn=dsn)
    auth = exchange(code, code_verifier, settings=settings)
    auth.business(company_id)
    _store_grant(company.company_id, auth.tokens, dsn=dsn or dsn_or_refuse(), settings=settings)
    with warehouse(dsn) as conn:
        registry.log_event(
            conn,
            company_id,
            "backfill_requested",
            {"synced_from_quarter": company.synced_from_quarter, "requested_synced_from_quarter": str(quarter)},
        )
        conn.commit()
    return quarter


def backfill_conf(company_id: str, quarter: Quarter) -> dict[str, str]:
    """The ``sage_backfill`` DAG's run conf."""
    return {"company_id": company_id, "synced_from": str(quarter)}


# -- daily start ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DailyStart:
    """A company's daily start after a change: its registry row and the time its DAG now runs."""

    company: registry.Company
    start: dict[str, object]  # orchestration.schedule.describe_start


def set_daily_start(company_id: str, text: str, *, dsn: str | None = None) -> DailyStart:
    """Give the company its own daily start time (``HH:MM`` UTC), or ``auto``: back to its minute
    in the nightly window. Checked before anything changes (the time, the company, the window
    settings the new time is shown against); the DAG runs at it from its next parse."""
    minute = parse_daily_start(text)
    window = daily_window()
    with warehouse(dsn) as conn:
        require_company(conn, company_id)
        company = registry.set_daily_start(conn, company_id, minute)
        conn.commit()
    return DailyStart(company, schedule.describe_start(company_id, company.daily_start_minute, window))


# -- reset ------------------------------------------------------------------------------------------


def reset(company_id: str, *, confirm: bool, dsn: str | None = None) -> str:
    """Wipe the company's raw rows (versions, deletions, quarantine) and watermarks.

    Returns the id of the ``reset`` run opened for it: the caller either runs the full sync
    under it (:func:`sage_sync.pipeline.sync.run_steps`) or closes it (:func:`close_reset_run`) and lets
    the next daily run do the full sync. Opening the run takes the company's run slot, so a
    reset is refused, with the running run named, while a daily run, a backfill or a manual sync
    runs. It also starts a new generation of the company, under the run fence's company lock
    (``warehouse.runs``): a page of an earlier, closed run still in flight (a sibling task of a
    run closed as failed at once) commits before the wipe, or is refused after it and keeps
    nothing; and no earlier Airflow run can re-open its run afterwards. So the re-import reads
    from watermarks nothing older can move. The modelled rows are dbt's: its
    incremental models drop the rows of a company older than its last ``reset`` event (macro
    forget_reset_companies), so nothing here writes to a dbt table.
    """
    if not confirm:
        raise LifecycleError(
            "reset wipes the company's imported data and re-imports it from Synced From: confirm it explicitly",
            cli_hint="(--yes)",
        )
    dsn = dsn or dsn_or_refuse()
    with warehouse(dsn) as conn:
        company = require_company(conn, company_id)
        if company.status in NOT_CONNECTED:
            raise LifecycleError(f"{company_id} is {company.status}: reconnect it before a reset")
        try:
            run_id = runs.open_run(conn, company_id, "reset", new_generation=True)
        except RunInProgress as exc:
            raise LifecycleError(str(exc)) from None
        wiped = raw.wipe_company(conn, company_id)
        cleared = watermarks.clear_watermarks(conn, company_id)
        registry.forget_reconciliation(conn, company_id)
        registry.set_status(
            conn,
            company_id,
            CompanyStatus.INITIAL_SYNC,
            event_type="reset",
            details={
                "synced_from_quarter": company.synced_from_quarter,
                "rows_deleted": wiped,
                "watermarks_cleared": cleared,
                "sync_run_id": run_id,
            },
        )
        conn.commit()
    return run_id


def close_reset_run(run_id: str, *, dsn: str | None = None) -> None:
    """Close a wipe-only reset run; the next daily run does the full sync (status stays initial_sync)."""
    with warehouse(dsn) as conn:
        runs.finish_run(conn, run_id, "skipped", "wiped; the full sync is left to the next daily run")
        conn.commit()


# -- what the CLI and the Connect pages start through this layer ------------------------------------


def require_known(company_id: str, *, dsn: str | None = None) -> registry.Company:
    """The registered company, or :class:`LifecycleError`."""
    with warehouse(dsn) as conn:
        return require_company(conn, company_id)


def registered(company_id: str, *, dsn: str | None = None) -> registry.Company | None:
    """The company if it is registered, else None."""
    with warehouse(dsn) as conn:
        return registry.get_company(conn, company_id)


def migrate_warehouse(*, dsn: str | None = None) -> list[str]:
    """Create or update the warehouse's schemas (idempotent); the migration files applied.

    The set-up and deploy step, and the only use case that runs DDL. Refuses in one line when a
    long transaction keeps it from its table locks (it waits a bounded time, see ``migrate``).
    """
    with warehouse(dsn, setting_up=True) as conn:
        try:
            return migrate(conn)
        except MigrationLockTimeout as exc:
            raise LifecycleError(str(exc)) from None


def start_backfill(company_id: str, quarter: Quarter, caller: airflow_api.Caller | None = None) -> str:
    """Trigger the ``sage_backfill`` DAG for the move; raises :class:`AirflowUnavailable`."""
    return airflow_api.trigger(BACKFILL_DAG_ID, backfill_conf(company_id, quarter), caller)


def check_can_trigger(dag_id: str, caller: airflow_api.Caller | None = None) -> None:
    """Raise :class:`AirflowUnavailable` unless Airflow's api-server answers for ``dag_id`` (checked
    before a one-time authorisation code is spent on a move that then needs a trigger)."""
    airflow_api.check_dag(dag_id, caller)


def start_catch_up(company_id: str, caller: airflow_api.Caller | None = None) -> str:
    """Trigger the company's daily DAG right after a reconnect, so the catch-up does not wait for
    the next scheduled run; raises :class:`AirflowUnavailable` (the daily run then catches up)."""
    return airflow_api.trigger(dag_id_for(company_id), None, caller)


def trigger_full_sync(company_id: str, caller: airflow_api.Caller | None = None) -> str:
    """Trigger the company's daily DAG (after a wipe-only reset); raises :class:`AirflowUnavailable`."""
    return airflow_api.trigger(dag_id_for(company_id), None, caller)


def run_backfill_here(company_id: str, quarter: Quarter) -> str:
    """The whole backfill in this process (``set-synced-from --here``); the run id."""
    return sync.run_backfill(company_id, quarter)


def run_reset_sync(company_id: str, run_id: str) -> None:
    """The full sync of a reset, in this process, under the reset's run."""
    sync.run_steps(company_id, run_id)


def sync_now(company_id: str) -> str:
    """A whole manual sync in this process (the CLI's ``sync``); the run id."""
    return sync.run_company(company_id, kind="manual")


# Failures of the in-process runs above that the CLI reports in one line (the rest are bugs).
RUN_FAILURES: tuple[type[Exception], ...] = (RunInProgress, RunFenced, CompanySkipped, SageError)
