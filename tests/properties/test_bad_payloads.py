"""Property tests of the raw loader on hostile, API-shaped payloads (real PostgreSQL, no HTTP).

Every batch mixes records that must load, records that must be quarantined and "wild" records of
unknown validity; whatever the mix, each record ends either stored verbatim (its latest payload equals
the input as JSON) or in ``sage_raw.quarantine`` with a reason and its raw text, and a re-load of the
same batch adds no version. Each example runs in a transaction that is rolled back.

One end-to-end test sends SQL-looking and non-ASCII text through the fake Sage and a real sync.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jinja2
import psycopg
import pytest
from faults.kit import connect, latest, point_env_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from sage_sync.pipeline import sync
from sage_sync.sage.money import to_decimal
from sage_sync.sage.schema import CHECKS, FIELD_TYPES, SCHEMAS
from sage_sync.sage.streams import get_stream
from sage_sync.warehouse import loader
from sandbox.fake_sage.server import FakeSageServer

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LIST_STREAMS = sorted(loader.STREAMS - {"financial_settings"})
HUGE = 100_000
# Keys a random line dict must not take: they are typed (sage_sync.sage.schema) or the line id.
TYPED_LINE_KEYS = {"id"} | {key for schema in SCHEMAS.values() for key in schema.line_fields}

SQLISH = [
    "'; drop table sage_raw.purchase_invoices; --",
    "Robert'); DROP TABLE sage_raw.quarantine;--",
    "1 OR 1=1",
    "\\'; select pg_sleep(10); --",
    "$$; truncate sage_control.companies; $$",
    "E'\\\\x00'",
    "%s %(id)s {} \\N \\.",
]
NON_ASCII = [
    "Café Crème 🍰👩‍👩‍👧‍👦",  # emoji + ZWJ sequence
    "שלום עולם مرحبا",  # RTL scripts
    "\u202eevil\u202c",  # RTL override
    "e\u0301\u0301\u0301 Z\u0335\u0321\u031b",  # combining characters
    "\ufeffBOM \u200b zero width",
    "\U0001d518\U0001d52b\U0001d526 \U0010fffd",  # mathematical letters, last plane
    "\t\r\n\x1b[31m\x7f",
]

# Text PostgreSQL can store: no NUL, no lone surrogates.
safe_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
special_text = st.sampled_from(SQLISH + NON_ASCII)
huge_text = st.builds(
    lambda s, n: (s * (HUGE // len(s) + 1))[:n],
    st.sampled_from(["x", "é", "🍰", "ab'c", "\u05d0\u0301"]),
    st.integers(HUGE - 10, HUGE),
)
AMOUNT_TEXT = re.compile(r"[ \t\n\r\f\v]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?[ \t\n\r\f\v]*")
BLANK = re.compile(r"[ \t\n\r\f\v]*")
# Amounts in every form Sage may send (sage_sync.sage.money: |x| < 10^15, at most 30 places).
# "1e400", "NaN" and "0x1F" used to be here: issue 22 made them invalid (bad_amounts).
valid_amount_strings = st.one_of(
    st.integers(0, 30).flatmap(
        lambda places: st.decimals(min_value=-(10**15) + 1, max_value=10**15 - 1, places=places).map(str)
    ),
    st.integers(-(10**15) + 1, 10**15 - 1).map(str),
    st.sampled_from(["-0", "00012.50", " 12.5 ", "1e3", ".5", "+7", ""]),
)
valid_amounts = st.one_of(
    valid_amount_strings,
    st.integers(-(10**15) + 1, 10**15 - 1),
    st.floats(-1e14, 1e14, allow_nan=False).filter(lambda f: f == 0 or abs(f) >= 1e-12),
    st.none(),
)
# Never acceptable as an amount: the loader must quarantine these.
bad_amounts = st.one_of(
    st.sampled_from(
        ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "-1e16", "0x1F", "1,234.00", "12 GBP", "1_000", "١٢"]
    ),
    st.sampled_from([float("inf"), float("-inf"), 10**15, -(10**400), 1e300, True, False, [], {}]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8).filter(
        lambda t: not AMOUNT_TEXT.fullmatch(t) and not BLANK.fullmatch(t)
    ),
)
bad_dates = st.one_of(
    st.sampled_from(["0000-00-00", "2026-02-30", "2026-13-01", "2025-02-29", "20260101", " 2026-01-01", "1/2/2026"]),
    st.sampled_from([20260101, True, {"date": "2026-01-01"}]),
)
number_strings = st.one_of(valid_amount_strings, st.sampled_from(["1e400", "NaN", "0x1F"]))
good_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    safe_text,
    special_text,
    number_strings,
)
good_values = st.recursive(
    good_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(safe_text, inner, max_size=4)),
    max_leaves=12,
)
good_timestamps = st.one_of(
    st.none(),
    st.datetimes(timezones=st.timezones()).filter(lambda d: d.utcoffset() is not None).map(lambda d: d.isoformat()),
    st.sampled_from(["2024-05-01T10:00:00Z", "2025-12-31T23:59:59.999999+14:00", "2024-02-29T00:00:00-12:00"]),
)
# Never acceptable: the loader must quarantine these values of updated_at.
bad_timestamps = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(safe_text, st.integers(), max_size=2),
    st.sampled_from(
        [
            "yesterday",
            "",
            "2024-13-01T00:00:00Z",
            "2024-05-01T10:00:00",
            "2024-05-01",
            "Z",
            "'; drop table sage_raw.purchase_invoices; --",
        ]
    ),
)
bad_ids = st.one_of(
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(safe_text, st.integers(), max_size=2),
    st.sampled_from(["", "   ", "\t\n"]),
)
poison = st.sampled_from(["a\x00b", "\ud800lone", "tail\udfff", float("nan"), float("inf"), float("-inf")])
wild_values = st.recursive(
    st.one_of(good_scalars, st.floats(), st.text(max_size=10)),  # NaN, inf, NUL and surrogates may appear
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)


def _id(tag: str, suffix: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}-{suffix}"


@st.composite
def good_record(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": _id("good", draw(safe_text.filter(lambda s: "\x00" not in s))),
        "updated_at": draw(good_timestamps),
    }
    record["contact_name"] = draw(st.one_of(special_text, safe_text, huge_text))
    record["notes"] = draw(st.one_of(st.none(), special_text, huge_text))
    record["total_amount"] = draw(valid_amounts)
    record["date"] = draw(st.one_of(st.none(), st.dates().map(date.isoformat)))
    lines = draw(
        st.lists(
            st.dictionaries(safe_text.filter(lambda k: k not in TYPED_LINE_KEYS), good_values, max_size=4), max_size=3
        )
    )
    for number, line in enumerate(lines):
        line["id"] = f"line-{number}"
        line["net_amount"] = draw(valid_amounts)
        line["ledger_account"] = draw(
            st.one_of(st.none(), st.builds(lambda i: {"id": i}, st.sampled_from(["la1", "x y"])))
        )
    record["invoice_lines"] = lines
    record["extra"] = draw(good_values)
    if draw(st.booleans()):
        record.pop("updated_at")  # updated_at is optional
    return record


BAD_KINDS = ["no_id", "null_id", "bad_id", "bad_ts", "poison", "nul_id", "not_object"]
# Wrong values of typed fields (sage_sync.sage.schema), for the streams that declare such a field.
BAD_VALUES = {"amount": bad_amounts, "date": bad_dates}
BAD_VALUES["link"] = st.sampled_from([{"id": 42}, {"id": ""}, "c1", [], {"displayed_as": "x"}])
BAD_VALUES["timestamp"] = st.sampled_from(["2024-02-30T00:00:00Z", "yesterday", 1709287200])
BAD_VALUES["boolean"] = st.sampled_from(["maybe", 1, "yes"])
BAD_VALUES["integer"] = st.sampled_from(["75OO", 7500.0, 10**12])


@st.composite
def bad_record(draw: st.DrawFn, stream: str = "purchase_invoices") -> Any:
    base: dict[str, Any] = {
        "id": _id("bad", "x"),
        "updated_at": "2024-05-01T10:00:00Z",
        "contact_name": draw(special_text),
        "notes": draw(st.one_of(huge_text, special_text)),
    }
    schema, line_field = SCHEMAS[stream], get_stream(stream).line_field
    typed_kinds = ["bad_field"] + (["bad_line_field"] if line_field and schema.line_fields else [])
    kind = draw(st.sampled_from(BAD_KINDS + typed_kinds))
    if kind == "no_id":
        del base["id"]
    elif kind == "null_id":
        base["id"] = None
    elif kind == "bad_id":
        base["id"] = draw(bad_ids)
    elif kind == "bad_ts":
        base["updated_at"] = draw(bad_timestamps)
    elif kind == "poison":
        base[draw(st.sampled_from(["notes", "total_amount", "deep"]))] = {"x": [draw(poison)]}
    elif kind == "nul_id":
        base["id"] = "id\x00" + uuid.uuid4().hex
    elif kind == "bad_field":
        field, field_type = draw(st.sampled_from(sorted(schema.fields.items())))
        base[field] = draw(BAD_VALUES[field_type])
    elif kind == "bad_line_field":
        field, field_type = draw(st.sampled_from(sorted(schema.line_fields.items())))
        base[line_field] = [{"id": "l1"}, {"id": "l2", field: draw(BAD_VALUES[field_type])}]
    else:
        return draw(st.one_of(st.lists(good_values, max_size=3), good_scalars))
    return base


@st.composite
def wild_record(draw: st.DrawFn) -> Any:
    record = draw(st.dictionaries(st.text(max_size=6), wild_values, max_size=4))
    if draw(st.booleans()):
        record["id"] = _id("wild", draw(st.text(max_size=6)))
    if draw(st.booleans()):
        record["updated_at"] = draw(st.one_of(good_timestamps, bad_timestamps))
    return record


batches = st.lists(st.tuples(st.sampled_from(["good", "bad", "wild"]), st.data()), min_size=1, max_size=8)


def _key(value: Any) -> str:
    """A comparison key equal for equal JSON (NaN included), whatever the key order."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True, default=repr)


