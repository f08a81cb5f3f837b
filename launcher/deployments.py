"""Deployments: health-gated rolling replacement with automatic rollback.

One worker per service runs that service's deployments one at a time. A deployment brings
`desiredCount` tasks of the new image to HEALTHY while keeping at least `minimumHealthyPercent`
of the service healthy and at most `maximumPercent` of it running, and only then stops the old
tasks. Two ways to fail, with distinct outcomes:
- *unhealthy*: new tasks exit, fail their health check or miss their deadline. After
  `deploymentCircuitBreaker.threshold` such tasks the deployment is FAILED and the service
  returns to its last SUCCESSFUL deployment (ECS's circuit breaker, Nomad's `auto_revert`),
  ending ROLLED_BACK;
- *cannot place*: no instance can take a new task now (capacity, ports, constraints). The image
  is not to blame, so nothing is rolled back "for being bad": the deployment ends BLOCKED with
  the placement's reason, and the previous deployment keeps (or gets back) its tasks.
Every state change is stored and emitted, and the service's event log records placements,
shortfalls, health failures and rollbacks.

Everything is driven from the database, so the same loop resumes a deployment after a restart
or on a new leader. The same loop, aimed at the service's current deployment, keeps a steady
service at its desired count (replacing tasks that died or sit on draining or lost instances).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from launcher.backend import CANNOT_PLACE, Backend, DeploymentFailed
from launcher.config import LauncherSettings
from launcher.engines_backend import EnginesBackend
from launcher.errors import NotFound
from launcher.store import Store, _iso
from launcher.tasks import TaskRunner

log = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], Awaitable[None]]

class Deployments:
    def __init__(self, settings: LauncherSettings, store: Store, runner: TaskRunner,
                 listener: Listener | None, backend: Backend | None = None) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.backend: Backend = backend or EnginesBackend(settings, store, runner)
        self.listener = listener
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._maintenance_failures: dict[str, tuple[int, float]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self.closing = True  # until the launcher leads

    # --- scheduling -------------------------------------------------------------------------

    def open(self) -> None:
        self.closing = False

    def kick(self, service: str) -> None:
        """Make the service's worker look at it again (new deployment, changed count, …).
        A node that does not lead ignores it: the leader notices the change in the database."""
        if self.closing:
            return
        worker = self._workers.get(service)
        if worker is not None and not worker.done():
            self._again.add(service)
            return
        self._workers[service] = asyncio.create_task(self._work(service),
                                                     name=f"launcher-service-{service}")

    def changed(self, service: str) -> None:
        """The service's spec changed: act now, even if keeping it running was backing off
        (a scale-down must not wait for the retry timer of a failed scale-up)."""
        self._maintenance_failures.pop(service, None)
        self.kick(service)

    async def _work(self, service: str) -> None:
        while True:
            self._again.discard(service)
            try:
                await self._process(service)
            except asyncio.CancelledError:
                raise
            except NotFound:
                return  # deleted meanwhile
            except Exception:
                log.exception("service %s: worker failed", service)
            if service not in self._again or self.closing:
                return

    async def idle(self) -> None:
        """Wait until no worker runs (tests, shutdown)."""
        while any(not w.done() for w in self._workers.values()):
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def close(self) -> None:
        self.closing = True
        tasks = [*self._workers.values(), *self._cleanups]
        for worker in tasks:
            worker.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._again.clear()

    # --- state changes ----------------------------------------------------------------------

    async def _set_state(self, dep: dict[str, Any], state: str, reason: str | None,
                         **fields: Any) -> dict[str, Any]:
        previous = dep["state"]
        dep = await self.store.set_deployment_state(dep["id"], state, reason, **fields)
        log.info("deployment %s of %s: %s -> %s %s", dep["id"][:12], dep["service"],
                 previous, state, reason or "")
        if state != previous:
            await self.store.add_service_event(
                dep["service"], "deployment",
                f"deployment {dep['id'][:12]} ({dep['tag'] or dep['digest'][:19]}): {state}"
                + (f": {reason}" if reason else ""), deployment_id=dep["id"])
        await self.emit(dep, previous)
        return dep

    async def emit(self, dep: dict[str, Any], previous: str | None) -> None:
        if self.listener is None:
            return
        event = {
            "type": "launcher.deployment",
            "id": dep["id"],
            "service": dep["service"],
            "repository": dep["repository"],
            "tag": dep["tag"],
            "digest": dep["digest"],
            "taskDefinition": dep["taskDefinition"],
            "state": dep["state"],
            "previousState": previous,
            "reason": dep["reason"],
            "failure": dep["failure"],
            "rollbackTo": dep["rollbackTo"],
            "timestamp": _iso(time.time()),
        }
        try:
            await self.listener(event)
        except Exception:
            log.exception("deployment event listener failed for %s", dep["id"])

    # --- the worker -------------------------------------------------------------------------

    async def _process(self, name: str) -> None:
        service = await self.store.get_service(name)
        if service["status"] == "DELETING":
            await self._delete(service)
            return
        for dep in await self.store.list_deployments(name, ["FAILED", "BLOCKED"]):
            if dep["rollback"] == "PENDING":  # interrupted rollback: finish it first
                await self._rollback(dep, dep["reason"] or "deployment failed")
        for dep in sorted(await self.store.list_deployments(name, ["IN_PROGRESS"]),
                          key=lambda d: d["created"]):
            await self._run(dep)
        pending = sorted(await self.store.list_deployments(name, ["PENDING"]),
                         key=lambda d: d["created"])
        if pending:
            newest = pending[-1]
            for older in pending[:-1]:
                await self._set_state(
                    older, "FAILED", f"superseded by deployment {newest['id']} before it started",
                    failure="SUPERSEDED",
                )
            await self._run(newest)
        await self._maintain(name)

    async def _run(self, dep: dict[str, Any]) -> None:
        service = await self.store.get_service(dep["service"])
        if dep["state"] == "PENDING":
            dep = await self._set_state(dep, "IN_PROGRESS", None)
        try:
            task_def = await self.store.get_task_definition(dep["family"], dep["revision"])

            async def make_current() -> None:
                await self._make_current(service["name"], dep["id"])

            await self.backend.roll_out(service, dep, task_def, make_current)
        except DeploymentFailed as failure:
            await self._fail(dep, service, failure)
            return
        await self._make_current(service["name"], dep["id"])
        await self._set_state(
            dep, "SUCCESSFUL",
            f"{service['desiredCount']} task(s) of {dep['image']} healthy",
        )
        if self.backend.name == "engines":
            self._clean_images_later(service["name"])

    async def _make_current(self, name: str, dep_id: str) -> None:
        service = await self.store.get_service(name)
        if service["currentDeployment"] == dep_id:
            return
        await self.store.update_service(name, current_deployment=dep_id,
                                        previous_deployment=service["currentDeployment"])

    async def _fail(self, dep: dict[str, Any], service: dict[str, Any],
                    failure: DeploymentFailed) -> None:
        service = await self.store.get_service(service["name"])
        end = "BLOCKED" if failure.kind == CANNOT_PLACE else "FAILED"
        reason = (f"cannot place: {failure.reason}" if failure.kind == CANNOT_PLACE
                  else failure.reason)
        await self.store.add_service_event(
            service["name"], "shortfall" if failure.kind == CANNOT_PLACE else "unhealthy",
            f"deployment {dep['id'][:12]}: {reason}", deployment_id=dep["id"])
        breaker = service.get("deploymentCircuitBreaker") or {"rollback": True}
        target = None
        if (service["currentDeployment"] and service["currentDeployment"] != dep["id"]
                and (breaker.get("rollback", True) or end == "BLOCKED")):
            with contextlib.suppress(NotFound):
                target = await self.store.get_deployment(service["currentDeployment"])
        if target is None:
            await self.backend.stop_deployment(dep, f"deployment {end.lower()}")
            suffix = ""
            if end == "FAILED":
                suffix = ("; no earlier successful deployment to return to"
                          if breaker.get("rollback", True) else "; rollback is off for this "
                          "service")
            await self._set_state(dep, end, reason + suffix, failure=failure.kind)
            return
        if failure.rolled_back:
            # The backend returned to the previous version by itself (Swarm's update
            # failure_action): record what it did rather than rolling back a second time.
            dep = await self._set_state(dep, end, reason, rollback_to=target["id"],
                                        failure=failure.kind)
            await self.store.add_service_event(
                dep["service"], "rollback",
                f"{self.backend.name} rolled back from {dep['image']} to {target['image']}",
                deployment_id=dep["id"])
            await self._set_state(
                dep, "ROLLED_BACK",
                f"{reason}; rolled back to {target['image']} (deployment {target['id']})",
                rollback="DONE")
            return
        dep = await self._set_state(dep, end, reason, rollback="PENDING",
                                    rollback_to=target["id"], failure=failure.kind)
        await self._rollback(dep, reason)

    async def _rollback(self, dep: dict[str, Any], reason: str) -> None:
        service = await self.store.get_service(dep["service"])
        target = await self.store.get_deployment(dep["rollbackTo"])
        try:
            task_def = await self.store.get_task_definition(target["family"], target["revision"])
            await self.backend.return_to(service, dep, target, task_def)
        except (DeploymentFailed, NotFound) as exc:
            why = exc.reason if isinstance(exc, DeploymentFailed) else exc.message
            await self._set_state(dep, dep["state"],
                                  f"{reason}; rollback to {target['image']} failed: {why}",
                                  rollback="FAILED")
            return
        if dep["state"] == "BLOCKED":
            # Not the image's fault: the deployment stays BLOCKED, the previous one runs on.
            await self._set_state(
                dep, "BLOCKED",
                f"{reason}; {target['image']} (deployment {target['id']}) keeps running",
                rollback="DONE")
            return
        await self.store.add_service_event(
            dep["service"], "rollback",
            f"rolled back from {dep['image']} to {target['image']}", deployment_id=dep["id"])
        await self._set_state(
            dep, "ROLLED_BACK",
            f"{reason}; rolled back to {target['image']} (deployment {target['id']})",
            rollback="DONE",
        )

    async def _maintain(self, name: str) -> None:
        """Steady state: keep the current deployment at its desired count of healthy tasks."""
        service = await self.store.get_service(name)
        if not service["currentDeployment"]:
            return
        failures, retry_at = self._maintenance_failures.get(name, (0, 0.0))
        if time.time() < retry_at:
            return
        dep = await self.store.get_deployment(service["currentDeployment"])
        try:
            task_def = await self.store.get_task_definition(dep["family"], dep["revision"])
            await self.backend.keep_running(service, dep, task_def)
        except (DeploymentFailed, NotFound) as exc:
            why = exc.reason if isinstance(exc, DeploymentFailed) else exc.message
            failures += 1
            delay = min(300.0, self.settings.reconcile_interval * 2 ** min(failures, 6))
            self._maintenance_failures[name] = (failures, time.time() + delay)
            running = len(await self.store.list_tasks(service=name, active=True))
            kind = "shortfall" if isinstance(exc, DeploymentFailed) and (
                exc.kind == CANNOT_PLACE) else "unhealthy"
            await self.store.add_service_event(
                name, kind, f"{running} of {service['desiredCount']} task(s) running: {why} "
                f"(trying again in {delay:.0f}s, or at the next change)", deployment_id=dep["id"])
            log.warning("service %s: cannot keep %s task(s) running: %s (retry in %.0fs)",
                        name, service["desiredCount"], why, delay)
            return
        self._maintenance_failures.pop(name, None)

    async def _delete(self, service: dict[str, Any]) -> None:
        for dep in await self.store.list_deployments(service["name"], ["PENDING", "IN_PROGRESS"]):
            await self._set_state(dep, "FAILED", "service deleted", failure="DELETED")
        await self.backend.retire(service)
        await self.store.delete_service(service["name"])

    # --- image cleanup ----------------------------------------------------------------------

    def _clean_images_later(self, name: str) -> None:
        task = asyncio.create_task(self._clean_images(name), name=f"launcher-images-{name}")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _clean_images(self, name: str) -> None:
        """Keep, per service and instance, the images of the running and the previous
        deployment; remove older ones of the service's repository (never one in use)."""
        try:
            service = await self.store.get_service(name)
            keep: set[str] = set()
            for ref in (service["currentDeployment"], service["previousDeployment"]):
                if ref:
                    with contextlib.suppress(NotFound):
                        keep.add((await self.store.get_deployment(ref))["digest"])
            recent = await self.store.list_deployments(name, limit=self.settings.keep_images)
            keep |= {d["digest"] for d in recent if d["state"] in ("PENDING", "IN_PROGRESS")}
            for task in await self.store.list_tasks(service=name, active=True):
                keep.add(task["image"].rsplit("@", 1)[-1])
            removed = await self.runner.remove_old_images(service["repository"], keep)
            if removed:
                await self.store.add_service_event(
                    name, "images", f"removed {len(removed)} old image(s) of "
                    f"{service['repository']} from instances: " + ", ".join(
                        r.rsplit("@", 1)[-1][:19] for r in removed))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("service %s: image cleanup failed", name)
