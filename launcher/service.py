"""The launcher as one object: what the composition root creates, starts, wires and closes.

    launcher = Launcher(settings, on_deployment_event=outbox.publish, db=database)
    await launcher.start(leases=leases)      # or leader=True (one node) / leader=False
    launcher.api.add_routes(app, launcher)   # /launcher/v1/… (launcher.api.add_routes)
    await launcher.handle_envelope(envelope) # in-process push events (any node)
    await launcher.images_in_use()           # GC hook: {"acme/web@sha256:…", …}
    await launcher.close()

Every node serves the API and records intent (task definitions, services, deployments) in the
database. Only the *leader* acts on engines in the background: it reconciles, runs the service
workers that roll deployments out, heartbeats instances and moves tasks off lost ones. With
`leases` the leader is whoever holds the `launcher:<cluster>` lease; a node that takes the lease
over resumes every deployment from the database (reconcile, then the same workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets as pysecrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dockyard.core.leases import Leases, Singleton
from dockyard.core.oci import is_digest_valid, is_tag
from dockyard.core.sql import Database
from launcher.backend import Backend
from launcher.config import LauncherSettings
from launcher.deployments import Deployments
from launcher.engine import Engines
from launcher.engines_backend import EnginesBackend
from launcher.errors import InvalidRequest, NotFound
from launcher.events import pushes
from launcher.ingress import Ingress
from launcher.instances import Instances
from launcher.model import (
    parse_circuit_breaker,
    parse_constraints,
    parse_deployment_configuration,
    parse_ingress,
    parse_order,
    parse_service,
    parse_strategy,
    parse_tags,
    parse_task_definition,
    parse_task_definition_ref,
    tag_matches,
)
from launcher.placement import PlacementHook, Placer
from launcher.policy import refuse_reason
from launcher.reconcile import Reconciler
from launcher.registry_client import resolve_tag
from launcher.secrets import SecretStore
from launcher.store import Store
from launcher.swarm import SwarmBackend
from launcher.tasks import TaskRunner

log = logging.getLogger(__name__)

DeploymentListener = Callable[[dict[str, Any]], Awaitable[None]]
STOPPED_TASK_RETENTION = 7 * 86400
ACTIVE_DEPLOYMENT_STATES = ("PENDING", "IN_PROGRESS")


@dataclass(frozen=True)
class DeployOutcome:
    """What a deploy request did: a new deployment, or why there is none."""

    deployment: dict[str, Any] | None
    message: str


class Launcher:
    def __init__(self, settings: LauncherSettings,
                 on_deployment_event: DeploymentListener | None = None, *,
                 on_placement: PlacementHook | None = None,
                 db: Database | None = None) -> None:
        self.settings = settings
        self.store = Store(db, data_dir=settings.data_dir, url=settings.database_url)
        self.engines = Engines(settings.engine_timeout)
        self.secrets = SecretStore(self.store, settings.secret_key_path)
        self.instances = Instances(settings, self.store, self.engines)
        provision = self.instances.provision if self.instances.provider else None
        self.placer = Placer(self.store, settings.instance_types, settings.port_range, provision,
                             on_placement)
        self.instances.placement_lock = self.placer.lock
        self.runner = TaskRunner(settings, self.store, self.engines, self.placer, self.secrets)
        backend: Backend = EnginesBackend(settings, self.store, self.runner)
        if settings.backend == "swarm":
            backend = SwarmBackend(settings, self.secrets)
        self.backend = backend
        self.deployments = Deployments(settings, self.store, self.runner, on_deployment_event,
                                       backend)
        self.reconciler = Reconciler(settings, self.store, self.engines, self.runner)
        self.ingress = Ingress(settings.ingress, self.store) if settings.ingress else None
        self.api_token: str | None = None
        self.leading = False
        self._loops: list[asyncio.Task[None]] = []
        self._singleton: Singleton | None = None
        self._lead_lock = asyncio.Lock()
        self._started = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, *, leader: bool = True, leases: Leases | None = None) -> None:
        """Open the state and serve. With `leases`, lead while holding the cluster's lease;
        otherwise lead when `leader` is true (one node) and only serve when it is false."""
        await self.store.open()
        self.api_token = self._load_token()
        if self.ingress is not None:
            await self.ingress.start()
        self._started = True
        if leases is not None:
            self._singleton = Singleton(leases, f"launcher:{self.settings.cluster}",
                                        self._lead_while_held, ttl=self.settings.leader_ttl)
            self._singleton.start()
        elif leader:
            await self.lead()

    async def close(self) -> None:
        if self._singleton is not None:
            await self._singleton.close()  # steps down first, then gives the lease up
            self._singleton = None
        await self.step_down()
        if self.ingress is not None:
            await self.ingress.close()
        if self._started and self.settings.stop_provisioned_on_close:
            await self.instances.stop_provisioned()
        if self.instances.provider is not None:
            self.instances.provider.close()
        await self.backend.close()
        self.engines.close()
        await self.store.close()
        self._started = False

    async def lead(self) -> None:
        """Become the node that acts: adopt what runs, then resume every service's work."""
        async with self._lead_lock:
            if self.leading:
                return
            self.deployments.open()
            await self.instances.adopt_provisioned()
            await self.instances.sync_static()
            # Before anything new starts: adopt what runs, drop what should not.
            await self.reconciler.run_once()
            await self.instances.maintain_pool()
            for service in await self.store.list_services():
                self.deployments.kick(service["name"])
            self.leading = True
            self._loops = [
                asyncio.create_task(self._background(), name="launcher-reconcile"),
                asyncio.create_task(self._heartbeats(), name="launcher-heartbeats"),
            ]
            log.info("launcher %s: leading", self.settings.cluster)

    async def step_down(self) -> None:
        """Stop acting on engines (lease lost, shutdown); what runs keeps running."""
        async with self._lead_lock:
            loops, self._loops = self._loops, []
            for loop in loops:
                loop.cancel()
            for loop in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await self.deployments.close()
            await self.instances.settle()
            if self.leading:
                log.info("launcher %s: no longer leading", self.settings.cluster)
            self.leading = False

    async def _lead_while_held(self) -> None:
        try:
            await self.lead()
            await asyncio.Event().wait()
        finally:
            await self.step_down()

    async def _background(self) -> None:
        generations = await self.store.service_generations()
        last_reconcile = time.monotonic()
        while True:
            await asyncio.sleep(min(self.settings.poll_interval, 1.0))
            try:
                # Work other nodes recorded through their API: new deployments, changed specs.
                for name in await self.store.services_with_work():
                    self.deployments.kick(name)
                now = await self.store.service_generations()
                for name, generation in now.items():
                    if generations.get(name) != generation:
                        self.deployments.changed(name)
                generations = now
                if time.monotonic() - last_reconcile >= self.settings.reconcile_interval:
                    last_reconcile = time.monotonic()
                    await self.reconcile()
                    await self.store.prune_stopped_tasks(STOPPED_TASK_RETENTION)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("launcher background loop failed")

    async def _heartbeats(self) -> None:
        while True:
            try:
                lost = await self.instances.heartbeat()
                if lost:
                    await self._move_tasks_off(lost)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("launcher heartbeats failed")
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _move_tasks_off(self, lost: list[dict[str, Any]]) -> None:
        """An instance unreachable for longer than instance_grace_seconds: its tasks count as
        stopped (their containers are removed when it comes back) and are placed elsewhere."""
        for inst in lost:
            for task in await self.store.list_tasks(instance_id=inst["id"], active=True):
                why = (f"instance {inst['name']} lost (unreachable for more than "
                       f"{self.settings.instance_grace_seconds:g}s)")
                await self.runner.forget(task, why)
                if task["service"]:
                    await self.store.add_service_event(
                        task["service"], "moved",
                        f"task {task['id'][:12]} on {inst['name']}: {why}; replacing it "
                        "elsewhere", task_id=task["id"], deployment_id=task["deploymentId"])
                    self.deployments.changed(task["service"])

    async def reconcile(self) -> dict[str, int]:
        counts = await self.reconciler.run_once()
        await self.instances.maintain_pool()
        for service in await self.store.list_services():
            self.deployments.kick(service["name"])
        return counts

    def _load_token(self) -> str | None:
        if not self.settings.api_auth:
            return None
        if self.settings.api_token:
            return self.settings.api_token
        path = self.settings.token_path
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        token = pysecrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another node or process made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token

    # --- push events ------------------------------------------------------------------------

    async def handle_envelope(self, envelope: dict[str, Any]) -> None:
        """Start deployments for the manifest pushes in a notification envelope.

        Returns once the deployments are recorded (PENDING); they run in the background.
        """
        for push in pushes(envelope):
            if push.event_id and not await self.store.first_sighting(push.event_id):
                continue  # a registry retrying a delivery
            for service in await self.store.list_services(repository=push.repository):
                if service["status"] != "ACTIVE" or not tag_matches(service["tags"], push.tag):
                    continue
                await self.deploy(
                    service,
                    digest=push.digest,
                    tag=push.tag,
                    registry=self.settings.registry or push.registry,
                    trigger=f"event {push.event_id}" if push.event_id else "event",
                )

    async def deploy(self, service: dict[str, Any], *, digest: str | None, tag: str | None,
                     registry: str | None, trigger: str, force: bool = False) -> DeployOutcome:
        """Record a deployment of repo@digest for a service and wake its worker.

        No deployment when that image with that task definition is already current or on its
        way (the same digest pushed under a second tag, a registry re-delivering an event), or
        when the service's order refuses the tag (unless `force`).
        """
        if not is_digest_valid(digest or ""):
            raise InvalidRequest("digest must be sha256:<64 hex> or sha512:<128 hex>")
        assert digest is not None
        name = service["name"]
        family, revision = service["family"], service["revision"]
        try:
            task_def = await self.store.get_task_definition(family, revision)
            revision = task_def["revision"]
            reason = None
        except NotFound as exc:
            task_def, revision, reason = None, revision or 0, exc.message
        candidates = await self.store.list_deployments(name, ACTIVE_DEPLOYMENT_STATES)
        if service["currentDeployment"]:
            with contextlib.suppress(NotFound):
                candidates.append(await self.store.get_deployment(service["currentDeployment"]))
        if not force:
            if task_def is not None and any(
                d["digest"] == digest and d["revision"] == revision for d in candidates
            ):
                return DeployOutcome(None, "that image is already deployed or being deployed")
            why = refuse_reason(service.get("order", "any"), tag, [d["tag"] for d in candidates])
            if why is not None:
                await self.store.add_service_event(
                    name, "ignored", f"push of {service['repository']}:{tag} ({digest[:19]}…) "
                    f"not deployed: {why}; deploy it with --force")
                return DeployOutcome(None, f"not deployed: {why} (use force to deploy anyway)")
        dep = await self.store.create_deployment({
            "service": name,
            "repository": service["repository"],
            "tag": tag,
            "digest": digest,
            "registry": registry,
            "family": family,
            "revision": revision,
            "trigger": trigger,
        })
        await self.deployments.emit(dep, None)
        if task_def is None:
            dep = await self.store.set_deployment_state(dep["id"], "FAILED", reason)
            await self.deployments.emit(dep, "PENDING")
            return DeployOutcome(dep, "task definition missing")
        self.deployments.kick(name)
        return DeployOutcome(dep, "deployment recorded")

    # --- GC hook ----------------------------------------------------------------------------

    async def images_in_use(self) -> set[str]:
        """`repo@digest` of every image running, about to run, or kept to roll back to."""
        refs = {t["image"] for t in await self.store.list_tasks(active=True, limit=100000)}
        for dep in await self.store.list_deployments(states=ACTIVE_DEPLOYMENT_STATES,
                                                     limit=100000):
            refs.add(dep["image"])
        for service in await self.store.list_services():
            for ref in (service["currentDeployment"], service["previousDeployment"]):
                if ref:
                    with contextlib.suppress(NotFound):
                        refs.add((await self.store.get_deployment(ref))["image"])
        return refs

    # --- operations behind the API ----------------------------------------------------------

    async def register_task_definition(self, body: Any) -> dict[str, Any]:
        return await self.store.register_task_definition(
            parse_task_definition(body, volume_roots=self.settings.volume_roots))

    async def create_service(self, body: Any) -> dict[str, Any]:
        spec = parse_service(body)
        await self.store.get_task_definition(spec["family"], spec["revision"])  # must exist
        service = await self.store.create_service(spec)
        digest = body.get("digest") if isinstance(body, dict) else None
        if digest:  # deploy an image that is already in the registry right away
            await self.deploy(service, digest=digest, tag=body.get("tag"),
                              registry=self.settings.registry, trigger="api")
        return await self.store.get_service(service["name"])

    async def describe_service(self, name: str) -> dict[str, Any]:
        service = await self.store.get_service(name)
        tasks = await self.store.list_tasks(service=name, active=True)
        current = None
        if service["currentDeployment"]:
            with contextlib.suppress(NotFound):
                current = await self.store.get_deployment(service["currentDeployment"])
        running = [t for t in tasks if t["status"] == "RUNNING"]
        healthy = [t for t in running if t["health"] == "HEALTHY"]
        events = await self.store.list_service_events(name, limit=5)
        shortfall = await self.store.list_service_events(name, limit=1, kinds=["shortfall"])
        out = {
            **service,
            "runningCount": len(running),
            "healthyCount": len(healthy),
            "pendingCount": len(tasks) - len(running),
            "current": _without_epochs(current) if current else None,
            "tasks": [_without_epochs(t) for t in tasks],
            "events": events,
        }
        if len(healthy) < service["desiredCount"] and shortfall:
            out["message"] = shortfall[0]["message"]
        # The backend's own view (Swarm: its service id and tasks) wins over the task table.
        out.update(await self.backend.describe(service))
        return out

    async def update_service(self, name: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object")
        known = {"desiredCount", "tags", "taskDefinition", "deploymentConfiguration",
                 "placementStrategy", "placementConstraints", "order", "ingress",
                 "deploymentCircuitBreaker"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise InvalidRequest(f"cannot update {', '.join(unknown)} of a service")
        service = await self.store.get_service(name)
        if service["status"] != "ACTIVE":
            raise InvalidRequest(f"service {name} is being deleted")
        changes: dict[str, Any] = {}
        if "desiredCount" in body:
            count = body["desiredCount"]
            if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 1000:
                raise InvalidRequest("desiredCount must be an integer between 0 and 1000")
            changes["desiredCount"] = count
        if "tags" in body:
            changes["tags"] = parse_tags(body["tags"])
        if "taskDefinition" in body:
            family, revision = parse_task_definition_ref(body["taskDefinition"])
            await self.store.get_task_definition(family, revision)
            changes.update(family=family, revision=revision)
        if "deploymentConfiguration" in body:
            merged = {**service["deploymentConfiguration"], **(body["deploymentConfiguration"]
                                                                or {})}
            changes["deploymentConfiguration"] = parse_deployment_configuration(merged)
        if "placementStrategy" in body:
            changes["placementStrategy"] = parse_strategy(body["placementStrategy"])
        if "placementConstraints" in body:
            changes["placementConstraints"] = parse_constraints(body["placementConstraints"])
        if "order" in body:
            changes["order"] = parse_order(body["order"])
        if "ingress" in body:
            changes["ingress"] = parse_ingress(body["ingress"])
        if "deploymentCircuitBreaker" in body:
            changes["deploymentCircuitBreaker"] = parse_circuit_breaker(
                body["deploymentCircuitBreaker"])
        previous = service
        service = await self.store.update_service(name, **changes)
        if "family" in changes and previous["currentDeployment"] and (
            (changes["family"], changes["revision"]) != (previous["family"], previous["revision"])
        ):
            # A new task definition for the running image: roll it out like ECS update-service.
            current = await self.store.get_deployment(previous["currentDeployment"])
            await self.deploy(service, digest=current["digest"], tag=current["tag"],
                              registry=current["registry"], trigger="api: task definition",
                              force=True)
        self.deployments.changed(name)
        return await self.store.get_service(name)

    async def delete_service(self, name: str) -> None:
        await self.store.get_service(name)
        await self.store.update_service(name, status="DELETING", desiredCount=0)
        self.deployments.changed(name)

    async def _registry_for(self, service: dict[str, Any], given: Any) -> str:
        """Where a hand-made deployment pulls from: the request, the config, or the registry
        the service's current image came from — never a silent default (Docker Hub)."""
        if given:
            if not isinstance(given, str):
                raise InvalidRequest("registry must be host[:port]")
            return given
        if self.settings.registry:
            return self.settings.registry
        for ref in (service["currentDeployment"], service["previousDeployment"]):
            if ref:
                with contextlib.suppress(NotFound):
                    dep = await self.store.get_deployment(ref)
                    if dep["registry"]:
                        return str(dep["registry"])
        for dep in await self.store.list_deployments(service["name"], limit=20):
            if dep["registry"]:
                return str(dep["registry"])
        raise InvalidRequest(
            "no registry known for this service: set [launcher] registry, or pass registry "
            "(engines would otherwise pull from Docker Hub)")

    async def manual_deploy(self, name: str, body: Any) -> DeployOutcome:
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object")
        unknown = sorted(set(body) - {"digest", "tag", "force", "registry"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}")
        service = await self.store.get_service(name)
        digest, tag = body.get("digest"), body.get("tag")
        if tag is not None and (not isinstance(tag, str) or not is_tag(tag)):
            raise InvalidRequest("tag must be a tag name")
        registry = await self._registry_for(service, body.get("registry"))
        if digest is None and tag is not None:
            digest = await resolve_tag(registry, service["repository"], tag,
                                       self.settings.registry_auth
                                       if registry == self.settings.registry else None)
        elif digest is None and service["currentDeployment"]:
            current = await self.store.get_deployment(service["currentDeployment"])
            digest, tag = current["digest"], current["tag"]
        elif digest is None:
            raise InvalidRequest("give a digest or a tag (the service runs nothing yet)")
        return await self.deploy(service, digest=digest, tag=tag, registry=registry,
                                 trigger="api", force=bool(body.get("force", False)))

    async def rollback(self, name: str, body: Any) -> DeployOutcome:
        """Deploy an earlier image again: the previous successful deployment, or `to` (a digest
        or deployment id) — regardless of the service's order."""
        if not isinstance(body, dict) or set(body) - {"to", "previous"}:
            raise InvalidRequest('body must be {"previous": true} or {"to": DIGEST}')
        service = await self.store.get_service(name)
        target: dict[str, Any] | None = None
        to = body.get("to")
        if to:
            if not isinstance(to, str):
                raise InvalidRequest("to must be a digest or a deployment id")
            for dep in await self.store.list_deployments(name, limit=1000):
                if dep["digest"] == to or dep["id"] == to or dep["id"].startswith(to):
                    target = dep
                    break
            if target is None:
                if not is_digest_valid(to):
                    raise NotFound(f"service {name} never deployed {to}")
                target = {"digest": to, "tag": None,
                          "registry": await self._registry_for(service, None)}
        else:
            ref = service["previousDeployment"]
            if not ref:
                raise InvalidRequest(f"service {name} has no previous deployment to return to")
            target = await self.store.get_deployment(ref)
        outcome = await self.deploy(service, digest=target["digest"], tag=target["tag"],
                                    registry=target["registry"] or self.settings.registry,
                                    trigger="rollback", force=True)
        await self.store.add_service_event(
            name, "rollback", f"rollback to {service['repository']}@{target['digest']} "
            "requested", deployment_id=outcome.deployment["id"] if outcome.deployment else None)
        return outcome

    async def set_instance_status(self, ident: str, status: Any) -> dict[str, Any]:
        inst = await self.instances.set_status(ident, status)
        for service in await self.store.list_services():
            self.deployments.changed(service["name"])  # replace tasks on a drained one
        return inst

    async def stop_task(self, task_id: str) -> dict[str, Any]:
        task = await self.store.get_task(task_id)
        await self.runner.stop(task, "stopped by request")
        if task["service"]:
            self.deployments.changed(task["service"])  # the service replaces it
        return await self.store.get_task(task["id"])

    async def task_logs(self, task_id: str, tail: int) -> str:
        return await self.runner.logs(await self.store.get_task(task_id), tail)

    async def describe_instances(self) -> list[dict[str, Any]]:
        tasks = await self.store.list_tasks(active=True, limit=100000)
        out = []
        for inst in await self.store.list_instances():
            mine = [t for t in tasks if t["instanceId"] == inst["id"]]
            cpu, memory = sum(t["cpu"] for t in mine), sum(t["memory"] for t in mine)
            out.append(_public_instance(inst, len(mine), cpu, memory))
        return out

    async def describe_instance(self, ident: str) -> dict[str, Any]:
        inst = await self.store.get_instance(ident)
        mine = await self.store.list_tasks(instance_id=inst["id"], active=True)
        return _public_instance(inst, len(mine), sum(t["cpu"] for t in mine),
                                sum(t["memory"] for t in mine))

    async def wait_idle(self) -> None:
        """Wait for every service worker to finish (for tests and orderly shutdown)."""
        await self.deployments.idle()


def _without_epochs(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("created", "started", "times")}


def _public_instance(inst: dict[str, Any], tasks: int, cpu: int, memory: int) -> dict[str, Any]:
    state = inst.pop("provider_state")
    for internal in ("idle_since", "last_seen_at", "unreachable_since"):
        inst.pop(internal, None)
    return {
        **inst,
        "providerState": {k: state[k] for k in ("pid", "data_dir", "run_dir") if k in state},
        "runningTasks": tasks,
        "reserved": {"cpu": cpu, "memory": memory},
        "free": {"cpu": inst["cpu"] - cpu, "memory": inst["memory"] - memory},
    }
