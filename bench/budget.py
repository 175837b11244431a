"""Benchmark 5: the shared request budget.

(a) Arithmetic on measured figures: Sage allows 1,296,000 requests a day per app; an initial sync costs
the measured requests per 1,000 records (benchmark 2) times the company's size, so the budget allows
that many initial syncs a day (reported for a 10k-, 100k- and 1M-record company).
(b) Live: four companies sync at once in four threads, every client sharing one PostgreSQL token bucket
(``SAGE_RATE_LIMIT_PER_S=12``, the deployed default, wired by ``sync.make_client``), with a 429 storm
injected. Project: the achieved request rate under the limiter; baseline: the same four syncs with the
limiter off. The limiter must
keep the achieved rate at or under its limit (plus the burst), and every run must succeed.
"""

from __future__ import annotations

import os
import threading
import time

from bench.common import Result, connect_company, scratch_db

LIMIT = 12.0  # requests a second in the live test (Sage's own app limit is 15/s)
BURST = 30.0  # the deployed limiter's burst (sage_sync.warehouse.ratelimit.shared_limiter)


def _sync_all(sage, companies: list[str], rate_limit: str) -> tuple[float, int, list]:
    """The companies' syncs at once, with ``SAGE_RATE_LIMIT_PER_S`` = ``rate_limit``: the limiter is
    wired the way a deployment gets it (``sync.make_client``), not patched in."""
    from sage_sync.pipeline import sync

    os.environ["SAGE_RATE_LIMIT_PER_S"] = rate_limit
    outcomes: list = []
    sage.admin.clear_request_log()
    sage.admin.add_fault("429", path="/v3.1", count=16, retry_after=1)  # a storm shared by everyone

    def one(cid: str) -> None:
        try:
            outcomes.append(sync.run_company(cid))
        except Exception as exc:  # noqa: BLE001
            outcomes.append(exc)

    threads = [threading.Thread(target=one, args=(c,)) for c in companies]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    requests_made = sum(1 for r in sage.admin.request_log() if r["path"].startswith("/v3.1"))
    return seconds, requests_made, outcomes


def run(requests_per_1000: float | None = None) -> Result:
    from sage_sync.warehouse.ratelimit import SAGE_DAILY_LIMIT, initial_syncs_per_day
    from sandbox.fake_sage.server import FakeSageServer

    per_1000 = requests_per_1000 or 5.1
    per_day = {size: initial_syncs_per_day(per_1000 * size / 1000) for size in (10_000, 100_000, 1_000_000)}
    with FakeSageServer(seed=9, scale=1.0) as sage:
        keys = [b["key"] for b in sage.admin.businesses()]
        with scratch_db("sage_bench_budget") as dsn:
            companies = [connect_company(sage, dsn, k) for k in keys]
            free_s, free_n, free_out = _sync_all(sage, companies, "off")
        with scratch_db("sage_bench_budget") as dsn:
            companies = [connect_company(sage, dsn, k) for k in keys]
            lim_s, lim_n, lim_out = _sync_all(sage, companies, f"{LIMIT:g}")
    failed = [o for o in free_out + lim_out if not isinstance(o, str)]
    rate, free_rate = lim_n / lim_s, free_n / free_s
    ok = rate <= LIMIT + BURST / lim_s + 0.5 and not failed
    return Result(
        "5 budget",
        f"requests/s, 4 companies at once under a {LIMIT:g}/s shared limit (429 storm)",
        rate,
        free_rate,
        rate / LIMIT,
        f"<= {LIMIT:g}/s (+burst), 429s absorbed, no failed run",
        "PASS" if ok else f"FAIL ({len(failed)} failed: {failed[:1]})",
        {
            "requests_per_1000_used": round(per_1000, 3),
            "daily_limit": SAGE_DAILY_LIMIT,
            "initial_syncs_per_day_by_company_size": per_day,
            "limited_requests": lim_n,
            "limited_seconds": round(lim_s, 1),
            "unlimited_requests": free_n,
            "unlimited_seconds": round(free_s, 1),
            "runs": len(free_out) + len(lim_out),
        },
    )
