"""Secrets stay secret, grants stay single-use, companies stay apart, tokens stay on the API host.

Real PostgreSQL, the fake Sage over HTTP (one server for the module), ``sync.run_company`` in-process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import psycopg
import pytest
import requests
from faults.kit import connect, point_env_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.util import parse_url

from sage_sync.core.config import sage_settings
from sage_sync.core.errors import InvalidResponse, ReauthorizationRequired, SageError
from sage_sync.pipeline import sync
from sage_sync.sage.auth import OAuthClient, new_pkce_pair
from sage_sync.sage.client import SageClient, join_url
from sage_sync.sage.tokens import TokenSet
from sage_sync.warehouse import token_store
from sage_sync.warehouse.token_store import PostgresTokenStore
from sandbox.fake_sage.server import FakeSageServer

RAW_TABLES = (
    "businesses",
    "financial_settings",
    "ledger_accounts",
    "contacts",
    "tax_rates",
    "purchase_invoices",
    "purchase_credit_notes",
    "purchase_quick_entries",
    "other_payments",
    "deletions",
    "quarantine",
)
CLIENT_SECRET = "s3cret-Client-Value-7f1c2e"


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=5, client_secret=CLIENT_SECRET) as server:
        yield server


@pytest.fixture
def env(
    sage: FakeSageServer, warehouse: psycopg.Connection, pg_dsn: str, fernet_key: str, monkeypatch: pytest.MonkeyPatch
) -> psycopg.Connection:
    sage.admin.reset()
    point_env_at(monkeypatch, pg_dsn, sage)
    monkeypatch.setattr("sage_sync.sage.client._sleep", lambda _s: None)
    monkeypatch.setattr("sage_sync.sage.auth._sleep", lambda _s: None)
    return warehouse


def _business_id(sage: FakeSageServer, key: str) -> str:
    return next(b["id"] for b in sage.admin.businesses() if b["key"] == key)


# -- (a) + (b): no secret in logs, request URLs or the token table ------------------------------------


def _texts_of(record: logging.LogRecord) -> list[str]:
    texts = [record.getMessage(), str(record.msg), repr(record.args)]
    if record.exc_info and record.exc_info[1] is not None:
        texts.append(repr(record.exc_info[1]))
    if record.exc_text:
        texts.append(record.exc_text)
    return texts


def test_sync_never_logs_or_sends_tokens_in_urls(
    sage: FakeSageServer,
    env: psycopg.Connection,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    issued: list[TokenSet] = []
    original_upsert = token_store._upsert

    # Every pair the store writes passes here (a plain save, and a save under the refresh lock).
    def spy_upsert(conn: psycopg.Connection, company_id: str, tokens: TokenSet) -> None:
        issued.append(tokens)
        original_upsert(conn, company_id, tokens)

    monkeypatch.setattr(token_store, "_upsert", spy_upsert)
    caplog.set_level(logging.DEBUG)  # the root logger: every logger propagating to it
    for name in ("sage_sync", "urllib3", "requests", "psycopg"):
        caplog.set_level(logging.DEBUG, logger=name)

    company = connect(sage)
    sage.admin.expire_access_tokens()  # the sync must refresh once: two pairs to keep secret
    sync.run_company(company)

    stored = PostgresTokenStore(pg_dsn).load(company)
    assert stored is not None
    assert len(issued) >= 2 and issued[-1] == stored  # the refresh really happened
    secrets = {CLIENT_SECRET}
    for pair in issued:
        secrets |= {pair.access_token, pair.refresh_token}
    assert all(len(s) >= 16 for s in secrets)

    assert any(r.name.startswith("sage_sync") for r in caplog.records)  # logging really was captured
    for record in caplog.records:
        for text in _texts_of(record):
            leaked = [s[:6] + "..." for s in secrets if s in text or s in unquote(text)]
            assert not leaked, f"{record.name} logged a secret ({leaked}): {text[:200]}"

    requests_seen = sage.admin.request_log()
    assert requests_seen
    for entry in requests_seen:
        url_text = f"{entry.get('path', '')}?{entry.get('query', '')}"
        for candidate in (url_text, unquote(url_text)):
            assert not any(s in candidate for s in secrets), f"a secret was sent in a URL: {entry}"

    # (b) the token table holds ciphertext only.
    rows = env.execute("select access_token_enc, refresh_token_enc from sage_control.oauth_tokens").fetchall()
    assert rows
    for access_enc, refresh_enc in rows:
        for column in (access_enc, refresh_enc):
            assert not any(s in column for s in secrets)
    assert stored.access_token not in json.dumps(rows)
    assert stored.refresh_token not in json.dumps(rows)


def test_token_columns_never_hold_plaintext(sage: FakeSageServer, env: psycopg.Connection, pg_dsn: str) -> None:
    company = connect(sage)
    stored = PostgresTokenStore(pg_dsn).load(company)
    assert stored is not None
    env.commit()
    row = env.execute(
        "select access_token_enc, refresh_token_enc from sage_control.oauth_tokens where company_id = %s", (company,)
    ).fetchone()
    assert row is not None
    access_enc, refresh_enc = row
    assert stored.access_token not in access_enc and stored.access_token not in refresh_enc
    assert stored.refresh_token not in access_enc and stored.refresh_token not in refresh_enc
    assert access_enc != refresh_enc
    # nothing else in the schema holds them either (companies, events, runs)
    for table in ("companies", "connection_events", "sync_runs", "watermarks"):
        dump = env.execute(f"select coalesce(json_agg(t)::text, '') from sage_control.{table} t").fetchone()[0]
        assert stored.access_token not in dump and stored.refresh_token not in dump


# -- (c) OAuth: PKCE enforced, codes single-use ---------------------------------------------------------


def test_code_exchange_with_a_wrong_pkce_verifier_is_refused(sage: FakeSageServer, env: psycopg.Connection) -> None:
    oauth = OAuthClient(sage_settings())
    _verifier, challenge = new_pkce_pair()
    wrong, _ = new_pkce_pair()
    code = sage.authorize(login_hint="demo@example.com", code_challenge=challenge)
    with pytest.raises(ReauthorizationRequired) as refused:
        oauth.exchange_code(code, code_verifier=wrong)
    assert isinstance(refused.value, SageError)
    assert code not in str(refused.value) and wrong not in str(refused.value)


def test_code_exchange_without_the_pkce_verifier_is_refused(sage: FakeSageServer, env: psycopg.Connection) -> None:
    oauth = OAuthClient(sage_settings())
    _verifier, challenge = new_pkce_pair()
    code = sage.authorize(login_hint="demo@example.com", code_challenge=challenge)
    with pytest.raises(ReauthorizationRequired):
        oauth.exchange_code(code)


def test_an_authorization_code_is_single_use(sage: FakeSageServer, env: psycopg.Connection) -> None:
    oauth = OAuthClient(sage_settings())
    verifier, challenge = new_pkce_pair()
    code = sage.authorize(login_hint="demo@example.com", code_challenge=challenge)
    tokens = oauth.exchange_code(code, code_verifier=verifier)
    assert tokens.access_token and tokens.refresh_token
    with pytest.raises(ReauthorizationRequired) as replay:
        oauth.exchange_code(code, code_verifier=verifier)
    assert code not in str(replay.value) and verifier not in str(replay.value)


def test_a_refresh_token_is_single_use(sage: FakeSageServer, env: psycopg.Connection) -> None:
    oauth = OAuthClient(sage_settings())
    verifier, challenge = new_pkce_pair()
    first = oauth.exchange_code(
        sage.authorize(login_hint="demo@example.com", code_challenge=challenge), code_verifier=verifier
    )
    second = oauth.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    with pytest.raises(ReauthorizationRequired) as replay:
        oauth.refresh(first.refresh_token)
    assert first.refresh_token not in str(replay.value)


# -- (d) one company's sync writes only that company's rows ----------------------------------------------


def _counts(conn: psycopg.Connection) -> dict[tuple[str, str], int]:
    conn.commit()
    counts: dict[tuple[str, str], int] = {}
    for table in RAW_TABLES:
        for company, n in conn.execute(f"select company_id, count(*) from sage_raw.{table} group by 1"):
            counts[table, company] = n
    for company, n in conn.execute("select company_id, count(*) from sage_control.sync_runs group by 1"):
        counts["sync_runs", company] = n
    return counts


def test_a_sync_writes_only_its_own_company(sage: FakeSageServer, env: psycopg.Connection) -> None:
    company_a = connect(sage, "greenleaf")
    company_b = connect(sage, "northwind")  # same Sage user: one login reaches both businesses
    assert company_a != company_b
    sage.admin.clear_request_log()

    sync.run_company(company_a)
    after_a = _counts(env)
    assert after_a, "the sync of A wrote nothing"
    assert {company for _, company in after_a} == {company_a}
    assert after_a["purchase_invoices", company_a] > 0
    assert {
        e["x_business"]
        for e in sage.admin.request_log()
        if e["path"].startswith("/v3.1/") and e["path"] != "/v3.1/businesses"
    } <= {company_a}

    sync.run_company(company_b)
    after_b = _counts(env)
    assert {k: v for k, v in after_b.items() if k[1] == company_a} == after_a
    assert after_b["purchase_invoices", company_b] > 0
    assert {company for _, company in after_b} == {company_a, company_b}
    # B's rows are B's records: no record id of A's invoices appears under B
    ids_a = {
        r[0]
        for r in env.execute("select record_id from sage_raw.purchase_invoices where company_id = %s", (company_a,))
    }
    ids_b = {
        r[0]
        for r in env.execute("select record_id from sage_raw.purchase_invoices where company_id = %s", (company_b,))
    }
    assert not ids_a & ids_b


# -- (e) the bearer token never leaves the API host ----------------------------------------------------


API = "https://api.accounting.sage.com/v3.1"


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.example/v3.1/purchase_invoices?page=2",
        "http://api.accounting.sage.com/v3.1/purchase_invoices?page=2",  # downgraded scheme
        "https://api.accounting.sage.com.evil.example/v3.1/purchase_invoices",
        "https://api.accounting.sage.com@evil.example/v3.1/purchase_invoices",
        "https://api.accounting.sage.com:444/v3.1/purchase_invoices",
        "https://api.accounting.sage.com/v3.10/purchase_invoices",
        "https://api.accounting.sage.com/v3.1\\@evil.example/x",
    ],
)
def test_join_url_refuses_absolute_links_outside_the_api_base(link: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        join_url(API, link)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    link=st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda p, s: p + s,
            st.sampled_from(
                [
                    "https://",
                    "http://",
                    "//",
                    "/",
                    "\\\\",
                    "https:evil.example",
                    "HTTPS://evil.example",
                    API,
                    API + "@",
                    API + ".",
                    "/v3.1",
                    "https://evil.example",
                    "@evil.example",
                    "https://x@",
                ]
            ),
            st.text(max_size=30),
        ),
    )
)
def test_join_url_only_ever_yields_the_api_host(link: str) -> None:
    try:
        url = join_url(API, link)
    except ValueError:
        return
    parsed = parse_url(url)  # how urllib3 (under requests) will read it
    assert (parsed.scheme, parsed.host, parsed.port) == ("https", "api.accounting.sage.com", None), url
    assert parsed.auth is None, url


class _Transport(requests.adapters.BaseAdapter):
    """Answers every request with one list page whose ``$next`` points at another host."""

    def __init__(self, next_link: str) -> None:
        super().__init__()
        self.next_link = next_link
        self.seen: list[tuple[str, str | None]] = []

    def send(self, request: requests.PreparedRequest, **_kwargs: Any) -> requests.Response:
        self.seen.append((request.url or "", request.headers.get("Authorization")))
        response = requests.Response()
        response.status_code = 200
        response.url = request.url or ""
        response.request = request
        response.headers["Content-Type"] = "application/json"
        response._content = json.dumps(
            {  # a canned response
                "$items": [{"id": "1"}],
                "$page": 1,
                "$total": 400,
                "$itemsPerPage": 200,
                "$next": self.next_link,
            }
        ).encode()
        return response

    def close(self) -> None:
        pass


class _Tokens:
    def access_token(self) -> str:
        return "bearer-secret-token-value"

    def refresh(self, rejected_token: str | None = None) -> str:
        return "bearer-secret-token-value"


@pytest.mark.parametrize(
    "next_link",
    [
        "https://evil.example/v3.1/purchase_invoices?page=2",
        "https://api.accounting.sage.com.evil.example/v3.1/purchase_invoices?page=2",
    ],
)
def test_client_refuses_a_next_link_to_another_host(next_link: str) -> None:
    transport = _Transport(next_link)
    session = requests.Session()
    session.mount("https://", transport)
    session.mount("http://", transport)
    client = SageClient(API, "biz-1", _Tokens(), session=session, sleep=lambda _s: None)
    pages = client.iter_pages("/purchase_invoices", {"items_per_page": 200})
    first = next(pages)
    assert [item["id"] for item in first.items] == ["1"]
    with pytest.raises(InvalidResponse, match="refusing"):
        next(pages)
    assert transport.seen, "no request was sent"
    for url, auth in transport.seen:
        assert parse_url(url).host == "api.accounting.sage.com", url
        assert auth == "Bearer bearer-secret-token-value"
