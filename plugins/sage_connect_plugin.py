"""Airflow plugin: the "Sage connections" pages, mounted in the api-server at ``/sage``.

A data engineer lists the connected companies by status (with initial-sync progress), connects
a Sage business (Sage's authorise page with a CSRF ``state`` and PKCE, then a choice of business
and first Synced From quarter), disconnects, reconnects, moves Synced From earlier (warning,
confirmation, a fresh Authorise Access, then the ``sage_backfill`` DAG) and resets a company.
All logic is ``sage_sync.lifecycle``'s, shared with the CLI; this file is HTTP and HTML only.

Authentication: Airflow does not authenticate plugin apps (a mounted app inherits none of the
core API's dependencies), so every route resolves the caller from Airflow's own JWT (the
``_token`` cookie the UI login sets, or an ``Authorization: Bearer`` header) with the
api-server's auth manager, and sends a browser without one to Airflow's login page. Changes
also need permission to edit DAGs, and every form carries a CSRF token bound to a cookie.
"""

from __future__ import annotations

import html
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

log = logging.getLogger(__name__)

OAUTH_COOKIE = "sage_oauth"
CSRF_COOKIE = "sage_csrf"
PENDING_MINUTES = 15
STATUS_ORDER = ["needs_reauth", "error", "initial_sync", "active", "disconnected"]

app = FastAPI(title="Sage connections", docs_url=None, redoc_url=None, openapi_url=None)


# -- authentication -------------------------------------------------------------------------------


class _LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


@app.exception_handler(_LoginRequired)
async def _to_login(_: Request, exc: _LoginRequired) -> Response:
    from airflow.api_fastapi.app import get_auth_manager  # noqa: PLC0415

    return RedirectResponse(get_auth_manager().get_url_login(next_url=exc.next_url), status_code=303)


async def current_user(request: Request) -> Any:
    """The Airflow user of this request (JWT from the bearer header or the UI's cookie)."""
    from airflow.api_fastapi.app import get_auth_manager  # noqa: PLC0415
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN  # noqa: PLC0415

    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if token:
        try:
            return await get_auth_manager().get_user_from_token(token)
        except Exception:  # noqa: BLE001 - expired or invalid: log in again
            log.info("sage connections: rejected an invalid or expired Airflow token")
    raise _LoginRequired(str(request.url))


CurrentUser = Annotated[Any, Depends(current_user)]


def _require_editor(user: Any) -> None:
    from airflow.api_fastapi.app import get_auth_manager  # noqa: PLC0415

    if not get_auth_manager().is_authorized_dag(method="PUT", user=user):
        raise HTTPException(status_code=403, detail="editing DAGs is required to change Sage connections")


def _check_csrf(request: Request, token: str) -> None:
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, token or ""):
        raise HTTPException(status_code=400, detail="stale form: reload the page and try again")


# -- page rendering -------------------------------------------------------------------------------


def _base(request: Request) -> str:
    """Where these pages are served: the mount path as the server sees it (``/sage``, or e.g.
    ``/airflow/sage`` when Airflow runs under a sub-path ``base_url``). Every link, redirect and
    cookie path is built from it, never hard-coded."""
    return (request.scope.get("root_path") or "/sage").rstrip("/")


def _home(request: Request) -> str:
    """Airflow's own home page: the parent of this app's mount path."""
    return _base(request).rsplit("/", 1)[0] + "/"


