"""When each company's daily run starts: a deterministic time inside the nightly window, or its own.

Every company DAG was ``@daily`` at 00:00 UTC, so with 10,000 companies 10,000 runs became due in
the same second: one scheduler loop creating them all, then the pool and the rate bucket
queuing them for hours. Instead each company starts at its own minute, spread evenly over a
window (default 00:00-06:00 UTC) by a hash of its id:

- **Deterministic.** SHA-256 of the id, not Python's ``hash()`` (salted per process): every
  parse, on every machine, gives a company the same minute, so its schedule never jumps.
- **Changeable per company.** A start time stored in the registry
  (``sage_control.companies.daily_start_minute``, set with ``python -m sage_sync
  set-daily-start``) wins over the spread; it may lie outside the window.
- **Same runs as before.** Only the time of day moves: a cron trigger with no data interval,
  as ``@daily`` was (Airflow 3 reads ``@daily`` as ``CronTriggerTimetable``), and the sync reads
  from watermarks, never from the logical date.

The window is read from ``SAGE_DAILY_WINDOW_START_HOUR`` (default 0) and
``SAGE_DAILY_WINDOW_HOURS`` (default 6) at each parse; the transform's daily catch-up and the
metadata housekeeping run after it ends. No Airflow import: the CLI and the pages show the
times too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sage_sync.core.config import env_number
from sage_sync.core.errors import ConfigError

WINDOW_START_ENV = "SAGE_DAILY_WINDOW_START_HOUR"
WINDOW_HOURS_ENV = "SAGE_DAILY_WINDOW_HOURS"
DEFAULT_WINDOW_START_HOUR = 0.0
DEFAULT_WINDOW_HOURS = 6.0
MINUTES_A_DAY = 24 * 60
# A start time typed by a person, in UTC: 02:30, 2:30.
_HH_MM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class DailyWindow:
    """The part of the UTC day the company runs are spread over, in minutes after 00:00 UTC."""

    start_minute: int
    length_minutes: int

    @property
    def end_minute(self) -> int:
        """The minute the window ends (the next day's, past midnight): a run is due before it."""
        return (self.start_minute + self.length_minutes) % MINUTES_A_DAY

    def describe(self) -> str:
        """``00:00-06:00 UTC``."""
        return f"{format_minute(self.start_minute)}-{format_minute(self.end_minute)} UTC"


def _whole_minutes(name: str, hours: float) -> int:
    minutes = hours * 60
    if abs(minutes - round(minutes)) > 1e-6:
        raise ConfigError(f"{name} must be whole minutes (e.g. 1.5 for 1 h 30); got {hours!r}")
    return round(minutes)


def daily_window() -> DailyWindow:
    """The window from the settings; a value that is not a number, not finite, negative, a start
    at or past 24 h or a length of 0 or over 24 h is refused (``ConfigError`` naming the setting)."""
    start_hours = env_number(WINDOW_START_ENV, DEFAULT_WINDOW_START_HOUR, zero_allowed=True)
    length_hours = env_number(WINDOW_HOURS_ENV, DEFAULT_WINDOW_HOURS)
    if start_hours >= 24:
        raise ConfigError(f"{WINDOW_START_ENV} must be an hour of the day, 0 to under 24; got {start_hours!r}")
    if length_hours > 24:
        raise ConfigError(f"{WINDOW_HOURS_ENV} must be at most 24 (a day); got {length_hours!r}")
    return DailyWindow(_whole_minutes(WINDOW_START_ENV, start_hours), _whole_minutes(WINDOW_HOURS_ENV, length_hours))


def spread_minute(company_id: str, window: DailyWindow) -> int:
    """The company's minute in ``window`` (minutes after 00:00 UTC): SHA-256 of its id, evenly spread."""
    digest = hashlib.sha256(company_id.encode("utf-8")).digest()
    return (window.start_minute + int.from_bytes(digest[:8], "big") % window.length_minutes) % MINUTES_A_DAY


def daily_start_minute(company_id: str, override: int | None, window: DailyWindow) -> int:
    """When the company's daily run starts: its own start time if one is set, else its spread minute."""
    return override if override is not None else spread_minute(company_id, window)


def format_minute(minute: int) -> str:
    """Minutes after 00:00 as ``HH:MM``."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def parse_start_time(text: str) -> int:
    """``HH:MM`` (UTC, 00:00 to 23:59) as minutes after 00:00; ``ValueError`` saying what is expected."""
    found = _HH_MM.match(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a time of day: give HH:MM in UTC, 00:00 to 23:59 (e.g. 02:30)")
    return int(found.group(1)) * 60 + int(found.group(2))


def check_start_minute(minute: int) -> int:
    """``minute`` if it is a minute of the day (0-1439), else ``ValueError``: what the registry holds."""
    if isinstance(minute, bool) or not isinstance(minute, int) or not 0 <= minute < MINUTES_A_DAY:
        raise ValueError(f"a daily start is a minute of the day, 0 to {MINUTES_A_DAY - 1}; got {minute!r}")
    return minute


def daily_cron(minute: int) -> str:
    """The cron expression of a run every day at ``minute`` (UTC): ``17 2 * * *``."""
    check_start_minute(minute)
    return f"{minute % 60} {minute // 60} * * *"


def describe_start(company_id: str, override: int | None, window: DailyWindow) -> dict[str, object]:
    """What the pages and ``status`` show: the start time, and whether it is the company's own."""
    minute = daily_start_minute(company_id, override, window)
    return {
        "minute": minute,
        "time": format_minute(minute),
        "source": "set" if override is not None else "spread",
        "window": window.describe(),
    }


# The metadata housekeeping runs this long after the window ends: after the night's syncs and the
# transform's catch-up, so its deletes never compete with them for the scheduler's tables.
HOUSEKEEPING_AFTER_WINDOW_MINUTES = 120


def housekeeping_minute(window: DailyWindow) -> int:
    """When the daily metadata housekeeping starts: two hours after the window ends (08:00 UTC by default)."""
    return (window.end_minute + HOUSEKEEPING_AFTER_WINDOW_MINUTES) % MINUTES_A_DAY
