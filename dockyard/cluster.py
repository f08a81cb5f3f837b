"""The nodes of a cluster: who is alive, what each runs, and who holds each lease.

Every node records itself in the state store's `nodes` table (component "cluster") and renews
the row each heartbeat, on the database's clock; a node that stops is listed as gone after three
missed beats, and its row is removed when it shuts down cleanly. `dockyard cluster status`
reads the table and the leases: with several nodes on one PostgreSQL database it shows the
whole cluster, with the embedded store the nodes (processes) of this data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass

from dockyard.core.leases import Leases
from dockyard.core.sql import Database, DatabaseError
from registry.config import CLUSTER_ROLES, ClusterSettings, Config, ConfigError

from .state import describe_state, open_state

log = logging.getLogger("dockyard.cluster")

STEPS = [
    """
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        url TEXT NOT NULL,
        roles TEXT NOT NULL,
        pid BIGINT NOT NULL,
        version TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL
    )
    """
]
MISSED_BEATS = 3


def _version() -> str:
    try:
        return importlib.metadata.version("dockyard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


def roles_of(settings: ClusterSettings) -> frozenset[str]:
    raw = settings.roles
    names = [r.strip() for r in raw.split(",")] if isinstance(raw, str) else list(raw)
    unknown = sorted(set(names) - set(CLUSTER_ROLES))
    if unknown:
        raise ConfigError(
            f"[cluster] roles: unknown {', '.join(unknown)} (known: {', '.join(CLUSTER_ROLES)})"
        )
    return frozenset(names) | {"api"}


def node_name(settings: ClusterSettings) -> str:
    return settings.node_name or socket.gethostname()


@dataclass(frozen=True)
class NodeInfo:
    name: str
    id: str
    url: str
    roles: list[str]
    pid: int
    version: str
    up_for: float
    last_seen: float  # seconds ago
    alive: bool


class Node:
    """This process as a member of the cluster: its identity (also its lease owner name)."""

    def __init__(self, db: Database, settings: ClusterSettings, url: str) -> None:
        self.db = db
        self.settings = settings
        self.name = node_name(settings)
        self.roles = roles_of(settings)
        self.url = url
        # Unique per process: two processes of one node never share a lease.
        self.id = f"{self.name}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def runs(self, role: str) -> bool:
        return role in self.roles

    async def open(self) -> None:
        await self.db.migrate("cluster", STEPS)
        await self.beat(first=True)

    async def beat(self, first: bool = False) -> None:
        now = self.db.now_sql
        await self.db.execute(
            "INSERT INTO nodes (id, name, url, roles, pid, version, started_at, seen_at) "
            f"VALUES (?, ?, ?, ?, ?, ?, {now}, {now}) "
            f"ON CONFLICT (id) DO UPDATE SET seen_at = {now}",
            (self.id, self.name, self.url, ",".join(sorted(self.roles)), os.getpid(), VERSION),
        )
        if first:
            # Rows of nodes gone for a long time are noise in the status listing.
            await self.db.execute(
                f"DELETE FROM nodes WHERE seen_at < {now} - ?",
                (24 * 3600.0,),
            )

    async def leave(self) -> None:
        with contextlib.suppress(DatabaseError):
            await self.db.execute("DELETE FROM nodes WHERE id = ?", (self.id,))

    def lifecycle(self) -> Callable[[object], contextlib.AbstractAsyncContextManager[None]]:
        """An aiohttp cleanup context: join, beat, leave."""

        @contextlib.asynccontextmanager
        async def run(_: object) -> AsyncIterator[None]:
            await self.open()
            task = asyncio.create_task(self._heartbeat(), name="cluster-heartbeat")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await self.leave()

        return run

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self.beat()
            except DatabaseError as exc:  # an outage: readiness reports it; keep trying
                log.warning("heartbeat failed: %s", exc)


async def nodes(db: Database, heartbeat: float) -> list[NodeInfo]:
    now = db.now_sql
    rows = await db.fetchall(
        f"SELECT name, id, url, roles, pid, version, {now} - started_at, {now} - seen_at "
        "FROM nodes ORDER BY name, id"
    )
    return [
        NodeInfo(
            r[0],
            r[1],
            r[2],
            r[3].split(","),
            int(r[4]),
            r[5],
            float(r[6]),
            float(r[7]),
            float(r[7]) < MISSED_BEATS * heartbeat,
        )
        for r in rows
    ]


def register(sub: argparse._SubParsersAction, common: Callable, config_from: Callable) -> None:
    cluster = sub.add_parser("cluster", help="the nodes sharing this metadata store")
    commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    p = commands.add_parser("status", help="live nodes, their roles, and who holds each lease")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=lambda args: cmd_status(config_from(args), args))


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    async def work() -> tuple[list[NodeInfo], list[dict]]:
        db = await open_state(config)
        try:
            await db.migrate("cluster", STEPS)
            listed = await nodes(db, config.cluster.heartbeat_seconds)
            leases = await Leases(db, "dockyard-cli").open()
            held = [asdict(lease) for lease in await leases.all() if lease.expires_in > 0]
            return listed, held
        finally:
            await db.close()

    try:
        listed, held = asyncio.run(work())
    except DatabaseError as exc:
        print(f"dockyard: metadata store unavailable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"nodes": [asdict(n) for n in listed], "leases": held}, indent=2))
        return 0
    print(f"metadata: {describe_state(config)}")
    print(f"{'NODE':<24} {'STATE':<6} {'ROLES':<32} {'UP':>8} {'SEEN':>6}  URL")
    for n in listed:
        state = "alive" if n.alive else "gone"
        print(
            f"{n.name:<24} {state:<6} {','.join(n.roles):<32} {_ago(n.up_for):>8} "
            f"{_ago(n.last_seen):>6}  {n.url}"
        )
    print()
    print(f"{'LEASE':<24} {'HOLDER':<40} {'EXPIRES IN':>10}")
    for lease in held:
        print(f"{lease['name']:<24} {lease['owner']:<40} {lease['expires_in']:>9.1f}s")
    return 0


def _ago(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"
