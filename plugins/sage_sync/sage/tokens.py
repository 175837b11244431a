"""The token pair a company's grant holds, and the store contract that keeps it durable.

Sage rotates the refresh token on every refresh and the old one dies at once, so the store is
the single source of truth: a new pair is saved (and committed) before its access token is
used, and refreshes of one company are serialised across processes by ``refresh_lock``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


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


class TokenStore(Protocol):
    """Durable, per-company storage of the current token pair."""

    def load(self, company_id: str) -> TokenSet | None:
        """The stored pair, or None when the company has never been authorised."""

    def save(self, company_id: str, tokens: TokenSet) -> None:
        """Persist ``tokens`` durably (committed) before returning."""

    def refresh_lock(self, company_id: str) -> AbstractContextManager[None]:
        """Hold an exclusive, cross-process lock on refreshing this company's tokens."""

    def delete(self, company_id: str) -> None:
        """Forget the company's tokens (disconnect)."""


class MemoryTokenStore:
    """A TokenStore for a single process (the CLI's dry runs and unit tests of the client)."""

    def __init__(self) -> None:
        self._tokens: dict[str, TokenSet] = {}

    def load(self, company_id: str) -> TokenSet | None:
        return self._tokens.get(company_id)

    def save(self, company_id: str, tokens: TokenSet) -> None:
        self._tokens[company_id] = tokens

    def refresh_lock(self, company_id: str) -> AbstractContextManager[None]:  # noqa: ARG002 - TokenStore's signature
        from contextlib import contextmanager  # noqa: PLC0415

        @contextmanager
        def _noop() -> Iterator[None]:
            yield

        return _noop()

    def delete(self, company_id: str) -> None:
        self._tokens.pop(company_id, None)
