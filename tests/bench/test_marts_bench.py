"""The marts bench times the README's analyst queries as printed: it must find them all, bound."""

from __future__ import annotations

from bench.marts import _timed, readme_queries


def test_every_readme_query_is_timed_with_its_company_bound() -> None:
    queries = readme_queries()
    names = [name for name, _ in queries]
    assert names[:6] == [f"README {n}" for n in range(1, 7)], names
    for name, query in queries:
        assert ":'company_id'" not in query, name
        assert "%(company_id)s" in query, name


def test_timings_are_the_median_and_p95_of_the_runs_after_a_warm_up() -> None:
    calls: list[int] = []
    median, p95 = _timed(lambda: calls.append(1), runs=5)
    assert len(calls) == 6  # one warm-up, five timed
    assert 0 <= median <= p95
