"""The durable outbox: events and their deliveries, committed before the push is answered.

`EventOutbox.publish` writes the event and one delivery row per endpoint that wants it in one
SQLite transaction (synchronous=FULL), so once it returns the event survives a crash of the
process and of the machine. The dispatcher (dispatcher.py) delivers rows to HTTP endpoints; the
in-process subscription (subscription.py) feeds the launcher from the same table. The delivery log,
replay and stats below serve both the `dockyard events` CLI and the admin HTTP routes.

Several server processes may open the same data directory: every write is a short
`BEGIN IMMEDIATE` transaction and work is claimed with leases, never held in memory only.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from dockyard.core.envelope import rfc3339
from registry.events.config import EndpointConfig, NotificationSettings
from registry.events.envelope import build_event
from registry.events.model import RegistryEvent
from registry.events.schema import connect

if TYPE_CHECKING:
    from registry.events.dispatcher import Dispatcher
    from registry.events.subscription import Subscription

STATUSES = ("pending", "failed", "delivered", "dead")
OPEN_STATUSES = ("pending", "failed")


def events_db_path(data_dir: Path) -> Path:
    return data_dir / "events" / "events.db"


class Signal:
    """Wakes every current waiter at once (an asyncio.Event that re-arms itself)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)


class EventOutbox:
    """Open with `open_events(...)`; `start()` runs the dispatcher, `close()` stops it."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        settings: NotificationSettings,
        *,
        source_addr: str,
        instance_id: str,
    ) -> None:
        self._db = db
        self.settings = settings
        self.source_addr = source_addr
        self.instance_id = instance_id
        # Identifies this process in leases; a lease outlives its owner only until it expires.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = asyncio.Lock()  # one transaction at a time on the shared connection
        self.published = Signal()  # new work: an event, a replay, a finished delivery
        self.closed = False
        self._dispatcher: Dispatcher | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        settings: NotificationSettings,
        *,
        source_addr: str,
        instance_id: str,
    ) -> EventOutbox:
        db = await connect(events_db_path(data_dir))
        return cls(db, settings, source_addr=source_addr, instance_id=instance_id)

    async def start(self) -> None:
        """Start delivering to the configured endpoints (idempotent)."""
        from registry.events.dispatcher import Dispatcher

        if self._dispatcher is None:
            self._dispatcher = Dispatcher(self)
            await self._dispatcher.start()

    async def close(self, grace: float = 5.0) -> None:
        """Stop the dispatcher (deliveries in flight get `grace` seconds), then the database.

        Rows this process still held are released, so another process (or the next start)
        retries them at once instead of waiting for the lease to expire.
        """
        if self.closed:
            return
        self.closed = True
        self.published.notify()
        if self._dispatcher is not None:
            await self._dispatcher.close(grace)
            self._dispatcher = None
        with suppress(Exception):
            async with self.transaction() as db:
                await db.execute(
                    "UPDATE deliveries SET lease_until = 0, lease_owner = NULL"
                    " WHERE lease_owner = ?",
                    (self.owner,),
                )
                await db.execute(
                    "UPDATE subscribers SET lease_until = 0, lease_owner = NULL"
                    " WHERE lease_owner = ?",
                    (self.owner,),
                )
        await self._db.close()

    async def __aenter__(self) -> EventOutbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction on this outbox's connection (serialised within the process)."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with suppress(Exception):
                    await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            yield self._db

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, event: RegistryEvent) -> str:
        """Store `event` and its deliveries durably; return the event id.

        One transaction. Shielded: a client that disconnects while the registry awaits this
        cannot cancel a half-done commit.
        """
        return await asyncio.shield(self._publish(event))

    async def _publish(self, event: RegistryEvent) -> str:
        event_id = str(uuid.uuid4())
        now = time.time()
        body = build_event(
            event,
            event_id=event_id,
            timestamp=now,
            source_addr=self.source_addr,
            instance_id=self.instance_id,
        )
        endpoints = [e.name for e in self.settings.endpoints if e.matches(event)]
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT INTO events (id, created, action, kind, customer, repository, tag,"
                " digest, media_type, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event_id,
                    now,
                    event.action,
                    event.kind,
                    event.customer,
                    event.repository,
                    event.tag,
                    event.digest,
                    event.media_type,
                    json.dumps(body, separators=(",", ":")),
                ),
            )
            seq = cur.lastrowid
            if endpoints:
                await db.executemany(
                    "INSERT INTO deliveries (event_seq, endpoint, repository, status,"
                    " next_attempt, created, updated) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                    [(seq, name, event.repository, now, now, now) for name in endpoints],
                )
        self.published.notify()
        return event_id

    # -- subscription --------------------------------------------------------------------------

    def subscribe(self, name: str, *, start: str = "earliest") -> Subscription:
        """Every event, in publish order, from a durable cursor named `name`.

        Returns a `Subscription` (an `AsyncIterator[dict]` of envelopes `{"events": [event]}`).
        Asking for the next envelope acknowledges the previous one, so an event is
        acknowledged only after the consumer's loop body finished with it; `await sub.ack()`
        acknowledges early (before a `break`). `start` applies only when the name is new:
        "earliest" (every retained event) or "latest" (only events published from now on).
        """
        from registry.events.subscription import Subscription

        if start not in ("earliest", "latest"):
            raise ValueError("start must be 'earliest' or 'latest'")
        return Subscription(self, name, start=start)

    # -- delivery log and operations -------------------------------------------------------------

    async def list_deliveries(
        self,
        *,
        endpoint: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        repository: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Deliveries, newest event first, each with its event summary and last result."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        where, params = [], []
        for column, value in (
            ("d.endpoint", endpoint),
            ("d.status", status),
            ("e.id", event_id),
            ("e.repository", repository),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = (
            "SELECT d.*, e.id AS event_id, e.created AS event_created, e.action, e.kind,"
            " e.customer, e.tag, e.digest, e.media_type FROM deliveries d"
            " JOIN events e ON e.seq = d.event_seq"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY d.event_seq DESC, d.endpoint LIMIT ?"
        )
        async with self.reading() as db, db.execute(sql, (*params, max(1, limit))) as cur:
            rows = await cur.fetchall()
        return [_delivery_dict(row) for row in rows]

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        """The stored event, its deliveries and every attempt of each (the delivery log)."""
        async with self.reading() as db:
            async with db.execute("SELECT * FROM events WHERE id = ?", (event_id,)) as cur:
                event = await cur.fetchone()
            if event is None:
                return None
            async with db.execute(
                "SELECT d.*, ? AS event_id, ? AS event_created, ? AS action, ? AS kind,"
                " ? AS customer, ? AS tag, ? AS digest, ? AS media_type"
                " FROM deliveries d WHERE d.event_seq = ? ORDER BY d.endpoint",
                (
                    event["id"],
                    event["created"],
                    event["action"],
                    event["kind"],
                    event["customer"],
                    event["tag"],
                    event["digest"],
                    event["media_type"],
                    event["seq"],
                ),
            ) as cur:
                deliveries = [_delivery_dict(row) for row in await cur.fetchall()]
            for delivery in deliveries:
                async with db.execute(
                    "SELECT * FROM attempts WHERE delivery_id = ? ORDER BY id",
                    (delivery["delivery"],),
                ) as cur:
                    delivery["log"] = [_attempt_dict(row) for row in await cur.fetchall()]
        return {"event": json.loads(event["body"]), "kind": event["kind"], "deliveries": deliveries}

    async def replay_event(self, event_id: str, *, endpoint: str | None = None) -> int:
        """Deliver event `event_id` again (to `endpoint`, or to every endpoint it went to and
        every configured endpoint that wants it now). Returns the number of deliveries scheduled.
        Raises KeyError for an unknown event or endpoint."""
        targets = self._endpoints(endpoint)
        async with self.transaction() as db:
            async with db.execute("SELECT * FROM events WHERE id = ?", (event_id,)) as cur:
                event = await cur.fetchone()
            if event is None:
                raise KeyError(f"unknown event {event_id}")
            async with db.execute(
                "SELECT endpoint FROM deliveries WHERE event_seq = ?", (event["seq"],)
            ) as cur:
                existing = {row[0] for row in await cur.fetchall()}
            names = [
                e.name
                for e in targets
                if (endpoint is not None or e.name in existing or _wants(e, event))
                and not e.disabled
            ]
            count = await self._schedule(db, event, names)
        self.published.notify()
        return count

    async def replay_since(self, endpoint: str, since: float) -> int:
        """Deliver to `endpoint` again every event since `since` (unix time) that it wants,
        whatever happened to it before. Returns the number of deliveries scheduled."""
        (target,) = self._endpoints(endpoint)
        count = 0
        async with self.transaction() as db:
            async with db.execute(
                "SELECT * FROM events WHERE created >= ? ORDER BY seq", (since,)
            ) as cur:
                events = await cur.fetchall()
            for event in events:
                if _wants(target, event):
                    count += await self._schedule(db, event, [target.name])
        self.published.notify()
        return count

    def _endpoints(self, name: str | None) -> list[EndpointConfig]:
        if name is None:
            return list(self.settings.endpoints)
        endpoint = self.settings.endpoint(name)
        if endpoint is None:
            raise KeyError(f"unknown endpoint {name}")
        return [endpoint]

    @staticmethod
    async def _schedule(db: aiosqlite.Connection, event: aiosqlite.Row, names: list[str]) -> int:
        now = time.time()
        for name in names:
            # A row another process is delivering keeps its lease: it finishes, then this
            # fresh round (attempts reset, due now) follows.
            await db.execute(
                "INSERT INTO deliveries (event_seq, endpoint, repository, status, next_attempt,"
                " created, updated) VALUES (?, ?, ?, 'pending', ?, ?, ?)"
                " ON CONFLICT (event_seq, endpoint) DO UPDATE SET status = 'pending',"
                " attempts = 0, next_attempt = excluded.next_attempt, updated = excluded.updated",
                (event["seq"], name, event["repository"], now, now, now),
            )
        return len(names)

    async def stats(self) -> dict[str, Any]:
        """Queue depth, outcomes and failed attempts per endpoint; lag per subscriber."""
        now = time.time()
        endpoints: dict[str, dict[str, Any]] = {
            e.name: _empty_stats(configured=True) for e in self.settings.endpoints
        }
        async with self.reading() as db:
            async with db.execute("SELECT COUNT(*), MAX(seq) FROM events") as cur:
                total, max_seq = await cur.fetchone()  # type: ignore[misc]
            async with db.execute(
                "SELECT endpoint, status, COUNT(*), MIN(created) FROM deliveries"
                " GROUP BY endpoint, status"
            ) as cur:
                for name, status, count, oldest in await cur.fetchall():
                    entry = endpoints.setdefault(name, _empty_stats(configured=False))
                    entry[status] = count
                    if status in OPEN_STATUSES:
                        entry["queue_depth"] += count
                        age = max(0.0, now - oldest)
                        entry["oldest_open_seconds"] = max(entry["oldest_open_seconds"], age)
            async with db.execute(
                "SELECT d.endpoint, COUNT(*) FROM attempts a JOIN deliveries d"
                " ON d.id = a.delivery_id WHERE a.error IS NOT NULL GROUP BY d.endpoint"
            ) as cur:
                for name, count in await cur.fetchall():
                    endpoints.setdefault(name, _empty_stats(configured=False))
                    endpoints[name]["failed_attempts"] = count
            async with db.execute("SELECT name, cursor FROM subscribers") as cur:
                subs = await cur.fetchall()
            subscribers = {}
            for name, cursor in subs:
                async with db.execute(
                    "SELECT COUNT(*) FROM events WHERE seq > ?", (cursor,)
                ) as cur2:
                    (lag,) = await cur2.fetchone()  # type: ignore[misc]
                subscribers[name] = {"cursor": cursor, "lag": lag}
        return {
            "events": total,
            "last_seq": max_seq or 0,
            "endpoints": endpoints,
            "subscribers": subscribers,
        }

    async def prune(self, older_than: float | None = None) -> int:
        """Delete events (with their deliveries and log) published before `older_than`."""
        cutoff = time.time() - self.settings.retention if older_than is None else older_than
        async with self.transaction() as db:
            cur = await db.execute("DELETE FROM events WHERE created < ?", (cutoff,))
            return cur.rowcount


def _wants(endpoint: EndpointConfig, event: aiosqlite.Row) -> bool:
    return endpoint.wants(
        action=event["action"],
        repository=event["repository"],
        tag=event["tag"],
        media_type=event["media_type"],
    )


def _empty_stats(*, configured: bool) -> dict[str, Any]:
    return {
        "configured": configured,
        "pending": 0,
        "failed": 0,
        "delivered": 0,
        "dead": 0,
        "queue_depth": 0,
        "oldest_open_seconds": 0.0,
        "failed_attempts": 0,
    }


def _delivery_dict(row: aiosqlite.Row) -> dict[str, Any]:
    return {
        "delivery": row["id"],
        "event_id": row["event_id"],
        "endpoint": row["endpoint"],
        "status": row["status"],
        "attempts": row["attempts"],
        "next_attempt": rfc3339(row["next_attempt"]) if row["status"] in OPEN_STATUSES else None,
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "updated": rfc3339(row["updated"]),
        "event_time": rfc3339(row["event_created"]),
        "action": row["action"],
        "kind": row["kind"],
        "customer": row["customer"],
        "repository": row["repository"],
        "tag": row["tag"],
        "digest": row["digest"],
    }


def _attempt_dict(row: aiosqlite.Row) -> dict[str, Any]:
    return {
        "time": rfc3339(row["started"]),
        "status_code": row["status_code"],
        "error": row["error"],
        "duration": round(row["duration"], 6),
    }
