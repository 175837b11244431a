"""The TokenStore backed by ``sage_control.oauth_tokens``, encrypted with Airflow's Fernet key.

Sage rotates the refresh token on every refresh and the old one dies at once, so a refreshed pair
that is lost is a broken connection (the user has to re-authorise). Hence:

* every method uses its own short-lived connection and ``save`` commits before it returns, never
  riding on a caller's transaction that might still roll back;
* ``refresh_lock`` serialises refreshes of one company across processes (Airflow workers, the CLI)
  with a session-level advisory lock held on a dedicated connection, so two refreshes never race
  to spend the same refresh token.

Tokens are encrypted at rest and never logged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime

import psycopg
from psycopg import errors

from sage_sync.core import crypto
from sage_sync.core.errors import TokenLockTimeout
from sage_sync.sage.tokens import TokenSet
from sage_sync.warehouse import db

log = logging.getLogger(__name__)

# First half of the two-int advisory lock key: a namespace so these locks can't collide with the
# single-bigint locks other code takes (e.g. migrations); the second half comes from the company id.
_REFRESH_LOCK_NAMESPACE = 0x5A6E_0002


def refresh_lock_key(company_id: str) -> tuple[int, int]:
    """The (namespace, key) pair of the advisory lock guarding ``company_id``'s refreshes.

    A stable hash computed here rather than ``hashtext()``, whose output PostgreSQL does not promise
    to keep across versions. A 32-bit collision only makes two companies share a lock: harmless.
    """
    digest = hashlib.sha256(company_id.encode("utf-8")).digest()
    return _REFRESH_LOCK_NAMESPACE, int.from_bytes(digest[:4], "big", signed=True)


class PostgresTokenStore:
    """Durable, encrypted, per-company token storage (implements ``sage_sync.sage.tokens.TokenStore``).

    The company must already be registered (``oauth_tokens.company_id`` references ``companies``).
    """

    def __init__(self, dsn: str, *, lock_timeout: float | None = 300.0, connect_timeout: int = 10) -> None:
        """``lock_timeout`` (seconds, None = wait forever) bounds the wait in :meth:`refresh_lock`."""
        self._dsn = dsn
        self._lock_timeout = lock_timeout
        self._connect_timeout = connect_timeout

    def _connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        return db.connect(
            self._dsn, app="sage_sync.token_store", autocommit=autocommit, connect_timeout=self._connect_timeout
        )

    def load(self, company_id: str) -> TokenSet | None:
        """The stored pair, decrypted; None if the company has no tokens."""
        with self._connect(autocommit=True) as conn:
            row = conn.execute(
                "select access_token_enc, refresh_token_enc, access_expires_at, refresh_expires_at "
                "from sage_control.oauth_tokens where company_id = %s",
                (company_id,),
            ).fetchone()
        if row is None:
            return None
        access_enc, refresh_enc, access_expires_at, refresh_expires_at = row
        return TokenSet(
            access_token=crypto.decrypt(access_enc),
            refresh_token=crypto.decrypt(refresh_enc),
            access_expires_at=access_expires_at,
            refresh_expires_at=refresh_expires_at,
        )

    def save(self, company_id: str, tokens: TokenSet) -> None:
        """Encrypt and upsert ``tokens``; committed when this returns."""
        _require_aware(tokens.access_expires_at, "access_expires_at")
        if tokens.refresh_expires_at is not None:
            _require_aware(tokens.refresh_expires_at, "refresh_expires_at")
        access_enc = crypto.encrypt(tokens.access_token)
        refresh_enc = crypto.encrypt(tokens.refresh_token)
        with self._connect() as conn:
            conn.execute(
                "insert into sage_control.oauth_tokens "
                "(company_id, access_token_enc, refresh_token_enc, access_expires_at, refresh_expires_at) "
                "values (%s, %s, %s, %s, %s) "
                "on conflict (company_id) do update set "
                "access_token_enc = excluded.access_token_enc, "
                "refresh_token_enc = excluded.refresh_token_enc, "
                "access_expires_at = excluded.access_expires_at, "
                "refresh_expires_at = excluded.refresh_expires_at, "
                "updated_at = now()",
                (company_id, access_enc, refresh_enc, tokens.access_expires_at, tokens.refresh_expires_at),
            )
            conn.commit()
        log.info(
            "saved OAuth tokens for company %s (access token expires %s)",
            company_id,
            tokens.access_expires_at.isoformat(),
        )

    @contextmanager
    def refresh_lock(self, company_id: str) -> Iterator[None]:
        """Hold the cross-process lock on refreshing ``company_id``'s tokens.

        The lock lives on its own autocommit connection, so it is independent of any transaction and
        is released on exit, on error, and by the server if this process dies.
        Raises :class:`TokenLockTimeout` after waiting ``lock_timeout`` seconds.
        """
        namespace, key = refresh_lock_key(company_id)
        conn = self._connect(autocommit=True)
        try:
            if self._lock_timeout is not None:
                conn.execute(
                    "select set_config('lock_timeout', %s, false)", (f"{max(1, round(self._lock_timeout * 1000))}ms",)
                )
            try:
                conn.execute("select pg_advisory_lock(%s, %s)", (namespace, key))
            except errors.LockNotAvailable:
                raise TokenLockTimeout(
                    f"another process has been refreshing the tokens of company {company_id} "
                    f"for more than {self._lock_timeout} s"
                ) from None
            try:
                yield
            finally:
                # Closing the session would release it too; unlocking first frees it at once. Never let
                # a failing unlock (e.g. a dropped connection) hide the error raised inside the block.
                with suppress(psycopg.Error):
                    conn.execute("select pg_advisory_unlock(%s, %s)", (namespace, key))
        finally:
            conn.close()

    def delete(self, company_id: str) -> None:
        """Forget the company's tokens (disconnect); committed when this returns."""
        with self._connect() as conn:
            conn.execute("delete from sage_control.oauth_tokens where company_id = %s", (company_id,))
            conn.commit()
        log.info("deleted OAuth tokens for company %s", company_id)


def _require_aware(value: datetime, name: str) -> None:
    # A naive expiry would be read in the server's time zone and could be off by hours.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"TokenSet.{name} must be timezone-aware (UTC)")
