"""Instances: registration (config, API), provisioning through a provider, the warm pool.

An instance's capacity comes from its type; an engine registered without a type may declare one
through daemon labels (`dockyard.instance-type`, or `dockyard.cpu` + `dockyard.memory`).
Instances in the warm pool are flagged `pool`: placement looks at them only when no running
instance has room, and taking one clears the flag (the pool then starts a replacement).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from launcher.config import InstanceType, LauncherSettings, parse_tls
from launcher.engine import DAEMON_CPU, DAEMON_MEMORY, DAEMON_TYPE, Engines, validate_endpoint
from launcher.errors import Conflict, EngineError, InvalidRequest, LauncherError
from launcher.providers import LocalProvider
from launcher.store import Store, new_id

log = logging.getLogger(__name__)

STATUSES = ("ACTIVE", "DRAINING")
LOST = "LOST"  # unreachable past instance_grace_seconds: its tasks were placed elsewhere


class Instances:
    def __init__(self, settings: LauncherSettings, store: Store, engines: Engines) -> None:
        self.settings = settings
        self.store = store
        self.engines = engines
        self.types = settings.instance_types
        self.provider: LocalProvider | None = None
        if settings.local_provider is not None:
            self.provider = LocalProvider(
                settings.local_provider, settings.cluster, settings.state_dir / "instances"
            )
        self._provision_lock = asyncio.Lock()
        self._creating: set[asyncio.Future[dict[str, Any]]] = set()
        # The placer's lock (set by the Launcher): removal must not race a placement that just
        # chose the instance.
        self.placement_lock = asyncio.Lock()

    # --- registration -----------------------------------------------------------------------

    async def sync_static(self) -> None:
        for spec in self.settings.instances:
            tls = spec.tls.as_dict() if spec.tls else None
            cpu, memory = await self._capacity(spec.endpoint, spec.type, strict=False, tls=tls)
            await self.store.upsert_instance(
                {
                    "name": spec.name,
                    "endpoint": spec.endpoint,
                    "tls": tls,
                    "type": spec.type,
                    "cpu": cpu,
                    "memory": memory,
                    "attributes": spec.attributes,
                    "network": spec.network or _default_network(spec.endpoint),
                    "origin": "config",
                }
            )

    async def register(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidRequest("instance must be a JSON object")
        if body.get("provider"):
            if body["provider"] != "local":
                raise InvalidRequest("provider must be 'local'")
            itype = self.types.get(str(body.get("type")))
            if itype is None:
                raise InvalidRequest(f"unknown instance type {body.get('type')!r}")
            return await self.provision(itype, pool=bool(body.get("pool", False)))
        unknown = sorted(set(body) - {"endpoint", "type", "name", "attributes", "network",
                                      "tls_ca", "tls_cert", "tls_key"})
        if unknown:
            raise InvalidRequest(f"unknown instance field(s): {', '.join(unknown)}")
        endpoint = validate_endpoint(body.get("endpoint"))
        tls_files = parse_tls(body, "instance")
        tls = tls_files.as_dict() if tls_files else None
        if tls:
            for kind, path in tls.items():
                if not await asyncio.to_thread(os.path.isfile, path):
                    raise InvalidRequest(f"tls_{kind} {path} is not a readable file")
        itype_name = body.get("type")
        if itype_name is not None and itype_name not in self.types:
            raise InvalidRequest(f"unknown instance type {itype_name!r}")
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise InvalidRequest("attributes must be an object of strings")
        engine = self.engines.get(endpoint, tls)
        try:
            await engine.check()
        except EngineError as exc:
            self.engines.forget(endpoint)
            raise InvalidRequest(f"no Docker Engine answers at {endpoint}: {exc.message}",
                                 detail={"endpoint": endpoint}) from None
        cpu, memory = await self._capacity(endpoint, itype_name, strict=True, tls=tls)
        if itype_name is None:
            itype_name = (await engine.daemon_labels()).get(DAEMON_TYPE)
        name = body.get("name") or f"instance-{new_id()[:8]}"
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise InvalidRequest("name must be a string of 1-64 characters")
        if any(i["name"] == name for i in await self.store.list_instances()):
            raise Conflict(f"instance {name} already exists")
        return await self.store.upsert_instance(
            {
                "name": name,
                "endpoint": endpoint,
                "type": itype_name,
                "cpu": cpu,
                "memory": memory,
                "attributes": {str(k): str(v) for k, v in attributes.items()},
                "network": str(body.get("network") or _default_network(endpoint)),
                "origin": "api",
                "tls": tls,
            }
        )

    async def _capacity(self, endpoint: str, type_name: str | None, *, strict: bool,
                        tls: dict[str, str] | None = None) -> tuple[int, int]:
        if type_name is not None:
            itype = self.types[type_name]
            return itype.cpu, itype.memory
        try:
            labels = await self.engines.get(endpoint, tls).daemon_labels()
        except EngineError:
            if strict:
                raise
            return 0, 0  # unreachable at start: it takes no task until it declares a capacity
        if labels.get(DAEMON_TYPE) in self.types:
            itype = self.types[labels[DAEMON_TYPE]]
            return itype.cpu, itype.memory
        try:
            return int(labels[DAEMON_CPU]), int(labels[DAEMON_MEMORY])
        except (KeyError, ValueError):
            if strict:
                raise InvalidRequest(
                    f"{endpoint} declares no capacity: give a type, or start the engine with"
                    f" --label {DAEMON_TYPE}=NAME (or {DAEMON_CPU}= and {DAEMON_MEMORY}=)"
                ) from None
            return 0, 0

    async def set_status(self, ident: str, status: Any) -> dict[str, Any]:
        if status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
        inst = await self.store.get_instance(ident)
        return await self.store.update_instance(inst["id"], status=status)

    async def heartbeat(self) -> list[dict[str, Any]]:
        """Ping every instance once; returns those that just passed instance_grace_seconds
        unreachable (now LOST). A LOST instance that answers again becomes ACTIVE; the
        reconciler then removes the containers it still runs for tasks that moved away."""
        instances = await self.store.list_instances()
        answers = await asyncio.gather(*[self.engines.of(i).ping() for i in instances])
        now = time.time()
        lost = []
        for inst, ok in zip(instances, answers, strict=True):
            if ok:
                fields: dict[str, Any] = {"last_seen_at": now}
                if not inst["reachable"] or inst["unreachable_since"] is not None:
                    fields.update(reachable=1, unreachable_since=None)
                if inst["status"] == LOST:
                    fields["status"] = "ACTIVE"
                    log.info("instance %s is back; its orphaned containers will be removed",
                             inst["name"])
                await self.store.update_instance(inst["id"], **fields)
                continue
            since = inst["unreachable_since"] or now
            if inst["unreachable_since"] is None or inst["reachable"]:
                log.warning("instance %s does not answer", inst["name"])
                await self.store.update_instance(inst["id"], reachable=0,
                                                 unreachable_since=since)
            if inst["status"] != LOST and now - since >= self.settings.instance_grace_seconds:
                log.warning("instance %s lost: unreachable for %.0fs", inst["name"], now - since)
                lost.append(await self.store.update_instance(inst["id"], status=LOST))
        return lost

    async def remove(self, ident: str) -> None:
        async with self.placement_lock:
            inst = await self.store.get_instance(ident)
            await self.store.delete_instance(inst["id"])  # refuses while tasks remain
        self.engines.forget(inst["endpoint"])
        if inst["origin"] == "provider" and self.provider is not None:
            await self.provider.destroy(inst["provider_state"])

    # --- provisioning and the warm pool -----------------------------------------------------

    async def provision(self, itype: InstanceType, *, pool: bool = False) -> dict[str, Any]:
        if self.provider is None:
            raise InvalidRequest("no provider is configured ([launcher.providers.local])")
        async with self._provision_lock:
            count = sum(1 for i in await self.store.list_instances() if i["origin"] == "provider")
            if count >= self.provider.settings.max_instances:
                raise LauncherError(
                    f"provider limit reached ({self.provider.settings.max_instances} instances)"
                )
            # Shielded and tracked: a dockerd that started must be recorded, or nothing could
            # ever stop it (cancelling the caller, e.g. at shutdown, must not orphan it).
            creating = asyncio.ensure_future(self._create(itype, pool))
            self._creating.add(creating)
            creating.add_done_callback(self._creating.discard)
            return await asyncio.shield(creating)

    async def _create(self, itype: InstanceType, pool: bool) -> dict[str, Any]:
        assert self.provider is not None
        inst_id = new_id()
        fields = await self.provider.create(inst_id, itype)
        log.info("provisioned %s instance %s", itype.name, inst_id[:12])
        return await self.store.upsert_instance(
            {
                "id": inst_id,
                "name": f"{itype.name}-{inst_id[:8]}",
                "type": itype.name,
                "cpu": itype.cpu,
                "memory": itype.memory,
                "origin": "provider",
                "provider": self.provider.name,
                "pool": pool,
                **fields,
            }
        )

    async def settle(self) -> None:
        """Wait for provisioning under way (shutdown: let it be recorded before closing)."""
        if self._creating:
            await asyncio.gather(*self._creating, return_exceptions=True)

    async def adopt_provisioned(self) -> None:
        """At start: make sure every provisioned instance's dockerd runs (restarting if needed)."""
        if self.provider is None:
            return
        for inst in await self.store.list_instances():
            if inst["origin"] != "provider":
                continue
            ok = await self.provider.ensure_running(inst["provider_state"])
            await self.store.update_instance(
                inst["id"], reachable=int(ok), provider_state=inst["provider_state"]
            )

    async def maintain_pool(self) -> None:
        """Keep `warm_pool` idle instances per type; retire provisioned instances idle too long."""
        if self.provider is None:
            return
        instances = await self.store.list_instances()
        busy = {t["instanceId"] for t in await self.store.list_tasks(active=True, limit=100000)}
        now = time.time()
        warm = {name: 0 for name in self.settings.warm_pool}
        for inst in instances:
            if inst["pool"] and inst["type"] in warm and inst["id"] not in busy:
                warm[inst["type"]] += 1
        for inst in instances:
            if inst["origin"] != "provider":
                continue
            if inst["id"] in busy:
                # In use: not idle, and not warm either (a task may have landed on an instance
                # this loop had just put back into the pool).
                if inst["pool"] or inst["idle_since"] is not None:
                    await self.store.update_instance(inst["id"], pool=0, idle_since=None)
                continue
            if inst["pool"]:
                continue
            if inst["idle_since"] is None:
                await self.store.update_instance(inst["id"], idle_since=now)
            elif warm.get(inst["type"], 0) < self.settings.warm_pool.get(inst["type"], 0):
                await self.store.update_instance(inst["id"], pool=1, idle_since=now)
                warm[inst["type"]] += 1
            elif now - inst["idle_since"] >= self.settings.idle_instance_seconds:
                log.info("removing idle provisioned instance %s", inst["name"])
                try:
                    await self.remove(inst["id"])
                except LauncherError as exc:
                    log.warning("could not remove idle instance %s: %s", inst["name"], exc)
        for name, want in self.settings.warm_pool.items():
            for _ in range(want - warm.get(name, 0)):
                try:
                    await self.provision(self.types[name], pool=True)
                except LauncherError as exc:
                    log.warning("warm pool: could not provision %s: %s", name, exc)
                    break

    async def stop_provisioned(self) -> None:
        """Stop every provisioned dockerd (tests and `stop_provisioned_on_close`)."""
        if self.provider is None:
            return
        await self.settle()
        for inst in await self.store.list_instances():
            if inst["origin"] == "provider":
                self.engines.forget(inst["endpoint"])
                await self.provider.destroy(inst["provider_state"])
                await self.store.forget_instance(inst["id"], "instance removed at shutdown")


def _default_network(endpoint: str) -> str:
    """Instances reached over a unix socket run on this machine and share its host network."""
    if endpoint.startswith("unix://"):
        return "host:local"
    return "host:" + endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
