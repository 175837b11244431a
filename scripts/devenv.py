"""Write ``.local/env.sh``: the environment every make target runs in.

It finds (or starts) PostgreSQL, makes sure the warehouse and Airflow metadata databases
exist, keeps one Fernet key for this checkout, and points Airflow at this repo's dags/ and
plugins/. Variables already set by the user win, so a configured deployment is respected.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys
from pathlib import Path

import psycopg
from cryptography.fernet import Fernet
from psycopg import sql

from sage_sync.core.config import warehouse_conn_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from localpg import LOCAL, ROOT, find_server


def checkout_id() -> str:
    """A short name for this checkout: its folder name plus a hash of its path.

    The local databases carry it, so a second clone on the same machine gets databases of its
    own instead of writing into the first one's warehouse. ``SAGE_CHECKOUT_ID`` overrides it.
    """
    if os.environ.get("SAGE_CHECKOUT_ID"):
        return re.sub(r"[^a-z0-9_]", "_", os.environ["SAGE_CHECKOUT_ID"].lower())
    folder = re.sub(r"[^a-z0-9_]", "_", ROOT.name.lower())[:20]
    return f"{folder}_{hashlib.sha256(str(ROOT).encode()).hexdigest()[:6]}"


WAREHOUSE_DB = f"sage_warehouse_{checkout_id()}"
AIRFLOW_DB = f"sage_airflow_{checkout_id()}"


def ensure_database(server_url: str, name: str) -> str:
    """Create database ``name`` if missing; return its URL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(server_url, dbname=name)


def fernet_key() -> str:
    path = LOCAL / "fernet.key"
    if not path.exists():
        LOCAL.mkdir(exist_ok=True)
        path.write_text(Fernet.generate_key().decode())
        path.chmod(0o600)
    return path.read_text().strip()


def build_env() -> dict[str, str]:
    server = find_server()
    params = psycopg.conninfo.conninfo_to_dict(server)
    warehouse = ensure_database(server, WAREHOUSE_DB)
    metadata = ensure_database(server, AIRFLOW_DB)
    # Tests get their own metadata DB, so DAG runs of throwaway test companies never show up
    # in the developer's Airflow UI.
    test_metadata = ensure_database(server, AIRFLOW_DB + "_test")
    host = str(params.get("host") or "127.0.0.1")
    port = str(params.get("port") or 5432)
    user = str(params.get("user") or "postgres")
    password = str(params.get("password") or "")
    airflow_home = LOCAL / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    meta = psycopg.conninfo.conninfo_to_dict(metadata)
    auth = f"{user}:{password}" if password else user

    def sqlalchemy_url(dbname: str) -> str:
        if host.startswith("/"):
            return f"postgresql+psycopg://{auth}@/{dbname}?host={host}&port={port}"
        return f"postgresql+psycopg://{auth}@{host}:{port}/{dbname}"

    # No password key at all under trust or peer auth: every part (CLI, sync, dbt) accepts that.
    warehouse_conn = warehouse_conn_json(warehouse)
    env = {
        "SAGE_PG_URL": server,
        "SAGE_TEST_PG_URL": server,
        "SAGE_WAREHOUSE_URL": warehouse,
        "SAGE_PG_HOST": host,
        "SAGE_PG_PORT": port,
        "SAGE_PG_USER": user,
        "SAGE_PG_PASSWORD": password,
        "SAGE_PG_DBNAME": WAREHOUSE_DB,
        "AIRFLOW_CONN_SAGE_WAREHOUSE": warehouse_conn,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__FERNET_KEY": fernet_key(),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(meta["dbname"]),
        # The housekeeping DAG's way into the metadata DB, which Airflow 3 keeps from tasks.
        "SAGE_AIRFLOW_METADATA_DB_URL": sqlalchemy_url(meta["dbname"]),
        "SAGE_TEST_AIRFLOW_DB_URL": sqlalchemy_url(psycopg.conninfo.conninfo_to_dict(test_metadata)["dbname"]),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "AIRFLOW__COSMOS__CACHE_DIR": str(LOCAL / "cosmos"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        "DBT_PROFILES_DIR": str(ROOT / "dbt"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for key in list(env):
        if key in os.environ and key not in {"PYTHONPATH"}:
            env[key] = os.environ[key]
    return env


def main() -> None:
    env = build_env()
    out = LOCAL / "env.sh"
    out.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    out.chmod(0o600)
    # Printed on every start, so nobody is surprised which databases this checkout uses.
    print(
        f"checkout {ROOT}: warehouse database {env['SAGE_PG_DBNAME']}, "
        f"Airflow metadata {AIRFLOW_DB} (SAGE_CHECKOUT_ID changes the suffix)",
        file=sys.stderr,
    )
    print(out)


if __name__ == "__main__":
    main()
