"""`make airflow`'s fake Sage is the CLI's Sage too: `authorize-url` and `connect` in the demo's settings.

The demo's fake Sage lived only in the standalone process's environment, so `make cli
ARGS=authorize-url` said "connection 'sage_default' is not configured". While it runs,
scripts/standalone.py now writes its connection to the file the CLI's localenv reads; here a
new user walks the CLI's connect of the business the demo left unconnected (the fake's second
user, through its consent page), with nothing in the environment but the warehouse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from click.testing import CliRunner

from sage_sync.cli import localenv
from sage_sync.cli.commands import main
from sage_sync.core.config import warehouse_conn_json
from sandbox.fake_sage.server import FakeSageServer, consent_redirect
from scripts import standalone


@pytest.fixture
def demo_sage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSageServer]:
    """The demo's fake Sage (consent page), its settings file in a temporary place."""
    monkeypatch.setattr(localenv, "DEMO_SAGE_FILE", tmp_path / "demo-sage.sh")
    monkeypatch.setattr(standalone, "DEMO_SAGE_FILE", tmp_path / "demo-sage.sh")
    monkeypatch.setattr(localenv, "env_file", lambda: tmp_path / "no-env.sh")
    with FakeSageServer(seed=42, consent="screen", scale=0) as sage:
        yield sage


def test_the_cli_connects_a_new_business_in_the_demos_settings(
    demo_sage: FakeSageServer, pg_dsn: str, warehouse: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SAGE_WAREHOUSE",
        warehouse_conn_json(pg_dsn),
    )
    monkeypatch.delenv("AIRFLOW_CONN_SAGE_DEFAULT", raising=False)
    runner = CliRunner()
    refused = runner.invoke(main, ["authorize-url", "--json"])
    assert refused.exit_code == 2 and "sage_default" in refused.output  # the bug: no Sage outside standalone

    connection = demo_sage.airflow_conn_json("http://localhost:8080/sage/callback")
    with standalone.settings_for_the_cli(connection):
        assert localenv.load_missing() == ["AIRFLOW_CONN_SAGE_DEFAULT"]  # as `python -m sage_sync` does first
        started = runner.invoke(main, ["authorize-url", "--json"])
        assert started.exit_code == 0, started.output
        start = json.loads(started.output)
        assert start["url"].startswith(demo_sage.authorize_url)
        back = parse_qs(urlsplit(consent_redirect(start["url"], "other@example.com")).query)
        harbour = next(b["id"] for b in demo_sage.admin.businesses() if b["name"] == "Harbour Cafe Ltd")
        done = runner.invoke(
            main,
            [
                "connect",
                "--code",
                back["code"][0],
                "--code-verifier",
                start["code_verifier"],
                "--business-id",
                harbour,
                "--synced-from",
                "2026-Q1",
            ],
        )
        assert done.exit_code == 0, done.output
        assert f"connected Harbour Cafe Ltd ({harbour})" in done.output
    assert not standalone.DEMO_SAGE_FILE.exists()  # gone with the fake Sage
