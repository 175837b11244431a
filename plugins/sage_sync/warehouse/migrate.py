"""Create and migrate the warehouse's control and raw schemas.

Every migration file is idempotent and they all run in one transaction under an advisory
lock, so running set-up twice, or from two processes at once, changes nothing.
"""

from __future__ import annotations

from importlib import resources

import psycopg

# Any constant works; it only has to be the same for every process migrating this warehouse.
_MIGRATION_LOCK_KEY = 0x5A6E_0001


def migration_files() -> list[tuple[str, str]]:
    """Return (name, sql) of every bundled migration, in the order they apply."""
    folder = resources.files("sage_sync.warehouse") / "migrations"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply all migrations on ``conn`` and commit; return the names applied."""
    names = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        for name, sql in migration_files():
            conn.execute(sql)
            names.append(name)
    return names


_migrated: set[str] = set()


def ensure_migrated(conn: psycopg.Connection) -> None:
    """Migrate once per process and warehouse: for paths that run often (a page view, a connect),
    where re-running DDL under the migration lock every time would be wasted work."""
    key = conn.info.dsn
    if key not in _migrated:
        migrate(conn)
        _migrated.add(key)
