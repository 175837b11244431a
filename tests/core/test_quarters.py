"""Quarter parsing is strict and the calendar arithmetic is right at the year edges."""

from datetime import UTC, date, datetime

import pytest

from sage_sync.core.quarters import SYNCED_FROM, Quarter


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2024-Q1", date(2024, 1, 1), date(2024, 3, 31)),
        ("2024-Q2", date(2024, 4, 1), date(2024, 6, 30)),
        ("2024-Q3", date(2024, 7, 1), date(2024, 9, 30)),
        ("2024-Q4", date(2024, 10, 1), date(2024, 12, 31)),
    ],
)
def test_parse_and_bounds(text: str, start: date, end: date) -> None:
    quarter = Quarter.parse(text)
    assert (quarter.start_date, quarter.end_date) == (start, end)
    assert str(quarter) == text


@pytest.mark.parametrize(
    "text",
    [
        "2024-q1",
        "2024Q1",
        "2024-Q0",
        "2024-Q5",
        " 2024-Q1",
        "2024-Q1 ",
        "24-Q1",
        "2024-Q1\n",
        "2024-Q\u0661",
        "",
        "2024-01",
        "Q1-2024",
        "0000-Q1",
    ],
)
def test_parse_is_strict(text: str) -> None:
    with pytest.raises(ValueError, match="quarter"):
        Quarter.parse(text)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="string"):
        Quarter.parse(20241)  # type: ignore[arg-type]


def test_previous_next_and_order() -> None:
    assert Quarter.parse("2024-Q1").previous() == Quarter(2023, 4)
    assert Quarter.parse("2023-Q4").next() == Quarter(2024, 1)
    assert Quarter(2024, 3).previous() == Quarter(2024, 2)
    assert Quarter(2023, 4) < Quarter(2024, 1) < Quarter(2024, 2)
    assert sorted([Quarter(2024, 2), Quarter(2023, 3), Quarter(2024, 1)]) == [
        Quarter(2023, 3),
        Quarter(2024, 1),
        Quarter(2024, 2),
    ]
    assert max(Quarter.parse("2024-Q1"), Quarter.parse("2023-Q4")) == Quarter(2024, 1)


def test_containing() -> None:
    assert Quarter.containing(date(2024, 3, 31)) == Quarter(2024, 1)
    assert Quarter.containing(date(2024, 4, 1)) == Quarter(2024, 2)
    assert Quarter.containing(datetime(2024, 12, 31, 23, 59)) == Quarter(2024, 4)
    for month in range(1, 13):
        quarter = Quarter.containing(date(2025, month, 15))
        assert quarter.start_date <= date(2025, month, 15) <= quarter.end_date


def test_leap_year_q1_end_is_march_31() -> None:
    assert Quarter(2024, 1).end_date == date(2024, 3, 31)
    assert Quarter(2024, 1).next().start_date == date(2024, 4, 1)


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="1 to 4"):
        Quarter(2024, 5)


# -- the one Synced From policy -----------------------------------------------------------------


def test_the_synced_from_floor_is_six_years_back_from_the_current_quarter() -> None:
    assert SYNCED_FROM.floor(date(2026, 12, 7)) == Quarter(2020, 4)
    assert SYNCED_FROM.connect_quarters(date(2026, 12, 7))[0] == Quarter(2026, 4)
    assert SYNCED_FROM.connect_quarters(date(2026, 12, 7))[-1] == Quarter(2020, 4)
    assert SYNCED_FROM.earlier_quarters(Quarter(2024, 1), date(2026, 12, 7))[0] == Quarter(2023, 4)
    assert SYNCED_FROM.earlier_quarters(Quarter(2020, 4), date(2026, 12, 7)) == []


def test_the_policy_refuses_the_future_later_quarters_and_anything_before_the_floor() -> None:
    today = date(2026, 12, 7)
    assert SYNCED_FROM.problem(Quarter(2026, 4), today) is None
    assert "future" in (SYNCED_FROM.problem(Quarter(2027, 1), today) or "")
    assert "before 2020-Q4" in (SYNCED_FROM.problem(Quarter(1990, 1), today) or "")
    assert "only moves earlier" in (SYNCED_FROM.problem(Quarter(2024, 2), today, current=Quarter(2024, 1)) or "")
    assert SYNCED_FROM.problem(Quarter(2023, 4), today, current=Quarter(2024, 1)) is None


def test_the_page_the_cli_and_the_dag_form_share_one_floor() -> None:
    """The page offered 6 years, the CLI took 1990-Q1 and the backfill form offered 7."""
    from sage_sync.core.errors import LifecycleError
    from sage_sync.lifecycle import inputs
    from sage_sync.orchestration.backfill_form import valid_quarters
    from sage_sync.warehouse.snapshot import DagCompany

    now = datetime.now(UTC)
    floor = SYNCED_FROM.floor(now.date())
    assert inputs.connect_quarters(today=now)[-1] == floor  # the page's Connect list
    assert inputs.parse_quarter(str(floor), today=now) == floor  # the CLI's connect
    with pytest.raises(LifecycleError, match="earliest Synced From"):
        inputs.parse_quarter(str(floor.previous()), today=now)
    with pytest.raises(LifecycleError, match="earliest Synced From"):
        inputs.parse_quarter("1990-Q1", today=now)
    company = DagCompany(company_id="c1", company_name="C1", status="active", synced_from_quarter="2025-Q1")
    assert valid_quarters([company], now)[-1] == str(floor)  # the backfill DAG's form
