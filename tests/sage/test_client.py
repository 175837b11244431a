"""SageClient: pure helpers, guards against a misbehaving server, then real HTTP to the fake Sage."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from sage_sync.core.config import SageSettings
from sage_sync.core.errors import (
    BusinessMismatch,
    IncompleteListing,
    InvalidResponse,
    PageLimitExceeded,
    RateLimited,
    ReauthorizationRequired,
    SageAPIError,
    SubscriptionInactive,
    TransientError,
)
from sage_sync.sage.auth import OAuthClient, TokenManager
from sage_sync.sage.client import SageClient, join_url, page_cap, parse_retry_after
from sage_sync.sage.money import to_decimal
from sage_sync.sage.streams import STREAMS, deleted_params, list_params
from sage_sync.sage.tokens import MemoryTokenStore
from sandbox.fake_sage.server import FakeSageServer

API = "https://api.accounting.sage.com/v3.1"
BUSINESS = "0d40342d0287cd6b13555c54afca6c90"


# -- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/purchase_invoices", f"{API}/purchase_invoices"),
        ("purchase_invoices", f"{API}/purchase_invoices"),
        (
            "/purchase_invoices?page=2&items_per_page=25&attributes=all",
            f"{API}/purchase_invoices?page=2&items_per_page=25&attributes=all",
        ),
        ("/v3.1/contacts?page=3", f"{API}/contacts?page=3"),
        (f"{API}/contacts?page=2", f"{API}/contacts?page=2"),
    ],
)
def test_join_url(path: str, expected: str) -> None:
    assert join_url(API, path) == expected
    assert join_url(API + "/", path) == expected


def test_join_url_with_a_base_without_path() -> None:
    assert join_url("http://127.0.0.1:9000", "/contacts?page=2") == "http://127.0.0.1:9000/contacts?page=2"


@pytest.mark.parametrize("url", ["https://evil.example/v3.1/contacts", "https://api.accounting.sage.com/v3.10/x"])
def test_join_url_refuses_other_hosts_and_bases(url: str) -> None:
    with pytest.raises(ValueError, match="outside the Sage API base"):
        join_url(API, url)


def test_parse_retry_after_seconds_and_dates() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after("2.5", now) == 2.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("-5", now) == 0.0
    for junk in (None, "", "soon", "nan"):
        assert parse_retry_after(junk, now) is None


# -- a scripted transport, for what the fake server cannot be asked to do -----------------------


class ScriptedAdapter(BaseAdapter):
    """Answers each request with the next scripted (status, headers, body) and records it."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]]) -> None:
        super().__init__()
        self.script = list(script)
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        status, headers, body = self.script.pop(0)
        response = requests.Response()
        response.status_code = status
        response.headers = CaseInsensitiveDict(headers)
        response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


class StaticTokens:
    """A TokenManager stand-in: hands out numbered tokens, counts refreshes."""

    def __init__(self) -> None:
        self.token = "tok-0"
        self.refreshes: list[str | None] = []

    def access_token(self) -> str:
        return self.token

    def refresh(self, rejected_token: str | None = None) -> str:
        self.refreshes.append(rejected_token)
        self.token = f"tok-{len(self.refreshes)}"
        return self.token


Script = list[tuple[int, dict[str, str], Any]]


def _scripted(script: Script, **kwargs: Any) -> tuple[SageClient, ScriptedAdapter]:
    adapter = ScriptedAdapter(script)
    session = requests.Session()
    session.mount("https://", adapter)
    client = SageClient(API, BUSINESS, StaticTokens(), session=session, sleep=lambda s: None, **kwargs)
    return client, adapter


def _envelope(page: int, per_page: int, total: int, next_link: str | None, n: int | None = None) -> dict:
    count = per_page if n is None else n
    return {
        "$total": total,
        "$page": page,
        "$next": next_link,
        "$back": None,
        "$itemsPerPage": per_page,
        "$items": [{"id": f"p{page}-{i}"} for i in range(count)],
    }


