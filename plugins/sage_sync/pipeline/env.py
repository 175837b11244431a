"""What every step of a sync needs around it: where the warehouse is, a Sage client, the company.

Shared by the task entry points (``sync.py``), the stream readers (``extract.py``) and the deletion
feed (``deletions.py``), so the three agree on how a company that must not sync is refused and how
a dead grant becomes a status a user can act on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from sage_sync.core.config import (
    RATE_LIMIT_ENV,
    SageSettings,
    history_rate_share,
    max_pages,
    sage_settings,
    warehouse_dsn,
)
from sage_sync.core.errors import (
    BusinessMissing,
    CompanySkipped,
    GrantRefused,
    GrantReplaced,
    ReauthorizationRequired,
    SubscriptionInactive,
    UnknownCompany,
)
from sage_sync.core.lanes import Lane
from sage_sync.core.status import NOT_CONNECTED, CompanyStatus
from sage_sync.sage import client as client_module
from sage_sync.sage.auth import OAuthClient, TokenManager, fingerprint
from sage_sync.sage.client import SageClient
from sage_sync.warehouse import db, ratelimit, registry
from sage_sync.warehouse.token_store import PostgresTokenStore


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
def connect(env: SyncEnv, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A warehouse connection. Extraction uses ``autocommit=True``: each ``conn.transaction()``
    block is then a real transaction committed on exit (one per page), not a savepoint inside a
    transaction that an earlier read left open, which would lose every page on a late failure."""
    with db.connect(env.dsn, app="sage_sync", autocommit=autocommit) as conn:
        yield conn


def token_manager(env: SyncEnv, company_id: str) -> TokenManager:
    """The company's token manager over the encrypted Postgres store."""
    return TokenManager(company_id, PostgresTokenStore(env.dsn), OAuthClient(env.settings))


def _limiter_sleep(seconds: float) -> None:
    # A wait for the shared budget is a client wait: the client's sleep hook, looked up at call time
    # (the limiter outlives any one client), so whatever pauses the client's retries pauses this too.
    client_module._sleep(seconds)


def limiter_for(env: SyncEnv, lane: Lane) -> ratelimit.PostgresRateLimiter | None:
    """This process's limiter for ``lane``'s part of the shared budget (``ratelimit.lane_limiter``):
    ``SAGE_HISTORY_RATE_SHARE`` of ``SAGE_RATE_LIMIT_PER_S`` for history, the rest for daily. None
    when the shared limit is off. A bad share raises ``ConfigError`` naming it."""
    total = env.settings.rate_limit_per_s
    if not total:
        return None
    return ratelimit.lane_limiter(env.dsn, lane, total, history_rate_share(), sleep=_limiter_sleep)


def describe_budget(env: SyncEnv, lane: Lane) -> str:
    """The lane's part of the budget in words, for the task log (``history lane: 4 of the 12 ...``)."""
    total = env.settings.rate_limit_per_s
    if not total:
        return f"{lane} lane: no shared Sage request limit ({RATE_LIMIT_ENV} is off)"
    return ratelimit.lane_budget(lane, total, history_rate_share()).describe(total)


def make_client(env: SyncEnv, company_id: str, *, lane: Lane = Lane.DAILY, **kwargs: Any) -> SageClient:
    """A client for one company's business (company id = Sage business id).

    Every request it sends first takes a token from ``lane``'s part of the deployment's shared budget
    in the warehouse (``sage_control.api_rate_buckets``, one limiter per process, warehouse and lane,
    :func:`limiter_for`); pass ``limiter=`` to use another one, or ``limiter=None`` for none.
    """
    settings = env.settings
    if "limiter" not in kwargs:
        kwargs["limiter"] = limiter_for(env, lane)
    kwargs.setdefault("max_pages", max_pages())
    return SageClient(settings.api_url, company_id, token_manager(env, company_id), **kwargs)


@contextmanager
def client_for(
    env: SyncEnv, company_id: str, client: SageClient | None, *, lane: Lane = Lane.DAILY
) -> Iterator[SageClient]:
    """``client`` as it is, or a new one for the company (in ``lane``) that is closed on exit."""
    if client is not None:
        yield client
        return
    with make_client(env, company_id, lane=lane) as own:
        yield own


def get_company(conn: psycopg.Connection, company_id: str) -> registry.Company:
    """The registered company, or :class:`UnknownCompany`."""
    company = registry.get_company(conn, company_id)
    if company is None:
        raise UnknownCompany(f"company {company_id!r} is not registered")
    return company


