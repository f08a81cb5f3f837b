"""In-process subscription: the launcher reads the outbox through a durable, named cursor.

Why a cursor over the events table rather than an internal "endpoint" with a Python callable:
the events table already is an ordered, durable log, so a cursor needs one row per subscriber and
no copy of each event; a consumer that was down (or not yet started) catches up from where it
acknowledged, and a slow consumer never slows HTTP deliveries (nor the other way round).

Semantics: at least once, in publish order. Requesting the next envelope acknowledges the previous
one (the consumer's loop body finished with it); an exception in the loop body leaves it
unacknowledged, so it is yielded again by the next subscription under that name. With several
server processes, a lease on the subscriber row lets only one of them consume a name at a time;
the others wait and take over if it stops renewing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.events.outbox import EventOutbox

LEASE = 30.0  # seconds; renewed on every fetch and acknowledgement
BATCH = 100


class Subscription:
    def __init__(self, outbox: EventOutbox, name: str, *, start: str) -> None:
        if not name:
            raise ValueError("a subscription needs a name")
        self._outbox = outbox
        self.name = name
        self._start = start
        self._owner = f"{outbox.owner}:{uuid.uuid4().hex[:8]}"
        self._buffer: deque[tuple[int, str]] = deque()
        self._unacked: int | None = None
        self._closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._unacked is not None:
            await self.ack()
        while True:
            if self._closed or self._outbox.closed:
                raise StopAsyncIteration
            if not self._buffer:
                rows = await self._fetch()
                if rows is None or not rows:
                    # Nothing new (or another process holds this name): wait for a publish here,
                    # or poll for one made by another process.
                    await self._outbox.published.wait(self._outbox.settings.poll_interval)
                    continue
                self._buffer.extend(rows)
            seq, body = self._buffer.popleft()
            self._unacked = seq
            return {"events": [json.loads(body)]}

    async def ack(self) -> None:
        """Acknowledge the envelope last yielded (idempotent)."""
        seq, self._unacked = self._unacked, None
        if seq is None or self._outbox.closed:
            return
        now = time.time()
        async with self._outbox.transaction() as db:
            cur = await db.execute(
                "UPDATE subscribers SET cursor = MAX(cursor, ?), lease_until = ?, updated = ?"
                " WHERE name = ? AND lease_owner = ?",
                (seq, now + LEASE, now, self.name, self._owner),
            )
            if cur.rowcount != 1:
                # Our lease lapsed and another process took the name over: it has (or will)
                # see these events itself; drop what we prefetched.
                self._buffer.clear()

    async def aclose(self) -> None:
        """Stop consuming; the last envelope stays unacknowledged unless `ack()` was called."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if self._outbox.closed:
            return
        async with self._outbox.transaction() as db:
            await db.execute(
                "UPDATE subscribers SET lease_until = 0, lease_owner = NULL"
                " WHERE name = ? AND lease_owner = ?",
                (self.name, self._owner),
            )

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _fetch(self) -> list[tuple[int, str]] | None:
        now = time.time()
        async with self._outbox.transaction() as db:
            if self._start == "latest":
                initial = "(SELECT COALESCE(MAX(seq), 0) FROM events)"
            else:
                initial = "0"
            await db.execute(
                "INSERT OR IGNORE INTO subscribers (name, cursor, updated)"
                f" VALUES (?, {initial}, ?)",
                (self.name, now),
            )
            cur = await db.execute(
                "UPDATE subscribers SET lease_owner = ?, lease_until = ?"
                " WHERE name = ? AND (lease_owner = ? OR lease_until <= ?)",
                (self._owner, now + LEASE, self.name, self._owner, now),
            )
            if cur.rowcount != 1:
                return None
            async with db.execute(
                "SELECT seq, body FROM events WHERE seq >"
                " (SELECT cursor FROM subscribers WHERE name = ?) ORDER BY seq LIMIT ?",
                (self.name, BATCH),
            ) as rows_cur:
                return [(row[0], row[1]) for row in await rows_cur.fetchall()]
