"""The launcher as one object: what the composition root creates, starts, wires and closes.

    launcher = Launcher(settings, on_deployment_event=outbox.publish)
    await launcher.start()
    launcher.add_routes(app)                 # /launcher/v1/…
    await launcher.handle_envelope(envelope) # in-process push events
    await launcher.images_in_use()           # GC hook: {"acme/web@sha256:…", …}
    await launcher.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dockyard.core.oci import is_digest_valid
from launcher.config import LauncherSettings
from launcher.deployments import Deployments
from launcher.engine import Engines
from launcher.errors import InvalidRequest, NotFound
from launcher.events import pushes
from launcher.instances import Instances
from launcher.model import (
    parse_constraints,
    parse_deployment_configuration,
    parse_service,
    parse_strategy,
    parse_task_definition,
    parse_task_definition_ref,
    tag_matches,
)
from launcher.placement import PlacementHook, Placer
from launcher.reconcile import Reconciler
from launcher.store import Store
from launcher.tasks import TaskRunner

log = logging.getLogger(__name__)

DeploymentListener = Callable[[dict[str, Any]], Awaitable[None]]
STOPPED_TASK_RETENTION = 7 * 86400


class Launcher:
    def __init__(self, settings: LauncherSettings,
                 on_deployment_event: DeploymentListener | None = None, *,
                 on_placement: PlacementHook | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.db_path)
        self.engines = Engines(settings.engine_timeout)
        self.instances = Instances(settings, self.store, self.engines)
        provision = self.instances.provision if self.instances.provider else None
        self.placer = Placer(self.store, settings.instance_types, settings.port_range, provision,
                             on_placement)
        self.instances.placement_lock = self.placer.lock
        self.runner = TaskRunner(settings, self.store, self.engines, self.placer)
        self.deployments = Deployments(settings, self.store, self.runner, on_deployment_event)
        self.reconciler = Reconciler(settings, self.store, self.engines, self.runner)
        self.api_token: str | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._started = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        self.api_token = self._load_token()
        await self.instances.adopt_provisioned()
        await self.instances.sync_static()
        # Before anything new starts: adopt what runs, drop what should not.
        await self.reconciler.run_once()
        await self.instances.maintain_pool()
        for service in await self.store.list_services():
            self.deployments.kick(service["name"])
        self._loop_task = asyncio.create_task(self._background(), name="launcher-reconcile")
        self._started = True

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self.deployments.close()
        await self.instances.settle()
        if self._started and self.settings.stop_provisioned_on_close:
            await self.instances.stop_provisioned()
        if self.instances.provider is not None:
            self.instances.provider.close()
        self.engines.close()
        await self.store.close()
        self._started = False

    async def _background(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                await self.reconcile()
                await self.store.prune_stopped_tasks(STOPPED_TASK_RETENTION)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("launcher reconciliation failed")

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
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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

    async def deploy(self, service: dict[str, Any], *, digest: str, tag: str | None,
                     registry: str | None, trigger: str, force: bool = False
                     ) -> dict[str, Any] | None:
        """Record a deployment of repo@digest for a service and wake its worker.

        Returns None when that image with that task definition is already current or on its
        way (the same digest pushed under a second tag, a registry re-delivering an event).
        """
        if not is_digest_valid(digest or ""):
            raise InvalidRequest("digest must be sha256:<64 hex> or sha512:<128 hex>")
        family, revision = service["family"], service["revision"]
        try:
            task_def = await self.store.get_task_definition(family, revision)
            revision = task_def["revision"]
            reason = None
        except NotFound as exc:
            task_def, revision, reason = None, revision or 0, exc.message
        if task_def is not None and not force:
            candidates = await self.store.list_deployments(
                service["name"], ["PENDING", "IN_PROGRESS"]
            )
            if service["currentDeployment"]:
                with contextlib.suppress(NotFound):
                    candidates.append(
                        await self.store.get_deployment(service["currentDeployment"])
                    )
            if any(d["digest"] == digest and d["revision"] == revision for d in candidates):
                return None
        dep = await self.store.create_deployment({
            "service": service["name"],
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
            return dep
        self.deployments.kick(service["name"])
        return dep

    # --- GC hook ----------------------------------------------------------------------------

    async def images_in_use(self) -> set[str]:
        """`repo@digest` of every image running, about to run, or kept to roll back to."""
        refs = {t["image"] for t in await self.store.list_tasks(active=True, limit=100000)}
        for dep in await self.store.list_deployments(states=["PENDING", "IN_PROGRESS"],
                                                     limit=100000):
            refs.add(dep["image"])
        for service in await self.store.list_services():
            if service["currentDeployment"]:
                with contextlib.suppress(NotFound):
                    refs.add((await self.store.get_deployment(service["currentDeployment"]))
                             ["image"])
        return refs

    # --- operations behind the API ----------------------------------------------------------

    async def register_task_definition(self, body: Any) -> dict[str, Any]:
        return await self.store.register_task_definition(parse_task_definition(body))

    async def create_service(self, body: Any) -> dict[str, Any]:
        spec = parse_service(body)
        await self.store.get_task_definition(spec["family"], spec["revision"])  # must exist
        service = await self.store.create_service(spec)
        digest = body.get("digest") if isinstance(body, dict) else None
        if digest:  # deploy an image that is already in the registry right away
            await self.deploy(service, digest=digest, tag=body.get("tag"),
                              registry=self.settings.registry, trigger="api")
        return await self.store.get_service(service["name"])

    async def update_service(self, name: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object")
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
            changes["tags"] = parse_service({**service, "taskDefinition": service["family"],
                                             "tags": body["tags"]})["tags"]
        if "taskDefinition" in body:
            family, revision = parse_task_definition_ref(body["taskDefinition"])
            await self.store.get_task_definition(family, revision)
            changes.update(family=family, revision=revision)
        if "deploymentConfiguration" in body:
            changes["deploymentConfiguration"] = parse_deployment_configuration(
                body["deploymentConfiguration"])
        if "placementStrategy" in body:
            changes["placementStrategy"] = parse_strategy(body["placementStrategy"])
        if "placementConstraints" in body:
            changes["placementConstraints"] = parse_constraints(body["placementConstraints"])
        previous = service
        service = await self.store.update_service(name, **changes)
        if "family" in changes and previous["currentDeployment"] and (
            (changes["family"], changes["revision"]) != (previous["family"], previous["revision"])
        ):
            # A new task definition for the running image: roll it out like ECS update-service.
            current = await self.store.get_deployment(previous["currentDeployment"])
            await self.deploy(service, digest=current["digest"], tag=current["tag"],
                              registry=current["registry"], trigger="api: task definition")
        self.deployments.kick(name)
        return await self.store.get_service(name)

    async def delete_service(self, name: str) -> None:
        await self.store.get_service(name)
        await self.store.update_service(name, status="DELETING", desiredCount=0)
        self.deployments.kick(name)

    async def manual_deploy(self, name: str, body: Any) -> dict[str, Any] | None:
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object")
        service = await self.store.get_service(name)
        digest = body.get("digest")
        if digest is None and service["currentDeployment"]:
            digest = (await self.store.get_deployment(service["currentDeployment"]))["digest"]
        return await self.deploy(service, digest=digest, tag=body.get("tag"),
                                 registry=body.get("registry") or self.settings.registry,
                                 trigger="api", force=bool(body.get("force", False)))

    async def stop_task(self, task_id: str) -> dict[str, Any]:
        task = await self.store.get_task(task_id)
        await self.runner.stop(task, "stopped by request")
        if task["service"]:
            self.deployments.kick(task["service"])  # the service replaces it
        return await self.store.get_task(task_id)

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

    def add_routes(self, app: web.Application) -> None:
        from launcher.api import LauncherApi

        LauncherApi(self).add_routes(app)


def _public_instance(inst: dict[str, Any], tasks: int, cpu: int, memory: int) -> dict[str, Any]:
    state = inst.pop("provider_state")
    inst.pop("idle_since", None)
    return {
        **inst,
        "providerState": {k: state[k] for k in ("pid", "data_dir", "run_dir") if k in state},
        "runningTasks": tasks,
        "reserved": {"cpu": cpu, "memory": memory},
        "free": {"cpu": inst["cpu"] - cpu, "memory": inst["memory"] - memory},
    }
