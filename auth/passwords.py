"""Password and robot-secret hashing with scrypt (memory-hard), verified in constant time.

Stored form: `scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>`, so the cost can be raised later
without invalidating existing hashes.

Hashing runs in its own bounded pool (`PasswordPool`), never in asyncio's default executor:
that one also does the filesystem writes and commits of blob uploads, and a login flood
queued there stalled pushes from 40 ms to 11 s (issue 22, finding 1). The pool has a global
budget of hashes per second and a bounded wait; past it a login is refused at once
(`PasswordBusy`, 503) instead of queueing without limit. Unknown names hash against a dummy
hash in the same pool, so they cost what a wrong password costs.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import hmac
import os
import secrets
import threading
import time
from typing import Any

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


class PasswordBusy(Exception):
    """The hashing budget is spent: the caller should answer 503 with Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("password checks are at capacity")
        self.retry_after = retry_after


class PasswordPool:
    """scrypt on `workers` threads of its own, at most `rate` hashes per second (0: no rate
    limit), and a caller waits at most `max_wait` seconds for its turn or gets PasswordBusy.

    The budget is per process and shared by every caller: one source's flood can use it up,
    which is why the token endpoint refuses a failing source before it reaches this pool."""

    def __init__(self, workers: int = 1, rate: float = 0.0, max_wait: float = 2.0) -> None:
        self.workers = max(1, workers)
        self.rate = max(0.0, rate)
        self.max_wait = max_wait
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.workers, thread_name_prefix="dockyard-scrypt"
        )
        self._lock = threading.Lock()  # callers may come from several event loops (tests)
        self._next_start = 0.0  # monotonic time the next hash may start at (rate budget)
        self._pending = 0  # hashes queued or running
        self.refused = 0

    def _reserve(self) -> float:
        """Seconds to wait before this hash may start, or PasswordBusy."""
        now = time.monotonic()
        with self._lock:
            # Queue depth: each worker finishes about one hash per `cost` seconds; waiting
            # behind more than the budget allows is refused rather than queued.
            start = max(now, self._next_start) if self.rate else now
            queued = self._pending / self.workers * _COST.estimate
            if start - now > self.max_wait or queued > self.max_wait:
                self.refused += 1
                raise PasswordBusy(max(1, int(max(start - now, queued)) + 1))
            if self.rate:
                self._next_start = start + 1.0 / self.rate
            self._pending += 1
        return start - now

    async def _run(self, fn: Any, *args: str) -> Any:
        delay = self._reserve()
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, _COST.timed, fn, *args)
        finally:
            with self._lock:
                self._pending -= 1

    async def verify(self, secret: str, stored: str) -> bool:
        return bool(await self._run(verify_secret, secret, stored))

    async def hash(self, secret: str) -> str:
        return str(await self._run(hash_secret, secret))


class _Cost:
    """A running estimate of one hash's seconds (the queue-depth bound uses it)."""

    def __init__(self) -> None:
        self.estimate = 0.1

    def timed(self, fn: Any, *args: str) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.estimate = 0.8 * self.estimate + 0.2 * (time.perf_counter() - started)


_COST = _Cost()
_POOL: PasswordPool | None = None


def configure(workers: int, rate: float, max_wait: float) -> PasswordPool:
    """Set the process's hashing pool (the token service does, from `[auth]`)."""
    global _POOL
    if _POOL is not None:
        _POOL._executor.shutdown(wait=False)  # its running hashes still finish
    _POOL = PasswordPool(workers, rate, max_wait)
    return _POOL


def pool() -> PasswordPool:
    """The process's hashing pool (defaults until `configure` runs)."""
    global _POOL
    if _POOL is None:
        _POOL = PasswordPool(default_workers())
    return _POOL


def default_workers() -> int:
    """Half the CPUs (at least one), so hashing never takes every core from the registry."""
    return max(1, (os.cpu_count() or 2) // 2)


def _derive(secret: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    return Scrypt(salt=salt, length=LENGTH, n=1 << log2_n, r=r, p=p).derive(secret)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)
