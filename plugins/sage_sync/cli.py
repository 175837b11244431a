"""``python -m sage_sync``: what a data engineer or a script does to a connection.

Every command validates its input before changing anything and fails with one line and a
non-zero exit. Settings come from the same Airflow connections the DAGs use.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click
import psycopg

from sage_sync import lifecycle, registry, sync
from sage_sync import report as emissions_report
from sage_sync.auth import OAuthClient, new_pkce_pair
from sage_sync.config import ConfigError, sage_settings, warehouse_dsn
from sage_sync.errors import SageError
from sage_sync.migrate import ensure_migrated, migrate
from sage_sync.quarters import Quarter
from sage_sync.token_store import PostgresTokenStore
from sage_sync.tokens import TokenSet


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2: the shape every refusal takes."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@contextmanager
def _warehouse() -> Iterator[psycopg.Connection]:
    try:
        dsn = warehouse_dsn()
        conn = psycopg.connect(dsn, connect_timeout=10)
    except (ConfigError, psycopg.Error) as exc:
        fail(f"cannot reach the warehouse: {exc}")
    with conn:
        yield conn


@click.group()
def main() -> None:
    """Sage Accounting -> PostgreSQL sync: connections and status."""


@main.command("migrate")
def migrate_cmd() -> None:
    """Create or update the warehouse's control and raw schemas (idempotent)."""
    with _warehouse() as conn:
        names = migrate(conn)
    click.echo(f"warehouse schema up to date ({len(names)} migration files)")


@main.command("authorize-url")
@click.option("--json", "as_json", is_flag=True, help="Print url, state and code_verifier as JSON.")
def authorize_url(as_json: bool) -> None:
    """Print the URL a user opens to authorise access (with a fresh state and PKCE pair)."""
    try:
        oauth = OAuthClient(sage_settings())
    except ConfigError as exc:
        fail(str(exc))
    state = secrets.token_urlsafe(24)
    verifier, challenge = new_pkce_pair()
    url = oauth.authorization_url(state, code_challenge=challenge)
    if as_json:
        click.echo(json.dumps({"url": url, "state": state, "code_verifier": verifier}))
    else:
        click.echo(url)
        click.echo(f"state: {state}\ncode_verifier (pass to connect): {verifier}", err=True)


@main.command()
@click.option("--code", required=True, help="The authorisation code from the callback URL.")
@click.option("--business-id", required=True, help="The Sage business to connect (see `businesses`).")
@click.option("--synced-from", required=True, help="First quarter to import, e.g. 2024-Q1.")
@click.option("--code-verifier", default=None, help="The PKCE verifier printed by authorize-url.")
def connect(code: str, business_id: str, synced_from: str, code_verifier: str | None) -> None:
    """Exchange an authorisation code and register the business with its Synced From quarter."""
    with _refusals():
        quarter = lifecycle.parse_quarter(synced_from)
        auth = lifecycle.exchange(code, code_verifier)
        business = auth.business(business_id)
        with _warehouse() as conn:
            migrate(conn)
            existing = registry.get_company(conn, business_id)
        if existing is not None and existing.synced_from != quarter:
            # Moving Synced From is a backfill (set-synced-from), never a side effect of a login.
            click.echo(f"note: {business_id} keeps Synced From {existing.synced_from_quarter}; "
                       "moving it earlier is done with set-synced-from", err=True)
        company = lifecycle.register(auth, business_id, quarter)
    click.echo(f"connected {lifecycle.business_name(business)} ({business_id}), "
               f"Synced From {company.synced_from_quarter}, status {company.status}")


def connect_company(company_id: str, name: str, quarter: Quarter, tokens: TokenSet) -> registry.Company:
    """Register (or re-register) the company and store its first tokens (tests, the demo)."""
    with _warehouse() as conn:
        ensure_migrated(conn)
        company = registry.register_company(conn, company_id, name, quarter)
        conn.commit()
    PostgresTokenStore(warehouse_dsn()).save(company_id, tokens)
    return company


@contextmanager
def _refusals() -> Iterator[None]:
    """Turn a lifecycle refusal into the one-line error and exit code 2."""
    try:
        yield
    except lifecycle.LifecycleError as exc:
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
        company = lifecycle.reconnect(company_id, code, code_verifier)
    click.echo(f"reconnected {company.company_name} ({company_id}): status {company.status}; the next run "
               "imports every change since the last successful sync and sweeps for deletions")


@main.command("set-synced-from")
@click.argument("company_id")
@click.argument("quarter")
@click.option("--code", default=None, help="Authorisation code of the fresh Authorise Access a move requires.")
@click.option("--code-verifier", default=None, help="The PKCE verifier printed by authorize-url.")
@click.option("--yes", "confirmed", is_flag=True, help="Confirm: documents from QUARTER on are imported.")
@click.option("--check", is_flag=True, help="Only validate the move; change nothing.")
@click.option("--here", is_flag=True, help="Run the backfill in this process instead of triggering "
              "the sage_backfill DAG.")
