"""Leases in the state store: one holder of a named role across every node, with failover.

A lease is a row (name, owner, expires_at) whose expiry is measured on the database server's
clock, so nodes with skewed clocks still agree. Taking it is one upsert that succeeds only when
the row is free, expired, or already ours; holding it is renewing it well before it expires.
A holder that cannot renew in time (crashed, partitioned from the database) stops its work
before the lease can pass to another node: `Singleton` cancels the work once the lease's
remaining time falls under a safety margin, and another node takes over after expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .sql import Database, DatabaseError

log = logging.getLogger("dockyard.leases")

STEPS = [
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        acquired_at DOUBLE PRECISION NOT NULL
    )
    """
]


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    owner: str
    expires_in: float
    held_for: float


class Leases:
    def __init__(self, db: Database, owner: str) -> None:
        self.db = db
        self.owner = owner

    async def open(self) -> Leases:
        await self.db.migrate("leases", STEPS)
        return self

    async def acquire(self, name: str, ttl: float) -> bool:
        """Take or renew `name` for `ttl` seconds; False while another owner holds it."""
        now = self.db.now_sql
        row = await self._upsert(name, ttl, now)
        return row == self.owner

    async def _upsert(self, name: str, ttl: float, now: str) -> str | None:
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO leases (name, owner, expires_at, acquired_at) "
                f"VALUES (?, ?, {now} + ?, {now}) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                "expires_at = excluded.expires_at, acquired_at = CASE WHEN leases.owner = "
                "excluded.owner THEN leases.acquired_at ELSE excluded.acquired_at END "
                f"WHERE leases.owner = excluded.owner OR leases.expires_at < {now}",
                (name, self.owner, float(ttl)),
            )
            holder = await tx.fetchval("SELECT owner FROM leases WHERE name = ?", (name,))
        return None if holder is None else str(holder)

    async def release(self, name: str) -> None:
        await self.db.execute(
            "DELETE FROM leases WHERE name = ? AND owner = ?", (name, self.owner)
        )

    async def all(self) -> list[LeaseInfo]:
        now = self.db.now_sql
        rows = await self.db.fetchall(
            f"SELECT name, owner, expires_at - {now}, {now} - acquired_at FROM leases "
            "ORDER BY name"
        )
        return [LeaseInfo(r[0], r[1], float(r[2]), float(r[3])) for r in rows]


class Singleton:
    """Run `work` on exactly one node at a time: the holder of lease `name`.

    `work` is started when the lease is taken and cancelled when it is lost or when renewals
    have failed for longer than `ttl - margin`; it is restarted if it ends while the lease is
    held. `ttl` bounds failover: another node takes over at most `ttl + interval` after the
    holder stopped renewing.
    """

    def __init__(
        self,
        leases: Leases,
        name: str,
        work: Callable[[], Awaitable[None]],
        *,
        ttl: float = 15.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.leases = leases
        self.name = name
        self.work = work
        self.ttl = ttl
        self.interval = ttl / 3
        self.margin = ttl / 3
        self.on_change = on_change
        self.held = False
        self._task: asyncio.Task[None] | None = None
        self._work: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stop_work()
        if self.held:
            with contextlib.suppress(DatabaseError, OSError):
                await self.leases.release(self.name)
            self._set(False)

    def _set(self, held: bool) -> None:
        if held != self.held:
            self.held = held
            log.info(
                "%s lease %s %s", self.name, self.leases.owner, "taken" if held else "given up",
                extra={"event": "lease", "lease": self.name, "held": held},
            )
            if self.on_change:
                self.on_change(held)

    async def _stop_work(self) -> None:
        work, self._work = self._work, None
        if work is not None:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work

    async def _run(self) -> None:
        valid_until = 0.0
        while True:
            started = time.monotonic()
            try:
                got = await self.leases.acquire(self.name, self.ttl)
            except (DatabaseError, OSError) as exc:
                log.warning("lease %s: renewal failed: %s", self.name, exc)
                got = None
            if got:
                valid_until = started + self.ttl
                self._set(True)
                if self._work is None or self._work.done():
                    self._work = asyncio.create_task(self._guarded(), name=self.name)
            elif got is False or time.monotonic() > valid_until - self.margin:
                await self._stop_work()
                self._set(False)
            await asyncio.sleep(self.interval)

    async def _guarded(self) -> None:
        try:
            await self.work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed while holding its lease; restarting", self.name)
            await asyncio.sleep(1)
