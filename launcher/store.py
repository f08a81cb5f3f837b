"""The launcher's state in the shared state store (`dockyard.core.sql`: SQLite or PostgreSQL).

The database is the source of truth for what *should* run; the engines' labelled containers are
the truth about what *does* run, and reconciliation compares the two. A task row exists before
its container is created, so the row is also the reservation that placement counts: resources are
never promised twice, even across a crash or a change of leader.

Every table is named `launcher_…`: the composition root hands the launcher the same Database the
registry and auth use (one SQLite file, or one PostgreSQL database). SQL here is portable: `?`
placeholders, `ON CONFLICT`, BIGINT and DOUBLE PRECISION, 0/1 for flags.
Updates take only the columns named in each table's allow-list, so no caller-supplied name ever
reaches the SQL text.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from dockyard.core.sql import Database, Row, open_database
from launcher.errors import Conflict, NotFound

log = logging.getLogger(__name__)

STEPS: list[str] = [
    # 1: the launcher's tables in the shared database
    """
    CREATE TABLE launcher_task_definitions (
        family TEXT NOT NULL,
        revision BIGINT NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'ACTIVE',
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (family, revision)
    );
    CREATE TABLE launcher_instances (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        endpoint TEXT NOT NULL,
        tls TEXT,
        type TEXT,
        cpu BIGINT NOT NULL,
        memory BIGINT NOT NULL,
        attributes TEXT NOT NULL,
        network TEXT NOT NULL,
        status TEXT NOT NULL,
        origin TEXT NOT NULL,
        provider TEXT,
        provider_state TEXT,
        pool BIGINT NOT NULL DEFAULT 0,
        reachable BIGINT NOT NULL DEFAULT 1,
        idle_since DOUBLE PRECISION,
        last_seen_at DOUBLE PRECISION,
        unreachable_since DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE launcher_services (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        current_deployment TEXT,
        previous_deployment TEXT,
        status TEXT NOT NULL DEFAULT 'ACTIVE',
        generation BIGINT NOT NULL DEFAULT 1,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE launcher_deployments (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT,
        digest TEXT NOT NULL,
        registry TEXT,
        family TEXT NOT NULL,
        revision BIGINT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        failure TEXT,
        failed_tasks BIGINT NOT NULL DEFAULT 0,
        rollback TEXT,
        rollback_to TEXT,
        trigger TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION
    );
    CREATE INDEX launcher_deployments_by_service ON launcher_deployments (service, created_at);
    CREATE INDEX launcher_deployments_by_state ON launcher_deployments (state);
    CREATE TABLE launcher_deployment_events (
        seq {serial},
        deployment_id TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX launcher_deployment_events_by_deployment
        ON launcher_deployment_events (deployment_id, seq);
    CREATE TABLE launcher_tasks (
        id TEXT PRIMARY KEY,
        service TEXT,
        deployment_id TEXT,
        instance_id TEXT NOT NULL,
        family TEXT NOT NULL,
        revision BIGINT NOT NULL,
        image TEXT NOT NULL,
        cpu BIGINT NOT NULL,
        memory BIGINT NOT NULL,
        ports TEXT NOT NULL,
        containers TEXT NOT NULL,
        status TEXT NOT NULL,
        health TEXT NOT NULL DEFAULT 'UNKNOWN',
        last_health TEXT,
        reason TEXT,
        logs TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        healthy_at DOUBLE PRECISION,
        stopped_at DOUBLE PRECISION
    );
    CREATE INDEX launcher_tasks_by_status ON launcher_tasks (status);
    CREATE INDEX launcher_tasks_by_service ON launcher_tasks (service, status);
    CREATE TABLE launcher_seen_events (
        id TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE launcher_service_events (
        seq {serial},
        service TEXT NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        deployment_id TEXT,
        task_id TEXT,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX launcher_service_events_by_service ON launcher_service_events (service, seq);
    CREATE TABLE launcher_secrets (
        name TEXT PRIMARY KEY,
        ciphertext TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )
    """,
]

ACTIVE_TASK = "status <> 'STOPPED'"
TERMINAL_STATES = ("SUCCESSFUL", "FAILED", "ROLLED_BACK", "BLOCKED")

# Columns each update may set (JSON-encoded ones marked): callers name fields, never SQL.
INSTANCE_COLUMNS = {"endpoint": False, "tls": True, "type": False, "cpu": False,
                    "memory": False, "attributes": True, "network": False, "status": False,
                    "provider_state": True, "pool": False, "reachable": False,
                    "idle_since": False, "last_seen_at": False, "unreachable_since": False}
TASK_COLUMNS = {"status": False, "health": False, "last_health": False, "reason": False,
                "logs": False, "containers": True, "ports": True, "started_at": False,
                "healthy_at": False, "stopped_at": False}
DEPLOYMENT_COLUMNS = {"rollback": False, "rollback_to": False, "failure": False,
                      "failed_tasks": False}
SERVICE_COLUMNS = {"current_deployment", "previous_deployment", "status"}


def new_id() -> str:
    """32 random hex digits: any prefix is as unique as its length allows (the CLI prints 12,
    providers name instances by 8), which a time-ordered id would not be."""
    return uuid.uuid4().hex


def _loads(value: str | None) -> Any:
    return json.loads(value) if value else None


def _assignments(fields: Mapping[str, Any], allowed: Mapping[str, bool] | set[str],
                 table: str) -> tuple[str, list[Any]]:
    unknown = set(fields) - set(allowed)
    if unknown:
        raise ValueError(f"{table}: not updatable: {', '.join(sorted(unknown))}")
    encoded = isinstance(allowed, Mapping)
    values = [
        json.dumps(v) if encoded and allowed[k] and v is not None else v  # type: ignore[index]
        for k, v in fields.items()
    ]
    return ", ".join(f"{k} = ?" for k in fields), values


class Store:
    """The launcher's tables. Give it the shared Database, or let `open()` open one (the
    standalone `dockyard launcher serve`: `url` or DATA/metadata.db)."""

    def __init__(self, db: Database | None = None, *, data_dir: pathlib.Path | None = None,
                 url: str | None = None) -> None:
        self._db = db
        self._owned = False
        self._data_dir = data_dir
        self._url = url

    async def open(self) -> None:
        if self._db is None:
            if self._data_dir is None:
                raise ValueError("Store needs a Database or a data directory")
            self._db = await open_database(self._url, self._data_dir)
            self._owned = True
        await self._db.migrate("launcher", STEPS)
        old = (self._data_dir / "launcher" / "launcher.db") if self._data_dir else None
        if old is not None and old.exists():
            log.warning("%s is from an older dockyard and is no longer read: the launcher's "
                        "state now lives in the shared database (register again, or delete it)",
                        old)

    async def close(self) -> None:
        if self._db is not None and self._owned:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> Database:
        assert self._db is not None, "store is not open"
        return self._db

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Row]:
        return await self.db.fetchall(sql, tuple(args))

    async def _one(self, sql: str, args: Iterable[Any] = ()) -> Row | None:
        return await self.db.fetchone(sql, tuple(args))

    # --- task definitions -------------------------------------------------------------------

    async def register_task_definition(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.db.transaction() as tx:
            await tx.lock(f"launcher:td:{body['family']}")
            current = await tx.fetchval(
                "SELECT max(revision) FROM launcher_task_definitions WHERE family = ?",
                (body["family"],),
            )
            revision = int(current or 0) + 1
            stored = {**body, "revision": revision}
            await tx.execute(
                "INSERT INTO launcher_task_definitions (family, revision, body, created_at)"
                " VALUES (?, ?, ?, ?)",
                (body["family"], revision, json.dumps(stored), time.time()),
            )
        return await self.get_task_definition(body["family"], revision)

    async def get_task_definition(self, family: str, revision: int | None) -> dict[str, Any]:
        if revision is None:
            row = await self._one(
                "SELECT * FROM launcher_task_definitions WHERE family = ? AND status = 'ACTIVE'"
                " ORDER BY revision DESC LIMIT 1",
                (family,),
            )
        else:
            row = await self._one(
                "SELECT * FROM launcher_task_definitions WHERE family = ? AND revision = ?",
                (family, revision),
            )
        if row is None:
            what = f"{family}:{revision}" if revision else f"{family} (no active revision)"
            raise NotFound(f"task definition {what} not found")
        return _task_definition(row)

    async def list_task_definitions(self, family: str | None = None) -> list[dict[str, Any]]:
        if family:
            rows = await self._all(
                "SELECT * FROM launcher_task_definitions WHERE family = ? ORDER BY revision",
                (family,),
            )
        else:
            rows = await self._all(
                "SELECT * FROM launcher_task_definitions ORDER BY family, revision")
        return [_task_definition(r) for r in rows]

    async def deregister_task_definition(self, family: str, revision: int) -> dict[str, Any]:
        changed = await self.db.execute(
            "UPDATE launcher_task_definitions SET status = 'INACTIVE'"
            " WHERE family = ? AND revision = ?",
            (family, revision),
        )
        if changed == 0:
            raise NotFound(f"task definition {family}:{revision} not found")
        return await self.get_task_definition(family, revision)

    # --- instances --------------------------------------------------------------------------

    async def upsert_instance(self, inst: dict[str, Any]) -> dict[str, Any]:
        """Insert an instance, or update the one with the same name (config reloads)."""
        now = time.time()
        tls = json.dumps(inst["tls"]) if inst.get("tls") else None
        async with self.db.transaction() as tx:
            inst_id = await tx.fetchval(
                "SELECT id FROM launcher_instances WHERE name = ?", (inst["name"],))
            if inst_id is None:
                inst_id = inst.get("id") or new_id()
                await tx.execute(
                    "INSERT INTO launcher_instances (id, name, endpoint, tls, type, cpu, memory,"
                    " attributes, network, status, origin, provider, provider_state, pool,"
                    " idle_since, last_seen_at, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        inst_id, inst["name"], inst["endpoint"], tls, inst.get("type"),
                        int(inst["cpu"]), int(inst["memory"]),
                        json.dumps(inst.get("attributes") or {}), inst["network"],
                        inst.get("status", "ACTIVE"), inst["origin"], inst.get("provider"),
                        json.dumps(inst.get("provider_state") or {}), int(inst.get("pool", 0)),
                        now, now, now, now,
                    ),
                )
            else:
                await tx.execute(
                    "UPDATE launcher_instances SET endpoint = ?, tls = ?, type = ?, cpu = ?,"
                    " memory = ?, attributes = ?, network = ?, updated_at = ? WHERE id = ?",
                    (
                        inst["endpoint"], tls, inst.get("type"), int(inst["cpu"]),
                        int(inst["memory"]), json.dumps(inst.get("attributes") or {}),
                        inst["network"], now, inst_id,
                    ),
                )
        return await self.get_instance(inst_id)

    async def get_instance(self, ident: str) -> dict[str, Any]:
        row = await self._one("SELECT * FROM launcher_instances WHERE id = ? OR name = ?",
                              (ident, ident))
        if row is None and len(ident) >= 6:
            row = await self._unique_prefix("launcher_instances", ident)
        if row is None:
            raise NotFound(f"instance {ident} not found")
        return _instance(row)

    async def _unique_prefix(self, table: str, prefix: str) -> Row | None:
        """The row whose id starts with `prefix` (what the CLI's tables print), if unique."""
        if not all(c in "0123456789abcdef" for c in prefix):
            return None
        rows = await self._all(
            f"SELECT * FROM {table} WHERE id >= ? AND id < ? LIMIT 2",
            (prefix, prefix + "g"),
        )
        if len(rows) > 1:
            raise Conflict(f"id prefix {prefix} is ambiguous; give more characters")
        return rows[0] if rows else None

    async def list_instances(self) -> list[dict[str, Any]]:
        return [_instance(r) for r in
                await self._all("SELECT * FROM launcher_instances ORDER BY name")]

    async def update_instance(self, inst_id: str, **fields: Any) -> dict[str, Any]:
        if not fields:
            return await self.get_instance(inst_id)
        sets, values = _assignments(fields, INSTANCE_COLUMNS, "launcher_instances")
        changed = await self.db.execute(
            f"UPDATE launcher_instances SET {sets}, updated_at = ? WHERE id = ?",
            (*values, time.time(), inst_id),
        )
        if changed == 0:
            raise NotFound(f"instance {inst_id} not found")
        return await self.get_instance(inst_id)

    async def delete_instance(self, inst_id: str) -> None:
        async with self.db.transaction() as tx:
            busy = await tx.fetchval(
                f"SELECT count(*) FROM launcher_tasks WHERE instance_id = ? AND {ACTIVE_TASK}",
                (inst_id,),
            )
            if busy:
                raise Conflict(f"instance {inst_id} still has {busy} task(s); drain it first")
            await tx.execute("DELETE FROM launcher_instances WHERE id = ?", (inst_id,))

    async def forget_instance(self, inst_id: str, reason: str) -> None:
        """Delete an instance that is gone for good, marking whatever ran there as stopped."""
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE launcher_tasks SET status = 'STOPPED', health = 'UNKNOWN', reason = ?,"
                f" stopped_at = ? WHERE instance_id = ? AND {ACTIVE_TASK}",
                (reason, now, inst_id),
            )
            await tx.execute("DELETE FROM launcher_instances WHERE id = ?", (inst_id,))

    # --- services ---------------------------------------------------------------------------

    async def create_service(self, spec: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        async with self.db.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO launcher_services (name, spec, created_at, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (spec["name"], json.dumps(spec), now, now),
            )
            if not added:
                raise Conflict(f"service {spec['name']} already exists")
        return await self.get_service(spec["name"])

    async def get_service(self, name: str) -> dict[str, Any]:
        row = await self._one("SELECT * FROM launcher_services WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"service {name} not found")
        return _service(row)

    async def list_services(self, repository: str | None = None) -> list[dict[str, Any]]:
        services = [_service(r) for r in
                    await self._all("SELECT * FROM launcher_services ORDER BY name")]
        if repository is not None:
            services = [s for s in services if s["repository"] == repository]
        return services

    async def service_generations(self) -> dict[str, int]:
        """name → generation: a leader notices changes other nodes made through their API."""
        rows = await self._all("SELECT name, generation FROM launcher_services")
        return {r["name"]: int(r["generation"]) for r in rows}

    async def update_service(self, name: str, **fields: Any) -> dict[str, Any]:
        columns = {k: v for k, v in fields.items() if k in SERVICE_COLUMNS}
        spec_changes = {k: v for k, v in fields.items() if k not in SERVICE_COLUMNS}
        async with self.db.transaction() as tx:
            await tx.lock(f"launcher:service:{name}")
            raw = await tx.fetchval("SELECT spec FROM launcher_services WHERE name = ?", (name,))
            if raw is None:
                raise NotFound(f"service {name} not found")
            spec = json.loads(raw)
            spec.update(spec_changes)
            columns["spec"] = json.dumps(spec)
            sets = ", ".join(f"{k} = ?" for k in columns)
            await tx.execute(
                f"UPDATE launcher_services SET {sets}, generation = generation + 1,"
                " updated_at = ? WHERE name = ?",
                (*columns.values(), time.time(), name),
            )
        return await self.get_service(name)

    async def delete_service(self, name: str) -> None:
        await self.db.execute("DELETE FROM launcher_services WHERE name = ?", (name,))

    # --- service events ---------------------------------------------------------------------

    async def add_service_event(self, service: str, kind: str, message: str, *,
                                deployment_id: str | None = None,
                                task_id: str | None = None) -> None:
        await self.db.execute(
            "INSERT INTO launcher_service_events (service, kind, message, deployment_id,"
            " task_id, at) VALUES (?, ?, ?, ?, ?, ?)",
            (service, kind, message, deployment_id, task_id, time.time()),
        )

    async def last_service_event(self, service: str) -> dict[str, Any] | None:
        rows = await self.list_service_events(service, limit=1)
        return rows[0] if rows else None

    async def list_service_events(self, service: str, limit: int = 100,
                                  kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
        where, args = ["service = ?"], [service]
        if kinds:
            kinds = list(kinds)
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args.extend(kinds)
        rows = await self._all(
            f"SELECT * FROM launcher_service_events WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT ?",
            (*args, limit),
        )
        return [
            {"seq": r["seq"], "service": r["service"], "kind": r["kind"],
             "message": r["message"], "deploymentId": r["deployment_id"],
             "taskId": r["task_id"], "at": _iso(r["at"])}
            for r in rows
        ]

    # --- secrets ----------------------------------------------------------------------------

    async def put_secret(self, name: str, ciphertext: str) -> bool:
        """Store a secret's ciphertext; True when it is new."""
        now = time.time()
        async with self.db.transaction() as tx:
            existed = await tx.fetchval("SELECT 1 FROM launcher_secrets WHERE name = ?", (name,))
            await tx.execute(
                "INSERT INTO launcher_secrets (name, ciphertext, created_at, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                (name, ciphertext, now, now),
            )
        return existed is None

    async def get_secret(self, name: str) -> str:
        value = await self.db.fetchval(
            "SELECT ciphertext FROM launcher_secrets WHERE name = ?", (name,))
        if value is None:
            raise NotFound(f"secret {name} not found")
        return str(value)

    async def list_secrets(self) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT name, created_at, updated_at FROM launcher_secrets ORDER BY name")
        return [{"name": r["name"], "createdAt": _iso(r["created_at"]),
                 "updatedAt": _iso(r["updated_at"])} for r in rows]

    async def delete_secret(self, name: str) -> None:
        if not await self.db.execute("DELETE FROM launcher_secrets WHERE name = ?", (name,)):
            raise NotFound(f"secret {name} not found")

    # --- deployments ------------------------------------------------------------------------

    async def create_deployment(self, dep: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        dep_id = new_id()
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO launcher_deployments (id, service, repository, tag, digest,"
                " registry, family, revision, state, reason, trigger, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,'PENDING',?,?,?,?)",
                (
                    dep_id, dep["service"], dep["repository"], dep.get("tag"), dep["digest"],
                    dep.get("registry"), dep["family"], int(dep["revision"]), dep.get("reason"),
                    dep.get("trigger"), now, now,
                ),
            )
            await tx.execute(
                "INSERT INTO launcher_deployment_events (deployment_id, state, reason, at)"
                " VALUES (?, 'PENDING', ?, ?)",
                (dep_id, dep.get("reason"), now),
            )
        return await self.get_deployment(dep_id)

    async def get_deployment(self, dep_id: str, *, history: bool = False) -> dict[str, Any]:
        row = await self._one("SELECT * FROM launcher_deployments WHERE id = ?", (dep_id,))
        if row is None and len(dep_id) >= 6:
            row = await self._unique_prefix("launcher_deployments", dep_id)
        if row is None:
            raise NotFound(f"deployment {dep_id} not found")
        dep = _deployment(row)
        if history:
            rows = await self._all(
                "SELECT state, reason, at FROM launcher_deployment_events"
                " WHERE deployment_id = ? ORDER BY seq",
                (dep["id"],),
            )
            dep["events"] = [
                {"state": r["state"], "reason": r["reason"], "at": _iso(r["at"])} for r in rows
            ]
        return dep

    async def list_deployments(
        self, service: str | None = None, states: Iterable[str] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if service:
            where.append("service = ?")
            args.append(service)
        if states:
            states = list(states)
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        sql = "SELECT * FROM launcher_deployments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        return [_deployment(r) for r in await self._all(sql, (*args, limit))]

    async def services_with_work(self) -> set[str]:
        """Services with a deployment waiting or running, or a rollback left half done."""
        rows = await self._all(
            "SELECT DISTINCT service FROM launcher_deployments WHERE state IN"
            " ('PENDING', 'IN_PROGRESS') OR (state = 'FAILED' AND rollback = 'PENDING')"
        )
        return {r["service"] for r in rows}

    async def set_deployment_state(
        self, dep_id: str, state: str, reason: str | None, **fields: Any
    ) -> dict[str, Any]:
        now = time.time()
        sets, values = _assignments(fields, DEPLOYMENT_COLUMNS, "launcher_deployments")
        extra = f", {sets}" if fields else ""
        finished = now if state in TERMINAL_STATES else None
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE launcher_deployments SET state = ?, reason = ?, updated_at = ?,"
                f" finished_at = ?{extra} WHERE id = ?",
                (state, reason, now, finished, *values, dep_id),
            )
            await tx.execute(
                "INSERT INTO launcher_deployment_events (deployment_id, state, reason, at)"
                " VALUES (?, ?, ?, ?)",
                (dep_id, state, reason, now),
            )
        return await self.get_deployment(dep_id)

    async def update_deployment(self, dep_id: str, **fields: Any) -> None:
        sets, values = _assignments(fields, DEPLOYMENT_COLUMNS, "launcher_deployments")
        await self.db.execute(
            f"UPDATE launcher_deployments SET {sets}, updated_at = ? WHERE id = ?",
            (*values, time.time(), dep_id),
        )

    # --- tasks ------------------------------------------------------------------------------

    async def insert_task(self, task: dict[str, Any]) -> None:
        """Record a task; callers hold the placement lock so this row is the reservation."""
        await self.db.execute(
            "INSERT INTO launcher_tasks (id, service, deployment_id, instance_id, family,"
            " revision, image, cpu, memory, ports, containers, status, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,'PROVISIONING',?)",
            (
                task["id"], task.get("service"), task.get("deployment_id"),
                task["instance_id"], task["family"], int(task["revision"]), task["image"],
                int(task["cpu"]), int(task["memory"]), json.dumps(task["ports"]),
                json.dumps([]), time.time(),
            ),
        )

    async def get_task(self, task_id: str) -> dict[str, Any]:
        row = await self._one("SELECT * FROM launcher_tasks WHERE id = ?", (task_id,))
        if row is None and len(task_id) >= 6:
            row = await self._unique_prefix("launcher_tasks", task_id)
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
        where: list[str] = []
        args: list[Any] = []
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
        sql = "SELECT * FROM launcher_tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        return [_task(r) for r in await self._all(sql, (*args, limit))]

    async def update_task(self, task_id: str, **fields: Any) -> None:
        sets, values = _assignments(fields, TASK_COLUMNS, "launcher_tasks")
        await self.db.execute(f"UPDATE launcher_tasks SET {sets} WHERE id = ?",
                              (*values, task_id))

    async def prune_stopped_tasks(self, keep_seconds: float) -> None:
        await self.db.execute(
            "DELETE FROM launcher_tasks WHERE status = 'STOPPED' AND stopped_at < ?",
            (time.time() - keep_seconds,),
        )

    # --- inbound event de-duplication -------------------------------------------------------

    async def first_sighting(self, event_id: str) -> bool:
        """True the first time an event id is seen (registries retry deliveries)."""
        now = time.time()
        async with self.db.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO launcher_seen_events (id, at) VALUES (?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (event_id, now),
            )
            await tx.execute("DELETE FROM launcher_seen_events WHERE at < ?",
                             (now - 7 * 86400,))
        return added == 1


# --- row shapes (what the API returns) ------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _task_definition(row: Row) -> dict[str, Any]:
    body = json.loads(row["body"])
    return {**body, "status": row["status"], "registeredAt": _iso(row["created_at"])}


def _instance(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "endpoint": row["endpoint"],
        "tls": _loads(row["tls"]),
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
        "last_seen_at": row["last_seen_at"],
        "unreachable_since": row["unreachable_since"],
        "lastSeenAt": _iso(row["last_seen_at"]),
        "createdAt": _iso(row["created_at"]),
    }


def _service(row: Row) -> dict[str, Any]:
    return {
        **json.loads(row["spec"]),
        "currentDeployment": row["current_deployment"],
        "previousDeployment": row["previous_deployment"],
        "status": row["status"],
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
    }


def _deployment(row: Row) -> dict[str, Any]:
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
        "failure": row["failure"],
        "failedTasks": row["failed_tasks"],
        "rollback": row["rollback"],
        "rollbackTo": row["rollback_to"],
        "trigger": row["trigger"],
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
        "finishedAt": _iso(row["finished_at"]),
        "created": row["created_at"],
    }


def _task(row: Row) -> dict[str, Any]:
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
        "lastHealth": row["last_health"],
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
