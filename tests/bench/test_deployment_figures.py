"""The deployment benchmark's checks of the shared Sage budget judge what they claim to.

``bench/deployment.py`` passes a run only when no window of the fake's request log held more
requests than the token bucket allows: its burst plus the rate times the window's length. These
feed that verdict and the figures in bench/RESULTS.md, so they are tested on logs whose answer is
known.
"""

from __future__ import annotations

import pytest

from bench.deployment import _max_over_rate, _max_overlap, _peak_in_window

RATE = 12.0


def test_a_full_bucket_then_the_rate_stays_within_the_burst() -> None:
    burst = [0.0] * 30  # 30 stored tokens spent at once
    steady = [(i + 1) / RATE for i in range(120)]  # then one every 1/12 s for 10 s
    assert _max_over_rate(burst + steady, RATE) == pytest.approx(30.0)


def test_twice_the_rate_is_caught() -> None:
    doubled = [i / (2 * RATE) for i in range(240)]  # 24 a second for 10 s
    over = _max_over_rate(doubled, RATE)
    assert over == pytest.approx(240 - RATE * (239 / 24))  # the whole log is the worst window
    assert over > 31


def test_an_empty_log_is_not_over() -> None:
    assert _max_over_rate([], RATE) == 0.0


def test_peak_in_one_second() -> None:
    assert _peak_in_window([0.0, 0.1, 0.5, 0.99, 1.0, 1.5, 2.6], 1.0) == 4
    assert _peak_in_window([], 1.0) == 0


def test_max_overlap_counts_what_runs_at_once() -> None:
    assert _max_overlap([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert _max_overlap([(0, 1), (1, 2)]) == 1  # one ends as the next starts