def _same_json(stored: Any, given_value: Any) -> bool:
    """JSON equality: numbers compare by value as JSON numbers (jsonb keeps 1e16 as 10000000000000000)."""
    if isinstance(given_value, bool) or isinstance(stored, bool):
        return type(stored) is type(given_value) and stored == given_value
    if isinstance(given_value, float):
        return isinstance(stored, int | float) and float(stored) == given_value
    if isinstance(given_value, dict):
        return (
            isinstance(stored, dict)
            and stored.keys() == given_value.keys()
            and all(_same_json(stored[k], v) for k, v in given_value.items())
        )
    if isinstance(given_value, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(given_value)
            and all(_same_json(a, b) for a, b in zip(stored, given_value, strict=True))
        )
    return type(stored) is type(given_value) and stored == given_value


@pytest.fixture
def conn(warehouse: psycopg.Connection) -> Iterator[psycopg.Connection]:
    yield warehouse
    warehouse.rollback()


def _load(conn: psycopg.Connection, stream: str, company: str, run: str, batch: list[Any]) -> loader.LoadResult:
    result = loader.load_records(conn, stream, company, run, batch)
    assert result.rows_seen == len(batch)
    assert result.versions_added + result.quarantined <= len(batch)
    return result


@SETTINGS
@given(
    stream=st.sampled_from(LIST_STREAMS),
    kinds=st.lists(st.sampled_from(["good", "bad", "wild"]), min_size=1, max_size=8),
    data=st.data(),
)
def test_every_record_is_loaded_verbatim_or_quarantined(
    conn: psycopg.Connection, stream: str, kinds: list[str], data: st.DataObject
) -> None:
    make = {"good": good_record, "bad": lambda: bad_record(stream), "wild": wild_record}
    batch = [data.draw(make[kind](), label=kind) for kind in kinds]
    company, run = f"prop-{uuid.uuid4().hex[:12]}", f"run-{uuid.uuid4().hex[:12]}"
    try:
        result = _load(conn, stream, company, run, batch)
        stored = latest(conn, stream, company)
        quarantine = conn.execute(
            "select record_id, raw_payload, reason from sage_raw.quarantine "
            "where company_id = %s and _sync_run_id = %s",
            (company, run),
        ).fetchall()

        loaded, quarantined = [], []
        for kind, record in zip(kinds, batch, strict=True):
            rid = record.get("id") if isinstance(record, dict) else None
            if isinstance(rid, str) and rid in stored and _same_json(stored[rid], record):
                loaded.append(record)
                assert kind != "bad", f"a record that must be refused was loaded: {_key(record)[:300]}"
            else:
                quarantined.append(record)
                assert kind != "good", f"a valid record was not loaded: {_key(record)[:300]}"
        # Quarantined records are kept whole (their raw text parses back to them), each with a reason.
        assert result.quarantined == len(quarantine) == len(quarantined)
        assert Counter(_key(json.loads(raw)) for _, raw, _ in quarantine) == Counter(map(_key, quarantined))
        assert all(reason and reason.strip() for _, _, reason in quarantine)
        assert result.versions_added == len(loaded)
        assert set(stored) == {r["id"] for r in loaded}  # nothing stored that was not given
        for rid, raw, _ in quarantine:  # a quarantine row names the record when it has a usable id
            if rid is not None:
                assert any(
                    isinstance(r, dict) and r.get("id") == rid and _key(r) == _key(json.loads(raw)) for r in quarantined
                )

        # Re-loading the same batch adds no version.
        count = sql.SQL("select count(*) from {} where company_id = %s").format(sql.Identifier("sage_raw", stream))
        before = conn.execute(count, (company,)).fetchone()
        again = _load(conn, stream, company, run, batch)
        assert again.versions_added == 0
        assert again.quarantined == result.quarantined
        assert conn.execute(count, (company,)).fetchone() == before
    finally:
        conn.rollback()


