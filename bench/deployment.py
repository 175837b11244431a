"""Benchmark 6: N small companies' daily runs on the real deployment (scripts/deployment.py), 1 worker then 2.

For each worker count, a fresh deployment (own metadata and warehouse databases, own Redis, the fake
Sage with N small companies connected through the OAuth flow) runs day one (the first syncs, due
as soon as the DAGs are parsed) and then day two (made due by moving the scheduler's next run,
its logical date, data interval and due time, to now, as the test in tests/deployment does).
Measured from the metadata DB:

* ``due_to_marts_s``: from the runs being due to the end of the last ``sage_transform`` run
  started after the last company finished (all marts built);
* ``scheduler_lag_s``: due time to the first task start (and to the median company's first task);
* ``peak_pool_tasks``: most Sage-calling tasks running at once in each Sage pool (``sage_api`` for
  the daily runs, ``sage_history`` for first syncs: ``core.pools``), against its slots (``pool_slots``);
* ``sage_requests`` and ``requests_per_s``: the fake's request log over the extraction window,
  against ``SAGE_RATE_LIMIT_PER_S`` (the shared bucket of plugins/sage_sync/ratelimit.py);
  ``peak_requests_in_1s``, the most in any one second, and ``max_over_rate``, the most requests
  any window held beyond the rate: the bucket held if that is within its burst (``bucket_burst``).
  Requests in flight at once are bounded by the pooled tasks (each sends one at a time, plus one
  read-ahead page), so ``peak_pool_tasks`` is their bound; the fake serves one at a time, so it
  cannot count them itself;
* ``machine_core_s``, ``task_runs`` and ``core_s_per_task``: the whole machine's busy CPU (every
  process: Airflow, Celery, PostgreSQL, the fake) from the day's start to its marts, over the task
  runs it held: what sizes a larger deployment; ``core_s_per_company_day``,
  ``task_runs_per_company_day`` and ``requests_per_company_day`` divide the day by its companies.
  Day one's window includes connecting the companies.
  ``core_s_by_role`` splits it by process (scheduler, api-server, dag-processor, triggerer, Celery
  workers with their task processes, PostgreSQL, redis, the bench with the fake): what bounds it.

``python -m bench deployment --deploy-companies 200`` is the issue's size and the default: about 70
minutes for both deployments on 2 cores (bench/RESULTS.md, 6). ``--deploy-companies 30`` takes 25.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench.common import ADMIN_URL, Result
from sage_sync.core import config
from sage_sync.core.config import warehouse_conn_json
from sage_sync.core.pools import POOLS
from sage_sync.warehouse.ratelimit import DEFAULT_BURST
from scripts import deployment as deploy  # as a package: a top-level `deployment` would shadow tests/deployment

SMALL = {"purchase_invoices": 8, "purchase_credit_notes": 1, "purchase_quick_entries": 2, "other_payments": 3}
SYNCED_FROM = "2024-Q1"


def _libpq(sqlalchemy_url: str) -> str:
    return "postgresql://" + sqlalchemy_url.split("://", 1)[1]


def _create(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def _drop(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _meta(dsn: str, query: str, params: Any = ()) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []  # an update returns no rows


def _max_overlap(intervals: list[tuple]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def _peak_in_window(times: list[float], width: float) -> int:
    """Most of the sorted ``times`` inside any window ``width`` long (requests in a second)."""
    peak = first = 0
    for last, at in enumerate(times):
        while at - times[first] >= width:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def _max_over_rate(times: list[float], rate: float) -> float:
    """Most requests in any window beyond what ``rate`` a second allows in it: the shared token
    bucket holds when this stays within its burst (every window [a, b] sees at most
    burst + rate x (b - a) requests). O(n): for each last request, the best first one so far."""
    best = float("-inf")
    lowest = float("inf")  # min over first requests i of (i - rate x t_i)
    for j, at in enumerate(times):
        lowest = min(lowest, j - rate * at)
        best = max(best, (j + 1 - rate * at) - lowest)
    return best if times else 0.0


def _busy_core_s() -> float:
    """Core-seconds the whole machine has spent busy since boot (all CPUs, idle and iowait excluded)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _cpu_snapshot(dep: Any) -> dict[tuple[int, float], tuple[str, float]]:
    """Each process's role and CPU (own plus the children it has reaped), keyed by pid and start.

    The role is the deployment process it descends from (a Celery worker's pool and task processes
    are the worker's), ``postgres`` for the server's processes (all its databases), this process
    (the bench and its fake Sage subprocess), or ``other``."""
    # This process first: the deployment's processes are its children too, and the nearest root wins.
    roots = {os.getpid(): "bench and fake Sage"}
    roots.update(
        {p["pid"]: ("celery workers" if name.startswith("worker") else name) for name, p in dep.processes.items()}
    )
    role_of = {}
    for pid, role in roots.items():
        role_of[pid] = role
        role_of.update(dict.fromkeys((child.pid for child in deploy.descendants(pid)), role))
    snapshot = {}
    for proc in psutil.process_iter(["pid", "name", "create_time", "cpu_times"]):
        info = proc.info
        if info["cpu_times"] is None:
            continue
        role = role_of.get(info["pid"]) or ("postgres" if (info["name"] or "").startswith("postgres") else "other")
        t = info["cpu_times"]
        snapshot[(info["pid"], info["create_time"])] = (role, t.user + t.system + t.children_user + t.children_system)
    return snapshot


