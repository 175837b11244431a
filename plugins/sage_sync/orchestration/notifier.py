"""The Airflow side of notices: one ``BaseNotifier`` the DAGs hang on their callbacks.

Airflow calls a task's ``on_failure_callback`` once, after the task's last try (a try that will be
retried calls ``on_retry_callback`` instead), in the task's process with the exception at hand; a
DAG's ``on_failure_callback`` / ``on_success_callback`` once per finished run (in the DAG
processor; in-process under ``airflow dags test``). Both arrive here and go on to
:mod:`sage_sync.orchestration.notices`, which decides whether anything is new. The DAG files import
this module at parse time, so it imports ``notices`` (mail, webhooks, the warehouse) only when a
callback runs.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

from sage_sync.core.errors import noted_streams
from sage_sync.orchestration.airflow_api import BACKFILL_DAG_ID, DAG_ID_PREFIX

log = logging.getLogger(__name__)

EVENTS = ("task_failed", "run_failed", "run_succeeded", "check_all")


class SageNotifier(BaseNotifier):
    """Report a company's incidents (``event``: what Airflow is telling us) to the configured channels.

    - ``task_failed``: a task's final failure (``default_args["on_failure_callback"]``): its
      exception is the run's reason;
    - ``run_failed`` / ``run_succeeded``: the DAG's run callbacks; a success closes the company's
      failed-run incident (the company DAG's ``sync`` task reports its own success instead:
      :func:`report_run_succeeded`), a failure that no task reported (the run's own) still opens one;
    - ``check_all``: every company (``sage_transform``'s callbacks, at least daily): refused grants
      and first syncs past 24 hours.
    """

    def __init__(self, event: str) -> None:
        super().__init__()
        if event not in EVENTS:
            raise ValueError(f"unknown notifier event {event!r}; expected one of {EVENTS}")
        self.event = event

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render: this notifier has no template fields. Airflow 3.3's ``dags test``
        passes its run callbacks the serialized DAG, which has no Jinja environment, and
        ``BaseNotifier`` would fail building one before ``notify`` is reached."""

    def notify(self, context: Any) -> None:
        """Never raises: a notice that cannot go out must not fail a task or hide the run's own error."""
        try:
            self._notify(context)
        except Exception:
            log.exception("notices: the %s check failed", self.event)

    def _notify(self, context: Any) -> None:
        from sage_sync.orchestration import notices  # noqa: PLC0415 - see the module docstring

        if self.event == "check_all":
            notices.check_all()
            return
        dag_id, run_id = _dag_id(context), str(context.get("run_id") or "")
        company_id = _company_id(dag_id, context)
        if not company_id:
            log.info("notices: no company in the context of %s %s", dag_id, run_id)
            return
        failure = None
        if self.event != "run_succeeded":
            failure = notices.Failure(
                kind="backfill" if dag_id == BACKFILL_DAG_ID else "daily",
                dag_id=dag_id,
                run_id=run_id,
                task=_task_label(context.get("ti"), context.get("exception")),
                error=_error_text(context.get("exception")) if self.event == "task_failed" else None,
            )
        notices.check_company(company_id, failure)


def report_run_succeeded(company_id: str) -> None:
    """A company run's success, reported by the task that ended it: closes the company's failed-run
    incident and sends what a dead webhook kept back, as the ``run_succeeded`` callback does.

    The company DAG calls this from its ``sync`` task instead of hanging a success callback on the
    DAG: Airflow runs a DAG's callbacks in the dag-processor, which parses the callback's whole DAG
    file (every company's DAG) for each, once per company a day. Never raises, as :meth:`SageNotifier.notify`.
    """
    try:
        from sage_sync.orchestration import notices  # noqa: PLC0415 - see the module docstring

        notices.check_company(company_id, None)
    except Exception:
        log.exception("notices: the run_succeeded check of %s failed", company_id)


def _dag_id(context: Any) -> str:
    dag = context.get("dag")
    if dag is not None:
        return str(dag.dag_id)
    dag_run = context.get("dag_run")
    return str(getattr(dag_run, "dag_id", "") or "")


def _company_id(dag_id: str, context: Any) -> str | None:
    """The company a run is about: in the company DAG's id, or the backfill's request."""
    if dag_id.startswith(DAG_ID_PREFIX):
        return dag_id[len(DAG_ID_PREFIX) :]
    if dag_id == BACKFILL_DAG_ID:
        params = context.get("params") or {}
        conf = getattr(context.get("dag_run"), "conf", None) or {}
        return params.get("company_id") or conf.get("company_id") or None
    return None


def _task_label(ti: Any, exc: Any = None) -> str | None:
    """``sync [contacts]``: the task, and the stream whose failure failed it (the note
    ``pipeline.sync.read_everything`` adds), or which mapped instance."""
    if ti is None:
        return None
    label = str(ti.task_id)
    shown = getattr(ti, "rendered_map_index", None)
    index = getattr(ti, "map_index", -1)
    streams = noted_streams(exc)
    if shown:
        label += f" [{shown}]"
    elif isinstance(index, int) and index >= 0:
        label += f" [{index}]"
    elif streams:
        label += f" [{streams[0]}]"
    return label


def _error_text(exc: Any) -> str | None:
    """The exception as a reason: its text, after its class when that says something."""
    if exc is None:
        return None
    name = type(exc).__name__
    text = str(exc) or name
    return text if name.startswith("Airflow") else f"{name}: {text}"
