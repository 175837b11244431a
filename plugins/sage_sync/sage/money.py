"""Numbers from Sage: money as ``Decimal`` (never through ``float``), counts as ``int``.

The spec says amounts are doubles, but the live API sends most of them as JSON strings
(``"-430035.84"``) and some as numbers; both must come out exact. Envelope counts and token
lifetimes arrive as numbers or strings too.

What counts as an amount is one rule, kept here and mirrored exactly by the dbt guard
(``dbt/macros/sage_parsing.sql``, macro ``sage_is_amount``; tests/properties/test_bad_payloads.py
holds the two to the same verdict on hostile values):

* a JSON number, or a string of ASCII decimal notation (``"55.55"``, ``" 12.30 "``, ``"1e3"``),
  optionally surrounded by ASCII whitespace and at most ``MAX_AMOUNT_TEXT`` characters long;
* finite, with ``|amount| < MAX_AMOUNT`` and at most ``MAX_AMOUNT_SCALE`` decimal places.

The bounds keep out what is valid JSON and even a valid ``numeric`` but never money: ``NaN`` and
``Infinity`` (PostgreSQL's numeric takes both, and one NaN line turns every sum it meets into NaN),
``1e400`` (a float reader makes it infinite), and text PostgreSQL's cast would throw on
(``"1e99999"``), which would fail a whole dbt build for every company.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# Far above any real amount, rate or quantity in any currency (10^15 is a thousand trillion), and
# far below where float readers of the marts lose whole units (2^53 is about 9 x 10^15).
MAX_AMOUNT = 10**15
MAX_AMOUNT_SCALE = 30  # decimal places; a double's repr down to about 1e-13 fits
MAX_AMOUNT_TEXT = 100  # characters of a string amount, whitespace included
# ASCII only: Decimal() also reads other scripts' digits ("١٢") and strips Unicode spaces, which
# PostgreSQL's numeric does not. Exponent digits are capped so PostgreSQL's cast can never throw.
_WS = "[ \t\n\r\f\v]*"
_AMOUNT_TEXT = re.compile(_WS + r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?)" + _WS, re.ASCII)
_BLANK = re.compile(_WS)
# The common case, decided without building a Decimal: a plain decimal string within the bounds.
_PLAIN_AMOUNT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,30})?", re.ASCII)
_MAX = Decimal(MAX_AMOUNT)


def to_decimal(value: object) -> Decimal | None:
    """Parse a Sage amount (string, int, float or Decimal) into a finite ``Decimal``.

    ``None`` and empty (or blank) strings are "no amount" and give ``None``. Numbers go through
    ``str()`` so a JSON float such as ``55.55`` stays ``Decimal("55.55")`` rather than its
    binary expansion. Booleans, NaN, infinities, non-numeric text and values outside the bounds
    of the module docstring raise ``ValueError``.
    """
    if value is None:
        return None
    if isinstance(value, bool):  # bool is an int subclass; True is not an amount
        raise ValueError(f"not a money amount: {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        if -MAX_AMOUNT < value < MAX_AMOUNT:  # before str(): a 5,000-digit int has no str()
            return Decimal(value)
        raise ValueError(f"not a money amount below 10^15: {_short(value)}")
    elif isinstance(value, float):
        result = _parse(repr(value), value)
    elif isinstance(value, str):
        if len(value) > MAX_AMOUNT_TEXT:
            raise ValueError(f"not a money amount (over {MAX_AMOUNT_TEXT} characters): {_short(value)}")
        match = _AMOUNT_TEXT.fullmatch(value)
        if match is None:
            if _BLANK.fullmatch(value):
                return None
            raise ValueError(f"not a money amount: {_short(value)}")
        result = Decimal(match.group(1))
    else:
        raise ValueError(f"not a money amount: {type(value).__name__} {_short(value)}")
    _check_bounds(result, value)
    return result


def check_amount(value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an amount :func:`to_decimal` accepts (or absent).

    What the loader calls on every amount of every record: plain decimal strings, by far the most
    common, are settled by one regular expression.
    """
    if value.__class__ is str and _PLAIN_AMOUNT.fullmatch(value):  # type: ignore[arg-type]
        return
    to_decimal(value)


def _check_bounds(result: Decimal, original: object) -> None:
    if not result.is_finite():
        raise ValueError(f"not a finite money amount: {_short(original)}")
    if not -_MAX < result < _MAX:
        raise ValueError(f"not a money amount below 10^15: {_short(original)}")
    exponent = result.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if -exponent > MAX_AMOUNT_SCALE:
        raise ValueError(f"not a money amount of at most {MAX_AMOUNT_SCALE} decimal places: {_short(original)}")


def _parse(text: str, original: object) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not a money amount: {_short(original)}") from exc


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**100 else f"<{value.bit_length()}-bit int>"
    return text if len(text) <= 80 else text[:80] + "..."


def to_int(value: object) -> int | None:
    """An integer from a number or numeric string (``$total``, ``expires_in``); None if absent or not one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
