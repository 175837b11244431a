"""``python -m sage_sync``: what a data engineer or a script does to a connection.

Every command validates its input before changing anything and fails with one line and a
non-zero exit. Settings come from the same Airflow connections the DAGs use.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
import psycopg

from sage_sync import registry, sync
from sage_sync.auth import OAuthClient, new_pkce_pair
from sage_sync.client import SageClient
from sage_sync.config import ConfigError, sage_settings, warehouse_dsn
from sage_sync.errors import SageError
from sage_sync.migrate import migrate
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


class _FixedToken:
    """A token source for the one call made right after the code exchange."""

    def __init__(self, token: str) -> None:
        self._token = token

    def access_token(self) -> str:
        return self._token

    def refresh(self, rejected_token: str | None = None) -> str:
        raise SageError("the freshly issued access token was rejected")


def _parse_quarter(text: str) -> Quarter:
    try:
        quarter = Quarter.parse(text)
    except ValueError as exc:
        fail(str(exc))
    if quarter.start_date > datetime.now(UTC).date():
        fail(f"Synced From {quarter} is in the future")
    return quarter


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


def _businesses(api_url: str, token: str, business_id: str) -> list[dict[str, Any]]:
    with SageClient(api_url, business_id, _FixedToken(token), check_business=False) as client:
        body = client.get("/businesses")
    items = body.get("$items", []) if isinstance(body, dict) else body
    return [b for b in items if isinstance(b, dict)]


@main.command()
@click.option("--code", required=True, help="The authorisation code from the callback URL.")
@click.option("--business-id", required=True, help="The Sage business to connect (see `businesses`).")
@click.option("--synced-from", required=True, help="First quarter to import, e.g. 2024-Q1.")
@click.option("--code-verifier", default=None, help="The PKCE verifier printed by authorize-url.")
def connect(code: str, business_id: str, synced_from: str, code_verifier: str | None) -> None:
    """Exchange an authorisation code and register the business with its Synced From quarter."""
    quarter = _parse_quarter(synced_from)
    try:
        settings = sage_settings()
        tokens = OAuthClient(settings).exchange_code(code, code_verifier=code_verifier)
        businesses = _businesses(settings.api_url, tokens.access_token, business_id)
    except (ConfigError, SageError) as exc:
        fail(str(exc))
    match = next((b for b in businesses if b.get("id") == business_id), None)
    if match is None:
        known = ", ".join(f"{b.get('id')} ({b.get('name') or b.get('displayed_as')})" for b in businesses)
        fail(f"business {business_id!r} is not one this user can reach; theirs: {known or 'none'}")
    name = str(match.get("name") or match.get("displayed_as") or business_id)
    connect_company(business_id, name, quarter, tokens)
    click.echo(f"connected {name} ({business_id}), Synced From {quarter}")


def connect_company(company_id: str, name: str, quarter: Quarter, tokens: TokenSet) -> registry.Company:
    """Register (or re-register) the company and store its first tokens."""
    with _warehouse() as conn:
        migrate(conn)
        existing = registry.get_company(conn, company_id)
        if existing is not None and Quarter.parse(existing.synced_from_quarter) != quarter:
            # Moving Synced From is a backfill (issue of its own), never a side effect of a login.
            click.echo(
                f"note: {company_id} keeps Synced From {existing.synced_from_quarter}; "
                "moving it earlier is done with a backfill", err=True,
            )
        company = registry.register_company(conn, company_id, name, quarter)
        conn.commit()
    PostgresTokenStore(warehouse_dsn()).save(company_id, tokens)
    return company


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Every connected company with its status and its last run's progress."""
    with _warehouse() as conn:
        rows = conn.execute(
            """
            select c.company_id, c.company_name, c.status, c.synced_from_quarter, c.last_error,
                   r.kind, r.status, r.started_at, r.ended_at, r.stats
            from sage_control.companies c
            left join lateral (
                select * from sage_control.sync_runs r
                where r.company_id = c.company_id order by r.started_at desc limit 1
            ) r on true
            order by c.company_name
            """
        ).fetchall()
    report = []
    for cid, name, state, quarter, error, kind, run_status, started, ended, run_stats in rows:
        stats = run_stats or {}
        report.append({
            "company_id": cid, "company_name": name, "status": state, "synced_from": quarter,
            "last_error": error, "last_run": None if started is None else {
                "kind": kind, "status": run_status, "started_at": started.isoformat(),
                "ended_at": ended.isoformat() if ended else None,
                "pages": sum(int(s.get("pages", 0)) for s in stats.values()),
                "records": sum(int(s.get("rows_seen", 0)) for s in stats.values()),
                "versions_added": sum(int(s.get("versions_added", 0)) for s in stats.values()),
            },
        })
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report:
        click.echo("no company connected yet: see `python -m sage_sync authorize-url`")
    for item in report:
        run = item["last_run"]
        line = (f"{item['company_name']} ({item['company_id']}): {item['status']}, "
                f"Synced From {item['synced_from']}")
        if run:
            line += (f"; last run {run['status']} at {run['started_at'][:19]}: "
                     f"{run['pages']} pages, {run['records']} records, {run['versions_added']} new versions")
        if item["last_error"]:
            line += f"; last error: {item['last_error']}"
        click.echo(line)


@main.command("sync")
@click.argument("company_id")
def sync_cmd(company_id: str) -> None:
    """Run one company's whole sync now, in this process (the DAG does the same daily)."""
    with _warehouse() as conn:
        if registry.get_company(conn, company_id) is None:
            fail(f"unknown company {company_id!r}")
    try:
        run_id = sync.run_company(company_id, kind="manual")
    except (sync.CompanySkipped, SageError) as exc:
        fail(str(exc))
    click.echo(f"synced {company_id} (run {run_id})")
