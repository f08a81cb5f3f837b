"""Password and robot-secret hashing with scrypt (memory-hard), verified in constant time.

Stored form: `scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>`, so the cost can be raised later
without invalidating existing hashes.
"""

from __future__ import annotations

import base64
import functools
import hmac
import os
import secrets

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

LOG2_N, R, P = 15, 8, 1  # 32 MiB of memory per hash
LENGTH = 32
MAX_SECRET_BYTES = 1024  # a longer "password" is refused before any hashing work


def hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    derived = _derive(secret.encode(), salt, LOG2_N, R, P)
    return "$".join(
        ["scrypt", str(LOG2_N), str(R), str(P), _b64(salt), _b64(derived)]
    )


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of `secret` against a stored hash; malformed hashes never match."""
    encoded = secret.encode()
    if len(encoded) > MAX_SECRET_BYTES:
        return False
    try:
        scheme, log2_n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = _derive(encoded, _unb64(salt), int(log2_n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(derived, _unb64(expected))


@functools.cache
def dummy_hash() -> str:
    """A hash of a random secret, checked when an account does not exist so that an unknown name
    costs the same time as a wrong password and does not reveal which names exist."""
    return hash_secret(secrets.token_urlsafe(16))


def generate_secret() -> str:
    """A robot secret or refresh token: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def _derive(secret: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    return Scrypt(salt=salt, length=LENGTH, n=1 << log2_n, r=r, p=p).derive(secret)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)
