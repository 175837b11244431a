"""The loader's fast canonical JSON (orjson) gives exactly the bytes of the standard encoder.

Every stored ``content_hash`` is the sha256 of ``json.dumps(..., sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``; if the fast path wrote one byte differently, unchanged records would get new
versions. So: every code point is checked exhaustively (escaping is per character), and generated
payloads of many shapes (nested, non-ASCII keys, Sage's string amounts, floats, NaN, huge ints,
surrogates, NUL) must give the same bytes, or the same quarantine reason, on both paths.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_sync.warehouse import loader

_REFERENCE = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def reference(payload: Any) -> tuple[str, bytes | str]:
    """What the loader stored before orjson: ("ok", bytes) or ("invalid", reason)."""
    try:
        return "ok", loader._utf8(loader._canonical_text(payload))
    except loader._Invalid as exc:
        return "invalid", str(exc)


def fast(payload: Any) -> tuple[str, bytes | str]:
    try:
        return "ok", loader._canonical_bytes(payload)
    except loader._Invalid as exc:
        return "invalid", str(exc)


def _all_code_points() -> list[str]:
    """Every code point but the surrogates, in strings of 4,096 characters."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and c != 0]
    return ["".join(chars[i : i + 4096]) for i in range(0, len(chars), 4096)]


@pytest.mark.parametrize("where", ["value", "key"])
def test_every_code_point_is_escaped_alike(where: str) -> None:
    for chunk in _all_code_points():
        payload = {"s": chunk} if where == "value" else {chunk: 1}
        assert orjson.dumps(payload, option=orjson.OPT_SORT_KEYS) == _REFERENCE.encode(payload).encode()


def test_keys_sort_in_code_point_order() -> None:
    # UTF-8 byte order is code point order; UTF-16 order would put U+FFFF after U+10000.
    keys = ["a", "B", "é", "z", "Z", "\u00ff", "\u0100", "\uffff", "\U00010000", "\U0010fffd", "", "$path", "_"]
    payload = {k: k for k in keys}
    assert orjson.dumps(payload, option=orjson.OPT_SORT_KEYS) == _REFERENCE.encode(payload).encode()


SAGE_AMOUNT = st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False).map(str)
KEYS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["id", "displayed_as", "$path", "net_amount", "é", "Ω", "😀", "\uffff", "\U00010000"]),
)
# Any code point, surrogates and NUL included: both paths must reject those the same way.
ANY_TEXT = st.text(st.characters(codec=None, blacklist_categories=()), max_size=30)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    SAGE_AMOUNT,
    st.text(max_size=30),
    ANY_TEXT,
    st.sampled_from(["1.0", "10:30.5", "1e5", ":e", "[.5]", "\\u0000", "\\\\u0000", "null", "NaN"]),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
NO_FLOAT_JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(KEYS, inner, max_size=6)),
    max_leaves=40,
)
ANY_JSON = st.recursive(
    st.one_of(SCALARS, FLOATS),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(KEYS, inner, max_size=6)),
    max_leaves=40,
)


@pytest.mark.cpu_bound
@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(KEYS, NO_FLOAT_JSON, max_size=8))
def test_orjson_itself_matches_without_floats(payload: dict[str, Any]) -> None:
    """Without floats, orjson's own output is the canonical form (when it accepts the payload)."""
    expected = reference(payload)
    try:
        got = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return  # ints beyond 64 bits, surrogates: the loader falls back
    if expected[0] == "ok":
        assert got == expected[1]
    assert fast(payload) == expected


@pytest.mark.cpu_bound
@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.dictionaries(KEYS, ANY_JSON, max_size=8), st.lists(ANY_JSON, max_size=6)))
def test_loader_canonical_bytes_match_everything(payload: Any) -> None:
    """With floats, NaN, Infinity, huge ints, surrogates and NUL: same bytes or same reason."""
    assert fast(payload) == reference(payload)


@pytest.mark.parametrize(
    "payload",
    [
        {"a": 1e16},
        {"a": 1e-05},
        {"a": [0.1, -0.0, 5e-324, 1.7976931348623157e308]},
        {"a": 1.0},
        {"a": math.nan},
        {"a": [math.inf]},
        {"a": -math.inf, "b": None},
        {"a": 2**64},
        {"a": -(2**63) - 1},
        {1: "non-str key"},
        {"a": {1.5: "float key"}},
        {"a": "\ud800"},
        {"a": "x\x00y"},
        {"\x00": 1},
        {"a": ("tuple", 1)},
        {"a": {"set"}},
        {"a": b"bytes"},
    ],
    ids=repr,
)
def test_the_known_differences_fall_back(payload: Any) -> None:
    assert fast(payload) == reference(payload)


def test_datetime_uuid_and_enum_still_refused_like_json() -> None:
    import enum
    import uuid
    from datetime import UTC, datetime

    class Colour(enum.Enum):
        RED = "red"

    for value in (datetime(2024, 1, 1, tzinfo=UTC), uuid.uuid4(), Colour.RED):
        assert fast({"a": value}) == reference({"a": value})
        assert reference({"a": value})[0] == "invalid"


def test_sage_page_takes_the_fast_path() -> None:
    """The proof is not vacuous: a Sage-shaped record (string amounts, nulls) uses orjson."""
    record = {
        "id": "9f1c",
        "displayed_as": "PI-1",
        "$path": "/purchase_invoices/9f1c",
        "net_amount": "1234.50",
        "exchange_rate": "1.0",
        "deleted_at": None,
        "contact": {"id": "c1", "displayed_as": "Zoë's Eggs"},
        "invoice_lines": [{"quantity": "1.0", "unit_price": "10.00"}],
        "count": 3,
    }
    data = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    assert loader._orjson_safe(data, record)
    assert loader._canonical_bytes(record) == data == reference(record)[1]
