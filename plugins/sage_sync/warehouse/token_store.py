"""The TokenStore backed by ``sage_control.oauth_tokens``, encrypted with Airflow's Fernet key.

Sage rotates the refresh token on every refresh and the old one dies at once, so a refreshed pair
that is lost is a broken connection (the user has to re-authorise). Hence:

* ``load``/``save``/``delete`` each use their own short-lived connection and ``save`` commits before
  it returns, never riding on a caller's transaction that might still roll back;
* ``refresh_lock`` serialises refreshes of one company across processes (Airflow workers, the CLI)
  with a session-level advisory lock held on a dedicated connection, so two refreshes never race
  to spend the same refresh token; a reconnect saves its new grant under the same lock;
* while the lock is held, the pair is read and written on the lock's own connection
  (:class:`LockedRow`): a new pair must not depend on opening a connection (``max_connections``,
  a restart, a fail-over) at the one moment it exists only in memory. A save that fails anyway
  is retried, re-taking the lock on a new connection, for ``save_retry_seconds``; after that the
  pair goes to an encrypted recovery record on local disk, which
  ``python -m sage_sync restore-tokens FILE`` puts back.

Tokens are encrypted at rest and never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import errors

from sage_sync.core import crypto
from sage_sync.core.errors import GrantReplaced, TokenLockTimeout, TokensNotSaved
from sage_sync.sage.tokens import GrantSettings, TokenSet
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

    def __init__(
        self,
        dsn: str,
        *,
        lock_timeout: float | None = 300.0,
        connect_timeout: int = 10,
        save_retry_seconds: float | None = None,
        recovery_dir: Path | str | None = None,
    ) -> None:
        """``lock_timeout`` (seconds, None = wait forever) bounds the wait in :meth:`refresh_lock`;
        ``save_retry_seconds`` and ``recovery_dir`` default to :class:`GrantSettings` from the environment."""
        self._dsn = dsn
        self._lock_timeout = lock_timeout
        self._connect_timeout = connect_timeout
        settings = GrantSettings.from_env() if save_retry_seconds is None or recovery_dir is None else None
        self.save_retry_seconds = save_retry_seconds if save_retry_seconds is not None else settings.save_retry_seconds  # type: ignore[union-attr]
        self.recovery_dir = Path(recovery_dir) if recovery_dir is not None else settings.recovery_dir  # type: ignore[union-attr]

    def _connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        return db.connect(
            self._dsn, app="sage_sync.token_store", autocommit=autocommit, connect_timeout=self._connect_timeout
        )

    def load(self, company_id: str) -> TokenSet | None:
        """The stored pair, decrypted; None if the company has no tokens."""
        with self._connect(autocommit=True) as conn:
            return _select(conn, company_id)

    def save(self, company_id: str, tokens: TokenSet) -> None:
        """Encrypt and upsert ``tokens``; committed when this returns."""
        with self._connect() as conn:
            _upsert(conn, company_id, tokens)
            conn.commit()
        _log_saved(company_id, tokens)

    @contextmanager
    def refresh_lock(self, company_id: str) -> Iterator[LockedRow]:
        """Hold the cross-process lock on refreshing ``company_id``'s tokens; yields its :class:`LockedRow`.

        The lock lives on its own autocommit connection, so it is independent of any transaction and
        is released on exit, on error, and by the server if this process dies.
        Raises :class:`TokenLockTimeout` after waiting ``lock_timeout`` seconds.
        """
        held = LockedRow(self, company_id, self._locked_connection(company_id))
        try:
            yield held
        finally:
            held.release()

    def replace(self, company_id: str, tokens: TokenSet) -> None:
        """Save a new grant (connect, reconnect, backfill) under the refresh lock.

        Under the lock, a refresh of the old grant in flight either finishes before (and is
        overwritten) or starts after (and refreshes the new grant); it never overwrites it.
        """
        with self.refresh_lock(company_id) as held:
            held.save(tokens)

    def _locked_connection(self, company_id: str) -> psycopg.Connection:
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
        except BaseException:
            conn.close()
            raise
        return conn

    def delete(self, company_id: str) -> None:
        """Forget the company's tokens (disconnect); committed when this returns."""
        with self._connect() as conn:
            conn.execute("delete from sage_control.oauth_tokens where company_id = %s", (company_id,))
            conn.commit()
        log.info("deleted OAuth tokens for company %s", company_id)


