"""Airflow plugin: the "Sage connections" pages, mounted in the api-server at ``/sage``.

A data engineer sees every connected company on a dashboard (name, status, Synced From, next
scheduled run, the last runs with links to Airflow, initial-sync progress, the current problem
and what fixes it), opens a company's page (streams, sync health, exceptions), connects a Sage
business (Sage's authorise page with a CSRF ``state`` and PKCE, then a choice of business and
first Synced From quarter), disconnects, reconnects, moves Synced From earlier (warning,
confirmation, a fresh Authorise Access, then the ``sage_backfill`` DAG) and resets a company.
All logic is the lifecycle layer's (``sage_sync.lifecycle``), the same functions the CLI calls; this
file is HTTP only: no SQL, no token handling, no Airflow call of its own, no HTML (``web/templates``).
Long on purpose: one short handler per route of the Connect flow, kept side by side so
the order of checks (login, editor, CSRF, then the use case) can be read in one place.

Authentication is the app's: :func:`~sage_sync.web.access.current_user` is a dependency of the
whole app, so every route, a new one included, needs an Airflow login (a browser without one is
sent to Airflow's login page). Routes that change things also take ``Editor`` (permission to edit
DAGs), and every flow that changes something starts from a POST carrying a CSRF token bound to a
cookie: a link (``GET /authorize?purpose=backfill``) starts nothing. The one GET that acts,
``/callback``, is Sage's redirect and acts only for the browser holding the sealed flow whose
``state`` it carries. Every answer forbids framing by other sites, MIME sniffing and caching
(:class:`SecurityHeaders`); banners are the app's own sentences, named by key (``pages.banner``).

The use cases, the read side and Airflow's names are imported inside the routes: Airflow loads
this module with the plugins in every one of its processes (scheduler, DAG processor, each task),
which never serve a page and need not load what the pages call.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sage_sync.core.errors import LifecycleError, LoginRequired
from sage_sync.web.access import Editor, EditRights, caller, current_user, edit_rights, editor
from sage_sync.web.access import check_csrf as _check_csrf
from sage_sync.web.pages import back, base_path, delete_cookie, error_page, render, set_cookie

log = logging.getLogger(__name__)

OAUTH_COOKIE = "sage_oauth"
# The grant this browser holds while its user picks a business: a newer one replaces (and revokes) it.
PENDING_COOKIE = "sage_pending"
# Every answer: no framing but by Airflow's own UI (same origin), no MIME sniffing, and no copy of
# a page with company data in a browser's or a proxy's cache (a route may set its own caching).
SECURITY_HEADERS = {
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# The exception lists' reasons, in the pages' words.
EXCEPTION_REASONS = {
    "document_currency_not_gbp": "the document is not in GBP",
    "company_base_currency_not_gbp": "the company's base currency is not GBP",
    "void": "void: cancelled in Sage",
    "draft": "draft: not posted yet",
}

# The login is a dependency of the app, not of each route: a route added later is closed too.
app = FastAPI(
    title="Sage connections", docs_url=None, redoc_url=None, openapi_url=None, dependencies=[Depends(current_user)]
)


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every answer, refusals and redirects too."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.inner(scope, receive, send_with_headers)


app.add_middleware(SecurityHeaders)


# -- authentication -------------------------------------------------------------------------------


@app.exception_handler(LoginRequired)
async def _to_login(_: Request, exc: LoginRequired) -> Response:
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=exc.next_url), status_code=303)


@app.exception_handler(HTTPException)
async def _refused(request: Request, exc: HTTPException) -> Response:
    """A refusal (no edit rights, a stale form) as a page in the pages' look, not a JSON body."""
    return error_page(request, str(exc.detail), exc.status_code)


# -- routes ---------------------------------------------------------------------------------------


@app.get("/", response_class=HTMLResponse)
def index(request: Request, can_edit: EditRights) -> HTMLResponse:
    """The dashboard: every company by status, what needs a person first."""
    from sage_sync.reporting import dashboard, status

    try:
        items = dashboard.overview(caller(request))
    except LifecycleError as exc:
        return error_page(request, exc.message, 503)
    sections = [(state, [i for i in items if i["status"] == state]) for state in status.DISPLAY_ORDER]
    sections = [(state, found) for state, found in sections if found]
    counts = {state: sum(1 for i in items if i["status"] == state) for state in status.DISPLAY_ORDER}
    return render(
        request,
        "index.html",
        title="Sage connections",
        sections=sections,
        counts=counts,
        order=status.DISPLAY_ORDER,
        can_edit=can_edit,
        next_run_known=all(i["next_run_known"] for i in items),
    )


