"""The raw loader on real PostgreSQL: new versions only, nothing lost, nothing partial."""

import hashlib
import json
import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from sage_sync.warehouse.loader import LoadResult, content_hash, load_records, record_deletions

STREAM = "purchase_invoices"
CO = "biz-1"
RUN = "run-1"


def invoice(record_id: str, total: Any = "12.00", updated_at: Any = "2024-03-01T10:00:00Z", **extra: Any) -> dict:
    return {
        "id": record_id,
        "displayed_as": f"PI-{record_id}",
        "$path": f"/purchase_invoices/{record_id}",
        "updated_at": updated_at,
        "total_amount": total,
        "status": {"id": "UNPAID"},
        "contact": {"id": "c1", "displayed_as": "Café Müller"},
        "invoice_lines": [{"id": "l1", "net_amount": "10.00", "tax_rate": {"id": "GB_STANDARD"}}],
        **extra,
    }


def versions(conn: psycopg.Connection, record_id: str | None = None, stream: str = STREAM) -> list[dict]:
    """Payloads of the stored versions, oldest first."""
    rows = conn.execute(
        f"select payload from sage_raw.{stream} "
        "where company_id = %s and (%s::text is null or record_id = %s) order by record_id, _extracted_at",
        (CO, record_id, record_id),
    ).fetchall()
    return [r[0] for r in rows]


def count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(f"select count(*) from sage_raw.{table}").fetchone()
    assert row is not None
    return row[0]


def quarantined(conn: psycopg.Connection) -> list[tuple[str | None, str, str]]:
    return conn.execute(
        "select record_id, reason, raw_payload from sage_raw.quarantine order by _extracted_at, reason"
    ).fetchall()


def load(conn: psycopg.Connection, records: list[Any], **kwargs: Any) -> LoadResult:
    result = load_records(conn, kwargs.pop("stream", STREAM), CO, RUN, records, **kwargs)
    conn.commit()
    return result


def test_first_load_stores_everything_with_metadata(warehouse: psycopg.Connection) -> None:
    records = [invoice("a"), invoice("b", updated_at="2024-03-02T09:30:00+02:00"), invoice("c", updated_at=None)]
    result = load(warehouse, records)
    assert result == LoadResult(
        rows_seen=3,
        versions_added=3,
        quarantined=0,
        max_updated_at=datetime(2024, 3, 2, 7, 30, tzinfo=UTC),
        record_ids=["a", "b", "c"],
    )
    rows = warehouse.execute(
        f"select record_id, source_updated_at, payload, content_hash, _sync_run_id, "
        f"_extracted_at = (select max(_extracted_at) from sage_raw.{STREAM}) from sage_raw.{STREAM} "
        "order by record_id"
    ).fetchall()
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert rows[0][1] == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert rows[2][1] is None
    for (record_id, _, payload, digest, run, same_txn_time), record in zip(rows, records, strict=True):
        assert payload == record, record_id
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert digest == hashlib.sha256(canonical.encode()).hexdigest() == content_hash(record)
        assert run == RUN and same_txn_time


def test_rerun_adds_nothing(warehouse: psycopg.Connection) -> None:
    records = [invoice(str(i)) for i in range(50)]
    load(warehouse, records)
    again = load(warehouse, [dict(r) for r in reversed(records)])
    assert again.versions_added == 0 and again.rows_seen == 50 and len(again.record_ids) == 50
    assert count(warehouse, STREAM) == 50


def test_key_order_does_not_make_a_new_version(warehouse: psycopg.Connection) -> None:
    record = invoice("a")
    load(warehouse, [record])
    shuffled = dict(reversed(list(record.items())))
    assert load(warehouse, [shuffled]).versions_added == 0


def test_changed_record_adds_exactly_one_version(warehouse: psycopg.Connection) -> None:
    load(warehouse, [invoice("a"), invoice("b")])
    result = load(warehouse, [invoice("a", total="99.00"), invoice("b")])
    assert result.versions_added == 1
    assert [v["total_amount"] for v in versions(warehouse, "a")] == ["12.00", "99.00"]
    assert len(versions(warehouse, "b")) == 1


