"""Airflow plugin: the "Sage connections" pages, mounted in the api-server at ``/sage``.

A data engineer lists the connected companies by status (with initial-sync progress), connects
a Sage business (Sage's authorise page with a CSRF ``state`` and PKCE, then a choice of business
and first Synced From quarter), disconnects, reconnects, moves Synced From earlier (warning,
confirmation, a fresh Authorise Access, then the ``sage_backfill`` DAG) and resets a company.
All logic is the lifecycle layer's (``sage_sync.lifecycle``), the same functions the CLI calls; this
file is HTTP and HTML only: no SQL, no token handling, no Airflow call of its own.

Authentication: Airflow does not authenticate plugin apps (a mounted app inherits none of the
core API's dependencies), so every route resolves the caller from Airflow's own JWT (the
``_token`` cookie the UI login sets, or an ``Authorization: Bearer`` header) with the
api-server's auth manager, and sends a browser without one to Airflow's login page. Changes
also need permission to edit DAGs, and every form carries a CSRF token bound to a cookie.
"""

from __future__ import annotations

import html
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sage_sync.core.errors import LoginRequired
from sage_sync.web.access import CurrentUser, caller, current_user
from sage_sync.web.access import check_csrf as _check_csrf
from sage_sync.web.access import require_editor as _require_editor
from sage_sync.web.pages import back, base_path, company_row, csrf_field, error_page, page

log = logging.getLogger(__name__)

OAUTH_COOKIE = "sage_oauth"

app = FastAPI(title="Sage connections", docs_url=None, redoc_url=None, openapi_url=None)


# -- authentication -------------------------------------------------------------------------------


@app.exception_handler(LoginRequired)
async def _to_login(_: Request, exc: LoginRequired) -> Response:
    from airflow.api_fastapi.app import get_auth_manager  # noqa: PLC0415

    return RedirectResponse(get_auth_manager().get_url_login(next_url=exc.next_url), status_code=303)


# -- routes ---------------------------------------------------------------------------------------


@app.get("/", response_class=HTMLResponse)
def index(request: Request, user: CurrentUser, msg: str | None = None) -> HTMLResponse:  # noqa: ARG001 - the login dependency
    """Connected companies by status."""
    from sage_sync.core.errors import LifecycleError  # noqa: PLC0415
    from sage_sync.lifecycle import status  # noqa: PLC0415

    try:
        report = status.report(migrate=True)
    except LifecycleError as exc:
        return error_page(request, str(exc), 503)
    sections = []
    for state in status.DISPLAY_ORDER:
        items = [i for i in report if i["status"] == state]
        if not items:
            continue
        rows = "".join(company_row(i) for i in items)
        sections.append(f'<h2 id="status-{state}">{html.escape(state)} ({len(items)})</h2><table>'
                        "<tr><th>Company</th><th>Status</th><th>Synced From</th><th>Progress</th><th></th></tr>"
                        f"{rows}</table>")
    message = f'<p class="msg" id="message">{html.escape(msg)}</p>' if msg else ""
    body = (f'{message}<p><a id="connect" href="__BASE__/authorize?purpose=connect">Connect a Sage business</a></p>'
            + ("".join(sections) or "<p>No company is connected yet.</p>"))
    return page(request, "Sage connections", body)


@app.get("/authorize")
def authorize(request: Request, user: CurrentUser, purpose: str, company_id: str = "",
              synced_from: str = "") -> Response:
    """Send the browser to Sage's authorise page with a fresh state and PKCE pair."""
    from sage_sync.lifecycle import authorisation  # noqa: PLC0415
    from sage_sync.lifecycle import connections as lifecycle  # noqa: PLC0415

    _require_editor(user)
    if purpose not in ("connect", "reconnect", "backfill"):
        return error_page(request, f"unknown purpose {purpose!r}")
    try:
        if purpose == "reconnect":
            lifecycle.require_known(company_id)
        if purpose == "backfill":
            lifecycle.prepare_backfill(company_id, synced_from)
        start = authorisation.begin()
    except lifecycle.LifecycleError as exc:
        return error_page(request, str(exc))
    cookie = authorisation.seal_flow(start, purpose=purpose, company_id=company_id, synced_from=synced_from)
    response = RedirectResponse(start.url, status_code=303)
    response.set_cookie(OAUTH_COOKIE, cookie, httponly=True, samesite="lax", path=base_path(request),
                        max_age=authorisation.FLOW_SECONDS)
    return response


