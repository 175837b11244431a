"""A sync world for the stateful property test: the fake Sage, a real warehouse, the sync run in-process.

:class:`SyncWorld` holds one example's history: which companies are connected and from when,
which run a killed process left behind, how many steps ran. Each public method is one step a
real deployment can take (a Sage-side edit, a fault, a daily run of the company DAG's tasks, a
reset, a transform) and is used both by the hypothesis state machine and by the regression tests
that keep the examples it shrank to, so a kept example replays exactly what the machine did.

Why the sync runs in-process (the DAG's task functions in the DAG's order, as
``tests/faults`` do) and not through ``airflow dags test``: a step must be able to stop a run
between any two of its commits, and to change Sage or the company between two of its pages;
that needs hooks in the process that runs it. The fake Sage is a real HTTP server in its own
process; the warehouse and dbt are real.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sage_sync.core.errors import (
    CompanySkipped,
    LifecycleError,
    ReauthorizationRequired,
    RunFenced,
    SageError,
)
from sage_sync.core.quarters import Quarter
from sage_sync.sage.auth import new_pkce_pair
from sage_sync.sage.client import SageClient
from sandbox.fake_sage.server import FakeSageServer

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ("purchase_invoices", "purchase_credit_notes", "purchase_quick_entries", "other_payments")
VOIDABLE = ("purchase_invoices", "purchase_credit_notes", "purchase_quick_entries")
LINES = {
    "purchase_invoices": "invoice_lines",
    "purchase_credit_notes": "credit_note_lines",
    "other_payments": "payment_lines",
}
# The two companies: different Sage users (their own grants), both GBP, different Synced From.
COMPANIES = {"greenleaf": Quarter.parse("2026-Q2"), "harbour": Quarter.parse("2026-Q1")}
# Spend pages of this many records, so a company's window is several pages and a step can act
# between them (Sage's 200 would be one page for these volumes).
PAGE_SIZE = 12
RAW_TABLES = (
    "businesses",
    "financial_settings",
    "ledger_accounts",
    "contacts",
    "tax_rates",
    *DOCUMENTS,
)
# What a run may end with after the faults and interruptions the steps inject: Sage errors
# (retries exhausted, a refused grant), a company skipped or busy, a pass that never covered
# $total. Anything else escaping a run is a bug in itself.
# (A RuntimeError is also how extract.read_window gives up on a pass that never covered $total.)
RUN_OUTCOMES: tuple[type[BaseException], ...] = (SageError, CompanySkipped, LifecycleError, RuntimeError)


class Killed(BaseException):
    """The process died here (like SIGKILL): not an ``Exception``, so no handler in the sync closes
    the run or commits anything; only the database's own rollback of an open transaction happens."""


@dataclass
class Hooks:
    """What the patched seams do: kill the process at the n-th checkpoint of a kind, or run an
    action once after the n-th list page of a path arrives (Sage changes between two pages)."""

    kill_kind: str | None = None
    kill_at: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    page_path: str | None = None
    page_at: int = 0
    page_action: Callable[[list[Any]], None] | None = None
    pages: Counter[str] = field(default_factory=Counter)

    def clear(self) -> None:
        self.kill_kind, self.page_action, self.page_path = None, None, None
        self.counts.clear()
        self.pages.clear()

    def checkpoint(self, kind: str) -> None:
        self.counts[kind] += 1
        if kind == self.kill_kind and self.counts[kind] == self.kill_at:
            self.kill_kind = None
            raise Killed(f"killed at {kind} #{self.kill_at}")

    def page_arrived(self, path: str, items: list[Any]) -> None:
        self.pages[path] += 1
        if self.page_action is not None and self.page_path == path and self.pages[path] == self.page_at:
            action, self.page_action = self.page_action, None
            action(items)