def test_a_page_that_does_not_advance_is_an_incomplete_listing_not_the_end() -> None:
    # Sage answers a page past the end with the last page again (a deletion shifted the pages):
    # the page after page 2 never came, so the listing is incomplete, not finished.
    client, adapter = _scripted(
        [
            (200, {}, _envelope(1, 2, 99, "/contacts?page=2&items_per_page=2")),
            (200, {}, _envelope(2, 2, 99, "/contacts?page=3&items_per_page=2")),
            (200, {}, _envelope(2, 2, 99, None)),
        ]
    )
    pages = client.iter_pages("/contacts", {"items_per_page": 2})
    assert [p.page for p in (next(pages), next(pages))] == [1, 2]
    with pytest.raises(IncompleteListing, match="page 2 again after page 2"):
        next(pages)
    assert len(adapter.requests) == 3


def test_a_next_that_repeats_the_page_just_fetched_is_an_incomplete_listing() -> None:
    client, adapter = _scripted([(200, {}, _envelope(1, 2, 99, "/contacts?items_per_page=2&page=1"))])
    with pytest.raises(IncompleteListing, match="repeats the page just fetched"):
        list(client.iter_pages("/contacts", {"page": 1, "items_per_page": 2}))
    assert len(adapter.requests) == 1


def test_a_next_that_goes_back_is_an_incomplete_listing() -> None:
    client, adapter = _scripted(
        [
            (200, {}, _envelope(1, 2, 6, "/contacts?page=2&items_per_page=2")),
            (200, {}, _envelope(2, 2, 6, "/contacts?page=1&items_per_page=2")),
        ]
    )
    with pytest.raises(IncompleteListing, match="goes back to page 1"):
        list(client.iter_pages("/contacts", {"items_per_page": 2}))
    assert len(adapter.requests) == 2


def test_an_empty_page_that_is_not_the_last_is_an_incomplete_listing() -> None:
    client, _ = _scripted([(200, {}, _envelope(1, 2, 6, "/contacts?page=2&items_per_page=2", n=0))])
    with pytest.raises(IncompleteListing, match="empty page"):
        list(client.iter_pages("/contacts", {"items_per_page": 2}))


def test_a_total_too_small_does_not_end_paging_before_next_is_null() -> None:
    # $total says 3, Sage goes on: only a null $next ends a listing (400 of 600 read was reported
    # as success while $total could stop it).
    client, adapter = _scripted(
        [
            (200, {}, _envelope(1, 2, 3, "/contacts?page=2&items_per_page=2")),
            (200, {}, _envelope(2, 2, 3, "/contacts?page=3&items_per_page=2")),
            (200, {}, _envelope(3, 2, 3, None, n=1)),
        ]
    )
    assert [len(p.items) for p in client.iter_pages("/contacts", {"items_per_page": 2})] == [2, 2, 1]
    assert len(adapter.requests) == 3


def test_paging_far_past_what_total_allows_ends_at_a_cap_from_total() -> None:
    endless = [(200, {}, _envelope(n, 2, 4, f"/contacts?page={n + 1}&items_per_page=2")) for n in range(1, 50)]
    client, adapter = _scripted(endless)
    with pytest.raises(PageLimitExceeded, match=r"\$total of 4") as info:
        list(client.iter_pages("/contacts", {"items_per_page": 2}))
    assert len(adapter.requests) == info.value.pages == page_cap(4, 2) < 10
    assert "/v3.1/contacts" in str(info.value)


def test_paging_without_total_ends_at_the_hard_cap() -> None:
    bodies = [{"$next": f"/contacts?page={n + 1}", "$items": [{"id": "a"}]} for n in range(1, 31)]
    client, adapter = _scripted([(200, {}, body) for body in bodies], max_pages=7)
    with pytest.raises(PageLimitExceeded, match="no \\$total") as info:
        list(client.iter_pages("/contacts"))
    assert len(adapter.requests) == info.value.pages == 7


def test_a_page_carries_the_servers_date() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = _envelope(1, 2, 2, None)
    client, _ = _scripted([(200, {"Date": format_datetime(when, usegmt=True)}, body), (200, {}, body)])
    assert client.get_page("/contacts").server_time == when
    assert client.get_page("/contacts").server_time is None  # no Date header: unknown, not "now"


