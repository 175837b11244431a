"""The wrappers every DAG task body wears: Sage's outcomes as Airflow's, and each stream's state for the pages.

A task body calls the pipeline and returns; these decorators turn what it raises into what
Airflow should do (skip, fail without retries, retry) and record where a stream stands, so the
DAG files keep only the wiring. Put them under ``@task``: each keeps the wrapped signature
(``functools.wraps``), so TaskFlow still sees the task's own arguments and ``**context``.

``airflow.models.taskinstance`` is imported only when a try fails (:func:`next_try_at`): it is
the scheduler's retry rule, part of Airflow's core models, which a DAG parse need not load.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from types import SimpleNamespace
from typing import Any, TypeVar

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from sage_sync.core.errors import (
    CompanySkipped,
    LifecycleError,
    ReauthorizationRequired,
    RunFenced,
    RunInProgress,
    SageError,
)
from sage_sync.warehouse import db, stream_states

log = logging.getLogger(__name__)

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
        try:
            return func(*args, **kwargs)
        except (ReauthorizationRequired, RunFenced) as refused:
            log.error("%s", refused)
            raise AirflowFailException(str(refused)) from None

    return wrapper  # type: ignore[return-value]


# -- each stream's state, written by its own task ---------------------------------------------------


def describe_failure(exc: BaseException) -> str:
    """What went wrong in words a page may show: Sage's status, or our own one-line message.

    Errors of ours carry only Sage's codes, paths and our sentences (never a token); anything
    else (a bug, a driver error) is named by its type only, and its text stays in the task log.
    """
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
    from airflow.models.taskinstance import TaskInstance  # noqa: PLC0415 - see the module docstring

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
    try:
        with db.connect(app="sage_stream_state", autocommit=True) as conn:
            stream_states.set_state(conn, run_id, stream, state, **details)
    except Exception as exc:  # noqa: BLE001 - display only; the task's own outcome stands
        log.warning("could not record %s of %s in run %s: %s", state, stream, run_id, type(exc).__name__)


def _will_retry(ti: Any, exc: BaseException) -> bool:
    """Whether Airflow tries ``ti`` again after ``exc``: a try is left, and the error is not one only a
    person can fix (a refused grant) or one that ends the run (a fenced run)."""
    if ti is None or isinstance(exc, (ReauthorizationRequired, RunFenced)):
        return False
    return bool(ti.try_number <= ti.max_tries)


@contextmanager
def stream_state(run_id: str, stream: str, ti: Any) -> Iterator[None]:
    """Say where a stream stands while it is read: ``reading`` on entry, ``done`` on a clean exit,
    and on an error ``retrying`` (with the time of the next try of ``ti``) or ``failed``.

    A skip (the company was disconnected) records nothing: the run is closed as skipped.
    """
    try_number = getattr(ti, "try_number", None)
    _write_state(run_id, stream, "reading", try_number=try_number)
    try:
        yield
    except CompanySkipped:
        raise
    except Exception as exc:
        retrying = _will_retry(ti, exc)
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


def records_stream_state(func: _F) -> _F:
    """A one-stream task (the backfill's) that says where it stands (:func:`stream_state`).

    The task takes ``stream`` and ``sync_run_id`` arguments and ``**context`` (its ``ti``).
    """
    signature = inspect.signature(func)

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs).arguments
        stream, run_id = bound.get("stream"), bound.get("sync_run_id")
        if not (stream and run_id):
            return func(*args, **kwargs)
        with stream_state(run_id, stream, kwargs.get("ti")):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def retry_times(run_id: str, ti: Any) -> Iterator[None]:
    """On a failed try, stamp every stream of the run waiting to be retried with the next try's time.

    A task that reads several streams fails only after the last of them: the time a stream's own
    failure saw (:func:`stream_state`) may be long before it (a first sync reads for hours), and the
    pages would show a retry time that has passed.
    """
    try:
        yield
    except Exception as exc:
        retrying = _will_retry(ti, exc)
        try:
            with db.connect(app="sage_stream_state", autocommit=True) as conn:
                stream_states.restamp_retries(
                    conn, run_id, retrying=retrying, retry_at=_retry_time(ti) if retrying else None
                )
        except Exception as exc:  # noqa: BLE001 - display only; the task's own outcome stands
            log.warning("could not restamp the retries of run %s: %s", run_id, type(exc).__name__)
        raise
