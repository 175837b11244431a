"""`make airflow`: Airflow's UI over this repo's DAGs, with the demo companies connected.

When no real Sage is configured (`AIRFLOW_CONN_SAGE_DEFAULT` unset), the fake Sage is started
on a fixed port and the demo businesses are (re-)authorised through the OAuth flow, so their
DAGs can be triggered from the UI. That fake shows a consent page (sign in as one of its two
users, Allow or Deny), and its second user's business is left unconnected, so a connect can be
walked in the browser. Its connection is written to `.local/demo-sage.sh` while it runs, where
the CLI finds it (`make cli ARGS=authorize-url`, then `connect --code ...`). Then
`airflow standalone` runs in the foreground; Ctrl-C (or SIGTERM) stops it, every component it
started, and the fake Sage together. While it runs it holds the checkout's Airflow lock, so
`make demo` in another terminal refuses in one line instead of sharing its database and
companies (scripts/checkout_lock.py).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT), str(ROOT / "scripts")]

from checkout_lock import exclusive  # noqa: E402
from demo import REDIRECT_URI, connect_all  # noqa: E402

from sage_sync.cli.localenv import DEMO_SAGE_FILE  # noqa: E402
from sandbox.fake_sage.server import FakeSageServer  # noqa: E402
from scripts.deployment import run_in_foreground  # noqa: E402

FAKE_PORT = int(os.environ.get("SAGE_FAKE_PORT", "8765"))


def airflow_standalone() -> int:
    home = Path(os.environ["AIRFLOW_HOME"])
    print(
        f"Airflow UI: http://localhost:8080 (user admin; password in "
        f"{home / 'simple_auth_manager_passwords.json.generated'})",
        flush=True,
    )
    venv_bin = str(Path(sys.executable).parent)
    # standalone starts its components as `airflow ...` by name: the venv must be on PATH.
    env = {**os.environ, "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")])}
    return run_in_foreground([os.path.join(venv_bin, "airflow"), "standalone"], env)


def main() -> int:
    with exclusive("make airflow"):
        return serve()


@contextmanager
def settings_for_the_cli(connection: str) -> Iterator[None]:
    """The fake's ``sage_default`` connection in ``.local/demo-sage.sh`` while it runs: the CLI
    (``sage_sync.cli.localenv``) reads it, so ``authorize-url`` and ``connect`` reach this Sage."""
    DEMO_SAGE_FILE.parent.mkdir(parents=True, exist_ok=True)
    DEMO_SAGE_FILE.write_text(
        "# written by `make airflow` while its fake Sage runs; removed when it stops\n"
        f"export AIRFLOW_CONN_SAGE_DEFAULT={shlex.quote(connection)}\n"
    )
    try:
        yield
    finally:
        DEMO_SAGE_FILE.unlink(missing_ok=True)


def serve() -> int:
    if os.environ.get("AIRFLOW_CONN_SAGE_DEFAULT"):
        return airflow_standalone()
    with FakeSageServer(seed=42, port=FAKE_PORT, consent="screen") as sage:
        os.environ["AIRFLOW_CONN_SAGE_DEFAULT"] = sage.airflow_conn_json(REDIRECT_URI)
        print(f"fake Sage at {sage.base_url}; connecting the demo businesses", flush=True)
        connect_all(sage)
        settings = json.loads(os.environ["AIRFLOW_CONN_SAGE_DEFAULT"])
        print(f"Sage connection: {settings['host']}", flush=True)
        print(
            "Connect a new business: Sage connections > Connect a Sage business, sign in at the fake Sage "
            "as other@example.com (Harbour Cafe Ltd is not connected yet). The CLI works too: "
            "make cli ARGS=authorize-url",
            flush=True,
        )
        with settings_for_the_cli(os.environ["AIRFLOW_CONN_SAGE_DEFAULT"]):
            return airflow_standalone()


if __name__ == "__main__":
    raise SystemExit(main())
