"""Sage's Authorise Access, for the CLI and the Connect pages alike.

Starting one (a URL with a fresh CSRF ``state`` and PKCE pair), trading the callback's code for
tokens and the user's businesses, and, for the Connect pages, sealing the flow in a cookie and
holding an exchanged grant for the minutes the user takes to pick a business.

A grant nobody uses is revoked at Sage, not just forgotten here: Sage honours a refresh token
for 31 days, whoever holds a copy. That is a held grant nobody picked a business from (after
:data:`PENDING_MINUTES`, by :func:`revoke_abandoned`, or at once when the same browser starts
another, :func:`discard`), and a company's grant a new one replaced
(``lifecycle.connections``).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sage_sync.core import crypto
from sage_sync.core.config import SageSettings
from sage_sync.core.errors import LifecycleError, ReauthorizationRequired, SageError
from sage_sync.lifecycle.inputs import settings_or_refuse, warehouse
from sage_sync.sage.auth import OAuthClient, new_pkce_pair
from sage_sync.sage.client import SageClient
from sage_sync.sage.tokens import TokenSet
from sage_sync.warehouse import pending

log = logging.getLogger(__name__)

# How long an exchanged grant waits for the user to pick a business, and a started flow for Sage.
PENDING_MINUTES = 15
FLOW_SECONDS = 600


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
            raise LifecycleError(f"business {business_id!r} is not one this user can reach; theirs: {known or 'none'}")
        return match


def business_name(business: dict[str, Any]) -> str:
    """The name to show for a ``/businesses`` item."""
    return str(business.get("name") or business.get("displayed_as") or business.get("id"))


@dataclass(frozen=True)
class AuthorisationStart:
    """Where to send the user, and what the callback must match."""

    url: str
    state: str
    code_verifier: str = field(repr=False)


def begin(settings: SageSettings | None = None) -> AuthorisationStart:
    """Sage's authorise URL with a fresh ``state`` and PKCE pair."""
    oauth = OAuthClient(settings_or_refuse(settings))
    state = secrets.token_urlsafe(24)
    verifier, challenge = new_pkce_pair()
    return AuthorisationStart(oauth.authorization_url(state, code_challenge=challenge), state, verifier)


def seal_flow(start: AuthorisationStart, **flow: str) -> str:
    """The flow (``start``'s state and verifier plus ``flow``), encrypted for a cookie that expires."""
    return crypto.encrypt(
        json.dumps(
            {"state": start.state, "verifier": start.code_verifier, **flow, "expires": time.time() + FLOW_SECONDS}
        )
    )


def open_flow(sealed: str, state: str) -> dict[str, Any]:
    """The sealed flow whose ``state`` matches; :class:`LifecycleError` when missing, forged or expired."""
    try:
        flow = json.loads(crypto.decrypt(sealed))
    except Exception:  # noqa: BLE001 - missing, tampered or from another key
        raise LifecycleError("no authorisation in progress in this browser: start again") from None
    if not state or not secrets.compare_digest(state, flow.get("state", "")) or flow["expires"] < time.time():
        raise LifecycleError("the authorisation's state does not match or expired: start again")
    return flow


class _FixedToken:
    """A token source for the one call made right after the code exchange."""

    def __init__(self, token: str) -> None:
        self._token = token

    def access_token(self) -> str:
        return self._token

    def refresh(self, rejected_token: str | None = None) -> str:  # noqa: ARG002 - the TokenSource signature
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
    settings = settings_or_refuse(settings)
    try:
        tokens = OAuthClient(settings).exchange_code(code.strip(), code_verifier=code_verifier or None)
        businesses = list_businesses(settings, tokens.access_token)
    except ReauthorizationRequired as exc:
        raise LifecycleError(
            f"Sage refused the authorisation code (expired, already used or issued for another redirect): {exc}"
        ) from None
    except SageError as exc:
        raise LifecycleError(f"Sage authorisation failed: {exc}") from None
    return Authorisation(tokens, businesses)


def hold(auth: Authorisation) -> str:
    """Keep an exchanged grant (encrypted) until the user picks a business; returns its id.

    Sweeps the expired ones first (:func:`revoke_abandoned`): a new Connect is when they are found.
    """
    revoke_abandoned()
    pending_id = secrets.token_urlsafe(24)
    with warehouse() as conn:
        pending.save(conn, pending_id, auth.tokens, auth.businesses, max_age_minutes=PENDING_MINUTES)
        conn.commit()
    return pending_id


def held(pending_id: str) -> Authorisation | None:
    """The grant :func:`hold` kept, or None when it expired or was used."""
    with warehouse() as conn:
        found = pending.load(conn, pending_id, max_age_minutes=PENDING_MINUTES)
    return None if found is None else Authorisation(*found)


def take(pending_id: str) -> Authorisation | None:
    """The grant :func:`hold` kept, removed as it is read: only one caller ever gets it."""
    with warehouse() as conn:
        found = pending.take(conn, pending_id, max_age_minutes=PENDING_MINUTES)
        conn.commit()
    return None if found is None else Authorisation(*found)


def release(pending_id: str) -> None:
    """Forget a held grant (it was used)."""
    with warehouse() as conn:
        pending.delete(conn, pending_id)
        conn.commit()


def revoke_grant(refresh_token: str, settings: SageSettings | None = None, *, why: str) -> bool:
    """Revoke a grant nobody holds any more at Sage; best effort (False, logged, when Sage refuses)."""
    try:
        OAuthClient(settings_or_refuse(settings)).revoke(refresh_token)
    except (SageError, LifecycleError) as exc:
        log.warning("could not revoke %s at Sage: %s", why, exc)
        return False
    log.info("revoked %s at Sage", why)
    return True


def discard(pending_id: str, settings: SageSettings | None = None) -> None:
    """Forget a held grant nobody will pick from (the same browser started another), revoked at Sage."""
    with warehouse() as conn:
        tokens = pending.remove(conn, pending_id)
        conn.commit()
    if tokens is not None:
        revoke_grant(tokens.refresh_token, settings, why="a pending grant the same browser replaced")


def revoke_abandoned(settings: SageSettings | None = None) -> int:
    """Revoke at Sage, then delete, every held grant older than :data:`PENDING_MINUTES`; how many.

    Each is deleted whatever Sage answers (a refused revoke is logged): retrying a grant Sage
    keeps refusing would hold the sweep forever, and an unrevoked one dies within 31 days anyway.
    """
    with warehouse() as conn:
        found = pending.expired(conn, max_age_minutes=PENDING_MINUTES)
        for pending_id, tokens in found:
            if tokens is not None:
                revoke_grant(tokens.refresh_token, settings, why="a pending grant nobody picked")
            pending.delete(conn, pending_id)
        conn.commit()
    return len(found)
