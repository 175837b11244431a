"""Sage's OAuth 2.0 authorisation-code flow, and keeping one company's access token valid.

Sage's token endpoint is small and plain (form POST, JSON answer, client credentials in the
body), so it is spoken with ``requests`` directly rather than through an OAuth library.

Two Sage facts shape ``TokenManager``: access tokens live only ``expires_in`` seconds (300
today), and every refresh returns a new refresh token while the old one dies at once. The
store is therefore the single source of truth, refreshes are serialised by the store's
lock, and a new pair is saved (on the lock's own connection) before its access token is
handed out. Only ``invalid_grant`` from the token endpoint says a grant is dead, and even then
only for the refresh token the store still holds; a refresh whose answer may have been lost
is never retried as if nothing had happened (see :class:`~sage_sync.sage.tokens.GrantSettings`).

One module: the OAuth client and the token manager share the retry and error rules of
Sage's token endpoint, so they stay together.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from urllib3.exceptions import NewConnectionError

from sage_sync.core.config import SageSettings
from sage_sync.core.errors import (
    GrantReplaced,
    InvalidResponse,
    OAuthError,
    ReauthorizationRequired,
    RefreshInDoubt,
    SageError,
    TransientError,
)
from sage_sync.sage.money import to_int
from sage_sync.sage.tokens import GrantSettings, LockedGrant, StoredGrant, TokenSet, TokenStore

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# RFC 6749 makes expires_in optional; Sage always sends it. Used only if a response omits it.
_FALLBACK_EXPIRES_IN = 300
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Answers that say the server did not act on the request: a refresh may be sent again as it is.
_NOT_ACTED_STATUSES = frozenset({429, 503})
LOST_IN_TRANSIT = "token response lost in transit; re-authorise"


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def utcnow() -> datetime:
    return datetime.now(UTC)


def fingerprint(token: str | None) -> str:
    """A short, non-reversible tag for a token, the most a log line may show of it."""
    if not token:
        return "none"
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def new_pkce_pair() -> tuple[str, str]:
    """A PKCE ``(code_verifier, code_challenge)`` pair for ``code_challenge_method=S256``."""
    verifier = secrets.token_urlsafe(64)  # 86 unreserved characters; RFC 7636 wants 43-128
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def _scrub(text: str, secret_values: tuple[str | None, ...]) -> str:
    for value in secret_values:
        if value:
            text = text.replace(value, "***")
    return text


class OAuthClient:
    """Sage's authorise, token and revoke endpoints for one registered app."""

    def __init__(
        self,
        settings: SageSettings,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (10, 30),
        *,
        max_attempts: int = 3,
        sleep: Callable[[float], None] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self.timeout = timeout
        self.max_attempts = max_attempts
        self._sleep = sleep or _sleep  # looked up at call time, so patching time.sleep works
        self._clock = clock

    def authorization_url(
        self,
        state: str,
        code_challenge: str | None = None,
        code_challenge_method: str = "S256",
        country: str | None = "gb",
    ) -> str:
        """Where to send the user to grant access.

        Sage's authorise URL already carries ``?filter=apiv3.1`` (it selects the v3.1 consent
        screen), so our parameters are merged into its query string, not appended blindly.
        ``country="gb"`` skips Sage's country picker.
        """
        parts = urlsplit(self.settings.authorize_url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours: dict[str, str] = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.settings.redirect_uri,
            "scope": self.settings.scope,
            "state": state,
        }
        if country:
            ours["country"] = country
        if code_challenge:
            ours["code_challenge"] = code_challenge
            ours["code_challenge_method"] = code_challenge_method
        query = [(k, v) for k, v in query if k not in ours] + list(ours.items())
        return urlunsplit(parts._replace(query=urlencode(query)))

    def exchange_code(self, code: str, code_verifier: str | None = None) -> TokenSet:
        """Trade the callback's one-time ``code`` (valid 60 s) for a token pair."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.redirect_uri,
        }
        if code_verifier:
            form["code_verifier"] = code_verifier
        return self._token_request(form, secret_values=(code, code_verifier))

    def refresh(self, refresh_token: str) -> TokenSet:
        """A new pair for ``refresh_token``, which Sage invalidates as it answers.

        The caller must persist the result before anything else: losing it loses the grant.
        A failure after which Sage may have rotated the token anyway (read timeout, a reset after
        sending, 500/502/504) is not retried here: it raises :class:`RefreshInDoubt`, and the
        caller decides whether to send the same token again.
        """
        if not refresh_token:
            raise ReauthorizationRequired("no refresh token is stored: the company must authorise again")
        return self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            secret_values=(refresh_token,),
            spends_token=True,
        )

    def revoke(self, refresh_token: str) -> None:
        """Revoke the grant (Sage revokes by refresh token; access tokens just expire)."""
        form = {
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret,
            "token": refresh_token,
        }
        response = self._post(self.settings.revoke_url, form)
        if response.status_code >= 400:
            self._raise_oauth_error(response, secret_values=(refresh_token,))
        log.info("revoked Sage grant (refresh token %s)", fingerprint(refresh_token))

    # -- internals -------------------------------------------------------------------------

    def _token_request(
        self, form: dict[str, str], secret_values: tuple[str | None, ...], *, spends_token: bool = False
    ) -> TokenSet:
        # Sage documents the client credentials in the form body, not HTTP Basic auth.
        form = {**form, "client_id": self.settings.client_id, "client_secret": self.settings.client_secret}
        sent_at = self._clock()
        response = self._post(self.settings.token_url, form, spends_token=spends_token)
        if response.status_code >= 400:
            self._raise_oauth_error(response, secret_values)
        try:
            body = response.json()
        except ValueError:
            raise InvalidResponse("token endpoint returned a non-JSON body", status=response.status_code) from None
        if not isinstance(body, dict):
            raise InvalidResponse("token endpoint returned JSON that is not an object")
        if body.get("error"):
            self._raise_oauth_error(response, secret_values)
        tokens = self._token_set(body, sent_at)
        log.info(
            "obtained Sage tokens (access %s, expires %s)",
            fingerprint(tokens.access_token),
            tokens.access_expires_at.isoformat(),
        )
        return tokens

    @staticmethod
    def _token_set(body: dict[str, Any], sent_at: datetime) -> TokenSet:
        access = body.get("access_token")
        refresh = body.get("refresh_token")
        if not access or not isinstance(access, str):
            raise InvalidResponse("token response has no access_token")
        if not refresh or not isinstance(refresh, str):
            raise ReauthorizationRequired("token response has no refresh_token: the grant cannot be kept")
        # Expiry counts from when the request was sent, so network time only shortens it.
        expires_in = to_int(body.get("expires_in"))
        refresh_expires_in = to_int(body.get("refresh_token_expires_in"))
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            access_expires_at=sent_at
            + timedelta(seconds=expires_in if expires_in is not None else _FALLBACK_EXPIRES_IN),
            refresh_expires_at=(
                sent_at + timedelta(seconds=refresh_expires_in) if refresh_expires_in is not None else None
            ),
        )

    def _post(self, url: str, form: dict[str, str], *, spends_token: bool = False) -> requests.Response:
        """POST with a few retries on throttling, 5xx and connection failures.

        With ``spends_token`` (a refresh), only failures that show Sage did not act are retried
        (no connection made, 429, 503); any other failure may have rotated the refresh token in
        an answer we never saw, and raises :class:`RefreshInDoubt` at once.
        """
        headers = {"Accept": "application/json"}
        path = urlsplit(url).path
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.session.post(url, data=form, headers=headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if spends_token and not _never_sent(exc):
                    raise RefreshInDoubt(
                        f"Sage's token endpoint may have rotated the refresh token: no answer ({type(exc).__name__})",
                        path=path,
                        attempts=attempt,
                    ) from None
                if attempt == self.max_attempts:
                    raise TransientError(
                        f"Sage OAuth endpoint unreachable ({type(exc).__name__})", path=path, attempts=attempt
                    ) from None
                log.warning("Sage OAuth %s failed (%s); retrying", path, type(exc).__name__)
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return response
                if spends_token and response.status_code not in _NOT_ACTED_STATUSES:
                    raise RefreshInDoubt(
                        f"Sage's token endpoint may have rotated the refresh token: HTTP {response.status_code}",
                        status=response.status_code,
                        path=path,
                        attempts=attempt,
                    )
                if attempt == self.max_attempts:
                    raise TransientError(
                        f"Sage OAuth endpoint answered HTTP {response.status_code}",
                        status=response.status_code,
                        path=path,
                        attempts=attempt,
                    )
                log.warning("Sage OAuth %s answered %s; retrying", path, response.status_code)
            self._sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _raise_oauth_error(response: requests.Response, secret_values: tuple[str | None, ...]) -> None:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = str(body.get("error") or "") if isinstance(body, dict) else ""
        description = str(body.get("error_description") or "") if isinstance(body, dict) else ""
        description = _scrub(description, secret_values)[:200] or None
        if error == "invalid_grant":
            # Code or refresh token expired, revoked, already used (rotation), or redirect
            # mismatch: only a new authorisation helps.
            text = "Sage rejected the grant (invalid_grant)"
            raise ReauthorizationRequired(f"{text}: {description}" if description else text)
        raise OAuthError(error or "http_error", response.status_code, description)


def _never_sent(exc: Exception) -> bool:
    """True when the request cannot have reached the server: no connection was ever made."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    return isinstance(getattr(reason, "reason", reason), NewConnectionError)


class TokenManager:
    """Hands out a valid access token for one company, refreshing it when needed.

    Safe across processes as long as the store's ``refresh_lock`` is: every refresh re-reads
    the store under the lock, so a pair another worker just rotated is reused instead of
    being refreshed again with a refresh token that is already dead.
    """

    def __init__(
        self,
        company_id: str,
        store: TokenStore,
        oauth: OAuthClient,
        refresh_margin: timedelta = timedelta(seconds=60),
        *,
        clock: Clock = utcnow,
        settings: GrantSettings | None = None,
    ) -> None:
        self.company_id = company_id
        self.store = store
        self.oauth = oauth
        self.refresh_margin = refresh_margin
        self._clock = clock
        self.settings = settings or GrantSettings.from_env()
        self._tokens: TokenSet | None = None
        self._lifetime: timedelta | None = None  # of the access tokens this manager got from Sage
        self.refresh_count = 0

    @property
    def margin(self) -> timedelta:
        """``refresh_margin``, but at most a third of an access token's life once one was seen.

        Sage's tokens live 300 s against a 60 s margin; a token that lives less than the margin
        would otherwise be "about to expire" from birth, and every request would refresh.
        """
        if self._lifetime is None:
            return self.refresh_margin
        return min(self.refresh_margin, self._lifetime / 3)

    def access_token(self) -> str:
        """A current access token, refreshed first if it expires within :attr:`margin`."""
        tokens = self._tokens or self._load()
        if tokens.access_expires_within(self.margin, self._clock()):
            return self.refresh(rejected_token=tokens.access_token)
        self._tokens = tokens
        return tokens.access_token

    def refresh(self, rejected_token: str | None = None) -> str:
        """Refresh the pair (unless another process already has) and return the access token.

        ``rejected_token`` is the access token Sage refused (or that is about to expire). If
        the store, re-read under the lock, holds a different one that is still fresh, another
        worker refreshed in the meantime and that token is used as is.

        The new pair is saved to the store before it is returned: Sage has already killed the
        old refresh token, so a pair that only lived in memory would be lost with the process.
        """
        with self.store.refresh_lock(self.company_id) as held:
            grant: LockedGrant = held if held is not None else StoredGrant(self.store, self.company_id)
            current = self._load(grant)
            now = self._clock()
            if current.access_token != rejected_token and not current.access_expires_within(self.margin, now):
                log.debug(
                    "company %s: stored access token %s is fresh; not refreshing",
                    self.company_id,
                    fingerprint(current.access_token),
                )
                self._tokens = current
                return current.access_token
            new = self._rotate(grant, current)
            self._lifetime = max(new.access_expires_at - now, timedelta(0))
            try:
                grant.save(new, replacing=current.refresh_token)
            except GrantReplaced:
                # A reconnect saved a new grant while this refresh of the old one was in flight:
                # the store's grant wins; the pair just made belongs to a grant nobody holds now.
                log.warning("company %s: grant replaced while it was refreshed; using the new one", self.company_id)
                with suppress(SageError):
                    self.oauth.revoke(new.refresh_token)  # or it stays live at Sage with nobody holding it
                self._tokens = self._load(grant)
                return self._tokens.access_token
            self.refresh_count += 1
            self._tokens = new
        log.info(
            "company %s: refreshed Sage tokens (access %s -> %s, expires %s)",
            self.company_id,
            fingerprint(current.access_token),
            fingerprint(new.access_token),
            new.access_expires_at.isoformat(),
        )
        return new.access_token

    def _rotate(self, grant: LockedGrant, current: TokenSet) -> TokenSet:
        """Spend ``current``'s refresh token for a new pair; only a refusal of that very token is fatal.

        An ``invalid_grant`` is checked against the store once more (under the same lock): a
        different refresh token there was saved by someone else meanwhile and is tried instead.
        """
        for _ in range(3):
            try:
                return self._spend(grant, current.refresh_token)
            except ReauthorizationRequired as exc:
                latest = grant.load()
                if latest is None or not latest.refresh_token or latest.refresh_token == current.refresh_token:
                    exc.refused = fingerprint(current.refresh_token)
                    raise
                log.info("company %s: the store holds a newer grant than the one refused; using it", self.company_id)
                current = latest
        raise ReauthorizationRequired(
            f"company {self.company_id}: Sage refused every grant the store held",
            refused=fingerprint(current.refresh_token),
        )

    def _spend(self, grant: LockedGrant, refresh_token: str) -> TokenSet:
        """``oauth.refresh``, with an answer that may have been lost handled as what it is.

        Sage may have rotated the token in an answer we never saw. Sending the same token again
        is the only way to learn whether it did: if Sage never saw the first request, the re-send
        simply works. With no grace (the default), one re-send, and an ``invalid_grant`` after it
        (now, or on a later run while the mark stays) means the answer was lost: the reason says
        so. With ``refresh_grace_seconds`` (Sage honours a spent token that long), the re-send is
        an ordinary retry within the grace, and an ``invalid_grant`` inside it is a dead grant.
        """
        try:
            return self.oauth.refresh(refresh_token)
        except RefreshInDoubt as doubt:
            log.warning("company %s: %s; asking once more with the same token", self.company_id, doubt)
            grant.mark_in_doubt()
            return self._resend(refresh_token)
        except ReauthorizationRequired as exc:
            if grant.in_doubt() and not self.settings.refresh_grace_seconds:
                raise self._lost_in_transit(refresh_token) from exc
            raise

    def _resend(self, refresh_token: str) -> TokenSet:
        grace = self.settings.refresh_grace_seconds
        first = time.monotonic()
        attempt = 1
        while True:
            self.oauth._sleep(min(2.0**attempt, 30.0))
            attempt += 1
            try:
                return self.oauth.refresh(refresh_token)
            except ReauthorizationRequired as exc:
                if grace and time.monotonic() - first <= grace:
                    raise  # Sage would still honour the token if only the answer had been lost
                raise self._lost_in_transit(refresh_token) from exc
            except RefreshInDoubt:
                if not grace or attempt >= self.oauth.max_attempts or time.monotonic() - first > grace:
                    raise

    def _lost_in_transit(self, refresh_token: str) -> ReauthorizationRequired:
        return ReauthorizationRequired(
            f"{LOST_IN_TRANSIT} (Sage rotated the refresh token in an answer that never arrived; "
            "the app was not revoked)",
            refused=fingerprint(refresh_token),
        )

    def _load(self, grant: LockedGrant | None = None) -> TokenSet:
        tokens = grant.load() if grant is not None else self.store.load(self.company_id)
        if tokens is None or not tokens.refresh_token:
            raise ReauthorizationRequired(f"company {self.company_id} has no stored Sage grant")
        return tokens
