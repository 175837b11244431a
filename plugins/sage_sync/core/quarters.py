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
