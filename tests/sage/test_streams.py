"""The stream registry: endpoint knowledge and the query parameters it produces."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from sage_sync.sage.streams import (
    DOCUMENT_STREAMS,
    REFERENCE_STREAMS,
    STREAMS,
    Stream,
    deleted_params,
    get_stream,
    list_params,
    sage_datetime,
)

DESIGN_STREAMS = {
    "businesses",
    "financial_settings",
    "ledger_accounts",
    "contacts",
    "tax_rates",
    "purchase_invoices",
    "purchase_credit_notes",
    "purchase_quick_entries",
    "other_payments",
}


def test_registry_matches_the_raw_tables() -> None:
    assert set(STREAMS) == DESIGN_STREAMS
    assert {s.name for s in DOCUMENT_STREAMS} == {
        "purchase_invoices",
        "purchase_credit_notes",
        "purchase_quick_entries",
        "other_payments",
    }
    assert {s.name for s in REFERENCE_STREAMS} == {"ledger_accounts", "contacts", "tax_rates"}


def test_document_streams_capabilities_and_lines() -> None:
    lines = {s.name: s.line_field for s in DOCUMENT_STREAMS}
    assert lines == {
        "purchase_invoices": "invoice_lines",
        "purchase_credit_notes": "credit_note_lines",
        "purchase_quick_entries": None,
        "other_payments": "payment_lines",
    }
    for s in DOCUMENT_STREAMS:
        assert (s.incremental, s.deletes, s.date_filtered, s.sortable) == (True, True, True, True)
        assert s.path == f"/{s.name}"


def test_reference_and_singleton_streams() -> None:
    assert not STREAMS["ledger_accounts"].incremental and not STREAMS["ledger_accounts"].deletes
    assert not STREAMS["tax_rates"].incremental and not STREAMS["tax_rates"].deletes
    contacts = STREAMS["contacts"]
    assert contacts.incremental and contacts.deletes and not contacts.sortable
    assert dict(contacts.extra_params) == {"contact_type_id": "VENDOR"}
    assert STREAMS["businesses"].kind == "singleton"
    assert STREAMS["businesses"].path_for("abc123") == "/businesses/abc123"
    assert STREAMS["financial_settings"].path_for("abc123") == "/financial_settings"


def test_streams_are_immutable_and_hashable() -> None:
    s = STREAMS["contacts"]
    with pytest.raises(AttributeError):
        s.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.extra_params["x"] = "y"  # type: ignore[index]
    assert len({s, STREAMS["contacts"]}) == 1


def test_list_params_for_a_document_stream() -> None:
    since = datetime(2024, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
    params = list_params(
        STREAMS["purchase_invoices"],
        updated_since=since,
        from_date=date(2024, 1, 1),
        to_date=date(2024, 3, 31),
    )
    assert params == {
        "attributes": "all",
        "items_per_page": 200,
        "sort": "updated_at:asc",
        "updated_or_created_since": "2024-03-01T09:30:15Z",
        "from_date": "2024-01-01",
        "to_date": "2024-03-31",
    }


def test_list_params_first_sync_has_no_watermark() -> None:
    params = list_params(STREAMS["other_payments"], updated_since=None, from_date=date(2024, 1, 1))
    assert "updated_or_created_since" not in params and "to_date" not in params
    assert params["from_date"] == "2024-01-01"


def test_full_refresh_streams_ignore_filters_they_do_not_take() -> None:
    since = datetime(2024, 3, 1, tzinfo=UTC)
    params = list_params(STREAMS["tax_rates"], updated_since=since, from_date=date(2024, 1, 1), to_date=None)
    assert params == {"attributes": "all", "items_per_page": 200}
    contacts = list_params(STREAMS["contacts"], updated_since=since, from_date=date(2024, 1, 1), to_date=None)
    assert contacts == {
        "attributes": "all",
        "items_per_page": 200,
        "updated_or_created_since": "2024-03-01T00:00:00Z",
        "contact_type_id": "VENDOR",
    }


def test_timestamps_are_converted_to_utc_and_naive_ones_refused() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert sage_datetime(datetime(2024, 6, 1, 12, 0, tzinfo=plus_two)) == "2024-06-01T10:00:00Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        sage_datetime(datetime(2024, 6, 1, 12, 0))


def test_page_size_bounds() -> None:
    assert list_params(STREAMS["ledger_accounts"], page_size=50)["items_per_page"] == 50
    for bad in (0, 201):
        with pytest.raises(ValueError, match="page_size"):
            list_params(STREAMS["ledger_accounts"], page_size=bad)


def test_singletons_have_no_list_params() -> None:
    with pytest.raises(ValueError, match="singleton"):
        list_params(STREAMS["financial_settings"])


def test_deleted_params() -> None:
    since = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert deleted_params(STREAMS["purchase_invoices"], since) == {
        "deleted_since": "2024-03-01T08:00:00Z",
        "items_per_page": 200,
    }
    # No contact_type_id: a filter must not hide the deletion of a stored supplier.
    assert deleted_params(STREAMS["contacts"], since, page_size=100) == {
        "deleted_since": "2024-03-01T08:00:00Z",
        "items_per_page": 100,
    }
    with pytest.raises(ValueError, match="deleted_since"):
        deleted_params(STREAMS["tax_rates"], since)


def test_get_stream_names_the_known_ones() -> None:
    assert get_stream("contacts") is STREAMS["contacts"]
    with pytest.raises(KeyError, match="purchase_invoices"):
        get_stream("sales_invoices")


def test_extra_params_given_as_dict_are_frozen() -> None:
    source = {"a": "1"}
    s = Stream(name="x", path="/x", kind="reference", extra_params=source)
    source["a"] = "2"
    assert s.extra_params["a"] == "1"