def _page(request: Request, title: str, body: str, *, status: int = 200) -> HTMLResponse:
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 72rem; }}
 table {{ border-collapse: collapse; width: 100%; }}
 td, th {{ border-bottom: 1px solid #ddd; padding: .4rem; text-align: left; }}
 .flag {{ color: #b00; font-weight: bold; }} .msg {{ background: #eef; padding: .6rem; }}
 .err {{ background: #fee; padding: .6rem; }} form.inline {{ display: inline; }}
 .warn {{ background: #fff4d6; padding: .8rem; }}
</style></head><body>
<p><a href="{html.escape(_home(request))}">Airflow</a> &rsaquo; <a href="__BASE__/">Sage connections</a></p>
<h1>{html.escape(title)}</h1>
{body.replace("__CSRF__", html.escape(csrf)).replace("__BASE__", html.escape(_base(request)))}
</body></html>"""
    response = HTMLResponse(doc, status_code=status)
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="lax", path=_base(request))
    return response


def _csrf_field() -> str:
    return '<input type="hidden" name="csrf" value="__CSRF__">'


def _error(request: Request, message: str, status: int = 400) -> HTMLResponse:
    return _page(request, "Refused", f'<p class="err" id="error">{html.escape(message)}</p>'
                 '<p><a href="__BASE__/">Back to Sage connections</a></p>', status=status)


def _back(request: Request, message: str) -> RedirectResponse:
    return RedirectResponse(f"{_base(request)}/?msg={quote(message)}", status_code=303)


def _emissions_cell(quarters: list[dict[str, Any]]) -> str:
    """The latest quarters' kg CO2e and coverage (share of in-scope £ with a factor), a small table."""
    if not quarters:
        return "<small>no emissions yet</small>"
    rows = "".join(
        f"<tr><td>{html.escape(q['quarter'])}</td><td>{q['kgco2e']:,.0f}</td>"
        f"<td>{'-' if q['coverage_share'] is None else format(q['coverage_share'], '.0%')}</td></tr>"
        for q in quarters)
    return f'<table class="emissions"><tr><th>quarter</th><th>kg CO2e</th><th>mapped</th></tr>{rows}</table>'


def _company_row(item: dict[str, Any], emissions: list[dict[str, Any]] | None = None) -> str:
    cid = html.escape(item["company_id"])
    progress = ""
    initial = item.get("initial_sync")
    run = item.get("last_run")
    if initial and initial.get("started_at"):
        from sage_sync.lifecycle import format_duration  # noqa: PLC0415

        progress = f"running for {format_duration(initial['elapsed_seconds'])}"
        if initial["overdue"]:
            progress += ' <span class="flag">not complete after 24 hours</span>'
    if run:
        total = f" of {run['total_reported']}" if run.get("total_reported") is not None else ""
        progress += (f"<br>last {html.escape(run['kind'])} run {html.escape(run['status'])}: "
                     f"{run['pages']} pages, {run['records']}{total} records, started {run['started_at'][:16]}")
    error = f"<br><small>{html.escape(item['last_error'])}</small>" if item.get("last_error") else ""
    actions = []
    if item["status"] != "disconnected":
        actions.append(f'<form class="inline" method="post" action="__BASE__/disconnect">{_csrf_field()}'
                       f'<input type="hidden" name="company_id" value="{cid}">'
                       f'<button id="disconnect-{cid}">Disconnect</button></form>')
    actions.append(f'<a id="reconnect-{cid}" href="__BASE__/authorize?purpose=reconnect&company_id={cid}">'
                   'Reconnect</a>')
    if item["status"] in ("active", "error"):
        actions.append(f'<a id="synced-from-{cid}" href="__BASE__/synced-from?company_id={cid}">Move Synced From</a>')
        actions.append(f'<a id="reset-{cid}" href="__BASE__/reset?company_id={cid}">Reset</a>')
    return (f'<tr id="company-{cid}"><td>{html.escape(item["company_name"])}<br><small>{cid}</small></td>'
            f'<td class="status">{html.escape(item["status"])}{error}</td>'
            f'<td>{html.escape(item["synced_from"])}</td><td>{progress}</td>'
            f'<td id="emissions-{cid}">{_emissions_cell(emissions or [])}</td><td>{" | ".join(actions)}</td></tr>')


# -- routes ---------------------------------------------------------------------------------------


@app.get("/", response_class=HTMLResponse)
def index(request: Request, user: CurrentUser, msg: str | None = None) -> HTMLResponse:
    """Connected companies by status."""
    from sage_sync import lifecycle  # noqa: PLC0415
    from sage_sync.report import latest_quarters  # noqa: PLC0415

    try:
        with lifecycle._warehouse(None) as conn:
            from sage_sync.migrate import ensure_migrated  # noqa: PLC0415

            ensure_migrated(conn)
            report = lifecycle.company_statuses(conn)
            emissions = latest_quarters(conn)
    except lifecycle.LifecycleError as exc:
        return _error(request, str(exc), 503)
    sections = []
    for state in STATUS_ORDER:
        items = [i for i in report if i["status"] == state]
        if not items:
            continue
        rows = "".join(_company_row(i, emissions.get(i["company_id"])) for i in items)
        sections.append(f'<h2 id="status-{state}">{html.escape(state)} ({len(items)})</h2><table>'
                        "<tr><th>Company</th><th>Status</th><th>Synced From</th><th>Progress</th>"
                        "<th>Emissions, latest quarters</th><th></th></tr>"
                        f"{rows}</table>")
    message = f'<p class="msg" id="message">{html.escape(msg)}</p>' if msg else ""
    body = (f'{message}<p><a id="connect" href="__BASE__/authorize?purpose=connect">Connect a Sage business</a></p>'
            + ("".join(sections) or "<p>No company is connected yet.</p>"))
    return _page(request, "Sage connections", body)


@app.get("/authorize")
def authorize(request: Request, user: CurrentUser, purpose: str, company_id: str = "",
              synced_from: str = "") -> Response:
    """Send the browser to Sage's authorise page with a fresh state and PKCE pair."""
    from sage_sync import crypto, lifecycle  # noqa: PLC0415
    from sage_sync.auth import OAuthClient, new_pkce_pair  # noqa: PLC0415
    from sage_sync.config import ConfigError, sage_settings  # noqa: PLC0415

    _require_editor(user)
    if purpose not in ("connect", "reconnect", "backfill"):
        return _error(request, f"unknown purpose {purpose!r}")
    try:
        if purpose == "reconnect":
            with lifecycle._warehouse(None) as conn:
                lifecycle.require_company(conn, company_id)
        if purpose == "backfill":
            lifecycle.prepare_backfill(company_id, synced_from)
        settings = sage_settings()
    except (lifecycle.LifecycleError, ConfigError) as exc:
        return _error(request, str(exc))
    state = secrets.token_urlsafe(24)
    verifier, challenge = new_pkce_pair()
    cookie = crypto.encrypt(json.dumps({"state": state, "verifier": verifier, "purpose": purpose,
                                        "company_id": company_id, "synced_from": synced_from,
                                        "expires": time.time() + 600}))
    response = RedirectResponse(OAuthClient(settings).authorization_url(state, code_challenge=challenge),
                                status_code=303)
    response.set_cookie(OAUTH_COOKIE, cookie, httponly=True, samesite="lax", path=_base(request), max_age=600)
    return response


@app.get("/callback")
def callback(request: Request, user: CurrentUser, code: str = "", state: str = "", error: str = "") -> Response:
    """Sage's redirect: check the state, exchange the code, then act on the flow's purpose."""
    from sage_sync import crypto, lifecycle  # noqa: PLC0415

    _require_editor(user)
    try:
        flow = json.loads(crypto.decrypt(request.cookies.get(OAUTH_COOKIE, "")))
    except Exception:  # noqa: BLE001 - missing, tampered or from another key
        return _error(request, "no authorisation in progress in this browser: start again")
    if not state or not secrets.compare_digest(state, flow.get("state", "")) or flow["expires"] < time.time():
        return _error(request, "the authorisation's state does not match or expired: start again")
    if error or not code:
        return _error(request, f"Sage did not authorise access ({error or 'no code'})")
    purpose, company_id = flow["purpose"], flow["company_id"]
    try:
        if purpose == "reconnect":
            company = lifecycle.reconnect(company_id, code, flow["verifier"])
            response: Response = _back(request, f"Reconnected {company.company_name}: the next run imports "
                                       "every change since its last successful sync")
        elif purpose == "backfill":
            quarter = lifecycle.authorise_backfill(company_id, flow["synced_from"], code, flow["verifier"])
            run_id = _trigger(lifecycle.BACKFILL_DAG_ID, lifecycle.backfill_conf(company_id, quarter), user)
            response = _back(request, f"Backfill of {company_id} to {quarter} started ({run_id}); Synced From moves "
                             "when it succeeds")
        else:
            auth = lifecycle.exchange(code, flow["verifier"])
            pending = _save_pending(auth)
            response = RedirectResponse(f"{_base(request)}/choose?pending={pending}", status_code=303)
    except lifecycle.LifecycleError as exc:
        response = _error(request, str(exc))
    response.delete_cookie(OAUTH_COOKIE, path=_base(request))
    return response


@app.get("/choose", response_class=HTMLResponse)
def choose(request: Request, user: CurrentUser, pending: str) -> HTMLResponse:
    """Pick the business to connect and its first Synced From quarter."""
    from sage_sync import lifecycle  # noqa: PLC0415
    from sage_sync.quarters import Quarter  # noqa: PLC0415

    found = _load_pending(pending)
    if found is None:
        return _error(request, "this authorisation expired or was used: connect again")
    _, businesses = found
    default = str(Quarter.containing(datetime.now(UTC).date()).previous().previous().previous())
    options = "".join(f'<option value="{html.escape(b["id"])}">{html.escape(lifecycle.business_name(b))}</option>'
                      for b in businesses)
    body = (f'<form method="post" action="__BASE__/register">{_csrf_field()}'
            f'<input type="hidden" name="pending" value="{html.escape(pending)}">'
            f'<p><label>Business <select name="business_id" id="business">{options}</select></label></p>'
            f'<p><label>Synced From (first quarter to import) <input name="synced_from" id="synced_from" '
            f'value="{default}" pattern="[0-9]{{4}}-Q[1-4]" required></label></p>'
            '<p><button id="register">Connect</button></p></form>')
    return _page(request, "Connect a Sage business", body)


@app.post("/register")
def register_business(request: Request, user: CurrentUser, pending: str = Form(...), business_id: str = Form(...),
                      synced_from: str = Form(...), csrf: str = Form("")
                      ) -> Response:
    """Register the chosen business; its daily DAG appears at the next parse."""
    from sage_sync import lifecycle  # noqa: PLC0415

    _require_editor(user)
    _check_csrf(request, csrf)
    found = _load_pending(pending)
    if found is None:
        return _error(request, "this authorisation expired or was used: connect again")
    auth_tokens, businesses = found
    try:
        quarter = lifecycle.parse_quarter(synced_from)
        company = lifecycle.register(lifecycle.Authorisation(auth_tokens, businesses), business_id, quarter)
    except lifecycle.LifecycleError as exc:
        return _error(request, str(exc))
    _drop_pending(pending)
    return _back(request, f"Connected {company.company_name} from {company.synced_from_quarter}: its DAG "
                 f"sage_sync__{company.company_id} appears within a minute")


@app.post("/disconnect")
def disconnect(request: Request, user: CurrentUser, company_id: str = Form(...), csrf: str = Form("")) -> Response:
    """Disconnect: no more imports, grant revoked, DAG paused, data kept."""
    from sage_sync import lifecycle  # noqa: PLC0415

    _require_editor(user)
    _check_csrf(request, csrf)
    try:
        done = lifecycle.disconnect(company_id)
    except lifecycle.LifecycleError as exc:
        return _error(request, str(exc))
    revoked = "grant revoked at Sage" if done.token_revoked else f"grant not revoked ({done.revoke_error})"
    return _back(request, f"Disconnected {done.company.company_name}: {revoked}; data kept")


@app.get("/synced-from", response_class=HTMLResponse)
def synced_from_form(request: Request, user: CurrentUser, company_id: str, synced_from: str = "") -> HTMLResponse:
    """Ask for the earlier quarter; once valid, warn and ask for confirmation."""
    from sage_sync import lifecycle, sync  # noqa: PLC0415

    cid = html.escape(company_id)
    if synced_from:
        try:
            company, quarter = lifecycle.prepare_backfill(company_id, synced_from)
        except lifecycle.LifecycleError as exc:
            return _error(request, str(exc))
        start, end = sync.backfill_window(company, quarter)
        body = (f'<p class="warn" id="warning">Moving Synced From of {html.escape(company.company_name)} from '
                f"{company.synced_from_quarter} to {quarter} imports every document dated {start} to {end}. "
                "You will authorise access at Sage again; the backfill then runs as the sage_backfill DAG, "
                "and Synced From moves only when it succeeds.</p>"
                f'<p><a id="confirm" href="__BASE__/authorize?purpose=backfill&company_id={cid}'
                f'&synced_from={quarter}">I understand: authorise and start the backfill</a> | '
                '<a href="__BASE__/">Cancel</a></p>')
        return _page(request, "Move Synced From earlier", body)
    body = (f'<form method="get" action="__BASE__/synced-from"><input type="hidden" name="company_id" value="{cid}">'
            '<p><label>New Synced From <input name="synced_from" id="synced_from" placeholder="2024-Q1" '
            'required></label></p><p><button id="check">Continue</button></p></form>')
    return _page(request, "Move Synced From earlier", body)


@app.get("/reset", response_class=HTMLResponse)
def reset_form(request: Request, user: CurrentUser, company_id: str) -> HTMLResponse:
    """Explain the reset and ask for explicit confirmation."""
    cid = html.escape(company_id)
    body = (f'<p class="warn">Reset wipes every imported record of {cid} (raw versions, deletions, quarantine) '
            "and its watermarks, then re-imports everything from its Synced From.</p>"
            f'<form method="post" action="__BASE__/reset">{_csrf_field()}'
            f'<input type="hidden" name="company_id" value="{cid}">'
            '<p><label><input type="checkbox" name="confirm" value="yes" id="confirm"> I understand the data is '
            'wiped and re-imported</label></p><p><button id="do-reset">Reset</button></p></form>')
    return _page(request, "Reset a company", body)


@app.post("/reset")
def reset(request: Request, user: CurrentUser, company_id: str = Form(...), confirm: str = Form(""),
          csrf: str = Form("")) -> Response:
    """Wipe, then trigger the company's DAG for the full sync."""
    from sage_sync import lifecycle  # noqa: PLC0415

    _require_editor(user)
    _check_csrf(request, csrf)
    try:
        run_id = lifecycle.reset(company_id, confirm=confirm == "yes")
    except lifecycle.LifecycleError as exc:
        return _error(request, str(exc))
    lifecycle.close_reset_run(run_id)
    dag_run = _trigger(lifecycle.dag_id_for(company_id), None, user)
    return _back(request, f"Reset {company_id}: data wiped; full sync started ({dag_run})")


# -- helpers --------------------------------------------------------------------------------------


def _trigger(dag_id: str, conf: dict[str, Any] | None, user: Any) -> str:
    """Trigger a DAG run in-process (the api-server has the metadata DB) and unpause the DAG."""
    from airflow.api.common.trigger_dag import trigger_dag  # noqa: PLC0415
    from airflow.utils.types import DagRunTriggeredByType  # noqa: PLC0415

    from sage_sync import lifecycle  # noqa: PLC0415

    lifecycle.set_dag_paused(dag_id, paused=False)
    run_id = f"manual__sage_{datetime.now(UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"
    try:
        trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.UI, run_id=run_id, conf=conf or {},
                    triggering_user_name=getattr(user, "get_name", lambda: None)())
    except Exception as exc:  # noqa: BLE001 - tell the user; the action itself is done
        log.warning("could not trigger %s: %s", dag_id, exc)
        return f"trigger of {dag_id} failed: {exc}; trigger it by hand"
    return f"{dag_id} run {run_id}"


def _save_pending(auth: Any) -> str:
    from psycopg.types.json import Jsonb  # noqa: PLC0415

    from sage_sync import crypto, lifecycle  # noqa: PLC0415

    pending = secrets.token_urlsafe(24)
    tokens = auth.tokens
    blob = crypto.encrypt(json.dumps({
        "access_token": tokens.access_token, "refresh_token": tokens.refresh_token,
        "access_expires_at": tokens.access_expires_at.isoformat(),
        "refresh_expires_at": tokens.refresh_expires_at.isoformat() if tokens.refresh_expires_at else None}))
    with lifecycle._warehouse(None) as conn:
        conn.execute("delete from sage_control.pending_authorisations "
                     "where created_at < now() - make_interval(mins => %s)", (PENDING_MINUTES,))
        conn.execute("insert into sage_control.pending_authorisations (pending_id, tokens_enc, businesses) "
                     "values (%s, %s, %s)", (pending, blob, Jsonb(auth.businesses)))
        conn.commit()
    return pending


def _load_pending(pending: str) -> tuple[Any, list[dict[str, Any]]] | None:
    from sage_sync import crypto, lifecycle  # noqa: PLC0415
    from sage_sync.tokens import TokenSet  # noqa: PLC0415

    with lifecycle._warehouse(None) as conn:
        row = conn.execute("select tokens_enc, businesses from sage_control.pending_authorisations "
                           "where pending_id = %s and created_at >= now() - make_interval(mins => %s)",
                           (pending, PENDING_MINUTES)).fetchone()
    if row is None:
        return None
    data = json.loads(crypto.decrypt(row[0]))
    tokens = TokenSet(
        access_token=data["access_token"], refresh_token=data["refresh_token"],
        access_expires_at=datetime.fromisoformat(data["access_expires_at"]),
        refresh_expires_at=datetime.fromisoformat(data["refresh_expires_at"]) if data["refresh_expires_at"] else None)
    return tokens, row[1]


def _drop_pending(pending: str) -> None:
    from sage_sync import lifecycle  # noqa: PLC0415

    with lifecycle._warehouse(None) as conn:
        conn.execute("delete from sage_control.pending_authorisations where pending_id = %s", (pending,))
        conn.commit()


class SageConnectPlugin(AirflowPlugin):
    """Mounts the Sage connections pages at /sage and links them from Airflow's navigation."""

    name = "sage_connect"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": app, "url_prefix": "/sage", "name": "Sage connections"}]
    # No leading slash: the UI resolves the link against its base URL, so a sub-path base_url works.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": "Sage connections", "href": "sage/", "destination": "nav", "category": "admin"}]


__all__ = ["SageConnectPlugin", "app"]
