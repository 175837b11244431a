"""Create and migrate the warehouse's control and raw schemas: at set-up and deploy, never on a read.

Every migration file is idempotent and they all run in one transaction under an advisory
lock, so running set-up twice, or from two processes at once, changes nothing.

Migrating is a step of its own (``python -m sage_sync migrate``: the make targets, the demo,
``scripts/deployment.py``, the compose file's ``airflow-init``). Nothing that reads or syncs runs
DDL: ``alter table ... add column if not exists`` takes an ACCESS EXCLUSIVE lock even when the
column exists, so a page view that migrated waited behind one long dbt reader, and every sync
page of every company then queued behind it. Set-up itself waits at most ``lock_timeout`` for
each lock, then gives up and tries again, rather than holding up everyone behind it.

The last migration applied is written as the comment of the ``sage_control`` schema, where a
truncate of the control tables (as tests do) cannot lose it. :func:`require_current` reads it, so a
use case on a warehouse that was never set up, or is older than this code, refuses in one line
naming the command to run, instead of failing halfway on a missing column.
"""

from __future__ import annotations

import logging
import time
from importlib import resources

import psycopg
from psycopg import sql

from sage_sync.core.errors import MigrationLockTimeout, SchemaNotReady

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process migrating this warehouse.
_MIGRATION_LOCK_KEY = 0x5A6E_0001
# How long set-up waits for one table lock before it backs off. Readers of the warehouse (a dbt
# build, a long analyst query) hold ACCESS SHARE; while a migration waits for ACCESS EXCLUSIVE,
# every later query of that table, the sync's writes included, queues behind the migration.
DEFAULT_LOCK_TIMEOUT_MS = 5_000
DEFAULT_ATTEMPTS = 5
DEFAULT_RETRY_DELAY_S = 5.0
MIGRATE_COMMAND = "python -m sage_sync migrate"
_SCHEMA_MARK = "sage_sync migrations applied up to "


def migration_files() -> list[tuple[str, str]]:
    """Return (name, sql) of every bundled migration, in the order they apply."""
    folder = resources.files("sage_sync.warehouse") / "migrations"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


class _Blocked(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _apply(conn: psycopg.Connection, lock_timeout_ms: int) -> list[str]:
    names = []
    with conn.transaction():
        # The advisory lock first, without a timeout: another set-up holding it is itself bounded.
        conn.execute("select pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute("select set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_ms)}ms",))
        files = migration_files()
        for name, text in files:
            try:
                conn.execute(text)
            except psycopg.errors.LockNotAvailable:
                raise _Blocked(name) from None
            names.append(name)
        if files:
            conn.execute(
                sql.SQL("comment on schema sage_control is {}").format(sql.Literal(_SCHEMA_MARK + files[-1][0]))
            )
    return names


def migrate(
    conn: psycopg.Connection,
    *,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    attempts: int = DEFAULT_ATTEMPTS,
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
) -> list[str]:
    """Apply all migrations on ``conn`` and commit; return the names applied.

    Each lock is waited for at most ``lock_timeout_ms``; a blocked attempt is rolled back whole
    and retried after ``retry_delay_s``, ``attempts`` times in all, then
    :class:`MigrationLockTimeout` says which migration was blocked.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    attempt = 1
    while True:
        try:
            return _apply(conn, lock_timeout_ms)
        except _Blocked as blocked:
            if attempt >= attempts:
                raise MigrationLockTimeout(
                    f"migration {blocked.name} could not take its table locks within {lock_timeout_ms} ms "
                    f"({attempts} attempts): a long transaction holds them (see pg_stat_activity); "
                    f"run `{MIGRATE_COMMAND}` again once it has ended"
                ) from None
            log.warning(
                "migration %s waited %d ms for a lock (attempt %d of %d); retrying in %.1f s",
                blocked.name,
                lock_timeout_ms,
                attempt,
                attempts,
                retry_delay_s,
            )
            time.sleep(retry_delay_s)
            attempt += 1


def schema_problem(conn: psycopg.Connection) -> str | None:
    """Why this warehouse's schema cannot serve this code (never set up, or older), or None.

    One catalog read; it takes no lock a migration or a sync would wait for.
    """
    row = conn.execute(
        "select obj_description(oid, 'pg_namespace') from pg_namespace where nspname = 'sage_control'"
    ).fetchone()
    needed = migration_files()[-1][0]
    if row is None:
        return "the warehouse is not set up (no sage_control schema)"
    mark = row[0] or ""
    applied = mark[len(_SCHEMA_MARK) :] if mark.startswith(_SCHEMA_MARK) else None
    if applied is None or applied < needed:
        return f"the warehouse schema is older than this code (it has {applied or 'no migration mark'}, needs {needed})"
    return None


_current: set[str] = set()


def require_current(conn: psycopg.Connection) -> None:
    """Refuse (:class:`SchemaNotReady`, one line naming the command) unless the schema is set up
    and current. Checked once per process and warehouse: schemas only move forward."""
    key = conn.info.dsn
    if key in _current:
        return
    problem = schema_problem(conn)
    if problem is not None:
        raise SchemaNotReady(f"{problem}: run `{MIGRATE_COMMAND}` (set-up and deploy do)")
    _current.add(key)
