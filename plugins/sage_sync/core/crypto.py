"""Encryption at rest for OAuth tokens: Fernet, with the pipeline's own keys or Airflow's.

The keys are ``SAGE_TOKEN_KEYS`` when it is set, else Airflow's ``AIRFLOW__CORE__FERNET_KEY``
(:func:`sage_sync.core.config.token_keys` says why a key of its own is the better choice). Either
variable may hold a comma-separated list of keys: the first one encrypts, every one decrypts
(``MultiFernet``), so a rotation never makes stored tokens unreadable. Rotating: put the new key
first and keep the old one after it; every token refresh re-saves a company's pair under the new
key (a day of runs re-encrypts every active company), the pending grants live minutes; then drop
the old key. Moving off Airflow's key is the same move: ``SAGE_TOKEN_KEYS=<new key>,<Airflow's key>``.

Errors never include key material or ciphertext: they say which setting is wrong and what to do.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from sage_sync.core.config import token_keys
from sage_sync.core.errors import CryptoError


@lru_cache(maxsize=4)
def _multi_fernet(keys: str, setting: str) -> MultiFernet:
    fernets = []
    for position, key in enumerate((k.strip() for k in keys.split(",")), start=1):
        if not key:
            continue
        try:
            fernets.append(Fernet(key.encode("ascii")))
        except (ValueError, UnicodeEncodeError):
            # Fernet's message is harmless, but "from None" keeps the key out of any traceback.
            raise CryptoError(
                f"{setting}: key #{position} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes; make one with cryptography's "
                "Fernet.generate_key())"
            ) from None
    if not fernets:
        raise CryptoError(f"{setting} holds no key")
    return MultiFernet(fernets)


def _fernet() -> tuple[MultiFernet, str]:
    # Read the environment on every call (cheap; the parsed keys are cached) so that a key set
    # after import, or changed by a test, is honoured.
    keys, setting = token_keys()
    return _multi_fernet(keys, setting), setting


def encrypt(text: str) -> str:
    """Encrypt ``text`` with the first configured key; returns a url-safe ASCII token."""
    return _fernet()[0].encrypt(text.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """Decrypt a token made by :func:`encrypt` with any configured key."""
    fernet, setting = _fernet()
    try:
        return fernet.decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeEncodeError):
        raise CryptoError(
            f"cannot decrypt a stored token with {setting}: the key was changed or "
            "removed (keep the old key after the new one, comma-separated, while rotating), "
            "or the value is corrupt; reconnecting the company stores fresh tokens"
        ) from None


def rotate(token: str) -> str:
    """``token`` re-encrypted with the first configured key (readable with any of them)."""
    fernet, setting = _fernet()
    try:
        return fernet.rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeEncodeError):
        raise CryptoError(f"cannot re-encrypt a stored token: no key of {setting} opens it") from None