class LockedRow:
    """A company's row while its refresh lock is held: read and written on the lock's connection.

    Implements ``sage_sync.sage.tokens.LockedGrant``. If the lock's connection dies, the lock died
    with it: a save then takes the lock again on a new connection before it writes, checks that
    the row still holds the token the new pair replaces, and keeps trying for the store's
    ``save_retry_seconds`` before it writes a recovery record instead.
    """

    def __init__(self, store: PostgresTokenStore, company_id: str, conn: psycopg.Connection) -> None:
        self._store = store
        self._company_id = company_id
        self._conn: psycopg.Connection | None = conn

    def load(self) -> TokenSet | None:
        return _select(self._connection(), self._company_id)

    def save(self, tokens: TokenSet, *, replacing: str | None = None) -> None:
        deadline = time.monotonic() + self._store.save_retry_seconds
        delay = 0.2
        while True:
            try:
                self._save_once(tokens, replacing)
                return
            except (psycopg.OperationalError, psycopg.InterfaceError, TokenLockTimeout) as exc:
                self._drop_connection()
                if time.monotonic() + delay > deadline:
                    path = write_recovery_record(self._store.recovery_dir, self._company_id, tokens, replacing)
                    log.error(
                        "company %s: the refreshed Sage tokens could not be saved for %.0f s (%s); they are kept "
                        "encrypted in %s: restore them with `python -m sage_sync restore-tokens %s`",
                        self._company_id,
                        self._store.save_retry_seconds,
                        type(exc).__name__,
                        path,
                        path,
                    )
                    raise TokensNotSaved(
                        f"the refreshed Sage tokens of company {self._company_id} could not be saved to the warehouse "
                        f"({type(exc).__name__}); they are kept in {path}: run `python -m sage_sync restore-tokens "
                        f"{path}` once the warehouse is back"
                    ) from None
                log.warning(
                    "company %s: saving refreshed tokens failed (%s); retrying in %.1f s",
                    self._company_id,
                    type(exc).__name__,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def mark_in_doubt(self) -> None:
        # Best effort: it only words a later refusal ("lost in transit"); never worth failing over.
        with suppress(psycopg.Error, TokenLockTimeout):
            self._connection().execute(
                "update sage_control.oauth_tokens set refresh_in_doubt_since = coalesce(refresh_in_doubt_since, now()) "
                "where company_id = %s",
                (self._company_id,),
            )

    def in_doubt(self) -> bool:
        row = (
            self._connection()
            .execute(
                "select refresh_in_doubt_since is not null from sage_control.oauth_tokens where company_id = %s",
                (self._company_id,),
            )
            .fetchone()
        )
        return bool(row and row[0])

    def release(self) -> None:
        """Unlock and close (closing alone would release the lock too; unlocking frees it at once)."""
        if self._conn is None:
            return
        namespace, key = refresh_lock_key(self._company_id)
        # Never let a failing unlock (e.g. a dropped connection) hide the error raised inside the block.
        with suppress(psycopg.Error):
            self._conn.execute("select pg_advisory_unlock(%s, %s)", (namespace, key))
        self._drop_connection()

    def _save_once(self, tokens: TokenSet, replacing: str | None) -> None:
        conn = self._connection()
        with conn.transaction():
            if replacing is not None:
                current = _select(conn, self._company_id, for_update=True)
                if current is not None and current.refresh_token != replacing:
                    raise GrantReplaced(
                        f"the grant of company {self._company_id} was replaced (reconnected) while it was refreshed"
                    )
            _upsert(conn, self._company_id, tokens)
        _log_saved(self._company_id, tokens)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._store._locked_connection(self._company_id)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
        self._conn = None


def _select(conn: psycopg.Connection, company_id: str, *, for_update: bool = False) -> TokenSet | None:
    row = conn.execute(
        "select access_token_enc, refresh_token_enc, access_expires_at, refresh_expires_at "
        "from sage_control.oauth_tokens where company_id = %s" + (" for update" if for_update else ""),
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


def _upsert(conn: psycopg.Connection, company_id: str, tokens: TokenSet) -> None:
    _require_aware(tokens.access_expires_at, "access_expires_at")
    if tokens.refresh_expires_at is not None:
        _require_aware(tokens.refresh_expires_at, "refresh_expires_at")
    conn.execute(
        "insert into sage_control.oauth_tokens "
        "(company_id, access_token_enc, refresh_token_enc, access_expires_at, refresh_expires_at) "
        "values (%s, %s, %s, %s, %s) "
        "on conflict (company_id) do update set "
        "access_token_enc = excluded.access_token_enc, "
        "refresh_token_enc = excluded.refresh_token_enc, "
        "access_expires_at = excluded.access_expires_at, "
        "refresh_expires_at = excluded.refresh_expires_at, "
        "refresh_in_doubt_since = null, "
        "updated_at = now()",
        (
            company_id,
            crypto.encrypt(tokens.access_token),
            crypto.encrypt(tokens.refresh_token),
            tokens.access_expires_at,
            tokens.refresh_expires_at,
        ),
    )


def _log_saved(company_id: str, tokens: TokenSet) -> None:
    log.info(
        "saved OAuth tokens for company %s (access token expires %s)", company_id, tokens.access_expires_at.isoformat()
    )


# -- recovery records ------------------------------------------------------------------------------


def write_recovery_record(directory: Path, company_id: str, tokens: TokenSet, replacing: str | None) -> Path:
    """Keep a pair the warehouse would not take: one Fernet-encrypted file, readable by this user only."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in company_id)
    path = directory / f"{safe_id}-{stamp}.sage-tokens"
    record = {
        "company_id": company_id,
        "replacing": replacing,
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "access_expires_at": tokens.access_expires_at.isoformat(),
        "refresh_expires_at": tokens.refresh_expires_at.isoformat() if tokens.refresh_expires_at else None,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(crypto.encrypt(json.dumps(record)))
        out.flush()
        os.fsync(out.fileno())
    return path


def read_recovery_record(path: Path) -> tuple[str, TokenSet, str | None]:
    """``(company_id, tokens, replacing)`` of a record :func:`write_recovery_record` wrote."""
    data = json.loads(crypto.decrypt(path.read_text(encoding="ascii").strip()))
    tokens = TokenSet(
        access_token=data["access_token"],
        refresh_token=data["refresh_token"],
        access_expires_at=datetime.fromisoformat(data["access_expires_at"]),
        refresh_expires_at=datetime.fromisoformat(data["refresh_expires_at"]) if data["refresh_expires_at"] else None,
    )
    return data["company_id"], tokens, data["replacing"]


def _require_aware(value: datetime, name: str) -> None:
    # A naive expiry would be read in the server's time zone and could be off by hours.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"TokenSet.{name} must be timezone-aware (UTC)")