@SETTINGS
@given(good=st.lists(good_record(), min_size=1, max_size=4), bad=bad_record(), position=st.integers(0, 4))
def test_one_bad_record_never_blocks_good_ones(
    conn: psycopg.Connection, good: list[dict[str, Any]], bad: Any, position: int
) -> None:
    batch: list[Any] = [*good]
    batch.insert(min(position, len(batch)), bad)
    company, run = f"prop-{uuid.uuid4().hex[:12]}", f"run-{uuid.uuid4().hex[:12]}"
    try:
        result = _load(conn, "purchase_invoices", company, run, batch)
        assert result.quarantined == 1
        assert result.versions_added == len(good)
        stored = latest(conn, "purchase_invoices", company)
        assert stored.keys() == {r["id"] for r in good}
        assert all(_same_json(stored[r["id"]], r) for r in good)
        assert result.record_ids == [r["id"] for r in good]
    finally:
        conn.rollback()


# -- end to end through the fake Sage ----------------------------------------------------------------


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=7) as server:
        yield server


def test_hostile_text_created_in_sage_lands_verbatim(
    sage: FakeSageServer, warehouse: psycopg.Connection, pg_dsn: str, fernet_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sage.admin.reset()
    point_env_at(monkeypatch, pg_dsn, sage)
    monkeypatch.setattr("sage_sync.sage.client._sleep", lambda _s: None)
    monkeypatch.setattr("sage_sync.sage.auth._sleep", lambda _s: None)
    company = connect(sage)
    vendor = sage.admin.records(company, "contacts")[0]
    account = sage.admin.records(company, "ledger_accounts")[0]
    contact_name = "O'Brien'; drop table sage_raw.purchase_invoices; -- שלום 🍰 e\u0301"
    notes = "\\'; delete from sage_control.companies; --\n\u202eRTL\u202c 👩‍👩‍👧 Z\u0335\u0321 $$ %s {}"
    created = sage.admin.create(
        company,
        "purchase_invoices",
        {
            "contact_id": vendor["id"],
            "contact_name": contact_name,
            "notes": notes,
            "date": sage.admin.now()[:10],
            "vendor_reference": "'; --",
            "invoice_lines": [
                {
                    "ledger_account_id": account["id"],
                    "tax_rate_id": "GB_STANDARD",
                    "quantity": "1",
                    "unit_price": "10.00",
                    "description": "ÆØÅ 'quoted' \"double\" ; -- 🍰",
                }
            ],
        },
    )
    assert created["contact_name"] == contact_name and created["notes"] == notes

    sync.run_company(company)

    warehouse.commit()
    stored = latest(warehouse, "purchase_invoices", company)
    assert stored[created["id"]] == created
    assert stored[created["id"]]["contact_name"] == contact_name
    assert stored[created["id"]]["notes"] == notes
    assert stored[created["id"]]["invoice_lines"][0]["description"] == "ÆØÅ 'quoted' \"double\" ; -- 🍰"
    assert warehouse.execute(
        "select count(*) from sage_raw.quarantine where company_id = %s", (company,)
    ).fetchone() == (0,)
    assert warehouse.execute("select to_regclass('sage_raw.purchase_invoices') is not null").fetchone() == (True,)


# -- the loader and dbt agree on every typed value -------------------------------------------------
# The loader quarantines what sage.schema refuses; dbt's guards (dbt/macros/sage_parsing.sql) read
# the same values as null. If they disagreed, a value could land that dbt then nulls (a silent
# gap), or a value dbt's cast would throw on could land (a failed build for every company).

MACROS = (Path(__file__).resolve().parents[2] / "dbt" / "macros" / "sage_parsing.sql").read_text()
TYPED_READ = {
    "amount": "sage_amount",
    "date": "sage_date",
    "timestamp": "sage_timestamp",
    "boolean": "sage_boolean",
    "integer": "sage_integer",
}

EDGE_VALUES: list[Any] = [
    "2024-05-01T10:00:00Z",
    "2024-05-01T10:00:00.123456+05:30",
    "2024-05-01T10:00:00-0800",
    "2024-05-01T10:00:00+14:59",
    "2024-05-01T10:00:00+15:00",
    "2024-05-01T24:00:00Z",
    "2024-05-01T10:00:60Z",
    "2024-02-29T10:00:00Z",
    "2023-02-29T10:00:00Z",
    "0000-01-01T00:00:00Z",
    "2024-05-01t10:00:00z",
    "2024-05-01 10:00:00Z",
    "true",
    "false",
    "TRUE",
    "yes",
    "t",
    "1",
    "0030",
    "+12",
    "1234567890",
    "\u0661\u0662",
    "",
    "   ",
]
EDGE_VALUES += [
    "NaN",
    "Infinity",
    "-inf",
    "1e400",
    "1e999",
    "1e1000",
    "0x1F",
    "1,234.00",
    "1_000",
    " 12.5 ",
    "\t12.5\n",
    "\u00a012.5",
    ".5",
    "5.",
    ".",
    "+",
    "-0",
    "1e-30",
    "1e-31",
    "0." + "0" * 29 + "1",
    "0." + "0" * 30 + "1",
    "999999999999999.9",
    "1000000000000000",
    "0" * 120 + "1",
]
EDGE_VALUES += [
    "0000-00-00",
    "2026-02-30",
    "2026-13-01",
    "2025-02-29",
    "2024-02-29",
    "9999-12-31",
    "0001-01-01",
    "20260101",
    " 2026-01-01",
]
EDGE_VALUES += [
    True,
    False,
    0,
    1,
    10**9,
    -(10**9),
    10**9 - 1,
    10**15,
    10**15 - 1,
    10**400,
    1e-05,
    1e-31,
    1e300,
    55.55,
    [],
    {},
    {"id": 7},
    {"id": " "},
    {"id": "GBP"},
    "GBP",
]

ascii_junk = st.text(st.sampled_from("0123456789+-.eExX,_ \t\n\u00a0T:Z/"), max_size=30)
typed_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.sampled_from([10**400, -(10**15), 10**15 - 1, 10**9, -(10**9) + 1, 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    valid_amount_strings,
    bad_amounts.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))),
    ascii_junk,
    st.dates().map(date.isoformat),
    bad_dates,
    st.datetimes(timezones=st.timezones())
    .filter(lambda d: d.utcoffset() is not None)
    .map(lambda d: d.isoformat(timespec=random_timespec(d))),
    st.sampled_from(EDGE_VALUES),
    st.builds(lambda i: {"id": i, "displayed_as": "x"}, st.one_of(safe_text, st.integers(), st.none(), st.booleans())),
    st.lists(st.integers(), max_size=2),
)


