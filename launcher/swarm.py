"""The `swarm` backend: a service deploys as a Docker Swarm service, and Swarm runs the rollout.

`[launcher] backend = "swarm"` with `[launcher.swarm] endpoint` (a manager: unix socket, or
tcp with `tls_ca`/`tls_cert`/`tls_key` as for engines). Each dockyard service is one Swarm
service named `<cluster>-<service>` and labelled `dockyard.cluster`/`dockyard.service`, pinned
to `registry/repo@digest`, with the task definition's CPU/memory as reservations and limits,
its health check, `update_config` (start-first when maximumPercent > 100, failure action
rollback unless the service's circuit breaker says not to) and `rollback_config`. dockyard
follows the rollout through the Swarm API (UpdateStatus and the tasks) and reports the same
deployment states as the `engines` backend: SUCCESSFUL, or ROLLED_BACK with the failed task's
error once Swarm has returned to the previous spec by itself.

Secrets come from dockyard's secret store as Swarm secrets (immutable, so named by a hash of
the value: a changed value is a new secret and a rolling update). Swarm's model is a file, not
an environment variable: the secret `{"name": "API_KEY"}` is `/run/secrets/API_KEY`, and
`$API_KEY_FILE` names that path (the convention official images follow). A value in the
environment would be readable by anyone who can `docker service inspect`.

Registry credentials (`[launcher.registry_auth]`) are sent with the service request, as
`docker service create --with-registry-auth` does, so every node can pull from an
authenticated dockyard.

What Swarm cannot express is refused with a reason: several containers per task (a Swarm
service has one), dynamic host ports (every replica has the same spec).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from datetime import datetime
from typing import Any

import docker.errors
import docker.types

from launcher.backend import UNHEALTHY, DeploymentFailed, MakeCurrent
from launcher.config import LauncherSettings
from launcher.engine import LABEL_CLUSTER, LABEL_DEPLOYMENT, LABEL_IMAGE, LABEL_SERVICE, Engine
from launcher.errors import EngineError, NotFound
from launcher.secrets import SecretStore
from launcher.tasks import health_budget, image_ref

NS = 1_000_000_000
FAILED_TASK_STATES = ("failed", "rejected", "orphaned")
UPDATE_DONE = ("completed",)
UPDATE_ROLLED_BACK = ("rollback_completed",)
UPDATE_STUCK = ("paused", "rollback_paused")


def _ns(seconds: float) -> int:
    return int(seconds * NS)


def _swarm_time(value: str | None) -> float:
    """Swarm's RFC 3339 timestamps carry nanoseconds; Python parses microseconds."""
    if not value or value.startswith("0001-"):
        return 0.0
    head, _, frac = value.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(head + "+00:00").timestamp()
    return stamp + (float("0." + frac[:6]) if frac else 0.0)


