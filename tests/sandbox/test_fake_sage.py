"""The fake Sage server over real HTTP: OAuth, the list contract, filters, faults and the seed.

One subprocess serves the whole module (start-up costs seconds); every test starts from
``admin.reset()`` so tests stay independent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from sandbox.fake_sage.server import DEFAULT_REDIRECT_URI, FakeSageServer, pkce_pair

REDIRECT = DEFAULT_REDIRECT_URI
MONEY_FIELDS = (
    "net_amount",
    "tax_amount",
    "total_amount",
    "outstanding_amount",
    "total_paid",
    "base_currency_net_amount",
    "base_currency_tax_amount",
    "base_currency_total_amount",
)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=42) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(server: FakeSageServer) -> None:
    server.admin.reset()


@pytest.fixture
def token(server: FakeSageServer) -> dict[str, Any]:
    return server.issue_tokens()


@pytest.fixture
def businesses(server: FakeSageServer) -> dict[str, str]:
    """business key -> id"""
    return {b["key"]: b["id"] for b in server.admin.businesses()}


def api(
    server: FakeSageServer, token: dict[str, Any], path: str, business: str | None = None, **params: Any
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token['access_token']}", "Accept": "application/json"}
    if business:
        headers["X-Business"] = business
    url = f"{server.api_url}{path}"
    if params:
        url += "?" + urlencode(params, safe=":,")
    return requests.get(url, headers=headers, timeout=30)


def post_token(server: FakeSageServer, **data: str) -> requests.Response:
    base = {"client_id": server.client_id, "client_secret": server.client_secret}
    return requests.post(server.token_url, data={**base, **data}, timeout=30)


def all_pages(
    server: FakeSageServer, token: dict[str, Any], path: str, business: str | None = None, **params: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follow $next to the end; returns (items, envelopes)."""
    envelopes: list[dict[str, Any]] = []
    url: str | None = f"{path}?{urlencode(params, safe=':,')}"
    items: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    if business:
        headers["X-Business"] = business
    while url:
        body = requests.get(f"{server.api_url}{url}", headers=headers, timeout=30).json()
        envelopes.append(body)
        items += body["$items"]
        url = body["$next"]
    return items, envelopes


# ------------------------------------------------------------------------------------------- OAuth


def test_code_flow_with_pkce_echoes_state(server: FakeSageServer) -> None:
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": server.client_id,
        "redirect_uri": REDIRECT,
        "state": "xyz 123",
        "scope": "readonly",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    response = requests.get(f"{server.authorize_url}&{urlencode(params)}", allow_redirects=False, timeout=10)
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["xyz 123"] and query["country"] == ["GB"]
    code = query["code"][0]

    assert (
        post_token(
            server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier="wrong"
        ).json()["error"]
        == "invalid_grant"
    )
    code = server.authorize(code_challenge=challenge)
    body = post_token(
        server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier
    ).json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["refresh_token_expires_in"] == 2678400
    assert len(body["access_token"]) > 1000 and len(body["refresh_token"]) > 1000
    assert body["requested_by_id"] == server.admin.users()[0]["id"]


