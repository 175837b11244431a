"""PostgresTokenStore: durable, encrypted at rest, and one refresh per company at a time."""

import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

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
