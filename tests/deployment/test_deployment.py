"""The daily schedule on the deployment we ship: real scheduler, CeleryExecutor, two workers, Redis.

How the runs become due: the company DAGs keep their real daily schedule (each at its minute of
the nightly window). A DAG that appears with ``catchup=False`` gets a run at once (its latest due
time is already past), so day one is due the moment the dag-processor parses the connected
companies. Day two is made due by what the passing of a day does to the scheduler's own
bookkeeping: each company DAG's next run (`dag.next_dagrun`, its data interval and
`next_dagrun_create_after`) is set to now, and the scheduler then creates the runs itself
(`run_type = scheduled`). (Moving only the due time is not enough: the run's logical date would
be the company's next start time, and the scheduler does not schedule a run whose logical date
is in the future.) The dag-processor may recompute the fields on a parse
before the scheduler acts, so the move is repeated until the runs exist.

What it proves, from the metadata DB and the warehouse: every company's runs were created by the
scheduler; their tasks ran on both workers; never more Sage-calling tasks at once than their lane's
pool has slots (day one's first syncs and the backfill in `sage_history`, day two's runs in
`sage_api`); `sage_transform` ran after the syncs because of the `sage_raw` Asset and
the marts equal the fake Sage's books; day two adds only what changed. And, under the real
executor: a worker SIGKILLed during the large first sync (its task is retried on the other worker,
the company ends equal to Sage with no doubled version); a company disconnected while its run is
queued (skips with the reason); a backfill requested while the daily run goes on (waits, then
runs); the scheduler restarted mid-day (no run lost).

Cost, on 2 cores (2026-12-03, with the Celery workers preloading the plugins and the sync stack):
alone (`make test-deployment`) 599 s: set-up 81 s (the deployment up, 13 companies connected), day
one 230 s (syncs 147 s from the runs being due, marts built 225 s from it), day two 242 s (syncs
106 s, marts 240 s: the transform after the backfill is the tail), teardown about 45 s. Before the
preload: 497-538 s, with syncs at 166 s and 120-123 s. The bound is CPU: about 340 task runs, the
api-server, the scheduler, the dag-processor and PostgreSQL on 2 cores (bench/RESULTS.md, 6).
On 2026-12-04, with the backfill waiting as a sensor (a look every 15 s here): 424 s alone.
`make test` runs it alongside the rest of the suite, in a pytest process of its own: 445 s there,
and CI on a clean clone took 12 min 26 s in all. By 2026-12-08 the suite had grown and CI took
35 min with this test 16.5 min of it; it now connects 7 companies instead of 13 (the figures above
are for 13).
"""

from __future__ import annotations

import json
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from faults.kit import assert_no_doubles, assert_warehouse_matches
from lifecycle.test_scenario import _expected_spend

from sage_sync.lifecycle import connections, inputs
from sage_sync.orchestration import airflow_api

from .conftest import EUR, LARGE, POOL_SLOTS, Env, deploy

# The whole module shares one deployment; its first test pays for the set-up and day one.
pytestmark = [pytest.mark.deployment, pytest.mark.airflow, pytest.mark.dbt, pytest.mark.timeout(2400)]
WINDOW_START = date(2024, 1, 1)
DAY_TIMEOUT = 1200.0
RAW = (
    "businesses",
    "financial_settings",
    "ledger_accounts",
    "contacts",
    "tax_rates",
    "purchase_invoices",
    "purchase_credit_notes",
    "purchase_quick_entries",
    "other_payments",
)


# -- what the metadata DB says ---------------------------------------------------------------------


def _runs(env: Env) -> dict[str, list[tuple]]:
    """Each company DAG's runs: (run_id, run_type, state, logical_date, start_date, end_date)."""
    rows = env.meta(
        "select dag_id, run_id, run_type, state, logical_date, start_date, end_date from dag_run "
        "where dag_id = any(%s) order by logical_date",
        (env.dag_ids(),),
    )
    runs: dict[str, list[tuple]] = {d: [] for d in env.dag_ids()}
    for dag_id, *rest in rows:
        runs[dag_id].append(tuple(rest))
    return runs


def _tries(env: Env, where: str = "true", params: tuple = ()) -> list[tuple]:
    """Every try of every task instance (the live row and the history of earlier tries):
    (dag_id, run_id, task_id, rendered_map_index, try_number, state, hostname, pool, start, end)."""
    cols = "dag_id, run_id, task_id, rendered_map_index, try_number, state, hostname, pool, start_date, end_date"
    return env.meta(
        f"select {cols} from task_instance where {where} union all "
        f"select {cols} from task_instance_history where {where}",
        params * 2,
    )