def _cpu_by_role(start: dict, end: dict) -> dict[str, float]:
    """Core-seconds each role spent between two snapshots. A process that ended in between is
    counted in the one that reaped it (a task process in its Celery worker, a PostgreSQL backend
    in the postmaster)."""
    roles: dict[str, float] = {}
    for key, (role, cpu) in end.items():
        before = start.get(key, (role, 0.0))[1]
        roles[role] = roles.get(role, 0.0) + max(0.0, cpu - before)
    return {role: round(v, 1) for role, v in sorted(roles.items(), key=lambda kv: -kv[1]) if v >= 0.5}


def _wait(probe, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _one(companies: int, workers: int, timeout: float, days: int = 2) -> dict[str, Any]:  # noqa: PLR0915
    """One deployment with ``workers`` workers; both days' figures."""
    from cryptography.fernet import Fernet

    from sage_sync.lifecycle import connections
    from sage_sync.orchestration import airflow_api
    from sage_sync.sage.auth import new_pkce_pair
    from sage_sync.warehouse.migrate import migrate
    from sandbox.fake_sage.server import FakeSageServer

    suffix = uuid.uuid4().hex[:8]
    wh_db, meta_db = f"sage_bench_dep_wh_{suffix}", f"sage_bench_dep_meta_{suffix}"
    _create(wh_db)
    _create(meta_db)
    wh_dsn = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=wh_db)
    with psycopg.connect(wh_dsn) as conn:
        migrate(conn)
    base_meta, _, query = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].partition("?")
    meta_sa = base_meta.rsplit("/", 1)[0] + f"/{meta_db}" + (f"?{query}" if query else "")
    meta_dsn = _libpq(meta_sa)
    p = psycopg.conninfo.conninfo_to_dict(wh_dsn)
    volumes = {f"co{n:04d}": dict(SMALL) for n in range(companies)}
    saved = dict(os.environ)
    state = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    try:
        with FakeSageServer(seed=131, volumes=volumes, scale=0.0) as sage:
            values = {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_sa,
                "AIRFLOW_CONN_SAGE_WAREHOUSE": warehouse_conn_json(
                    make_conninfo(wh_dsn, dbname=wh_db, password=p.get("password") or "unused")
                ),
                "AIRFLOW_CONN_SAGE_DEFAULT": sage.airflow_conn_json(),
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "SAGE_PG_DBNAME": wh_db,
            }
            os.environ.update(values)
            airflow_api.set_dag_paused = lambda *_, **__: False  # the deployment parses the DAGs
            t0 = time.monotonic()
            dep = deploy.up(state, workers=workers, overrides=values, migrate=True, timeout=600)
            try:
                up_s = time.monotonic() - t0
                _wait(
                    lambda: _meta(meta_dsn, "select 1 from dag where dag_id = 'sage_transform'"),
                    "sage_transform to be parsed",
                    300,
                )
                dep.airflow("dags", "unpause", "sage_transform")
                ids = []
                cpu_from, connect_from = (_busy_core_s(), _cpu_snapshot(dep)), time.monotonic()
                for business in sage.admin.businesses():
                    if business["key"] not in volumes:
                        continue
                    verifier, challenge = new_pkce_pair()
                    code = sage.authorize(login_hint=business["user"], code_challenge=challenge)
                    connections.connect(code, verifier, business["id"], SYNCED_FROM)
                    ids.append(airflow_api.dag_id_for(business["id"]))
                connect_s = time.monotonic() - connect_from
                day1 = _day(sage, meta_dsn, ids, 1, timeout, cpu_from, dep)
                day2: dict[str, Any] = {}
                if days > 1:
                    # day two: a change in one company in ten, then the scheduler's clock moves a day
                    sage.admin.advance_clock(86400)
                    for business in sage.admin.businesses()[::10]:
                        docs = sage.admin.records(business["id"], "purchase_invoices")
                        if docs:
                            sage.admin.update(business["id"], "purchase_invoices", docs[-1]["id"], {"notes": "edited"})
                    day2 = _day(sage, meta_dsn, ids, 2, timeout, (_busy_core_s(), _cpu_snapshot(dep)), dep)
            finally:
                deploy.down(state)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _drop(wh_db)
        _drop(meta_db)
    return {
        "workers": workers,
        "companies": companies,
        "deploy_up_s": round(up_s, 1),
        "connect_s": round(connect_s, 1),
        "day1": day1,
        "day2": day2,
    }


