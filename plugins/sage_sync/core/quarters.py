"""Calendar quarters, the unit of a company's "Synced From" start and of backfills.

A quarter is written ``YYYY-Qn`` (Q1 = January to March), the same form the warehouse's
``companies.synced_from_quarter`` check constraint accepts. Parsing is strict on purpose: the value
comes from a person (a DAG param, the CLI) and decides how much history is fetched, so ``2024-q1``
or ``2024Q1`` is rejected with a clear message rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

# The one spelling of a quarter (``2024-Q1``); the backfill DAG's Param and the Connect page's
# form field use it too (anchored there, where the field must match as a whole).
QUARTER_PATTERN = r"[0-9]{4}-Q[1-4]"
_QUARTER_RE = re.compile(QUARTER_PATTERN)


@dataclass(frozen=True, order=True)
class Quarter:
    """A calendar quarter; ordered chronologically, printed as ``YYYY-Qn``."""

    year: int
    quarter: int

    def __post_init__(self) -> None:
        if not 1 <= self.year <= 9999:
            raise ValueError(f"quarter year must be between 1 and 9999, got {self.year}")
        if not 1 <= self.quarter <= 4:
            raise ValueError(f"quarter number must be 1 to 4, got {self.quarter}")

    @classmethod
    def parse(cls, text: str) -> Quarter:
        """Parse ``YYYY-Qn`` exactly (no spaces, upper-case ``Q``); ValueError otherwise."""
        if not isinstance(text, str):
            raise ValueError(f"a quarter must be a string like '2024-Q1', got {type(text).__name__}")
        match = _QUARTER_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"malformed quarter {text!r}: expected 'YYYY-Qn' with n in 1..4, e.g. '2024-Q1'")
        year, number = text.split("-Q")
        return cls(int(year), int(number))

    @classmethod
    def of(cls, value: Quarter | str) -> Quarter:
        """``value`` as a quarter: as it is, or parsed (:meth:`parse`) from text. For the entry points
        that take either (a DAG param and the CLI give text, the pages a parsed quarter)."""
        return value if isinstance(value, Quarter) else cls.parse(value)

    @classmethod
    def containing(cls, day: date) -> Quarter:
        """The quarter a date (or datetime, by its own calendar date) falls in."""
        return cls(day.year, (day.month - 1) // 3 + 1)

    @property
    def start_date(self) -> date:
        """First day of the quarter."""
        return date(self.year, 3 * self.quarter - 2, 1)

    @property
    def end_date(self) -> date:
        """Last day of the quarter (inclusive), as Sage's ``to_date`` filter expects."""
        if self.quarter == 4:
            return date(self.year, 12, 31)
        return date(self.year, 3 * self.quarter + 1, 1) - timedelta(days=1)

    def previous(self) -> Quarter:
        """The quarter before this one."""
        if self.quarter == 1:
            return Quarter(self.year - 1, 4)
        return Quarter(self.year, self.quarter - 1)

    def next(self) -> Quarter:
        """The quarter after this one."""
        if self.quarter == 4:
            return Quarter(self.year + 1, 1)
        return Quarter(self.year, self.quarter + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-Q{self.quarter}"


@dataclass(frozen=True)
class SyncedFromPolicy:
    """Which quarters a company's Synced From may be: the one rule the Connect pages, the CLI, the
    backfill DAG's form and its ``validate`` task all ask.

    The floor is the current quarter ``years_back`` years ago. UK businesses must keep their
    accounting records for six years (HMRC, for VAT and corporation tax), so books older than that
    may be incomplete in Sage, and a carbon baseline year is chosen within that span. A fixed year
    (say 2015) would keep growing the list and offer quarters nobody's books still hold. Before
    this one rule the page offered 6 years, the CLI took 1990-Q1 and the DAG form offered 7.
    """

    years_back: int = 6

    def floor(self, today: date) -> Quarter:
        """The earliest Synced From allowed on ``today``."""
        current = Quarter.containing(today)
        return Quarter(current.year - self.years_back, current.quarter)

    def connect_quarters(self, today: date) -> list[Quarter]:
        """What a new connection may start from: the current quarter down to the floor, newest first."""
        return quarters_between(Quarter.containing(today), self.floor(today))

    def earlier_quarters(self, current: Quarter, today: date) -> list[Quarter]:
        """What Synced From may move to from ``current``: strictly earlier, down to the floor."""
        return quarters_between(current.previous(), self.floor(today))

    def problem(self, quarter: Quarter, today: date, *, current: Quarter | None = None) -> str | None:
        """Why ``quarter`` may not be a Synced From (moving from ``current``, if given), or None."""
        if quarter.start_date > today:
            return f"Synced From {quarter} is in the future"
        if current is not None and quarter == current:
            return f"Synced From is {current} already; pick an earlier quarter"
        if current is not None and quarter > current:
            return (
                f"{quarter} is later than the current Synced From {current}: Synced From only moves "
                "earlier (use reset to start again)"
            )
        floor = self.floor(today)
        if quarter < floor:
            return (
                f"{quarter} is before {floor}, the earliest Synced From offered ({self.years_back} years "
                "back: UK books are kept for six years)"
            )
        return None


def quarters_between(newest: Quarter, oldest: Quarter) -> list[Quarter]:
    """``newest`` down to ``oldest``, newest first (empty when ``newest`` is older)."""
    found = []
    while newest >= oldest:
        found.append(newest)
        newest = newest.previous()
    return found


SYNCED_FROM = SyncedFromPolicy()
