"""OAuth client and token manager: pure checks, then the real flow against the fake Sage."""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sage_sync.core.config import SageSettings
from sage_sync.core.errors import OAuthError, ReauthorizationRequired
from sage_sync.sage.auth import OAuthClient, TokenManager, fingerprint, new_pkce_pair
from sage_sync.sage.tokens import MemoryTokenStore, TokenSet
from sandbox.fake_sage.server import FakeSageServer

REDIRECT = "http://localhost:8080/sage/callback"


SAGE_AUTHORIZE = "https://www.sageone.com/oauth2/auth/central?filter=apiv3.1"


def _settings(authorize_url: str = SAGE_AUTHORIZE) -> SageSettings:
    return SageSettings(
        api_url="https://api.accounting.sage.com/v3.1",
        client_id="cid",
        client_secret="csecret",
        authorize_url=authorize_url,
        token_url="https://oauth.accounting.sage.com/token",
        revoke_url="https://oauth.accounting.sage.com/revoke",
        redirect_uri=REDIRECT,
    )


# -- pure ------------------------------------------------------------------------------------


def test_authorization_url_keeps_the_existing_query() -> None:
    url = OAuthClient(_settings()).authorization_url("st8", code_challenge="chal")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://www.sageone.com/oauth2/auth/central"
    assert parts.query.startswith("filter=apiv3.1&")
    assert parse_qs(parts.query) == {
        "filter": ["apiv3.1"],
        "response_type": ["code"],
        "client_id": ["cid"],
        "redirect_uri": [REDIRECT],
        "scope": ["readonly"],
        "state": ["st8"],
        "country": ["gb"],
        "code_challenge": ["chal"],
        "code_challenge_method": ["S256"],
    }


def test_authorization_url_without_query_and_without_pkce_or_country() -> None:
    url = OAuthClient(_settings("https://auth.example/authorize")).authorization_url("s", country=None)
    assert url.startswith("https://auth.example/authorize?response_type=code&")
    query = parse_qs(urlsplit(url).query)
    assert "code_challenge" not in query and "country" not in query


def test_pkce_pair_is_s256() -> None:
    verifier, challenge = new_pkce_pair()
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert challenge == expected
    assert new_pkce_pair()[0] != verifier


def test_fingerprint_is_short_and_not_the_token() -> None:
    assert len(fingerprint("secret-token")) == 8
    assert "secret" not in fingerprint("secret-token")
    assert fingerprint(None) == "none"


class _CountingOAuth:
    """An OAuthClient stand-in that mints numbered tokens (pure TokenManager logic)."""

    def __init__(self, ttl: int = 300) -> None:
        self.calls: list[str] = []
        self.ttl = ttl

    def refresh(self, refresh_token: str) -> TokenSet:
        self.calls.append(refresh_token)
        n = len(self.calls)
        return TokenSet(f"access-{n}", f"refresh-{n}", datetime.now(UTC) + timedelta(seconds=self.ttl))


def _seed(store: MemoryTokenStore, expires_in: int) -> None:
    store.save("co", TokenSet("access-0", "refresh-0", datetime.now(UTC) + timedelta(seconds=expires_in)))


def test_token_manager_uses_a_fresh_token_without_refreshing() -> None:
    store, oauth = MemoryTokenStore(), _CountingOAuth()
    _seed(store, 300)
    manager = TokenManager("co", store, oauth)  # type: ignore[arg-type]
    assert manager.access_token() == "access-0"
    assert oauth.calls == []


def test_token_manager_refreshes_ahead_of_expiry_and_saves_first() -> None:
    store, oauth = MemoryTokenStore(), _CountingOAuth()
    _seed(store, 30)  # inside the 60 s margin
    manager = TokenManager("co", store, oauth)  # type: ignore[arg-type]
    assert manager.access_token() == "access-1"
    assert oauth.calls == ["refresh-0"]
    assert store.load("co").refresh_token == "refresh-1"  # type: ignore[union-attr]
    assert manager.access_token() == "access-1"
    assert oauth.calls == ["refresh-0"]


def test_token_manager_reuses_a_token_another_process_refreshed() -> None:
    store, oauth = MemoryTokenStore(), _CountingOAuth()
    _seed(store, 300)
    first = TokenManager("co", store, oauth)  # type: ignore[arg-type]
    second = TokenManager("co", store, oauth)  # type: ignore[arg-type]
    assert first.access_token() == second.access_token() == "access-0"
    assert first.refresh(rejected_token="access-0") == "access-1"
    # The second manager's token is rejected too; the store already holds a newer one.
    assert second.refresh(rejected_token="access-0") == "access-1"
    assert oauth.calls == ["refresh-0"]


def test_token_manager_without_a_grant_needs_reauthorisation() -> None:
    with pytest.raises(ReauthorizationRequired):
        TokenManager("nobody", MemoryTokenStore(), _CountingOAuth()).access_token()  # type: ignore[arg-type]


def test_store_is_saved_before_the_token_is_returned() -> None:
    class FailingStore(MemoryTokenStore):
        def save(self, company_id: str, tokens: TokenSet) -> None:
            raise OSError("disk full")

    store = FailingStore()
    MemoryTokenStore.save(store, "co", TokenSet("access-0", "refresh-0", datetime.now(UTC)))
    with pytest.raises(OSError, match="disk full"):
        TokenManager("co", store, _CountingOAuth()).access_token()  # type: ignore[arg-type]


# -- real HTTP against the fake Sage server ---------------------------------------------------

FAKE_REDIRECT = "http://127.0.0.1:8080/callback"


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=42) as server:
        yield server


