"""The metadata housekeeping: the ``airflow db clean`` it builds, the settings it refuses, and one
real clean of the test metadata DB (an old run goes, a recent one and each DAG's latest
scheduled run stay)."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from sage_sync.core.errors import ConfigError
from sage_sync.orchestration.housekeeping import (
    METADATA_URL_ENV,
    RETENTION_ENV,
    clean_airflow_metadata,
    clean_command,
    retention,
    tables_to_clean,
)

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def test_the_command_deletes_what_is_older_than_the_age_without_archive_or_prompt() -> None:
    command = clean_command(timedelta(days=30), NOW, ["dag_run", "log"])
    assert Path(command[0]).name == "airflow" and Path(command[0]).exists()
    assert command[1:] == [
        "db",
        "clean",
        "--clean-before-timestamp",
        "2026-11-07T08:00:00+00:00",
        "--tables",
        "dag_run,log",
        "--skip-archive",
        "--yes",
        "--batch-size",
        "10000",
        "--error-on-cleanup-failure",
    ]


def test_every_table_airflow_cleans_but_the_dag_rows_the_pages_read() -> None:
    tables = tables_to_clean()
    assert {"dag_run", "task_instance", "task_instance_history", "xcom", "log", "job"} <= set(tables)
    assert "dag" not in tables  # one row per company, with the next run the pages show


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "0", "6.9", "a month"])
def test_a_bad_retention_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(RETENTION_ENV, raw)
    with pytest.raises(ConfigError, match=RETENTION_ENV):
        retention()


def test_the_retention_defaults_to_30_days_and_takes_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RETENTION_ENV, raising=False)
    assert retention() == timedelta(days=30)
    monkeypatch.setenv(RETENTION_ENV, "7.5")
    assert retention() == timedelta(days=7, hours=12)
    with pytest.raises(ConfigError, match="at least 7 days"):
        clean_command(timedelta(days=6), NOW, ["dag_run"])


def test_a_bad_setting_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list = []
    monkeypatch.setenv(RETENTION_ENV, "3")
    with pytest.raises(ConfigError, match=RETENTION_ENV):
        clean_airflow_metadata(run=lambda *a, **k: ran.append(a))
    monkeypatch.setenv(RETENTION_ENV, "30")
    monkeypatch.delenv(METADATA_URL_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"{METADATA_URL_ENV} is not set"):
        clean_airflow_metadata(run=lambda *a, **k: ran.append(a))
    assert ran == []


def test_a_failed_clean_fails_the_task_with_its_output_and_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(METADATA_URL_ENV, "postgresql+psycopg://airflow:s3cret-pw@db.example:5432/airflow")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")  # as a task sees it
    seen: dict = {}

    def failing(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(command, 1, "", "could not connect to airflow:s3cret-pw@db.example\n")

    with pytest.raises(RuntimeError, match="exit 1") as failed:
        clean_airflow_metadata(now=NOW, run=failing)
    assert "s3cret-pw" not in str(failed.value) and "***" in str(failed.value)
    # The subprocess reaches the real database, in its environment only, not the blocked URL.
    assert seen["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == os.environ[METADATA_URL_ENV]
    assert "AIRFLOW__CORE__SQL_ALCHEMY_CONN" not in seen


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_real_clean_removes_an_old_run_and_keeps_a_recent_one_and_the_latest_scheduled() -> None:
    url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]  # the test metadata DB (make test, RULES)
    assert os.environ[METADATA_URL_ENV] == url  # tests/conftest.py: never the checkout's own database
    dag_id = "housekeeping_probe"
    runs = {  # run_id: (run_type, age in days)
        "manual__old": ("manual", 60),
        "scheduled__old": ("scheduled", 60),  # the DAG's only scheduled run: kept, whatever its age
        "manual__recent": ("manual", 1),
    }
    with psycopg.connect(_libpq(url), autocommit=True) as meta:
        meta.execute("delete from dag_run where dag_id = %s", (dag_id,))
        for run_id, (run_type, days) in runs.items():
            meta.execute(
                "insert into dag_run (dag_id, run_id, run_type, state, logical_date, run_after, start_date) "
                "values (%s, %s, %s, 'success', now() - make_interval(days => %s), "
                "now() - make_interval(days => %s), now() - make_interval(days => %s))",
                (dag_id, run_id, run_type, days, days, days),
            )
        clean_airflow_metadata()
        kept = {r[0] for r in meta.execute("select run_id from dag_run where dag_id = %s", (dag_id,))}
        meta.execute("delete from dag_run where dag_id = %s", (dag_id,))
    assert kept == {"scheduled__old", "manual__recent"}
