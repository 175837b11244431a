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


# The tasks that read Sage, one per stream: in a daily run one task mapped over the streams
# (``extract_load``, map index = the stream's position in ``STREAMS``, the list the DAG expands
# over); in a backfill one task per document stream (``backfill_<stream>``, not mapped).
LOG_TASK_DAILY = "extract_load"
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
    looks for map index -1, which a mapped task has not, and its page is a 404.
    """
    path = f"{ui_run_path(dag_id, run_id)}/tasks/{_segment(task_id)}"
    return path if map_index is None else f"{path}/mapped/{int(map_index)}"


def ui_mapped_path(dag_id: str, run_id: str, task_id: str) -> str:
    """Airflow 3's UI list of a mapped task's instances in a run (one per stream)."""
    return f"{ui_task_path(dag_id, run_id, task_id)}/mapped"


def stream_task(kind: str, stream: str) -> tuple[str, int | None] | None:
    """The task (and map index) that read ``stream`` in a run of ``kind``; None if no task did.

    Daily, manual and reset runs under Airflow read every stream in the mapped ``extract_load``;
    a backfill reads only the document streams, each in its own task.
    """
    from sage_sync.sage.streams import DOCUMENT_STREAMS, STREAMS  # noqa: PLC0415

    if kind == "backfill":
        names = {s.name for s in DOCUMENT_STREAMS}
        return (f"{BACKFILL_TASK_PREFIX}{stream}", None) if stream in names else None
    if stream not in STREAMS:
        return None
    return LOG_TASK_DAILY, list(STREAMS).index(stream)


def log_task(kind: str) -> str:
    """The task of a run of ``kind`` whose log the history links to."""
    return LOG_TASK_BACKFILL if kind == "backfill" else LOG_TASK_DAILY


# -- each stream's state, written by its own task ---------------------------------------------------


def describe_failure(exc: BaseException) -> str:
    """What went wrong in words a page may show: Sage's status, or our own one-line message.

    Errors of ours carry only Sage's codes, paths and our sentences (never a token); anything
    else (a bug, a driver error) is named by its type only, and its text stays in the task log.
    """
    from sage_sync.core.errors import LifecycleError, RunInProgress, SageError  # noqa: PLC0415

    status = getattr(exc, "status", None)
    if isinstance(exc, SageError) and isinstance(status, int):
        return f"Sage answered {status}"
    if isinstance(exc, (SageError, LifecycleError, RunInProgress)):
        return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return f"{type(exc).__name__} (see the task log)"


def next_try_at(ti: Any, failed_at: datetime) -> datetime | None:
    """When Airflow starts the next try of the task instance ``ti`` failing at ``failed_at``;
    None when it has no try left.

    Airflow's own rule (``TaskInstance.next_retry_datetime``: the retry delay, the backoff and
    its per-instance spread) applied to the running instance's settings, so the page says the
    time the scheduler will use, to within its loop.
    """
    if ti.try_number > ti.max_tries:
        return None
    from types import SimpleNamespace  # noqa: PLC0415

    from airflow.models.taskinstance import TaskInstance  # noqa: PLC0415 - the rule, not the table

    probe = SimpleNamespace(
        retry_delay_override=None,
        end_date=failed_at,
        task=ti.task,
        try_number=ti.try_number,
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        logical_date=getattr(ti, "logical_date", None),
        log=log,
    )
    return TaskInstance.next_retry_datetime(probe)  # type: ignore[arg-type]


def _retry_time(ti: Any) -> datetime | None:
    try:
        return next_try_at(ti, datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - an unknown time is shown as such, the retry still happens
        log.warning("next try time of %s unknown: %s", ti.task_id, type(exc).__name__)
        return None


def _write_state(run_id: str, stream: str, state: str, **details: Any) -> None:
    """Best effort: the state is for people to read, and a warehouse hiccup here must not fail the read."""
    from sage_sync.warehouse import db, stream_states  # noqa: PLC0415

    try:
        with db.connect(app="sage_stream_state", autocommit=True) as conn:
            stream_states.set_state(conn, run_id, stream, state, **details)
    except Exception as exc:  # noqa: BLE001 - display only; the task's own outcome stands
        log.warning("could not record %s of %s in run %s: %s", state, stream, run_id, type(exc).__name__)


def records_stream_state(func: _F) -> _F:
    """A stream task that says where it stands: ``reading`` when it starts, ``done`` when it
    returns, and on an error ``retrying`` (with the time of the next try) or ``failed``.

    The task takes ``stream`` and ``sync_run_id`` arguments and ``**context`` (its ``ti``). A
    skip (the company was disconnected) records nothing: the run is closed as skipped.
    """
    import inspect  # noqa: PLC0415

    signature = inspect.signature(func)

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs).arguments
        stream, run_id = bound.get("stream"), bound.get("sync_run_id")
        ti = kwargs.get("ti")
        if not (stream and run_id):
            return func(*args, **kwargs)
        try_number = getattr(ti, "try_number", None)
        _write_state(run_id, stream, "reading", try_number=try_number)
        try:
            result = func(*args, **kwargs)
        except CompanySkipped:
            raise
        except Exception as exc:
            retrying = ti is not None and not isinstance(exc, ReauthorizationRequired) and ti.try_number <= ti.max_tries
            _write_state(
                run_id,
                stream,
                "retrying" if retrying else "failed",
                error=describe_failure(exc),
                try_number=try_number,
                retry_at=_retry_time(ti) if retrying else None,
            )
            raise
        _write_state(run_id, stream, "done", try_number=try_number)
        return result

    return wrapper  # type: ignore[return-value]


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
