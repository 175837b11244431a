"""Encryption at rest for OAuth tokens, with Airflow's own Fernet key.

Reusing ``AIRFLOW__CORE__FERNET_KEY`` means one secret to manage and rotate, the way Airflow encrypts
its own connection passwords. The variable may hold a comma-separated list of keys: the first one
encrypts, every one decrypts (``MultiFernet``), so a key rotation never makes stored tokens unreadable.

Errors never include key material or ciphertext: they say which setting is wrong and what to do.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from sage_sync.core.config import fernet_key
from sage_sync.core.errors import CryptoError


@lru_cache(maxsize=4)
def _multi_fernet(keys: str) -> MultiFernet:
    fernets = []
    for position, key in enumerate((k.strip() for k in keys.split(",")), start=1):
        if not key:
            continue
        try:
            fernets.append(Fernet(key.encode("ascii")))
        except (ValueError, UnicodeEncodeError):
            # Fernet's message is harmless, but "from None" keeps the key out of any traceback.
            raise CryptoError(
                f"AIRFLOW__CORE__FERNET_KEY: key #{position} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes; make one with cryptography's "
                "Fernet.generate_key())"
            ) from None
    if not fernets:
        raise CryptoError("AIRFLOW__CORE__FERNET_KEY holds no key")
    return MultiFernet(fernets)


def _fernet() -> MultiFernet:
    # Read the environment on every call (cheap; the parsed keys are cached) so that a key set
    # after import, or changed by a test, is honoured.
    return _multi_fernet(fernet_key())


def encrypt(text: str) -> str:
    """Encrypt ``text`` with the first configured key; returns a url-safe ASCII token."""
    return _fernet().encrypt(text.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """Decrypt a token made by :func:`encrypt` with any configured key."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeEncodeError):
        raise CryptoError(
            "cannot decrypt a stored token with AIRFLOW__CORE__FERNET_KEY: the key was changed or "
            "removed (keep the old key after the new one, comma-separated, while rotating), "
            "or the value is corrupt; reconnecting the company stores fresh tokens"
        ) from None
