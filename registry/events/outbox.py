"""The durable outbox: events and their deliveries, committed before the push is answered.

`EventOutbox.add(tx, event)` writes the event and one delivery row per endpoint that wants it
inside the caller's transaction — the registry's own, so the manifest change and its event are
committed together or not at all (a transactional outbox). `publish(event)` does the same in a
transaction of its own, for events that report no metadata change (the launcher's deployment
states). The dispatcher (dispatcher.py) delivers rows to HTTP endpoints; a subscription
(subscription.py) feeds the launcher from the same table. The delivery log, replay and stats
below serve both the `dockyard events` CLI and the admin HTTP routes.

Several nodes share one database: every write is a short transaction and work is claimed with
leases in the rows, never held in memory only.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from dockyard.core.envelope import rfc3339
from dockyard.core.sql import Database, Row, Transaction, open_database
from registry.events.config import EndpointConfig, NotificationSettings
from registry.events.dispatcher import Dispatcher
from registry.events.envelope import build_event
from registry.events.model import RegistryEvent
from registry.events.schema import STEPS
from registry.events.signal import Signal
from registry.events.subscription import Subscription

STATUSES = ("pending", "failed", "delivered", "dead")
OPEN_STATUSES = ("pending", "failed")


class EventOutbox:
    """Open with `open_events(...)`; `start()` runs the dispatcher, `close()` stops it."""

    def __init__(
        self,
        db: Database,
        settings: NotificationSettings,
        *,
        source_addr: str,
        instance_id: str,
        owns_db: bool = False,
    ) -> None:
        self.db = db
        self.settings = settings
        self.source_addr = source_addr
        self.instance_id = instance_id
        self._owns_db = owns_db
        # Identifies this process in leases; a lease outlives its owner only until it expires.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.published = Signal()  # new work: an event, a replay, a finished delivery
        self.closed = False
        self._dispatcher: Dispatcher | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        target: Database | Path,
        settings: NotificationSettings,
        *,
        source_addr: str,
        instance_id: str,
    ) -> EventOutbox:
        """On a Database the caller owns, or (a Path) on the embedded one of that data dir."""
        owns = not isinstance(target, Database)
        db = await open_database(None, Path(target)) if not isinstance(target, Database) else target
        await db.migrate("events", STEPS)
        return cls(db, settings, source_addr=source_addr, instance_id=instance_id, owns_db=owns)

    async def start(self) -> None:
        """Start delivering to the configured endpoints (idempotent)."""
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(
                self.db, self.settings, self.owner, self.published, prune=self.prune
            )
            await self._dispatcher.start()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop delivering (deliveries in flight get `grace` seconds); the outbox stays open.
        Rows this process still held are released, so another node retries them at once."""
        if self._dispatcher is not None:
            await self._dispatcher.close(grace)
            self._dispatcher = None
        with suppress(Exception):
            await self.db.execute(
                "UPDATE deliveries SET lease_until = 0, lease_owner = NULL WHERE lease_owner = ?",
                (self.owner,),
            )

    async def close(self, grace: float = 5.0) -> None:
        if self.closed:
            return
        self.closed = True
        self.published.notify()
        await self.stop(grace)
        with suppress(Exception):
            await self.db.execute(
                "UPDATE subscribers SET lease_until = 0, lease_owner = NULL WHERE lease_owner = ?",
                (self.owner,),
            )
        if self._owns_db:
            await self.db.close()

    async def __aenter__(self) -> EventOutbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- publishing ----------------------------------------------------------------------------

    async def add(self, tx: Transaction, event: RegistryEvent) -> str:
        """Write `event` and its deliveries inside `tx`; return the event id. Call `notify()`
        once the transaction committed, so the dispatcher here starts at once."""
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
        # Last in the caller's transaction: the clock row is held from here to the commit.
        await tx.execute("UPDATE event_clock SET seq = seq + 1 WHERE id = 1")
        seq = int(await tx.fetchval("SELECT seq FROM event_clock WHERE id = 1"))
        await tx.execute(
            "INSERT INTO events (seq, id, created, action, kind, customer, repository, tag,"
            " digest, media_type, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
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
        if endpoints:
            await tx.executemany(
                "INSERT INTO deliveries (event_seq, endpoint, repository, status,"
                " next_attempt, created, updated) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                [(seq, name, event.repository, now, now, now) for name in endpoints],
            )
        return event_id

    def notify(self) -> None:
        self.published.notify()

    async def publish(self, event: RegistryEvent) -> str:
        """Store `event` and its deliveries durably in a transaction of its own.

        Shielded: a client that disconnects while the caller awaits this cannot cancel a
        half-done commit.
        """
        return await asyncio.shield(self._publish(event))

    async def _publish(self, event: RegistryEvent) -> str:
        async with self.db.transaction() as tx:
            event_id = await self.add(tx, event)
        self.notify()
        return event_id

    # -- subscription --------------------------------------------------------------------------

    def subscribe(self, name: str, *, start: str = "earliest") -> Subscription:
        """Every event, in publish order, from a durable cursor named `name` (subscription.py)."""
        if start not in ("earliest", "latest"):
            raise ValueError("start must be 'earliest' or 'latest'")
        return Subscription(
            self.db, self.settings, name, owner=self.owner, signal=self.published, start=start,
            is_closed=lambda: self.closed,
        )

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
            f"SELECT {_DELIVERY_COLUMNS}, e.id AS event_id, e.created AS event_created, e.action,"
            " e.kind, e.customer, e.tag, e.digest FROM deliveries d"
            " JOIN events e ON e.seq = d.event_seq"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY d.event_seq DESC, d.endpoint LIMIT ?"
        )
        rows = await self.db.fetchall(sql, (*params, max(1, limit)))
        return [_delivery_dict(row) for row in rows]

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        """The stored event, its deliveries and every attempt of each (the delivery log)."""
        event = await self.db.fetchone(
            "SELECT seq, id, created, action, kind, customer, tag, digest, body FROM events"
            " WHERE id = ?",
            (event_id,),
        )
        if event is None:
            return None
        rows = await self.db.fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d WHERE d.event_seq = ?"
            " ORDER BY d.endpoint",
            (event["seq"],),
        )
        deliveries = []
        for row in rows:
            delivery = _delivery_dict(row, event)
            attempts = await self.db.fetchall(
                "SELECT started, status_code, error, duration FROM attempts"
                " WHERE delivery_id = ? ORDER BY id",
                (row["id"],),
            )
            delivery["log"] = [_attempt_dict(a) for a in attempts]
            deliveries.append(delivery)
        return {"event": json.loads(event["body"]), "kind": event["kind"], "deliveries": deliveries}

    async def replay_event(self, event_id: str, *, endpoint: str | None = None) -> int:
        """Deliver event `event_id` again (to `endpoint`, or to every endpoint it went to and
        every configured endpoint that wants it now). Returns the number of deliveries scheduled.
        Raises KeyError for an unknown event or endpoint."""
        targets = self._endpoints(endpoint)
        async with self.db.transaction() as tx:
            event = await tx.fetchone(
                "SELECT seq, action, repository, tag, media_type FROM events WHERE id = ?",
                (event_id,),
            )
            if event is None:
                raise KeyError(f"unknown event {event_id}")
            existing = {
                row[0]
                for row in await tx.fetchall(
                    "SELECT endpoint FROM deliveries WHERE event_seq = ?", (event["seq"],)
                )
            }
            names = [
                e.name
                for e in targets
                if (endpoint is not None or e.name in existing or _wants(e, event))
                and not e.disabled
            ]
            count = await _schedule(tx, event, names)
        self.notify()
        return count

    async def replay_since(self, endpoint: str, since: float) -> int:
        """Deliver to `endpoint` again every event since `since` (unix time) that it wants,
        whatever happened to it before. Returns the number of deliveries scheduled."""
        (target,) = self._endpoints(endpoint)
        count = 0
        async with self.db.transaction() as tx:
            events = await tx.fetchall(
                "SELECT seq, action, repository, tag, media_type FROM events WHERE created >= ?"
                " ORDER BY seq",
                (since,),
            )
            for event in events:
                if _wants(target, event):
                    count += await _schedule(tx, event, [target.name])
        self.notify()
        return count

    def _endpoints(self, name: str | None) -> list[EndpointConfig]:
        if name is None:
            return list(self.settings.endpoints)
        endpoint = self.settings.endpoint(name)
        if endpoint is None:
            raise KeyError(f"unknown endpoint {name}")
        return [endpoint]

    async def stats(self) -> dict[str, Any]:
        """Queue depth, outcomes and failed attempts per endpoint; lag per subscriber."""
        now = time.time()
        endpoints: dict[str, dict[str, Any]] = {
            e.name: _empty_stats(configured=True) for e in self.settings.endpoints
        }
        row = await self.db.fetchone("SELECT COUNT(*), MAX(seq) FROM events")
        total, max_seq = (row[0], row[1]) if row else (0, 0)
        for name, status, count, oldest in await self.db.fetchall(
            "SELECT endpoint, status, COUNT(*), MIN(created) FROM deliveries"
            " GROUP BY endpoint, status"
        ):
            entry = endpoints.setdefault(name, _empty_stats(configured=False))
            entry[status] = int(count)
            if status in OPEN_STATUSES:
                entry["queue_depth"] += int(count)
                age = max(0.0, now - float(oldest))
                entry["oldest_open_seconds"] = max(entry["oldest_open_seconds"], age)
        for name, count in await self.db.fetchall(
            "SELECT d.endpoint, COUNT(*) FROM attempts a JOIN deliveries d"
            " ON d.id = a.delivery_id WHERE a.error IS NOT NULL GROUP BY d.endpoint"
        ):
            endpoints.setdefault(name, _empty_stats(configured=False))
            endpoints[name]["failed_attempts"] = int(count)
        subscribers = {}
        for name, cursor in await self.db.fetchall("SELECT name, cursor FROM subscribers"):
            lag = await self.db.fetchval("SELECT COUNT(*) FROM events WHERE seq > ?", (cursor,))
            subscribers[name] = {"cursor": int(cursor), "lag": int(lag)}
        return {
            "events": int(total),
            "last_seq": int(max_seq or 0),
            "endpoints": endpoints,
            "subscribers": subscribers,
        }

    async def prune(self, older_than: float | None = None) -> int:
        """Delete events (with their deliveries and log) published before `older_than`."""
        cutoff = time.time() - self.settings.retention if older_than is None else older_than
        async with self.db.transaction() as tx:
            # Children first: SQLite enforces ON DELETE CASCADE only with foreign_keys on,
            # PostgreSQL always; deleting explicitly makes both engines do the same work.
            await tx.execute(
                "DELETE FROM attempts WHERE delivery_id IN (SELECT d.id FROM deliveries d"
                " JOIN events e ON e.seq = d.event_seq WHERE e.created < ?)",
                (cutoff,),
            )
            await tx.execute(
                "DELETE FROM deliveries WHERE event_seq IN (SELECT seq FROM events"
                " WHERE created < ?)",
                (cutoff,),
            )
            return await tx.execute("DELETE FROM events WHERE created < ?", (cutoff,))