def test_a_b_a_keeps_three_versions(warehouse: psycopg.Connection) -> None:
    for total in ("1.00", "2.00", "1.00"):
        assert load(warehouse, [invoice("a", total=total)]).versions_added == 1
    assert [v["total_amount"] for v in versions(warehouse, "a")] == ["1.00", "2.00", "1.00"]
    assert load(warehouse, [invoice("a", total="1.00")]).versions_added == 0


def test_duplicates_in_a_batch_keep_the_last(warehouse: psycopg.Connection) -> None:
    result = load(warehouse, [invoice("a", total="1.00"), invoice("b"), invoice("a", total="3.00")])
    assert result.versions_added == 2 and result.rows_seen == 3
    assert result.record_ids == ["a", "b"]
    assert [v["total_amount"] for v in versions(warehouse, "a")] == ["3.00"]


def test_many_pages_in_one_transaction(warehouse: psycopg.Connection) -> None:
    load_records(warehouse, STREAM, CO, RUN, [invoice("a", total="1.00"), invoice("b")])
    # The same record changed on a later page of the same transaction: a second, strictly later version.
    second = load_records(warehouse, STREAM, CO, RUN, [invoice("a", total="2.00"), invoice("c")])
    third = load_records(warehouse, STREAM, CO, RUN, [invoice("a", total="2.00")])
    warehouse.commit()
    assert (second.versions_added, third.versions_added) == (2, 0)
    latest = warehouse.execute(
        f"select payload->>'total_amount' from sage_raw.{STREAM} where record_id = 'a' "
        "order by _extracted_at desc limit 1"
    ).fetchone()
    assert latest == ("2.00",)
    assert count(warehouse, STREAM) == 4
    assert load(warehouse, [invoice("a", total="2.00")]).versions_added == 0


def test_autocommit_connection_gets_its_own_transaction(pg_dsn: str, warehouse: psycopg.Connection) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        result = load_records(conn, STREAM, CO, RUN, [invoice("a"), invoice("b"), "junk"])
    assert (result.versions_added, result.quarantined) == (2, 1)
    assert count(warehouse, STREAM) == 2 and count(warehouse, "quarantine") == 1


def test_bad_records_are_quarantined_and_good_ones_load(warehouse: psycopg.Connection) -> None:
    good = [
        invoice("sql", notes="'); drop table sage_raw.purchase_invoices; --", reference="$$ \\ \\\\ \t\n\r"),
        invoice("unicode", notes="Ünïcödé — 日本語 — 🎉 \u2028 \ufeff", contact_name="Zoë"),
        invoice("huge", notes="x" * 2_000_000 + "é"),
        invoice("escaped-nul", notes="a literal backslash-u0000: \\u0000 and \\\\u0000"),
        invoice("control", notes="\x01\x1f\x7f"),
        invoice("offset", updated_at="2024-03-01T12:00:00.123456+05:30"),
        {"id": "minimal"},
    ]
    bad = [
        ({"displayed_as": "no id"}, None, "missing 'id'"),
        ({"id": None}, None, "'id' is null"),
        ({"id": ""}, None, "'id' is an empty string"),
        ({"id": 42}, None, "'id' is a number, not a string"),
        (["not", "an", "object"], None, "record is an array, not a JSON object"),
        ("a string", None, "record is a string, not a JSON object"),
        (None, None, "record is null, not a JSON object"),
        (invoice("bad-ts", updated_at="yesterday"), "bad-ts", "'updated_at' is not an ISO 8601 timestamp: 'yesterday'"),
        (invoice("naive-ts", updated_at="2024-03-01T10:00:00"), "naive-ts", "'updated_at' has no UTC offset"),
        (invoice("num-ts", updated_at=1709287200), "num-ts", "'updated_at' is a number, not an ISO 8601"),
        (invoice("nul", notes="a\x00b"), "nul", "NUL character"),
        ({"id": "nul-key", "a\x00": 1}, "nul-key", "NUL character"),
        ({"id": "nul-in-id\x00"}, None, "NUL character"),
        (invoice("surrogate", notes="\ud800"), "surrogate", "unpaired surrogate"),
        ({"id": "\udfff"}, None, "unpaired surrogate"),
        (invoice("nan", total=float("nan")), "nan", "'total_amount' is not a finite money amount"),
        (invoice("nan-untyped", weird=float("nan")), "nan-untyped", "not valid JSON"),
        (invoice("object", when=datetime(2024, 1, 1)), "object", "not JSON-serialisable"),
    ]
    records: list[Any] = []
    for i, item in enumerate(bad):
        records.append(item[0])
        records.append(good[i % len(good)] if i < len(good) else invoice(f"filler-{i}"))
    result = load(warehouse, records)

    assert result.rows_seen == len(records)
    assert result.quarantined == len(bad)
    stored = {v["id"]: v for v in versions(warehouse)}
    for record in good:
        assert stored[record["id"]] == record, record["id"]
    assert result.versions_added == len(stored) == len(records) - len(bad)

    rows = warehouse.execute(
        "select record_id, reason, raw_payload, stream, company_id, _sync_run_id from sage_raw.quarantine"
    ).fetchall()
    assert len(rows) == len(bad)
    by_reason = list(rows)
    for record, record_id, reason in bad:
        match = [r for r in by_reason if reason in r[1] and r[0] == record_id]
        assert match, (reason, record_id, [r[1] for r in rows])
        row = match[0]
        by_reason.remove(row)
        assert row[3:] == (STREAM, CO, RUN)
        assert "\x00" not in row[2]
        if isinstance(record, dict) and record.get("id") == "nul":
            assert json.loads(row[2]) == record  # the raw text keeps the record whole
    source = warehouse.execute(f"select source_updated_at from sage_raw.{STREAM} where record_id = 'offset'").fetchone()
    assert source == (datetime(2024, 3, 1, 6, 30, 0, 123456, tzinfo=UTC),)


