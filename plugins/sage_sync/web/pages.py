"""Rendering the "Sage connections" pages: Jinja2 templates (``web/templates/``) with autoescape.

Every value reaches the HTML through a template, escaped by Jinja2 (``select_autoescape`` turns it
on for ``.html``), never through string formatting. Every link, redirect and cookie path is built
from the mount path the server reports, so the pages work under a sub-path ``base_url`` as well as
at ``/sage``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from sage_sync.web.access import CSRF_COOKIE

TEMPLATES = Path(__file__).with_name("templates")
env = Environment(
    loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(), trim_blocks=True, lstrip_blocks=True
)


def _when(value: datetime | str | None) -> str:
    """``2026-12-02 03:10 UTC``, the form Airflow's UI shows times in; ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: int | None) -> str:
    from sage_sync.lifecycle.status import format_duration  # noqa: PLC0415

    return format_duration(seconds)


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}%"


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


env.filters.update(when=_when, duration=_duration, percent=_percent, n=_number)


def base_path(request: Request) -> str:
    """Where these pages are served: the mount path as the server sees it (``/sage``, or e.g.
    ``/airflow/sage`` when Airflow runs under a sub-path ``base_url``). Every link, redirect and
    cookie path is built from it, never hard-coded."""
    return (request.scope.get("root_path") or "/sage").rstrip("/")


def home_path(request: Request) -> str:
    """Airflow's own home page: the parent of this app's mount path."""
    return base_path(request).rsplit("/", 1)[0] + "/"


def render(request: Request, template: str, *, title: str, status: int = 200, **context: Any) -> HTMLResponse:
    """``template`` with the page's common context (paths, CSRF token, title); sets the CSRF cookie."""
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    html = env.get_template(template).render(
        base=base_path(request), airflow=home_path(request), csrf=csrf, title=title, **context
    )
    response = HTMLResponse(html, status_code=status)
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="lax", path=base_path(request))
    return response


def error_page(request: Request, message: str, status: int = 400, *, back_to: str | None = None) -> HTMLResponse:
    """A refusal in the page's words, with the way back."""
    return render(request, "error.html", title="Not done", message=message, status=status, back_to=back_to)


def back(request: Request, message: str, *, to: str = "/") -> RedirectResponse:
    """Back to a page (the dashboard by default) with a message for its banner."""
    return RedirectResponse(f"{base_path(request)}{to}?msg={quote(message)}", status_code=303)
