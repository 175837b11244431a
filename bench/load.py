"""Benchmark 1: land N Sage-shaped spend records with the project's loader vs a bare binary COPY.

Both sides get the same pages (200 Sage-shaped purchase invoices each, as the client yields them:
parsed JSON objects) and commit once per page, as the sync does. The project side is
``loader.load_records`` (identity checks, canonical JSON, sha256, latest-version lookup under an advisory
lock, binary COPY). The baseline is the least a loader must do to land the same rows in an identical
table: serialise each payload to JSON, hash it, one binary COPY per page. Page generation is not timed.
Both sides serialise with orjson (the loader proves per record that its bytes are the canonical form,
falling back to ``json`` otherwise; the baseline skips that proof), so the ratio is not flattered by
giving the baseline a slower encoder.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from bench.common import Result, Timer, scratch_db

PAGE = 200
SUPPLIERS = ["Bristol Flour Mills", "Avon Dairy Co-op", "Severn Packaging Ltd", "SWEB Energy", "Zoë's Eggs"]


def make_page(start: int, rng: random.Random) -> list[dict[str, Any]]:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    items = []
    for n in range(start, start + PAGE):
        updated = base + timedelta(seconds=n * 7)
        net = rng.randint(100, 500_000) / 100
        lines = []
        for k in range(rng.randint(1, 3)):
            line_net = round(net / (k + 1), 2)
            lines.append(
                {
                    "id": f"{n:08x}l{k}",
                    "displayed_as": "Goods",
                    "description": f"Line {k} of invoice {n}",
                    "ledger_account": {"id": f"la{5000 + k}", "displayed_as": f"Purchases ({5000 + k})"},
                    "quantity": "1.0",
                    "unit_price": f"{line_net:.2f}",
                    "net_amount": f"{line_net:.2f}",
                    "tax_rate": {"id": "GB_STANDARD"},
                    "tax_amount": f"{line_net * 0.2:.2f}",
                    "total_amount": f"{line_net * 1.2:.2f}",
                    "base_currency_net_amount": f"{line_net:.2f}",
                    "base_currency_tax_amount": f"{line_net * 0.2:.2f}",
                    "base_currency_total_amount": f"{line_net * 1.2:.2f}",
                }
            )
        supplier = SUPPLIERS[n % len(SUPPLIERS)]
        items.append(
            {
                "id": hashlib.blake2b(str(n).encode(), digest_size=16).hexdigest(),
                "displayed_as": f"PI-{n}",
                "$path": f"/purchase_invoices/{n}",
                "created_at": updated.isoformat().replace("+00:00", "Z"),
                "updated_at": updated.isoformat().replace("+00:00", "Z"),
                "deleted_at": None,
                "transaction_type": {"id": "PURCHASE_INVOICE", "displayed_as": "Purchase Invoice"},
                "contact": {"id": f"c{n % 40}", "displayed_as": supplier},
                "contact_name": supplier,
                "contact_reference": f"SUP{n % 40:03d}",
                "date": (updated.date()).isoformat(),
                "due_date": (updated.date() + timedelta(days=30)).isoformat(),
                "reference": f"PI-{n}",
                "vendor_reference": f"INV{n:07d}",
                "notes": None,
                "net_amount": f"{net:.2f}",
                "tax_amount": f"{net * 0.2:.2f}",
                "total_amount": f"{net * 1.2:.2f}",
                "outstanding_amount": "0.00",
                "total_paid": f"{net * 1.2:.2f}",
                "currency": {"id": "GBP"},
                "exchange_rate": "1.0",
                "inverse_exchange_rate": "1.0",
                "base_currency_net_amount": f"{net:.2f}",
                "base_currency_tax_amount": f"{net * 0.2:.2f}",
                "base_currency_total_amount": f"{net * 1.2:.2f}",
                "status": {"id": "PAID"},
                "void_reason": None,
                "invoice_lines": lines,
            }
        )
    return items


# The fastest serialiser that gives the canonical bytes for these pages (they hold no float), with
# none of the checks the loader needs to prove that for any payload: the least a loader must do.
_CANON_OPTIONS = orjson.OPT_SORT_KEYS


def _bare_copy(conn: psycopg.Connection, company: str, run_id: str, page: list[dict[str, Any]]) -> None:
    with (
        conn.cursor() as cur,
        cur.copy(
            "copy bench.copy_target (company_id, record_id, source_updated_at, payload, content_hash, "
            "_extracted_at, _sync_run_id) from stdin (format binary)"
        ) as copy,
    ):
        copy.set_types(["text", "text", "timestamptz", "jsonb", "text", "timestamptz", "text"])
        now = datetime.now(UTC)
        for record in page:
            data = orjson.dumps(record, option=_CANON_OPTIONS)
            copy.write_row(
                (
                    company,
                    record["id"],
                    datetime.fromisoformat(record["updated_at"]),
                    Jsonb(data, lambda b: b),
                    hashlib.sha256(data).hexdigest(),
                    now,
                    run_id,
                )
            )
    conn.commit()


def run(records: int = 1_000_000) -> Result:
    from sage_sync.warehouse import loader

    rng = random.Random(5)
    project, baseline = Timer(), Timer()
    pages = (records + PAGE - 1) // PAGE
    with scratch_db() as dsn, psycopg.connect(dsn) as conn:
        conn.execute("create schema bench")
        conn.execute("create table bench.copy_target (like sage_raw.purchase_invoices including all)")
        conn.commit()
        size = 0
        for p in range(pages):
            page = make_page(p * PAGE, rng)
            if p == 0:
                size = len(json.dumps(page))
            # Alternate which side goes first so neither always enjoys a warmer cache.
            order = (0, 1) if p % 2 == 0 else (1, 0)
            for side in order:
                if side == 0:
                    with project(), conn.transaction():
                        loader.load_records(conn, "purchase_invoices", "bench-co", "bench-run", page)
                else:
                    with baseline():
                        _bare_copy(conn, "bench-co", "bench-run", page)
        landed = conn.execute("select count(*) from sage_raw.purchase_invoices").fetchone()[0]
        copied = conn.execute("select count(*) from bench.copy_target").fetchone()[0]
    assert landed == copied == pages * PAGE, (landed, copied)
    rate_p, rate_b = landed / project.seconds, copied / baseline.seconds
    ratio = rate_p / rate_b
    return Result(
        "1 load",
        "records/s",
        rate_p,
        rate_b,
        ratio,
        ">= 0.90 of COPY rate",
        "PASS" if ratio >= 0.9 else "FAIL",
        {
            "records": landed,
            "project_s": round(project.seconds, 1),
            "baseline_s": round(baseline.seconds, 1),
            "page_json_bytes": size,
        },
    )
