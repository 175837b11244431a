"""A stateful property test of the sync: any history of Sage changes, faults, crashes and lifecycle
steps, and the warehouse still equals Sage.

A hypothesis ``RuleBasedStateMachine`` drives two connected companies (two Sage users, different
Synced From) through random sequences of:

- Sage-side changes: create, edit, amount change, re-date (inside the window), delete, void; also
  *while a stream is paging* (a hook runs the change after page n arrives, before page n + 1);
- Sage's clock moving forward (time passing, or skewed ahead) and backward (a skew corrected);
- faults on the next requests: 429, 500, 503, a dropped connection, a truncated body, and a
  *lost* response (Sage acted, then the answer never arrived: a lost refresh rotates the grant);
- a process killed between two commits: before a request, inside a page's transaction, inside a
  watermark's transaction or before a run is closed (``Killed``, a ``BaseException`` no handler
  of the sync catches); Airflow then retries that run's tasks under the same run id;
- reset (with its re-import, or wipe-only), disconnect, reconnect and backfill, also while a run
  is in flight (between two pages), including after a sibling stream task failed for good;
- daily runs (the company DAG's tasks in order, with its retries and record_failure), and
  transforms.

**What it compares.** A transform step first *settles*: faults are cleared, a killed run is
retried, a company whose grant Sage refused is re-authorised (a lost refresh can only be fixed so),
and every connected company gets one clean daily run, which must succeed. Then, for each connected
company, against the fake Sage's own records (its truth) in the company's Synced From window:

- always, the raw layer: the latest version of each record minus recorded deletions equals
  Sage's live records, payload for payload (no record missing, extra or changed), and no record
  has two consecutive identical versions (no re-read doubled anything);
- on the first transform of the run and every ``MARTS_EVERY``-th after it, the real dbt marts,
  built then by an in-process ``dbt build`` of the spend marts and everything upstream (models
  and data tests): ``analytics.fct_spend_transactions`` holds exactly the GBP spend lines Sage's
  documents make by the models' rules (computed here from Sage's records), none missing, extra,
  doubled or with another amount; ``rpt_spend_by_category_quarter`` and
  ``rpt_spend_by_supplier_quarter`` sum to the same total, and no sum is non-finite.
- Synced From in the warehouse is where the successful backfills moved it, no further.

Budget: ``make test`` runs ``CI_EXAMPLES`` (8) examples of at most ``CI_STEPS`` (14) steps: 112
steps and 3 dbt builds in 90 s here on 2 shared cores (2026-12-07; 10 x 16 took 196 s, over the
3 minutes allowed). ``STATEFUL_EXAMPLES`` / ``STATEFUL_STEPS`` change them. ``SOAK=1`` runs batches
of examples until ``SOAK_MINUTES`` (default 30) have passed. Either prints, and writes to
``.local/stateful_sync.json``, how many examples and steps ran; ``STATEFUL_TRACE=1`` prints each step.

Examples this machine expresses that fail on the code this test was written against are kept
below as plain tests (issue 22 items 1-3); the invariant was not loosened for them.

Runs with the read-ahead thread off (``SAGE_READ_AHEAD_PAGES=0``: a change between two pages
must land at the same point of the run on every replay; tests/sage/test_prefetch.py holds the
read-ahead to the same results) and the shared rate limiter off (it would pace requests in real
time); retry sleeps are recorded, not slept.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from faults.kit import point_env_at
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from sandbox.fake_sage.server import FakeSageServer

from .sync_world import COMPANIES, DOCUMENTS, DbtRunner, Hooks, SyncWorld, install_hooks, small_pages

pytestmark = pytest.mark.dbt

ROOT = Path(__file__).resolve().parents[2]
CI_EXAMPLES = int(os.environ.get("STATEFUL_EXAMPLES", "8"))
CI_STEPS = int(os.environ.get("STATEFUL_STEPS", "14"))
MARTS_EVERY = 4
SOAK = os.environ.get("SOAK") == "1"
SOAK_MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))

KEYS = st.sampled_from(sorted(COMPANIES))
OPS = st.sampled_from(["create", "edit", "amount", "redate", "delete", "void"])
# Time passing (a minute to a month) and Sage's clock skewed: ahead, then back again.
SECONDS = st.sampled_from(
    [60, 3600, 86_400, 7 * 86_400, 40 * 86_400, 2 * 365 * 86_400, -600, -3600, -86_400, -2 * 365 * 86_400]
)
FAULT_KINDS = st.sampled_from(["429", "500", "503", "drop", "truncate", "lose"])
FAULT_PATHS = st.sampled_from([None, "/purchase_invoices", "/other_payments", "/contacts", "/token"])
INTERRUPTS = st.sampled_from(
    [
        "create",
        "edit",
        "amount",
        "delete",
        "void",
        "sibling_fails",
        "sibling_fails_then_reset",
        "sibling_fails_then_backfill",
        "reset",
        "backfill",
        "disconnect",
    ]
)
SEAMS = st.sampled_from(["request", "load", "watermark", "finish"])


class Context:
    """What every example of the machine shares (set by the test before it runs)."""

    sage: FakeSageServer
    dsn: str
    hooks: Hooks
    dbt: DbtRunner
    examples = 0
    steps = 0
    marts_checks = 0
    raw_checks = 0


class SyncMachine(RuleBasedStateMachine):
    """The rules: each one step of :class:`SyncWorld` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        Context.examples += 1
        self.world = SyncWorld(Context.sage, Context.dsn, Context.hooks, Context.dbt, marts_every=MARTS_EVERY)

    def _count(self) -> None:
        Context.steps += 1

    @rule(key=KEYS, stream=st.sampled_from(DOCUMENTS), op=OPS, pick=st.integers(0, 997))
    def sage_change(self, key: str, stream: str, op: str, pick: int) -> None:
        self._count()
        self.world.sage_change(key, stream, op, pick)

    @rule(seconds=SECONDS)
    def clock(self, seconds: int) -> None:
        self._count()
        self.world.clock(seconds)

    @rule(kind=FAULT_KINDS, path=FAULT_PATHS, count=st.integers(1, 8))
    def fault(self, kind: str, path: str | None, count: int) -> None:
        self._count()
        self.world.fault(kind, path, count)

    @rule(
        key=KEYS,
        interrupt=st.none() | st.tuples(st.sampled_from(DOCUMENTS), st.integers(1, 3), INTERRUPTS),
    )
    def daily(self, key: str, interrupt: tuple[str, int, str] | None) -> None:
        self._count()
        self.world.daily(key, interrupt=interrupt)

    @rule(key=KEYS, seam=SEAMS, n=st.integers(1, 40))
    def killed_run(self, key: str, seam: str, n: int) -> None:
        self._count()
        self.world.daily(key, kill=(seam, n))

    @precondition(lambda self: any(c.killed_run for c in self.world.companies.values()))
    @rule(key=KEYS)
    def resume(self, key: str) -> None:
        self._count()
        self.world.resume(key)

    @rule(key=KEYS, full=st.booleans())
    def reset(self, key: str, full: bool) -> None:
        self._count()
        self.world.reset(key, full=full)

    @rule(key=KEYS)
    def disconnect(self, key: str) -> None:
        self._count()
        self.world.disconnect(key)

    @rule(key=KEYS)
    def reconnect(self, key: str) -> None:
        self._count()
        self.world.reconnect(key)

    @rule(
        key=KEYS,
        quarters=st.integers(1, 2),
        interrupt=st.none()
        | st.tuples(st.sampled_from(DOCUMENTS), st.integers(1, 2), st.sampled_from(["delete", "edit"])),
    )
    def backfill(self, key: str, quarters: int, interrupt: tuple[str, int, str] | None) -> None:
        self._count()
        self.world.backfill(key, quarters, interrupt)

    @precondition(lambda self: self.world.dirty)  # a transform right after one adds nothing
    @rule()
    def transform(self) -> None:
        self._count()
        # The dbt marts on every MARTS_EVERY-th transform of the run (the first included), the raw
        # layer on the others: a dbt build is 10-15 s here, a raw check under one.
        kind = self.world.transform(marts=(Context.marts_checks + Context.raw_checks) % MARTS_EVERY == 0)
        if kind == "marts":
            Context.marts_checks += 1
        else:
            Context.raw_checks += 1


