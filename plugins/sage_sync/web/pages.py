"""Rendering the "Sage connections" pages: Jinja2 templates (``web/templates/``) with autoescape.

Every value reaches the HTML through a template, escaped by Jinja2 (``select_autoescape`` turns it
on for ``.html``), never through string formatting. Every link, redirect and cookie path is built
from the mount path the server reports, so the pages work under a sub-path ``base_url`` as well as
at ``/sage``.

The banner after an action is one of :data:`MESSAGES` with :data:`NOTES`, named by key in the
redirect (``?msg=disconnected&company_id=...&note=revoked``) and filled from the warehouse (the
company's name): never text from the URL, which anyone can put in a link and which the page
would show as its own words. Cookies are ``Secure`` when the pages are served over HTTPS.

The read side and Airflow's names are imported inside the functions that use them, as in
``web.app``: Airflow loads the pages with the plugins in processes that never render one.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from sage_sync.core.quarters import QUARTER_PATTERN
from sage_sync.web.access import CSRF_COOKIE, is_https

TEMPLATES = Path(__file__).with_name("templates")


def _finalize(value: Any) -> Any:
    """What a template prints for a value: None reads ``-``, never Python's ``None``."""
    return "-" if value is None else value


env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(),
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_finalize,
)


def _when(value: datetime | str | None) -> str:
    """``2026-12-02 03:10 UTC``, the form Airflow's UI shows times in; ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: int | None) -> str:
    from sage_sync.reporting.status import format_duration

    return format_duration(seconds)


def _percent(share: float | None) -> str:
    # 99.6 % of the streams is not "100%" while one still reads: round down near the end.
    if share is None:
        return "-"
    shown = round(share * 100)
    return f"{99 if shown == 100 and share < 1 else shown}%"


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _status(status: str) -> str:
    from sage_sync.reporting.status import status_label

    return status_label(status)


env.filters.update(when=_when, duration=_duration, percent=_percent, n=_number, status=_status)


def base_path(request: Request) -> str:
    """Where these pages are served: the mount path as the server sees it (``/sage``, or e.g.
    ``/airflow/sage`` when Airflow runs under a sub-path ``base_url``). Every link, redirect and
    cookie path is built from it, never hard-coded."""
    return (request.scope.get("root_path") or "/sage").rstrip("/")


def home_path(request: Request) -> str:
    """Airflow's own home page: the parent of this app's mount path."""
    return base_path(request).rsplit("/", 1)[0] + "/"


def set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int | None = None) -> None:
    """One of the pages' cookies: HttpOnly, SameSite=Lax, the mount path, ``Secure`` under HTTPS."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
        path=base_path(request),
        max_age=max_age,
    )


def delete_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path=base_path(request), secure=is_https(request), httponly=True, samesite="lax")


def render(request: Request, template: str, *, title: str, status: int = 200, **context: Any) -> HTMLResponse:
    """``template`` with the page's common context (paths, CSRF token, title, the banner named by
    ``?msg=``); sets the CSRF cookie."""
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    context.setdefault("msg", banner(request))
    html = env.get_template(template).render(
        base=base_path(request), airflow=home_path(request), csrf=csrf, title=title, **context
    )
    response = HTMLResponse(html, status_code=status)
    if request.cookies.get(CSRF_COOKIE) != csrf:
        set_cookie(request, response, CSRF_COOKIE, csrf)
    return response


def error_page(request: Request, message: str, status: int = 400, *, back_to: str | None = None) -> HTMLResponse:
    """A refusal in the page's words, with the way back."""
    return render(request, "error.html", title="Not done", message=message, status=status, back_to=back_to)


# What the pages say after an action: {name} is the company's name from the warehouse, {quarter}
# a quarter (checked against the pattern), {dag_id} the company's DAG. Nothing else is filled in.
MESSAGES = {
    "connected": "Connected {name} from {quarter}: its DAG {dag_id} appears within a minute",
    "reconnected": "Reconnected {name}",
    "disconnected": "Disconnected {name}",
    "backfill": "Backfill of {name} to {quarter} authorised; Synced From moves when it succeeds",
    "reset": "Reset {name}: data wiped",
    "kept_synced_from": "Re-authorised {name}, which was connected already: it keeps Synced From {synced_from} "
    "(you chose {quarter}; documents already imported stay)",
    "kept_synced_from_move": "Re-authorised {name}, which was connected already: it keeps Synced From "
    "{synced_from}. To import from {quarter}, move Synced From earlier: a backfill, confirm it below",
}
NOTES = {
    "revoked": "grant revoked at Sage",
    "not_revoked": "grant not revoked at Sage (the server log says why); its tokens are deleted here",
    "paused": "DAG paused",
    "not_paused": "DAG not paused in Airflow (the server log says why); its runs skip anyway",
    "not_unpaused": "{dag_id} could not be unpaused in Airflow (the server log says why): unpause it there",
    "data_kept": "data kept",
    "started": "{run} started",
    "catch_up_started": "the catch-up run started: it imports every change since the last successful sync",
    "catch_up_not_started": "Airflow did not take the catch-up run (the server log says why): "
    "the next daily run imports every change since the last successful sync",
    "not_started": "Airflow did not take the run (the server log says why): trigger it by hand in Airflow",
}
_RUNS = {"backfill": "the backfill run", "reset": "full sync"}


def banner(request: Request) -> str | None:
    """The banner ``?msg=`` names, from :data:`MESSAGES` and :data:`NOTES` only; None for anything else."""
    from sage_sync.core.errors import LifecycleError
    from sage_sync.orchestration.airflow_api import dag_id_for
    from sage_sync.reporting import dashboard

    key = request.query_params.get("msg", "")
    if key not in MESSAGES:
        return None
    company_id = request.query_params.get("company_id", "")
    try:
        company, name = dashboard.named_company(company_id)
    except LifecycleError:  # not a company of ours: say nothing rather than echo the id
        return None
    quarter = request.query_params.get("quarter", "")
    if not re.fullmatch(QUARTER_PATTERN, quarter):
        quarter = company.synced_from_quarter
    values = {
        "name": name,
        "quarter": quarter,
        "synced_from": company.synced_from_quarter,
        "dag_id": dag_id_for(company.company_id),
        "run": _RUNS.get(key, ""),
    }
    notes = [NOTES[n].format(**values) for n in request.query_params.getlist("note") if n in NOTES]
    return "; ".join([MESSAGES[key].format(**values), *notes])


def back(
    request: Request,
    message: str,
    company_id: str,
    *,
    notes: tuple[str, ...] = (),
    quarter: str | None = None,
    to: str = "/",
) -> RedirectResponse:
    """Back to a page (the dashboard by default) with the banner :data:`MESSAGES` ``[message]``."""
    if message not in MESSAGES or not set(notes) <= NOTES.keys():
        raise ValueError(f"not one of the pages' messages: {message} {notes}")  # a bug here, not user input
    query = [("msg", message), ("company_id", company_id), *(("note", n) for n in notes)]
    if quarter:
        query.append(("quarter", quarter))
    separator = "&" if "?" in to else "?"  # ``to`` may carry its own query (a form to fill in)
    return RedirectResponse(f"{base_path(request)}{to}{separator}{urlencode(query)}", status_code=303)