def test_code_is_single_use_short_lived_and_bound_to_redirect(server: FakeSageServer) -> None:
    code = server.authorize()
    assert (
        post_token(server, grant_type="authorization_code", code=code, redirect_uri="http://elsewhere/cb").json()[
            "error"
        ]
        == "invalid_grant"
    )
    code = server.authorize()
    first = post_token(server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert first.status_code == 200
    again = post_token(server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    code = server.authorize()
    server.admin.advance_clock(61)
    late = post_token(server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert late.json()["error"] == "invalid_grant"


def test_bad_client_is_401_invalid_client(server: FakeSageServer) -> None:
    code = server.authorize()
    response = post_token(
        server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, client_secret="nope"
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_refresh_rotates_and_old_token_dies(server: FakeSageServer, token: dict[str, Any]) -> None:
    new = post_token(server, grant_type="refresh_token", refresh_token=token["refresh_token"]).json()
    assert new["refresh_token"] != token["refresh_token"] and new["access_token"] != token["access_token"]
    old = post_token(server, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert old.status_code == 400
    assert old.json()["error"] == "invalid_grant" and old.json()["error_description"]
    assert api(server, new, "/businesses").status_code == 200
    newer = post_token(server, grant_type="refresh_token", refresh_token=new["refresh_token"])
    assert newer.status_code == 200


def test_refresh_token_expires_after_31_days(server: FakeSageServer, token: dict[str, Any]) -> None:
    server.admin.advance_clock(2678400)
    response = post_token(server, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert response.json()["error"] == "invalid_grant"


def test_revoke_kills_grant(server: FakeSageServer, token: dict[str, Any]) -> None:
    response = requests.post(
        server.revoke_url,
        data={"client_id": server.client_id, "client_secret": server.client_secret, "token": token["refresh_token"]},
        timeout=10,
    )
    assert response.json() == {"success": "ok"}
    assert (
        post_token(server, grant_type="refresh_token", refresh_token=token["refresh_token"]).json()["error"]
        == "invalid_grant"
    )
    assert api(server, token, "/businesses").status_code == 401


def test_access_token_expiry_gives_401_error_array(server: FakeSageServer, token: dict[str, Any]) -> None:
    assert api(server, token, "/financial_settings").status_code == 200
    server.admin.advance_clock(301)
    response = api(server, token, "/financial_settings")
    assert response.status_code == 401
    error = response.json()[0]
    assert set(error) == {"$severity", "$dataCode", "$message", "$source"}
    missing = requests.get(f"{server.api_url}/contacts", timeout=10)
    assert missing.status_code == 401 and isinstance(missing.json(), list)
    refreshed = post_token(server, grant_type="refresh_token", refresh_token=token["refresh_token"]).json()
    assert api(server, refreshed, "/financial_settings").status_code == 200


def test_admin_token_controls(server: FakeSageServer, token: dict[str, Any]) -> None:
    server.admin.expire_access_tokens()
    assert api(server, token, "/contacts").status_code == 401
    server.admin.set_token_ttl(30)
    fresh = post_token(server, grant_type="refresh_token", refresh_token=token["refresh_token"]).json()
    assert fresh["expires_in"] == 30
    assert server.admin.revoke_grants("demo@example.com") == 1
    assert api(server, fresh, "/contacts").status_code == 401


# -------------------------------------------------------------------------------------- businesses


def test_businesses_and_x_business(server: FakeSageServer, token: dict[str, Any], businesses: dict[str, str]) -> None:
    listing = api(server, token, "/businesses").json()
    assert listing["$items_per_page"] == 2147483647 and listing["$next"] is None
    assert [b["displayed_as"] for b in listing["$items"]] == [
        "Greenleaf Bakery Ltd",
        "Northwind Joinery Ltd",
        "Atlantic Trading Ltd",
    ]
    assert set(listing["$items"][0]) == {"id", "displayed_as", "$path"}

    lead = api(server, token, "/financial_settings")
    assert lead.headers["X-Business"] == businesses["greenleaf"]
    northwind = api(server, token, "/financial_settings", businesses["northwind"]).json()
    assert northwind["multi_currency_enabled"] is True
    atlantic = api(server, token, "/financial_settings", businesses["atlantic"]).json()
    assert atlantic["base_currency"]["id"] == "EUR"

    foreign = api(server, token, "/contacts", businesses["harbour"])
    assert foreign.status_code == 403 and foreign.json()[0]["$severity"] == "error"
    other = server.issue_tokens(login_hint="other@example.com")
    mine = api(server, other, "/businesses").json()["$items"]
    assert [b["id"] for b in mine] == [businesses["harbour"]]
    assert api(server, other, "/contacts", businesses["greenleaf"]).status_code == 403


# ----------------------------------------------------------------------------------------- listing


def test_envelope_and_next_chain(server: FakeSageServer, token: dict[str, Any]) -> None:
    params = {"items_per_page": 50, "attributes": "all", "sort": "updated_at:asc"}
    items, envelopes = all_pages(server, token, "/purchase_invoices", **params)
    first = envelopes[0]
    assert set(first) == {"$total", "$page", "$next", "$back", "$itemsPerPage", "$items"}
    assert first["$back"] is None and first["$itemsPerPage"] == 50
    assert first["$next"] == "/purchase_invoices?page=2&items_per_page=50&attributes=all&sort=updated_at:asc"
    assert envelopes[1]["$back"] == first["$next"].replace("page=2", "page=1")
    assert envelopes[-1]["$next"] is None
    assert len(items) == first["$total"] == len({i["id"] for i in items}) > 200
    stamps = [i["updated_at"] for i in items]
    assert stamps == sorted(stamps)
    assert all(i["deleted_at"] is None for i in items)


def test_page_past_end_returns_last_page(server: FakeSageServer, token: dict[str, Any]) -> None:
    first = api(server, token, "/contacts", items_per_page=10).json()
    last_page = -(-first["$total"] // 10)
    past = api(server, token, "/contacts", items_per_page=10, page=99).json()
    last = api(server, token, "/contacts", items_per_page=10, page=last_page).json()
    assert past["$page"] == last_page and past["$next"] is None
    assert past["$items"] == last["$items"] and past["$back"] == last["$back"]


def test_items_per_page_default_and_clamp(server: FakeSageServer, token: dict[str, Any]) -> None:
    assert api(server, token, "/purchase_invoices").json()["$itemsPerPage"] == 20
    assert api(server, token, "/purchase_invoices", items_per_page=500).json()["$itemsPerPage"] == 200


def test_attributes_default_list_and_all(server: FakeSageServer, token: dict[str, Any]) -> None:
    bare = api(server, token, "/purchase_invoices").json()["$items"][0]
    assert set(bare) == {"id", "displayed_as", "$path"}
    assert bare["$path"] == f"/purchase_invoices/{bare['id']}"
    some = api(server, token, "/purchase_invoices", attributes="date,total_amount").json()["$items"][0]
    assert set(some) == {"id", "displayed_as", "$path", "date", "total_amount"}
    full = api(server, token, "/purchase_invoices", attributes="all").json()["$items"][0]
    assert full["invoice_lines"] and full["transaction_type"]["id"] == "PURCHASE_INVOICE"
    one = api(server, token, f"/purchase_invoices/{bare['id']}").json()
    assert one == full


def test_unknown_id_and_path_are_404_arrays(server: FakeSageServer, token: dict[str, Any]) -> None:
    for path in ("/purchase_invoices/" + "0" * 32, "/no_such_endpoint"):
        response = api(server, token, path)
        assert response.status_code == 404 and response.json()[0]["$severity"] == "error"
        assert response.headers["x_request_id"]


def test_updated_or_created_since_is_inclusive(server: FakeSageServer, businesses: dict[str, str]) -> None:
    greenleaf = businesses["greenleaf"]
    invoice = server.admin.records(greenleaf, "purchase_invoices")[5]
    server.admin.advance_clock(3600)
    token = server.issue_tokens()
    changed = server.admin.update(greenleaf, "purchase_invoices", invoice["id"], {"notes": "edited"})
    assert changed["updated_at"] == server.admin.now() and changed["updated_at"] > invoice["updated_at"]
    since = changed["updated_at"]
    hits = api(server, token, "/purchase_invoices", updated_or_created_since=since).json()["$items"]
    assert [h["id"] for h in hits] == [invoice["id"]]
    after = (datetime.fromisoformat(since) + timedelta(seconds=1)).isoformat()  # "+00:00" offset form
    later = api(server, token, "/purchase_invoices", updated_or_created_since=after).json()
    assert later["$total"] == 0
    by_date = api(server, token, "/purchase_invoices", updated_or_created_since=since[:10]).json()
    assert by_date["$total"] >= 1


def test_deleted_since_is_exclusive_and_hides_from_lists(server: FakeSageServer, businesses: dict[str, str]) -> None:
    greenleaf = businesses["greenleaf"]
    server.admin.set_clock("2026-12-01T00:00:00Z")
    token = server.issue_tokens()
    victim = server.admin.records(greenleaf, "other_payments")[0]
    deleted = server.admin.delete(greenleaf, "other_payments", victim["id"])
    assert deleted["deleted_at"] == "2026-12-01T00:00:00Z"
    exact = api(server, token, "/other_payments", deleted_since="2026-12-01T00:00:00Z").json()
    assert exact["$total"] == 0
    before = api(server, token, "/other_payments", deleted_since="2026-11-30T23:59:59Z").json()
    assert [i["id"] for i in before["$items"]] == [victim["id"]]
    assert set(before["$items"][0]) >= {"id", "displayed_as", "$path", "deleted_at"}
    seeded = api(server, token, "/other_payments", deleted_since="2020-01-01").json()
    assert seeded["$total"] >= 1
    live, _ = all_pages(server, token, "/other_payments", items_per_page=200)
    assert victim["id"] not in {i["id"] for i in live}
    assert api(server, token, f"/other_payments/{victim['id']}").status_code == 404


def test_from_and_to_date_filter_document_date(server: FakeSageServer, token: dict[str, Any]) -> None:
    items, _ = all_pages(
        server,
        token,
        "/purchase_invoices",
        from_date="2025-01-01",
        to_date="2025-03-31",
        attributes="date",
        items_per_page=200,
    )
    assert items and all("2025-01-01" <= i["date"] <= "2025-03-31" for i in items)
    day = items[0]["date"]
    edge = api(server, token, "/purchase_invoices", from_date=day, to_date=day, attributes="date").json()
    assert edge["$total"] >= 1 and all(i["date"] == day for i in edge["$items"])


def test_sort_and_type_filters(server: FakeSageServer, token: dict[str, Any]) -> None:
    desc = api(server, token, "/purchase_credit_notes", sort="date:desc", attributes="date").json()["$items"]
    assert [i["date"] for i in desc] == sorted((i["date"] for i in desc), reverse=True)
    vendors, _ = all_pages(server, token, "/contacts", contact_type_id="VENDOR", attributes="contact_types")
    assert vendors and all(i["contact_types"][0]["id"] == "VENDOR" for i in vendors)
    receipts = api(
        server, token, "/other_payments", transaction_type_id="OTHER_RECEIPT", attributes="transaction_type"
    ).json()
    assert receipts["$total"] > 0
    assert all(i["transaction_type"]["id"] == "OTHER_RECEIPT" for i in receipts["$items"])


# -------------------------------------------------------------------------------------------- data


def test_money_is_strings_and_amounts_add_up(
    server: FakeSageServer, token: dict[str, Any], businesses: dict[str, str]
) -> None:
    items, _ = all_pages(
        server, token, "/purchase_invoices", businesses["northwind"], attributes="all", items_per_page=200
    )
    foreign = [i for i in items if i["currency"]["id"] != "GBP"]
    assert {"EUR", "USD"} <= {i["currency"]["id"] for i in foreign}
    for invoice in items:
        for name in MONEY_FIELDS:
            assert isinstance(invoice[name], str), name
        lines = invoice["invoice_lines"]
        assert 1 <= len(lines) <= 4
        for line in lines:
            assert Decimal(line["net_amount"]) + Decimal(line["tax_amount"]) == Decimal(line["total_amount"])
        for name in ("net_amount", "tax_amount", "total_amount", "base_currency_total_amount"):
            assert sum(Decimal(line[name]) for line in lines) == Decimal(invoice[name])
    sample = foreign[0]
    assert Decimal(sample["exchange_rate"]) != 1
    assert sample["base_currency_total_amount"] != sample["total_amount"]
    statuses = {i["status"]["id"] for i in items}
    assert {"PAID", "DRAFT", "VOID"} <= statuses
    assert all(i["void_reason"] for i in items if i["status"]["id"] == "VOID")
    quick = api(
        server, token, "/purchase_quick_entries", attributes="quick_entry_type,total_amount", items_per_page=200
    ).json()["$items"]
    assert {q["quick_entry_type"]["id"] for q in quick} == {"INVOICE", "CREDIT_NOTE"}
    accounts, _ = all_pages(server, token, "/ledger_accounts", attributes="nominal_code,ledger_account_type")
    codes = {a["nominal_code"]: a["ledger_account_type"]["id"] for a in accounts}
    assert codes[7100] == "OVERHEADS" and codes[5000] == "DIRECT_EXPENSES" and codes[1200] == "BANK"
    rates = {r["id"] for r in api(server, token, "/tax_rates").json()["$items"]}
    assert rates == {"GB_STANDARD", "GB_LOWER", "GB_ZERO", "GB_EXEMPT", "GB_NO_TAX"}


def test_timestamps_are_plausible(server: FakeSageServer, businesses: dict[str, str]) -> None:
    now = server.admin.now()
    for record in server.admin.records(businesses["greenleaf"], "purchase_invoices", include_deleted=True):
        assert record["date"] <= record["created_at"][:10]
        assert record["created_at"] <= record["updated_at"] <= now
        assert record["deleted_at"] is None or record["deleted_at"] <= now


def test_seed_is_deterministic(server: FakeSageServer, businesses: dict[str, str]) -> None:
    greenleaf = businesses["greenleaf"]
    before = server.admin.records(greenleaf, "purchase_invoices", include_deleted=True)
    server.admin.reset(seed=42)
    assert server.admin.records(greenleaf, "purchase_invoices", include_deleted=True) == before
    server.admin.reset(seed=7)
    assert greenleaf not in {b["id"] for b in server.admin.businesses()}
    server.admin.reset(seed=42)


def test_admin_create_update_void(server: FakeSageServer, token: dict[str, Any], businesses: dict[str, str]) -> None:
    greenleaf = businesses["greenleaf"]
    vendor = server.admin.records(greenleaf, "contacts")[0]
    rent = next(a for a in server.admin.records(greenleaf, "ledger_accounts") if a["nominal_code"] == 7100)
    created = server.admin.create(
        greenleaf,
        "purchase_invoices",
        {
            "contact_id": vendor["id"],
            "date": "2026-11-20",
            "vendor_reference": "X-1",
            "invoice_lines": [
                {"ledger_account_id": rent["id"], "tax_rate_id": "GB_STANDARD", "quantity": "2", "unit_price": "50.00"}
            ],
        },
    )
    assert created["created_at"] == created["updated_at"] == server.admin.now()
    amounts = (created["net_amount"], created["tax_amount"], created["total_amount"])
    assert amounts == ("100.00", "20.00", "120.00")
    assert created["invoice_lines"][0]["id"] and created["contact_name"] == vendor["name"]
    fetched = api(server, token, f"/purchase_invoices/{created['id']}").json()
    assert fetched == created
    server.admin.advance_clock(10)
    voided = server.admin.void(greenleaf, "purchase_invoices", created["id"], "Duplicate")
    assert voided["status"]["id"] == "VOID" and voided["void_reason"] == "Duplicate"
    assert voided["updated_at"] > created["updated_at"] and voided["outstanding_amount"] == "0.00"


# ------------------------------------------------------------------------------------------ faults


@pytest.mark.parametrize("retry_after", [None, 7])
def test_fault_429(server: FakeSageServer, token: dict[str, Any], retry_after: int | None) -> None:
    server.admin.add_fault("429", path="/contacts", retry_after=retry_after)
    assert api(server, token, "/tax_rates").status_code == 200  # path does not match
    throttled = api(server, token, "/contacts")
    assert throttled.status_code == 429 and throttled.json()[0]["$severity"] == "error"
    assert throttled.headers.get("Retry-After") == (None if retry_after is None else str(retry_after))
    assert api(server, token, "/contacts").status_code == 200


@pytest.mark.parametrize("kind", ["500", "503"])
def test_fault_server_errors_with_count(server: FakeSageServer, token: dict[str, Any], kind: str) -> None:
    server.admin.add_fault(kind, count=2)
    assert [api(server, token, "/contacts").status_code for _ in range(3)] == [int(kind), int(kind), 200]


def test_fault_for_one_business_spares_the_others(server: FakeSageServer, token: dict[str, Any]) -> None:
    # Sage's paths do not name the business (X-Business does), so a fault can be aimed at one.
    server.admin.add_fault("429", path="/contacts", business="some-other-business")
    assert api(server, token, "/contacts").status_code == 200  # the token's default business
    assert api(server, token, "/contacts", business="some-other-business").status_code == 429
    assert server.admin.faults() == []


def test_fault_slow_does_not_block_admin(server: FakeSageServer, token: dict[str, Any]) -> None:
    server.admin.add_fault("slow", path="/purchase_invoices", delay_ms=1500)
    result: dict[str, Any] = {}

    def slow_call() -> None:
        began = time.monotonic()
        result["status"] = api(server, token, "/purchase_invoices").status_code
        result["took"] = time.monotonic() - began

    thread = threading.Thread(target=slow_call)
    thread.start()
    time.sleep(0.2)
    began = time.monotonic()
    server.admin.now()
    assert time.monotonic() - began < 0.5
    thread.join()
    assert result["status"] == 200 and result["took"] >= 1.4


def test_fault_hold_waits_until_released(server: FakeSageServer, token: dict[str, Any]) -> None:
    server.admin.add_fault("hold", path="/purchase_invoices", delay_ms=60_000)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(status=api(server, token, "/purchase_invoices").status_code))
    thread.start()
    thread.join(1.0)
    assert thread.is_alive() and not result  # held: no answer yet
    assert api(server, token, "/purchase_invoices").status_code == 200  # the hold took only one request
    server.admin.release_held()
    thread.join(5.0)
    assert result == {"status": 200}


def test_fault_drop_breaks_the_connection(server: FakeSageServer, token: dict[str, Any]) -> None:
    server.admin.add_fault("drop", path="/ledger_accounts")
    with pytest.raises(requests.exceptions.ConnectionError):
        api(server, token, "/ledger_accounts")
    assert api(server, token, "/ledger_accounts").status_code == 200


def test_fault_lose_acts_then_drops_the_answer(server: FakeSageServer, token: dict[str, Any]) -> None:
    # A refresh whose answer is lost still rotated the grant: the old refresh token is dead.
    server.admin.add_fault("lose", path="/token")
    with pytest.raises(requests.exceptions.ConnectionError):
        post_token(server, grant_type="refresh_token", refresh_token=token["refresh_token"])
    again = post_token(server, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_fault_truncate_cuts_the_json(server: FakeSageServer, token: dict[str, Any]) -> None:
    server.admin.add_fault("truncate", path="/purchase_invoices")
    response = api(server, token, "/purchase_invoices", attributes="all")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert api(server, token, "/purchase_invoices").json()["$total"] > 0


def test_request_log_and_request_id(server: FakeSageServer, token: dict[str, Any], businesses: dict[str, str]) -> None:
    server.admin.clear_request_log()
    before = time.time()
    response = api(server, token, "/contacts", businesses["northwind"], page=2)
    after = time.time()
    assert len(response.headers["x_request_id"]) >= 16
    log = server.admin.request_log()
    assert before <= log[0].pop("started") <= after
    assert log == [
        {
            "method": "GET",
            "path": "/v3.1/contacts",
            "query": "page=2",
            "x_business": businesses["northwind"],
            "status": 200,
        }
    ]


def test_airflow_connection_json(server: FakeSageServer) -> None:
    conn = json.loads(server.airflow_conn_json("http://localhost:8080/cb"))
    assert conn["host"] == server.api_url and conn["login"] == "demo-client"
    assert conn["extra"]["authorize_url"].endswith("/oauth2/auth/central?filter=apiv3.1")
    assert conn["extra"]["redirect_uri"] == "http://localhost:8080/cb"


def test_date_header_is_the_fake_clock(server: FakeSageServer, token: dict[str, Any]) -> None:
    # Sage's `Date` and its records' timestamps come from one clock; so do the fake's.
    server.admin.advance_clock(3600)
    response = api(server, token, "/contacts")
    assert parsedate_to_datetime(response.headers["Date"]) == datetime.fromisoformat(server.admin.now())
    assert "," not in response.headers["Date"].split(",", 1)[1]  # one Date header, not the host's as well


def test_fault_short_total_reports_one_page_less(server: FakeSageServer, token: dict[str, Any]) -> None:
    truth = api(server, token, "/purchase_invoices", items_per_page=50).json()
    server.admin.add_fault("short_total", path="/purchase_invoices")
    lying = api(server, token, "/purchase_invoices", items_per_page=50).json()
    assert lying["$total"] == truth["$total"] - 50
    assert lying["$items"] == truth["$items"] and lying["$next"] == truth["$next"]


def test_fault_next_back_points_one_page_back(server: FakeSageServer, token: dict[str, Any]) -> None:
    server.admin.add_fault("next_back", path="/purchase_invoices")
    body = api(server, token, "/purchase_invoices", items_per_page=50, page=3).json()
    assert body["$page"] == 3
    assert body["$next"] == "/purchase_invoices?page=2&items_per_page=50"


def test_fault_endless_ignores_page_and_never_ends(server: FakeSageServer, token: dict[str, Any]) -> None:
    first = api(server, token, "/contacts", items_per_page=5).json()
    server.admin.add_fault("endless", path="/contacts", count=2)
    for page in (7, 99):
        body = api(server, token, "/contacts", items_per_page=5, page=page).json()
        assert "$total" not in body and "$page" not in body
        assert body["$items"] == first["$items"]  # `page` ignored
        assert body["$next"] == f"/contacts?page={page + 1}&items_per_page=5"
    assert api(server, token, "/contacts", items_per_page=5, page=99).json()["$next"] is None  # fault used up
