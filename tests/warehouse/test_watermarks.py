"""Watermarks only move forward, commit with the caller, and are cleared only on purpose."""

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from sage_sync.warehouse.registry import register_company
from sage_sync.warehouse.watermarks import Watermark, clear_watermarks, get_watermarks, set_watermark

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def company(warehouse: psycopg.Connection) -> str:
    register_company(warehouse, "biz-1", "Acme", "2024-Q1")
    warehouse.commit()
    return "biz-1"


def test_set_and_get(warehouse: psycopg.Connection, company: str) -> None:
    assert get_watermarks(warehouse, company) == {}
    assert set_watermark(warehouse, company, "contacts", updated_since=T0) == Watermark(T0, None)
    set_watermark(warehouse, company, "purchase_invoices", updated_since=T0, deleted_since=T0)
    assert get_watermarks(warehouse, company) == {
        "contacts": Watermark(T0, None),
        "purchase_invoices": Watermark(T0, T0),
    }


def test_never_moves_backwards(warehouse: psycopg.Connection, company: str) -> None:
    set_watermark(warehouse, company, "contacts", updated_since=T0, deleted_since=T0)
    earlier = T0 - timedelta(days=1)
    assert set_watermark(warehouse, company, "contacts", updated_since=earlier, deleted_since=earlier) == Watermark(
        T0, T0
    )
    # None leaves a value alone; each value moves independently.
    later = T0 + timedelta(seconds=1)
    assert set_watermark(warehouse, company, "contacts", updated_since=later) == Watermark(later, T0)
    assert set_watermark(warehouse, company, "contacts") == Watermark(later, T0)


def test_other_offsets_compare_by_instant(warehouse: psycopg.Connection, company: str) -> None:
    set_watermark(warehouse, company, "contacts", updated_since=T0)
    # Later on the wall clock, one hour earlier on the timeline.
    set_watermark(warehouse, company, "contacts", updated_since=datetime.fromisoformat("2024-05-01T12:30:00+01:00"))
    assert get_watermarks(warehouse, company)["contacts"].updated_since == T0


def test_moves_with_the_callers_transaction(warehouse: psycopg.Connection, company: str) -> None:
    set_watermark(warehouse, company, "contacts", updated_since=T0)
    warehouse.commit()
    set_watermark(warehouse, company, "contacts", updated_since=T0 + timedelta(hours=1))
    warehouse.rollback()
    assert get_watermarks(warehouse, company)["contacts"].updated_since == T0


def test_clear_is_the_only_way_back(warehouse: psycopg.Connection, company: str) -> None:
    set_watermark(warehouse, company, "contacts", updated_since=T0)
    set_watermark(warehouse, company, "tax_rates", updated_since=T0)
    assert clear_watermarks(warehouse, company, ["tax_rates"]) == 1
    assert set(get_watermarks(warehouse, company)) == {"contacts"}
    assert clear_watermarks(warehouse, company) == 1
    earlier = T0 - timedelta(days=30)
    assert set_watermark(warehouse, company, "contacts", updated_since=earlier) == Watermark(earlier, None)


def test_naive_datetimes_rejected(warehouse: psycopg.Connection, company: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        set_watermark(warehouse, company, "contacts", updated_since=datetime(2024, 1, 1))