def test_next_is_followed_without_re_adding_params() -> None:
    client, adapter = _scripted(
        [
            (200, {}, _envelope(1, 2, 4, "/contacts?page=2&items_per_page=2&attributes=all")),
            (200, {}, _envelope(2, 2, 4, None)),
        ]
    )
    list(client.iter_pages("/contacts", {"items_per_page": 2, "attributes": "all"}))
    assert adapter.requests[1].url == f"{API}/contacts?page=2&items_per_page=2&attributes=all"


def test_businesses_envelope_key_is_understood() -> None:
    body = {"$total": 1, "$page": 1, "$next": None, "$items_per_page": 2147483647}
    body["$items"] = [{"id": BUSINESS}]
    client, _ = _scripted([(200, {}, body)])
    (page,) = client.iter_pages("/businesses")
    assert page.items_per_page == 2147483647 and page.total == 1


def test_next_link_to_another_host_is_refused() -> None:
    client, _ = _scripted([(200, {}, _envelope(1, 2, 9, "https://evil.example/v3.1/contacts?page=2"))])
    pages = client.iter_pages("/contacts")
    next(pages)
    with pytest.raises(InvalidResponse, match="outside the Sage API base"):
        next(pages)


def test_a_list_without_items_is_an_invalid_response() -> None:
    client, _ = _scripted([(200, {}, {"id": "x"})])
    with pytest.raises(InvalidResponse, match=r"\$items"):
        list(client.iter_pages("/contacts"))


def test_answer_for_another_business_is_refused() -> None:
    client, _ = _scripted([(200, {"X-Business": "someone-else"}, {"base_currency": {"id": "GBP"}})])
    with pytest.raises(BusinessMismatch):
        client.get("/financial_settings")


def test_subscription_lapsed_is_not_refreshed() -> None:
    errors = [{"$dataCode": "AuthorizationFailure", "$message": "No active subscription. (MSE)"}]
    client, adapter = _scripted([(401, {}, errors)])
    with pytest.raises(SubscriptionInactive, match="No active subscription"):
        client.get("/contacts")
    assert client.tokens.refreshes == []  # type: ignore[attr-defined]
    assert len(adapter.requests) == 1


@pytest.mark.parametrize("status", [403, 404, 422])
def test_client_errors_are_raised_at_once_with_sage_detail(status: int) -> None:
    errors = [{"$severity": "error", "$dataCode": "MultiUserAccessDenied", "$message": "Not allowed"}]
    client, adapter = _scripted([(status, {"x_request_id": "req-1"}, errors)])
    with pytest.raises(SageAPIError) as info:
        client.get("/purchase_invoices")
    assert info.value.status == status and info.value.errors == errors and info.value.request_id == "req-1"
    assert "MultiUserAccessDenied: Not allowed" in str(info.value)
    assert "/v3.1/purchase_invoices" in str(info.value) and "req-1" in str(info.value)
    assert len(adapter.requests) == 1


def test_retry_after_is_honoured_and_capped() -> None:
    sleeps: list[float] = []
    client, _ = _scripted(
        [(429, {"Retry-After": "3"}, []), (503, {"Retry-After": "9999"}, []), (200, {}, {"ok": True})],
    )
    client._sleep = sleeps.append
    assert client.get("/contacts") == {"ok": True}
    assert sleeps == [3.0, 120.0]
    assert client.request_count == 3 and client.retry_count == 2


def test_exponential_backoff_without_retry_after() -> None:
    sleeps: list[float] = []
    client, _ = _scripted([(500, {}, [])] * 4 + [(200, {}, {})], backoff=1.0, max_backoff=5.0)
    client._sleep = sleeps.append
    client.get("/contacts")
    ceilings = [1.0, 2.0, 4.0, 5.0]  # doubling, capped at max_backoff; jitter takes up to half off
    assert len(sleeps) == 4
    assert all(c / 2 <= s <= c for c, s in zip(ceilings, sleeps, strict=True))


def test_throttling_has_a_larger_budget_than_faults() -> None:
    """Sage says to wait and repeat on 429: ten in a row slow a call down, they don't fail it."""
    client, adapter = _scripted([(429, {}, [])] * 10 + [(200, {}, {"ok": True})], max_attempts=3)
    assert client.get("/contacts") == {"ok": True}
    assert len(adapter.requests) == 11


