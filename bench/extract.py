"""Benchmark 2: a full initial sync end to end against the fake Sage, at 0 ms and 50 ms added latency.

The project side is ``sync.run_company`` in a fresh child process (so its peak RSS is its own); the
baseline is a bare ``requests`` loop paging the same endpoint with the same query (200 a page,
``attributes=all``) and only decoding JSON: the fastest any extractor could read Sage here.
Requests per 1,000 records come from the fake's request log of the whole sync (every stream).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import requests

from bench.common import ROOT, Result, connect_company, scratch_db, warehouse_env

CHILD = """
import json, resource, sys, time
from sage_sync.pipeline import sync
company = sys.argv[1]
t = time.perf_counter()
sync.run_company(company)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _bare_fetch(sage, company: str, token: str) -> tuple[int, float]:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}", "X-Business": company, "Accept": "application/json"}
    url = f"{sage.api_url}/purchase_invoices"
    params: dict | None = {
        "attributes": "all",
        "items_per_page": 200,
        "sort": "updated_at:asc",
        "from_date": "2000-01-01",
    }
    count, started = 0, time.perf_counter()
    while True:
        body = session.get(url, params=params, headers=headers, timeout=120).json()
        count += len(body["$items"])
        if not body.get("$next"):
            break
        url, params = sage.api_url + body["$next"], None
    return count, time.perf_counter() - started


def _one(invoices: int, latency_ms: int) -> dict:
    from sandbox.fake_sage.server import FakeSageServer

    with (
        FakeSageServer(seed=3, volumes={"greenleaf": {"purchase_invoices": invoices}}, startup_timeout=300) as sage,
        scratch_db("sage_bench_x") as dsn,
    ):
        company = connect_company(sage, dsn, "greenleaf")
        if latency_ms:
            sage.admin.add_fault("slow", path="/v3.1", count=10**8, delay_ms=latency_ms)
        sage.admin.clear_request_log()
        env = {**os.environ, **warehouse_env(dsn), "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}"}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, company], env=env, capture_output=True, text=True, timeout=3600, check=False
        )
        if out.returncode:
            raise RuntimeError(f"sync failed: {out.stderr[-2000:]}")
        child = json.loads(out.stdout.strip().splitlines()[-1])
        log = [r for r in sage.admin.request_log() if r["path"].startswith("/v3.1")]
        import psycopg

        with psycopg.connect(dsn) as conn:
            # Every record Sage sent: the streams' versions and the deletion feeds' entries (the
            # fake deletes a share of what it seeds, and those pages are requests too).
            records = sum(
                conn.execute(f"select count(*) from sage_raw.{s}").fetchone()[0]
                for s in (
                    "businesses",
                    "financial_settings",
                    "ledger_accounts",
                    "contacts",
                    "tax_rates",
                    "purchase_invoices",
                    "purchase_credit_notes",
                    "purchase_quick_entries",
                    "other_payments",
                    "deletions",
                )
            )
            invoices_landed = conn.execute("select count(*) from sage_raw.purchase_invoices").fetchone()[0]
        list_requests = [r for r in log if "deleted_since" not in r["query"]]
        from sage_sync.warehouse.token_store import PostgresTokenStore

        token = PostgresTokenStore(dsn).load(company).access_token
        bare_count, bare_s = _bare_fetch(sage, company, token)
    inv_requests = sum(1 for r in log if r["path"] == "/v3.1/purchase_invoices" and "deleted_since" not in r["query"])
    return {
        "latency_ms": latency_ms,
        "invoices": invoices_landed,
        "records": records,
        "sync_s": round(child["seconds"], 1),
        "maxrss_mb": round(child["maxrss_mb"], 1),
        "rate": records / child["seconds"],
        "requests": len(log),
        "requests_per_1000": 1000 * len(log) / records,
        "list_requests_per_1000": 1000 * len(list_requests) / records,
        "invoice_requests_per_1000_invoices": 1000 * inv_requests / invoices_landed,
        "bare_rate": bare_count / bare_s,
        "bare_records": bare_count,
    }


