"""Keep Airflow's metadata database bounded: ``airflow db clean`` of what is older than the retention.

A company's day is 14 task runs; 10,000 companies make 140,000 task instances a day, with their
dag runs, XComs, task-instance history, audit-log rows and jobs. Airflow never deletes them, and a
metadata DB that only grows slows the scheduler and the UI. The ``sage_airflow_housekeeping`` DAG
runs :func:`clean_airflow_metadata` daily.

What is kept, and why:

- **Everything newer than the retention** (``SAGE_AIRFLOW_RETENTION_DAYS``, default 30, at least
  :data:`MIN_RETENTION_DAYS`). What the product reads from Airflow is the next run of each DAG
  (the ``dag`` table, below) and, on the pages, links to the last runs' task logs; progress and
  history themselves live in the warehouse (``sync_runs``, ``sync_stream_states``). The pages
  drop the Airflow links of a run older than the retention rather than link to a deleted run.
  The floor keeps a run in progress (a first sync may take a day, a task 12 hours a try, a
  backfill waits up to a day for its slot) out of reach.
- **Each DAG's latest scheduled run**, whatever its age: ``db clean`` always keeps it, so the
  scheduler's next run and ``catchup=False`` behave as before.
- **The ``dag`` table** is left out: one row per company, it does not grow with runs, and it holds
  the next run the pages show.

How: ``airflow db clean --skip-archive --yes`` in a subprocess. No archive tables: they would
hold the same rows again. In batches, so no transaction holds the scheduler's tables for long.
``--error-on-cleanup-failure``: a table that could not be cleaned fails the task instead of
leaving a green run over a growing table.

**Where the database comes from.** Airflow 3 cuts task code off from the metadata DB (the task
process's ``sql_alchemy_conn`` is replaced by ``airflow-db-not-allowed:///``, and a subprocess
inherits that), so the task is given it explicitly: ``SAGE_AIRFLOW_METADATA_DB_URL``, the same
URL as ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``, set only where the housekeeping runs (the
workers). It is passed to the subprocess's environment, never on its command line or in a log.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sage_sync.core.config import env_number
from sage_sync.core.errors import ConfigError

log = logging.getLogger(__name__)

HOUSEKEEPING_DAG_ID = "sage_airflow_housekeeping"
RETENTION_ENV = "SAGE_AIRFLOW_RETENTION_DAYS"
METADATA_URL_ENV = "SAGE_AIRFLOW_METADATA_DB_URL"
DEFAULT_RETENTION_DAYS = 30.0
MIN_RETENTION_DAYS = 7.0
# Rows deleted per transaction: the scheduler writes dag_run and task_instance all night, and one
# delete of a day's 140,000 task instances would hold their locks for the whole statement.
BATCH_SIZE = 10_000
# Kept whatever their age (see the module docstring).
KEPT_TABLES = frozenset({"dag"})
# Airflow's setting the task process has blocked; the subprocess gets the real URL in its place.
_AIRFLOW_DB_ENV = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__SQL_ALCHEMY_CONN")


def retention() -> timedelta:
    """``SAGE_AIRFLOW_RETENTION_DAYS`` (default 30): a finite number of days, at least 7, else
    ``ConfigError`` naming the setting; never "delete everything" by a typo."""
    days = env_number(RETENTION_ENV, DEFAULT_RETENTION_DAYS)
    return check_retention(timedelta(days=days))


def check_retention(age: timedelta) -> timedelta:
    """``age`` if it keeps at least :data:`MIN_RETENTION_DAYS`, else ``ConfigError``."""
    if age < timedelta(days=MIN_RETENTION_DAYS):
        raise ConfigError(
            f"{RETENTION_ENV} must be at least {MIN_RETENTION_DAYS:g} days (a run in progress and the "
            f"runs the pages link to must stay); got {age.total_seconds() / 86400:g}"
        )
    return age


def tables_to_clean() -> list[str]:
    """Every table ``airflow db clean`` knows in the pinned Airflow, but :data:`KEPT_TABLES`."""
    from airflow.utils.db_cleanup import config_dict  # noqa: PLC0415 - only the task needs Airflow's list

    return sorted(set(config_dict) - KEPT_TABLES)


def clean_command(age: timedelta, now: datetime, tables: Sequence[str]) -> list[str]:
    """The ``airflow db clean`` command that deletes ``tables``' rows older than ``now - age``."""
    check_retention(age)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    before = (now - age).astimezone(UTC).isoformat(timespec="seconds")
    airflow = str(Path(sys.executable).parent / "airflow")
    return [
        airflow,
        "db",
        "clean",
        "--clean-before-timestamp",
        before,
        "--tables",
        ",".join(tables),
        "--skip-archive",
        "--yes",
        "--batch-size",
        str(BATCH_SIZE),
        "--error-on-cleanup-failure",
    ]


def metadata_url() -> str:
    """``SAGE_AIRFLOW_METADATA_DB_URL``, else ``ConfigError`` saying why the task needs it."""
    url = os.environ.get(METADATA_URL_ENV, "").strip()
    if not url:
        raise ConfigError(
            f"{METADATA_URL_ENV} is not set: Airflow 3 keeps tasks out of its metadata database, so the "
            "housekeeping task is given it explicitly; set it to AIRFLOW__DATABASE__SQL_ALCHEMY_CONN's value "
            "on the workers"
        )
    return url


def _masked(text: str, url: str) -> str:
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - a dependency of Airflow, needed here only

    password = make_url(url).password
    return text.replace(password, "***") if password else text


def clean_airflow_metadata(
    *,
    now: datetime | None = None,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> list[str]:
    """Run the clean with the configured retention against the configured metadata DB; the
    command it ran. A bad setting is refused before anything runs; a failed clean raises
    ``RuntimeError`` with the end of its output."""
    age = retention()
    url = metadata_url()
    command = clean_command(age, now or datetime.now(UTC), tables_to_clean())
    env = {k: v for k, v in os.environ.items() if k not in _AIRFLOW_DB_ENV}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
    log.info("deleting Airflow metadata older than %s: %s", command[4], " ".join(command[1:]))
    done = run(command, env=env, capture_output=True, text=True, check=False)
    output = _masked(f"{done.stdout}{done.stderr}", url)
    for line in output.splitlines():
        log.info("%s", line)
    if done.returncode != 0:
        tail = " | ".join(output.strip().splitlines()[-5:])
        raise RuntimeError(f"airflow db clean failed (exit {done.returncode}): {tail}")
    return command