@pytest.fixture
def oauth(sage: FakeSageServer) -> OAuthClient:
    sage.admin.reset()
    settings = SageSettings(
        api_url=sage.api_url,
        client_id=sage.client_id,
        client_secret=sage.client_secret,
        authorize_url=sage.authorize_url,
        token_url=sage.token_url,
        revoke_url=sage.revoke_url,
        redirect_uri=FAKE_REDIRECT,
    )
    return OAuthClient(settings, sleep=lambda s: None)


def _browser(url: str, state: str) -> str:
    """What the user's browser does: follow the authorise URL to the callback and read the code."""
    response = requests.get(url, allow_redirects=False, timeout=10)
    assert response.status_code == 302
    callback = parse_qs(urlsplit(response.headers["location"]).query)
    assert callback["state"] == [state]
    return callback["code"][0]


def test_authorization_code_flow_with_pkce(sage: FakeSageServer, oauth: OAuthClient) -> None:
    verifier, challenge = new_pkce_pair()
    before = datetime.now(UTC)
    code = _browser(oauth.authorization_url("st-1", code_challenge=challenge), "st-1")
    tokens = oauth.exchange_code(code, code_verifier=verifier)
    after = datetime.now(UTC)
    assert before + timedelta(seconds=300) <= tokens.access_expires_at <= after + timedelta(seconds=300)
    assert tokens.refresh_expires_at is not None
    assert tokens.refresh_expires_at - tokens.access_expires_at == timedelta(seconds=2_678_400 - 300)
    # The code is single use.
    with pytest.raises(ReauthorizationRequired, match="invalid_grant"):
        oauth.exchange_code(code, code_verifier=verifier)


def test_wrong_pkce_verifier_is_refused(oauth: OAuthClient) -> None:
    _, challenge = new_pkce_pair()
    code = _browser(oauth.authorization_url("st-2", code_challenge=challenge), "st-2")
    with pytest.raises(ReauthorizationRequired):
        oauth.exchange_code(code, code_verifier=new_pkce_pair()[0])


def test_expiry_follows_expires_in_not_a_constant(sage: FakeSageServer, oauth: OAuthClient) -> None:
    sage.admin.set_token_ttl(120)
    tokens = oauth.exchange_code(sage.authorize(redirect_uri=FAKE_REDIRECT))
    remaining = (tokens.access_expires_at - datetime.now(UTC)).total_seconds()
    assert 110 < remaining <= 120


def test_refresh_rotates_and_the_old_token_dies(oauth: OAuthClient, sage: FakeSageServer) -> None:
    first = oauth.exchange_code(sage.authorize(redirect_uri=FAKE_REDIRECT))
    second = oauth.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    with pytest.raises(ReauthorizationRequired, match="invalid_grant"):
        oauth.refresh(first.refresh_token)
    assert oauth.refresh(second.refresh_token).access_token


def test_revoke_ends_the_grant(oauth: OAuthClient, sage: FakeSageServer) -> None:
    tokens = oauth.exchange_code(sage.authorize(redirect_uri=FAKE_REDIRECT))
    oauth.revoke(tokens.refresh_token)
    with pytest.raises(ReauthorizationRequired):
        oauth.refresh(tokens.refresh_token)


def test_wrong_client_secret_is_a_configuration_error(sage: FakeSageServer, oauth: OAuthClient) -> None:
    tokens = oauth.exchange_code(sage.authorize(redirect_uri=FAKE_REDIRECT))
    bad = OAuthClient(replace(oauth.settings, client_secret="wrong"), sleep=lambda s: None)
    with pytest.raises(OAuthError) as info:
        bad.refresh(tokens.refresh_token)
    assert info.value.error == "invalid_client" and "wrong" not in str(info.value)


class LockingStore(MemoryTokenStore):
    """MemoryTokenStore with a real lock, standing in for the warehouse's advisory lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def refresh_lock(self, company_id: str) -> AbstractContextManager[None]:
        @contextmanager
        def _locked() -> Iterator[None]:
            with self._lock:
                yield

        return _locked()


def test_concurrent_refresh_from_two_managers_refreshes_once(sage: FakeSageServer, oauth: OAuthClient) -> None:
    store = LockingStore()
    issued = oauth.exchange_code(sage.authorize(redirect_uri=FAKE_REDIRECT))
    # Stored as already expired, so both workers want to refresh at the same moment.
    store.save("co", replace(issued, access_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    managers = [TokenManager("co", store, oauth), TokenManager("co", store, oauth)]
    barrier = threading.Barrier(2)
    results: list[str] = []
    failures: list[BaseException] = []

    def work(manager: TokenManager) -> None:
        barrier.wait()
        try:
            results.append(manager.access_token())
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures
    assert sum(m.refresh_count for m in managers) == 1
    assert len(set(results)) == 1
    stored = store.load("co")
    assert stored is not None and stored.access_token == results[0]
    assert [e["path"] for e in sage.admin.request_log()].count("/token") == 2  # exchange + one refresh


def test_token_manager_end_to_end_logs_only_fingerprints(
    sage: FakeSageServer, oauth: OAuthClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = MemoryTokenStore()
    issued = oauth.exchange_code(sage.authorize(redirect_uri=FAKE_REDIRECT))
    store.save("co", replace(issued, access_expires_at=datetime.now(UTC)))
    manager = TokenManager("co", store, oauth)
    token = manager.access_token()
    current = store.load("co")
    assert current is not None and token == current.access_token != issued.access_token
    sage.admin.revoke_grants()
    with pytest.raises(ReauthorizationRequired) as info:
        manager.refresh(rejected_token=token)
    text = "\n".join(r.getMessage() for r in caplog.records) + str(info.value) + repr(current)
    for secret in (issued.access_token, issued.refresh_token, current.access_token, current.refresh_token):
        assert secret not in text
    assert fingerprint(current.access_token) in text
