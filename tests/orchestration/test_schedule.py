"""Each company's daily start: a stable minute spread over the nightly window, or its own time.

Cheap on purpose (no database, no Airflow): the DAG-level check is in tests/dags, the registry
and CLI in tests/lifecycle/test_daily_start.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from sage_sync.core.errors import ConfigError
from sage_sync.orchestration.schedule import (
    WINDOW_HOURS_ENV,
    WINDOW_START_ENV,
    DailyWindow,
    daily_cron,
    daily_start_minute,
    daily_window,
    format_minute,
    parse_start_time,
    spread_minute,
)

NIGHT = DailyWindow(start_minute=0, length_minutes=6 * 60)
SAGE_IDS = [f"{n:032x}" for n in range(10_000)]  # Sage-shaped: 32 hex characters


def test_a_company_keeps_its_minute_in_every_process() -> None:
    # Pinned: a change of the hash would move every company's run at the next deploy.
    assert spread_minute("b1aa", NIGHT) == 196  # 03:16 UTC
    # Not Python's salted hash(): another interpreter gives the same minute.
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sage_sync.orchestration.schedule import DailyWindow, spread_minute;"
            "print(spread_minute('b1aa', DailyWindow(0, 360)))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": ":".join(sys.path)},
    )
    assert other.stdout.strip() == "196"


def test_ten_thousand_companies_are_spread_over_every_minute_of_the_window() -> None:
    per_minute = Counter(spread_minute(i, NIGHT) for i in SAGE_IDS)
    assert set(per_minute) == set(range(360)), "every minute of 00:00-06:00 has runs, none outside"
    # 27.8 a minute on average; a hash spreads them within a factor of two, not 10,000 at 00:00.
    assert max(per_minute.values()) <= 2 * 10_000 / 360
    assert min(per_minute.values()) >= 10_000 / 360 / 3


def test_a_window_over_midnight_wraps_into_the_next_day() -> None:
    late = DailyWindow(start_minute=22 * 60, length_minutes=4 * 60)  # 22:00-02:00 UTC
    minutes = {spread_minute(i, late) for i in SAGE_IDS[:2_000]}
    assert minutes <= set(range(22 * 60, 24 * 60)) | set(range(0, 2 * 60))
    assert min(minutes) == 0 and max(minutes) == 24 * 60 - 1
    assert late.end_minute == 120 and late.describe() == "22:00-02:00 UTC"


def test_a_start_time_of_its_own_wins_over_the_spread() -> None:
    assert daily_start_minute("b1aa", None, NIGHT) == 196
    assert daily_start_minute("b1aa", 450, NIGHT) == 450  # 07:30, outside the window: allowed
    assert daily_start_minute("b1aa", 0, NIGHT) == 0  # midnight is a time, not "unset"


def test_the_window_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WINDOW_START_ENV, raising=False)
    monkeypatch.delenv(WINDOW_HOURS_ENV, raising=False)
    assert daily_window() == NIGHT and NIGHT.end_minute == 360
    monkeypatch.setenv(WINDOW_START_ENV, "1.5")
    monkeypatch.setenv(WINDOW_HOURS_ENV, "24")
    assert daily_window() == DailyWindow(start_minute=90, length_minutes=24 * 60)


@pytest.mark.parametrize(
    ("name", "raw", "why"),
    [
        (WINDOW_START_ENV, "nan", "finite"),
        (WINDOW_START_ENV, "inf", "finite"),
        (WINDOW_START_ENV, "-1", "finite number >= 0"),
        (WINDOW_START_ENV, "24", "0 to under 24"),
        (WINDOW_START_ENV, "two", "must be a number"),
        (WINDOW_START_ENV, "0.01", "whole minutes"),
        (WINDOW_HOURS_ENV, "0", "> 0"),
        (WINDOW_HOURS_ENV, "-6", "> 0"),
        (WINDOW_HOURS_ENV, "nan", "finite"),
        (WINDOW_HOURS_ENV, "25", "at most 24"),
        (WINDOW_HOURS_ENV, "0.001", "whole minutes"),
    ],
)
def test_a_bad_window_setting_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, why: str
) -> None:
    monkeypatch.delenv(WINDOW_START_ENV, raising=False)
    monkeypatch.delenv(WINDOW_HOURS_ENV, raising=False)
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigError, match=name) as refused:
        daily_window()
    assert why in str(refused.value)


def test_a_start_time_is_typed_as_hh_mm_utc() -> None:
    assert parse_start_time("02:30") == 150 and parse_start_time(" 2:30 ") == 150
    assert parse_start_time("00:00") == 0 and parse_start_time("23:59") == 1439
    for bad in ["24:00", "2:60", "0230", "2.30", "", "-1:00", "02:30:00", "noon"]:
        with pytest.raises(ValueError, match="HH:MM in UTC"):
            parse_start_time(bad)
    assert format_minute(150) == "02:30" and format_minute(0) == "00:00"


def test_the_cron_is_every_day_at_that_minute() -> None:
    assert daily_cron(196) == "16 3 * * *"
    assert daily_cron(0) == "0 0 * * *" and daily_cron(1439) == "59 23 * * *"
    for bad in [-1, 1440, True]:
        with pytest.raises(ValueError):
            daily_cron(bad)  # type: ignore[arg-type]
