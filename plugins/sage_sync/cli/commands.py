"""``python -m sage_sync``: what a data engineer or a script does to a connection.

Every command validates its input before changing anything and fails with one line and a
non-zero exit. Settings come from the same Airflow connections the DAGs use (run as
``python -m sage_sync``, the checkout's ``.local/env.sh`` fills in any that are not set).
Long on purpose: one small click command per use case, each only parsing its options
and printing what the lifecycle layer returns; splitting them would scatter the CLI's one page of help.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote

import click

from sage_sync.core.errors import AirflowUnavailable, LifecycleError
from sage_sync.core.quarters import Quarter
from sage_sync.lifecycle import authorisation, inputs
from sage_sync.lifecycle import connections as lifecycle
from sage_sync.orchestration import airflow_api
from sage_sync.reporting import report as emissions_report
from sage_sync.reporting import status as status_report


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2: the shape every refusal takes."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group()
def main() -> None:
    """Sage Accounting -> PostgreSQL sync: connections and status."""


@main.command("migrate")
def migrate_cmd() -> None:
    """Create or update the warehouse's control and raw schemas (idempotent)."""
    with _refusals():
        names = lifecycle.migrate_warehouse()
    click.echo(f"warehouse schema up to date ({len(names)} migration files)")


@main.command("authorize-url")
@click.option("--json", "as_json", is_flag=True, help="Print url, state and code_verifier as JSON.")
def authorize_url(as_json: bool) -> None:
    """Print the URL a user opens to authorise access (with a fresh state and PKCE pair)."""
    with _refusals():
        start = authorisation.begin()
    if as_json:
        click.echo(json.dumps({"url": start.url, "state": start.state, "code_verifier": start.code_verifier}))
    else:
        click.echo(start.url)
        click.echo(f"state: {start.state}\ncode_verifier (pass to connect): {start.code_verifier}", err=True)


def pasted_code(code: str) -> str:
    """The code as Sage issued it, also when pasted URL-encoded from the callback URL (``GB%2F...``)."""
    code = code.strip()
    return unquote(code) if "%" in code else code


def _business_list(auth: authorisation.Authorisation) -> str:
    return ", ".join(f"{b.get('id')} ({authorisation.business_name(b)})" for b in auth.businesses) or "none"


def _pick_command(pending_id: str, quarter: object) -> str:
    return f"python -m sage_sync connect --pending {pending_id} --business-id ID --synced-from {quarter}"


@main.command()
@click.option("--code", default=None, help="The authorisation code from the callback URL (URL-encoded is fine).")
@click.option(
    "--pending",
    "pending_id",
    default=None,
    help="An authorisation already exchanged by an earlier `connect` (see `businesses`).",
)
@click.option(
    "--business-id",
    default=None,
    help="The Sage business to connect. Leave it out to list the user's businesses first: "
    "the code is exchanged once and kept for 15 minutes (see `businesses`).",
)
@click.option("--synced-from", required=True, help="First quarter to import, e.g. 2024-Q1.")
@click.option("--code-verifier", default=None, help="The PKCE verifier printed by authorize-url.")
def connect(
    code: str | None, pending_id: str | None, business_id: str | None, synced_from: str, code_verifier: str | None
) -> None:
    """Exchange an authorisation code and register the business with its Synced From quarter.

    A code can be used only once, so it is exchanged once: without --business-id, or with one the
    user cannot reach, the grant is kept (encrypted) for 15 minutes and the user's businesses are
    listed; pick one with `connect --pending ID --business-id ... --synced-from ...`.
    """
    with _refusals():
        quarter = inputs.parse_quarter(synced_from)
        if pending_id:
            auth = authorisation.held(pending_id)
            if auth is None:
                raise LifecycleError(
                    "that authorisation expired (15 minutes) or was used: start again "
                    "with `python -m sage_sync authorize-url`"
                )
        elif code:
            auth = authorisation.exchange(pasted_code(code), code_verifier)
        else:
            raise LifecycleError("pass --code (from the callback URL) or --pending (from an earlier connect)")
        reachable = {b.get("id") for b in auth.businesses}
        if business_id not in reachable:
            if not pending_id:
                pending_id = authorisation.hold(auth)  # the held grant waits in the warehouse
            if business_id is not None:
                raise LifecycleError(
                    f"business {business_id!r} is not one this user can reach; the authorisation is kept for "
                    f"15 minutes: run `{_pick_command(pending_id, quarter)}` with one of: {_business_list(auth)}"
                )
            click.echo(f"authorised; the user's businesses: {_business_list(auth)}")
            click.echo(f"pick one within 15 minutes: {_pick_command(pending_id, quarter)}")
            return
        existing = lifecycle.registered(business_id)
        if existing is not None and existing.synced_from != quarter:
            # Moving Synced From is a backfill (set-synced-from), never a side effect of a login.
            click.echo(
                f"note: {business_id} keeps Synced From {existing.synced_from_quarter}; "
                "moving it earlier is done with set-synced-from",
                err=True,
            )
        if pending_id:
            company = lifecycle.register_held(pending_id, business_id, quarter)  # taken atomically: used once
        else:
            company = lifecycle.register(auth, business_id, quarter)
    business = auth.business(business_id)
    click.echo(
        f"connected {authorisation.business_name(business)} ({business_id}), "
        f"Synced From {company.synced_from_quarter}, status {company.status}"
    )


