"""Failed-login throttling by (source address, account) and by source address.

After `failed_login_limit` failures for one account from one address within the window, that
address may not try that account again until the oldest failure leaves the window (429); after
`failed_login_source_limit` failures from one address for any accounts, that address may not try
any. An account is never locked for everyone: five wrong secrets for `robot$acme+ci` sent from
elsewhere used to lock the CI robot out for 300 s (issue 22, finding 4); now they only lock out
the address that sent them. Guessing from many addresses is bounded by the process-wide hashing
budget (auth/passwords.py). Refusals are answered after `tarpit` seconds, so a closed-loop
flood of bad logins from one address runs at connections/tarpit per second instead of
thousands (finding 1). Kept in memory, per process: a restart forgets, which only ever favours
the legitimate user. Behind a proxy every client has the proxy's address (README).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

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


class LoginThrottle:
    """The two counters of the module docstring, consulted and charged together."""

    def __init__(
        self,
        limit: int,
        window: float,
        source_limit: int = 30,
        tarpit: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pair = FailureCounter(limit, window, clock)
        self.source = FailureCounter(source_limit, window, clock)
        self.tarpit = tarpit

    @staticmethod
    def _pair(source: str, account: str) -> str:
        return f"{source}\x00{account}"

    def retry_after(self, source: str, account: str) -> int | None:
        waits = [
            w
            for w in (self.pair.retry_after(self._pair(source, account)),
                      self.source.retry_after(source))
            if w is not None
        ]
        return max(waits) if waits else None

    def failed(self, source: str, account: str) -> None:
        self.pair.failed(self._pair(source, account))
        self.source.failed(source)

    def succeeded(self, source: str, account: str) -> None:
        # The source's count stays: one valid account must not launder guesses at others.
        self.pair.succeeded(self._pair(source, account))
