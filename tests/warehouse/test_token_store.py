"""PostgresTokenStore: durable, encrypted at rest, and one refresh per company at a time."""

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from sage_sync.cli.commands import main as cli
from sage_sync.core.config import warehouse_conn_json
from sage_sync.core.errors import ReauthorizationRequired, TransientError
from sage_sync.sage.auth import TokenManager
from sage_sync.sage.tokens import TokenSet
from sage_sync.warehouse.registry import register_company
from sage_sync.warehouse.token_store import PostgresTokenStore, TokenLockTimeout, refresh_lock_key

ACCESS = "access-token-1234567890-plaintext"
REFRESH = "refresh-token-abcdefghij-plaintext"


@pytest.fixture
def company(warehouse: psycopg.Connection) -> str:
    register_company(warehouse, "biz-1", "Acme Ltd", "2024-Q1")
    warehouse.commit()
    return "biz-1"


def _tokens(suffix: str = "") -> TokenSet:
    return TokenSet(
        access_token=ACCESS + suffix,
        refresh_token=REFRESH + suffix,
        access_expires_at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC),
        refresh_expires_at=datetime(2030, 2, 1, tzinfo=UTC),
    )


def test_round_trip_encrypted_at_rest(
    pg_dsn: str, warehouse: psycopg.Connection, company: str, fernet_key: str
) -> None:
    store = PostgresTokenStore(pg_dsn)
    assert store.load(company) is None
    store.save(company, _tokens())
    assert store.load(company) == _tokens()

    stored = warehouse.execute(
        "select access_token_enc, refresh_token_enc, row_to_json(t)::text from sage_control.oauth_tokens t"
    ).fetchone()
    assert stored is not None
    for column in stored:
        assert ACCESS not in column and REFRESH not in column
        assert "plaintext" not in column


def test_save_upserts_and_is_committed(
    pg_dsn: str, warehouse: psycopg.Connection, company: str, fernet_key: str
) -> None:
    store = PostgresTokenStore(pg_dsn)
    store.save(company, _tokens("-a"))
    rotated = _tokens("-b")
    store.save(company, rotated)
    # Seen by another, independent connection: committed, not pending in some transaction.
    with psycopg.connect(pg_dsn) as other:
        assert other.execute("select count(*) from sage_control.oauth_tokens").fetchone() == (1,)
    assert store.load(company) == rotated