@main.command()
@click.option("--pending", "pending_id", required=True, help="The authorisation `connect` kept.")
@click.option("--json", "as_json", is_flag=True, help="Print the businesses as JSON.")
def businesses(pending_id: str, as_json: bool) -> None:
    """The businesses an authorisation kept by `connect` can reach (within its 15 minutes)."""
    with _refusals():
        auth = authorisation.held(pending_id)
        if auth is None:
            raise LifecycleError(
                "that authorisation expired (15 minutes) or was used: start again "
                "with `python -m sage_sync authorize-url`"
            )
    if as_json:
        click.echo(json.dumps([{"id": b.get("id"), "name": authorisation.business_name(b)} for b in auth.businesses]))
        return
    for business in auth.businesses:
        click.echo(f"{business.get('id')}  {authorisation.business_name(business)}")


@contextmanager
def _refusals() -> Iterator[None]:
    """Turn a lifecycle refusal into the one-line error and exit code 2."""
    try:
        yield
    except LifecycleError as exc:
        fail(str(exc))


@main.command()
@click.argument("company_id")
def disconnect(company_id: str) -> None:
    """Stop importing a company: revoke its grant at Sage, pause its DAG; its data is kept."""
    with _refusals():
        done = lifecycle.disconnect(company_id)
    revoked = "grant revoked at Sage" if done.token_revoked else f"grant NOT revoked ({done.revoke_error})"
    paused = "DAG paused" if done.dag_paused else "DAG not paused here (its runs skip anyway)"
    click.echo(f"disconnected {done.company.company_name} ({company_id}): {revoked}; {paused}; data kept")


@main.command()
@click.argument("company_id")
@click.option("--code", required=True, help="The authorisation code from the callback URL.")
@click.option("--code-verifier", default=None, help="The PKCE verifier printed by authorize-url.")
def reconnect(company_id: str, code: str, code_verifier: str | None) -> None:
    """Re-authorise a company; its next run imports everything since its last watermark."""
    with _refusals():
        company = lifecycle.reconnect(company_id, pasted_code(code), code_verifier)
    try:
        started = f"catch-up run started ({lifecycle.start_catch_up(company_id)})"
    except AirflowUnavailable as exc:
        started = f"no catch-up run started ({exc}): the next daily run catches up"
    click.echo(
        f"reconnected {company.company_name} ({company_id}): status {status_report.status_label(company.status)}; "
        f"{started}; it imports every change since the last successful sync and sweeps for deletions"
    )