def _day(
    sage: Any, meta_dsn: str, dag_ids: list[str], day: int, timeout: float, cpu_from: tuple[float, dict], dep: Any
) -> dict[str, Any]:
    """Make day ``day`` due (day 1: already due once parsed), wait for it and the marts; its figures.

    ``cpu_from``: the machine's busy core-seconds and the processes' CPU when the day's work began."""
    sage.admin.clear_request_log()
    if day == 1:

        def all_created() -> list[tuple] | None:
            rows = _meta(
                meta_dsn, "select dag_id, min(queued_at) from dag_run where dag_id = any(%s) group by 1", (dag_ids,)
            )
            return rows if len(rows) == len(dag_ids) else None

        due = min(r[1] for r in _wait(all_created, "every company's first run", timeout))
    else:
        due = _meta(meta_dsn, "select now()")[0][0]

        def created() -> bool:
            missing = _meta(
                meta_dsn,
                "select d from unnest(%s::text[]) d where (select count(*) from dag_run r where r.dag_id = d) < %s",
                (dag_ids, day),
            )
            if missing:
                _meta(meta_dsn, deploy.NEXT_RUN_DUE_NOW_SQL, ([m[0] for m in missing],))
            return not missing

        _wait(created, f"day {day}'s runs", timeout)

    def finished() -> bool:
        states = _meta(meta_dsn, "select state, count(*) from dag_run where dag_id = any(%s) group by 1", (dag_ids,))
        counts = dict(states)
        if counts.get("failed"):
            raise RuntimeError(f"company runs failed: {counts}")
        # Every company has the day's success; a company whose own daily minute came up during the
        # bench has one run more (seen 2026-12-08: 401 successes for 200 companies on day two).
        done = _meta(
            meta_dsn,
            "select count(*) from (select dag_id from dag_run where dag_id = any(%s) and state = 'success' "
            "group by dag_id having count(*) >= %s) d",
            (dag_ids, day),
        )[0][0]
        return done == len(dag_ids)

    _wait(finished, f"day {day}'s company runs", timeout)
    # The end of the day's last company run (not a task's, so it reads the same whatever the DAG's tasks).
    last_finish = _meta(meta_dsn, "select max(end_date) from dag_run where dag_id = any(%s)", (dag_ids,))[0][0]
    transform = _wait(
        lambda: _meta(
            meta_dsn,
            "select end_date from dag_run where dag_id = 'sage_transform' "
            "and start_date > %s and state = 'success' order by start_date limit 1",
            (last_finish,),
        ),
        "the transform after the last sync",
        timeout,
    )[0][0]
    core_s = _busy_core_s() - cpu_from[0]
    by_role = _cpu_by_role(cpu_from[1], _cpu_snapshot(dep))
    task_runs = _meta(
        meta_dsn,
        "select count(*) from task_instance where start_date >= %s and start_date <= %s",
        (due, transform),
    )[0][0]
    firsts = [
        r[0]
        for r in _meta(
            meta_dsn,
            "select min(start_date) from task_instance where dag_id = any(%s) and start_date >= %s group by dag_id",
            (dag_ids, due),
        )
    ]
    names = [p.name for p in POOLS]
    pooled_in = _meta(
        meta_dsn,
        "select pool, start_date, end_date from task_instance where pool = any(%s) and start_date >= %s "
        "and end_date is not null",
        (names, due),
    )
    pooled = [(start, end) for _, start, end in pooled_in]
    window = (max(e for _, e in pooled) - min(s for s, _ in pooled)).total_seconds() if pooled else 0.0
    starts = sorted(r["started"] for r in sage.admin.request_log() if r["path"].startswith("/v3.1"))
    requests = len(starts)
    rate = config.rate_limit_per_s()  # as the workers read it; None: the shared limiter is off
    slots = dict(_meta(meta_dsn, "select pool, slots from slot_pool where pool = any(%s)", (names,)))
    return {
        "due_to_marts_s": round((transform - due).total_seconds(), 1),
        "due_to_last_sync_s": round((last_finish - due).total_seconds(), 1),
        "scheduler_lag_s": round((min(firsts) - due).total_seconds(), 1),
        "median_company_start_s": round(statistics.median((f - due).total_seconds() for f in firsts), 1),
        "peak_pool_tasks": {n: _max_overlap([(s, e) for p, s, e in pooled_in if p == n]) for n in names},
        "pool_slots": slots,
        "sage_requests": requests,
        "requests_per_s": round(requests / window, 2) if window else 0.0,
        "peak_requests_in_1s": _peak_in_window(starts, 1.0),
        "rate_limit_per_s": rate,
        "max_over_rate": round(_max_over_rate(starts, rate), 1) if rate else None,
        "bucket_burst": DEFAULT_BURST,
        "machine_core_s": round(core_s, 1),
        "task_runs": task_runs,
        "core_s_per_task": round(core_s / task_runs, 2) if task_runs else 0.0,
        # issue 28's measures: per company-day, the whole machine's CPU, the task runs and Sage's requests
        "core_s_per_company_day": round(core_s / len(dag_ids), 2),
        "task_runs_per_company_day": round(task_runs / len(dag_ids), 2),
        "requests_per_company_day": round(requests / len(dag_ids), 2),
        "core_s_by_role": by_role,
    }


