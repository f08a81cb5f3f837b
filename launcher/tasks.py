"""Tasks: start one on an instance, judge its health, stop it.

A task is the group of containers of one task definition on one instance. Its row is written by
placement (the reservation), then its images are pulled by digest, then its containers are created
with labels naming cluster, service, deployment and task, so a restarted launcher can tell its own
containers from anything else on the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

from launcher.config import LauncherSettings
from launcher.engine import (
    LABEL_CLUSTER,
    LABEL_CONTAINER,
    LABEL_DEPLOYMENT,
    LABEL_IMAGE,
    LABEL_SERVICE,
    LABEL_TASK,
    LABEL_TASK_DEFINITION,
    Engines,
)
from launcher.errors import EngineError, LauncherError, NotFound, TaskFailed
from launcher.model import start_order, task_resources
from launcher.placement import Placer
from launcher.secrets import SecretStore
from launcher.store import Store, new_id

log = logging.getLogger(__name__)

HEALTHY, STARTING, FAILED = "HEALTHY", "STARTING", "FAILED"
LABEL_VOLUME = "dockyard.volume"
NS = 1_000_000_000
LOG_TAIL = 50


def image_ref(registry: str | None, repository: str, digest: str) -> str:
    return f"{registry}/{repository}@{digest}" if registry else f"{repository}@{digest}"


def health_budget(task_def: dict[str, Any], settings: LauncherSettings) -> float:
    """Seconds a new task gets, from its start, to become healthy before the deployment fails."""
    worst = 0.0
    for c in task_def["containerDefinitions"]:
        hc = c["healthCheck"]
        if hc and hc["command"][0] != "NONE":
            worst = max(worst, hc["startPeriod"] + (hc["interval"] + hc["timeout"])
                        * (hc["retries"] + 1))
        else:
            worst = max(worst, settings.stable_seconds)
    return worst + settings.health_grace


def _docker_time(value: str | None) -> float | None:
    if not value or value.startswith("0001-"):
        return None
    # Docker gives nanoseconds; Python's parser takes at most microseconds.
    head, _, frac = value.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(head + "+00:00").timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


class TaskRunner:
    def __init__(self, settings: LauncherSettings, store: Store, engines: Engines,
                 placer: Placer, secrets: SecretStore) -> None:
        self.settings = settings
        self.store = store
        self.engines = engines
        self.placer = placer
        self.secrets = secrets
        # Tasks this process is starting or stopping right now: reconciliation leaves them be.
        self.inflight: set[str] = set()

    def _auth(self, registry: str | None) -> dict[str, str] | None:
        auth = self.settings.registry_auth
        if auth is None or registry is None or registry != self.settings.registry:
            return None  # a robot credential is for our registry only; never hand it elsewhere
        return auth.as_auth_config()

    async def start(
        self,
        *,
        service: dict[str, Any],
        deployment: dict[str, Any],
        task_def: dict[str, Any],
    ) -> dict[str, Any]:
        """Place and start one task; raises NoCapacity (nothing reserved) or TaskFailed."""
        task_id = new_id()
        res = task_resources(task_def)
        registry = deployment["registry"]
        service_image = image_ref(registry, deployment["repository"], deployment["digest"])
        self.inflight.add(task_id)
        try:
            placement = await self.placer.place(
                res,
                task={
                    "id": task_id,
                    "service": service["name"],
                    "deployment_id": deployment["id"],
                    "family": task_def["family"],
                    "revision": task_def["revision"],
                    "image": deployment["image"],
                },
                strategy=service["placementStrategy"] or list(self.settings.default_strategy),
                constraints=service["placementConstraints"] + task_def["placementConstraints"],
            )
            inst = placement.instance
            engine = self.engines.of(inst)
            try:
                specs = await self._container_specs(
                    task_id, service, deployment, task_def, service_image,
                    sorted(res.fixed_ports), list(placement.ports),
                )
                for image in dict.fromkeys(s["image"] for s in specs):
                    await engine.ensure_image(image, self._auth(registry))
                for volume in task_def.get("volumes") or ():
                    cfg = volume.get("dockerVolumeConfiguration")
                    if cfg is not None:
                        await engine.ensure_volume(
                            _volume_name(volume["name"], task_def["family"], task_id, cfg),
                            cfg["driver"], {LABEL_CLUSTER: self.settings.cluster,
                                            LABEL_VOLUME: cfg["scope"]})
                await self.store.update_task(task_id, status="PENDING")
                containers: list[dict[str, str]] = []
                by_name = {c["name"]: c for c in task_def["containerDefinitions"]}
                for spec in specs:
                    name = spec["labels"][LABEL_CONTAINER]
                    for dep in by_name[name]["dependsOn"]:
                        if dep["condition"] == "HEALTHY":
                            wanted = next(c for c in containers
                                          if c["name"] == dep["containerName"])
                            await self._wait_healthy(engine, wanted, by_name[wanted["name"]])
                    cid = await engine.run_container(spec)
                    containers.append({"name": name, "id": cid})
                    await self.store.update_task(task_id, containers=containers)
            except LauncherError as exc:
                task = await self.store.get_task(task_id)
                await self.stop(task, f"failed to start: {exc.message}", capture_logs=True)
                raise TaskFailed(f"task {task_id[:12]} on {inst['name']}: {exc.message}") from exc
            await self.store.update_task(task_id, status="RUNNING", started_at=time.time())
            return await self.store.get_task(task_id)
        finally:
            self.inflight.discard(task_id)

    async def _wait_healthy(self, engine: Any, container: dict[str, str],
                            definition: dict[str, Any]) -> None:
        """dependsOn HEALTHY: hold the next container until this one's health check passes."""
        hc = definition["healthCheck"]
        budget = hc["startPeriod"] + (hc["interval"] + hc["timeout"]) * (hc["retries"] + 1)
        deadline = time.monotonic() + budget + self.settings.health_grace
        while time.monotonic() < deadline:
            info = await engine.inspect(container["id"])
            state = (info or {}).get("State") or {}
            if state.get("Status") != "running":
                raise EngineError(f"container {container['name']} exited before it was healthy")
            status = (state.get("Health") or {}).get("Status")
            if status == "healthy":
                return
            if status == "unhealthy":
                raise EngineError(f"container {container['name']} failed its health check, "
                                  "so the containers that depend on it were not started")
            await asyncio.sleep(min(self.settings.poll_interval, hc["interval"]))
        raise EngineError(f"container {container['name']} was not healthy within "
                          f"{budget + self.settings.health_grace:.0f}s")

    async def _container_specs(
        self,
        task_id: str,
        service: dict[str, Any],
        deployment: dict[str, Any],
        task_def: dict[str, Any],
        service_image: str,
        fixed: list[int],
        dynamic: list[int],
    ) -> list[dict[str, Any]]:
        repo = deployment["repository"]
        containers = task_def["containerDefinitions"]
        targets = [c for c in containers if _same_repository(c["image"], repo)]
        if not targets and len(containers) == 1:
            targets = containers
        volumes = {v["name"]: v for v in task_def.get("volumes") or ()}
        specs = []
        # The containers of a task share the host's network, so each one is told every named
        # port of the task ($PORT_<NAME>: a frontend finds its backend), and $PORT is its own.
        own_port: dict[str, str] = {}
        named_ports: dict[str, str] = {}
        for c in start_order(containers):
            for pm in c["portMappings"]:
                port = str(pm["hostPort"] or dynamic.pop(0))
                own_port.setdefault(c["name"], port)
                if pm["name"]:
                    named_ports[f"PORT_{pm['name'].upper()}"] = port
        for c in start_order(containers):
            env = {e["name"]: e["value"] for e in c["environment"]}
            env.update(named_ports)
            if c["name"] in own_port:
                env["PORT"] = own_port[c["name"]]
            env.update(
                DOCKYARD_TASK_ID=task_id,
                DOCKYARD_SERVICE=service["name"],
                DOCKYARD_DEPLOYMENT=deployment["id"],
                DOCKYARD_IMAGE=deployment["image"],
            )
            for secret in c.get("secrets") or ():
                try:
                    env[secret["name"]] = await self.secrets.reveal(secret["valueFrom"])
                except NotFound:
                    raise TaskFailed(f"secret {secret['valueFrom']} (for ${secret['name']} of "
                                     f"container {c['name']}) is not in the secret store") from None
            binds = []
            for m in c.get("mountPoints") or ():
                vol = volumes[m["sourceVolume"]]
                cfg = vol.get("dockerVolumeConfiguration")
                source = (vol["host"]["sourcePath"] if "host" in vol
                          else _volume_name(vol["name"], task_def["family"], task_id, cfg))
                binds.append(f"{source}:{m['containerPath']}:{'ro' if m['readOnly'] else 'rw'}")
            log_cfg = c.get("logConfiguration")
            hc = c["healthCheck"]
            healthcheck = None
            if hc is not None:
                healthcheck = {
                    "test": hc["command"],
                    "interval": int(hc["interval"] * NS),
                    "timeout": int(hc["timeout"] * NS),
                    "retries": hc["retries"],
                    "start_period": int(hc["startPeriod"] * NS),
                }
            specs.append({
                "name": f"dockyard-{task_id[:16]}-{c['name']}",
                "image": service_image if c in targets else c["image"],
                "command": c["command"],
                "entrypoint": c["entryPoint"],
                "environment": env,
                "labels": {
                    LABEL_CLUSTER: self.settings.cluster,
                    LABEL_SERVICE: service["name"],
                    LABEL_DEPLOYMENT: deployment["id"],
                    LABEL_TASK: task_id,
                    LABEL_CONTAINER: c["name"],
                    LABEL_TASK_DEFINITION: f"{task_def['family']}:{task_def['revision']}",
                    LABEL_IMAGE: deployment["image"],
                },
                "healthcheck": healthcheck,
                # 1024 CPU units are one core; Docker counts billionths of a CPU.
                "nano_cpus": c["cpu"] * NS // 1024 if c["cpu"] else None,
                "mem_limit": c["memory"] * 1024 * 1024 if c["memory"] else None,
                "mem_reservation": (c["memoryReservation"] * 1024 * 1024
                                    if c["memoryReservation"] else None),
                "stop_timeout": c["stopTimeout"],
                "binds": binds,
                "log_driver": log_cfg["logDriver"] if log_cfg else None,
                "log_options": log_cfg["options"] if log_cfg else None,
                "working_dir": c.get("workingDirectory"),
                "user": c.get("user"),
            })
        return specs

    async def check(self, task: dict[str, Any], task_def: dict[str, Any]
                    ) -> tuple[str, str | None]:
        """HEALTHY, STARTING or FAILED (with why) for a RUNNING task, recorded on the row."""
        try:
            inst = await self.store.get_instance(task["instanceId"])
        except NotFound:
            return FAILED, "its instance was removed"
        engine = self.engines.of(inst)
        definitions = {c["name"]: c for c in task_def["containerDefinitions"]}
        if {c["name"] for c in task["containers"]} != set(definitions):
            return FAILED, "not all containers were created"
        states = []
        for c in task["containers"]:
            essential = definitions[c["name"]].get("essential", True)
            try:
                info = await engine.inspect(c["id"])
            except EngineError as exc:
                return STARTING, f"instance unreachable: {exc.message}"  # judge again later
            if info is None:
                if not essential:
                    continue
                return FAILED, f"container {c['name']} is gone"
            state = info["State"]
            if state.get("Status") != "running":
                if not essential:
                    continue  # ECS: a non-essential container may end; the task goes on
                why = f"container {c['name']} exited with code {state.get('ExitCode')}"
                if state.get("OOMKilled"):
                    why += " (OOMKilled: over its memory limit)"
                if state.get("Error"):
                    why += f": {state['Error']}"
                return FAILED, why
            health = state.get("Health")
            if health:
                status = health.get("Status")
                if status == "unhealthy":
                    last = (health.get("Log") or [{}])[-1]
                    out = (last.get("Output") or "").strip()[-300:]
                    await self.store.update_task(task["id"], health="UNHEALTHY",
                                                 last_health="UNHEALTHY")
                    return FAILED, (
                        f"container {c['name']} failed its health check"
                        f" (exit {last.get('ExitCode')}{': ' + out if out else ''})"
                    )
                states.append(status == "healthy")
            else:
                started = _docker_time(state.get("StartedAt")) or time.time()
                states.append(time.time() - started >= self.settings.stable_seconds)
        healthy = all(states)
        wanted = "HEALTHY" if healthy else "UNKNOWN"
        if task["health"] != wanted:
            fields: dict[str, Any] = {"health": wanted}
            if healthy:
                fields["last_health"] = "HEALTHY"
            if healthy and task["times"]["healthy"] is None:
                fields["healthy_at"] = time.time()
            await self.store.update_task(task["id"], **fields)
        return (HEALTHY, None) if healthy else (STARTING, None)

    async def forget(self, task: dict[str, Any], reason: str) -> None:
        """Mark a task stopped without touching its engine (the instance is gone or lost)."""
        fresh = await self.store.get_task(task["id"])
        await self.store.update_task(task["id"], status="STOPPED", reason=reason,
                                     health="UNKNOWN", last_health=last_health(fresh),
                                     stopped_at=time.time())

    async def stop(self, task: dict[str, Any], reason: str, *, capture_logs: bool = False,
                   drain: float = 0.0) -> None:
        """Stop a task's containers. `drain` seconds pass between taking it out of the
        ingress's routes (status STOPPING) and stopping it, so requests in flight finish."""
        if task["status"] == "STOPPED":
            return
        try:
            inst = await self.store.get_instance(task["instanceId"])
        except LauncherError:
            await self.forget(task, reason)
            return
        engine = self.engines.of(inst)
        self.inflight.add(task["id"])
        try:
            await self._stop(engine, task, reason, capture_logs, drain)
        finally:
            self.inflight.discard(task["id"])

    async def _stop(self, engine: Any, task: dict[str, Any], reason: str,
                    capture_logs: bool, drain: float) -> None:
        await self.store.update_task(task["id"], status="STOPPING", reason=reason)
        if drain > 0 and task["status"] == "RUNNING" and task["health"] == "HEALTHY":
            await asyncio.sleep(drain)
        logs = None
        containers = task["containers"] or await self._labelled(engine, task["id"])
        for c in containers:
            if capture_logs:
                try:
                    tail = await engine.logs(c["id"], tail=LOG_TAIL)
                except EngineError:
                    tail = ""  # already dead or being removed: nothing left to read
                if tail:
                    logs = (logs or "") + f"--- {c['name']}\n{tail}"
            try:
                await engine.stop_and_remove(c["id"], self.settings.stop_timeout)
            except EngineError as exc:
                log.warning("stopping %s of task %s: %s", c["name"], task["id"][:12], exc)
        fresh = await self.store.get_task(task["id"])
        fields: dict[str, Any] = {"status": "STOPPED", "reason": reason,
                                  "stopped_at": time.time(), "health": "UNKNOWN",
                                  "last_health": last_health(fresh)}
        if logs:
            fields["logs"] = logs[-8000:]
        await self.store.update_task(task["id"], **fields)

    async def _labelled(self, engine: Any, task_id: str) -> list[dict[str, Any]]:
        """Containers created for a task whose ids never reached the database (crash, error)."""
        try:
            found = await engine.managed_containers(self.settings.cluster)
        except EngineError:
            return []
        return [{"name": c["Labels"].get(LABEL_CONTAINER, "?"), "id": c["Id"]}
                for c in found if c["Labels"].get(LABEL_TASK) == task_id]

    async def remove_old_images(self, repository: str, keep: set[str]) -> list[str]:
        """Remove images of `repository` whose digest is not in `keep` from every reachable
        instance; the engine refuses (and we skip) any image a container still uses."""
        removed = []
        for inst in await self.store.list_instances():
            if not inst["reachable"]:
                continue
            engine = self.engines.of(inst)
            try:
                images = await engine.images()
            except EngineError:
                continue
            for image in images:
                for ref in image.get("RepoDigests") or ():
                    name, _, digest = ref.rpartition("@")
                    if digest in keep or not _same_repository(name, repository):
                        continue
                    if await engine.remove_image(ref):
                        removed.append(f"{inst['name']}:{ref}")
        return removed

    async def logs(self, task: dict[str, Any], tail: int) -> str:
        if task["status"] == "STOPPED":
            return task["logs"] or ""
        inst = await self.store.get_instance(task["instanceId"])
        engine = self.engines.of(inst)
        out = []
        for c in task["containers"]:
            text = await engine.logs(c["id"], tail=tail)
            out.append(text if len(task["containers"]) == 1 else f"--- {c['name']}\n{text}")
        return "".join(out)


def last_health(task: dict[str, Any]) -> str | None:
    """What a stopped task shows as its last health: the last judgement made while it ran."""
    if task.get("lastHealth"):
        return str(task["lastHealth"])
    return "HEALTHY" if task.get("health") == "HEALTHY" else task.get("health")


def _volume_name(name: str, family: str, task_id: str, cfg: dict[str, Any] | None) -> str:
    """Engine-side name of a named volume: shared by a family's tasks on one instance, so
    data outlives a deployment (task-scoped volumes are refused at registration)."""
    return f"dockyard-{family}-{name}"


def _same_repository(image: str, repository: str) -> bool:
    """`acme/web`, `acme/web:tag`, `host:5000/acme/web@sha256:…` all name repository acme/web."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    if name == repository:
        return True
    first, _, rest = name.partition("/")
    return rest == repository and ("." in first or ":" in first or first == "localhost")