@main.command("restore-tokens")
@click.argument("record", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Restore even if the company was reconnected since the record was written.")
def restore_tokens(record: Path, force: bool) -> None:
    """Put back refreshed Sage tokens the warehouse could not take (the file a failed save names)."""
    with _refusals():
        company = lifecycle.restore_tokens(record, force=force)
    click.echo(f"restored the Sage tokens of {company.company_name} ({company.company_id}): status {company.status}")


@main.command("set-synced-from")
@click.argument("company_id")
@click.argument("quarter")
@click.option("--code", default=None, help="Authorisation code of the fresh Authorise Access a move requires.")
@click.option("--code-verifier", default=None, help="The PKCE verifier printed by authorize-url.")
@click.option("--yes", "confirmed", is_flag=True, help="Confirm: documents from QUARTER on are imported.")
@click.option("--check", is_flag=True, help="Only validate the move; change nothing.")
@click.option(
    "--here", is_flag=True, help="Run the backfill in this process instead of triggering the sage_backfill DAG."
)
def set_synced_from(
    company_id: str, quarter: str, code: str | None, code_verifier: str | None, confirmed: bool, check: bool, here: bool
) -> None:
    """Move a company's Synced From earlier: re-authorise, then backfill (Synced From moves on success)."""
    with _refusals():
        company, wanted = lifecycle.prepare_backfill(company_id, quarter)
        start, end = lifecycle.backfill_dates(company, wanted)
        if check:
            click.echo(
                f"ok: {company_id} can move Synced From {company.synced_from_quarter} -> {wanted} "
                f"(documents dated {start} to {end})"
            )
            return
        if not confirmed:
            raise LifecycleError(
                f"moving Synced From to {wanted} imports every document dated {start} to {end}; confirm with --yes"
            )
        if not code:
            raise LifecycleError(
                "moving Synced From needs a fresh Authorise Access: pass --code "
                "(and --code-verifier) from `authorize-url`"
            )
        if not here:
            # Before the one-time code is spent: a trigger that fails afterwards would leave the
            # user a retry (--here) that needs a new code.
            try:
                lifecycle.check_can_trigger(airflow_api.BACKFILL_DAG_ID)
            except AirflowUnavailable as exc:
                raise LifecycleError(
                    f"cannot trigger {airflow_api.BACKFILL_DAG_ID} ({exc}); nothing was done and the code is "
                    "unused: run the same command again with --here to backfill in this process"
                ) from None
        lifecycle.authorise_backfill(company_id, quarter, pasted_code(code), code_verifier)
    conf = lifecycle.backfill_conf(company_id, wanted)
    if here:
        try:
            run_id = lifecycle.run_backfill_here(company_id, wanted)
        except lifecycle.RUN_FAILURES as exc:
            fail(f"backfill failed, Synced From unchanged (re-run it): {exc}")
        click.echo(f"backfilled {company_id} from {wanted} (run {run_id}); Synced From is now {wanted}")
        return
    try:
        lifecycle.start_backfill(company_id, wanted)
    except AirflowUnavailable as exc:
        fail(
            f"could not trigger {airflow_api.BACKFILL_DAG_ID} ({exc}); "
            "run again with --here to backfill in this process"
        )
    click.echo(f"triggered {airflow_api.BACKFILL_DAG_ID} with {json.dumps(conf)}; Synced From moves when it succeeds")


@main.command("set-daily-start")
@click.argument("company_id")
@click.argument("start", metavar="HH:MM|auto")
def set_daily_start(company_id: str, start: str) -> None:
    """Start a company's daily run at HH:MM UTC, or `auto`: its place in the nightly window.

    Every company starts at its own minute, spread over SAGE_DAILY_WINDOW_HOURS from
    SAGE_DAILY_WINDOW_START_HOUR (default 00:00-06:00 UTC); a time set here wins. Its DAG runs
    at the new time from the next parse of the DAG files.
    """
    with _refusals():
        done = lifecycle.set_daily_start(company_id, start)
    click.echo(
        f"{done.company.company_name} ({company_id}) runs daily at "
        f"{status_report.describe_daily_start(done.start)}, from the next parse of its DAG"
    )


@main.command()
@click.argument("company_id")
@click.option("--yes", "confirmed", is_flag=True, help="Confirm: the company's imported data is wiped.")
@click.option(
    "--sync/--no-sync",
    "run_sync",
    default=True,
    help="Run the full sync now, in this process (default), or leave it to the next daily run.",
)
def reset(company_id: str, confirmed: bool, run_sync: bool) -> None:
    """Wipe a company's raw data and watermarks, then re-import everything from its Synced From."""
    with _refusals():
        run_id = lifecycle.reset(company_id, confirm=confirmed)
    if not run_sync:
        lifecycle.close_reset_run(run_id)
        click.echo(f"wiped {company_id}; its next daily run re-imports everything from Synced From")
        return
    try:
        lifecycle.run_reset_sync(company_id, run_id)
    except lifecycle.RUN_FAILURES as exc:
        fail(f"wiped {company_id}, but the full sync failed (the next run retries it): {exc}")
    click.echo(f"reset {company_id}: wiped and re-imported from Synced From (run {run_id})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Every company: status, initial-sync progress (flagged after 24 h), last run, last error."""
    with _refusals():
        report = status_report.report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report:
        click.echo("no company connected yet: see `python -m sage_sync authorize-url`")
    for item in report:
        click.echo(status_report.describe(item))


@main.command("sync")
@click.argument("company_id")
def sync_cmd(company_id: str) -> None:
    """Run one company's whole sync now, in this process (the DAG does the same daily)."""
    with _refusals():
        if lifecycle.registered(company_id) is None:
            fail(f"unknown company {company_id!r}")
    try:
        run_id = lifecycle.sync_now(company_id)
    except lifecycle.RUN_FAILURES as exc:
        fail(str(exc))
    click.echo(f"synced {company_id} (run {run_id})")


@main.command("report")
@click.argument("company")
@click.option(
    "--from", "from_quarter", default=None, metavar="YYYY-Qn", help="First quarter to include (default: all)."
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the files to (created if missing).",
)
def report_cmd(company: str, from_quarter: str | None, out_dir: Path) -> None:
    """Write a company's kg CO2e by quarter and category, and its coverage: CSV, XLSX and a PNG chart.

    COMPANY is a company id or name. Reads the dbt emissions marts (run the transform first).
    """
    try:
        quarter = Quarter.parse(from_quarter) if from_quarter else None
    except ValueError as exc:
        fail(f"--from: {exc}")
    try:
        done = emissions_report.company_report(company, out_dir, quarter)
    except LifecycleError as exc:  # a ReportError is one too
        fail(str(exc))
    if done.files is None:  # a company whose base currency is not counted: said, not failed
        click.echo(done.note)
        return
    click.echo(emissions_report.format_summary(done.coverage))
    files = done.files
    for path in (files.category_csv, files.coverage_csv, files.workbook, files.chart):
        click.echo(f"wrote {path}")
