"""The token pair a company's grant holds, and the store contract that keeps it durable.

Sage rotates the refresh token on every refresh and the old one dies at once, so the store is
the single source of truth: a new pair is saved (and committed) before its access token is
used, and refreshes of one company are serialised across processes by ``refresh_lock``, which
hands out a :class:`LockedGrant`: the stored pair read and written while the lock is held (on
the lock's own connection, for the warehouse store), so that a new pair never depends on
opening a connection at the one moment it exists only in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sage_sync.core.config import env_number
from sage_sync.core.errors import GrantReplaced

GRACE_ENV = "SAGE_REFRESH_TOKEN_GRACE_SECONDS"
SAVE_RETRY_ENV = "SAGE_TOKEN_SAVE_RETRY_SECONDS"
RECOVERY_DIR_ENV = "SAGE_TOKEN_RECOVERY_DIR"


def _seconds(name: str, default: float) -> float:
    """A number of seconds from the environment; 0 is allowed (no grace, no retry)."""
    return env_number(name, default, zero_allowed=True)


@dataclass(frozen=True)
class GrantSettings:
    """How hard the pipeline works to keep a grant through lost answers and a lost warehouse.

    ``refresh_grace_seconds``: how long Sage honours a refresh token after rotating it.
    ``../shared/sage-api/NOTES.md`` leaves it open; the default 0 designs for "not at all". With
    0 an unanswered refresh is sent once more, only to learn whether Sage saw it, and an
    ``invalid_grant`` then means "token response lost in transit". With a grace, that re-send is
    an ordinary retry within the grace, and an ``invalid_grant`` inside it means a dead grant.
    ``save_retry_seconds``: how long a refreshed pair is retried into the warehouse before it
    goes to an encrypted recovery record in ``recovery_dir`` (restored with ``restore-tokens``).
    """

    refresh_grace_seconds: float = 0.0
    save_retry_seconds: float = 300.0
    recovery_dir: Path = field(default_factory=lambda: Path.home() / ".sage_sync" / "token-recovery")

    @classmethod
    def from_env(cls) -> GrantSettings:
        """``SAGE_REFRESH_TOKEN_GRACE_SECONDS``, ``SAGE_TOKEN_SAVE_RETRY_SECONDS``, ``SAGE_TOKEN_RECOVERY_DIR``."""
        directory = os.environ.get(RECOVERY_DIR_ENV, "").strip()
        return cls(
            refresh_grace_seconds=_seconds(GRACE_ENV, 0.0),
            save_retry_seconds=_seconds(SAVE_RETRY_ENV, 300.0),
            recovery_dir=Path(directory).expanduser() if directory else Path.home() / ".sage_sync" / "token-recovery",
        )


@dataclass(frozen=True)
class TokenSet:
    """An OAuth token pair with absolute expiry times (UTC). Secrets stay out of ``repr``."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    access_expires_at: datetime
    refresh_expires_at: datetime | None = None

    def access_expires_within(self, margin: timedelta, now: datetime | None = None) -> bool:
        """True when the access token is expired or will be within ``margin``."""
        return self.access_expires_at - margin <= (now or datetime.now(UTC))


class LockedGrant(Protocol):
    """One company's stored pair while its refresh lock is held."""

    def load(self) -> TokenSet | None:
        """The stored pair, or None."""

    def save(self, tokens: TokenSet, *, replacing: str | None = None) -> None:
        """Persist ``tokens`` (committed) and clear the in-doubt mark.

        With ``replacing`` (the refresh token the new pair was made from), raise
        :class:`GrantReplaced` instead when the store no longer holds that token: a reconnect
        saved a newer grant, which a refreshed pair of the old one must never overwrite.
        """

    def mark_in_doubt(self) -> None:
        """Note that a refresh of the stored token may have been answered without us seeing it."""

    def in_doubt(self) -> bool:
        """Whether the stored refresh token may already have been spent in a lost answer."""


class TokenStore(Protocol):
    """Durable, per-company storage of the current token pair."""

    def load(self, company_id: str) -> TokenSet | None:
        """The stored pair, or None when the company has never been authorised."""

    def save(self, company_id: str, tokens: TokenSet) -> None:
        """Persist ``tokens`` durably (committed) before returning."""

    def refresh_lock(self, company_id: str) -> AbstractContextManager[LockedGrant | None]:
        """Hold an exclusive, cross-process lock on refreshing this company's tokens.

        Yields the :class:`LockedGrant` to read and write the pair with while it is held (None
        from a store that has nothing better than its own ``load``/``save``).
        """

    def delete(self, company_id: str) -> None:
        """Forget the company's tokens (disconnect)."""


class StoredGrant:
    """A :class:`LockedGrant` over any store's ``load``/``save`` (the memory store, test stores)."""

    def __init__(self, store: TokenStore, company_id: str) -> None:
        self._store = store
        self._company_id = company_id
        self._in_doubt = False

    def load(self) -> TokenSet | None:
        return self._store.load(self._company_id)

    def save(self, tokens: TokenSet, *, replacing: str | None = None) -> None:
        current = self._store.load(self._company_id)
        if replacing is not None and current is not None and current.refresh_token != replacing:
            raise GrantReplaced(f"the grant of company {self._company_id} was replaced while it was being refreshed")
        self._store.save(self._company_id, tokens)
        self._in_doubt = False

    def mark_in_doubt(self) -> None:
        self._in_doubt = True

    def in_doubt(self) -> bool:
        return self._in_doubt


class MemoryTokenStore:
    """A TokenStore for a single process (the CLI's dry runs and unit tests of the client)."""

    def __init__(self) -> None:
        self._tokens: dict[str, TokenSet] = {}

    def load(self, company_id: str) -> TokenSet | None:
        return self._tokens.get(company_id)

    def save(self, company_id: str, tokens: TokenSet) -> None:
        self._tokens[company_id] = tokens

    def refresh_lock(self, company_id: str) -> AbstractContextManager[LockedGrant | None]:
        @contextmanager
        def _held() -> Iterator[LockedGrant | None]:
            yield StoredGrant(self, company_id)

        return _held()

    def delete(self, company_id: str) -> None:
        self._tokens.pop(company_id, None)
