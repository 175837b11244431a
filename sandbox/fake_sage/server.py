"""Run the fake Sage server as a real subprocess, and drive its ``/_admin`` surface over HTTP.

Why a subprocess and not an in-process app: the client under test must see real sockets (timeouts,
dropped connections, keep-alive) exactly as it would with Sage, and the server must not share the
test's event loop or interpreter state.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8080/callback"


class FakeSageAdminError(RuntimeError):
    """An ``/_admin`` call failed (the message carries status and body)."""


class FakeSageAdmin:
    """Python client for the fake server's ``/_admin`` endpoints (our extension, not Sage's)."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def _call(self, method: str, path: str, payload: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        response = self._session.request(
            method, f"{self.base_url}/_admin{path}", json=payload, params=params, timeout=self.timeout
        )
        if response.status_code >= 400:
            raise FakeSageAdminError(f"{method} /_admin{path} -> {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    # world ---------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``{"ok", "seed", "now"}``."""
        return self._call("GET", "/health")

    def users(self) -> list[dict[str, Any]]:
        """``[{id, login, first_name, last_name, business_ids}]``; the default user first."""
        return self._call("GET", "/users")

    def businesses(self) -> list[dict[str, Any]]:
        """``[{id, key, name, base_currency, user (login), user_id}]``."""
        return self._call("GET", "/businesses")

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Rebuild data, clock, tokens, faults and log (optionally with another seed)."""
        return self._call("POST", "/reset", {"seed": seed})

    # records -------------------------------------------------------------------------------------
    def create(self, business_id: str, stream: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Add a record; the server assigns id/created_at/updated_at and completes links and amounts.

        Links may be given as ``contact_id``/``ledger_account_id``/``tax_rate_id`` or ``{"id": ...}``.
        """
        return self._call("POST", f"/businesses/{business_id}/{stream}", dict(record))

    def update(self, business_id: str, stream: str, record_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` (bumps ``updated_at``; derived amounts are recomputed unless given)."""
        return self._call("PATCH", f"/businesses/{business_id}/{stream}/{record_id}", dict(changes))

    def delete(self, business_id: str, stream: str, record_id: str) -> dict[str, Any]:
        """Set ``deleted_at``; from then on only ``deleted_since`` lists the record."""
        return self._call("DELETE", f"/businesses/{business_id}/{stream}/{record_id}")

    def void(self, business_id: str, stream: str, record_id: str, reason: str) -> dict[str, Any]:
        """Status VOID with ``void_reason`` (purchase documents only)."""
        return self._call("POST", f"/businesses/{business_id}/{stream}/{record_id}/void", {"reason": reason})

    def records(self, business_id: str, stream: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Full records as ``attributes=all`` returns them, in creation order."""
        return self._call(
            "GET", f"/businesses/{business_id}/{stream}", params={"include_deleted": str(include_deleted).lower()}
        )

    # clock ---------------------------------------------------------------------------------------
    def now(self) -> str:
        """The fake clock, ISO UTC."""
        return self._call("GET", "/clock")["now"]

    def advance_clock(self, seconds: float) -> str:
        """Move the fake clock; returns the new now."""
        return self._call("POST", "/clock/advance", {"seconds": seconds})["now"]

    def set_clock(self, iso: str) -> str:
        """Jump the fake clock to an ISO instant."""
        return self._call("PUT", "/clock", {"now": iso})["now"]

    def run_clock(self, running: bool = True) -> str:
        """Let the fake clock follow the wall clock (tokens then really expire), or freeze it."""
        return self._call("PUT", "/clock/running", {"running": running})["now"]

    # faults --------------------------------------------------------------------------------------
    def add_fault(
        self,
        kind: str,
        path: str | None = None,
        count: int = 1,
        retry_after: int | None = None,
        delay_ms: int | None = None,
        business: str | None = None,
    ) -> dict[str, Any]:
        """Schedule a fault: "401" | "429" | "500" | "503" | "slow" | "hold" | "drop" | "lose" |
        "truncate", or a lying list envelope: "short_total" | "next_back" | "endless" (see
        ``state.ENVELOPE_FAULTS``).

        "drop" closes the connection before the request is handled; "lose" handles it (a refresh
        rotates the token at the fake) and closes the connection instead of answering.

        ``path`` is matched as a substring of the request path (None = any ``/v3.1`` path);
        ``count`` is how many matching requests it hits; ``retry_after`` adds ``Retry-After`` to a
        429; ``delay_ms`` is the "slow" delay, and the longest a "hold" waits for
        :meth:`release_held`; ``business`` limits it to one business's requests.
        """
        payload = {"kind": kind, "path": path, "count": count, "retry_after": retry_after, "delay_ms": delay_ms}
        return self._call("POST", "/faults", {**payload, "business": business})

    def faults(self) -> list[dict[str, Any]]:
        """Faults still pending."""
        return self._call("GET", "/faults")

    def release_held(self) -> None:
        """Let the requests a "hold" fault keeps waiting go on."""
        self._call("POST", "/faults/release")

    def clear_faults(self) -> None:
        """Drop all pending faults."""
        self._call("DELETE", "/faults")

    # tokens --------------------------------------------------------------------------------------
    def set_token_ttl(self, seconds: int) -> None:
        """``expires_in`` for access tokens issued from now on."""
        self._call("PUT", "/token_ttl", {"seconds": seconds})

    def expire_access_tokens(self) -> None:
        """Every current access token is expired now (refresh tokens still work)."""
        self._call("POST", "/expire_access_tokens")

    def token_state(self, refresh_token: str = "", *, fingerprint: str = "") -> str:
        """What a refresh token (or the token with this fingerprint) is at the fake, without spending
        it: live, spent, revoked, expired or unknown."""
        return self._call("POST", "/token_state", {"refresh_token": refresh_token, "fingerprint": fingerprint})["state"]

    def misbehave(self, *, foreign_business_as_lead: bool) -> None:
        """Answer an unreachable X-Business with the lead business, naming no business in any answer."""
        self._call("PUT", "/misbehave", {"foreign_business_as_lead": foreign_business_as_lead})

    def remove_access(self, user: str, business_id: str) -> list[str]:
        """The user (login or id) can no longer reach the business; returns the ids still reachable."""
        return self._call("DELETE", f"/users/{user}/businesses/{business_id}")["business_ids"]

    def revoke_grants(self, user: str | None = None) -> int:
        """Revoke all grants (of one user, by login or id); returns how many."""
        return self._call("POST", "/revoke_grants", {"user": user})["revoked"]

    # request log ---------------------------------------------------------------------------------
    def request_log(self) -> list[dict[str, Any]]:
        """Sage-facing requests seen: ``[{method, path, query, x_business, status, started[, fault]}]``
        (``started``: when it arrived, in epoch seconds)."""
        return self._call("GET", "/request_log")

    def clear_request_log(self) -> None:
        """Forget the request log."""
        self._call("DELETE", "/request_log")


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pkce_pair() -> tuple[str, str]:
    """A PKCE (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def consent_redirect(authorize_url: str, login: str | None = None, *, allow: bool = True) -> str:
    """What a user's browser does at the authorise URL: consent (as ``login``, else the page's
    choice) and return the redirect back to the client (the ``Location``).

    Works with either consent mode: an instant consent redirects at once; the consent page is
    answered with its form (every field it carries, the user, Allow or Deny), as a browser would.
    """
    response = requests.get(authorize_url, allow_redirects=False, timeout=30)
    if response.status_code == 200:
        fields = dict(re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', response.text))
        fields = {html.unescape(k): html.unescape(v) for k, v in fields.items()}
        chosen = re.search(r'name="login" value="([^"]*)" checked', response.text)
        fields["login"] = login or (html.unescape(chosen.group(1)) if chosen else "")
        fields["decision"] = "allow" if allow else "deny"
        response = requests.post(authorize_url.split("?", 1)[0], data=fields, allow_redirects=False, timeout=30)
    if response.status_code != 302:
        raise RuntimeError(f"authorize failed: {response.status_code} {response.text[:300]}")
    return response.headers["location"]


class FakeSageServer:
    """Context manager: ``python -m sandbox.fake_sage`` as a subprocess, ready when entered."""

    def __init__(
        self,
        seed: int = 42,
        port: int = 0,
        token_ttl: int = 300,
        client_id: str = "demo-client",
        client_secret: str = "demo-secret",  # noqa: S107 - the fake's own demo client
        *,
        scale: float = 1.0,
        volumes: Mapping[str, Mapping[str, int]] | None = None,
        host: str = "127.0.0.1",
        start: str | None = None,
        startup_timeout: float = 120.0,
        consent: str = "instant",
    ) -> None:
        self.seed = seed
        self.host = host
        self.port = port or free_port(host)
        self.token_ttl = token_ttl
        self.client_id = client_id
        self.client_secret = client_secret
        self.scale = scale
        self.volumes = dict(volumes or {})
        self.start_at = start
        self.startup_timeout = startup_timeout
        self.consent = consent
        self.base_url = f"http://{host}:{self.port}"
        self.api_url = f"{self.base_url}/v3.1"
        self.authorize_url = f"{self.base_url}/oauth2/auth/central?filter=apiv3.1"
        self.token_url = f"{self.base_url}/token"
        self.revoke_url = f"{self.base_url}/revoke"
        self.admin = FakeSageAdmin(self.base_url)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # lifecycle -----------------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The CLI invocation used to start the server."""
        cmd = [
            sys.executable,
            "-m",
            "sandbox.fake_sage",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--seed",
            str(self.seed),
            "--token-ttl",
            str(self.token_ttl),
            "--client-id",
            self.client_id,
            "--client-secret",
            self.client_secret,
            "--scale",
            str(self.scale),
            "--consent",
            self.consent,
        ]
        if self.start_at:
            cmd += ["--start", self.start_at]
        for business, streams in self.volumes.items():
            cmd += [arg for stream, n in streams.items() for arg in ("--volume", f"{business}:{stream}={n}")]
        return cmd

    def start(self) -> Self:
        """Start the subprocess and wait until ``/_admin/health`` answers."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the server's log lives as long as the server
        self._process = subprocess.Popen(  # noqa: S603 - our own server module, no user input
            self.command(),
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"fake Sage exited with {self._process.returncode}:\n{self.output()}")
            try:
                if requests.get(f"{self.base_url}/_admin/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake Sage did not become healthy in {self.startup_timeout}s:\n{self.output()}")

    def output(self) -> str:
        """What the server printed so far (for diagnosing start-up failures)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-5000:]

    def stop(self) -> None:
        """Terminate the subprocess (kill after 5 s)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # conveniences --------------------------------------------------------------------------------
    def airflow_conn_json(self, redirect_uri: str = DEFAULT_REDIRECT_URI) -> str:
        """JSON for ``AIRFLOW_CONN_SAGE_DEFAULT`` pointing at this server."""
        return json.dumps(
            {
                "conn_type": "http",
                "host": self.api_url,
                "login": self.client_id,
                "password": self.client_secret,
                "extra": {
                    "authorize_url": self.authorize_url,
                    "token_url": self.token_url,
                    "revoke_url": self.revoke_url,
                    "redirect_uri": redirect_uri,
                },
            }
        )

    def authorize(
        self,
        login_hint: str | None = None,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        state: str = "fake-state",
        code_challenge: str | None = None,
        *,
        code_challenge_method: str = "S256",
        scope: str = "full_access",
    ) -> str:
        """The browser step: GET the authorize URL (no redirect following) and return the code."""
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "scope": scope,
        }
        if login_hint:
            params["login_hint"] = login_hint
        if code_challenge:
            params.update(code_challenge=code_challenge, code_challenge_method=code_challenge_method)
        location = consent_redirect(f"{self.authorize_url}&{urlencode(params)}", login_hint)
        query = parse_qs(urlsplit(location).query)
        if query.get("state") != [state] or "code" not in query:
            raise RuntimeError(f"unexpected redirect {location}")
        return query["code"][0]

    def exchange(
        self, code: str, redirect_uri: str = DEFAULT_REDIRECT_URI, code_verifier: str | None = None
    ) -> dict[str, Any]:
        """``POST /token`` with ``grant_type=authorization_code``; returns the token JSON."""
        data = {
            "grant_type": "authorization_code",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "code": code,
            "redirect_uri": redirect_uri,
        }
        if code_verifier:
            data["code_verifier"] = code_verifier
        response = requests.post(self.token_url, data=data, headers={"Accept": "application/json"}, timeout=30)
        response.raise_for_status()
        return response.json()

    def issue_tokens(self, login_hint: str | None = None, redirect_uri: str = DEFAULT_REDIRECT_URI) -> dict[str, Any]:
        """Authorize and exchange in one go (for demos and tests)."""
        return self.exchange(self.authorize(login_hint, redirect_uri), redirect_uri)