def test_exhausted_retries_raise_typed_errors() -> None:
    client, adapter = _scripted([(429, {}, [])] * 3, max_attempts=3, max_throttled_attempts=3)
    with pytest.raises(RateLimited) as info:
        client.get("/contacts")
    assert info.value.attempts == 3 and len(adapter.requests) == 3
    client, _ = _scripted([(502, {}, [])] * 2, max_attempts=2)
    with pytest.raises(TransientError, match="HTTP 502"):
        client.get("/contacts")
    client, _ = _scripted([(200, {}, b'{"$items": [')] * 2, max_attempts=2)
    with pytest.raises(InvalidResponse, match="truncated"):
        client.get("/contacts")


def test_401s_after_a_refresh_are_retried_then_transient_scripted() -> None:
    # Was ..._needs_reauthorisation_scripted: a 401 on a just-refreshed token is not a dead grant.
    client, adapter = _scripted([(401, {}, [])] * 4)
    with pytest.raises(TransientError, match="refused freshly issued access tokens") as info:
        client.get("/contacts")
    assert not isinstance(info.value, ReauthorizationRequired)
    # A refresh, the same fresh token once more, then the token store asked again (bounded).
    assert client.tokens.refreshes == ["tok-0", "tok-1"]  # type: ignore[attr-defined]
    assert [r.headers["Authorization"] for r in adapter.requests] == [
        "Bearer tok-0",
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
    ]


# -- real HTTP against the fake Sage server ---------------------------------------------------

REDIRECT = "http://127.0.0.1:8080/callback"
AMOUNT_FIELDS = ("net_amount", "tax_amount", "total_amount", "base_currency_total_amount", "exchange_rate")


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=42) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(request: pytest.FixtureRequest) -> None:
    if "sage" in request.fixturenames:
        request.getfixturevalue("sage").admin.reset()


@dataclass
class Connected:
    sage: FakeSageServer
    business_id: str
    oauth: OAuthClient
    store: MemoryTokenStore
    manager: TokenManager
    client: SageClient
    sleeps: list[float]


def _connect(sage: FakeSageServer, **client_kwargs: Any) -> Connected:
    settings = SageSettings(
        api_url=sage.api_url,
        client_id=sage.client_id,
        client_secret=sage.client_secret,
        authorize_url=sage.authorize_url,
        token_url=sage.token_url,
        revoke_url=sage.revoke_url,
        redirect_uri=REDIRECT,
    )
    oauth = OAuthClient(settings, sleep=lambda s: None)
    store = MemoryTokenStore()
    store.save("co-1", oauth.exchange_code(sage.authorize(redirect_uri=REDIRECT)))
    manager = TokenManager("co-1", store, oauth)
    business_id = sage.admin.businesses()[0]["id"]
    sleeps: list[float] = []
    kwargs = {"sleep": sleeps.append, "backoff": 0.01, **client_kwargs}
    client = SageClient(sage.api_url, business_id, manager, **kwargs)
    return Connected(sage, business_id, oauth, store, manager, client, sleeps)


def _api_log(sage: FakeSageServer) -> list[dict[str, Any]]:
    return [e for e in sage.admin.request_log() if e["path"].startswith("/v3.1")]


