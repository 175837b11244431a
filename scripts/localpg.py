"""Find a PostgreSQL server for the demo and the tests, starting one only if none is there.

Order (the README's promise): the configured warehouse (``AIRFLOW_CONN_SAGE_WAREHOUSE`` or
``SAGE_PG_URL``), else a PostgreSQL already listening on 127.0.0.1:5432, else a throwaway
cluster from the machine's own ``initdb`` under ``.local/pg``, else the embedded server from
PyPI (``pgserver``) under ``.local/pgserver``. Prints one line: a server URL (admin database).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
THROWAWAY_PORT = 54329


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def _configured() -> str | None:
    if os.environ.get("SAGE_PG_URL"):
        return os.environ["SAGE_PG_URL"]
    if os.environ.get("AIRFLOW_CONN_SAGE_WAREHOUSE"):
        sys.path.insert(0, str(ROOT / "plugins"))
        from sage_sync.core.config import get_connection  # noqa: PLC0415

        conn = get_connection("sage_warehouse")
        user = conn.login or "postgres"
        auth = f"{user}:{conn.password}" if conn.password else user
        host, port, db = conn.host or "127.0.0.1", conn.port or 5432, conn.schema or "postgres"
        return f"postgresql://{auth}@{host}:{port}/{db}"
    return None


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found and name != "pg_ctl":  # Debian's /usr/bin wrappers lack initdb; prefer the real binaries.
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else found


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; use the distribution's postgres account when we are root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _throwaway_cluster() -> str | None:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        return None
    data = LOCAL / "pg"
    url = f"postgresql://postgres@127.0.0.1:{THROWAWAY_PORT}/postgres"
    if _reachable(url):
        return url
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
            shutil.chown(LOCAL, "postgres")
        subprocess.run(
            _as_postgres_user([initdb, "-D", str(data), "--auth=trust", "-U", "postgres"]),
            check=True,
            capture_output=True,
        )
    subprocess.run(
        _as_postgres_user(
            [
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(data / "server.log"),
                "-w",
                "start",
                "-o",
                f"-p {THROWAWAY_PORT} -c listen_addresses=127.0.0.1 -k {data}",
            ]
        ),
        check=True,
        capture_output=True,
    )
    return url if _reachable(url) else None


def _embedded() -> str | None:
    try:
        import pgserver  # noqa: PLC0415
    except ImportError:
        return None
    server = pgserver.get_server(str(LOCAL / "pgserver"), cleanup_mode=None)
    return server.get_uri()


def find_server() -> str:
    """Return a URL of a reachable PostgreSQL server, starting one if needed."""
    configured = _configured()
    if configured:
        if not _reachable(configured):
            raise SystemExit(f"the configured warehouse is not reachable: {configured.split('@')[-1]}")
        return configured
    for url in ("postgresql://postgres@127.0.0.1:5432/postgres",):
        if _reachable(url):
            return url
    for start in (_throwaway_cluster, _embedded):
        try:
            url = start()
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"localpg: {start.__name__} failed: {exc}", file=sys.stderr)
            continue
        if url:
            return url
    raise SystemExit(
        "no PostgreSQL found or startable: install PostgreSQL (e.g. apt-get install postgresql) "
        "or set SAGE_PG_URL to a server you can use"
    )


if __name__ == "__main__":
    print(find_server())
