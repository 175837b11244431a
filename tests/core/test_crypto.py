"""Tokens are encrypted with Airflow's Fernet key; key rotation works; errors leak no secret."""

import pytest
from cryptography.fernet import Fernet

from sage_sync.core import crypto
from sage_sync.core.config import ConfigError


def test_round_trip(fernet_key: str) -> None:
    secret = "refresh-token-ÄÖ-☃"
    token = crypto.encrypt(secret)
    assert secret not in token
    assert token != crypto.encrypt(secret)  # Fernet is randomised
    assert crypto.decrypt(token) == secret


def test_rotation_first_key_encrypts_all_keys_decrypt(monkeypatch: pytest.MonkeyPatch, fernet_key: str) -> None:
    old_token = crypto.encrypt("old")
    new_key = Fernet.generate_key().decode()
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", f"{new_key}, {fernet_key}")
    assert crypto.decrypt(old_token) == "old"
    new_token = crypto.encrypt("new")
    assert Fernet(new_key.encode()).decrypt(new_token.encode()) == b"new"


def test_missing_key_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__CORE__FERNET_KEY", raising=False)
    with pytest.raises(ConfigError, match="AIRFLOW__CORE__FERNET_KEY"):
        crypto.encrypt("x")


def test_malformed_key_error_does_not_echo_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "not-a-real-key-s3cr3t")
    with pytest.raises(crypto.CryptoError) as info:
        crypto.encrypt("x")
    assert "s3cr3t" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_wrong_key_cannot_decrypt(monkeypatch: pytest.MonkeyPatch, fernet_key: str) -> None:
    token = crypto.encrypt("secret")
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", Fernet.generate_key().decode())
    with pytest.raises(crypto.CryptoError, match="cannot decrypt") as info:
        crypto.decrypt(token)
    assert token not in str(info.value)


def test_garbage_ciphertext(fernet_key: str) -> None:
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt("garbage-☃")


# -- the pipeline's own key: SAGE_TOKEN_KEYS ------------------------------------------------------------


def test_the_pipelines_own_keys_encrypt_when_set(monkeypatch: pytest.MonkeyPatch, fernet_key: str) -> None:
    """With SAGE_TOKEN_KEYS set, Airflow's Fernet key (which every DAG's tasks can read) opens no token."""
    own = Fernet.generate_key().decode()
    monkeypatch.setenv("SAGE_TOKEN_KEYS", own)
    token = crypto.encrypt("refresh-token")
    assert Fernet(own.encode()).decrypt(token.encode()) == b"refresh-token"
    with pytest.raises(Exception):  # noqa: B017 - any failure: the Airflow key must not open it
        Fernet(fernet_key.encode()).decrypt(token.encode())
    monkeypatch.delenv("AIRFLOW__CORE__FERNET_KEY")
    assert crypto.decrypt(token) == "refresh-token"  # Airflow's key is not needed at all


def test_moving_from_airflows_key_to_the_pipelines_own(monkeypatch: pytest.MonkeyPatch, fernet_key: str) -> None:
    """Unset: Airflow's key, as before. Then SAGE_TOKEN_KEYS="new,<Airflow's key>" reads the old
    tokens and writes new ones with the new key (each refresh re-saves a company's tokens); once
    none is left under the old key, it is dropped from the list."""
    monkeypatch.delenv("SAGE_TOKEN_KEYS", raising=False)
    old = crypto.encrypt("old")
    assert Fernet(fernet_key.encode()).decrypt(old.encode()) == b"old"
    new_key = Fernet.generate_key().decode()
    monkeypatch.setenv("SAGE_TOKEN_KEYS", f"{new_key},{fernet_key}")
    assert crypto.decrypt(old) == "old"
    assert Fernet(new_key.encode()).decrypt(crypto.encrypt("new").encode()) == b"new"
    assert Fernet(new_key.encode()).decrypt(crypto.rotate(old).encode()) == b"old"
    monkeypatch.setenv("SAGE_TOKEN_KEYS", new_key)
    with pytest.raises(crypto.CryptoError, match="SAGE_TOKEN_KEYS"):
        crypto.decrypt(old)


def test_a_malformed_own_key_is_named_not_echoed(monkeypatch: pytest.MonkeyPatch, fernet_key: str) -> None:
    monkeypatch.setenv("SAGE_TOKEN_KEYS", f"{Fernet.generate_key().decode()},not-a-key-s3cr3t")
    with pytest.raises(crypto.CryptoError, match=r"SAGE_TOKEN_KEYS: key #2") as info:
        crypto.encrypt("x")
    assert "s3cr3t" not in str(info.value)