@app.get("/icon.svg")
def icon() -> Response:
    """The menu entry's icon in Airflow's navigation."""
    from sage_sync.web.pages import TEMPLATES

    return Response(
        (TEMPLATES / "icon.svg").read_bytes(), media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
    )


@app.get("/company/{company_id}", response_class=HTMLResponse)
def company(request: Request, company_id: str, can_edit: EditRights) -> HTMLResponse:
    """One company: its state, streams, run history, sync health and exceptions."""
    from sage_sync.reporting import dashboard

    try:
        found = dashboard.company_page(company_id, caller(request))
    except LifecycleError as exc:
        return error_page(request, exc.message, 404)
    return render(request, "company.html", title=found["name"], c=found, can_edit=can_edit, reasons=EXCEPTION_REASONS)


@app.post("/authorize")
def authorize(
    request: Request,
    user: Editor,  # noqa: ARG001 - the editor check
    purpose: str = Form(...),
    company_id: str = Form(""),
    synced_from: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Send the browser to Sage's authorise page with a fresh state and PKCE pair.

    A POST with the CSRF token: a backfill starts from here once Sage consents, so a link (a GET
    from another site, an e-mail) must not skip the warning and confirmation page before it.
    """
    from sage_sync.lifecycle import authorisation
    from sage_sync.lifecycle import connections as lifecycle

    _check_csrf(request, csrf)
    if purpose not in ("connect", "reconnect", "backfill"):
        return error_page(request, "This link is not one of the pages' own: start again from the dashboard")
    try:
        if purpose == "reconnect":
            lifecycle.require_known(company_id)
        if purpose == "backfill":
            lifecycle.prepare_backfill(company_id, synced_from)
        start = authorisation.begin()
    except LifecycleError as exc:
        return error_page(request, exc.message)
    cookie = authorisation.seal_flow(start, purpose=purpose, company_id=company_id, synced_from=synced_from)
    response = RedirectResponse(start.url, status_code=303)
    set_cookie(request, response, OAUTH_COOKIE, cookie, max_age=authorisation.FLOW_SECONDS)
    return response


@app.get("/callback")
def callback(
    request: Request,
    user: Editor,  # noqa: ARG001 - the editor check
    code: str = "",
    state: str = "",
    error: str = "",
) -> Response:
    """Sage's redirect: check the state, exchange the code, then act on the flow's purpose."""
    from sage_sync.lifecycle import authorisation
    from sage_sync.lifecycle import connections as lifecycle
    from sage_sync.orchestration import airflow_api

    try:
        flow = authorisation.open_flow(request.cookies.get(OAUTH_COOKIE, ""), state)
    except LifecycleError as exc:
        return error_page(request, exc.message)
    if error or not code:
        # An OAuth error code (access_denied) is shown; anything else in the URL is not ours to show.
        said = error if re.fullmatch(r"[a-z_]{1,40}", error) else "no code"
        return error_page(request, f"Sage did not authorise access ({said}): nothing changed")
    purpose, company_id = flow["purpose"], flow["company_id"]
    try:
        if purpose == "reconnect":
            lifecycle.reconnect(company_id, code, flow["verifier"], caller=caller(request))
            # The catch-up now, not at midnight; if Airflow does not take it, the daily run will.
            started = _started(
                airflow_api.dag_id_for(company_id), lambda: lifecycle.start_catch_up(company_id, caller(request))
            )
            note = "catch_up_started" if started == "started" else "catch_up_not_started"
            response: Response = back(request, "reconnected", company_id, notes=(note,))
        elif purpose == "backfill":
            quarter = lifecycle.authorise_backfill(company_id, flow["synced_from"], code, flow["verifier"])
            started = _started(
                airflow_api.BACKFILL_DAG_ID, lambda: lifecycle.start_backfill(company_id, quarter, caller(request))
            )
            response = back(
                request, "backfill", company_id, notes=(started,), quarter=str(quarter), to=_company_path(company_id)
            )
        else:
            auth = authorisation.exchange(code, flow["verifier"])
            pending = authorisation.hold(auth)
            replaced = request.cookies.get(PENDING_COOKIE)
            if replaced and replaced != pending:
                authorisation.discard(replaced)  # this browser's earlier grant: nobody will pick from it now
            response = RedirectResponse(f"{base_path(request)}/choose?pending={pending}", status_code=303)
            set_cookie(request, response, PENDING_COOKIE, pending, max_age=authorisation.PENDING_MINUTES * 60)
    except LifecycleError as exc:
        response = error_page(request, exc.message)
    delete_cookie(request, response, OAUTH_COOKIE)
    return response


@app.get("/choose", response_class=HTMLResponse)
def choose(request: Request, user: Editor, pending: str) -> HTMLResponse:  # noqa: ARG001 - the editor check
    """Pick the business to connect and its first Synced From quarter (from the quarters allowed)."""
    from sage_sync.lifecycle import authorisation, inputs
    from sage_sync.reporting import dashboard

    found = authorisation.held(pending)
    if found is None:
        return error_page(request, "This authorisation expired or was already used: connect again")
    quarters = [str(q) for q in inputs.connect_quarters()]
    connected = dashboard.registered_businesses([b["id"] for b in found.businesses])
    businesses = [
        {"id": b["id"], "name": authorisation.business_name(b), "connected": connected.get(b["id"])}
        for b in found.businesses
    ]
    # New businesses first (the one a user came to connect), then those connected already.
    businesses.sort(key=lambda b: b["connected"] is not None)
    # A year of history by default: enough for a first carbon report, quick to import.
    return render(
        request,
        "choose.html",
        title="Connect a Sage business",
        pending=pending,
        businesses=businesses,
        quarters=quarters,
        default=quarters[min(3, len(quarters) - 1)],
    )


@app.post("/register")
def register_business(
    request: Request,
    user: Editor,  # noqa: ARG001 - the editor check
    pending: str = Form(...),
    business_id: str = Form(...),
    synced_from: str = Form(...),
    csrf: str = Form(""),
) -> Response:
    """Register the chosen business; its daily DAG appears at the next parse."""
    from sage_sync.lifecycle import connections as lifecycle
    from sage_sync.lifecycle import inputs

    _check_csrf(request, csrf)
    try:
        quarter = inputs.parse_quarter(synced_from)
        existing = lifecycle.registered(business_id)
        # Takes the held grant atomically: a double click or a second tab cannot register it twice.
        registered = lifecycle.register_held(pending, business_id, quarter, caller=caller(request))
    except LifecycleError as exc:
        return error_page(request, exc.message)
    if existing is None:
        response = back(request, "connected", registered.company_id, quarter=registered.synced_from_quarter)
    else:
        response = _kept_synced_from(request, existing, quarter)
    delete_cookie(request, response, PENDING_COOKIE)
    return response


def _kept_synced_from(request: Request, existing: Any, chosen: Any) -> RedirectResponse:
    """A business that was connected already is re-authorised and keeps its Synced From: a login
    never moves it. When the quarter chosen is earlier, the page says so and offers the move
    (a backfill, with its warning and confirmation); otherwise the dashboard says it was kept."""
    from sage_sync.lifecycle import connections as lifecycle

    company_id, quarter = existing.company_id, str(chosen)
    if chosen < existing.synced_from:
        try:
            lifecycle.prepare_backfill(company_id, quarter)
        except LifecycleError:
            pass  # not movable now (e.g. still in its first sync): the dashboard says what was kept
        else:
            to = f"/synced-from?{urlencode({'company_id': company_id, 'synced_from': quarter})}"
            return back(request, "kept_synced_from_move", company_id, quarter=quarter, to=to)
    if chosen == existing.synced_from:
        return back(request, "reconnected", company_id)
    return back(request, "kept_synced_from", company_id, quarter=quarter)


class ConfirmedAction(BaseModel):
    """The form a destructive action's confirmation page posts (disconnect, reset)."""

    company_id: str
    confirm: str = ""
    csrf: str = ""


Confirmed = Annotated[ConfirmedAction, Form()]


def _confirmation_route(template: str, title: str) -> Any:
    """The GET route of a destructive action's confirmation page: what it does, and a form that
    posts it confirmed (disconnect revokes the grant at Sage; reset wipes the company's data)."""

    def confirmation_page(request: Request, user: Editor, company_id: str) -> HTMLResponse:  # noqa: ARG001 - the editor check
        return _confirmation_page(request, company_id, template, title)

    return confirmation_page


for _path, _template, _title in (
    ("/disconnect", "disconnect.html", "Disconnect a company"),
    ("/reset", "reset.html", "Reset a company"),
):
    app.add_api_route(_path, _confirmation_route(_template, _title), methods=["GET"], response_class=HTMLResponse)


@app.post("/disconnect")
def disconnect(request: Request, user: Editor, form: Confirmed) -> Response:  # noqa: ARG001 - the editor check
    """Disconnect: no more imports, grant revoked, DAG paused, data kept (after its confirmation page)."""
    from sage_sync.lifecycle import connections as lifecycle

    company_id = form.company_id
    refused = _unconfirmed(
        request,
        form,
        "Disconnect revokes the company's grant at Sage: confirm it on the Disconnect page",
        f"/disconnect?company_id={quote(company_id, safe='')}",
    )
    if refused:
        return refused
    try:
        done = lifecycle.disconnect(company_id, caller=caller(request))
    except LifecycleError as exc:
        return error_page(request, exc.message)
    if not done.token_revoked:
        log.warning("disconnect of %s: grant not revoked at Sage: %s", company_id, done.revoke_error)
    revoked = "revoked" if done.token_revoked else "not_revoked"
    return back(
        request, "disconnected", company_id, notes=(revoked, "paused" if done.dag_paused else "not_paused", "data_kept")
    )


@app.get("/synced-from", response_class=HTMLResponse)
def synced_from_form(
    request: Request,
    user: Editor,  # noqa: ARG001 - the editor check
    company_id: str,
    synced_from: str = "",
) -> HTMLResponse:
    """Offer the earlier quarters allowed; once one is picked, warn and ask for confirmation."""
    from sage_sync.lifecycle import connections as lifecycle
    from sage_sync.lifecycle import inputs
    from sage_sync.reporting import dashboard

    back_to = f"/company/{quote(company_id, safe='')}"
    try:
        known, name = dashboard.named_company(company_id)
        if synced_from:
            known, quarter = lifecycle.prepare_backfill(company_id, synced_from)
    except LifecycleError as exc:
        return error_page(request, exc.message, back_to=back_to)
    if synced_from:
        start, end = lifecycle.backfill_dates(known, quarter)
        return render(
            request,
            "synced_from_confirm.html",
            title="Move Synced From earlier",
            company=known,
            name=name,
            quarter=str(quarter),
            start=start,
            end=end,
        )
    quarters = [str(q) for q in inputs.backfill_quarters(known)]
    return render(
        request, "synced_from.html", title="Move Synced From earlier", company=known, name=name, quarters=quarters
    )


@app.post("/reset")
def reset(request: Request, user: Editor, form: Confirmed) -> Response:  # noqa: ARG001 - the editor check
    """Wipe, then trigger the company's DAG for the full sync."""
    from sage_sync.lifecycle import connections as lifecycle
    from sage_sync.orchestration import airflow_api

    company_id = form.company_id
    back_to = f"/company/{quote(company_id, safe='')}"
    refused = _unconfirmed(
        request,
        form,
        "Reset wipes the company's imported data and imports it again from Synced "
        "From: confirm it explicitly by ticking the box",
        f"/reset?company_id={quote(company_id, safe='')}",
    )
    if refused:
        return refused
    try:
        run_id = lifecycle.reset(company_id, confirm=True)
    except LifecycleError as exc:
        return error_page(request, exc.message, back_to=back_to)
    lifecycle.close_reset_run(run_id)
    started = _started(
        airflow_api.dag_id_for(company_id), lambda: lifecycle.trigger_full_sync(company_id, caller(request))
    )
    return back(request, "reset", company_id, notes=(started,), to=back_to)


# -- helpers --------------------------------------------------------------------------------------


def _confirmation_page(request: Request, company_id: str, template: str, title: str) -> HTMLResponse:
    """The page that says what a destructive action does and asks to confirm it (disconnect, reset)."""
    from sage_sync.reporting import dashboard

    try:
        known, name = dashboard.named_company(company_id)
    except LifecycleError as exc:
        return error_page(request, exc.message)
    return render(request, template, title=title, company=known, name=name)


def _unconfirmed(request: Request, form: ConfirmedAction, message: str, back_to: str) -> Response | None:
    """The refusal of a destructive POST that is not confirmed (CSRF checked first), else None."""
    _check_csrf(request, form.csrf)
    if form.confirm != "yes":
        return error_page(request, message, back_to=back_to)
    return None


def _started(dag_id: str, start: Any) -> str:
    """The banner's note on ``start()`` (a lifecycle trigger): ``started``, or ``not_started`` with
    the reason in the server log only (the action itself is done either way)."""
    from sage_sync.core.errors import AirflowUnavailable

    try:
        log.info("started %s", start())
    except AirflowUnavailable as exc:
        log.warning("could not trigger %s: %s", dag_id, exc)
        return "not_started"
    return "started"


def _company_path(company_id: str) -> str:
    return f"/company/{quote(company_id, safe='')}"


# The dependencies a test or a host app may override: the login, the edit check, the editor.
__all__ = ["app", "current_user", "edit_rights", "editor"]
