"""The launcher's state in SQLite (aiosqlite, WAL): one connection, versioned migrations.

The database is the source of truth for what *should* run; the engines' labelled containers are
the truth about what *does* run, and reconciliation compares the two. A task row exists before
its container is created, so the row is also the reservation that placement counts: resources are
never promised twice, even across a crash.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sqlite3
import time
import uuid
from collections.abc import Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from launcher.errors import Conflict, NotFound

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE task_definitions (
        family TEXT NOT NULL,
        revision INTEGER NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'ACTIVE',
        created_at REAL NOT NULL,
        PRIMARY KEY (family, revision)
    );
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        endpoint TEXT NOT NULL,
        type TEXT,
        cpu INTEGER NOT NULL,
        memory INTEGER NOT NULL,
        attributes TEXT NOT NULL,
        network TEXT NOT NULL,
        status TEXT NOT NULL,
        origin TEXT NOT NULL,
        provider TEXT,
        provider_state TEXT,
        pool INTEGER NOT NULL DEFAULT 0,
        reachable INTEGER NOT NULL DEFAULT 1,
        idle_since REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE services (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        current_deployment TEXT,
        status TEXT NOT NULL DEFAULT 'ACTIVE',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT,
        digest TEXT NOT NULL,
        registry TEXT,
        family TEXT NOT NULL,
        revision INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        rollback TEXT,
        rollback_to TEXT,
        trigger TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX deployments_by_service ON deployments (service, created_at);
    CREATE INDEX deployments_by_state ON deployments (state);
    CREATE TABLE deployment_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment_id TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        at REAL NOT NULL
    );
    CREATE INDEX deployment_events_by_deployment ON deployment_events (deployment_id, seq);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        service TEXT,
        deployment_id TEXT,
        instance_id TEXT NOT NULL,
        family TEXT NOT NULL,
        revision INTEGER NOT NULL,
        image TEXT NOT NULL,
        cpu INTEGER NOT NULL,
        memory INTEGER NOT NULL,
        ports TEXT NOT NULL,
        containers TEXT NOT NULL,
        status TEXT NOT NULL,
        health TEXT NOT NULL DEFAULT 'UNKNOWN',
        reason TEXT,
        logs TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        healthy_at REAL,
        stopped_at REAL
    );
    CREATE INDEX tasks_by_status ON tasks (status);
    CREATE INDEX tasks_by_service ON tasks (service, status);
    CREATE TABLE seen_events (
        id TEXT PRIMARY KEY,
        at REAL NOT NULL
    );
    """,
]

ACTIVE_TASK = "status != 'STOPPED'"
TERMINAL_STATES = ("SUCCESSFUL", "FAILED", "ROLLED_BACK")


def new_id() -> str:
    return uuid.uuid4().hex


def _loads(value: str | None) -> Any:
    return json.loads(value) if value else None


