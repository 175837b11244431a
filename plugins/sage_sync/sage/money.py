"""Numbers from Sage: money as ``Decimal`` (never through ``float``), counts as ``int``.

The spec says amounts are doubles, but the live API sends most of them as JSON strings
(``"-430035.84"``) and some as numbers; both must come out exact. Envelope counts and token
lifetimes arrive as numbers or strings too.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation


def to_decimal(value: object) -> Decimal | None:
    """Parse a Sage amount (string, int, float or Decimal) into a finite ``Decimal``.

    ``None`` and empty strings are "no amount" and give ``None``. Numbers go through
    ``str()`` so a JSON float such as ``55.55`` stays ``Decimal("55.55")`` rather than its
    binary expansion. Booleans, NaN, infinities and non-numeric text raise ``ValueError``.
    """
    if value is None:
        return None
    if isinstance(value, bool):  # bool is an int subclass; True is not an amount
        raise ValueError(f"not a money amount: {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int | float):
        result = _parse(str(value), value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        result = _parse(text, value)
    else:
        raise ValueError(f"not a money amount: {type(value).__name__} {value!r}")
    if not result.is_finite():
        raise ValueError(f"not a finite money amount: {value!r}")
    return result


def _parse(text: str, original: object) -> Decimal:
    if "_" in text:  # Decimal() would accept "1_000"; Sage never sends digit separators
        raise ValueError(f"not a money amount: {original!r}")
    try:
        return Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not a money amount: {original!r}") from exc


def to_int(value: object) -> int | None:
    """An integer from a number or numeric string (``$total``, ``expires_in``); None if absent or not one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