@app.get("/callback")
def callback(request: Request, user: CurrentUser, code: str = "", state: str = "", error: str = "") -> Response:
    """Sage's redirect: check the state, exchange the code, then act on the flow's purpose."""
    from sage_sync.lifecycle import authorisation  # noqa: PLC0415
    from sage_sync.lifecycle import connections as lifecycle  # noqa: PLC0415

    _require_editor(user)
    try:
        flow = authorisation.open_flow(request.cookies.get(OAUTH_COOKIE, ""), state)
    except lifecycle.LifecycleError as exc:
        return error_page(request, str(exc))
    if error or not code:
        return error_page(request, f"Sage did not authorise access ({error or 'no code'})")
    purpose, company_id = flow["purpose"], flow["company_id"]
    try:
        if purpose == "reconnect":
            company = lifecycle.reconnect(company_id, code, flow["verifier"])
            response: Response = back(request, f"Reconnected {company.company_name}: the next run imports "
                                       "every change since its last successful sync")
        elif purpose == "backfill":
            quarter = lifecycle.authorise_backfill(company_id, flow["synced_from"], code, flow["verifier"])
            run_id = _started(lifecycle.BACKFILL_DAG_ID, lambda: lifecycle.start_backfill(company_id, quarter,
                                                                                          caller(request)))
            response = back(request, f"Backfill of {company_id} to {quarter} started ({run_id}); Synced From moves "
                             "when it succeeds")
        else:
            auth = lifecycle.exchange(code, flow["verifier"])
            pending = authorisation.hold(auth)
            response = RedirectResponse(f"{base_path(request)}/choose?pending={pending}", status_code=303)
    except lifecycle.LifecycleError as exc:
        response = error_page(request, str(exc))
    response.delete_cookie(OAUTH_COOKIE, path=base_path(request))
    return response


@app.get("/choose", response_class=HTMLResponse)
def choose(request: Request, user: CurrentUser, pending: str) -> HTMLResponse:  # noqa: ARG001 - the login dependency
    """Pick the business to connect and its first Synced From quarter."""
    from sage_sync.core.quarters import QUARTER_PATTERN, Quarter  # noqa: PLC0415
    from sage_sync.lifecycle import authorisation  # noqa: PLC0415

    found = authorisation.held(pending)
    if found is None:
        return error_page(request, "this authorisation expired or was used: connect again")
    businesses = found.businesses
    default = str(Quarter.containing(datetime.now(UTC).date()).previous().previous().previous())
    options = "".join(f'<option value="{html.escape(b["id"])}">{html.escape(authorisation.business_name(b))}</option>'
                      for b in businesses)
    body = (f'<form method="post" action="__BASE__/register">{csrf_field()}'
            f'<input type="hidden" name="pending" value="{html.escape(pending)}">'
            f'<p><label>Business <select name="business_id" id="business">{options}</select></label></p>'
            f'<p><label>Synced From (first quarter to import) <input name="synced_from" id="synced_from" '
            f'value="{default}" pattern="{QUARTER_PATTERN}" required></label></p>'
            '<p><button id="register">Connect</button></p></form>')
    return page(request, "Connect a Sage business", body)


@app.post("/register")
def register_business(request: Request, user: CurrentUser, pending: str = Form(...), business_id: str = Form(...),
                      synced_from: str = Form(...), csrf: str = Form("")
                      ) -> Response:
    """Register the chosen business; its daily DAG appears at the next parse."""
    from sage_sync.lifecycle import authorisation  # noqa: PLC0415
    from sage_sync.lifecycle import connections as lifecycle  # noqa: PLC0415

    _require_editor(user)
    _check_csrf(request, csrf)
    found = authorisation.held(pending)
    if found is None:
        return error_page(request, "this authorisation expired or was used: connect again")
    try:
        quarter = lifecycle.parse_quarter(synced_from)
        company = lifecycle.register(found, business_id, quarter)
    except lifecycle.LifecycleError as exc:
        return error_page(request, str(exc))
    authorisation.release(pending)
    return back(request, f"Connected {company.company_name} from {company.synced_from_quarter}: its DAG "
                 f"sage_sync__{company.company_id} appears within a minute")