def test_invalid_last_duplicate_is_quarantined(warehouse: psycopg.Connection) -> None:
    result = load(warehouse, [invoice("a"), invoice("a", notes="\x00")])
    assert (result.versions_added, result.quarantined, result.record_ids) == (0, 1, [])


def test_unknown_stream_is_refused(warehouse: psycopg.Connection) -> None:
    with pytest.raises(ValueError, match="unknown stream"):
        load_records(warehouse, "sales_invoices; drop table x", CO, RUN, [invoice("a")])


def test_empty_batch(warehouse: psycopg.Connection) -> None:
    assert load(warehouse, []) == LoadResult(0, 0, 0, None, [])


def test_singleton_uses_the_company_id(warehouse: psycopg.Connection) -> None:
    settings = {"base_currency": {"id": "GBP"}, "multi_currency_enabled": False, "updated_at": "2024-01-01T00:00:00Z"}
    result = load(warehouse, [settings], stream="financial_settings", record_id_override=CO)
    assert result.record_ids == [CO] and result.versions_added == 1
    again = load(warehouse, [settings], stream="financial_settings", record_id_override=CO)
    assert again.versions_added == 0
    changed = load(
        warehouse, [{**settings, "multi_currency_enabled": True}], stream="financial_settings", record_id_override=CO
    )
    assert changed.versions_added == 1
    assert len(versions(warehouse, CO, stream="financial_settings")) == 2


def test_companies_are_kept_apart(warehouse: psycopg.Connection) -> None:
    load(warehouse, [invoice("a")])
    other = load_records(warehouse, STREAM, "biz-2", RUN, [invoice("a")])
    warehouse.commit()
    assert other.versions_added == 1


def test_rollback_mid_load_leaves_nothing(warehouse: psycopg.Connection) -> None:
    class Exploding(dict):
        """Valid to the validator, fails while being serialised inside the COPY."""

        def items(self):  # type: ignore[override]
            raise RuntimeError("connection lost")

    load_records(warehouse, STREAM, CO, RUN, [invoice("page1"), {"bad": 1}])  # an earlier page, uncommitted
    with pytest.raises(RuntimeError, match="connection lost"):
        load_records(warehouse, STREAM, CO, RUN, [invoice(str(i)) for i in range(500)] + [Exploding(id="boom")])
    warehouse.rollback()
    assert count(warehouse, STREAM) == 0
    assert count(warehouse, "quarantine") == 0
    # The connection is usable and the same load now goes through.
    assert load(warehouse, [invoice(str(i)) for i in range(500)]).versions_added == 500


