"""What every use case does first: reach the warehouse and Sage's settings, and check its input.

Each failure becomes a :class:`~sage_sync.core.errors.LifecycleError`, the one-line refusal the
CLI prints and the Connect page shows, raised before anything changes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import psycopg

from sage_sync.core.config import SageSettings, sage_settings, warehouse_dsn
from sage_sync.core.errors import ConfigError, LifecycleError
from sage_sync.core.quarters import SYNCED_FROM, Quarter
from sage_sync.core.status import NOT_CONNECTED, CompanyStatus
from sage_sync.orchestration import housekeeping, schedule
from sage_sync.warehouse import db, migrate, registry
from sage_sync.warehouse.marts import read_together


@contextmanager
def warehouse(
    dsn: str | None = None, *, setting_up: bool = False, marts: Sequence[str] = ()
) -> Iterator[psycopg.Connection]:
    """A warehouse connection, or :class:`LifecycleError` saying it cannot be reached.

    Unless ``setting_up`` (the ``migrate`` use case itself), a warehouse that was never set up
    or is older than this code is refused in one line naming the command to run
    (:class:`~sage_sync.core.errors.SchemaNotReady`): no use case migrates on its own.

    With ``marts`` (names in ``analytics``) the connection reads them together: one read-only
    REPEATABLE READ transaction, so every query of a page or report sees the same published build
    (a build publishes its marts in one transaction: dbt/macros/publish/). The marts are locked
    (ACCESS SHARE, before the first query takes the snapshot), so a publish that re-creates a
    view (a deploy that changes its columns) waits for this read instead of swapping the view
    under a snapshot that predates it.
    """
    try:
        conn = db.connect(dsn or warehouse_dsn(), app="sage_lifecycle")
    except (ConfigError, psycopg.Error) as exc:
        raise LifecycleError(f"cannot reach the warehouse: {exc}".splitlines()[0]) from None
    with conn:
        if marts:
            read_together(conn, marts)
        if not setting_up:
            migrate.require_current(conn)
        yield conn


def settings_or_refuse(settings: SageSettings | None) -> SageSettings:
    """``settings``, else the configured Sage connection, else :class:`LifecycleError`."""
    if settings is not None:
        return settings
    try:
        return sage_settings()
    except ConfigError as exc:
        raise LifecycleError(str(exc)) from None


def dsn_or_refuse() -> str:
    """The configured warehouse DSN, else :class:`LifecycleError`."""
    try:
        return warehouse_dsn()
    except ConfigError as exc:
        raise LifecycleError(str(exc)) from None


def parse_quarter(text: str, *, today: datetime | None = None) -> Quarter:
    """``YYYY-Qn`` as a :class:`Quarter` a Synced From may be (:data:`SYNCED_FROM`); refuses a
    malformed quarter, a future one and one before the floor."""
    try:
        quarter = Quarter.parse(text)
    except ValueError as exc:
        raise LifecycleError(str(exc)) from None
    problem = SYNCED_FROM.problem(quarter, _today(today))
    if problem is not None:
        raise LifecycleError(problem)
    return quarter


def synced_from_input(quarter: Quarter | str) -> Quarter:
    """A new connection's Synced From as its caller gives it: text is checked here
    (:func:`parse_quarter`); a :class:`Quarter` was checked where it was parsed (the page's form)."""
    return quarter if isinstance(quarter, Quarter) else parse_quarter(quarter)


# What a person types to give a company back the spread start of the window.
SPREAD = "auto"


def parse_daily_start(text: str) -> int | None:
    """A company's daily start as typed: ``HH:MM`` (UTC) as minutes after 00:00, or ``auto`` (None:
    back to its spread minute in the window); anything else is refused in one line."""
    if text.strip().lower() == SPREAD:
        return None
    try:
        return schedule.parse_start_time(text)
    except ValueError as exc:
        raise LifecycleError(f"{exc}, or {SPREAD!r} for the spread over the nightly window") from None


def daily_window() -> schedule.DailyWindow:
    """The nightly window from the settings, or :class:`LifecycleError` naming the bad setting."""
    try:
        return schedule.daily_window()
    except ConfigError as exc:
        raise LifecycleError(str(exc)) from None


def airflow_retention() -> timedelta:
    """How long Airflow keeps its run records (``SAGE_AIRFLOW_RETENTION_DAYS``), or
    :class:`LifecycleError` naming the bad setting."""
    try:
        return housekeeping.retention()
    except ConfigError as exc:
        raise LifecycleError(str(exc)) from None


def _today(today: datetime | None) -> date:
    return (today or datetime.now(UTC)).date()


def require_company(conn: psycopg.Connection, company_id: str) -> registry.Company:
    """The registered company, or :class:`LifecycleError`."""
    company = registry.get_company(conn, company_id)
    if company is None:
        raise LifecycleError(f"unknown company {company_id!r}", cli_hint="(see `python -m sage_sync status`)")
    return company


def validate_earlier_quarter(company: registry.Company, text: str, *, today: datetime | None = None) -> Quarter:
    """The quarter a backfill may move Synced From to (:data:`SYNCED_FROM`): strictly earlier than
    the current one, not before the floor.

    Also refuses companies that can't be backfilled now: still in their first sync (their
    window isn't complete yet) or without a live grant.
    """
    try:
        quarter = Quarter.parse(text)
    except ValueError as exc:
        raise LifecycleError(str(exc)) from None
    if quarter == company.synced_from:
        raise LifecycleError(f"{company.company_id} already syncs from {quarter}; pick an earlier quarter")
    problem = SYNCED_FROM.problem(quarter, _today(today), current=company.synced_from)
    if problem is not None:
        raise LifecycleError(problem)
    if company.status == CompanyStatus.INITIAL_SYNC:
        raise LifecycleError(
            f"{company.company_id} is still in its initial sync: move Synced From once it has completed"
        )
    if company.status in NOT_CONNECTED:
        raise LifecycleError(f"{company.company_id} is {company.status}: reconnect it first")
    return quarter


def earliest_quarter(*, today: datetime | None = None) -> Quarter:
    """The earliest Synced From allowed (:data:`SYNCED_FROM`'s floor)."""
    return SYNCED_FROM.floor(_today(today))


def connect_quarters(*, today: datetime | None = None) -> list[Quarter]:
    """The quarters a new connection may start from: the current one down to the floor."""
    return SYNCED_FROM.connect_quarters(_today(today))


def backfill_quarters(company: registry.Company, *, today: datetime | None = None) -> list[Quarter]:
    """The quarters Move Synced From offers: strictly earlier than the current one, down to the floor."""
    return SYNCED_FROM.earlier_quarters(company.synced_from, _today(today))
