"""`make demo`: the whole pipeline on the embedded default, as a user would run it.

Starts the fake Sage (three demo businesses), connects each through the real OAuth flow and
the CLI, runs each company's DAG with `airflow dags test`, runs the dbt transform DAG, and
prints what an analyst would see. Re-running it duplicates nothing: the fake Sage is seeded
the same way, so every record re-fetched is unchanged and adds no version.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

from sage_sync.core.config import sage_settings, warehouse_dsn  # noqa: E402
from sage_sync.reporting import report as emissions_report  # noqa: E402
from sage_sync.sage.auth import OAuthClient, new_pkce_pair  # noqa: E402
from sage_sync.warehouse.migrate import migrate  # noqa: E402
from sandbox.fake_sage.server import FakeSageServer, consent_redirect  # noqa: E402
from scripts.checkout_lock import exclusive  # noqa: E402

REDIRECT_URI = "http://localhost:8080/sage/callback"
# The fake's first user, whose three businesses the demo connects; its second user's business
# (Harbour Cafe Ltd, other@example.com) stays unconnected, for a connect walked in the browser.
DEMO_USER = "demo@example.com"
SYNCED_FROM = ["2024-Q1", "2024-Q3", "2025-Q1"]
LOGS = ROOT / ".local" / "demo-logs"
REPORTS = ROOT / ".local" / "demo-reports"
BIN = Path(sys.executable).parent


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def browser_consent(authorize_url: str, state: str) -> str:
    """What the user's browser does: open Sage's page, consent as the demo user, follow the
    redirect to us (the fake's consent page, if it shows one, is answered with Allow)."""
    location = consent_redirect(authorize_url, DEMO_USER)
    query = parse_qs(urlsplit(location).query)
    if query.get("state") != [state]:
        raise SystemExit("OAuth state mismatch: refusing the callback")
    return query["code"][0]


def run(cmd: list[str], log_name: str) -> float:
    """Run a command with its output in a log file; fail loudly with the log's tail."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{log_name}.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-40:])
        raise SystemExit(f"{' '.join(cmd[:4])} failed (exit {done.returncode}); log {log_path}:\n{tail}")
    return elapsed


def run_parallel(commands: dict[str, list[str]]) -> float:
    """Run independent commands at once (each company's DAG is its own process)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    procs = {}
    for name, cmd in commands.items():
        log = (LOGS / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        procs[name] = (proc, log)
    failed = []
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            failed.append(name)
        log.close()
    if failed:
        tails = "\n".join(f"--- {n}\n" + "\n".join((LOGS / f"{n}.log").read_text().splitlines()[-25:]) for n in failed)
        raise SystemExit(f"failed: {', '.join(failed)}\n{tails}")
    return time.monotonic() - started


def connect_all(sage: FakeSageServer) -> list[tuple[str, str]]:
    oauth = OAuthClient(sage_settings())
    companies = []
    mine = [b for b in sage.admin.businesses() if b["user"] == DEMO_USER]
    for business, quarter in zip(mine, SYNCED_FROM, strict=True):
        state = secrets.token_urlsafe(16)
        verifier, challenge = new_pkce_pair()
        code = browser_consent(oauth.authorization_url(state, code_challenge=challenge), state)
        run(
            [
                str(BIN / "python"),
                "-m",
                "sage_sync",
                "connect",
                "--code",
                code,
                "--business-id",
                business["id"],
                "--synced-from",
                quarter,
                "--code-verifier",
                verifier,
            ],
            f"connect-{business['id']}",
        )
        print(f"connected {business['name']} ({business['id']}), Synced From {quarter}")
        companies.append((business["id"], business["name"]))
    return companies


def report(conn: psycopg.Connection, companies: list[tuple[str, str]]) -> None:
    for company_id, name in companies:
        say(f"{name} ({company_id})")
        row = conn.execute(
            "select status, stats from sage_control.sync_runs where company_id = %s order by started_at desc limit 1",
            (company_id,),
        ).fetchone()
        status = conn.execute(
            "select status from sage_control.companies where company_id = %s", (company_id,)
        ).fetchone()
        print(f"company status: {status[0] if status else '?'}; last run: {row[0] if row else 'none'}")
        if row:
            stats = row[1] or {}
            print(
                tabulate(
                    [
                        (
                            s,
                            v.get("pages", 0),
                            v.get("rows_seen", 0),
                            v.get("versions_added", 0),
                            v.get("deletions", 0),
                            v.get("quarantined", 0),
                        )
                        for s, v in sorted(stats.items())
                    ],
                    headers=["stream", "pages", "records read", "new versions", "deletions", "quarantined"],
                )
            )
        by_quarter = conn.execute(
            "select to_char(date_trunc('quarter', transaction_date), 'YYYY-\"Q\"Q') as quarter, "
            "count(*), sum(amount) from analytics.fct_spend_transactions where company_id = %s "
            "group by 1 order by 1",
            (company_id,),
        ).fetchall()
        if by_quarter:
            print("\nspend by quarter (GBP, net of VAT)")
            print(tabulate(by_quarter, headers=["quarter", "lines", "amount"], floatfmt=",.2f"))
            by_code = conn.execute(
                "select nominal_code, nominal_code_name, count(*), sum(amount) "
                "from analytics.fct_spend_transactions where company_id = %s "
                "group by 1, 2 order by 4 desc nulls last",
                (company_id,),
            ).fetchall()
            print("\nspend by nominal code (GBP, net of VAT)")
            print(tabulate(by_code, headers=["code", "name", "lines", "amount"], floatfmt=",.2f"))
        excluded = conn.execute(
            "select reason, count(*) from analytics.rpt_currency_exceptions where company_id = %s group by 1",
            (company_id,),
        ).fetchall()
        for reason, count in excluded:
            print(f"kept out of spend (GBP only): {count} documents, reason {reason}")


def report_emissions(conn: psycopg.Connection, companies: list[tuple[str, str]]) -> None:
    """Each company's kg CO2e and coverage by quarter (the emissions marts), and its report files."""
    say("emissions (kg CO2e, spend-based: Defra / University of Leeds factors, OGL v3.0)")
    for company_id, name in companies:
        coverage = emissions_report.emissions_coverage(conn, company_id)
        print(f"\n{name} ({company_id})")
        if not coverage:
            print("no GBP spend, so no emissions (see analytics.rpt_currency_exceptions)")
            continue
        print(emissions_report.format_summary(coverage))
        share = emissions_report.overall_coverage(coverage)
        total = sum(row["kgco2e"] for row in coverage)
        print(
            f"total {total:,.1f} kg CO2e; coverage (share of in-scope £ with a factor): "
            f"{'-' if share is None else f'{share:.1%}'}"
        )
        files = emissions_report.write_report(conn, company_id, REPORTS)
        print(
            "report: "
            + ", ".join(
                str(p.relative_to(ROOT)) for p in (files.category_csv, files.coverage_csv, files.workbook, files.chart)
            )
        )


def main() -> None:
    # `make airflow` or `make deploy-up` in another terminal would run these companies' DAGs
    # against its own fake Sage: refuse in one line instead (scripts/checkout_lock.py).
    with exclusive("make demo"):
        demo()


def demo() -> None:
    port = int(os.environ.get("SAGE_FAKE_PORT", "0"))
    say("starting the fake Sage (seeded: three demo businesses)")
    with FakeSageServer(seed=42, port=port) as sage:
        os.environ["AIRFLOW_CONN_SAGE_DEFAULT"] = sage.airflow_conn_json(REDIRECT_URI)
        print(f"fake Sage at {sage.base_url}")
        with psycopg.connect(warehouse_dsn()) as conn:
            migrate(conn)
        say("connecting the businesses (OAuth authorisation code + PKCE, then `sage_sync connect`)")
        companies = connect_all(sage)
        # Three `dags test` processes would each write the new DAGs and their shared `sage_raw` asset
        # to a fresh metadata database at once, and race on the asset's unique key: parse once first.
        say("airflow dags reserialize (the DAGs and their asset into the metadata database, once)")
        run([str(BIN / "airflow"), "dags", "reserialize"], "dags-reserialize")
        say("airflow dags test sage_sync__<company> for the three companies, side by side")
        took = run_parallel(
            {
                f"dag-{company_id}": [str(BIN / "airflow"), "dags", "test", f"sage_sync__{company_id}"]
                for company_id, _ in companies
            }
        )
        print(f"done in {took:.1f} s")
        say("airflow dags test sage_transform (dbt build via cosmos)")
        took = run([str(BIN / "airflow"), "dags", "test", "sage_transform"], "dag-sage_transform")
        print(f"done in {took:.1f} s")
        with psycopg.connect(warehouse_dsn()) as conn:
            report(conn, companies)
            report_emissions(conn, companies)
    say("see it all in the Airflow UI")
    print("make airflow   # airflow standalone on http://localhost:8080 with these DAGs")
    print(f"logs of this demo: {LOGS}")


if __name__ == "__main__":
    main()