def _wait_day(env: Env, day: int, watch=None, timeout: float = DAY_TIMEOUT) -> dict[str, list[tuple]]:
    """Until every company DAG has ``day`` runs, all finished; ``watch()`` is called meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watch is not None:
            watch()
        runs = _runs(env)
        failed = {d: r[-1] for d, r in runs.items() if r and r[-1][2] == "failed"}
        assert not failed, f"company runs failed: {failed}"
        if all(len(r) >= day and all(x[2] == "success" for x in r) for r in runs.values()):
            return runs
        time.sleep(0.5 if watch is not None else 1)
    raise AssertionError(
        f"day {day} not finished in {timeout:.0f}s: { {d: [x[2] for x in r] for d, r in _runs(env).items()} }"
    )


def _wait_transform_after(env: Env, after, timeout: float = DAY_TIMEOUT) -> tuple:
    """The first asset-triggered sage_transform run that started after ``after``, once it succeeded.

    Asset-triggered only: the transform's daily 06:00 catch-up run (its time-based half, created
    as soon as the DAG appears, seen starting after the last landing) is not what the Asset
    scheduled. Not the run that consumed the newest event either: Airflow keeps one queue row per
    asset, so a run created while the transform is busy consumes the events up to that row's
    first event, and later ones (their data read by that very run, which starts after them) are
    consumed by none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = env.meta(
            "select run_id, run_type, state, start_date, end_date from dag_run where dag_id = 'sage_transform' "
            "and run_type = 'asset_triggered' and start_date > %s order by start_date",
            (after,),
        )
        done = [r for r in rows if r[2] == "success"]
        if done:
            return done[0]
        assert not [r for r in rows if r[2] == "failed"], f"sage_transform failed: {rows}"
        time.sleep(2)
    raise AssertionError(f"no asset-triggered sage_transform run after {after} finished in {timeout:.0f}s")


def _last_finish(env: Env) -> object:
    return env.meta(
        "select max(end_date) from task_instance where dag_id = any(%s) and task_id = 'sync'", (env.dag_ids(),)
    )[0][0]


def _figures(env: Env, day: int, transform: tuple) -> str:
    """The day's timings, for the log (bench/RESULTS.md quotes them)."""
    due, first_start = env.meta(
        "select min(r.queued_at), min(t.start_date) from dag_run r join task_instance t using (dag_id, run_id) "
        "where r.dag_id = any(%s) and r.run_id in (select run_id from dag_run d where d.dag_id = r.dag_id "
        "order by logical_date offset %s limit 1)",
        (env.dag_ids(), day - 1),
    )[0]
    return json.dumps(
        {
            "scheduler_lag_s": round((first_start - due).total_seconds(), 1),
            "due_to_last_sync_s": round((_last_finish(env) - due).total_seconds(), 1),
            "due_to_marts_s": round((transform[4] - due).total_seconds(), 1),
            "sage_requests": len(env.sage.admin.request_log()),
        }
    )


def _max_overlap(intervals: list[tuple]) -> int:
    """Most intervals open at one instant (an end at t closes before a start at t)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


# -- what the warehouse says -----------------------------------------------------------------------


def _modelled_spend(env: Env, company: str) -> Decimal:
    return Decimal(
        env.wh(
            "select coalesce(sum(amount), 0) from analytics.fct_spend_transactions where company_id = %s", (company,)
        )[0][0]
    )


def _versions(env: Env, company: str) -> dict[str, int]:
    return {s: env.wh(f"select count(*) from sage_raw.{s} where company_id = %s", (company,))[0][0] for s in RAW}


def _assert_marts_equal_books(env: Env, keys: list[str], starts: dict[str, date] | None = None) -> None:
    for key in keys:
        if key == EUR:
            continue  # the helper counts GBP documents; a non-GBP company has no spend at all (below)
        company = env.companies[key]
        start = (starts or {}).get(key, WINDOW_START)
        assert _modelled_spend(env, company) == _expected_spend(env.sage, company, start), key
    assert env.wh("select count(*) - count(distinct spend_line_id) from analytics.fct_spend_transactions") == [(0,)]
    # atlantic keeps EUR books: none of it is spend, all of it is listed as a currency exception
    assert _modelled_spend(env, env.companies[EUR]) == 0
    assert env.wh(
        "select count(*) > 0 from analytics.rpt_currency_exceptions where company_id = %s", (env.companies[EUR],)
    ) == [(True,)]


def _task_log(env: Env, dag_id: str, run_id: str, task_id: str) -> str:
    root = Path(env.dep.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return "\n".join(f.read_text(errors="replace") for f in sorted(root.rglob("*.log"))) if root.exists() else ""


# -- day one ---------------------------------------------------------------------------------------


def _reading(env: Env, company: str, stream: str) -> bool:
    """Whether the company's live run is reading ``stream`` now (its state for the pages)."""
    return bool(
        env.wh(
            "select 1 from sage_control.sync_stream_states s join sage_control.sync_runs r using (sync_run_id) "
            "where r.company_id = %s and r.status = 'running' and s.stream = %s and s.state = 'reading'",
            (company, stream),
        )
    )