def test_rollback_when_the_record_source_fails(warehouse: psycopg.Connection) -> None:
    def records():
        yield invoice("a")
        yield invoice("b")
        raise ConnectionError("Sage went away")

    with pytest.raises(ConnectionError):
        load_records(warehouse, STREAM, CO, RUN, records())
    warehouse.rollback()
    assert count(warehouse, STREAM) == 0


def test_concurrent_loads_of_the_same_record_add_one_version(pg_dsn: str, warehouse: psycopg.Connection) -> None:
    barrier = threading.Barrier(2)
    results: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with psycopg.connect(pg_dsn) as conn:
                barrier.wait(10)
                result = load_records(conn, STREAM, CO, RUN, [invoice("a"), invoice("b")])
                results.append(result.versions_added)
                conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert sorted(results) == [0, 2]
    assert count(warehouse, STREAM) == 2


def test_record_deletions_is_idempotent(warehouse: psycopg.Connection) -> None:
    deleted = [
        {"id": "a", "deleted_at": "2024-04-01T10:00:00Z"},
        {"id": "b", "deleted_at": None},
        {"id": "c"},
        {"id": "a", "deleted_at": "2024-04-01T10:00:00Z"},  # repeated in the batch
        {"deleted_at": "2024-04-01T10:00:00Z"},  # no id
        {"id": "d", "deleted_at": "soon"},
    ]
    assert record_deletions(warehouse, STREAM, CO, RUN, deleted) == 3
    warehouse.commit()
    assert record_deletions(warehouse, STREAM, CO, RUN, deleted) == 0
    assert record_deletions(warehouse, STREAM, CO, RUN, [{"id": "e"}]) == 1
    # Another detection method or stream is another fact.
    assert record_deletions(warehouse, STREAM, CO, RUN, [{"id": "a"}], method="reconciliation") == 1
    assert record_deletions(warehouse, "contacts", CO, RUN, [{"id": "a"}]) == 1
    warehouse.commit()
    rows = warehouse.execute(
        "select record_id, source_deleted_at, detection_method, payload from sage_raw.deletions "
        "where stream = %s and detection_method = 'deleted_since' order by record_id",
        (STREAM,),
    ).fetchall()
    assert rows == [
        ("a", datetime(2024, 4, 1, 10, tzinfo=UTC), "deleted_since", {"id": "a", "deleted_at": "2024-04-01T10:00:00Z"}),
        ("b", None, "deleted_since", {"id": "b", "deleted_at": None}),
        ("c", None, "deleted_since", {"id": "c"}),
        ("e", None, "deleted_since", {"id": "e"}),
    ]
    reasons = sorted(r[1] for r in quarantined(warehouse))
    assert len(reasons) == 4  # the id-less and the bad deleted_at, once per call
    assert any("missing 'id'" in r for r in reasons) and any("'deleted_at'" in r for r in reasons)
    with pytest.raises(ValueError, match="detection method"):
        record_deletions(warehouse, STREAM, CO, RUN, [{"id": "a"}], method="guess")
    assert record_deletions(warehouse, STREAM, CO, RUN, []) == 0


# -- typed fields (issue 22, items 5 and 6) ---------------------------------------------------------
# What dbt casts (sage_sync.sage.schema.SCHEMAS) is validated at load: one impossible date or
# non-finite amount must be quarantined with its reason, never stored for dbt to choke on (one
# failing cast stopped every company's marts) or to sum (one NaN made every total NaN).

LINE = {"id": "l1", "net_amount": "10.00", "tax_rate": {"id": "GB_STANDARD"}}
NON_FINITE = ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "-1e400", "1e99999", "sNaN"]


