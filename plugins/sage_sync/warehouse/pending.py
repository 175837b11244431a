"""Grants exchanged on the Connect page but not yet given to a company (``sage_control.pending_authorisations``).

Between Sage's callback and the user picking a business, the token pair waits here, encrypted
as one Fernet blob, with the businesses the user may pick from. Rows older than the caller's
``max_age_minutes`` are never returned; :func:`expired` hands them to the lifecycle layer, which
revokes each at Sage before it deletes it (a grant nobody picked must not stay alive there).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sage_sync.core import crypto
from sage_sync.core.errors import CryptoError
from sage_sync.sage.tokens import TokenSet


def _seal(tokens: TokenSet) -> str:
    return crypto.encrypt(
        json.dumps(
            {
                "access_token": tokens.access_token,
                "refresh_token": tokens.refresh_token,
                "access_expires_at": tokens.access_expires_at.isoformat(),
                "refresh_expires_at": tokens.refresh_expires_at.isoformat() if tokens.refresh_expires_at else None,
            }
        )
    )


def _unseal(blob: str) -> TokenSet:
    data = json.loads(crypto.decrypt(blob))
    return TokenSet(
        access_token=data["access_token"],
        refresh_token=data["refresh_token"],
        access_expires_at=datetime.fromisoformat(data["access_expires_at"]),
        refresh_expires_at=datetime.fromisoformat(data["refresh_expires_at"]) if data["refresh_expires_at"] else None,
    )


def save(
    conn: psycopg.Connection,
    pending_id: str,
    tokens: TokenSet,
    businesses: list[dict[str, Any]],
    *,
    max_age_minutes: int,
) -> None:
    """Store the grant under ``pending_id``; in the caller's transaction.

    ``max_age_minutes`` is kept for the callers' symmetry with :func:`load`; expired rows are
    :func:`expired`'s, so that each is revoked at Sage before it goes.
    """
    del max_age_minutes
    conn.execute(
        "insert into sage_control.pending_authorisations (pending_id, tokens_enc, businesses) values (%s, %s, %s)",
        (pending_id, _seal(tokens), Jsonb(businesses)),
    )


def _grant(row: tuple[Any, Any] | None) -> tuple[TokenSet, list[dict[str, Any]]] | None:
    return None if row is None else (_unseal(row[0]), row[1])


def load(
    conn: psycopg.Connection, pending_id: str, *, max_age_minutes: int
) -> tuple[TokenSet, list[dict[str, Any]]] | None:
    """The grant and businesses under ``pending_id``, or None when unknown or older than ``max_age_minutes``."""
    return _grant(
        conn.execute(
            "select tokens_enc, businesses from sage_control.pending_authorisations "
            "where pending_id = %s and created_at >= now() - make_interval(mins => %s)",
            (pending_id, max_age_minutes),
        ).fetchone()
    )


def take(
    conn: psycopg.Connection, pending_id: str, *, max_age_minutes: int
) -> tuple[TokenSet, list[dict[str, Any]]] | None:
    """Remove the grant under ``pending_id`` and return it; None when gone, expired or taken already.

    One ``delete ... returning``: of two callers at once (a double click), exactly one gets the
    row, so one pending grant can only ever give one company. In the caller's transaction.
    """
    return _grant(
        conn.execute(
            "delete from sage_control.pending_authorisations where pending_id = %s "
            "and created_at >= now() - make_interval(mins => %s) returning tokens_enc, businesses",
            (pending_id, max_age_minutes),
        ).fetchone()
    )


def delete(conn: psycopg.Connection, pending_id: str) -> None:
    """Forget the grant under ``pending_id``; in the caller's transaction."""
    conn.execute("delete from sage_control.pending_authorisations where pending_id = %s", (pending_id,))


def remove(conn: psycopg.Connection, pending_id: str) -> TokenSet | None:
    """Delete the grant under ``pending_id``, expired or not, and return its tokens (to revoke it);
    None if gone.

    In the caller's transaction; ``delete ... returning``, so of two callers only one gets it.
    """
    row = conn.execute(
        "delete from sage_control.pending_authorisations where pending_id = %s returning tokens_enc", (pending_id,)
    ).fetchone()
    return None if row is None else _unseal(row[0])


def expired(conn: psycopg.Connection, *, max_age_minutes: int, limit: int = 100) -> list[tuple[str, TokenSet | None]]:
    """Grants older than ``max_age_minutes``, locked for the caller's transaction (``skip locked``:
    two sweeps never revoke the same one); tokens None when they no longer decrypt."""
    rows = conn.execute(
        "select pending_id, tokens_enc from sage_control.pending_authorisations "
        "where created_at < now() - make_interval(mins => %s) order by created_at limit %s for update skip locked",
        (max_age_minutes, limit),
    ).fetchall()
    found: list[tuple[str, TokenSet | None]] = []
    for pending_id, blob in rows:
        try:
            found.append((pending_id, _unseal(blob)))
        except CryptoError:  # sealed with a key since removed: nothing to revoke with, only to delete
            found.append((pending_id, None))
    return found