class WorkerKiller:
    """Kills the worker running the large company's first sync once it has landed a page of invoices."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.dag_id = airflow_api.dag_id_for(env.companies[LARGE])
        self.killed: tuple[str, int] | None = None  # (worker name, try number)
        self.restarted = False

    def __call__(self) -> None:
        if self.killed is None:
            rows = self.env.meta(
                "select hostname, try_number from task_instance where dag_id = %s and "
                "task_id = 'sync' and state = 'running' and hostname like 'worker%%'",
                (self.dag_id,),
            )
            landed = self.env.wh(
                "select count(*) from sage_raw.purchase_invoices where company_id = %s", (self.env.companies[LARGE],)
            )[0][0]
            if rows and landed > 0:
                hostname, try_number = rows[0]
                name = hostname.split("@", 1)[0]
                self.env.dep.kill(name)  # SIGKILL to the worker's whole process group, task included
                self.killed = (hostname, try_number)
        elif not self.restarted:
            # Bring the dead worker back only once its task is running again elsewhere, so the retry
            # can only have gone to the other worker.
            again = self.env.meta(
                "select hostname from task_instance where dag_id = %s and task_id = 'sync' "
                "and try_number > %s and state in ('running', 'success')",
                (self.dag_id, self.killed[1]),
            )
            if again:
                deploy.start_worker(self.env.dep, int(self.killed[0].split("@")[0].removeprefix("worker")))
                self.restarted = True


@pytest.fixture(scope="module")
def day_one(denv: Env) -> dict:
    began = time.monotonic()
    killer = WorkerKiller(denv)
    runs = _wait_day(denv, 1, watch=killer)
    transform = _wait_transform_after(denv, _last_finish(denv))
    print(f"day one: {time.monotonic() - began:.0f}s {_figures(denv, 1, transform)}", flush=True)
    return {"runs": runs, "transform": transform, "killed": killer.killed, "restarted": killer.restarted}


SAGE_TASKS = {"sync"}  # a company DAG's task that calls Sage (record_failure does not)


def test_day_one_scheduled_runs_on_both_workers_within_the_pool(denv: Env, day_one: dict) -> None:
    runs = day_one["runs"]
    assert all(len(r) == 1 and r[0][1] == "scheduled" for r in runs.values()), runs
    tries = _tries(denv, "dag_id = any(%s)", (denv.dag_ids(),))
    workers = {deploy.worker_hostname(1), deploy.worker_hostname(2)}
    assert workers <= {t[6] for t in tries}, f"tasks ran on {sorted({t[6] for t in tries})}"
    # Day one is every company's first sync: the history lane's pool, none of the daily lane's.
    assert {t[7] for t in tries if t[2] in SAGE_TASKS} == {"sage_history"}
    history = _tries(denv, "pool = 'sage_history' and start_date is not null")
    pooled = [(t[8], t[9]) for t in history if t[9] is not None]
    assert len(pooled) >= len(denv.companies)  # one sync task a company, and the killed one's retry
    peak = _max_overlap(pooled)
    assert peak <= POOL_SLOTS, f"{peak} Sage-calling tasks at once, pool has {POOL_SLOTS}"
    assert peak == POOL_SLOTS  # the pool, not the task slots (6), was what held them back


def test_transform_ran_on_the_asset_and_marts_equal_the_books(denv: Env, day_one: dict) -> None:
    _, run_type, state, started, _ = day_one["transform"]
    assert run_type == "asset_triggered" and state == "success"
    assert started > _last_finish(denv)
    _assert_marts_equal_books(denv, list(denv.companies))
    for company in denv.companies.values():
        assert_warehouse_matches_dsn(denv, company)
    assert denv.wh(
        "select count(distinct company_id) from sage_control.sync_runs where kind = 'daily' and status = 'success'"
    ) == [(len(denv.companies),)]


def assert_warehouse_matches_dsn(env: Env, company: str) -> None:
    import psycopg

    with psycopg.connect(env.warehouse_dsn) as conn:
        assert_warehouse_matches(env.sage, conn, company)


def test_killed_worker_task_retried_on_the_other_and_company_equals_sage(denv: Env, day_one: dict) -> None:
    assert day_one["killed"] is not None, "the large sync ended before a page landed: nothing was killed"
    killed_host, killed_try = day_one["killed"]
    assert day_one["restarted"]
    dag_id = airflow_api.dag_id_for(denv.companies[LARGE])
    tries = sorted(t[4:7] for t in _tries(denv, "dag_id = %s and task_id = 'sync'", (dag_id,)))
    first = next(t for t in tries if t[0] == killed_try)
    assert first[1] == "failed" and first[2] == killed_host  # failed by the heartbeat timeout
    last = tries[-1]
    assert last[0] > killed_try and last[1] == "success"
    assert last[2] != killed_host and last[2].startswith("worker")
    import psycopg

    with psycopg.connect(denv.warehouse_dsn) as conn:
        assert_warehouse_matches(denv.sage, conn, denv.companies[LARGE])
        assert_no_doubles(conn, denv.companies[LARGE])


# -- day two ---------------------------------------------------------------------------------------


def _make_next_day_due(env: Env, day: int, timeout: float = 120.0) -> None:
    """Move every company DAG's next run (logical date, data interval, due time) to now, until the
    scheduler has created them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        missing = [d for d, r in _runs(env).items() if len(r) < day]
        if not missing:
            return
        env.meta(deploy.NEXT_RUN_DUE_NOW_SQL, (missing,))
        time.sleep(3)
    raise AssertionError("the scheduler did not create the next day's runs")