def random_timespec(value: datetime) -> str:
    """An isoformat precision picked from the value itself (deterministic for hypothesis)."""
    return ["auto", "seconds", "milliseconds", "minutes", "microseconds"][value.microsecond % 5]


def _python_accepts(kind: str, value: Any) -> bool:
    if value is None or value == "":
        return True
    try:
        CHECKS[kind](value)  # type: ignore[index]
    except ValueError:
        return False
    return True


def _render(template: str) -> str:
    return jinja2.Environment(autoescape=False).from_string(MACROS + template).render().strip()  # noqa: S701 (SQL)


@pytest.mark.parametrize("kind", FIELD_TYPES)
def test_the_dbt_guards_agree_with_the_loader_on_edge_values(conn: psycopg.Connection, kind: str) -> None:
    _assert_guards_agree(conn, kind, EDGE_VALUES)


@SETTINGS
@given(kind=st.sampled_from(FIELD_TYPES), values=st.lists(typed_values, min_size=1, max_size=25))
def test_the_dbt_guards_agree_with_the_loader(conn: psycopg.Connection, kind: str, values: list[Any]) -> None:
    _assert_guards_agree(conn, kind, values)


def _assert_guards_agree(conn: psycopg.Connection, kind: str, values: list[Any]) -> None:
    valid = _render(f"{{{{ sage_is_valid('{kind}', 'v.obj', 'x') }}}}")
    read = _render(f"{{{{ {TYPED_READ[kind]}('v.obj', 'x') }}}}") if kind in TYPED_READ else "null"
    query = (
        f"select v.n, {valid}, {read} from jsonb_array_elements(%s::jsonb) with ordinality as v (obj, n) order by v.n"
    )
    documents = [{"x": value} for value in values]
    try:
        rows = conn.execute(query, (json.dumps(documents),)).fetchall()  # a cast that throws fails here
    finally:
        conn.rollback()
    for (_, sql_accepts, typed), value in zip(rows, values, strict=True):
        python_accepts = _python_accepts(kind, value)
        assert sql_accepts is python_accepts, f"{kind} {value!r}: loader {python_accepts}, dbt {sql_accepts}"
        if kind in TYPED_READ:
            blank = value is None or (isinstance(value, str) and BLANK.fullmatch(value) is not None)
            assert (typed is not None) is (python_accepts and not blank), f"{kind} {value!r} read as {typed!r}"
        if kind == "amount" and typed is not None:
            assert typed == to_decimal(value), value
        if kind == "date" and typed is not None:
            assert typed == date.fromisoformat(value), value