def install_hooks(monkeypatch: pytest.MonkeyPatch, hooks: Hooks) -> None:
    """Patch the seams between the sync's commits.

    ``request``: before every Sage request (after the previous page's commit); ``load``: inside a
    page's transaction, before its rows (raising there rolls the page back); ``watermark``: inside
    the transaction that moves a watermark; ``finish``: before a run is closed.
    """
    from sage_sync.warehouse import loader, runs, watermarks

    def seam(kind: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(*args: Any, **kwargs: Any) -> Any:
            hooks.checkpoint(kind)
            return original(*args, **kwargs)

        return hooked

    monkeypatch.setattr(loader, "load_records", seam("load", loader.load_records))
    monkeypatch.setattr(loader, "record_deletions", seam("load", loader.record_deletions))
    monkeypatch.setattr(watermarks, "set_watermark", seam("watermark", watermarks.set_watermark))
    monkeypatch.setattr(runs, "finish_run", seam("finish", runs.finish_run))
    original_get = SageClient._get

    def get(self: SageClient, target: str, params: Any) -> Any:
        hooks.checkpoint("request")
        body, response = original_get(self, target, params)
        if isinstance(body, dict) and "$items" in body:
            hooks.page_arrived(response.request.path_url.split("?")[0].removeprefix("/v3.1"), body["$items"])
        return body, response

    monkeypatch.setattr(SageClient, "_get", get)


def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spend streams in pages of PAGE_SIZE (the reference streams keep Sage's 200), in daily
    reads and backfills (both build their requests in ``extract``)."""
    from sage_sync.pipeline import extract
    from sage_sync.sage import streams

    original = streams.list_params

    def list_params(stream: Any, **kwargs: Any) -> dict[str, Any]:
        if stream.name in DOCUMENTS and "page_size" not in kwargs:
            kwargs["page_size"] = PAGE_SIZE
        return original(stream, **kwargs)

    monkeypatch.setattr(extract, "list_params", list_params)


@dataclass
class Company:
    """What the model knows of one company (the warehouse is checked against it, not read for it)."""

    key: str
    company_id: str
    login: str
    synced_from: Quarter
    connected: bool = True
    killed_run: str | None = None  # the Airflow run id of a run whose process was killed


class SyncWorld:
    """One example: a reset fake Sage, an emptied warehouse, two connected companies."""

    def __init__(self, sage: FakeSageServer, dsn: str, hooks: Hooks, dbt: DbtRunner, *, marts_every: int) -> None:
        self.sage, self.dsn, self.hooks, self.dbt = sage, dsn, hooks, dbt
        self.marts_every = marts_every
        self.steps = 0
        self.transforms = 0
        self.runs = 0
        self.sibling_failed = False
        self.dirty = True  # something happened since the last transform
        self.trace: list[str] = []
        self._last = time.monotonic()
        hooks.clear()
        sage.admin.reset()
        empty_warehouse(dsn)
        businesses = {b["key"]: b for b in sage.admin.businesses()}
        self.companies: dict[str, Company] = {}
        for key, quarter in COMPANIES.items():
            b = businesses[key]
            self.companies[key] = Company(key, b["id"], b["user"], quarter)
            self._connect(self.companies[key])
        self.note("connected")

    # -- helpers -------------------------------------------------------------------------------------

    def note(self, text: str) -> None:
        now = time.monotonic()
        self.steps += 1
        self.trace.append(f"{text} [{now - self._last:.1f} s]")
        self.dirty = not text.startswith("transform")
        self._last = now
        if os.environ.get("STATEFUL_TRACE"):
            print(self.trace[-1])

    def _code(self, company: Company) -> tuple[str, str]:
        verifier, challenge = new_pkce_pair()
        return self.sage.authorize(login_hint=company.login, code_challenge=challenge), verifier

    def _connect(self, company: Company) -> None:
        from sage_sync.lifecycle import connections

        code, verifier = self._code(company)
        connections.connect(code, verifier, company.company_id, company.synced_from, dsn=self.dsn)

    def live(self, company: Company, stream: str) -> list[dict[str, Any]]:
        """The company's live records of ``stream`` inside its window, in creation order."""
        start = company.synced_from.start_date.isoformat()
        return [r for r in self.sage.admin.records(company.company_id, stream) if r["date"] >= start]

    def _pick(self, company: Company, stream: str, pick: int, *, voidable: bool = False) -> dict[str, Any] | None:
        records = self.live(company, stream)
        if voidable:
            records = [r for r in records if (r.get("status") or {}).get("id") != "VOID"]
        return records[pick % len(records)] if records else None

    def _target(
        self, company: Company, stream: str, op: str, pick: int, among: list[Any] | None
    ) -> dict[str, Any] | None:
        target = self._pick(company, stream, pick, voidable=op == "void")
        ids = [i.get("id") for i in among or [] if isinstance(i, dict)]
        if ids and op != "create":
            # A record of the page the run just read: a deletion there shifts offset paging.
            live = {r["id"]: r for r in self.live(company, stream)}
            target = live.get(ids[pick % len(ids)], target)
        return target

    # -- Sage-side changes ---------------------------------------------------------------------------

    def sage_change(self, key: str, stream: str, op: str, pick: int, *, among: list[Any] | None = None) -> None:
        """create | edit | amount | redate | delete | void one record of ``stream`` in Sage."""
        company = self.companies[key]
        cid = company.company_id
        if op == "void" and stream not in VOIDABLE:
            op = "edit"
        target = self._target(company, stream, op, pick, among)
        if target is None:
            self.note(f"sage {op} {key}/{stream}: nothing to change")
            return
        if op == "create":
            template = {
                k: v
                for k, v in target.items()
                if k not in ("id", "$path", "displayed_as", "created_at", "updated_at", "deleted_at", "status")
            }
            today = self.sage.admin.now()[:10]
            made = self.sage.admin.create(cid, stream, {**template, "date": today, "reference": f"NEW-{pick}"})
            self.note(f"sage create {key}/{stream} {made['id']}")
        elif op == "edit":
            self.sage.admin.update(cid, stream, target["id"], {"notes": f"edited {pick}"})
            self.note(f"sage edit {key}/{stream} {target['id']}")
        elif op == "amount":
            amount = f"{(pick % 900) + 100}.{pick % 100:02d}"
            if stream in LINES:
                first, *rest = target[LINES[stream]]
                line = {**first, "net_amount": amount, "tax_amount": "0.00", "total_amount": amount}
                for derived in ("base_currency_net_amount", "base_currency_tax_amount", "base_currency_total_amount"):
                    line.pop(derived, None)
                changes: dict[str, Any] = {LINES[stream]: [line, *rest]}
            else:
                changes = {"net_amount": amount, "tax_amount": "0.00", "total_amount": amount}
            self.sage.admin.update(cid, stream, target["id"], changes)
            self.note(f"sage amount {key}/{stream} {target['id']} -> {amount}")
        elif op == "redate":
            # A date moved inside the window (documents moved out of it are their own question).
            start = company.synced_from.start_date.toordinal()
            today = date.fromisoformat(self.sage.admin.now()[:10]).toordinal()
            moved = date.fromordinal(start + pick % max(today - start, 1)).isoformat()
            self.sage.admin.update(cid, stream, target["id"], {"date": moved})
            self.note(f"sage redate {key}/{stream} {target['id']} -> {moved}")
        elif op == "delete":
            self.sage.admin.delete(cid, stream, target["id"])
            self.note(f"sage delete {key}/{stream} {target['id']}")
        elif op == "void":
            self.sage.admin.void(cid, stream, target["id"], "Entered in error")
            self.note(f"sage void {key}/{stream} {target['id']}")
        else:
            raise ValueError(op)

    def clock(self, seconds: int) -> None:
        """Move Sage's clock (negative: back). Time passing, or Sage's clock skewed and corrected."""
        now = self.sage.admin.advance_clock(seconds)
        self.note(f"clock {seconds:+d} s -> {now}")

    def fault(self, kind: str, path: str | None, count: int) -> None:
        """The next ``count`` requests to ``path`` (None: any API path) misbehave."""
        self.sage.admin.add_fault(kind, path=path, count=count, retry_after=0 if kind == "429" else None)
        self.note(f"fault {kind} x{count} on {path or 'any'}")

    # -- runs ----------------------------------------------------------------------------------------

    def daily(
        self, key: str, interrupt: tuple[str, int, str] | None = None, kill: tuple[str, int] | None = None
    ) -> str:
        """One run of the company's daily DAG; optionally ``interrupt`` = (stream, page, what)
        happens once after that page of that stream arrives, and ``kill`` = (seam, n) kills the
        process at the n-th checkpoint of that seam. Returns how the run ended."""
        company = self.companies[key]
        self.runs += 1
        airflow_run_id = f"scheduled__{self.runs}"
        if interrupt is not None:
            stream, page, what = interrupt
            self.hooks.page_path, self.hooks.page_at = f"/{stream}", page
            self.hooks.page_action = lambda items: self.interrupt(company, airflow_run_id, stream, what, page, items)
        if kill is not None:
            self.hooks.kill_kind, self.hooks.kill_at = kill
            self.hooks.counts.clear()
        self.hooks.pages.clear()
        try:
            outcome = self._dag_run(company, airflow_run_id)
        except Killed as exc:
            company.killed_run = airflow_run_id
            outcome = str(exc)
        finally:
            self.hooks.clear()
        self.note(f"daily {key} {airflow_run_id} interrupt={interrupt} kill={kill}: {outcome}")
        return outcome

    def resume(self, key: str) -> str:
        """Airflow retries the tasks of the run whose process was killed (same run id)."""
        company = self.companies[key]
        airflow_run_id, company.killed_run = company.killed_run, None
        if airflow_run_id is None:
            return "nothing to resume"
        outcome = self._dag_run(company, airflow_run_id)
        self.note(f"resume {key} {airflow_run_id}: {outcome}")
        return outcome

    def _dag_run(self, company: Company, airflow_run_id: str) -> str:
        """The company DAG's one ``sync`` task with the DAG's retries, as its body runs it: each try
        resumes past the streams an earlier try of the run read to the end. Failing for good runs
        record_failure, as the DAG's trigger_rule='one_failed' task does."""
        from sage_sync.pipeline import sync

        cid = company.company_id
        self.sibling_failed = False
        failure = "no try"
        for _attempt in range(3):  # default_args retries=2
            try:
                done = sync.resume_point(cid, airflow_run_id)
                run_id = sync.begin_run(cid, airflow_run_id=airflow_run_id, kind="daily")
                sync.read_everything(cid, run_id, skip=done)
                sync.finish_run(cid, run_id, status="success")
                return "success"
            except CompanySkipped:
                return "skipped (disconnected)"  # skips_disconnected: the task is skipped
            except RunFenced as exc:  # skips_disconnected: no retries; skipped after a disconnect
                if exc.run_status == "skipped":
                    return "skipped: fenced (skipped)"
                failure = "RunFenced"
                break
            except ReauthorizationRequired as exc:  # no retries
                failure = type(exc).__name__
                break
            except RUN_OUTCOMES as exc:
                failure = f"{type(exc).__name__}: {str(exc)[:120]}"
        if self.sibling_failed:
            failure += "; the run was closed as failed under it (interrupt)"
        sync.finish_run(cid, sync.run_key(cid, airflow_run_id), status="failed", error="a task of this run failed")
        return "failed: sync: " + failure

    def interrupt(
        self, company: Company, airflow_run_id: str, stream: str, what: str, page: int, items: list[Any]
    ) -> None:
        """What happens between two pages of a run in flight (in Sage, or to the company)."""
        from sage_sync.pipeline import sync

        key = company.key
        self.note(f"  while {stream} page {page} of {airflow_run_id}: {what}")
        if what.startswith("sibling_fails"):
            self.sibling_failed = True
        if what in ("create", "edit", "amount", "redate", "delete", "void"):
            self.sage_change(key, stream, what, page * 7, among=items)
        elif what == "sibling_fails":
            # The run is closed as failed under its reading task (a takeover, or someone marking the
            # task failed in Airflow while its process still reads): every later page is fenced.
            sync.finish_run(company.company_id, sync.run_key(company.company_id, airflow_run_id), status="failed")
        elif what == "sibling_fails_then_reset":
            # The Connect page's reset: wipe now, the company's next daily run re-imports.
            sync.finish_run(company.company_id, sync.run_key(company.company_id, airflow_run_id), status="failed")
            self.reset(key, full=False)
        elif what == "sibling_fails_then_backfill":
            sync.finish_run(company.company_id, sync.run_key(company.company_id, airflow_run_id), status="failed")
            self.backfill(key, 1)
        elif what == "reset":
            self.reset(key, full=True)
        elif what == "backfill":
            self.backfill(key, 1)
        elif what == "disconnect":
            self.disconnect(key)
        else:
            raise ValueError(what)

    # -- the company's lifecycle ---------------------------------------------------------------------

    def reset(self, key: str, *, full: bool) -> str:
        """Reset (wipe and re-import); ``full`` runs the re-import now, else the next daily run does."""
        from sage_sync.lifecycle import connections

        company = self.companies[key]
        try:
            run_id = connections.reset(company.company_id, confirm=True, dsn=self.dsn)
        except LifecycleError as exc:
            self.note(f"reset {key}: refused ({exc})")
            return "refused"
        if full:
            try:
                connections.run_reset_sync(company.company_id, run_id)
                outcome = "re-imported"
            except RUN_OUTCOMES as exc:
                outcome = f"re-import failed: {type(exc).__name__}"
        else:
            connections.close_reset_run(run_id, dsn=self.dsn)
            outcome = "wiped"
        self.note(f"reset {key}: {outcome}")
        return outcome

    def disconnect(self, key: str) -> str:
        from sage_sync.lifecycle import connections

        company = self.companies[key]
        try:
            connections.disconnect(company.company_id, dsn=self.dsn, pause_dag=False)
        except LifecycleError as exc:
            self.note(f"disconnect {key}: refused ({exc})")
            return "refused"
        company.connected = False
        self.note(f"disconnect {key}")
        return "disconnected"

    def reconnect(self, key: str) -> str:
        from sage_sync.lifecycle import connections

        company = self.companies[key]
        code, verifier = self._code(company)
        try:
            connections.reconnect(company.company_id, code, verifier, dsn=self.dsn)
        except LifecycleError as exc:  # e.g. Sage's token endpoint failing: the user tries again later
            self.note(f"reconnect {key}: refused ({exc})")
            return "refused"
        company.connected = True
        self.note(f"reconnect {key}")
        return "reconnected"

    def backfill(self, key: str, quarters: int, interrupt: tuple[str, int, str] | None = None) -> str:
        """Move Synced From ``quarters`` earlier: a fresh Authorise Access, then the backfill run;
        ``interrupt`` = (stream, page, Sage change) happens once after that page arrives."""

        company = self.companies[key]
        if interrupt is not None:
            stream, page, what = interrupt
            self.hooks.pages.clear()
            self.hooks.page_path, self.hooks.page_at = f"/{stream}", page
            self.hooks.page_action = lambda items: self._backfill_change(company, stream, what, page, items)
        try:
            return self._backfill(company, quarters)
        finally:
            if interrupt is not None:
                self.hooks.clear()

    def _backfill_change(self, company: Company, stream: str, what: str, page: int, items: list[Any]) -> None:
        self.note(f"  while {stream} page {page} of a backfill: {what}")
        # A record of the page the backfill just read (older than Synced From): deleting it shifts
        # every later record one place up.
        ids = [i["id"] for i in items if isinstance(i, dict) and i.get("id")]
        if not ids:
            return
        target = {"id": ids[(page * 7) % len(ids)]}
        if what == "delete":
            self.sage.admin.delete(company.company_id, stream, target["id"])
        else:
            self.sage.admin.update(company.company_id, stream, target["id"], {"notes": f"edited {page}"})
        self.note(f"  sage {what} {company.key}/{stream} {target['id']} (older window)")

    def _backfill(self, company: Company, quarters: int) -> str:
        from sage_sync.lifecycle import connections
        from sage_sync.pipeline import sync

        key = company.key
        target = company.synced_from
        for _ in range(quarters):
            target = target.previous()
        code, verifier = self._code(company)
        try:
            quarter = connections.authorise_backfill(company.company_id, str(target), code, verifier, dsn=self.dsn)
            sync.run_backfill(company.company_id, quarter)
        except LifecycleError as exc:
            self.note(f"backfill {key} to {target}: refused ({exc})")
            return "refused"
        except RUN_OUTCOMES as exc:
            self.note(f"backfill {key} to {target}: failed ({type(exc).__name__})")
            return "failed"
        company.synced_from = target  # it succeeded: the window is larger now
        self.note(f"backfill {key} to {target}")
        return "moved"

    # -- the invariant -------------------------------------------------------------------------------

    def settle(self) -> None:
        """Faults over, killed runs retried, grants re-authorised, then one clean daily run each.

        The invariant is about what the warehouse *can* know: after any history, once Sage stops
        misbehaving and a run completes, nothing may be missing, extra, doubled or changed.
        """
        self.sage.admin.clear_faults()
        for key, company in self.companies.items():
            if company.killed_run is not None:
                self.resume(key)
        for key, company in self.companies.items():
            if not company.connected:
                continue
            if self.status(company) in ("needs_reauth", "error"):
                self.reconnect(key)
            outcome = self.daily(key)
            if outcome != "success" and self.status(company) == "needs_reauth":
                # A refresh whose answer was lost rotated the grant away (or it expired unused):
                # only a new authorisation helps, as the README says. A person re-authorises.
                self.reconnect(key)
                outcome = self.daily(key)
            assert outcome == "success", f"{key}: a clean daily run after the history above ended {outcome!r}"

    def status(self, company: Company) -> str:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "select status, synced_from_quarter from sage_control.companies where company_id = %s",
                (company.company_id,),
            ).fetchone()
        assert row is not None
        assert row[1] == str(company.synced_from), (
            f"{company.key}: Synced From is {row[1]} in the warehouse, but only backfills to "
            f"{company.synced_from} succeeded"
        )
        return str(row[0])

    def transform(self, *, marts: bool | None = None) -> str:
        """Settle, then compare with Sage's truth: the dbt marts (built now) or the raw layer."""
        self.settle()
        self.transforms += 1
        use_marts = marts if marts is not None else (self.transforms % self.marts_every == 1 or self.marts_every == 1)
        for company in self.companies.values():
            if company.connected:
                check_raw(self, company)
        if use_marts:
            self.dbt.build()
            for company in self.companies.values():
                if company.connected:
                    check_marts(self, company)
        self.note(f"transform ({'dbt marts' if use_marts else 'raw layer'}) checked")
        return "marts" if use_marts else "raw"


# -- the truth ---------------------------------------------------------------------------------------


def empty_warehouse(dsn: str) -> None:
    """Every raw and control row gone and dbt's relations dropped (as the ``warehouse`` fixture)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select quote_ident(schemaname) || '.' || quote_ident(tablename) from pg_tables "
            "where schemaname in ('sage_control', 'sage_raw')"
        ).fetchall()
        conn.execute("truncate " + ", ".join(r[0] for r in rows) + " restart identity cascade")
        conn.execute("drop schema if exists sage_staging, sage_intermediate, sage_marts, analytics cascade")


def spend_lines(sage_records: dict[str, list[dict[str, Any]]]) -> Counter[tuple[str, str, str, Decimal]]:
    """The GBP spend lines the marts must hold for these documents, by the models' documented rules
    (computed here from Sage's records, not from the warehouse): (stream, record, line, signed net)."""
    lines: Counter[tuple[str, str, str, Decimal]] = Counter()
    for stream, docs in sage_records.items():
        for doc in docs:
            if stream == "other_payments":
                kind = doc["transaction_type"]["id"]
                if kind not in ("OTHER_PAYMENT", "OTHER_PAYMENT_REFUND"):
                    continue
                sign = -1 if kind == "OTHER_PAYMENT_REFUND" else 1
            else:
                if (doc.get("status") or {}).get("id") in ("VOID", "DRAFT"):
                    continue
                if (doc.get("currency") or {}).get("id", "GBP") != "GBP":
                    continue
                credit = stream == "purchase_credit_notes" or (
                    stream == "purchase_quick_entries" and doc["quick_entry_type"]["id"] == "CREDIT_NOTE"
                )
                sign = -1 if credit else 1
            if stream == "purchase_quick_entries":
                lines[(stream, doc["id"], doc["id"], sign * Decimal(doc["net_amount"]))] += 1
                continue
            for n, line in enumerate(doc[LINES[stream]], start=1):
                line_id = line.get("id") or f"{doc['id']}:{n}"
                lines[(stream, doc["id"], line_id, sign * Decimal(line["net_amount"]))] += 1
    return lines


def check_raw(world: SyncWorld, company: Company) -> None:
    """The raw layer's dedupe (latest version per record, minus recorded deletions) equals Sage's
    live records in the window, payload for payload; no two consecutive versions are equal."""
    cid, start = company.company_id, company.synced_from.start_date.isoformat()
    with psycopg.connect(world.dsn) as conn:
        for stream in DOCUMENTS:
            want = {r["id"]: r for r in world.live(company, stream)}
            rows = conn.execute(
                sql.SQL(
                    "select distinct on (record_id) record_id, payload from {} where company_id = %s "
                    "order by record_id, _extracted_at desc"
                ).format(sql.Identifier("sage_raw", stream)),
                (cid,),
            ).fetchall()
            gone = {
                r[0]
                for r in conn.execute(
                    "select record_id from sage_raw.deletions where company_id = %s and stream = %s", (cid, stream)
                )
            }
            have = {rid: payload for rid, payload in rows if rid not in gone and payload.get("date", "") >= start}
            missing = sorted(set(want) - set(have))
            extra = sorted(set(have) - set(want))
            changed = sorted(rid for rid in set(want) & set(have) if want[rid] != have[rid])
            assert not (missing or extra or changed), (
                f"{company.key}/{stream} raw layer vs Sage: missing {missing[:3]} ({len(missing)}), "
                f"extra {extra[:3]} ({len(extra)}), changed {changed[:3]} ({len(changed)})"
            )
        for table in RAW_TABLES:
            doubled = conn.execute(
                sql.SQL(
                    "select record_id from (select record_id, content_hash, lag(content_hash) over "
                    "(partition by record_id order by _extracted_at) as previous from {} where company_id = %s) v "
                    "where content_hash = previous limit 3"
                ).format(sql.Identifier("sage_raw", table)),
                (cid,),
            ).fetchall()
            assert not doubled, f"{company.key}/{table}: a re-read added an unchanged version: {doubled}"


def check_marts(world: SyncWorld, company: Company) -> None:
    """``analytics.fct_spend_transactions`` holds exactly the company's GBP spend lines in Sage's
    window (none missing, extra, doubled or with another amount), and every sum the quarter marts
    show is finite and adds up to the fact's."""
    truth = spend_lines({stream: world.live(company, stream) for stream in DOCUMENTS})
    with psycopg.connect(world.dsn) as conn:
        rows = conn.execute(
            "select stream, record_id, line_id, amount from analytics.fct_spend_transactions where company_id = %s",
            (company.company_id,),
        ).fetchall()
        modelled: Counter[tuple[str, str, str, Decimal]] = Counter((s, r, line, Decimal(a)) for s, r, line, a in rows)
        sums = conn.execute(
            "select (select sum(amount) from analytics.fct_spend_transactions where company_id = %(c)s), "
            "(select sum(amount) from analytics.rpt_spend_by_category_quarter where company_id = %(c)s), "
            "(select sum(amount) from analytics.rpt_spend_by_supplier_quarter where company_id = %(c)s)",
            {"c": company.company_id},
        ).fetchone()
    missing, extra = truth - modelled, modelled - truth
    assert not (missing or extra), (
        f"{company.key} marts vs Sage: missing {sorted(missing)[:3]} ({sum(missing.values())}), "
        f"extra {sorted(extra)[:3]} ({sum(extra.values())})"
    )
    assert sums is not None
    for value in sums:
        assert value is None or Decimal(value).is_finite(), f"{company.key}: a mart sum is {value}"
    total = sum((amount for (_, _, _, amount), n in truth.items() for _ in range(n)), Decimal(0))
    assert all(Decimal(v or 0) == total for v in sums), f"{company.key}: mart sums {sums} != Sage's {total}"


# -- dbt ---------------------------------------------------------------------------------------------


class DbtRunner:
    """``dbt build`` of the spend marts and everything upstream, in this process (dbtRunner).

    In-process because a dbt subprocess pays its imports and project parse (about 10 s here) on
    every call; the manifest parsed by the first call is reused. Only the models and data tests
    the spend marts need (unit tests are tests/dbt's business).
    """

    SELECT = ("+fct_spend_transactions", "+rpt_spend_by_category_quarter", "+rpt_spend_by_supplier_quarter")

    def __init__(self, dsn: str, tmp: Path) -> None:
        self.dsn, self.tmp = dsn, tmp
        self.builds = 0
        self._manifest: Any = None

    @contextlib.contextmanager
    def _env(self) -> Iterator[None]:
        params = psycopg.conninfo.conninfo_to_dict(self.dsn)
        values = {
            "SAGE_PG_HOST": str(params.get("host") or "127.0.0.1"),
            "SAGE_PG_PORT": str(params.get("port") or "5432"),
            "SAGE_PG_USER": str(params.get("user") or "postgres"),
            "SAGE_PG_PASSWORD": str(params.get("password") or ""),
            "SAGE_PG_DBNAME": str(params["dbname"]),
            "DBT_TARGET": "prod",
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        }
        saved = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def build(self) -> None:
        from dbt.cli.main import dbtRunner

        args = [
            "build",
            "--select",
            *self.SELECT,
            "--exclude",
            "test_type:unit",
            # only the data tests of selected models (a relationship test to an unselected mart
            # would read a relation this build never made)
            "--indirect-selection",
            "cautious",
            "--project-dir",
            str(ROOT / "dbt"),
            "--profiles-dir",
            str(ROOT / "dbt"),
            "--target-path",
            str(self.tmp / "target"),
            "--log-path",
            str(self.tmp / "logs"),
            "--quiet",
        ]
        with self._env():
            if self._manifest is None:
                parsed = dbtRunner().invoke(["parse", *args[args.index("--project-dir") :]])
                assert parsed.success, f"dbt parse failed: {parsed.exception}"
                self._manifest = parsed.result
            result = dbtRunner(manifest=self._manifest).invoke(args)
        self.builds += 1
        if not result.success:
            failures = []
            for node in getattr(result.result, "results", None) or []:
                if str(node.status) not in ("success", "pass"):
                    failures.append(f"{node.node.name}: {node.status} {str(node.message)[:200]}")
            raise AssertionError(f"dbt build failed: {result.exception or ''} {failures[:5]}")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
