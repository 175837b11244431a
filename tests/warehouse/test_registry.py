"""The company registry: register, re-register, status changes and the event log."""

import psycopg
import pytest

from sage_sync.core.quarters import Quarter
from sage_sync.warehouse.registry import (
    UnknownCompanyError,
    get_company,
    list_companies,
    log_event,
    register_company,
    set_status,
)
from sage_sync.warehouse.runs import finish_run, start_run


def _events(conn: psycopg.Connection, company_id: str) -> list[tuple[str, dict]]:
    return conn.execute(
        "select event_type, details from sage_control.connection_events where company_id = %s order by event_id",
        (company_id,),
    ).fetchall()


def test_register_new_company(warehouse: psycopg.Connection) -> None:
    company = register_company(warehouse, "biz-1", "Acme Ltd", "2024-Q2")
    assert company.company_id == "biz-1"
    assert company.status == "initial_sync"
    assert company.accounts_provider == "sage_accounting"
    assert company.synced_from == Quarter(2024, 2)
    assert company.connected_at is not None and company.disconnected_at is None
    assert get_company(warehouse, "biz-1") == company
    assert _events(warehouse, "biz-1") == [
        (
            "connected",
            {
                "company_name": "Acme Ltd",
                "reconnected": False,
                "status": "initial_sync",
                "synced_from_quarter": "2024-Q2",
            },
        ),
    ]


def test_register_rejects_malformed_quarter(warehouse: psycopg.Connection) -> None:
    with pytest.raises(ValueError, match="malformed quarter"):
        register_company(warehouse, "biz-1", "Acme", "2024-Q5")
    assert register_company(warehouse, "biz-1", "Acme", Quarter(2023, 4)).synced_from_quarter == "2023-Q4"


def test_works_in_the_callers_transaction(warehouse: psycopg.Connection) -> None:
    register_company(warehouse, "biz-1", "Acme", "2024-Q1")
    warehouse.rollback()
    assert get_company(warehouse, "biz-1") is None
    assert _events(warehouse, "biz-1") == []


def test_reregister_before_any_sync_goes_back_to_initial_sync(warehouse: psycopg.Connection) -> None:
    register_company(warehouse, "biz-1", "Acme", "2024-Q1")
    set_status(warehouse, "biz-1", "needs_reauth", last_error="invalid_grant")
    company = register_company(warehouse, "biz-1", "Acme Renamed", "2020-Q1")
    assert company.status == "initial_sync"
    assert company.company_name == "Acme Renamed"
    assert company.synced_from_quarter == "2024-Q1"  # a login does not move the history window
    assert company.last_error is None
    assert _events(warehouse, "biz-1")[-1][1]["reconnected"] is True


def test_reregister_after_a_successful_sync_is_active(warehouse: psycopg.Connection) -> None:
    register_company(warehouse, "biz-1", "Acme", "2024-Q1")
    run_id = start_run(warehouse, "biz-1", "daily")
    finish_run(warehouse, run_id, "success")
    set_status(warehouse, "biz-1", "disconnected", event_type="disconnected")
    disconnected = get_company(warehouse, "biz-1")
    assert disconnected is not None and disconnected.disconnected_at is not None
    company = register_company(warehouse, "biz-1", "Acme", "2024-Q1")
    assert company.status == "active"
    assert company.disconnected_at is None


def test_failed_runs_do_not_count_as_completed(warehouse: psycopg.Connection) -> None:
    register_company(warehouse, "biz-1", "Acme", "2024-Q1")
    finish_run(warehouse, start_run(warehouse, "biz-1", "daily"), "failed", error="boom")
    assert register_company(warehouse, "biz-1", "Acme", "2024-Q1").status == "initial_sync"


def test_list_companies(warehouse: psycopg.Connection) -> None:
    for company_id in ("c", "a", "b"):
        register_company(warehouse, company_id, company_id.upper(), "2024-Q1")
    set_status(warehouse, "b", "active")
    set_status(warehouse, "c", "error", last_error="HTTP 500")
    assert [c.company_id for c in list_companies(warehouse)] == ["a", "b", "c"]
    assert [c.company_id for c in list_companies(warehouse, ["active", "initial_sync"])] == ["a", "b"]
    assert list_companies(warehouse, []) == []
    with pytest.raises(ValueError, match="unknown company status"):
        list_companies(warehouse, ["bogus"])


def test_set_status_and_event(warehouse: psycopg.Connection) -> None:
    register_company(warehouse, "biz-1", "Acme", "2024-Q1")
    company = set_status(
        warehouse, "biz-1", "error", last_error="HTTP 500", event_type="sync_failed", details={"run": "r1"}
    )
    assert (company.status, company.last_error) == ("error", "HTTP 500")
    assert _events(warehouse, "biz-1")[-1] == ("sync_failed", {"status": "error", "run": "r1", "error": "HTTP 500"})
    cleared = set_status(warehouse, "biz-1", "active")
    assert cleared.last_error is None
    assert len(_events(warehouse, "biz-1")) == 2  # no event_type, no event
    with pytest.raises(ValueError, match="unknown company status"):
        set_status(warehouse, "biz-1", "paused")
    with pytest.raises(UnknownCompanyError):
        set_status(warehouse, "nope", "active")


def test_log_event_defaults_and_verbatim_details(warehouse: psycopg.Connection) -> None:
    log_event(warehouse, "biz-1", "reauthorised")
    log_event(warehouse, "biz-1", "note", {"text": "'); drop table x; --", "n": 1})
    assert _events(warehouse, "biz-1") == [("reauthorised", {}), ("note", {"text": "'); drop table x; --", "n": 1})]