def run(
    companies: int, worker_counts: tuple[int, ...] = (1, 2), timeout: float = 3600.0, days: int = 2
) -> list[Result]:
    """Both worker counts; the headline is the last day's due->marts time, 1 worker vs 2."""
    rows = []
    for workers in worker_counts:
        rows.append(_one(companies, workers, timeout, days))
        print(f"    deployment {json.dumps(rows[-1], default=str)}", flush=True)
    day = "day2" if days > 1 else "day1"
    one, two = rows[0], rows[-1]
    ratio = one[day]["due_to_marts_s"] / max(two[day]["due_to_marts_s"], 1e-9)
    days_run = [r[d] for r in rows for d in ("day1", "day2") if r[d]]
    within_pool = all(d["peak_pool_tasks"][n] <= d["pool_slots"][n] for d in days_run for n in d["pool_slots"])
    # A token is taken a moment before its request reaches the fake: one request of slack.
    within_rate = all(d["max_over_rate"] is None or d["max_over_rate"] <= d["bucket_burst"] + 1 for d in days_run)
    return [
        Result(
            "6 deployment",
            f"{day} due->marts s, {companies} companies, {two['workers']} workers (baseline: {one['workers']})",
            two[day]["due_to_marts_s"],
            one[day]["due_to_marts_s"],
            1 / ratio if ratio else 0.0,
            "pool and shared rate held; figures reported",
            "PASS" if within_pool and within_rate else "FAIL",
            {"speed_up_2_vs_1": round(ratio, 3), "runs": rows},
        )
    ]