@pytest.fixture
def world_context(
    sage: FakeSageServer,
    pg_dsn: str,
    warehouse: psycopg.Connection,
    fernet_key: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[type[Context]]:
    point_env_at(monkeypatch, pg_dsn, sage)
    monkeypatch.setenv("SAGE_READ_AHEAD_PAGES", "0")
    monkeypatch.setenv("SAGE_RATE_LIMIT_PER_S", "off")
    monkeypatch.setattr("sage_sync.sage.client._sleep", lambda _s: None)
    monkeypatch.setattr("sage_sync.sage.auth._sleep", lambda _s: None)
    monkeypatch.setattr(
        "sage_sync.orchestration.airflow_api.set_dag_paused", lambda dag_id, *, paused, caller=None: False
    )
    hooks = Hooks()
    install_hooks(monkeypatch, hooks)
    small_pages(monkeypatch)
    warehouse.close()  # the world empties the warehouse itself, per example
    Context.sage, Context.dsn, Context.hooks, Context.dbt = sage, pg_dsn, hooks, DbtRunner(pg_dsn, tmp_path)
    Context.examples = Context.steps = Context.marts_checks = Context.raw_checks = 0
    yield Context


@pytest.fixture(scope="module")
def sage() -> Iterator[FakeSageServer]:
    with FakeSageServer(seed=31) as server:
        yield server


def _report(started: float, mode: str) -> dict[str, Any]:
    figures = {
        "mode": mode,
        "examples": Context.examples,
        "steps": Context.steps,
        "transforms_checked_on_marts": Context.marts_checks,
        "transforms_checked_on_raw": Context.raw_checks,
        "dbt_builds": Context.dbt.builds,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"stateful sync: {json.dumps(figures)}")
    out = ROOT / ".local" / "stateful_sync.json"
    if out.parent.is_dir():
        out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


# A soak outlives the suite's 600 s per-test timeout by design: its own bound is SOAK_MINUTES, plus
# the batch in flight when it is reached.
@pytest.mark.timeout((SOAK_MINUTES + 15) * 60 if SOAK else 600)
def test_any_history_leaves_the_warehouse_equal_to_sage(world_context: type[Context]) -> None:
    started = time.monotonic()
    common = {
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
        "stateful_step_count": CI_STEPS,
    }
    try:
        if not SOAK:
            run_state_machine_as_test(SyncMachine, settings=settings(max_examples=CI_EXAMPLES, **common))
            return
        deadline = started + SOAK_MINUTES * 60
        while time.monotonic() < deadline:  # batches, so the time bound is kept within one batch
            run_state_machine_as_test(SyncMachine, settings=settings(max_examples=5, **common))
    finally:
        _report(started, "soak" if SOAK else "ci")


# -- examples the machine shrank to, kept as regression tests ----------------------------------------


@pytest.fixture
def world(world_context: type[Context]) -> SyncWorld:
    """A fresh example, as the machine starts one."""
    return SyncWorld(Context.sage, Context.dsn, Context.hooks, Context.dbt, marts_every=MARTS_EVERY)


def test_reset_after_a_sibling_task_failed_while_a_stream_still_pages(world: SyncWorld) -> None:
    """Issue 22 item 1 (run fencing): the run is closed as failed while its invoice task still
    pages, the reset is accepted and wipes, the old task then writes its watermark; the next daily
    run (the reset's re-import) must still import every invoice."""
    world.daily("greenleaf", interrupt=("purchase_invoices", 2, "sibling_fails_then_reset"))
    world.transform(marts=False)


def test_deletion_while_a_backfill_pages(world: SyncWorld) -> None:
    """Issue 22 item 2 (pass completeness): a document of the older window is deleted after the
    backfill's first page; offset paging then skips a live one, and Synced From must not move
    past a window that was not read in full."""
    world.daily("greenleaf")
    world.backfill("greenleaf", 2, interrupt=("purchase_invoices", 1, "delete"))
    world.transform(marts=False)


def test_an_edit_stamped_by_a_clock_two_years_ahead(world: SyncWorld) -> None:
    """Issue 22 item 3 (watermark bounds): Sage's clock runs two years ahead for one edit and is
    then corrected; later edits and new documents must still be imported."""
    world.daily("greenleaf")
    world.clock(2 * 365 * 86_400)
    world.sage_change("greenleaf", "purchase_invoices", "edit", 1)
    world.clock(-2 * 365 * 86_400)
    world.transform(marts=False)  # the edit is imported; its stamp must not become the cursor
    world.clock(86_400)
    world.sage_change("greenleaf", "purchase_invoices", "create", 2)
    world.sage_change("greenleaf", "purchase_invoices", "amount", 3)
    world.transform(marts=False)


def test_a_disconnect_while_a_stream_pages_ends_the_run_skipped(world: SyncWorld) -> None:
    """Found by the 30-minute soak (shrunk): a disconnect between two pages of a daily run. The
    run is closed as skipped and fenced, so its `finish` must skip (as the DAG's does), not turn
    it into a success; the reconnect's catch-up then imports everything."""
    world.transform()
    world.clock(60)
    world.transform()
    world.clock(60)
    world.transform()
    outcome = world.daily("greenleaf", interrupt=("purchase_invoices", 1, "disconnect"))
    assert outcome.startswith("skipped"), outcome
    world.transform(marts=False)
