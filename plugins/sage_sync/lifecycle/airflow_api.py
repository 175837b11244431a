"""The one place this package talks to Airflow: DAG ids, the ``sage_raw`` Asset, the pool, pause, trigger.

The DAG files, the use cases (``lifecycle.connections``), the CLI and the Connect pages all take
their Airflow names from here, and nothing else pauses or triggers a DAG.

**How.** Through Airflow 3's public REST API (``/api/v2``: ``PATCH /dags/{id}`` for the pause flag,
``POST /dags/{id}/dagRuns`` for a run), the interface Airflow 3 supports for programs outside a
task. Not the metadata database (Airflow 3 removed it from the public interface and cuts task code
off from it), not ``airflow.api.common.trigger_dag`` (internal, may change in any release), and not
a shell-out to the ``airflow`` CLI (a second process with the caller's environment, and errors as text).

- Where: ``SAGE_AIRFLOW_API_URL``, else this machine's api-server
  (``http://localhost:<AIRFLOW__API__PORT or 8080><path of AIRFLOW__API__BASE_URL>``). Always
  from configuration, never from a request: the Connect pages once built it from the request's
  ``Host`` header, so a forged ``Host`` sent the signed-in user's token to any host:port. Nor
  the public ``base_url``: behind a proxy that is a detour through the internet, closed where
  egress is.
- As whom: the signed-in user's Airflow JWT when the Connect pages act (:class:`Caller`), so
  Airflow authorises and records the pause, unpause or run as that user, whatever the auth
  manager; else the service login from configuration (the CLI): ``SAGE_AIRFLOW_API_TOKEN``,
  else ``SAGE_AIRFLOW_API_USERNAME``/``SAGE_AIRFLOW_API_PASSWORD`` exchanged at the
  api-server's ``/auth/token`` (SimpleAuthManager's and FAB's token endpoint) for a JWT.
- What comes back: only the status code reaches a caller's message (and so a page); a body
  from Airflow is never echoed, only logged in part.

**Where no api-server is up** (the CLI on a machine that only reaches the warehouse, ``make demo``
and the tests, which run DAGs with ``airflow dags test``): :func:`set_dag_paused` logs and returns
False, and :func:`trigger` raises :class:`AirflowUnavailable`. Pausing is best effort on purpose:
a disconnected company's runs skip whatever the pause flag says, and a lifecycle action whose
warehouse change is already committed must not fail because Airflow is elsewhere. A trigger is
reported to the caller, who offers the in-process path instead (``set-synced-from --here``, or
the daily run that picks a reset company up).

Only constants live at module level, so a DAG file importing this parses fast; the Asset is
built on first use.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache, wraps
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

import requests

from sage_sync.core.errors import AirflowUnavailable, CompanySkipped, ReauthorizationRequired, RunFenced

if TYPE_CHECKING:
    from airflow.sdk import Asset

log = logging.getLogger(__name__)

DAG_ID_PREFIX = "sage_sync__"
BACKFILL_DAG_ID = "sage_backfill"
TRANSFORM_DAG_ID = "sage_transform"
# Every Sage-calling task of every company takes a slot of this pool (created by `make airflow-db`).
POOL = "sage_api"
SAGE_RAW_ASSET_NAME = "sage_raw"
SAGE_RAW_ASSET_URI = "x-sage://warehouse/sage_raw"

TIMEOUT = (3.05, 15)  # (connect, read) seconds for every call to the api-server


@dataclass(frozen=True)
class Caller:
    """Who asks Airflow: the Connect pages pass the signed-in user's JWT (never where to ask)."""

    token: str | None = field(default=None, repr=False)


def dag_id_for(company_id: str) -> str:
    """The daily DAG of a company."""
    return f"{DAG_ID_PREFIX}{company_id}"


@lru_cache(maxsize=1)
def sage_raw_asset() -> Asset:
    """The Asset every load emits and ``sage_transform`` is scheduled on."""
    from airflow.sdk import Asset  # noqa: PLC0415 - only DAG files need it; keep the CLI's import light

    return Asset(name=SAGE_RAW_ASSET_NAME, uri=SAGE_RAW_ASSET_URI)


