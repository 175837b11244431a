"""HTTP layer of the fake Sage server: Sage's OAuth endpoints, the /v3.1 API and the /_admin surface.

Why a thin layer: every Sage-facing route only translates Sage's wire contract (envelope, ``$next``
links, filters, error arrays, OAuth error JSON) onto :mod:`state`; nothing here is a Sage extension,
so a client tuned against this server needs only configuration to talk to the real one. Our own
controls (clock, faults, data edits) live under ``/_admin`` and are never faulted or logged.

All handlers are ``async`` and never block on I/O, so a "slow" fault (an ``asyncio.sleep``) on one
request does not hold up others in the single uvicorn process.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandbox.fake_sage.state import (
    ENVELOPE_FAULTS,
    STREAMS,
    Business,
    FakeSage,
    Fault,
    OAuthError,
    Query,
    Record,
    SageError,
    day_number,
    iso,
    parse_instant,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200  # the spec's maximum; larger values are clamped (real Sage's reply is unknown)
UNPAGINATED = 2_147_483_647  # /businesses reports this as $items_per_page
BASE_FIELDS = ("id", "displayed_as", "$path")

_SPEND = {"updated_or_created_since", "deleted_since", "from_date", "to_date", "contact_id", "status_id", "sort"}
# Query parameters each list endpoint honours (from the v3.1 spec); others are ignored, as Sage does.
STREAM_PARAMS: dict[str, set[str]] = {
    "ledger_accounts": {"updated_or_created_since", "ledger_account_type_id"},
    "contacts": {"updated_or_created_since", "deleted_since", "contact_type_id"},
    "tax_rates": {"updated_or_created_since"},
    "purchase_invoices": _SPEND,
    "purchase_credit_notes": _SPEND,
    "purchase_quick_entries": _SPEND,
    "other_payments": (_SPEND - {"status_id"}) | {"transaction_type_id", "bank_account_id"},
}
SORTABLE = {"purchase_invoices": ("created_at", "updated_at", "date", "due_date")}
DEFAULT_SORTABLE = ("created_at", "updated_at", "date")
EQUALITY_FILTERS = (
    "contact_id",
    "status_id",
    "transaction_type_id",
    "bank_account_id",
    "contact_type_id",
    "ledger_account_type_id",
)


# ---------------------------------------------------------------------------------------- helpers


def _json(
    content: Any, status: int = 200, business: Business | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON response; business-scoped ones carry ``X-Business`` naming the business used (as Sage)."""
    extra = dict(headers or {})
    if business is not None:
        extra["X-Business"] = business.id
    return JSONResponse(content, status_code=status, headers=extra)


def _int_param(value: str | None, default: int, name: str) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise SageError(422, "InvalidParameter", f"{name} must be an integer.", name) from None


def _instant_param(params: Any, name: str) -> int | None:
    value = params.get(name)
    if not value:
        return None
    try:
        return parse_instant(value)
    except ValueError:
        raise SageError(422, "InvalidParameter", f"{name} is not a valid date or datetime.", name) from None


def _day_param(params: Any, name: str) -> int | None:
    value = params.get(name)
    if not value:
        return None
    try:
        return day_number(value[:10])
    except ValueError:
        raise SageError(422, "InvalidParameter", f"{name} is not a valid date.", name) from None


def build_query(stream: str, params: Any) -> Query:
    """Reduce the request's query parameters to a :class:`Query` for the stream's store."""
    supported = STREAM_PARAMS[stream]
    sort, descending = None, False
    if "sort" in supported and params.get("sort"):
        attribute, _, direction = params["sort"].partition(":")
        if attribute in SORTABLE.get(stream, DEFAULT_SORTABLE):
            sort, descending = attribute, direction.lower() == "desc"
    return Query(
        deleted_since=_instant_param(params, "deleted_since") if "deleted_since" in supported else None,
        updated_since=_instant_param(params, "updated_or_created_since"),
        from_day=_day_param(params, "from_date") if "from_date" in supported else None,
        to_day=_day_param(params, "to_date") if "to_date" in supported else None,
        equals=tuple((name, params[name]) for name in EQUALITY_FILTERS if name in supported and params.get(name)),
        sort=sort,
        descending=descending,
    )


