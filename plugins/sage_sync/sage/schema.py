"""The typed fields of each stream's payload, declared once, and the rule for each type.

The raw tables keep Sage's JSON as it arrived; dbt casts some of its fields (dates, amounts,
timestamps, flags, nominal codes) and reads the ids of link objects. This table says which, per
stream and for the elements of the stream's line array, and is read by both sides:

* the loader (``warehouse/loader.py``) quarantines a record any of whose typed fields breaks its
  type's rule, with the field and the value in the reason, so an impossible date or a NaN amount
  never lands;
* dbt reads it through the generated macro ``dbt/macros/sage_schema.sql``
  (``scripts/gen_dbt_streams.py``): every cast there is guarded by the same rule (a value that
  fails it becomes null and its record is listed in ``rpt_invalid_values``), so a bad row already
  in raw can never fail a build; ``tests/dbt/test_stream_registry.py`` checks that each cast in
  the staging models is declared here with that type.

The rules accept every form Sage sends (money as a decimal string or a JSON number, see
``shared/sage-api/NOTES.md``) and nothing PostgreSQL would cast differently; each is mirrored by a
macro in ``dbt/macros/sage_parsing.sql`` and the two are held to the same verdict by
``tests/properties/test_bad_payloads.py``. An absent field, JSON null and, for the scalar types,
the empty string mean "no value", as they do in the staging models.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any, Literal

from sage_sync.sage.money import check_amount
from sage_sync.sage.streams import STREAMS

FieldType = Literal["amount", "date", "timestamp", "boolean", "integer", "link"]
FIELD_TYPES: tuple[FieldType, ...] = ("amount", "date", "timestamp", "boolean", "integer", "link")


@dataclass(frozen=True)
class RecordSchema:
    """The typed fields of one stream: of the record, and of each element of its line array."""

    fields: Mapping[str, FieldType]
    line_fields: Mapping[str, FieldType] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))
        object.__setattr__(self, "line_fields", MappingProxyType(dict(self.line_fields)))


_AUDIT: dict[str, FieldType] = {"created_at": "timestamp", "deleted_at": "timestamp"}
_AMOUNTS: dict[str, FieldType] = {name: "amount" for name in ("net_amount", "tax_amount", "total_amount")}
_BASE_AMOUNTS: dict[str, FieldType] = {
    name: "amount" for name in ("base_currency_net_amount", "base_currency_tax_amount", "base_currency_total_amount")
}
_PURCHASE_DOCUMENT: dict[str, FieldType] = {
    **_AUDIT,
    "transaction_type": "link",
    "contact": "link",
    "currency": "link",
    "status": "link",
    "date": "date",
    "due_date": "date",
    **_AMOUNTS,
    "outstanding_amount": "amount",
    "total_paid": "amount",
    "exchange_rate": "amount",
    **_BASE_AMOUNTS,
}
_PURCHASE_LINE: dict[str, FieldType] = {
    "ledger_account": "link",
    "tax_rate": "link",
    "quantity": "amount",
    "unit_price": "amount",
    **_AMOUNTS,
    **_BASE_AMOUNTS,
}

SCHEMAS: Mapping[str, RecordSchema] = MappingProxyType(
    {
        "businesses": RecordSchema({"created_at": "timestamp", "country": "link"}),
        "financial_settings": RecordSchema(
            {"base_currency": "link", "multi_currency_enabled": "boolean", "year_end_date": "date"}
        ),
        "ledger_accounts": RecordSchema(
            {
                "created_at": "timestamp",
                "nominal_code": "integer",
                "ledger_account_type": "link",
                "ledger_account_group": "link",
                "included_in_chart": "boolean",
            }
        ),
        "contacts": RecordSchema({**_AUDIT, "currency": "link"}),
        "tax_rates": RecordSchema({"created_at": "timestamp", "percentage": "amount", "is_visible": "boolean"}),
        "purchase_invoices": RecordSchema(_PURCHASE_DOCUMENT, _PURCHASE_LINE),
        "purchase_credit_notes": RecordSchema({**_PURCHASE_DOCUMENT, "original_invoice_date": "date"}, _PURCHASE_LINE),
        "purchase_quick_entries": RecordSchema(
            {
                **_AUDIT,
                "quick_entry_type": "link",
                "transaction_type": "link",
                "contact": "link",
                "ledger_account": "link",
                "tax_rate": "link",
                "currency": "link",
                "status": "link",
                "date": "date",
                "due_date": "date",
                **_AMOUNTS,
                "outstanding_amount": "amount",
                "exchange_rate": "amount",
                **_BASE_AMOUNTS,
            }
        ),
        "other_payments": RecordSchema(
            {
                **_AUDIT,
                "transaction_type": "link",
                "payment_method": "link",
                "contact": "link",
                "bank_account": "link",
                "date": "date",
                **_AMOUNTS,
            },
            {"ledger_account": "link", "tax_rate": "link", **_AMOUNTS},
        ),
    }
)

# -- the rules, one per type (each raises ValueError with what is wrong) -------------------------

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
# Sage's form (2021-09-09T14:36:01Z); offsets as real zones have them, at most 14 hours.
_TIMESTAMP = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-](0[0-9]|1[0-4]):?[0-5][0-9])",
    re.ASCII,
)
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}", re.ASCII)  # within PostgreSQL's integer
_NOT_BLANK = re.compile(r"[^ \t\n\r\f\v]")


def check_date(value: Any) -> None:
    """A calendar date ``YYYY-MM-DD`` (years 0001-9999); ``""`` is no date."""
    if not isinstance(value, str):
        raise ValueError(f"is {json_type(value)}, not a YYYY-MM-DD date")
    if value and not (_DATE.fullmatch(value) and _real_date(value)):
        raise ValueError(f"is not a calendar date YYYY-MM-DD: {_clip(value)}")


def check_timestamp(value: Any) -> None:
    """An ISO 8601 date-time with a UTC offset, as Sage writes them; ``""`` is no time."""
    if not isinstance(value, str):
        raise ValueError(f"is {json_type(value)}, not an ISO 8601 timestamp")
    if value and not ((match := _TIMESTAMP.fullmatch(value)) and _real_date(match.group(1))):
        raise ValueError(f"is not an ISO 8601 timestamp with a UTC offset: {_clip(value)}")


def check_boolean(value: Any) -> None:
    """A JSON boolean (or the text PostgreSQL reads the same way: ``"true"``, ``"false"``)."""
    if value is True or value is False or value in ("true", "false"):
        return
    raise ValueError(f"is {json_type(value)} {_clip(value)}, not a boolean")


def check_integer(value: Any) -> None:
    """A whole number of at most 9 digits (a nominal code), as a JSON number or digit string."""
    if isinstance(value, int) and not isinstance(value, bool):
        if -(10**9) < value < 10**9:
            return
    elif isinstance(value, str) and (not value or _INTEGER.fullmatch(value)):
        return
    raise ValueError(f"is {json_type(value)} {_clip(value)}, not an integer of at most 9 digits")


def check_link(value: Any) -> None:
    """A link object ``{"id": "<non-blank string>", ...}``."""
    if not isinstance(value, dict):
        raise ValueError(f"is {json_type(value)}, not a link object with an 'id'")
    link_id = value.get("id")
    if not isinstance(link_id, str) or not _NOT_BLANK.search(link_id):
        raise ValueError(f"has an 'id' that is {json_type(link_id)} {_clip(link_id)}, not a non-blank string")


def _check_amount(value: Any) -> None:
    try:
        check_amount(value)
    except ValueError as exc:
        raise ValueError(f"is {exc}") from None


CHECKS: Mapping[FieldType, Callable[[Any], None]] = MappingProxyType(
    {
        "amount": _check_amount,
        "date": check_date,
        "timestamp": check_timestamp,
        "boolean": check_boolean,
        "integer": check_integer,
        "link": check_link,
    }
)


def _real_date(text: str) -> bool:
    try:
        date.fromisoformat(text[:10])  # year 0, month 13, 30 February: ValueError
    except ValueError:
        return False
    return True


# -- checking a record --------------------------------------------------------------------------


# Fast paths: a string these match is valid without the full check (most values Sage sends). A day
# up to 28 exists in every month, and 0000 is the only 4-digit year that does not.
_FAST: dict[FieldType, Callable[[str], object]] = {
    "amount": re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,30})?", re.ASCII).fullmatch,
    "date": re.compile(r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])", re.ASCII).fullmatch,
    "timestamp": re.compile(
        r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
        r"(?:\.[0-9]{1,6})?Z",
        re.ASCII,
    ).fullmatch,
}
_Check = tuple[str, Callable[[str], object] | None, Callable[[Any], None]]


@dataclass(frozen=True)
class _Plan:
    checks: tuple[_Check, ...]
    line_field: str | None
    line_checks: tuple[_Check, ...]


def _plan_checks(fields: Mapping[str, FieldType]) -> tuple[_Check, ...]:
    return tuple((key, _FAST.get(kind), CHECKS[kind]) for key, kind in fields.items())


def _plans() -> dict[str, _Plan]:
    return {
        name: _Plan(_plan_checks(schema.fields), STREAMS[name].line_field, _plan_checks(schema.line_fields))
        for name, schema in SCHEMAS.items()
    }


_PLANS = _plans()


def invalid_field(stream: str, record: dict[str, Any]) -> str | None:
    """Why ``record`` of ``stream`` breaks its declared types (naming the field), or None if it doesn't.

    Cheap on purpose, it runs on every record the loader sees: one ``dict.get`` per declared field,
    and most values are settled by one regular expression.
    """
    plan = _PLANS[stream]
    reason = _first_bad(plan.checks, record, "")
    if reason is not None or plan.line_field is None:
        return reason
    lines = record.get(plan.line_field)
    if lines is None:
        return None
    if not isinstance(lines, list):
        return f"{plan.line_field!r} is {json_type(lines)}, not an array of lines"
    line_ids: set[str] = set()
    for number, line in enumerate(lines, start=1):
        where = f"{plan.line_field}[{number}]"
        if not isinstance(line, dict):
            return f"{where!r} is {json_type(line)}, not a line object"
        reason = _line_id_problem(line.get("id"), line_ids, where) or _first_bad(plan.line_checks, line, where + ".")
        if reason is not None:
            return reason
    return None


def _first_bad(checks: tuple[_Check, ...], values: dict[str, Any], prefix: str) -> str | None:
    for key, fast, check in checks:
        value = values.get(key)
        if value is None or value == "":  # absent, null and "" are no value
            continue
        if fast is not None and value.__class__ is str and fast(value):
            continue
        try:
            check(value)
        except ValueError as exc:
            return f"{prefix + key!r} {exc}"
    return None


def _line_id_problem(line_id: Any, seen: set[str], where: str) -> str | None:
    """A line's id, when it has one, must be a non-blank string not used by an earlier line.

    The line key in dbt is (document, line id): a repeat would fail its uniqueness test, and with
    it every company's build.
    """
    if line_id is None:
        return None
    if not isinstance(line_id, str) or not _NOT_BLANK.search(line_id):
        return f"{where + '.id'!r} is {json_type(line_id)} {_clip(line_id)}, not a non-blank string"
    if line_id in seen:
        return f"{where + '.id'!r} repeats the id of an earlier line: {_clip(line_id)}"
    seen.add(line_id)
    return None


def json_type(value: Any) -> str:
    """What a JSON value is, in a quarantine reason's words (``an object``, ``null``, ...)."""
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return names.get(type(value), "null" if value is None else f"a {type(value).__name__}")


def _clip(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**100 else "<huge int>"
    return text if len(text) <= 80 else text[:80] + "..."


__all__ = [
    "CHECKS",
    "FIELD_TYPES",
    "SCHEMAS",
    "FieldType",
    "RecordSchema",
    "check_boolean",
    "check_date",
    "check_integer",
    "check_link",
    "check_timestamp",
    "invalid_field",
]
