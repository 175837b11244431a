"""Numeric settings are read by one rule: a finite number within its bound, else a clear refusal."""

from __future__ import annotations

import pytest

from sage_sync.core.config import env_number, max_pages, task_timeout
from sage_sync.core.errors import ConfigError
from sage_sync.sage.tokens import GRACE_ENV, GrantSettings


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "ten", "0"])
def test_a_count_or_a_timeout_refuses_what_is_not_a_finite_positive_number(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("SAGE_MAX_PAGES", raw)
    monkeypatch.setenv("SAGE_TASK_TIMEOUT_HOURS", raw)
    with pytest.raises(ConfigError, match="SAGE_MAX_PAGES"):
        max_pages()
    with pytest.raises(ConfigError, match="SAGE_TASK_TIMEOUT_HOURS"):
        task_timeout()


@pytest.mark.parametrize("raw", ["nan", "inf", "-0.5", "soon"])
def test_a_number_of_seconds_refuses_nan_and_infinity_too(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """NaN compares false with everything: before one rule, `nan` passed the `< 0` check as a grace."""
    monkeypatch.setenv(GRACE_ENV, raw)
    with pytest.raises(ConfigError, match=GRACE_ENV):
        GrantSettings.from_env()


def test_zero_seconds_is_allowed_and_blank_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_SECONDS", "0")
    assert env_number("X_SECONDS", 5, zero_allowed=True) == 0
    monkeypatch.setenv("X_SECONDS", "  ")
    assert env_number("X_SECONDS", 5, zero_allowed=True) == 5