def connected_company(conn: psycopg.Connection, company_id: str) -> registry.Company:
    """The company, or :class:`CompanySkipped` when it was disconnected (perhaps mid-run)."""
    company = get_company(conn, company_id)
    if company.status == CompanyStatus.DISCONNECTED:
        raise CompanySkipped(
            f"{company.company_name} ({company_id}) was disconnected: no import until it is reconnected"
        )
    return company


def require_connected(env: SyncEnv, company_id: str) -> registry.Company:
    """:func:`connected_company` on a connection of its own."""
    with connect(env) as conn:
        return connected_company(conn, company_id)


def _set_status_unless_disconnected(
    env: SyncEnv, company_id: str, status: CompanyStatus, error: Exception, **event: Any
) -> None:
    with connect(env) as conn:
        company = registry.get_company(conn, company_id)
        if company is None or (status == CompanyStatus.NEEDS_REAUTH and company.status in NOT_CONNECTED):
            return  # a disconnect deleted the tokens on purpose; the status already says why
        if company.status == CompanyStatus.DISCONNECTED:
            return  # disconnected while this step ran: it stays so until it is re-authorised
        registry.set_status(conn, company_id, status, last_error=str(error), **event)
        conn.commit()


def _mark_refused(env: SyncEnv, company_id: str, exc: ReauthorizationRequired) -> GrantRefused:
    """Mark the company ``needs_reauth``, unless the grant Sage refused is no longer the stored one.

    Under the refresh lock, which a reconnect also holds while it saves a new grant and sets the
    status: either the reconnect came first (the store holds another refresh token, and the step
    is retried instead: :class:`GrantReplaced`), or it comes after and sets the status back.
    """
    store = PostgresTokenStore(env.dsn)
    with store.refresh_lock(company_id) as held:
        stored = held.load()
        if exc.refused is not None and stored is not None and fingerprint(stored.refresh_token) != exc.refused:
            raise GrantReplaced(
                f"the grant of company {company_id} was replaced (reconnected) while this step used the old one; "
                "the next try uses the new one"
            ) from exc
        with connect(env) as conn:
            company = registry.get_company(conn, company_id)
        name = company.company_name if company is not None and company.company_name else company_id
        refused = GrantRefused(company_id, name, str(exc))
        _set_status_unless_disconnected(
            env,
            company_id,
            CompanyStatus.NEEDS_REAUTH,
            refused,
            event_type="needs_reauth",
            # The refused refresh token's fingerprint (never the token): which grant Sage refused.
            details={"reason": type(exc).__name__, "refused": exc.refused},
        )
    return refused


@contextmanager
def auth_guard(env: SyncEnv, company_id: str) -> Iterator[None]:
    """Turn a dead grant into the company status a user can act on, then raise it as one line.

    A refused grant becomes :class:`GrantRefused` (still a ``ReauthorizationRequired``): who, and
    how to re-authorise, without the client's frames (only a person can fix it, so the DAG does
    not retry it). A business the grant no longer reaches becomes ``business_missing``.
    """
    try:
        yield
    except GrantRefused:
        raise
    except ReauthorizationRequired as exc:
        raise _mark_refused(env, company_id, exc) from exc
    except SubscriptionInactive as exc:
        _set_status_unless_disconnected(env, company_id, CompanyStatus.ERROR, exc, event_type="error")
        raise
    except BusinessMissing as exc:
        _set_status_unless_disconnected(
            env, company_id, CompanyStatus.BUSINESS_MISSING, exc, event_type="business_missing"
        )
        raise


def check_business(env: SyncEnv, company_id: str, tokens: TokenManager, *, lane: Lane = Lane.DAILY) -> None:
    """Fail closed unless the company's business is still among ``/businesses`` for its grant.

    ``X-Business`` names the business on every call, but what Sage does with one the user can no
    longer reach is not documented; it might answer with another business (the lead) and not say
    so. Listing the grant's businesses first (no ``X-Business``) means a run writes nothing
    rather than one business's books under another's company id. Raises :class:`BusinessMissing`.
    """
    settings = env.settings
    limiter = limiter_for(env, lane)
    with SageClient(settings.api_url, "", tokens, check_business=False, limiter=limiter) as client:
        reachable = {str(b.get("id")) for b in client.iter_items("/businesses") if isinstance(b, dict)}
    if company_id not in reachable:
        raise BusinessMissing(
            f"business {company_id} is no longer among the businesses its Sage grant reaches "
            f"({len(reachable)} others): nothing was imported; give the Sage user access again or reconnect it "
            "with a user who has it"
        )


def airflow_run_of(company_id: str, sync_run_id: str) -> str | None:
    """The Airflow run id a sync-run id came from (:func:`run_key`); None for runs started outside Airflow."""
    prefix = f"{company_id}:"
    return sync_run_id[len(prefix) :] if sync_run_id.startswith(prefix) else None
