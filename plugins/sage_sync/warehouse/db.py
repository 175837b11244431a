"""The one way this package opens a warehouse connection, with its timeouts.

Every connection names itself (``application_name``, visible in ``pg_stat_activity``) and gives
up on an unreachable server after ``CONNECT_TIMEOUT_S`` instead of libpq's default of waiting
forever. Code that runs at DAG-parse time passes the tighter ``PARSE_CONNECT_TIMEOUT_S`` and
``PARSE_STATEMENT_TIMEOUT_MS``: the DAG processor re-parses every few seconds and must never hang
on the warehouse.
"""

from __future__ import annotations

import psycopg

from sage_sync.core.config import warehouse_dsn

CONNECT_TIMEOUT_S = 10
PARSE_CONNECT_TIMEOUT_S = 3
PARSE_STATEMENT_TIMEOUT_MS = 2000


def connect(
    dsn: str | None = None,
    *,
    app: str = "sage_sync",
    autocommit: bool = False,
    connect_timeout: int = CONNECT_TIMEOUT_S,
    statement_timeout_ms: int | None = None,
) -> psycopg.Connection:
    """A new connection to ``dsn`` (default: the ``sage_warehouse`` connection); use it as a context manager.

    With ``autocommit=True`` each ``conn.transaction()`` block is a real transaction committed on
    exit, not a savepoint inside one that an earlier read left open.
    """
    options = f"-c statement_timeout={statement_timeout_ms}" if statement_timeout_ms else None
    kwargs: dict[str, object] = {"options": options} if options else {}
    return psycopg.connect(
        dsn or warehouse_dsn(), autocommit=autocommit, connect_timeout=connect_timeout, application_name=app, **kwargs
    )
