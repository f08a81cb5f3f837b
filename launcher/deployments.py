"""Deployments: health-gated rolling replacement with automatic rollback.

One worker per service runs that service's deployments one at a time. A deployment brings
`desiredCount` tasks of the new image to HEALTHY while keeping at least `minimumHealthyPercent`
of the service healthy and at most `maximumPercent` of it running, and only then stops the old
tasks. If a new task exits, turns unhealthy or misses its deadline, the deployment is FAILED and
the service is rolled back to its last SUCCESSFUL deployment (the circuit breaker of ECS, the
`auto_revert` of Nomad), ending ROLLED_BACK. Every state change is stored and emitted.

Everything is driven from the database, so the same loop resumes a deployment after a restart.
The same loop, aimed at the service's current deployment, keeps a steady service at its desired
count (replacing tasks that died or sit on draining instances).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from launcher.config import LauncherSettings
from launcher.errors import LauncherError, NoCapacity, NotFound, TaskFailed
from launcher.model import rollout_bounds
from launcher.store import Store, _iso
from launcher.tasks import FAILED, HEALTHY, TaskRunner, health_budget

log = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], Awaitable[None]]


class DeploymentFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Deployments:
    def __init__(self, settings: LauncherSettings, store: Store, runner: TaskRunner,
                 listener: Listener | None) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.listener = listener
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._maintenance_failures: dict[str, tuple[int, float]] = {}
        self.closing = False

    # --- scheduling -------------------------------------------------------------------------

    def kick(self, service: str) -> None:
        """Make the service's worker look at it again (new deployment, changed count, …)."""
        if self.closing:
            return
        worker = self._workers.get(service)
        if worker is not None and not worker.done():
            self._again.add(service)
            return
        self._workers[service] = asyncio.create_task(self._work(service),
                                                     name=f"launcher-service-{service}")

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
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()

    # --- state changes ----------------------------------------------------------------------

    async def _set_state(self, dep: dict[str, Any], state: str, reason: str | None,
                         **fields: Any) -> dict[str, Any]:
        previous = dep["state"]
        dep = await self.store.set_deployment_state(dep["id"], state, reason, **fields)
        log.info("deployment %s of %s: %s -> %s %s", dep["id"][:12], dep["service"],
                 previous, state, reason or "")
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
        for dep in await self.store.list_deployments(name, ["FAILED"]):
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
                    older, "FAILED", f"superseded by deployment {newest['id']} before it started"
                )
            await self._run(newest)
        await self._maintain(name)

    async def _run(self, dep: dict[str, Any]) -> None:
        service = await self.store.get_service(dep["service"])
        if dep["state"] == "PENDING":
            dep = await self._set_state(dep, "IN_PROGRESS", None)
        try:
            task_def = await self.store.get_task_definition(dep["family"], dep["revision"])
            await self._converge(dep, service, task_def, deploying=True)
        except DeploymentFailed as failure:
            await self._fail(dep, service, failure.reason)
            return
        await self.store.update_service(service["name"], current_deployment=dep["id"])
        await self._set_state(
            dep, "SUCCESSFUL",
            f"{service['desiredCount']} task(s) of {dep['image']} healthy",
        )

    async def _fail(self, dep: dict[str, Any], service: dict[str, Any], reason: str) -> None:
        target = None
        if service["currentDeployment"] and service["currentDeployment"] != dep["id"]:
            with contextlib.suppress(NotFound):
                target = await self.store.get_deployment(service["currentDeployment"])
        if target is None:
            for task in await self.store.list_tasks(deployment_id=dep["id"], active=True):
                await self.runner.stop(task, "deployment failed")
            await self._set_state(dep, "FAILED",
                                  f"{reason}; no earlier successful deployment to return to")
            return
        dep = await self._set_state(dep, "FAILED", reason, rollback="PENDING",
                                    rollback_to=target["id"])
        await self._rollback(dep, reason)

    async def _rollback(self, dep: dict[str, Any], reason: str) -> None:
        for task in await self.store.list_tasks(deployment_id=dep["id"], active=True):
            await self.runner.stop(task, "deployment failed: rolled back")
        service = await self.store.get_service(dep["service"])
        target = await self.store.get_deployment(dep["rollbackTo"])
        try:
            task_def = await self.store.get_task_definition(target["family"], target["revision"])
            await self._converge(target, service, task_def, deploying=True)
        except (DeploymentFailed, NotFound) as exc:
            why = exc.reason if isinstance(exc, DeploymentFailed) else exc.message
            await self._set_state(dep, "FAILED",
                                  f"{reason}; rollback to {target['image']} failed: {why}",
                                  rollback="FAILED")
            return
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
            await self._converge(dep, service, task_def, deploying=False)
        except (DeploymentFailed, NotFound) as exc:
            why = exc.reason if isinstance(exc, DeploymentFailed) else exc.message
            failures += 1
            delay = min(300.0, self.settings.reconcile_interval * 2 ** min(failures, 6))
            self._maintenance_failures[name] = (failures, time.time() + delay)
            log.warning("service %s: cannot keep %s task(s) running: %s (retry in %.0fs)",
                        name, service["desiredCount"], why, delay)
            return
        self._maintenance_failures.pop(name, None)

    async def _delete(self, service: dict[str, Any]) -> None:
        for dep in await self.store.list_deployments(service["name"], ["PENDING", "IN_PROGRESS"]):
            await self._set_state(dep, "FAILED", "service deleted")
        for task in await self.store.list_tasks(service=service["name"], active=True):
            await self.runner.stop(task, "service deleted")
        await self.store.delete_service(service["name"])

    # --- convergence ------------------------------------------------------------------------

    async def _converge(self, dep: dict[str, Any], service: dict[str, Any],
                        task_def: dict[str, Any], *, deploying: bool) -> None:
        """Bring `desiredCount` tasks of `dep` to HEALTHY and stop every other task of the
        service, within the rollout bounds. Raises DeploymentFailed when a task of `dep` fails.
        """
        name = service["name"]
        budget = health_budget(task_def, self.settings)
        replaced = 0  # steady state: tasks that died and were replaced in this pass
        while True:
            service = await self.store.get_service(name)
            desired = service["desiredCount"]
            min_healthy, max_total = rollout_bounds(desired, service["deploymentConfiguration"])
            draining = {i["id"] for i in await self.store.list_instances()
                        if i["status"] != "ACTIVE"}
            tasks = await self.store.list_tasks(service=name, active=True)
            new = [t for t in tasks if t["deploymentId"] == dep["id"]
                   and t["instanceId"] not in draining]
            old = [t for t in tasks if t not in new]
            healthy: list[dict[str, Any]] = []
            starting = 0
            tasks_changed = False
            for task in new:
                if task["status"] != "RUNNING":
                    starting += 1  # another coroutine is still pulling/starting it
                    continue
                state, why = await self.runner.check(task, task_def)
                if state == HEALTHY:
                    healthy.append(task)
                    continue
                if state != FAILED and time.time() - (task["started"] or task["created"]) > budget:
                    state, why = FAILED, f"not healthy within {budget:.0f}s of starting"
                if state != FAILED:
                    starting += 1
                    continue
                await self.runner.stop(task, why or "failed", capture_logs=True)
                replaced += 1
                # A rollout fails on its first bad task; a steady service replaces a task that
                # died, unless replacements keep dying (then back off and retry later).
                if deploying or replaced > max(3, desired):
                    raise DeploymentFailed(f"task {task['id'][:12]}: {why}")
                tasks_changed = True
            if tasks_changed:
                continue
            if len(healthy) >= desired:
                # Done: extra new tasks (count lowered meanwhile) and all old ones go.
                for task in sorted(healthy, key=lambda t: t["created"])[desired:]:
                    await self.runner.stop(task, "desired count lowered")
                for task in new:
                    if task not in healthy:
                        await self.runner.stop(task, "desired count reached")
                for task in old:
                    await self.runner.stop(task, f"replaced by deployment {dep['id']}")
                return
            surplus = len(old) + len(healthy) - desired
            if surplus > 0:
                for task in _oldest(old, surplus):
                    await self.runner.stop(task, f"replaced by deployment {dep['id']}")
                continue
            room = max_total - len(old) - len(new)
            want = desired - len(new)
            if want > 0 and room > 0:
                results = await asyncio.gather(
                    *[self.runner.start(service=service, deployment=dep, task_def=task_def)
                      for _ in range(min(room, want))],
                    return_exceptions=True,
                )
                busy: list[NoCapacity] = []
                for result in results:
                    if isinstance(result, TaskFailed):
                        raise DeploymentFailed(result.message)
                    if isinstance(result, NoCapacity):
                        if result.never:
                            raise DeploymentFailed(result.message)
                        busy.append(result)
                    elif isinstance(result, LauncherError):
                        raise DeploymentFailed(result.message)
                    elif isinstance(result, BaseException):
                        raise result
                if not busy:
                    continue
                # No room: retire an old task if the minimum healthy count allows it.
                if old and len(old) + len(healthy) - 1 >= min_healthy:
                    await self.runner.stop(_oldest(old, 1)[0], "making room for "
                                           f"deployment {dep['id']}")
                    continue
                if starting == 0 and len(results) == len(busy):
                    raise DeploymentFailed(busy[0].message)
            elif want > 0 and starting == 0:
                # maximumPercent forbids starting more: stop old ones down to the minimum.
                can_stop = len(old) + len(healthy) - min_healthy
                if can_stop <= 0:
                    raise DeploymentFailed(
                        "deploymentConfiguration allows no progress: minimumHealthyPercent="
                        f"{service['deploymentConfiguration']['minimumHealthyPercent']} and "
                        f"maximumPercent={service['deploymentConfiguration']['maximumPercent']}"
                    )
                for task in _oldest(old, min(can_stop, want)):
                    await self.runner.stop(task, f"making room for deployment {dep['id']}")
                continue
            elif not deploying and want <= 0 and starting == 0 and not old:
                return
            await asyncio.sleep(self.settings.poll_interval)


def _oldest(tasks: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return sorted(tasks, key=lambda t: t["created"] or 0)[:max(0, n)]
