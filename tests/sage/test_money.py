"""Money parsing: strings and numbers to exact Decimals, garbage refused."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sage_sync.sage.money import to_decimal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("55.55", Decimal("55.55")),
        ("-430035.84", Decimal("-430035.84")),
        ("0.0", Decimal("0.0")),
        (" 12.30 ", Decimal("12.30")),
        ("+7", Decimal("7")),
        ("1e3", Decimal("1e3")),
        (55.55, Decimal("55.55")),
        (0.1, Decimal("0.1")),
        (1200, Decimal("1200")),
        (-3, Decimal("-3")),
        (Decimal("9.99"), Decimal("9.99")),
    ],
)
def test_parses_strings_and_numbers_exactly(value: object, expected: Decimal) -> None:
    result = to_decimal(value)
    assert result == expected
    assert isinstance(result, Decimal)


def test_float_does_not_leak_binary_expansion() -> None:
    assert str(to_decimal(0.1)) == "0.1"
    assert to_decimal(0.1) + to_decimal(0.2) == Decimal("0.3")


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_amounts_are_none(value: object) -> None:
    assert to_decimal(value) is None


@pytest.mark.parametrize(
    "value",
    ["abc", "12.3.4", "1,5", "1_000", "NaN", "Infinity", "-inf", float("nan"), float("inf"), True, [], {}],
)
def test_garbage_is_refused_with_a_clear_error(value: object) -> None:
    with pytest.raises(ValueError, match="money amount"):
        to_decimal(value)