_F = TypeVar("_F", bound=Callable[..., Any])


def skips_disconnected(func: _F) -> _F:
    """A task body's outcomes that are not "retry later", translated for Airflow.

    - :class:`CompanySkipped` (the company was disconnected) skips the task, with the reason.
    - :class:`ReauthorizationRequired` (Sage refused the grant; the pipeline has already marked
      the company ``needs_reauth`` and closed the run) fails the task at once, without retries
      (only a person can fix it), as one line: ``from None`` drops the client's frames from the
      task log's traceback.
    - :class:`RunFenced` (the task's run is no longer the company's live run: closed, or the
      company reset since) fails the task at once, without retries, as one line; a run a
      disconnect skipped skips the task instead, with the reason.
    - Anything else (5xx, timeouts, a run in progress) propagates, and the task's retries apply.

    Put it under ``@task``: the signature is kept (``functools.wraps``), so TaskFlow still sees the
    task's own arguments and ``**context``.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException  # noqa: PLC0415

        try:
            return func(*args, **kwargs)
        except CompanySkipped as skipped:
            raise AirflowSkipException(str(skipped)) from skipped
        except RunFenced as fenced:
            if fenced.run_status == "skipped":
                raise AirflowSkipException(str(fenced)) from None
            log.error("%s", fenced)
            raise AirflowFailException(str(fenced)) from None
        except ReauthorizationRequired as refused:
            log.error("%s", refused)
            raise AirflowFailException(str(refused)) from None

    return wrapper  # type: ignore[return-value]


def fails_fast_on_refused_grant(func: _F) -> _F:
    """Only the fail-fast half of :func:`skips_disconnected`, a refused grant or a fenced run (the
    backfill DAG's tasks, where a skip would leave the run open and a disconnected company fails
    ``validate`` instead)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException  # noqa: PLC0415 - only inside a task

        try:
            return func(*args, **kwargs)
        except (ReauthorizationRequired, RunFenced) as refused:
            log.error("%s", refused)
            raise AirflowFailException(str(refused)) from None

    return wrapper  # type: ignore[return-value]


def api_url() -> str:
    """The api-server's root URL (no trailing slash), from configuration only; see the module docstring."""
    configured = os.environ.get("SAGE_AIRFLOW_API_URL", "").strip()
    if configured:
        return configured.rstrip("/")
    # This machine's api-server, under the sub-path of a base_url like https://host/airflow.
    port = os.environ.get("AIRFLOW__API__PORT", "").strip() or "8080"
    path = urlsplit(os.environ.get("AIRFLOW__API__BASE_URL", "")).path
    return f"http://localhost:{port}{path}".rstrip("/")


def _token(root: str, caller: Caller) -> str | None:
    if caller.token:
        return caller.token
    if os.environ.get("SAGE_AIRFLOW_API_TOKEN"):
        return os.environ["SAGE_AIRFLOW_API_TOKEN"]
    user, password = os.environ.get("SAGE_AIRFLOW_API_USERNAME"), os.environ.get("SAGE_AIRFLOW_API_PASSWORD")
    if not (user and password):
        return None
    response = requests.post(f"{root}/auth/token", json={"username": user, "password": password}, timeout=TIMEOUT)
    if not response.ok:  # 401 for a wrong password: said by status, the body stays out of the message
        raise AirflowUnavailable(
            f"Airflow refused the service login SAGE_AIRFLOW_API_USERNAME (HTTP {response.status_code})"
        )
    return str(response.json()["access_token"])


