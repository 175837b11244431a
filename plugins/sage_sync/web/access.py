"""Who is asking: the Airflow user behind a request to the Connect pages, and what they may do.

Airflow does not authenticate plugin apps (a mounted app inherits none of the core API's
dependencies), so the app resolves the caller from Airflow's own JWT (the ``_token`` cookie the
UI login sets, or an ``Authorization: Bearer`` header) with the api-server's auth manager.
:func:`current_user` is a dependency of the whole app (``FastAPI(dependencies=...)``), so a new
route is closed by default; routes that change things also take :data:`Editor` (permission to
edit DAGs), and every form carries a CSRF token bound to a cookie.

Airflow's auth manager and configuration, and Airflow's names, are imported inside the functions:
they are the api-server's, and Airflow loads this module with the plugins in every process.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from sage_sync.core.errors import LoginRequired

CSRF_COOKIE = "sage_csrf"

log = logging.getLogger(__name__)


def jwt(request: Request) -> str | None:
    """The caller's Airflow JWT: the bearer header, else the cookie the UI's login sets."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME_JWT_TOKEN)


def caller(request: Request) -> Any:
    """Who asks Airflow for a pause or a run: the signed-in user (their JWT).

    Not where: the api-server's address is configuration (``orchestration.airflow_api.api_url``).
    Anything taken from the request (``Host``, ``X-Forwarded-*``) is the caller's to forge, and
    the user's token would follow it to whatever host:port it names.
    """
    from sage_sync.orchestration.airflow_api import Caller

    return Caller(token=jwt(request))


async def current_user(request: Request) -> Any:
    """The Airflow user of this request (JWT from the bearer header or the UI's cookie)."""
    from airflow.api_fastapi.app import get_auth_manager

    token = jwt(request)
    if token:
        try:
            return await get_auth_manager().get_user_from_token(token)
        except Exception:  # noqa: BLE001 - expired or invalid: log in again
            log.info("sage connections: rejected an invalid or expired Airflow token")
    raise LoginRequired(str(request.url))


CurrentUser = Annotated[Any, Depends(current_user)]


async def edit_rights(user: CurrentUser) -> bool:
    """Whether the user may change connections: Airflow's permission to edit DAGs (role User and up).

    Asked of the api-server's auth manager, the same check Airflow makes before a user may pause
    or trigger a DAG, so the pages follow whatever roles the deployment's auth manager defines.
    """
    from airflow.api_fastapi.app import get_auth_manager

    return bool(get_auth_manager().is_authorized_dag(method="PUT", user=user))


EditRights = Annotated[bool, Depends(edit_rights)]


async def editor(user: CurrentUser, rights: EditRights) -> Any:
    """The dependency of every route that changes something: the user, if they may edit DAGs."""
    if not rights:
        raise HTTPException(
            status_code=403,
            detail="Changing Sage connections needs permission to edit "
            "DAGs in Airflow (the User role or above): ask an admin",
        )
    return user


Editor = Annotated[Any, Depends(editor)]


def is_https(request: Request) -> bool:
    """Whether the browser reaches the pages over HTTPS (their cookies are then ``Secure``): the
    request's scheme (behind a TLS proxy, the api-server sees ``https`` only with
    ``--proxy-headers``), or Airflow's public ``[api] base_url``."""
    from airflow.configuration import conf

    return request.url.scheme == "https" or conf.get("api", "base_url", fallback="").startswith("https://")


def check_csrf(request: Request, token: str) -> None:
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, token or ""):
        raise HTTPException(status_code=400, detail="This form is stale: reload the page and try again")
