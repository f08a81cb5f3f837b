"""Failed-login throttling by (source address, account) and by source address.

After `failed_login_limit` failures for one account from one address within the window, that
address may not try that account again until the oldest failure leaves the window (429); after
`failed_login_source_limit` failures from one address for any accounts, that address may not try
any. An account is never locked for everyone: five wrong secrets for `robot$acme+ci` sent from
elsewhere used to lock the CI robot out for 300 s (issue 22, finding 4); now they only lock out
the address that sent them. Guessing from many addresses is bounded by the process-wide hashing
budget (auth/passwords.py). Refusals are answered after `tarpit` seconds, so a closed-loop
flood of bad logins from one address runs at connections/tarpit per second instead of
thousands (finding 1). Behind a proxy every client has the proxy's address (README).

The counts are kept in the state store (`auth_login_failures`, timed on the database's clock),
so the limits hold across every process and node of a cluster; an in-memory copy answers
first, so a flood from one address is refused without a query. If the store cannot be reached,
the in-memory counts still apply.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from dockyard.core.sql import Database, DatabaseError

log = logging.getLogger("dockyard.auth")

MAX_TRACKED = 100_000  # names kept; a spray of random names cannot grow memory without bound


class FailureCounter:
    """Failures per key within a sliding window, refused past `limit`."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, account: str) -> int | None:
        """Seconds the caller must wait before trying `account` again, or None if it may try."""
        failures = self._live(account)
        if failures is None or len(failures) < self._limit:
            return None
        return max(1, math.ceil(failures[0] + self._window - self._clock()))

    def failed(self, account: str) -> None:
        failures = self._live(account)
        if failures is None:
            failures = self._failures[account] = deque(maxlen=self._limit)
        failures.append(self._clock())
        self._failures.move_to_end(account)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def succeeded(self, account: str) -> None:
        self._failures.pop(account, None)

    def _live(self, account: str) -> deque[float] | None:
        failures = self._failures.get(account)
        if failures is None:
            return None
        horizon = self._clock() - self._window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[account]
            return None
        return failures


class SharedFailures:
    """Failures per key in the state store, seen by every node. Keys are stored hashed: the
    account part is whatever a client sent (a NUL byte included), and the table needs no more
    than equality."""

    def __init__(self, db: Database, window: float) -> None:
        self.db = db
        self.window = float(window)

    async def retry_after(self, key: str, limit: int) -> int | None:
        now = self.db.now_sql
        row = await self.db.fetchone(
            f"SELECT COUNT(*), MIN(at) - {now} FROM auth_login_failures "
            f"WHERE key = ? AND at > {now} - ?",
            (_hashed(key), self.window),
        )
        if row is None or int(row[0]) < limit:
            return None
        return max(1, math.ceil(float(row[1]) + self.window))

    async def failed(self, key: str) -> None:
        now = self.db.now_sql
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO auth_login_failures (key, at) VALUES (?, {now})", (_hashed(key),)
            )
            # Old rows go now and then, not on every failure.
            if random.random() < 0.02:
                await tx.execute(
                    f"DELETE FROM auth_login_failures WHERE at < {now} - ?", (self.window,)
                )

    async def succeeded(self, key: str) -> None:
        await self.db.execute(
            "DELETE FROM auth_login_failures WHERE key = ?", (_hashed(key),)
        )


def _hashed(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class LoginThrottle:
    """The two counters of the module docstring, consulted and charged together: in memory
    first, then (given a store) cluster-wide."""

    def __init__(
        self,
        limit: int,
        window: float,
        source_limit: int = 30,
        tarpit: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedFailures | None = None,
    ) -> None:
        self.pair = FailureCounter(limit, window, clock)
        self.source = FailureCounter(source_limit, window, clock)
        self.limit = limit
        self.source_limit = source_limit
        self.tarpit = tarpit
        self.shared = shared

    @staticmethod
    def _pair(source: str, account: str) -> str:
        return f"{source}\x00{account}"

    @staticmethod
    def _source(source: str) -> str:
        return f"{source}\x00"

    async def retry_after(self, source: str, account: str) -> int | None:
        pair = self._pair(source, account)
        waits = [
            w
            for w in (self.pair.retry_after(pair), self.source.retry_after(source))
            if w is not None
        ]
        if not waits and self.shared is not None:
            try:
                waits = [
                    w
                    for w in (
                        await self.shared.retry_after(pair, self.limit),
                        await self.shared.retry_after(self._source(source), self.source_limit),
                    )
                    if w is not None
                ]
            except DatabaseError as exc:
                log.warning("login throttle: shared counts unavailable (%s); local ones apply", exc)
        return max(waits) if waits else None

    async def failed(self, source: str, account: str) -> None:
        self.pair.failed(self._pair(source, account))
        self.source.failed(source)
        if self.shared is not None:
            try:
                await self.shared.failed(self._pair(source, account))
                await self.shared.failed(self._source(source))
            except DatabaseError as exc:
                log.warning("login throttle: shared counts unavailable (%s)", exc)

    async def succeeded(self, source: str, account: str) -> None:
        # The source's count stays: one valid account must not launder guesses at others.
        self.pair.succeeded(self._pair(source, account))
        if self.shared is not None:
            try:
                await self.shared.succeeded(self._pair(source, account))
            except DatabaseError as exc:
                log.warning("login throttle: shared counts unavailable (%s)", exc)