class Store:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA busy_timeout=10000")
        for attempt in range(100):  # concurrent creation can be refused without waiting
            try:
                await self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                await asyncio.sleep(0.01 * min(attempt + 1, 10))
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "store is not open"
        return self._db

    async def _migrate(self) -> None:
        async with self.transaction() as db:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            row = await (await db.execute("SELECT max(version) FROM schema_version")).fetchone()
            current = row[0] or 0
            for version, script in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in script.split(";"):
                    if statement.strip():
                        await db.execute(statement)
                await db.execute("INSERT INTO schema_version VALUES (?)", (version,))

    @asynccontextmanager
    async def transaction(self):  # type: ignore[no-untyped-def]
        """Serialize writers in this process; BEGIN IMMEDIATE guards against other processes."""
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self.db.execute(sql, tuple(args)) as cur:
            return list(await cur.fetchall())

    async def _one(self, sql: str, args: Iterable[Any] = ()) -> aiosqlite.Row | None:
        async with self.db.execute(sql, tuple(args)) as cur:
            return await cur.fetchone()

    # --- task definitions -------------------------------------------------------------------

    async def register_task_definition(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.transaction() as db:
            row = await (
                await db.execute(
                    "SELECT max(revision) FROM task_definitions WHERE family = ?", (body["family"],)
                )
            ).fetchone()
            revision = (row[0] or 0) + 1
            stored = {**body, "revision": revision}
            await db.execute(
                "INSERT INTO task_definitions (family, revision, body, created_at)"
                " VALUES (?, ?, ?, ?)",
                (body["family"], revision, json.dumps(stored), time.time()),
            )
        return {**stored, "status": "ACTIVE"}

    async def get_task_definition(self, family: str, revision: int | None) -> dict[str, Any]:
        if revision is None:
            row = await self._one(
                "SELECT * FROM task_definitions WHERE family = ? AND status = 'ACTIVE'"
                " ORDER BY revision DESC LIMIT 1",
                (family,),
            )
        else:
            row = await self._one(
                "SELECT * FROM task_definitions WHERE family = ? AND revision = ?",
                (family, revision),
            )
        if row is None:
            what = f"{family}:{revision}" if revision else f"{family} (no active revision)"
            raise NotFound(f"task definition {what} not found")
        return _task_definition(row)

    async def list_task_definitions(self, family: str | None = None) -> list[dict[str, Any]]:
        if family:
            rows = await self._all(
                "SELECT * FROM task_definitions WHERE family = ? ORDER BY revision", (family,)
            )
        else:
            rows = await self._all("SELECT * FROM task_definitions ORDER BY family, revision")
        return [_task_definition(r) for r in rows]

    async def deregister_task_definition(self, family: str, revision: int) -> dict[str, Any]:
        async with self.transaction() as db:
            cur = await db.execute(
                "UPDATE task_definitions SET status = 'INACTIVE' WHERE family = ? AND revision = ?",
                (family, revision),
            )
            if cur.rowcount == 0:
                raise NotFound(f"task definition {family}:{revision} not found")
        return await self.get_task_definition(family, revision)

    # --- instances --------------------------------------------------------------------------

    async def upsert_instance(self, inst: dict[str, Any]) -> dict[str, Any]:
        """Insert an instance, or update the one with the same name (config reloads)."""
        now = time.time()
        async with self.transaction() as db:
            row = await (
                await db.execute("SELECT id FROM instances WHERE name = ?", (inst["name"],))
            ).fetchone()
            if row is None:
                inst_id = inst.get("id") or new_id()
                await db.execute(
                    "INSERT INTO instances (id, name, endpoint, type, cpu, memory, attributes,"
                    " network, status, origin, provider, provider_state, pool, idle_since,"
                    " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        inst_id, inst["name"], inst["endpoint"], inst.get("type"), inst["cpu"],
                        inst["memory"], json.dumps(inst.get("attributes") or {}),
                        inst["network"], inst.get("status", "ACTIVE"), inst["origin"],
                        inst.get("provider"), json.dumps(inst.get("provider_state") or {}),
                        int(inst.get("pool", 0)), now, now, now,
                    ),
                )
            else:
                inst_id = row[0]
                await db.execute(
                    "UPDATE instances SET endpoint = ?, type = ?, cpu = ?, memory = ?,"
                    " attributes = ?, network = ?, updated_at = ? WHERE id = ?",
                    (
                        inst["endpoint"], inst.get("type"), inst["cpu"], inst["memory"],
                        json.dumps(inst.get("attributes") or {}), inst["network"], now, inst_id,
                    ),
                )
        return await self.get_instance(inst_id)

    async def get_instance(self, ident: str) -> dict[str, Any]:
        row = await self._one("SELECT * FROM instances WHERE id = ? OR name = ?", (ident, ident))
        if row is None:
            raise NotFound(f"instance {ident} not found")
        return _instance(row)

    async def list_instances(self) -> list[dict[str, Any]]:
        return [_instance(r) for r in await self._all("SELECT * FROM instances ORDER BY name")]

    async def update_instance(self, inst_id: str, **fields: Any) -> dict[str, Any]:
        if not fields:
            return await self.get_instance(inst_id)
        encoded = {
            k: json.dumps(v) if k in ("attributes", "provider_state") else v
            for k, v in fields.items()
        }
        sets = ", ".join(f"{k} = ?" for k in encoded)
        async with self.transaction() as db:
            cur = await db.execute(
                f"UPDATE instances SET {sets}, updated_at = ? WHERE id = ?",
                (*encoded.values(), time.time(), inst_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"instance {inst_id} not found")
        return await self.get_instance(inst_id)

    async def delete_instance(self, inst_id: str) -> None:
        async with self.transaction() as db:
            busy = await (
                await db.execute(
                    f"SELECT count(*) FROM tasks WHERE instance_id = ? AND {ACTIVE_TASK}",
                    (inst_id,),
                )
            ).fetchone()
            if busy[0]:
                raise Conflict(f"instance {inst_id} still has {busy[0]} task(s); drain it first")
            await db.execute("DELETE FROM instances WHERE id = ?", (inst_id,))

    async def forget_instance(self, inst_id: str, reason: str) -> None:
        """Delete an instance that is gone for good, marking whatever ran there as stopped."""
        now = time.time()
        async with self.transaction() as db:
            await db.execute(
                f"UPDATE tasks SET status = 'STOPPED', reason = ?, stopped_at = ?"
                f" WHERE instance_id = ? AND {ACTIVE_TASK}",
                (reason, now, inst_id),
            )
            await db.execute("DELETE FROM instances WHERE id = ?", (inst_id,))

    # --- services ---------------------------------------------------------------------------

    async def create_service(self, spec: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        async with self.transaction() as db:
            exists = await (
                await db.execute("SELECT 1 FROM services WHERE name = ?", (spec["name"],))
            ).fetchone()
            if exists:
                raise Conflict(f"service {spec['name']} already exists")
            await db.execute(
                "INSERT INTO services (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (spec["name"], json.dumps(spec), now, now),
            )
        return await self.get_service(spec["name"])

    async def get_service(self, name: str) -> dict[str, Any]:
        row = await self._one("SELECT * FROM services WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"service {name} not found")
        return _service(row)

    async def list_services(self, repository: str | None = None) -> list[dict[str, Any]]:
        services = [_service(r) for r in await self._all("SELECT * FROM services ORDER BY name")]
        if repository is not None:
            services = [s for s in services if s["repository"] == repository]
        return services

    async def update_service(self, name: str, **fields: Any) -> dict[str, Any]:
        service = await self.get_service(name)
        spec_keys = set(service) - {"currentDeployment", "status", "createdAt", "updatedAt"}
        spec = {k: service[k] for k in spec_keys}
        columns: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "current_deployment":
                columns["current_deployment"] = value
            elif key == "status":
                columns["status"] = value
            else:
                spec[key] = value
        columns["spec"] = json.dumps(spec)
        sets = ", ".join(f"{k} = ?" for k in columns)
        async with self.transaction() as db:
            await db.execute(
                f"UPDATE services SET {sets}, updated_at = ? WHERE name = ?",
                (*columns.values(), time.time(), name),
            )
        return await self.get_service(name)

    async def delete_service(self, name: str) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM services WHERE name = ?", (name,))

    # --- deployments ------------------------------------------------------------------------

    async def create_deployment(self, dep: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        dep_id = new_id()
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO deployments (id, service, repository, tag, digest, registry, family,"
                " revision, state, reason, trigger, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,'PENDING',?,?,?,?)",
                (
                    dep_id, dep["service"], dep["repository"], dep.get("tag"), dep["digest"],
                    dep.get("registry"), dep["family"], dep["revision"], dep.get("reason"),
                    dep.get("trigger"), now, now,
                ),
            )
            await db.execute(
                "INSERT INTO deployment_events (deployment_id, state, reason, at)"
                " VALUES (?, 'PENDING', ?, ?)",
                (dep_id, dep.get("reason"), now),
            )
        return await self.get_deployment(dep_id)

    async def get_deployment(self, dep_id: str, *, history: bool = False) -> dict[str, Any]:
        row = await self._one("SELECT * FROM deployments WHERE id = ?", (dep_id,))
        if row is None:
            raise NotFound(f"deployment {dep_id} not found")
        dep = _deployment(row)
        if history:
            rows = await self._all(
                "SELECT state, reason, at FROM deployment_events WHERE deployment_id = ?"
                " ORDER BY seq",
                (dep_id,),
            )
            dep["events"] = [
                {"state": r["state"], "reason": r["reason"], "at": _iso(r["at"])} for r in rows
            ]
        return dep

    async def list_deployments(
        self, service: str | None = None, states: Iterable[str] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        where, args = [], []
        if service:
            where.append("service = ?")
            args.append(service)
        if states:
            states = list(states)
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        sql = "SELECT * FROM deployments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        return [_deployment(r) for r in await self._all(sql, (*args, limit))]

    async def set_deployment_state(
        self, dep_id: str, state: str, reason: str | None, **fields: Any
    ) -> dict[str, Any]:
        now = time.time()
        columns = {"state": state, "reason": reason, "updated_at": now, **fields}
        if state in TERMINAL_STATES:
            columns["finished_at"] = now
        sets = ", ".join(f"{k} = ?" for k in columns)
        async with self.transaction() as db:
            await db.execute(
                f"UPDATE deployments SET {sets} WHERE id = ?", (*columns.values(), dep_id)
            )
            await db.execute(
                "INSERT INTO deployment_events (deployment_id, state, reason, at)"
                " VALUES (?, ?, ?, ?)",
                (dep_id, state, reason, now),
            )
        return await self.get_deployment(dep_id)

    async def update_deployment(self, dep_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        async with self.transaction() as db:
            await db.execute(
                f"UPDATE deployments SET {sets}, updated_at = ? WHERE id = ?",
                (*fields.values(), time.time(), dep_id),
            )

    # --- tasks ------------------------------------------------------------------------------

    async def insert_task(self, task: dict[str, Any]) -> None:
        """Record a task; callers hold the placement lock so this row is the reservation."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO tasks (id, service, deployment_id, instance_id, family, revision,"
                " image, cpu, memory, ports, containers, status, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,'PROVISIONING',?)",
                (
                    task["id"], task.get("service"), task.get("deployment_id"),
                    task["instance_id"], task["family"], task["revision"], task["image"],
                    task["cpu"], task["memory"], json.dumps(task["ports"]), json.dumps([]),
                    time.time(),
                ),
            )

    async def get_task(self, task_id: str) -> dict[str, Any]:
        row = await self._one("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return _task(row)

    async def list_tasks(
        self,
        *,
        service: str | None = None,
        deployment_id: str | None = None,
        instance_id: str | None = None,
        active: bool | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        where, args = [], []
        for column, value in (
            ("service", service),
            ("deployment_id", deployment_id),
            ("instance_id", instance_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if active is True:
            where.append(ACTIVE_TASK)
        elif active is False:
            where.append("status = 'STOPPED'")
        sql = "SELECT * FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        return [_task(r) for r in await self._all(sql, (*args, limit))]

    async def update_task(self, task_id: str, **fields: Any) -> None:
        encoded = {k: json.dumps(v) if k in ("containers", "ports") else v
                   for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in encoded)
        async with self.transaction() as db:
            await db.execute(f"UPDATE tasks SET {sets} WHERE id = ?", (*encoded.values(), task_id))

    async def prune_stopped_tasks(self, keep_seconds: float) -> None:
        async with self.transaction() as db:
            await db.execute(
                "DELETE FROM tasks WHERE status = 'STOPPED' AND stopped_at < ?",
                (time.time() - keep_seconds,),
            )

    # --- inbound event de-duplication -------------------------------------------------------

    async def first_sighting(self, event_id: str) -> bool:
        """True the first time an event id is seen (registries retry deliveries)."""
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT OR IGNORE INTO seen_events (id, at) VALUES (?, ?)", (event_id, time.time())
            )
            await db.execute("DELETE FROM seen_events WHERE at < ?", (time.time() - 7 * 86400,))
            return cur.rowcount == 1


# --- row shapes (what the API returns) ------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _task_definition(row: aiosqlite.Row) -> dict[str, Any]:
    body = json.loads(row["body"])
    return {**body, "status": row["status"], "registeredAt": _iso(row["created_at"])}


def _instance(row: aiosqlite.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "endpoint": row["endpoint"],
        "type": row["type"],
        "cpu": row["cpu"],
        "memory": row["memory"],
        "attributes": json.loads(row["attributes"]),
        "network": row["network"],
        "status": row["status"],
        "origin": row["origin"],
        "provider": row["provider"],
        "provider_state": _loads(row["provider_state"]) or {},
        "pool": bool(row["pool"]),
        "reachable": bool(row["reachable"]),
        "idle_since": row["idle_since"],
        "createdAt": _iso(row["created_at"]),
    }


def _service(row: aiosqlite.Row) -> dict[str, Any]:
    return {
        **json.loads(row["spec"]),
        "currentDeployment": row["current_deployment"],
        "status": row["status"],
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
    }


def _deployment(row: aiosqlite.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "service": row["service"],
        "repository": row["repository"],
        "tag": row["tag"],
        "digest": row["digest"],
        "registry": row["registry"],
        "image": f"{row['repository']}@{row['digest']}",
        "taskDefinition": f"{row['family']}:{row['revision']}",
        "family": row["family"],
        "revision": row["revision"],
        "state": row["state"],
        "reason": row["reason"],
        "rollback": row["rollback"],
        "rollbackTo": row["rollback_to"],
        "trigger": row["trigger"],
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
        "finishedAt": _iso(row["finished_at"]),
        "created": row["created_at"],
    }


def _task(row: aiosqlite.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "service": row["service"],
        "deploymentId": row["deployment_id"],
        "instanceId": row["instance_id"],
        "taskDefinition": f"{row['family']}:{row['revision']}",
        "family": row["family"],
        "revision": row["revision"],
        "image": row["image"],
        "cpu": row["cpu"],
        "memory": row["memory"],
        "ports": json.loads(row["ports"]),
        "containers": json.loads(row["containers"]),
        "status": row["status"],
        "health": row["health"],
        "reason": row["reason"],
        "logs": row["logs"],
        "createdAt": _iso(row["created_at"]),
        "startedAt": _iso(row["started_at"]),
        "healthyAt": _iso(row["healthy_at"]),
        "stoppedAt": _iso(row["stopped_at"]),
        "created": row["created_at"],
        "started": row["started_at"],
        "times": {
            "created": row["created_at"],
            "started": row["started_at"],
            "healthy": row["healthy_at"],
            "stopped": row["stopped_at"],
        },
    }