def test_save_requires_aware_expiry(pg_dsn: str, company: str, fernet_key: str) -> None:
    naive = TokenSet(ACCESS, REFRESH, datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        PostgresTokenStore(pg_dsn).save(company, naive)


def test_delete(pg_dsn: str, company: str, fernet_key: str) -> None:
    store = PostgresTokenStore(pg_dsn)
    store.save(company, _tokens())
    store.delete(company)
    assert store.load(company) is None
    store.delete(company)  # idempotent


def test_repr_and_logs_hold_no_secret(
    pg_dsn: str, company: str, fernet_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    store = PostgresTokenStore(pg_dsn)
    store.save(company, _tokens())
    assert store.load(company) is not None
    assert ACCESS not in caplog.text and REFRESH not in caplog.text
    assert ACCESS not in repr(_tokens())


def test_refresh_lock_excludes_another_connection(pg_dsn: str, fernet_key: str) -> None:
    holder_has_lock = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with PostgresTokenStore(pg_dsn).refresh_lock("biz-1"):
                holder_has_lock.set()
                release.wait(10)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_has_lock.wait(10)
    try:
        started = time.monotonic()
        impatient = PostgresTokenStore(pg_dsn, lock_timeout=0.3)
        with pytest.raises(TokenLockTimeout), impatient.refresh_lock("biz-1"):
            pytest.fail("the lock was acquired twice")
        assert time.monotonic() - started >= 0.25
        # Another company is not blocked.
        with PostgresTokenStore(pg_dsn, lock_timeout=0.3).refresh_lock("biz-2"):
            pass
    finally:
        release.set()
        holder.join(10)
    assert not errors
    # Released on exit: a waiter now gets it at once.
    with PostgresTokenStore(pg_dsn, lock_timeout=2).refresh_lock("biz-1"):
        pass


def test_waiter_gets_the_lock_when_released(pg_dsn: str) -> None:
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with PostgresTokenStore(pg_dsn).refresh_lock("biz-1"):
            order.append("first-in")
            first_in.set()
            time.sleep(0.3)
            order.append("first-out")

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(10)
    with PostgresTokenStore(pg_dsn, lock_timeout=10).refresh_lock("biz-1"):
        order.append("second-in")
    thread.join(10)
    assert order == ["first-in", "first-out", "second-in"]


def test_refresh_lock_released_on_error(pg_dsn: str) -> None:
    store = PostgresTokenStore(pg_dsn, lock_timeout=0.5)
    with pytest.raises(RuntimeError, match="boom"), store.refresh_lock("biz-1"):
        raise RuntimeError("boom")
    namespace, key = refresh_lock_key("biz-1")
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        got = other.execute("select pg_try_advisory_lock(%s, %s)", (namespace, key)).fetchone()
        assert got == (True,)


def test_lock_key_is_stable() -> None:
    assert refresh_lock_key("biz-1") == refresh_lock_key("biz-1")
    assert refresh_lock_key("biz-1") != refresh_lock_key("biz-2")
    assert all(-(2**31) <= part < 2**31 for part in refresh_lock_key("ü" * 1000))


# -- the rotated pair never vanishes at the save -----------------------------------------------------


class _RotatingOAuth:
    """Sage's token endpoint as the store sees it: ``during`` runs while the POST is in flight."""

    def __init__(self, during: Callable[[], None]) -> None:
        self.during = during
        self.issued: list[TokenSet] = []

    def refresh(self, refresh_token: str) -> TokenSet:
        self.during()
        self.issued.append(_tokens(f"-rotated-{len(self.issued)}"))
        return self.issued[-1]


def _refuse_new_connections(conn: psycopg.Connection, *, refuse: bool) -> None:
    """What a fail-over, a restart or max_connections look like to a new connection."""
    name = conn.warehouse_name  # type: ignore[attr-defined]
    conn.execute(
        sql.SQL("alter database {} with allow_connections {}").format(
            sql.Identifier(name), sql.SQL("false" if refuse else "true")
        )
    )


def _drop_lock_connections(conn: psycopg.Connection) -> None:
    conn.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s "
        "and application_name = 'sage_sync.token_store'",
        (conn.warehouse_name,),  # type: ignore[attr-defined]
    )


@pytest.fixture
def admin(pg_dsn: str) -> Iterator[psycopg.Connection]:
    """A connection (to another database) that can refuse the warehouse's new connections, and
    always lets them in again at the end."""
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    with psycopg.connect(psycopg.conninfo.make_conninfo(pg_dsn, dbname="postgres"), autocommit=True) as conn:
        conn.warehouse_name = params["dbname"]  # type: ignore[attr-defined]
        try:
            yield conn
        finally:
            _refuse_new_connections(conn, refuse=False)


def test_a_refresh_saves_on_the_locked_connection_while_new_connections_are_refused(
    pg_dsn: str, company: str, fernet_key: str, admin: psycopg.Connection
) -> None:
    store = PostgresTokenStore(pg_dsn)
    store.save(company, _tokens())
    oauth = _RotatingOAuth(lambda: _refuse_new_connections(admin, refuse=True))
    manager = TokenManager(company, store, oauth)  # type: ignore[arg-type]
    assert manager.refresh(rejected_token=ACCESS) == oauth.issued[0].access_token
    _refuse_new_connections(admin, refuse=False)
    assert store.load(company) == oauth.issued[0]


def test_a_save_whose_connection_dies_is_retried_until_the_warehouse_is_back(
    pg_dsn: str, company: str, fernet_key: str, admin: psycopg.Connection, tmp_path: Path
) -> None:
    store = PostgresTokenStore(pg_dsn, save_retry_seconds=60, recovery_dir=tmp_path)
    store.save(company, _tokens())

    def fail_over() -> None:
        _refuse_new_connections(admin, refuse=True)
        _drop_lock_connections(admin)
        threading.Timer(1.5, _refuse_new_connections, (admin,), {"refuse": False}).start()

    oauth = _RotatingOAuth(fail_over)
    manager = TokenManager(company, store, oauth)  # type: ignore[arg-type]
    assert manager.refresh(rejected_token=ACCESS) == oauth.issued[0].access_token
    assert store.load(company) == oauth.issued[0]
    assert not list(tmp_path.iterdir())


def test_a_save_that_keeps_failing_leaves_an_encrypted_recovery_record_and_a_command_restores_it(
    pg_dsn: str,
    company: str,
    fernet_key: str,
    admin: psycopg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = PostgresTokenStore(pg_dsn, save_retry_seconds=1, recovery_dir=tmp_path)
    store.save(company, _tokens())

    def outage() -> None:
        _refuse_new_connections(admin, refuse=True)
        _drop_lock_connections(admin)

    oauth = _RotatingOAuth(outage)
    manager = TokenManager(company, store, oauth)  # type: ignore[arg-type]
    with pytest.raises(TransientError, match="restore-tokens") as info:
        manager.refresh(rejected_token=ACCESS)
    assert not isinstance(info.value, ReauthorizationRequired)
    [record] = list(tmp_path.iterdir())
    assert str(record) in str(info.value)
    text = record.read_text()
    assert ACCESS not in text and REFRESH not in text and "rotated" not in text
    _refuse_new_connections(admin, refuse=False)
    assert store.load(company) == _tokens()  # the warehouse still holds the spent pair

    monkeypatch.setenv(
        "AIRFLOW_CONN_SAGE_WAREHOUSE",
        warehouse_conn_json(pg_dsn),
    )
    result = CliRunner().invoke(cli, ["restore-tokens", str(record)])
    assert result.exit_code == 0, result.output
    assert store.load(company) == oauth.issued[0]
    assert not record.exists()