def set_synced_from(company_id: str, quarter: str, code: str | None, code_verifier: str | None,
                    confirmed: bool, check: bool, here: bool) -> None:
    """Move a company's Synced From earlier: re-authorise, then backfill (Synced From moves on success)."""
    with _refusals():
        company, wanted = lifecycle.prepare_backfill(company_id, quarter)
        start, end = sync.backfill_window(company, wanted)
        if check:
            click.echo(f"ok: {company_id} can move Synced From {company.synced_from_quarter} -> {wanted} "
                       f"(documents dated {start} to {end})")
            return
        if not confirmed:
            raise lifecycle.LifecycleError(
                f"moving Synced From to {wanted} imports every document dated {start} to {end}; "
                "confirm with --yes")
        if not code:
            raise lifecycle.LifecycleError("moving Synced From needs a fresh Authorise Access: pass --code "
                                           "(and --code-verifier) from `authorize-url`")
        lifecycle.authorise_backfill(company_id, quarter, code, code_verifier)
    conf = lifecycle.backfill_conf(company_id, wanted)
    if here:
        try:
            run_id = sync.run_backfill(company_id, wanted)
        except (sync.RunInProgress, sync.CompanySkipped, SageError) as exc:
            fail(f"backfill failed, Synced From unchanged (re-run it): {exc}")
        click.echo(f"backfilled {company_id} from {wanted} (run {run_id}); Synced From is now {wanted}")
        return
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [sys.executable, "-m", "airflow", "dags", "trigger", lifecycle.BACKFILL_DAG_ID, "-c", json.dumps(conf)],
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        fail(f"could not trigger {lifecycle.BACKFILL_DAG_ID} ({done.stderr.strip().splitlines()[-1:]}); "
             "run again with --here to backfill in this process")
    click.echo(f"triggered {lifecycle.BACKFILL_DAG_ID} with {json.dumps(conf)}; Synced From moves when it succeeds")


@main.command()
@click.argument("company_id")
@click.option("--yes", "confirmed", is_flag=True, help="Confirm: the company's imported data is wiped.")
@click.option("--sync/--no-sync", "run_sync", default=True,
              help="Run the full sync now, in this process (default), or leave it to the next daily run.")
def reset(company_id: str, confirmed: bool, run_sync: bool) -> None:
    """Wipe a company's raw data and watermarks, then re-import everything from its Synced From."""
    with _refusals():
        run_id = lifecycle.reset(company_id, confirm=confirmed)
    if not run_sync:
        lifecycle.close_reset_run(run_id)
        click.echo(f"wiped {company_id}; its next daily run re-imports everything from Synced From")
        return
    try:
        sync.run_steps(company_id, run_id)
    except (sync.CompanySkipped, SageError) as exc:
        fail(f"wiped {company_id}, but the full sync failed (the next run retries it): {exc}")
    click.echo(f"reset {company_id}: wiped and re-imported from Synced From (run {run_id})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Every company: status, initial-sync progress (flagged after 24 h), last run, last error."""
    with _warehouse() as conn:
        report = lifecycle.company_statuses(conn)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report:
        click.echo("no company connected yet: see `python -m sage_sync authorize-url`")
    for item in report:
        click.echo(lifecycle.describe(item))


@main.command("sync")
@click.argument("company_id")
def sync_cmd(company_id: str) -> None:
    """Run one company's whole sync now, in this process (the DAG does the same daily)."""
    with _warehouse() as conn:
        if registry.get_company(conn, company_id) is None:
            fail(f"unknown company {company_id!r}")
    try:
        run_id = sync.run_company(company_id, kind="manual")
    except (sync.CompanySkipped, sync.RunInProgress, SageError) as exc:
        fail(str(exc))
    click.echo(f"synced {company_id} (run {run_id})")


@main.command("report")
@click.argument("company")
@click.option("--from", "from_quarter", default=None, metavar="YYYY-Qn",
              help="First quarter to include (default: all).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the files to (created if missing).")
def report_cmd(company: str, from_quarter: str | None, out_dir: Path) -> None:
    """Write a company's kg CO2e by quarter and category, and its coverage: CSV, XLSX and a PNG chart.

    COMPANY is a company id or name. Reads the dbt emissions marts (run the transform first).
    """
    try:
        quarter = Quarter.parse(from_quarter) if from_quarter else None
    except ValueError as exc:
        fail(f"--from: {exc}")
    with _warehouse() as conn:
        try:
            files = emissions_report.write_report(conn, company, out_dir, quarter)
            coverage = emissions_report.emissions_coverage(
                conn, emissions_report.resolve_company(conn, company)[0], quarter)
        except emissions_report.ReportError as exc:
            fail(str(exc))
    click.echo(emissions_report.format_summary(coverage))
    for path in (files.category_csv, files.coverage_csv, files.workbook, files.chart):
        click.echo(f"wrote {path}")
