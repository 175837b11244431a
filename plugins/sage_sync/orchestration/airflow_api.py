"""Airflow's names and its REST API: DAG and task ids, the ``sage_raw`` Asset's name, UI paths, pause, trigger.

The DAG files, the use cases (``lifecycle.connections``), the read side (``reporting``), the CLI
and the Connect pages all take their Airflow names from here, and nothing else pauses or triggers
a DAG. It imports no Airflow: the CLI and the pages use it on machines that only reach the
api-server. What only a DAG needs (the Asset object, the default arguments) is
``orchestration.defaults``'; the task wrappers are ``orchestration.tasks``'; the pool is declared
in ``core.pools``.

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
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from sage_sync.core.errors import AirflowUnavailable
from sage_sync.sage.streams import DOCUMENT_STREAMS, STREAMS

log = logging.getLogger(__name__)

DAG_ID_PREFIX = "sage_sync__"
BACKFILL_DAG_ID = "sage_backfill"
TRANSFORM_DAG_ID = "sage_transform"
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


def check_dag(dag_id: str, caller: Caller | None = None) -> None:
    """Raise :class:`AirflowUnavailable` unless the api-server answers for ``dag_id`` with this
    caller's login: the address, the login and the DAG, all that a trigger needs."""
    _call("GET", f"/dags/{_segment(dag_id)}", None, caller)


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


# The tasks that read Sage: in a daily run the one task ``sync`` reads every stream (its log has
# each stream's progress lines); in a backfill one task per document stream (``backfill_<stream>``).
LOG_TASK_DAILY = "sync"
BACKFILL_TASK_PREFIX = "backfill_"
LOG_TASK_BACKFILL = f"{BACKFILL_TASK_PREFIX}purchase_invoices"


def run_dag_id(company_id: str, kind: str) -> str:
    """The DAG a sync run of ``kind`` ran in: the backfill DAG, else the company's daily DAG."""
    return BACKFILL_DAG_ID if kind == "backfill" else dag_id_for(company_id)


def ui_run_path(dag_id: str, run_id: str) -> str:
    """Airflow 3's UI page of a DAG run, relative to Airflow's base URL (no leading slash)."""
    return f"dags/{_segment(dag_id)}/runs/{_segment(run_id)}"


def ui_task_path(dag_id: str, run_id: str, task_id: str, map_index: int | None = None) -> str:
    """Airflow 3's UI page of a task instance in a run (its log), relative to Airflow's base URL.

    A mapped task's instance is ``.../tasks/<task>/mapped/<index>``; without the index Airflow
    looks for map index -1, which a mapped task has not, and its page is a 404. (No task of ours
    is mapped today; the index stays so that a link to one is right if one comes back.)
    """
    path = f"{ui_run_path(dag_id, run_id)}/tasks/{_segment(task_id)}"
    return path if map_index is None else f"{path}/mapped/{int(map_index)}"


def stream_task(kind: str, stream: str) -> tuple[str, int | None] | None:
    """The task (and map index) that read ``stream`` in a run of ``kind``; None if no task did.

    Daily, manual and reset runs under Airflow read every stream in the one task ``sync``;
    a backfill reads only the document streams, each in its own task.
    """
    if kind == "backfill":
        return (f"{BACKFILL_TASK_PREFIX}{stream}", None) if stream in backfill_streams() else None
    return (LOG_TASK_DAILY, None) if stream in daily_streams() else None


def daily_streams() -> list[str]:
    """The streams the daily DAG's ``sync`` reads, in order: every stream."""
    return list(STREAMS)


def backfill_streams() -> list[str]:
    """The streams a backfill reads, one ``backfill_<stream>`` task each: the document streams."""
    return [s.name for s in DOCUMENT_STREAMS]


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