def run(big: int = 1_000_000, small: int = 100_000) -> list[Result]:
    results = []
    runs = {"0ms_small": _one(small, 0), "50ms_small": _one(small, 50), "200ms_small": _one(small, 200)}
    if big > small:
        runs["0ms_big"] = _one(big, 0)
    for key, r in runs.items():
        print(
            f"    extract {key}: " + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}),
            flush=True,
        )
    for key in ("0ms_small", "50ms_small", "200ms_small", *(["0ms_big"] if "0ms_big" in runs else [])):
        r = runs[key]
        ratio = r["rate"] / r["bare_rate"]
        # The read-ahead hides the network behind the load: the target is at Sage-like latency.
        target, verdict = (
            (">= 0.90 of bare paging", "PASS" if ratio >= 0.9 else "FAIL")
            if key == "50ms_small"
            else ("reported (no target)", "MEASURED")
        )
        results.append(
            Result(
                f"2 extract {key}",
                "records/s (sync vs bare paging)",
                r["rate"],
                r["bare_rate"],
                ratio,
                target,
                verdict,
                {},
            )
        )
    # The target is about paging on a full sync of a big company; a small one's fixed per-company
    # requests (reference streams, deletion feeds) are reported beside it.
    biggest = max(runs.values(), key=lambda r: r["invoices"])
    req_ok = biggest["requests_per_1000"] <= 5.1
    metric = f"requests per 1,000 records (full sync, {biggest['invoices']:,} invoices)"
    results.append(
        Result(
            "2 extract",
            metric,
            biggest["requests_per_1000"],
            5.0,
            biggest["requests_per_1000"] / 5.0,
            "<= 5.1",
            "PASS" if req_ok else "FAIL",
            {
                "list_requests_per_1000": round(biggest["list_requests_per_1000"], 3),
                "invoice_requests_per_1000_invoices": round(biggest["invoice_requests_per_1000_invoices"], 3),
                "requests_per_1000": round(biggest["requests_per_1000"], 3),
                "measured_on": f"{biggest['invoices']:,} invoices",
                "by_run": {k: round(r["requests_per_1000"], 3) for k, r in runs.items()},
            },
        )
    )
    results.append(_first_sync_at_rate_limit(runs, biggest))
    base = runs["0ms_small"]["maxrss_mb"]
    top = runs.get("0ms_big", runs["0ms_small"])
    flat = top["maxrss_mb"] <= 300 and top["maxrss_mb"] <= base * 1.5
    results.append(
        Result(
            "2 extract",
            f"peak RSS MB ({top['invoices']:,} vs {base and runs['0ms_small']['invoices']:,} invoices)",
            top["maxrss_mb"],
            base,
            top["maxrss_mb"] / base,
            "<= 300 MB and flat (<= 1.5x) in history size",
            "PASS" if flat else "FAIL",
            {k: runs[k]["maxrss_mb"] for k in runs},
        )
    )
    return results


def _first_sync_at_rate_limit(runs: dict[str, dict], biggest: dict, records: int = 1_000_000) -> Result:
    """A 1M-record first sync at Sage's published rate, from the measured figures, next to its floor.

    One request is in flight at a time (the read-ahead keeps one page ahead), so a page costs the
    largest of: Sage's latency, the rate limit's spacing (1 / 15 s), and the sync's own work per
    page (measured at 0 ms latency). The floor leaves out the sync's work: requests x the larger of
    latency and spacing.
    """
    from sage_sync.warehouse.ratelimit import DEFAULT_RATE

    requests_needed = biggest["requests_per_1000"] * records / 1000
    work_per_request = runs["0ms_small"]["sync_s"] / runs["0ms_small"]["requests"]
    figures: dict[str, float] = {}
    for latency_ms in (50, 200):
        spacing = max(latency_ms / 1000, 1 / DEFAULT_RATE)
        figures[f"{latency_ms}ms_floor_h"] = round(requests_needed * spacing / 3600, 2)
        figures[f"{latency_ms}ms_estimate_h"] = round(requests_needed * max(spacing, work_per_request) / 3600, 2)
    ratio = figures["50ms_floor_h"] / figures["50ms_estimate_h"]
    return Result(
        "2 extract",
        f"1M-record first sync at {DEFAULT_RATE:g} req/s, 50 ms (hours, estimate vs floor)",
        figures["50ms_estimate_h"],
        figures["50ms_floor_h"],
        ratio,
        "reported (floor / estimate)",
        "MEASURED",
        {**figures, "requests": round(requests_needed), "sync_work_ms_per_request": round(work_per_request * 1000, 1)},
    )