def test_pagination_follows_next_until_null_with_x_business_every_time(sage: FakeSageServer) -> None:
    c = _connect(sage)
    stream = STREAMS["purchase_invoices"]
    expected = {r["id"] for r in sage.admin.records(c.business_id, stream.name)}
    sage.admin.clear_request_log()

    pages = list(c.client.iter_pages(stream.path, list_params(stream, page_size=20)))

    assert len(pages) == -(-len(expected) // 20) > 5
    assert [p.page for p in pages] == list(range(1, len(pages) + 1))
    assert pages[-1].next is None and all(p.next for p in pages[:-1])
    assert all(p.total == len(expected) and p.items_per_page == 20 and p.request_id for p in pages)
    seen = [item["id"] for p in pages for item in p.items]
    assert len(seen) == len(set(seen)) and set(seen) == expected
    log = _api_log(sage)
    assert len(log) == len(pages) == c.client.request_count
    assert {e["x_business"] for e in log} == {c.business_id}
    # $next carried the query: every page kept the filters and sort of the first request.
    assert all("attributes=all" in e["query"] and "sort=updated_at" in e["query"] for e in log)


def test_list_amounts_parse_as_decimals(sage: FakeSageServer) -> None:
    c = _connect(sage)
    stream = STREAMS["purchase_invoices"]
    items = list(c.client.iter_items(stream.path, list_params(stream)))
    for item in items:
        for name in AMOUNT_FIELDS:
            assert isinstance(to_decimal(item[name]), Decimal)
        lines = item[stream.line_field]  # type: ignore[index]
        assert sum(to_decimal(line["net_amount"]) for line in lines) == to_decimal(item["net_amount"])
        to_decimal(item.get("inverse_exchange_rate"))  # a JSON number here: must not raise


def test_singletons_and_reference_streams(sage: FakeSageServer) -> None:
    c = _connect(sage)
    business = c.client.get(STREAMS["businesses"].path_for(c.business_id))
    assert isinstance(business, dict) and business["id"] == c.business_id
    settings = c.client.get(STREAMS["financial_settings"].path_for(c.business_id))
    assert isinstance(settings, dict) and settings["base_currency"]["id"] == "GBP"
    vendors = list(c.client.iter_items("/contacts", list_params(STREAMS["contacts"], page_size=5)))
    assert vendors and all("VENDOR" in {t["id"] for t in v["contact_types"]} for v in vendors)
    businesses = list(c.client.iter_pages("/businesses"))
    assert len(businesses) == 1 and c.business_id in {b["id"] for b in businesses[0].items}


def test_deleted_since_lists_a_deleted_document(sage: FakeSageServer) -> None:
    c = _connect(sage)
    stream = STREAMS["purchase_invoices"]
    since = datetime.fromisoformat(sage.admin.now().replace("Z", "+00:00")) - timedelta(seconds=1)
    victim = sage.admin.records(c.business_id, stream.name)[0]["id"]
    sage.admin.advance_clock(5)
    sage.admin.delete(c.business_id, stream.name, victim)
    deleted = list(c.client.iter_items(stream.path, deleted_params(stream, since)))
    assert [d["id"] for d in deleted] == [victim]


def test_429_with_retry_after_is_retried_after_that_delay(sage: FakeSageServer) -> None:
    c = _connect(sage)
    sage.admin.add_fault("429", path="/contacts", count=2, retry_after=3)
    assert c.client.get("/contacts")["$items"]  # type: ignore[index]
    assert c.sleeps == [3.0, 3.0]
    assert c.client.request_count == 3


def test_429_without_retry_after_backs_off_exponentially(sage: FakeSageServer) -> None:
    c = _connect(sage, backoff=0.5)
    sage.admin.add_fault("429", path="/contacts", count=3)
    assert c.client.get("/contacts")["$items"]  # type: ignore[index]
    assert len(c.sleeps) == 3
    assert all(ceiling / 2 <= s <= ceiling for ceiling, s in zip((0.5, 1.0, 2.0), c.sleeps, strict=True))


@pytest.mark.parametrize("kind", ["500", "503"])
def test_5xx_is_retried(sage: FakeSageServer, kind: str) -> None:
    c = _connect(sage)
    sage.admin.add_fault(kind, count=2)
    assert c.client.get("/tax_rates")["$total"] == 5  # type: ignore[index]
    assert c.client.request_count == 3 and c.client.retry_count == 2


def test_truncated_body_is_retried(sage: FakeSageServer) -> None:
    c = _connect(sage)
    sage.admin.add_fault("truncate", path="/ledger_accounts")
    pages = list(c.client.iter_pages("/ledger_accounts", list_params(STREAMS["ledger_accounts"])))
    assert sum(len(p.items) for p in pages) == len(sage.admin.records(c.business_id, "ledger_accounts"))
    assert c.client.retry_count == 1


def test_dropped_connection_and_read_timeout_are_retried(sage: FakeSageServer) -> None:
    c = _connect(sage, timeout=(5, 0.5))
    sage.admin.add_fault("drop", path="/tax_rates")
    sage.admin.add_fault("slow", path="/tax_rates", delay_ms=2000)
    assert c.client.get("/tax_rates")["$total"] == 5  # type: ignore[index]
    assert c.client.retry_count == 2


def test_persistent_failures_end_in_typed_errors(sage: FakeSageServer) -> None:
    c = _connect(sage, max_attempts=3, max_throttled_attempts=3)
    sage.admin.add_fault("503", count=3)
    with pytest.raises(TransientError, match="HTTP 503") as info:
        c.client.get("/tax_rates")
    assert info.value.attempts == 3 and info.value.request_id
    sage.admin.add_fault("429", count=3)
    with pytest.raises(RateLimited):
        c.client.get("/tax_rates")
    sage.admin.add_fault("truncate", count=3)
    with pytest.raises(InvalidResponse):
        c.client.get("/tax_rates")


def test_a_misbehaving_servers_paging_ends_with_a_reason(sage: FakeSageServer) -> None:
    """Over HTTP: `$next` going back, and a server that ignores `page` and never ends."""
    c = _connect(sage, max_pages=25)
    params = list_params(STREAMS["purchase_invoices"], page_size=20)
    sage.admin.add_fault("next_back", path="/purchase_invoices", count=2)
    with pytest.raises(IncompleteListing, match="goes back"):
        list(c.client.iter_pages("/purchase_invoices", params))
    sage.admin.clear_faults()
    sage.admin.add_fault("endless", path="/purchase_invoices", count=1000)
    sage.admin.clear_request_log()
    with pytest.raises(PageLimitExceeded, match="25 pages"):
        list(c.client.iter_pages("/purchase_invoices", params))
    assert len(_api_log(sage)) == 25  # stopped, instead of 349 requests in 20 s and counting
    sage.admin.clear_faults()


def test_a_page_carries_sages_date(sage: FakeSageServer) -> None:
    c = _connect(sage)
    page = c.client.get_page("/tax_rates")
    assert page.server_time == datetime.fromisoformat(sage.admin.now())


def test_not_found_is_a_sage_api_error_at_once(sage: FakeSageServer) -> None:
    c = _connect(sage)
    with pytest.raises(SageAPIError) as info:
        c.client.get("/purchase_invoices/ffffffffffffffffffffffffffffffff")
    assert info.value.status == 404 and info.value.errors[0]["$dataCode"] == "RecordNotFound"
    assert "RecordNotFound" in str(info.value) and c.client.request_count == 1


def test_401_refreshes_exactly_once_then_succeeds(sage: FakeSageServer) -> None:
    c = _connect(sage)
    old = c.store.load("co-1")
    assert c.client.get("/tax_rates")
    sage.admin.expire_access_tokens()
    sage.admin.clear_request_log()
    assert c.client.get("/tax_rates")["$total"] == 5  # type: ignore[index]
    assert c.manager.refresh_count == 1
    log = sage.admin.request_log()
    assert [(e["path"], e["status"]) for e in log] == [
        ("/v3.1/tax_rates", 401),
        ("/token", 200),
        ("/v3.1/tax_rates", 200),
    ]
    new = c.store.load("co-1")
    assert new is not None and old is not None
    assert new.refresh_token != old.refresh_token and new.access_token != old.access_token


def test_a_401_right_after_a_refresh_is_retried_not_taken_for_a_refused_grant(sage: FakeSageServer) -> None:
    # Was test_second_401_after_refresh_needs_reauthorisation, which pinned the opposite: only
    # invalid_grant from the token endpoint says a grant is dead; a 401 on a token issued seconds
    # ago (a Sage node that has not seen it yet) is transient.
    c = _connect(sage)
    # The first 401 costs a refresh; the second falls on the token that refresh just issued.
    sage.admin.add_fault("401", path="/tax_rates", count=2)
    sage.admin.clear_request_log()
    assert c.client.get("/tax_rates")["$total"] == 5  # type: ignore[index]
    assert [(e["path"], e["status"]) for e in sage.admin.request_log()] == [
        ("/v3.1/tax_rates", 401),
        ("/token", 200),
        ("/v3.1/tax_rates", 401),
        ("/v3.1/tax_rates", 200),
    ]
    assert c.manager.refresh_count == 1  # the retry reused the fresh token: no second rotation


def test_401s_that_persist_after_refreshes_are_transient_and_bounded(sage: FakeSageServer) -> None:
    c = _connect(sage)
    sage.admin.set_token_ttl(0)  # every refreshed token is born expired
    sage.admin.expire_access_tokens()
    with pytest.raises(TransientError, match="refused freshly issued access tokens") as info:
        c.client.get("/tax_rates")
    assert not isinstance(info.value, ReauthorizationRequired)
    assert 1 < c.manager.refresh_count <= 3
    stored = c.store.load("co-1")
    assert stored is not None and sage.admin.token_state(stored.refresh_token) == "live"


def test_rotation_kills_the_old_refresh_token_and_the_store_keeps_the_new(sage: FakeSageServer) -> None:
    c = _connect(sage)
    old = c.store.load("co-1")
    assert old is not None
    sage.admin.expire_access_tokens()
    c.client.get("/tax_rates")
    new = c.store.load("co-1")
    assert new is not None and new.refresh_token != old.refresh_token
    with pytest.raises(ReauthorizationRequired, match="invalid_grant"):
        c.oauth.refresh(old.refresh_token)
    # The stored pair is the live one: it refreshes fine.
    assert c.manager.refresh(rejected_token=new.access_token) != new.access_token


def test_revoked_grant_needs_reauthorisation(sage: FakeSageServer) -> None:
    c = _connect(sage)
    sage.admin.revoke_grants()
    with pytest.raises(ReauthorizationRequired, match="invalid_grant"):
        c.client.get("/tax_rates")


def test_no_token_text_in_logs_or_errors(sage: FakeSageServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = _connect(sage)
    secrets = {c.store.load("co-1").access_token, c.store.load("co-1").refresh_token}  # type: ignore[union-attr]
    sage.admin.add_fault("429", count=1)
    c.client.get("/tax_rates")
    sage.admin.expire_access_tokens()
    c.client.get("/tax_rates")
    tokens = c.store.load("co-1")
    assert tokens is not None
    secrets |= {tokens.access_token, tokens.refresh_token}
    errors: list[BaseException] = []
    sage.admin.set_token_ttl(0)
    sage.admin.expire_access_tokens()
    with pytest.raises(TransientError) as second_401:
        c.client.get("/tax_rates")
    errors.append(second_401.value)
    tokens = c.store.load("co-1")
    secrets |= {tokens.access_token, tokens.refresh_token}  # type: ignore[union-attr]
    sage.admin.revoke_grants()
    with pytest.raises(ReauthorizationRequired) as revoked:
        c.client.get("/tax_rates")
    errors.append(revoked.value)
    sage.admin.set_token_ttl(300)
    fresh = _connect(sage)
    fresh_tokens = fresh.store.load("co-1")
    secrets |= {fresh_tokens.access_token, fresh_tokens.refresh_token}  # type: ignore[union-attr]
    with pytest.raises(SageAPIError) as missing:
        fresh.client.get("/contacts/nope")
    errors.append(missing.value)

    assert any(r.name.startswith("sage_sync") for r in caplog.records)
    text = "\n".join(r.getMessage() for r in caplog.records) + "\n".join(map(str, errors))
    text += "\n".join(repr(e) for e in errors) + repr(tokens)
    for secret in secrets | {sage.client_secret}:
        assert secret not in text


def test_a_client_without_a_business_sends_no_x_business_header() -> None:
    # Connecting lists the user's businesses before one is chosen: no header, not an empty one.
    adapter = ScriptedAdapter([(200, {}, {"$items": []}), (200, {}, {"$items": []})])
    session = requests.Session()
    session.mount("https://", adapter)
    SageClient(API, "", StaticTokens(), session=session, sleep=lambda s: None, check_business=False).get("/businesses")
    SageClient(API, BUSINESS, StaticTokens(), session=session, sleep=lambda s: None).get("/contacts")
    assert "X-Business" not in adapter.requests[0].headers
    assert adapter.requests[1].headers["X-Business"] == BUSINESS
