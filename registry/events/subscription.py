"""In-process subscription: the launcher reads the outbox through a durable, named cursor.

Why a cursor over the events table rather than an internal "endpoint" with a Python callable:
the events table already is an ordered, durable log, so a cursor needs one row per subscriber and
no copy of each event; a consumer that was down (or not yet started) catches up from where it
acknowledged, and a slow consumer never slows HTTP deliveries (nor the other way round).

Semantics: at least once, in publish order. Requesting the next envelope acknowledges the previous
one (the consumer's loop body finished with it); an exception in the loop body leaves it
unacknowledged, so it is yielded again by the next subscription under that name. With several
nodes, a lease on the subscriber row lets only one of them consume a name at a time; the others
wait and take over if it stops renewing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from dockyard.core.sql import Database
from registry.events.config import NotificationSettings
from registry.events.signal import Signal

LEASE = 30.0  # seconds; renewed on every fetch and acknowledgement
BATCH = 100


class Subscription:
    def __init__(
        self,
        db: Database,
        settings: NotificationSettings,
        name: str,
        *,
        owner: str,
        signal: Signal,
        start: str,
        is_closed: Callable[[], bool],
    ) -> None:
        if not name:
            raise ValueError("a subscription needs a name")
        self._db = db
        self._settings = settings
        self._signal = signal
        self._outbox_closed = is_closed
        self.name = name
        self._start = start
        self._owner = f"{owner}:{uuid.uuid4().hex[:8]}"
        self._buffer: deque[tuple[int, str]] = deque()
        self._unacked: int | None = None
        self._closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._unacked is not None:
            await self.ack()
        while True:
            if self._closed or self._outbox_closed():
                raise StopAsyncIteration
            if not self._buffer:
                rows = await self._fetch()
                if not rows:
                    # Nothing new (or another node holds this name): wait for a publish here,
                    # or poll for one made elsewhere.
                    await self._signal.wait(self._settings.poll_interval)
                    continue
                self._buffer.extend(rows)
            seq, body = self._buffer.popleft()
            self._unacked = seq
            return {"events": [json.loads(body)]}

    async def ack(self) -> None:
        """Acknowledge the envelope last yielded (idempotent)."""
        seq, self._unacked = self._unacked, None
        if seq is None or self._outbox_closed():
            return
        now = time.time()
        changed = await self._db.execute(
            "UPDATE subscribers SET cursor = CASE WHEN cursor > ? THEN cursor ELSE ? END,"
            " lease_until = ?, updated = ? WHERE name = ? AND lease_owner = ?",
            (seq, seq, now + LEASE, now, self.name, self._owner),
        )
        if changed != 1:
            # Our lease lapsed and another node took the name over: it has (or will) see
            # these events itself; drop what we prefetched.
            self._buffer.clear()

    async def aclose(self) -> None:
        """Stop consuming; the last envelope stays unacknowledged unless `ack()` was called."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if self._outbox_closed():
            return
        await self._db.execute(
            "UPDATE subscribers SET lease_until = 0, lease_owner = NULL"
            " WHERE name = ? AND lease_owner = ?",
            (self.name, self._owner),
        )

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _fetch(self) -> list[tuple[int, str]]:
        now = time.time()
        async with self._db.transaction() as tx:
            if self._start == "latest":
                initial = "(SELECT COALESCE(MAX(seq), 0) FROM events)"
            else:
                initial = "0"
            await tx.execute(
                "INSERT INTO subscribers (name, cursor, updated)"
                f" VALUES (?, {initial}, ?) ON CONFLICT (name) DO NOTHING",
                (self.name, now),
            )
            changed = await tx.execute(
                "UPDATE subscribers SET lease_owner = ?, lease_until = ?"
                " WHERE name = ? AND (lease_owner = ? OR lease_until <= ?)",
                (self._owner, now + LEASE, self.name, self._owner, now),
            )
            if changed != 1:
                return []
            rows = await tx.fetchall(
                "SELECT seq, body FROM events WHERE seq >"
                " (SELECT cursor FROM subscribers WHERE name = ?) ORDER BY seq LIMIT ?",
                (self.name, BATCH),
            )
        return [(int(row[0]), row[1]) for row in rows]