def _call(
    method: str, path: str, body: dict[str, Any] | None, caller: Caller | None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    root = api_url()
    try:
        bearer = _token(root, caller or Caller())
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        response = requests.request(
            method, f"{root}/api/v2{path}", json=body, params=params, headers=headers, timeout=TIMEOUT
        )
    except requests.RequestException as exc:
        raise AirflowUnavailable(f"no Airflow api-server answers at {root} ({type(exc).__name__})") from None
    if not response.ok:
        # The status is enough for a message; the body is not ours to show (a page echoed it once).
        log.warning("Airflow answered HTTP %s to %s %s: %.200r", response.status_code, method, path, response.text)
        raise AirflowUnavailable(
            f"Airflow answered HTTP {response.status_code} to {method} {path}", status=response.status_code
        )
    return response.json() if response.content else {}


def _segment(value: str) -> str:
    """``value`` as one URL path segment: ids are checked where they enter (``core.ids``), and a
    ``/``, ``?`` or ``#`` that got in anyway must not address another resource."""
    return quote(value, safe="")


def set_dag_paused(dag_id: str, *, paused: bool, caller: Caller | None = None) -> bool:
    """Pause or unpause a DAG; False (logged) when no api-server takes the change. See the module docstring.

    A DAG Airflow does not know yet (404: a company connected since the last parse) counts as
    unpaused: the company DAG is created unpaused (``is_paused_upon_creation=False``).
    """
    try:
        _call("PATCH", f"/dags/{_segment(dag_id)}", {"is_paused": paused}, caller)
    except AirflowUnavailable as exc:
        if exc.status == 404 and not paused:
            return True
        log.warning("could not %s %s in Airflow: %s", "pause" if paused else "unpause", dag_id, exc)
        return False
    return True


def trigger(dag_id: str, conf: dict[str, Any] | None, caller: Caller | None = None) -> str:
    """Unpause ``dag_id`` and start a run of it with ``conf``; returns ``"<dag id> run <run id>"``.

    Raises :class:`AirflowUnavailable` when no api-server takes the run.
    """
    set_dag_paused(dag_id, paused=False, caller=caller)
    run_id = f"manual__sage_{datetime.now(UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"
    _call(
        "POST",
        f"/dags/{_segment(dag_id)}/dagRuns",
        {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}},
        caller,
    )
    return f"{dag_id} run {run_id}"


# The task whose log a run's history row links to: where a daily run reads Sage (one mapped
# instance per stream), and a backfill's first stream (each stream is its own task there).
LOG_TASK_DAILY = "extract_load"
LOG_TASK_BACKFILL = "backfill_purchase_invoices"


def run_dag_id(company_id: str, kind: str) -> str:
    """The DAG a sync run of ``kind`` ran in: the backfill DAG, else the company's daily DAG."""
    return BACKFILL_DAG_ID if kind == "backfill" else dag_id_for(company_id)


def ui_run_path(dag_id: str, run_id: str) -> str:
    """Airflow 3's UI page of a DAG run, relative to Airflow's base URL (no leading slash)."""
    return f"dags/{_segment(dag_id)}/runs/{_segment(run_id)}"


def ui_task_path(dag_id: str, run_id: str, task_id: str) -> str:
    """Airflow 3's UI page of a task in a run (its log), relative to Airflow's base URL."""
    return f"{ui_run_path(dag_id, run_id)}/tasks/{_segment(task_id)}"


def log_task(kind: str) -> str:
    """The task of a run of ``kind`` whose log the history links to."""
    return LOG_TASK_BACKFILL if kind == "backfill" else LOG_TASK_DAILY


def next_runs(caller: Caller | None = None, page_size: int = 100) -> dict[str, datetime | None]:
    """Every company DAG's next scheduled run (None when paused or unscheduled): ``{dag_id: when}``.

    One paged listing of the ``sage_sync__`` DAGs, not a call per company. Raises
    :class:`AirflowUnavailable` when no api-server answers.
    """
    found: dict[str, datetime | None] = {}
    offset = 0
    while True:
        page = _call(
            "GET",
            "/dags",
            None,
            caller,
            params={"dag_id_pattern": DAG_ID_PREFIX, "limit": page_size, "offset": offset},
        )
        dags = page.get("dags", [])
        for dag in dags:
            when = dag.get("next_dagrun_run_after")
            paused = dag.get("is_paused")
            found[dag["dag_id"]] = None if paused or not when else datetime.fromisoformat(when)
        offset += len(dags)
        if not dags or offset >= int(page.get("total_entries", 0)):
            return found