def page_link(path: str, raw_query: str, page: int) -> str:
    """``$next``/``$back``: the original query string, untouched except for ``page`` (put first)."""
    parts = [p for p in raw_query.split("&") if p and p.split("=", 1)[0] != "page"]
    return f"{path}?" + "&".join([f"page={page}", *parts])


def project(record: Record, attributes: str | None, deleted_listing: bool = False) -> Record:
    """Apply ``attributes``: none -> id, displayed_as, $path; ``all`` -> everything; else a list."""
    if attributes and attributes.strip().lower() == "all":
        return record
    wanted = [a.strip() for a in (attributes or "").split(",") if a.strip()]
    keys = [*BASE_FIELDS, *(["deleted_at"] if deleted_listing else []), *wanted]
    return {k: record[k] for k in dict.fromkeys(keys) if k in record}


# -------------------------------------------------------------------------------------- edge (ASGI)


class Edge:
    """Outermost ASGI layer: ``x_request_id`` on every response, the request log, and faults.

    Why raw ASGI rather than FastAPI middleware: a "drop" fault must close the TCP connection without
    any HTTP response, which needs the server transport behind uvicorn's ``send``.
    """

    def __init__(self, app: Any, state: FakeSage) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        path: str = scope["path"]
        admin = path.startswith("/_admin")
        headers = dict(scope.get("headers") or [])
        business = headers.get(b"x-business", b"").decode("latin-1") or None
        fault = None if admin else self.state.faults.take(path, business)
        entry: dict[str, Any] | None = None
        if not admin:
            entry = {
                "method": scope["method"],
                "path": path,
                "query": scope.get("query_string", b"").decode("latin-1"),
                "x_business": business,
                "status": None,
                # Wall-clock arrival: how many requests came in any window (bench/deployment.py
                # checks the shared rate limit with it).
                "started": time.time(),
            }
            if fault is not None:
                entry["fault"] = fault.kind
            self.state.log.append(entry)

        hide_business = self.state.foreign_business_as_lead and not admin

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # `Date` is the server's clock (RFC 9110), here the fake clock its timestamps come from;
                # uvicorn's own (the host's wall clock) is turned off in __main__.
                date = formatdate(self.state.clock.now(), usegmt=True).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if not (hide_business and k == b"x-business")]
                extra = [(b"x_request_id", request_id.encode()), (b"date", date)]
                message = {**message, "headers": [*headers, *extra]}
                if entry is not None:
                    entry["status"] = message["status"]
            await send(message)

        if fault is None:
            await self.app(scope, receive, send_with_id)
        else:
            await self._apply(fault, scope, receive, send, send_with_id)

    async def _apply(self, fault: Fault, scope: Scope, receive: Receive, raw_send: Send, send: Send) -> None:
        if fault.kind == "slow":
            await asyncio.sleep((fault.delay_ms if fault.delay_ms is not None else 1000) / 1000)
            await self.app(scope, receive, send)
        elif fault.kind == "hold":
            released = self.state.faults.released
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), (fault.delay_ms or 300_000) / 1000)
            await self.app(scope, receive, send)
        elif fault.kind in ("401", "429", "500", "503"):
            codes = {
                "401": ("AuthorizationFailure", "The access token is invalid."),
                "429": ("TooManyRequests", "Rate limit exceeded. Please retry later."),
                "500": ("UnexpectedError", "An unexpected error occurred."),
                "503": ("ServiceUnavailable", "The service is temporarily unavailable."),
            }
            code, text = codes[fault.kind]
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            response = _json(SageError(int(fault.kind), code, text).body(), int(fault.kind), headers=headers)
            await response(scope, receive, send)
        elif fault.kind == "truncate":
            await self._truncated(scope, receive, send)
        elif fault.kind in ENVELOPE_FAULTS:
            await self._misreported(fault.kind, scope, receive, send)
        elif fault.kind == "lose":
            await self._lost(scope, receive, raw_send, send)
        else:  # drop
            await self._drop(raw_send, send)

    async def _truncated(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 200 with a syntactically broken (cut in half) JSON body and a matching length."""
        chunks: list[bytes] = []
        start: Message = {}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        body = body[: max(1, len(body) // 2)]
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _misreported(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a list request with a lying envelope (see ``state.ENVELOPE_FAULTS``); others as usual."""
        raw_query = scope.get("query_string", b"").decode("latin-1")
        asked = dict(parse_qsl(raw_query))
        if kind == "endless":  # a server that ignores `page`
            kept = "&".join(p for p in raw_query.split("&") if p and p.split("=", 1)[0] != "page")
            scope = {**scope, "query_string": kept.encode("latin-1")}
        chunks: list[bytes] = []
        start: Message = {}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        envelope = json.loads(body) if start.get("status") == 200 and body else None
        if isinstance(envelope, dict) and isinstance(envelope.get("$items"), list):
            path = scope["path"].removeprefix("/v3.1")
            if kind == "short_total":
                envelope["$total"] = max(0, envelope["$total"] - envelope["$itemsPerPage"])
            elif kind == "next_back" and envelope["$next"] is not None:
                envelope["$next"] = page_link(path, raw_query, max(1, envelope["$page"] - 1))
            elif kind == "endless":
                del envelope["$total"], envelope["$page"]
                page = int(asked.get("page") or 1)
                envelope["$next"] = page_link(path, raw_query, page + 1)
            body = json.dumps(envelope).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start.get("status", 200), "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lost(self, scope: Scope, receive: Receive, raw_send: Send, send: Send) -> None:
        """Handle the request in full (a refresh rotates the token), then drop the answer unsent."""

        async def discard(message: Message) -> None:
            return None

        await self.app(scope, receive, discard)
        await self._drop(raw_send, send)

    @staticmethod
    async def _drop(raw_send: Send, send: Send) -> None:
        """Close the connection with no (valid) HTTP response at all."""
        transport = getattr(getattr(raw_send, "__self__", None), "transport", None)
        if transport is not None:
            transport.abort()
            return
        # Fallback when the server's transport is not reachable: headers promise more than is sent.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"100000")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"$total": 1, "$items": [', "more_body": True})
        raise ConnectionAbortedError("fake sage: dropped connection (fault)")


# ---------------------------------------------------------------------------------------------- app


def create_app(state: FakeSage) -> Edge:
    """The ASGI app for one :class:`FakeSage` state."""
    api = FastAPI(title="Fake Sage Accounting v3.1", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(api)
    _install_oauth(api, state)
    _install_admin(api, state)
    _install_admin_grants(api, state)
    _install_api(api, state)
    return Edge(api, state)


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(SageError)
    async def sage_error(_: Request, exc: SageError) -> Response:
        return _json(exc.body(), exc.status)

    @api.exception_handler(OAuthError)
    async def oauth_error(_: Request, exc: OAuthError) -> Response:
        return _json(
            {"error": exc.error, "error_description": exc.description},
            exc.status,
            headers={"Cache-Control": "no-store"},
        )

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "RecordNotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "Error")
        return _json(SageError(exc.status_code, code, str(exc.detail)).body(), exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        return _json(SageError(422, "InvalidParameter", str(exc.errors())[:500]).body(), 422)


# -------------------------------------------------------------------------------------------- OAuth


def consent_page(state: FakeSage, params: Mapping[str, str]) -> str:
    """Sage's authorise page, reduced to what a user decides: who signs in, and Allow or Deny.

    Every query parameter goes back in the form, so the answer is decided on exactly the request
    the client made (its ``state``, PKCE challenge and redirect).
    """
    hint = params.get("login_hint")
    chosen = hint if any(hint in (u.login, u.id) for u in state.users) else state.users[0].login
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in params.items()
    )
    users = "".join(
        f'<label class="user"><input type="radio" name="login" value="{html.escape(u.login)}"'
        f"{' checked' if chosen in (u.login, u.id) else ''}> <strong>{html.escape(u.first_name)} "
        f"{html.escape(u.last_name)}</strong> <span>{html.escape(u.login)} &middot; "
        f"{len(u.business_ids)} business{'es' if len(u.business_ids) != 1 else ''}</span></label>"
        for u in state.users
    )
    client = html.escape(params.get("client_id", ""))
    scope = html.escape(params.get("scope") or "full_access")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Sage Accounting: allow access?</title><style>
body {{ font-family: Arial, sans-serif; background: #f2f5f6; margin: 0; color: #1f2a30; }}
.box {{ max-width: 460px; margin: 48px auto; background: #fff; border-radius: 8px; padding: 28px 32px;
        box-shadow: 0 1px 4px rgba(0,0,0,.15); }}
.logo {{ color: #00a65d; font-weight: 700; font-size: 22px; }} .fake {{ color: #8a969c; font-size: 12px; }}
.user {{ display: block; padding: 10px; border: 1px solid #d6dde0; border-radius: 6px; margin: 8px 0;
         cursor: pointer; }}
.user span {{ color: #5b6a72; font-size: 13px; }}
button {{ font: inherit; padding: 9px 22px; border-radius: 20px; border: 1px solid #00a65d; cursor: pointer; }}
#allow {{ background: #00a65d; color: #fff; }} #deny {{ background: #fff; color: #00a65d; margin-left: 8px; }}
</style></head><body><div class="box">
<div class="logo">Sage Accounting</div><div class="fake">the demo's fake Sage: no real account is used</div>
<h1 style="font-size: 20px">Allow <em>{client}</em> to access your Sage data?</h1>
<p>It asks for <strong>{scope}</strong> access to the businesses of the account you sign in with.</p>
<form method="post" action="">{hidden}<div id="users">{users}</div>
<p><button id="allow" name="decision" value="allow">Allow</button>
<button id="deny" name="decision" value="deny">Deny</button></p></form></div></body></html>"""


def _check_client(state: FakeSage, params: Mapping[str, str]) -> str:
    """Errors Sage shows on its own page (no redirect): an unknown client, no redirect_uri."""
    if params.get("client_id") != state.auth.client_id:
        raise OAuthError(400, "invalid_client", "Unknown client_id")
    redirect_uri = params.get("redirect_uri")
    if not redirect_uri:
        raise OAuthError(400, "invalid_request", "redirect_uri is required")
    return redirect_uri


def _decide(state: FakeSage, params: Mapping[str, str], login: str | None, *, allowed: bool = True) -> Response:
    """Redirect back to the client with a code (or the OAuth error) and its ``state``."""
    redirect_uri = _check_client(state, params)
    back: dict[str, str] = {}
    method = params.get("code_challenge_method")
    if params.get("response_type") != "code":
        back["error"] = "unsupported_response_type"
    elif method not in (None, "S256", "plain"):
        back["error"] = "invalid_request"
    elif not allowed:
        back["error"] = "access_denied"
    else:
        try:
            user = state.user(login)
        except KeyError:
            raise OAuthError(400, "invalid_request", "Unknown login_hint") from None
        back["code"] = state.auth.issue_code(
            params["client_id"],
            redirect_uri,
            user.id,
            params.get("scope") or "full_access",
            challenge=params.get("code_challenge"),
            method=method,
        )
        back["country"] = "GB"
    if params.get("state") is not None:
        back["state"] = params["state"]
    separator = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(redirect_uri + separator + urlencode(back), status_code=302)


def _install_oauth(api: FastAPI, state: FakeSage) -> None:
    @api.get("/oauth2/auth/central")
    async def authorize(request: Request) -> Response:
        """The browser step: Sage's sign-in and consent page, or (``consent="instant"``, for
        tests and scripts) consent at once as ``login_hint`` or the first user."""
        params = dict(request.query_params)
        _check_client(state, params)
        if state.config.consent != "screen":
            return _decide(state, params, params.get("login_hint"))
        return HTMLResponse(consent_page(state, params), headers={"Cache-Control": "no-store"})

    @api.post("/oauth2/auth/central")
    async def consent(request: Request) -> Response:
        """The consent page's answer: Allow as the chosen user, or Deny (``access_denied``)."""
        answer = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        login, decision = answer.pop("login", None), answer.pop("decision", "")
        return _decide(state, answer, login, allowed=decision == "allow")

    async def form(request: Request) -> dict[str, str]:
        content_type = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" not in content_type:
            raise OAuthError(400, "invalid_request", "Expected application/x-www-form-urlencoded")
        return dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))

    @api.post("/token")
    async def token(request: Request) -> Response:
        data = await form(request)
        state.auth.check_client(data.get("client_id"), data.get("client_secret"))
        grant_type = data.get("grant_type")
        if grant_type == "authorization_code":
            body = state.auth.exchange_code(data)
        elif grant_type == "refresh_token":
            body = state.auth.refresh(data)
        else:
            raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant_type {grant_type!r}")
        return _json(body, headers={"Cache-Control": "no-store"})

    @api.post("/revoke")
    async def revoke(request: Request) -> Response:
        data = await form(request)
        state.auth.check_client(data.get("client_id"), data.get("client_secret"))
        state.auth.revoke(data.get("token", ""))
        return _json({"success": "ok"})


# ---------------------------------------------------------------------------------------------- API


def _install_api(api: FastAPI, state: FakeSage) -> None:
    def user_of(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return state.auth.user_for(token.strip() if scheme.lower() == "bearer" else None)

    def business_of(request: Request) -> Business:
        return state.business_for(user_of(request), request.headers.get("x-business"))

    @api.get("/v3.1/user")
    async def user(request: Request) -> Response:
        u = state.user(user_of(request))
        return _json(
            {
                "id": u.id,
                "displayed_as": f"{u.first_name} {u.last_name}",
                "$path": "/user",
                "first_name": u.first_name,
                "last_name": u.last_name,
                "initials": u.first_name[0] + u.last_name[0],
                "email": u.login,
                "locale": "en-GB",
            }
        )

    @api.get("/v3.1/businesses")
    async def businesses(request: Request) -> Response:
        u = state.user(user_of(request))
        attributes = request.query_params.get("attributes")
        items = [project(state.world.businesses[b].business, attributes) for b in u.business_ids]
        return _json(
            {
                "$total": len(items),
                "$page": 1,
                "$next": None,
                "$back": None,
                "$items_per_page": UNPAGINATED,
                "$items": items,
            }
        )

    @api.get("/v3.1/businesses/lead")
    async def lead(request: Request) -> Response:
        u = state.user(user_of(request))
        return _json(state.world.businesses[u.business_ids[0]].business)

    @api.get("/v3.1/businesses/{business_id}")
    async def business(business_id: str, request: Request) -> Response:
        u = state.user(user_of(request))
        if business_id not in u.business_ids and state.foreign_business_as_lead and u.business_ids:
            return _json(state.world.businesses[u.business_ids[0]].business)  # misbehaving: the lead
        found = state.business(business_id)
        if found.id not in u.business_ids:
            raise SageError(403, "AccessDenied", "You do not have access to this business.")
        return _json(found.business)

    @api.get("/v3.1/financial_settings")
    async def financial_settings(request: Request) -> Response:
        b = business_of(request)
        return _json(b.financial_settings, business=b)

    for stream in STREAMS:
        _install_stream(api, state, stream, business_of)


def _install_stream(api: FastAPI, state: FakeSage, stream: str, business_of: Callable[[Request], Business]) -> None:
    @api.get(f"/v3.1/{stream}", name=f"list_{stream}")
    async def list_records(request: Request) -> Response:
        b = business_of(request)
        store = b.stores[stream]
        params = request.query_params
        query = build_query(stream, params)
        per_page = min(
            max(_int_param(params.get("items_per_page"), DEFAULT_PER_PAGE, "items_per_page"), 1), MAX_PER_PAGE
        )
        selected = store.select(query)
        total = len(selected)
        last = max(1, math.ceil(total / per_page))
        page = min(max(_int_param(params.get("page"), 1, "page"), 1), last)
        chunk = selected[(page - 1) * per_page : page * per_page]
        attributes = params.get("attributes")
        deleted = query.deleted_since is not None
        raw = request.url.query
        return _json(
            {
                "$total": total,
                "$page": page,
                "$next": page_link(f"/{stream}", raw, page + 1) if page < last else None,
                "$back": page_link(f"/{stream}", raw, page - 1) if page > 1 else None,
                "$itemsPerPage": per_page,
                "$items": [project(store.get(i), attributes, deleted) for i in chunk],
            },
            business=b,
        )

    @api.get(f"/v3.1/{stream}/{{record_id}}", name=f"get_{stream}")
    async def get_record(record_id: str, request: Request) -> Response:
        b = business_of(request)
        store = b.stores[stream]
        index = store.index_of(record_id)
        if index is None or store.is_deleted(index):
            raise SageError(404, "RecordNotFound", "Record not found.")
        return _json(store.get(index), business=b)


# -------------------------------------------------------------------------------------------- admin


def _install_admin(api: FastAPI, state: FakeSage) -> None:
    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        data = await request.json()
        if not isinstance(data, dict):
            raise SageError(422, "InvalidParameter", "Expected a JSON object.")
        return data

    @api.get("/_admin/health")
    async def health() -> Response:
        return _json({"ok": True, "seed": state.config.seed, "now": iso(state.clock.now())})

    @api.get("/_admin/users")
    async def users() -> Response:
        return _json(
            [
                {
                    "id": u.id,
                    "login": u.login,
                    "first_name": u.first_name,
                    "last_name": u.last_name,
                    "business_ids": list(u.business_ids),
                }
                for u in state.users
            ]
        )

    @api.get("/_admin/businesses")
    async def businesses() -> Response:
        logins = {u.id: u.login for u in state.users}
        return _json(
            [
                {
                    "id": b.id,
                    "key": b.key,
                    "name": b.name,
                    "base_currency": b.base_currency,
                    "user": logins[b.owner_id],
                    "user_id": b.owner_id,
                }
                for b in state.world.businesses.values()
            ]
        )

    @api.get("/_admin/businesses/{business_id}/{stream}")
    async def records(business_id: str, stream: str, include_deleted: bool = False) -> Response:
        return _json(state.records(business_id, stream, include_deleted))

    @api.post("/_admin/businesses/{business_id}/{stream}")
    async def create(business_id: str, stream: str, request: Request) -> Response:
        return _json(state.create(business_id, stream, await body(request)), 201)

    @api.patch("/_admin/businesses/{business_id}/{stream}/{record_id}")
    async def update(business_id: str, stream: str, record_id: str, request: Request) -> Response:
        return _json(state.update(business_id, stream, record_id, await body(request)))

    @api.delete("/_admin/businesses/{business_id}/{stream}/{record_id}")
    async def delete(business_id: str, stream: str, record_id: str) -> Response:
        return _json(state.delete(business_id, stream, record_id))

    @api.post("/_admin/businesses/{business_id}/{stream}/{record_id}/void")
    async def void(business_id: str, stream: str, record_id: str, request: Request) -> Response:
        reason = (await body(request)).get("reason") or "Voided"
        return _json(state.void(business_id, stream, record_id, reason))

    @api.get("/_admin/clock")
    async def clock() -> Response:
        return _json({"now": iso(state.clock.now())})

    @api.post("/_admin/clock/advance")
    async def advance(request: Request) -> Response:
        return _json({"now": iso(state.clock.advance(float((await body(request))["seconds"])))})

    @api.put("/_admin/clock")
    async def set_clock(request: Request) -> Response:
        return _json({"now": iso(state.clock.set(str((await body(request))["now"])))})

    @api.get("/_admin/faults")
    async def faults() -> Response:
        return _json([f.__dict__ for f in state.faults.items])

    @api.post("/_admin/faults")
    async def add_fault(request: Request) -> Response:
        data = await body(request)
        try:
            fault = Fault(
                str(data["kind"]),
                data.get("path"),
                int(data.get("count") or 1),
                data.get("retry_after"),
                data.get("delay_ms"),
                data.get("business"),
            )
            state.faults.add(fault)
        except (KeyError, ValueError) as exc:
            raise SageError(422, "InvalidParameter", str(exc)) from None
        return _json(fault.__dict__, 201)

    @api.post("/_admin/faults/release")
    async def release_held() -> Response:
        state.faults.release()
        return _json({"ok": True})

    @api.delete("/_admin/faults")
    async def clear_faults() -> Response:
        state.faults.items.clear()
        return _json({"ok": True})

    @api.put("/_admin/token_ttl")
    async def token_ttl(request: Request) -> Response:
        state.auth.token_ttl = int((await body(request))["seconds"])
        return _json({"token_ttl": state.auth.token_ttl})

    @api.post("/_admin/expire_access_tokens")
    async def expire() -> Response:
        state.auth.expire_access_tokens()
        return _json({"ok": True})

    @api.post("/_admin/revoke_grants")
    async def revoke_grants(request: Request) -> Response:
        key = (await body(request)).get("user")
        try:
            user_id = state.user(key).id if key else None
        except KeyError:
            raise SageError(404, "RecordNotFound", f"Unknown user {key!r}.") from None
        return _json({"revoked": state.auth.revoke_user(user_id)})

    @api.get("/_admin/request_log")
    async def request_log() -> Response:
        return _json(list(state.log))

    @api.delete("/_admin/request_log")
    async def clear_request_log() -> Response:
        state.log.clear()
        return _json({"ok": True})

    @api.post("/_admin/reset")
    async def reset(request: Request) -> Response:
        state.reset((await body(request)).get("seed"))
        return _json({"ok": True, "seed": state.config.seed, "now": iso(state.clock.now())})


def _install_admin_grants(api: FastAPI, state: FakeSage) -> None:
    """Admin controls of grants and access (the token chaos test's world), beside ``_install_admin``."""

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        return (await request.json()) if raw else {}

    @api.put("/_admin/clock/running")
    async def clock_running(request: Request) -> Response:
        return _json({"now": iso(state.clock.run(bool((await body(request))["running"])))})

    @api.post("/_admin/token_state")
    async def token_state(request: Request) -> Response:
        data = await body(request)
        found = state.auth.token_state(str(data.get("refresh_token") or ""), str(data.get("fingerprint") or ""))
        return _json({"state": found})

    @api.put("/_admin/misbehave")
    async def misbehave(request: Request) -> Response:
        state.foreign_business_as_lead = bool((await body(request)).get("foreign_business_as_lead"))
        return _json({"foreign_business_as_lead": state.foreign_business_as_lead})

    @api.delete("/_admin/users/{user}/businesses/{business_id}")
    async def remove_access(user: str, business_id: str) -> Response:
        try:
            return _json({"business_ids": state.remove_access(user, business_id)})
        except KeyError:
            raise SageError(404, "RecordNotFound", f"Unknown user {user!r}.") from None