@pytest.mark.parametrize(
    ("stream", "changes", "reason"),
    [
        # dates
        (STREAM, {"date": "0000-00-00"}, "'date' is not a calendar date YYYY-MM-DD: '0000-00-00'"),
        (STREAM, {"date": "2026-02-30"}, "'date' is not a calendar date"),
        (STREAM, {"date": "2026-13-01"}, "'date' is not a calendar date"),
        (STREAM, {"due_date": "0001-00-01"}, "'due_date' is not a calendar date"),
        (STREAM, {"date": "20260101"}, "'date' is not a calendar date"),
        (STREAM, {"date": "2026-01-01T00:00:00Z"}, "'date' is not a calendar date"),
        (STREAM, {"date": " 2026-01-01"}, "'date' is not a calendar date"),
        (STREAM, {"date": 20260101}, "'date' is a number, not a YYYY-MM-DD date"),
        (STREAM, {"date": True}, "'date' is a boolean"),
        ("purchase_credit_notes", {"original_invoice_date": "yesterday"}, "'original_invoice_date' is not a calendar"),
        ("financial_settings", {"year_end_date": "2025-02-29"}, "'year_end_date' is not a calendar date"),
        # timestamps dbt casts (updated_at is parsed by the loader itself)
        (STREAM, {"created_at": "2024-03-01 10:00"}, "'created_at' is not an ISO 8601 timestamp"),
        (STREAM, {"created_at": "2024-02-30T10:00:00Z"}, "'created_at' is not an ISO 8601 timestamp"),
        (STREAM, {"deleted_at": "2024-03-01T25:00:00Z"}, "'deleted_at' is not an ISO 8601 timestamp"),
        (STREAM, {"deleted_at": 1709287200}, "'deleted_at' is a number, not an ISO 8601 timestamp"),
        # amounts, header and nested lines
        *[(STREAM, {"total_amount": value}, "'total_amount' is not a") for value in NON_FINITE],
        *[
            (STREAM, {"invoice_lines": [{**LINE, "net_amount": v}]}, "'invoice_lines[1].net_amount' is not a")
            for v in NON_FINITE
        ],
        (STREAM, {"total_amount": float("inf")}, "'total_amount' is not a finite money amount"),
        (STREAM, {"total_amount": float("-inf")}, "'total_amount' is not a finite money amount"),
        (STREAM, {"total_amount": 10**400}, "'total_amount' is not a money amount below 10^15"),
        (STREAM, {"total_amount": "1,234.00"}, "'total_amount' is not a money amount: '1,234.00'"),
        (STREAM, {"total_amount": "0x10"}, "'total_amount' is not a money amount"),
        (STREAM, {"total_amount": "12 GBP"}, "'total_amount' is not a money amount"),
        (STREAM, {"total_amount": "\u0661\u0662"}, "'total_amount' is not a money amount"),  # Arabic-Indic digits
        (STREAM, {"total_amount": "0." + "0" * 40 + "1"}, "'total_amount' is not a money amount of at most 30"),
        (STREAM, {"total_amount": True}, "'total_amount' is not a money amount: True"),
        (STREAM, {"total_amount": {"value": "1"}}, "'total_amount' is not a money amount"),
        (STREAM, {"exchange_rate": [1]}, "'exchange_rate' is not a money amount"),
        (STREAM, {"invoice_lines": [{**LINE, "quantity": False}]}, "'invoice_lines[1].quantity' is not a money"),
        ("other_payments", {"payment_lines": [{"id": "p", "tax_amount": "NaN"}]}, "'payment_lines[1].tax_amount'"),
        ("purchase_quick_entries", {"net_amount": "Infinity"}, "'net_amount' is not a money amount: 'Infinity'"),
        ("tax_rates", {"percentage": "twenty"}, "'percentage' is not a money amount"),
        # ids of links, lines and the line array itself
        (STREAM, {"contact": {"id": 42}}, "'contact' has an 'id' that is a number 42"),
        (STREAM, {"contact": {"id": ""}}, "'contact' has an 'id' that is a string ''"),
        (STREAM, {"contact": "c1"}, "'contact' is a string, not a link object"),
        (
            STREAM,
            {"invoice_lines": [{**LINE, "ledger_account": {"id": 7500}}]},
            "'invoice_lines[1].ledger_account' has",
        ),
        (STREAM, {"invoice_lines": [{**LINE, "ledger_account": {"displayed_as": "x"}}]}, "has an 'id' that is null"),
        (STREAM, {"invoice_lines": [{**LINE, "id": 1}]}, "'invoice_lines[1].id' is a number"),
        (STREAM, {"invoice_lines": [{**LINE, "id": " "}]}, "'invoice_lines[1].id' is a string"),
        (STREAM, {"invoice_lines": [LINE, LINE]}, "'invoice_lines[2].id' repeats the id of an earlier line: 'l1'"),
        (STREAM, {"invoice_lines": {"id": "l1"}}, "'invoice_lines' is an object, not an array of lines"),
        (STREAM, {"invoice_lines": ["l1"]}, "'invoice_lines[1]' is a string, not a line object"),
        # flags and integers
        ("ledger_accounts", {"nominal_code": "7500a"}, "'nominal_code' is a string '7500a', not an integer"),
        ("ledger_accounts", {"nominal_code": 7500.0}, "'nominal_code' is a number 7500.0, not an integer"),
        ("ledger_accounts", {"nominal_code": 10**12}, "'nominal_code' is a number"),
        ("ledger_accounts", {"included_in_chart": "maybe"}, "'included_in_chart' is a string 'maybe', not a boolean"),
        ("tax_rates", {"is_visible": 1}, "'is_visible' is a number 1, not a boolean"),
        ("financial_settings", {"multi_currency_enabled": "yes"}, "'multi_currency_enabled' is a string 'yes'"),
    ],
)
def test_a_bad_typed_field_is_quarantined_with_its_reason(
    warehouse: psycopg.Connection, stream: str, changes: dict[str, Any], reason: str
) -> None:
    bad = {**invoice("bad"), **changes}
    singleton = stream == "financial_settings"
    good = {**invoice("good"), "date": "2024-02-29"}
    batch = [bad] if singleton else [good, bad]
    result = load(warehouse, batch, stream=stream, record_id_override=CO if singleton else None)
    assert (result.versions_added, result.quarantined) == (len(batch) - 1, 1)
    assert result.record_ids == ([] if singleton else ["good"])
    ((record_id, why, raw),) = quarantined(warehouse)
    assert reason in why
    assert record_id == (CO if singleton else "bad")
    assert json.loads(raw) == bad