_DELIVERY_COLUMNS = (
    "d.id, d.endpoint, d.status, d.attempts, d.next_attempt, d.last_status, d.last_error,"
    " d.updated, d.repository"
)


async def _schedule(tx: Transaction, event: Row, names: list[str]) -> int:
    now = time.time()
    for name in names:
        # A row another process is delivering keeps its lease: it finishes, then this
        # fresh round (attempts reset, due now) follows.
        await tx.execute(
            "INSERT INTO deliveries (event_seq, endpoint, repository, status, next_attempt,"
            " created, updated) VALUES (?, ?, ?, 'pending', ?, ?, ?)"
            " ON CONFLICT (event_seq, endpoint) DO UPDATE SET status = 'pending',"
            " attempts = 0, next_attempt = excluded.next_attempt, updated = excluded.updated",
            (event["seq"], name, event["repository"], now, now, now),
        )
    return len(names)


def _wants(endpoint: EndpointConfig, event: Row) -> bool:
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


def _delivery_dict(row: Row, event: Row | None = None) -> dict[str, Any]:
    src = event if event is not None else row
    return {
        "delivery": row["id"],
        "event_id": src["id"] if event is not None else row["event_id"],
        "endpoint": row["endpoint"],
        "status": row["status"],
        "attempts": row["attempts"],
        "next_attempt": rfc3339(row["next_attempt"]) if row["status"] in OPEN_STATUSES else None,
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "updated": rfc3339(row["updated"]),
        "event_time": rfc3339(src["created"] if event is not None else row["event_created"]),
        "action": src["action"],
        "kind": src["kind"],
        "customer": src["customer"],
        "repository": row["repository"],
        "tag": src["tag"],
        "digest": src["digest"],
    }


def _attempt_dict(row: Row) -> dict[str, Any]:
    return {
        "time": rfc3339(row["started"]),
        "status_code": row["status_code"],
        "error": row["error"],
        "duration": round(float(row["duration"]), 6),
    }
