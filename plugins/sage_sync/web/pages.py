"""The HTML of the "Sage connections" pages: one layout, the company rows, refusals and redirects.

Every link, redirect and cookie path is built from the mount path the server reports, so the
pages work under a sub-path ``base_url`` as well as at ``/sage``.
"""

from __future__ import annotations

import html
import secrets
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse

from sage_sync.core.status import CompanyStatus

CSRF_COOKIE = "sage_csrf"


def base_path(request: Request) -> str:
    """Where these pages are served: the mount path as the server sees it (``/sage``, or e.g.
    ``/airflow/sage`` when Airflow runs under a sub-path ``base_url``). Every link, redirect and
    cookie path is built from it, never hard-coded."""
    return (request.scope.get("root_path") or "/sage").rstrip("/")


def home_path(request: Request) -> str:
    """Airflow's own home page: the parent of this app's mount path."""
    return base_path(request).rsplit("/", 1)[0] + "/"


def page(request: Request, title: str, body: str, *, status: int = 200) -> HTMLResponse:
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
<p><a href="{html.escape(home_path(request))}">Airflow</a> &rsaquo; <a href="__BASE__/">Sage connections</a></p>
<h1>{html.escape(title)}</h1>
{body.replace("__CSRF__", html.escape(csrf)).replace("__BASE__", html.escape(base_path(request)))}
</body></html>"""
    response = HTMLResponse(doc, status_code=status)
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="lax", path=base_path(request))
    return response


def csrf_field() -> str:
    return '<input type="hidden" name="csrf" value="__CSRF__">'


def error_page(request: Request, message: str, status: int = 400) -> HTMLResponse:
    return page(request, "Refused", f'<p class="err" id="error">{html.escape(message)}</p>'
                 '<p><a href="__BASE__/">Back to Sage connections</a></p>', status=status)


def back(request: Request, message: str) -> RedirectResponse:
    return RedirectResponse(f"{base_path(request)}/?msg={quote(message)}", status_code=303)


def company_row(item: dict[str, Any]) -> str:
    cid = html.escape(item["company_id"])
    progress = ""
    initial = item.get("initial_sync")
    run = item.get("last_run")
    if initial and initial.get("started_at"):
        from sage_sync.lifecycle.status import format_duration  # noqa: PLC0415

        progress = f"running for {format_duration(initial['elapsed_seconds'])}"
        if initial["overdue"]:
            progress += ' <span class="flag">not complete after 24 hours</span>'
    if run:
        total = f" of {run['total_reported']}" if run.get("total_reported") is not None else ""
        progress += (f"<br>last {html.escape(run['kind'])} run {html.escape(run['status'])}: "
                     f"{run['pages']} pages, {run['records']}{total} records, started {run['started_at'][:16]}")
    error = f"<br><small>{html.escape(item['last_error'])}</small>" if item.get("last_error") else ""
    actions = []
    if item["status"] != CompanyStatus.DISCONNECTED:
        actions.append(f'<form class="inline" method="post" action="__BASE__/disconnect">{csrf_field()}'
                       f'<input type="hidden" name="company_id" value="{cid}">'
                       f'<button id="disconnect-{cid}">Disconnect</button></form>')
    actions.append(f'<a id="reconnect-{cid}" href="__BASE__/authorize?purpose=reconnect&company_id={cid}">'
                   'Reconnect</a>')
    if item["status"] in (CompanyStatus.ACTIVE, CompanyStatus.ERROR):
        actions.append(f'<a id="synced-from-{cid}" href="__BASE__/synced-from?company_id={cid}">Move Synced From</a>')
        actions.append(f'<a id="reset-{cid}" href="__BASE__/reset?company_id={cid}">Reset</a>')
    return (f'<tr id="company-{cid}"><td>{html.escape(item["company_name"])}<br><small>{cid}</small></td>'
            f'<td class="status">{html.escape(item["status"])}{error}</td>'
            f'<td>{html.escape(item["synced_from"])}</td><td>{progress}</td><td>{" | ".join(actions)}</td></tr>')
