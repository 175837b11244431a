"""The fake Sage's consent page (``--consent screen``, what the demo runs): a real page a user answers.

Sage's authorise step is a page where a person signs in and allows (or denies) access; the
demo's fake used to consent at once as its first user, whose businesses the demo had connected
already, so nobody could walk a connect of a new business. Checked here over real HTTP: the page
offers the fake's users and Allow / Deny, and its answer is Sage's redirect contract (``code``,
``state``, ``country``; ``error=access_denied`` on Deny), the code issued to the chosen user.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from sandbox.fake_sage.server import DEFAULT_REDIRECT_URI, FakeSageServer, consent_redirect, pkce_pair


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=42, consent="screen", scale=0) as running:
        yield running


def _authorize_url(server: FakeSageServer, state: str, challenge: str) -> str:
    params = {
        "response_type": "code",
        "client_id": server.client_id,
        "redirect_uri": DEFAULT_REDIRECT_URI,
        "state": state,
        "scope": "full_access",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{server.authorize_url}&{urlencode(params)}"


def test_the_consent_page_waits_for_a_person(server: FakeSageServer) -> None:
    page = requests.get(_authorize_url(server, "s1", pkce_pair()[1]), allow_redirects=False, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="allow"' in page.text and 'id="deny"' in page.text
    logins = re.findall(r'name="login" value="([^"]+)"', page.text)
    assert logins == [u["login"] for u in server.admin.users()] and len(logins) >= 2
    assert "s1" in page.text  # the client's state travels in the form, unchanged


def test_allow_as_the_second_user_gives_a_code_for_that_users_businesses(server: FakeSageServer) -> None:
    verifier, challenge = pkce_pair()
    location = consent_redirect(_authorize_url(server, "s2", challenge), "other@example.com")
    back = parse_qs(urlsplit(location).query)
    assert location.startswith(DEFAULT_REDIRECT_URI) and back["state"] == ["s2"] and back["country"] == ["GB"]
    tokens = server.exchange(back["code"][0], code_verifier=verifier)
    listed = requests.get(
        f"{server.api_url}/businesses",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=30,
    ).json()
    names = [b["displayed_as"] for b in listed["$items"]]
    owned = [b["name"] for b in server.admin.businesses() if b["user"] == "other@example.com"]
    assert sorted(names) == sorted(owned) and "Harbour Cafe Ltd" in names


def test_deny_redirects_with_access_denied_and_no_code(server: FakeSageServer) -> None:
    location = consent_redirect(_authorize_url(server, "s3", pkce_pair()[1]), allow=False)
    back = parse_qs(urlsplit(location).query)
    assert back == {"error": ["access_denied"], "state": ["s3"]}


def test_an_unknown_client_gets_sages_error_not_the_page(server: FakeSageServer) -> None:
    url = _authorize_url(server, "s4", pkce_pair()[1]).replace(server.client_id, "someone-else")
    answer = requests.get(url, allow_redirects=False, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_client"