class SwarmBackend:
    name = "swarm"

    def __init__(self, settings: LauncherSettings, secrets: SecretStore) -> None:
        assert settings.swarm is not None
        self.settings = settings
        self.swarm = settings.swarm
        self.secrets = secrets
        tls = self.swarm.tls.as_dict() if self.swarm.tls else None
        self.manager = Engine(self.swarm.endpoint, settings.engine_timeout, tls)
        self._logged_in: set[str] = set()

    # --- naming -----------------------------------------------------------------------------

    def service_name(self, service: dict[str, Any]) -> str:
        return f"{self.settings.cluster}-{service['name']}"[:63]

    async def find(self, service: dict[str, Any]) -> dict[str, Any] | None:
        labels = [f"{LABEL_CLUSTER}={self.settings.cluster}", f"{LABEL_SERVICE}={service['name']}"]
        found = await self.manager.call(
            "list swarm services", lambda api: api.services(filters={"label": labels}))
        return found[0] if found else None

    # --- the spec ---------------------------------------------------------------------------

    async def _login(self, registry: str | None) -> None:
        """Make the SDK send X-Registry-Auth for `registry` (only ever our own registry's
        robot credential; never handed to another host)."""
        auth = self.settings.registry_auth
        if auth is None or registry is None or registry != self.settings.registry:
            return
        if registry in self._logged_in:
            return
        await self.manager.call(
            f"log in to {registry}",
            lambda api: api.login(auth.username, auth.password, registry=registry))
        self._logged_in.add(registry)

    async def _secret_refs(self, container: dict[str, Any]
                           ) -> tuple[list[docker.types.SecretReference], dict[str, str]]:
        refs: list[docker.types.SecretReference] = []
        env: dict[str, str] = {}
        for item in container.get("secrets") or ():
            try:
                value = await self.secrets.reveal(item["valueFrom"])
            except NotFound:
                raise DeploymentFailed(
                    f"secret {item['valueFrom']} (for {item['name']}) is not in the secret "
                    "store") from None
            digest = hashlib.sha256(value.encode()).hexdigest()[:12]
            name = f"{self.settings.cluster}-{item['valueFrom']}-{digest}"[:64]

            def ensure(api: Any, name: str = name, value: str = value) -> str:
                existing = api.secrets(filters={"name": name})
                for s in existing:
                    if s["Spec"]["Name"] == name:
                        return str(s["ID"])
                created = api.create_secret(name, value.encode(), labels={
                    LABEL_CLUSTER: self.settings.cluster})
                return str(created["ID"])

            secret_id = await self.manager.call(f"create swarm secret {name}", ensure)
            refs.append(docker.types.SecretReference(secret_id, name, filename=item["name"]))
            env[f"{item['name']}_FILE"] = f"/run/secrets/{item['name']}"
        return refs, env

    async def _spec(self, service: dict[str, Any], dep: dict[str, Any],
                    task_def: dict[str, Any]) -> dict[str, Any]:
        containers = task_def["containerDefinitions"]
        if len(containers) != 1:
            raise DeploymentFailed(
                f"task definition {task_def['family']}:{task_def['revision']} has "
                f"{len(containers)} containers; the swarm backend runs one per task (a Swarm "
                "service has one container)")
        c = containers[0]
        env = {e["name"]: e["value"] for e in c["environment"]}
        for pm in c["portMappings"]:
            if not pm["hostPort"]:
                raise DeploymentFailed(
                    "the swarm backend needs fixed ports (hostPort = containerPort): every "
                    "replica runs the same spec on the host network")
            env.setdefault("PORT", str(pm["hostPort"]))
            if pm["name"]:
                env[f"PORT_{pm['name'].upper()}"] = str(pm["hostPort"])
        env.update(DOCKYARD_SERVICE=service["name"], DOCKYARD_DEPLOYMENT=dep["id"],
                   DOCKYARD_IMAGE=dep["image"], DOCKYARD_TASK_ID="{{.Task.ID}}")
        secret_refs, secret_env = await self._secret_refs(c)
        env.update(secret_env)
        hc = c["healthCheck"]
        healthcheck = None
        if hc is not None:
            healthcheck = docker.types.Healthcheck(
                test=hc["command"], interval=_ns(hc["interval"]), timeout=_ns(hc["timeout"]),
                retries=hc["retries"], start_period=_ns(hc["startPeriod"]))
        volumes = {v["name"]: v for v in task_def.get("volumes") or ()}
        mounts = []
        for m in c.get("mountPoints") or ():
            vol = volumes[m["sourceVolume"]]
            if "host" in vol:
                mounts.append(docker.types.Mount(m["containerPath"], vol["host"]["sourcePath"],
                                                 type="bind", read_only=m["readOnly"]))
            else:
                mounts.append(docker.types.Mount(
                    m["containerPath"], f"{self.settings.cluster}-{task_def['family']}-"
                    f"{vol['name']}", type="volume", read_only=m["readOnly"]))
        cpu = c["cpu"] or task_def.get("cpu") or 0
        memory = c["memory"] or task_def.get("memory") or 0
        reservation = c["memoryReservation"] or memory
        image = image_ref(dep["registry"], dep["repository"], dep["digest"])
        labels = {LABEL_CLUSTER: self.settings.cluster, LABEL_SERVICE: service["name"],
                  LABEL_DEPLOYMENT: dep["id"], LABEL_IMAGE: dep["image"]}
        command = c["entryPoint"] or None
        args = c["command"] or None
        if command is None and args is not None:
            command, args = args, None  # an ECS command with no entryPoint replaces CMD
        container_spec = docker.types.ContainerSpec(
            image, command=command, args=args, env=env, labels=labels, mounts=mounts,
            secrets=secret_refs, healthcheck=healthcheck, init=True,
            stop_grace_period=_ns(c["stopTimeout"] or self.settings.stop_timeout),
            workdir=c.get("workingDirectory"), user=c.get("user"),
        )
        log_cfg = c.get("logConfiguration")
        template = docker.types.TaskTemplate(
            container_spec,
            resources=docker.types.Resources(
                cpu_limit=cpu * NS // 1024 if cpu else None,
                cpu_reservation=cpu * NS // 1024 if cpu else None,
                mem_limit=memory * 1024 * 1024 if memory else None,
                mem_reservation=reservation * 1024 * 1024 if reservation else None),
            restart_policy=docker.types.RestartPolicy(condition="any", delay=NS),
            log_driver=(docker.types.DriverConfig(log_cfg["logDriver"], log_cfg["options"])
                        if log_cfg else None),
            networks=[self.swarm.network],
        )
        desired = service["desiredCount"]
        config = service["deploymentConfiguration"]
        breaker = service.get("deploymentCircuitBreaker") or {"threshold": 1, "rollback": True}
        # maximumPercent above 100 leaves room to start new tasks first; at 100 an old task
        # must stop first. minimumHealthyPercent bounds how many go at once.
        extra = math.floor(desired * config["maximumPercent"] / 100) - desired
        spare = desired - math.ceil(desired * config["minimumHealthyPercent"] / 100)
        start_first = extra > 0
        parallelism = max(1, extra if start_first else spare)
        monitor = _ns(health_budget(task_def, self.settings) + 1.0)
        # The circuit breaker: threshold - 1 failed tasks are tolerated.
        ratio = min(1.0, (int(breaker.get("threshold", 1)) - 1) / max(1, desired))
        order = "start-first" if start_first else "stop-first"
        return {
            "task_template": template,
            "name": self.service_name(service),
            "labels": labels,
            "mode": docker.types.ServiceMode("replicated", replicas=desired),
            "update_config": docker.types.UpdateConfig(
                parallelism=parallelism, delay=0, monitor=monitor, max_failure_ratio=ratio,
                order=order,
                failure_action="rollback" if breaker.get("rollback", True) else "pause"),
            "rollback_config": docker.types.RollbackConfig(
                parallelism=parallelism, delay=0, monitor=monitor, failure_action="pause",
                order=order),
        }

    # --- the interface ----------------------------------------------------------------------

    async def roll_out(self, service: dict[str, Any], deployment: dict[str, Any],
                       task_def: dict[str, Any], make_current: MakeCurrent) -> None:
        await self._apply(service, deployment, task_def)
        await make_current()

    async def _apply(self, service: dict[str, Any], dep: dict[str, Any],
                     task_def: dict[str, Any]) -> None:
        spec = await self._spec(service, dep, task_def)
        await self._login(dep["registry"])
        existing = await self.find(service)
        since = time.time() - 1.0  # clock granularity; Swarm runs on this machine's clock
        if existing is None:
            created = await self.manager.call(
                f"create swarm service {spec['name']}",
                lambda api: api.create_service(**spec))
            await self._follow_create(str(created["ID"]), service, dep, task_def)
            return
        await self.manager.call(
            f"update swarm service {spec['name']}",
            lambda api: api.update_service(existing["ID"], existing["Version"]["Index"], **spec))
        await self._follow_update(str(existing["ID"]), service, dep, task_def, since)

    def _deadline(self, task_def: dict[str, Any], desired: int) -> float:
        # Pulls, health checks and Swarm's own monitor period, per batch; generous because
        # Swarm itself decides failure (this only guards against a rollout that never ends).
        per_task = health_budget(task_def, self.settings) + self.settings.health_grace
        return time.monotonic() + self.settings.engine_timeout + per_task * max(1, desired) * 2

    async def _tasks(self, service_id: str) -> list[dict[str, Any]]:
        return await self.manager.call(
            "list swarm tasks", lambda api: api.tasks(filters={"service": service_id}))

    def _image_of(self, task: dict[str, Any]) -> str:
        return str(task.get("Spec", {}).get("ContainerSpec", {}).get("Image", ""))

    async def _failure(self, service_id: str, image: str, message: str | None) -> str:
        """Why tasks of `image` failed, as Swarm recorded it on the newest failed task."""
        failed = [t for t in await self._tasks(service_id)
                  if self._image_of(t).startswith(image)
                  and (t["Status"].get("Err") or t["Status"]["State"] in FAILED_TASK_STATES)]
        failed.sort(key=lambda t: t["Status"].get("Timestamp", ""))
        if failed:
            last = failed[-1]
            status = last["Status"]
            why = status.get("Err") or status.get("Message") or status["State"]
            return f"swarm task {last['ID'][:12]}: {why}"
        return message or "the swarm rollout failed"

    async def _follow_create(self, service_id: str, service: dict[str, Any],
                             dep: dict[str, Any], task_def: dict[str, Any]) -> None:
        desired = service["desiredCount"]
        threshold = int((service.get("deploymentCircuitBreaker") or {}).get("threshold", 1))
        image = image_ref(dep["registry"], dep["repository"], dep["digest"])
        deadline = self._deadline(task_def, desired)
        while True:
            tasks = [t for t in await self._tasks(service_id)
                     if self._image_of(t).startswith(image)]
            running = [t for t in tasks if t["Status"]["State"] == "running"
                       and t["DesiredState"] == "running"]
            failed = [t for t in tasks if t["Status"]["State"] in FAILED_TASK_STATES
                      or (t["Status"]["State"] in ("complete", "shutdown")
                          and t["DesiredState"] == "shutdown" and t["Status"].get("Err"))]
            if len(running) >= desired:
                return
            if len(failed) >= threshold:
                raise DeploymentFailed(await self._failure(service_id, image, None), UNHEALTHY)
            if time.monotonic() > deadline:
                raise DeploymentFailed(f"{len(running)} of {desired} swarm task(s) running "
                                       "before the deadline")
            await asyncio.sleep(self.settings.poll_interval)

    async def _follow_update(self, service_id: str, service: dict[str, Any],
                             dep: dict[str, Any], task_def: dict[str, Any],
                             since: float) -> None:
        image = image_ref(dep["registry"], dep["repository"], dep["digest"])
        deadline = self._deadline(task_def, service["desiredCount"])
        while True:
            info = await self.manager.call("inspect swarm service",
                                           lambda api: api.inspect_service(service_id))
            status = info.get("UpdateStatus") or {}
            state = status.get("State")
            fresh = _swarm_time(status.get("StartedAt")) >= since
            if fresh and state in UPDATE_DONE:
                return
            if fresh and state in UPDATE_ROLLED_BACK:
                raise DeploymentFailed(
                    await self._failure(service_id, image, status.get("Message")),
                    UNHEALTHY, rolled_back=True)
            if fresh and state in UPDATE_STUCK:
                raise DeploymentFailed(
                    f"swarm paused the update: {status.get('Message') or state}; "
                    + await self._failure(service_id, image, None))
            if time.monotonic() > deadline:
                raise DeploymentFailed(f"the swarm update did not finish (state {state})")
            await asyncio.sleep(self.settings.poll_interval)

    async def keep_running(self, service: dict[str, Any], deployment: dict[str, Any],
                           task_def: dict[str, Any]) -> None:
        """Swarm keeps replicas running itself; dockyard only carries desiredCount over, and
        recreates the Swarm service if someone removed it."""
        existing = await self.find(service)
        if existing is None:
            await self._apply(service, deployment, task_def)
            return
        replicas = existing["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas")
        if replicas != service["desiredCount"]:
            await self.manager.call(
                f"scale swarm service {existing['Spec']['Name']}",
                lambda api: api.update_service(
                    existing["ID"], existing["Version"]["Index"], fetch_current_spec=True,
                    mode=docker.types.ServiceMode("replicated",
                                                  replicas=service["desiredCount"])))

    async def return_to(self, service: dict[str, Any], failed: dict[str, Any],
                        target: dict[str, Any], task_def: dict[str, Any]) -> None:
        await self._apply(service, target, task_def)

    async def stop_deployment(self, deployment: dict[str, Any], why: str) -> None:
        """Nothing to return to: remove the Swarm service if it runs this deployment."""
        existing = await self.find({"name": deployment["service"]})
        if existing and existing["Spec"].get("Labels", {}).get(LABEL_DEPLOYMENT) == \
                deployment["id"]:
            await self._remove(existing["ID"])

    async def retire(self, service: dict[str, Any]) -> None:
        existing = await self.find(service)
        if existing is not None:
            await self._remove(existing["ID"])

    async def _remove(self, service_id: str) -> None:
        try:
            await self.manager.call("remove swarm service",
                                    lambda api: api.remove_service(service_id))
        except docker.errors.NotFound:
            pass

    async def describe(self, service: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.name, "swarmServiceId": None}
        try:
            existing = await self.find(service)
        except EngineError as exc:
            return {**out, "message": f"swarm manager unreachable: {exc.message}"}
        if existing is None:
            return out
        tasks = [t for t in await self._tasks(existing["ID"]) if t["DesiredState"] == "running"]
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        return {
            **out,
            "swarmServiceId": existing["ID"],
            "swarmServiceName": existing["Spec"]["Name"],
            # A Swarm task with a health check is "starting" until healthy, then "running".
            "runningCount": len(running),
            "healthyCount": len(running),
            "pendingCount": len(tasks) - len(running),
            "tasks": [{
                "id": t["ID"], "slot": t.get("Slot"), "node": t.get("NodeID"),
                "status": t["Status"]["State"].upper(), "desiredStatus": t["DesiredState"],
                "image": self._image_of(t), "error": t["Status"].get("Err"),
                "containerId": (t["Status"].get("ContainerStatus") or {}).get("ContainerID"),
            } for t in tasks],
        }

    async def close(self) -> None:
        self.manager.close()