@app.post("/disconnect")
def disconnect(request: Request, user: CurrentUser, company_id: str = Form(...), csrf: str = Form("")) -> Response:
    """Disconnect: no more imports, grant revoked, DAG paused, data kept."""
    from sage_sync.lifecycle import connections as lifecycle  # noqa: PLC0415

    _require_editor(user)
    _check_csrf(request, csrf)
    try:
        done = lifecycle.disconnect(company_id)
    except lifecycle.LifecycleError as exc:
        return error_page(request, str(exc))
    revoked = "grant revoked at Sage" if done.token_revoked else f"grant not revoked ({done.revoke_error})"
    return back(request, f"Disconnected {done.company.company_name}: {revoked}; data kept")


@app.get("/synced-from", response_class=HTMLResponse)
def synced_from_form(request: Request, user: CurrentUser, company_id: str, synced_from: str = "") -> HTMLResponse:  # noqa: ARG001 - the login dependency
    """Ask for the earlier quarter; once valid, warn and ask for confirmation."""
    from sage_sync.lifecycle import connections as lifecycle  # noqa: PLC0415

    cid = html.escape(company_id)
    if synced_from:
        try:
            company, quarter = lifecycle.prepare_backfill(company_id, synced_from)
        except lifecycle.LifecycleError as exc:
            return error_page(request, str(exc))
        start, end = lifecycle.backfill_window(company, quarter)
        body = (f'<p class="warn" id="warning">Moving Synced From of {html.escape(company.company_name)} from '
                f"{company.synced_from_quarter} to {quarter} imports every document dated {start} to {end}. "
                "You will authorise access at Sage again; the backfill then runs as the sage_backfill DAG, "
                "and Synced From moves only when it succeeds.</p>"
                f'<p><a id="confirm" href="__BASE__/authorize?purpose=backfill&company_id={cid}'
                f'&synced_from={quarter}">I understand: authorise and start the backfill</a> | '
                '<a href="__BASE__/">Cancel</a></p>')
        return page(request, "Move Synced From earlier", body)
    body = (f'<form method="get" action="__BASE__/synced-from"><input type="hidden" name="company_id" value="{cid}">'
            '<p><label>New Synced From <input name="synced_from" id="synced_from" placeholder="2024-Q1" '
            'required></label></p><p><button id="check">Continue</button></p></form>')
    return page(request, "Move Synced From earlier", body)


@app.get("/reset", response_class=HTMLResponse)
def reset_form(request: Request, user: CurrentUser, company_id: str) -> HTMLResponse:  # noqa: ARG001 - the login dependency
    """Explain the reset and ask for explicit confirmation."""
    cid = html.escape(company_id)
    body = (f'<p class="warn">Reset wipes every imported record of {cid} (raw versions, deletions, quarantine) '
            "and its watermarks, then re-imports everything from its Synced From.</p>"
            f'<form method="post" action="__BASE__/reset">{csrf_field()}'
            f'<input type="hidden" name="company_id" value="{cid}">'
            '<p><label><input type="checkbox" name="confirm" value="yes" id="confirm"> I understand the data is '
            'wiped and re-imported</label></p><p><button id="do-reset">Reset</button></p></form>')
    return page(request, "Reset a company", body)


@app.post("/reset")
def reset(request: Request, user: CurrentUser, company_id: str = Form(...), confirm: str = Form(""),
          csrf: str = Form("")) -> Response:
    """Wipe, then trigger the company's DAG for the full sync."""
    from sage_sync.lifecycle import connections as lifecycle  # noqa: PLC0415

    _require_editor(user)
    _check_csrf(request, csrf)
    try:
        run_id = lifecycle.reset(company_id, confirm=confirm == "yes")
    except lifecycle.LifecycleError as exc:
        return error_page(request, str(exc))
    lifecycle.close_reset_run(run_id)
    dag_run = _started(lifecycle.dag_id_for(company_id),
                       lambda: lifecycle.trigger_full_sync(company_id, caller(request)))
    return back(request, f"Reset {company_id}: data wiped; full sync started ({dag_run})")


# -- helpers --------------------------------------------------------------------------------------


def _started(dag_id: str, start: Any) -> str:
    """What ``start()`` (a lifecycle trigger) started, or why it did not: the action itself is done."""
    from sage_sync.core.errors import AirflowUnavailable  # noqa: PLC0415

    try:
        return str(start())
    except AirflowUnavailable as exc:
        log.warning("could not trigger %s: %s", dag_id, exc)
        return f"trigger of {dag_id} failed: {exc}; trigger it by hand"


__all__ = ["app", "current_user"]  # current_user: the dependency a test or a host app may override
