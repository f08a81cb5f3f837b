"""HMAC-SHA256 signatures over a timestamp and the exact body (Stripe's scheme).

Header: `Dockyard-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`, where each `v1` is
`HMAC-SHA256(secret, f"{t}." + body)` for one configured secret (several during a rotation).
Signing the timestamp with the body lets a receiver refuse old deliveries replayed by an attacker;
signing the raw bytes means the receiver must verify before parsing JSON. Standard library only,
so consumers can copy `verify`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

SIGNATURE_HEADER = "Dockyard-Signature"
GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
DEFAULT_TOLERANCE = 300.0  # seconds a receiver accepts between signing and verifying


def compute(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secrets: Iterable[str], body: bytes, *, timestamp: int | None = None) -> str:
    """The signature header value for `body`, signed now (or at `timestamp`)."""
    ts = int(time.time()) if timestamp is None else timestamp
    parts = [f"t={ts}"] + [f"v1={compute(secret, ts, body)}" for secret in secrets]
    return ",".join(parts)


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether `header` carries a valid signature of `body` by `secret`, made recently."""
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = compute(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def github_signature(secret: str, body: bytes) -> str:
    """GitHub's webhook signature (`sha256=<hex HMAC of the body>`), for receivers built for it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