@pytest.mark.parametrize(
    ("stream", "changes"),
    [
        # Money as Sage sends it: a decimal string, sometimes a JSON number; absent, null or empty.
        (STREAM, {"total_amount": "55.55", "net_amount": 55.55, "tax_amount": 0, "outstanding_amount": None}),
        (STREAM, {"total_amount": "-430035.84", "net_amount": "0.0", "tax_amount": "", "total_paid": "   "}),
        (STREAM, {"total_amount": " 12.50 ", "net_amount": "+7", "tax_amount": "1e3", "exchange_rate": "1.0000001"}),
        (STREAM, {"total_amount": "00012.50", "net_amount": "-0", "tax_amount": ".5", "exchange_rate": 1.2345678e-07}),
        (STREAM, {"total_amount": "999999999999999.99", "net_amount": -999999999999999, "tax_amount": 1e14}),
        (
            STREAM,
            {"invoice_lines": [{"id": "a", "quantity": "1.0", "unit_price": 3, "net_amount": "3.00"}, {"id": "b"}]},
        ),
        (STREAM, {"invoice_lines": [{"net_amount": "1"}, {"net_amount": "2"}], "currency": None}),  # no line ids
        (STREAM, {"invoice_lines": None, "contact": None, "date": "", "due_date": None}),
        (STREAM, {"invoice_lines": [], "date": "2024-02-29", "due_date": "9999-12-31"}),
        (STREAM, {"created_at": "2021-09-09T14:36:01Z", "deleted_at": "2024-03-01T12:00:00.123+05:30"}),
        (STREAM, {"created_at": "2024-03-01T12:00:00.123456-0800", "deleted_at": None}),
        (STREAM, {"contact": {"id": "4c3f", "displayed_as": "A", "$path": "/contacts/4c3f"}}),
        ("ledger_accounts", {"nominal_code": 7500, "included_in_chart": False}),
        ("ledger_accounts", {"nominal_code": "0030", "included_in_chart": True}),
        ("tax_rates", {"percentage": "20.0", "is_visible": True}),
        ("financial_settings", {"multi_currency_enabled": False, "year_end_date": "2024-12-31"}),
    ],
)
def test_every_form_sage_sends_loads(warehouse: psycopg.Connection, stream: str, changes: dict[str, Any]) -> None:
    record = {**invoice("ok"), **changes}
    singleton = stream == "financial_settings"
    result = load(warehouse, [record], stream=stream, record_id_override=CO if singleton else None)
    assert (result.versions_added, result.quarantined) == (1, 0), quarantined(warehouse)
    assert versions(warehouse, stream=stream) == [record]