@pytest.fixture(scope="module")
def day_two(denv: Env, day_one: dict) -> dict:
    began = time.monotonic()
    sage, c = denv.sage, denv.companies
    sage.admin.clear_request_log()
    sage.admin.advance_clock(86400)
    changed: dict[str, dict[str, int]] = {}  # key -> stream -> versions it must add
    for key in ("shop05", "harbour"):
        docs = [
            r
            for r in sage.admin.records(c[key], "purchase_invoices")
            if r["date"] >= WINDOW_START.isoformat() and r["status"]["id"] not in ("VOID", "DRAFT")
        ]
        line = {**docs[0]["invoice_lines"][0], "net_amount": "777.00", "tax_amount": "0.00", "total_amount": "777.00"}
        sage.admin.update(c[key], "purchase_invoices", docs[0]["id"], {"invoice_lines": [line]})
        sage.admin.delete(c[key], "purchase_invoices", docs[1]["id"])
        changed[key] = {"purchase_invoices": 1}
    sage.admin.advance_clock(60)
    before = {key: _versions(denv, company) for key, company in c.items()}
    disconnected, backfilled = "shop09", "northwind"
    # northwind's daily run must still hold the company's run slot when the backfill asks for it:
    # its first invoice read of the day is held at the fake until the backfill has been refused
    # once (a fixed 20 s delay was not enough: on busy cores the backfill's first try came after
    # the daily run had ended, seen in CI). Three requests, since the client gives up on a read
    # after 60 s and asks again; the cap only bounds a test that fails.
    sage.admin.add_fault("hold", path="/purchase_invoices", count=3, delay_ms=600_000, business=c[backfilled])

    _make_next_day_due(denv, 2)
    # The disconnected company: its day-two run exists and has not imported anything yet.
    connections.disconnect(c[disconnected], pause_dag=False)  # as from a machine that reaches no Airflow
    # The backfill: requested while northwind's daily run holds the company's run slot, once that
    # run is in its held invoice read; the read goes on once the backfill's first try was refused.
    _wait_for(lambda: _reading(denv, c[backfilled], "purchase_invoices"), "northwind's daily invoice read to start")
    denv.dep.airflow(
        "dags",
        "trigger",
        "sage_backfill",
        "-c",
        json.dumps(connections.backfill_conf(c[backfilled], inputs.parse_quarter("2023-Q4"))),
    )
    # The scheduler restarted while the day's runs go on.
    denv.dep.restart("scheduler")
    _wait_for(
        lambda: denv.meta(
            "select 1 from task_instance where dag_id = 'sage_backfill' and task_id = 'validate' "
            "and state = 'up_for_reschedule'"
        ),
        "the backfill to find northwind's run slot taken",
    )
    sage.admin.release_held()
    sage.admin.clear_faults()  # the holds not used: the backfill's own reads must not wait
    runs = _wait_day(denv, 2)
    backfill = _wait_for(
        lambda: denv.meta(
            "select run_id, state, start_date, end_date from dag_run where "
            "dag_id = 'sage_backfill' and state in ('success', 'failed')"
        ),
        "the backfill run to finish",
        timeout=DAY_TIMEOUT,
    )
    transform = _wait_transform_after(denv, max(_last_finish(denv), backfill[0][3]))
    print(f"day two: {time.monotonic() - began:.0f}s {_figures(denv, 2, transform)}", flush=True)
    return {
        "runs": runs,
        "before": before,
        "changed": changed,
        "disconnected": disconnected,
        "backfilled": backfilled,
        "backfill": backfill[0],
        "transform": transform,
    }


