"""Failed-login throttling per account name: after `limit` failures within `window` seconds the
account is refused (429) until the oldest failure leaves the window. Kept in memory, per process:
a restart forgets, which only ever favours the legitimate user."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_TRACKED = 100_000  # names kept; a spray of random names cannot grow memory without bound


class LoginThrottle:
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
