"""`make airflow`: Airflow's UI over this repo's DAGs, with the demo companies connected.

When no real Sage is configured (`AIRFLOW_CONN_SAGE_DEFAULT` unset), the fake Sage is started
on a fixed port and the demo businesses are (re-)authorised through the OAuth flow, so their
DAGs can be triggered from the UI. Then `airflow standalone` runs in the foreground; Ctrl-C
(or SIGTERM) stops it, every component it started, and the fake Sage together. While it runs it
holds the checkout's Airflow lock, so `make demo` in another terminal refuses in one line
instead of sharing its database and companies (scripts/checkout_lock.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT), str(ROOT / "scripts")]

from checkout_lock import exclusive  # noqa: E402
from demo import REDIRECT_URI, connect_all  # noqa: E402
from deployment import run_in_foreground  # noqa: E402

from sandbox.fake_sage.server import FakeSageServer  # noqa: E402

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


def serve() -> int:
    if os.environ.get("AIRFLOW_CONN_SAGE_DEFAULT"):
        return airflow_standalone()
    with FakeSageServer(seed=42, port=FAKE_PORT) as sage:
        os.environ["AIRFLOW_CONN_SAGE_DEFAULT"] = sage.airflow_conn_json(REDIRECT_URI)
        print(f"fake Sage at {sage.base_url}; connecting the demo businesses", flush=True)
        connect_all(sage)
        settings = json.loads(os.environ["AIRFLOW_CONN_SAGE_DEFAULT"])
        print(f"Sage connection: {settings['host']}", flush=True)
        return airflow_standalone()


if __name__ == "__main__":
    raise SystemExit(main())