def _wait_for(probe, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_day_two_is_scheduled_and_adds_only_what_changed(denv: Env, day_two: dict) -> None:
    runs = day_two["runs"]
    # The scheduler restart lost no run: every company has exactly its two scheduled days, both done.
    assert all([x[1] for x in r] == ["scheduled", "scheduled"] for r in runs.values()), runs
    for key, company in denv.companies.items():
        if key in (day_two["backfilled"],):
            continue
        added = {s: n - day_two["before"][key][s] for s, n in _versions(denv, company).items()}
        want = {s: day_two["changed"].get(key, {}).get(s, 0) for s in RAW}
        assert added == want, key
    _assert_marts_equal_books(
        denv, [k for k in denv.companies if k != day_two["disconnected"]], {day_two["backfilled"]: date(2023, 10, 1)}
    )
    assert day_two["transform"][1] == "asset_triggered"
    # Their first syncs done, day two's runs are daily ones: the daily lane's pool. The backfill
    # requested meanwhile read in the history lane's.
    second = {(dag_id, r[-1][0]) for dag_id, r in runs.items()}
    tries = _tries(denv, "dag_id = any(%s)", (denv.dag_ids(),))
    assert {t[7] for t in tries if (t[0], t[1]) in second and t[2] in SAGE_TASKS} == {"sage_api"}
    backfill = _tries(denv, "dag_id = 'sage_backfill' and task_id <> 'validate' and task_id <> 'finish'")
    assert {t[7] for t in backfill if t[2] != "record_failure"} == {"sage_history"}


def test_company_disconnected_while_queued_skips_with_its_reason(denv: Env, day_two: dict) -> None:
    company = denv.companies[day_two["disconnected"]]
    dag_id = airflow_api.dag_id_for(company)
    run_id = day_two["runs"][dag_id][-1][0]
    states = dict(
        denv.meta(
            "select task_id, state from task_instance where dag_id = %s and run_id = %s and map_index < 1",
            (dag_id, run_id),
        )
    )
    assert states == {"sync": "skipped", "record_failure": "skipped"}, states
    assert "disconnected" in _task_log(denv, dag_id, run_id, "sync")
    assert denv.wh(
        "select count(*) from sage_control.sync_runs where company_id = %s and kind = 'daily' and status = 'success'",
        (company,),
    ) == [(1,)]  # day one only


def test_backfill_requested_during_the_daily_run_waits_then_runs(denv: Env, day_two: dict) -> None:
    _, state, _, _ = day_two["backfill"]
    assert state == "success"
    company = denv.companies[day_two["backfilled"]]
    looks = denv.meta(
        "select count(*) from task_reschedule r join task_instance t on t.id = r.ti_id "
        "where t.dag_id = 'sage_backfill' and t.task_id = 'validate'"
    )[0][0]
    assert looks >= 1  # it found the daily run holding the company and looked again later
    daily_end, backfill_start = denv.wh(
        "select max(ended_at) filter (where kind = 'daily'), max(started_at) filter (where kind = 'backfill') "
        "from sage_control.sync_runs where company_id = %s",
        (company,),
    )[0]
    assert backfill_start >= daily_end
    assert denv.wh("select synced_from_quarter from sage_control.companies where company_id = %s", (company,)) == [
        ("2023-Q4",)
    ]
