"""A company's daily start time in the registry: set and cleared from the CLI, refused when bad,
shown by ``status``; the column a migration added, with its own check.

Real PostgreSQL, no Sage: a registered row is all these commands need.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from click.testing import CliRunner

from sage_sync.cli.commands import main
from sage_sync.core.config import warehouse_conn_json
from sage_sync.orchestration.schedule import WINDOW_HOURS_ENV, WINDOW_START_ENV, DailyWindow, spread_minute

COMPANY = "0d40342d0287cd6b13555c54afca6c90"


@pytest.fixture
def registered(warehouse: psycopg.Connection, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> psycopg.Connection:
    monkeypatch.setenv("AIRFLOW_CONN_SAGE_WAREHOUSE", warehouse_conn_json(pg_dsn))
    monkeypatch.delenv(WINDOW_START_ENV, raising=False)
    monkeypatch.delenv(WINDOW_HOURS_ENV, raising=False)
    warehouse.execute(
        "insert into sage_control.companies (company_id, company_name, synced_from_quarter, status) "
        "values (%s, 'Greenleaf Bakery Ltd', '2024-Q1', 'active')",
        (COMPANY,),
    )
    warehouse.commit()
    warehouse.autocommit = True  # test reads hold no lock across CLI calls
    return warehouse


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, (result.stderr if result.exit_code else result.stdout).strip()


def _stored(conn: psycopg.Connection) -> tuple:
    return conn.execute(
        "select daily_start_minute, (select count(*) from sage_control.connection_events) "
        "from sage_control.companies where company_id = %s",
        (COMPANY,),
    ).fetchone()


def test_set_daily_start_stores_the_time_status_shows_it_and_auto_clears_it(registered: psycopg.Connection) -> None:
    spread = spread_minute(COMPANY, DailyWindow(0, 360))
    spread_text = f"{spread // 60:02d}:{spread % 60:02d} UTC (spread over 00:00-06:00 UTC)"
    assert f"daily at {spread_text}" in _cli("status")[1]

    assert _cli("set-daily-start", COMPANY, "07:30") == (
        0,
        f"Greenleaf Bakery Ltd ({COMPANY}) runs daily at 07:30 UTC (set for this company), "
        "from the next parse of its DAG",
    )
    assert _stored(registered) == (450, 1)
    event = registered.execute(
        "select event_type, details from sage_control.connection_events where company_id = %s", (COMPANY,)
    ).fetchone()
    assert event == ("daily_start_changed", {"previous_daily_start_minute": None, "daily_start_minute": 450})
    assert "daily at 07:30 UTC (set for this company)" in _cli("status")[1]
    [item] = json.loads(_cli("status", "--json")[1])
    assert item["daily_start"] == {"minute": 450, "time": "07:30", "source": "set", "window": "00:00-06:00 UTC"}

    assert _cli("set-daily-start", COMPANY, "auto")[0] == 0
    assert _stored(registered) == (None, 2)
    assert f"daily at {spread_text}" in _cli("status")[1]


def test_a_bad_start_time_or_window_is_refused_before_anything_changes(
    registered: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _cli("set-daily-start", COMPANY, "01:15")[0] == 0
    before = _stored(registered)
    cases = [
        ([COMPANY, "24:00"], "'24:00' is not a time of day: give HH:MM in UTC"),
        ([COMPANY, "7.30"], "or 'auto' for the spread over the nightly window"),
        ([COMPANY, ""], "is not a time of day"),
        (["nope", "02:00"], "unknown company 'nope'"),
    ]
    for args, message in cases:
        exit_code, output = _cli("set-daily-start", *args)
        assert exit_code == 2 and output.startswith("error: ") and message in output, (args, output)
        assert len(output.splitlines()) == 1, output
    monkeypatch.setenv(WINDOW_HOURS_ENV, "nan")
    exit_code, output = _cli("set-daily-start", COMPANY, "02:00")
    assert exit_code == 2 and f"{WINDOW_HOURS_ENV} must be a finite number" in output
    assert _stored(registered) == before


def test_the_registry_refuses_a_minute_outside_the_day(registered: psycopg.Connection) -> None:
    for bad in (-1, 1440):
        with pytest.raises(psycopg.errors.CheckViolation):
            registered.execute(
                "update sage_control.companies set daily_start_minute = %s where company_id = %s", (bad, COMPANY)
            )
