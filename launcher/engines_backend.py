"""The `engines` backend: dockyard places every task on Docker Engine instances itself.

Placement (instance types, binpack/spread, constraints, the warm pool and the provider) is in
launcher/placement.py and launcher/instances.py; starting, judging and stopping one task is in
launcher/tasks.py. This module is the rolling update on top: bring `desiredCount` tasks of the
new image to HEALTHY within minimumHealthyPercent/maximumPercent, count failed tasks against
the circuit breaker, and stop the old tasks only once the new ones serve.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from launcher.backend import CANNOT_PLACE, DeploymentFailed, MakeCurrent
from launcher.config import LauncherSettings
from launcher.errors import LauncherError, NoCapacity, TaskFailed
from launcher.model import rollout_bounds
from launcher.store import Store
from launcher.tasks import FAILED, HEALTHY, TaskRunner, health_budget


class EnginesBackend:
    name = "engines"

    def __init__(self, settings: LauncherSettings, store: Store, runner: TaskRunner) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner

    async def roll_out(self, service: dict[str, Any], deployment: dict[str, Any],
                       task_def: dict[str, Any], make_current: MakeCurrent) -> None:
        await self._converge(deployment, service, task_def, deploying=True,
                             make_current=make_current)

    async def keep_running(self, service: dict[str, Any], deployment: dict[str, Any],
                           task_def: dict[str, Any]) -> None:
        await self._converge(deployment, service, task_def, deploying=False)

    async def return_to(self, service: dict[str, Any], failed: dict[str, Any],
                        target: dict[str, Any], task_def: dict[str, Any]) -> None:
        await self.stop_deployment(failed, f"deployment {failed['state'].lower()}: rolled back")
        await self._converge(target, service, task_def, deploying=True)

    async def stop_deployment(self, deployment: dict[str, Any], why: str) -> None:
        for task in await self.store.list_tasks(deployment_id=deployment["id"], active=True):
            await self.runner.stop(task, why)

    async def retire(self, service: dict[str, Any]) -> None:
        for task in await self.store.list_tasks(service=service["name"], active=True):
            await self.runner.stop(task, "service deleted", drain=self._drain(service))

    async def describe(self, service: dict[str, Any]) -> dict[str, Any]:
        return {"backend": self.name}

    async def close(self) -> None:
        return None

    def _drain(self, service: dict[str, Any]) -> float:
        ingress = self.settings.ingress
        return ingress.drain_seconds if ingress and service.get("ingress") else 0.0


    async def _converge(self, dep: dict[str, Any], service: dict[str, Any],
                        task_def: dict[str, Any], *, deploying: bool,
                        make_current: MakeCurrent | None = None) -> None:
        """Bring `desiredCount` tasks of `dep` to HEALTHY and stop every other task of the
        service, within the rollout bounds. Raises DeploymentFailed when tasks of `dep` fail
        (as many as the circuit breaker allows) or cannot be placed.
        """
        name = service["name"]
        budget = health_budget(task_def, self.settings)
        breaker = service.get("deploymentCircuitBreaker") or {"threshold": 1}
        threshold = int(breaker.get("threshold", 1))
        replaced = 0  # steady state: tasks that died and were replaced in this pass
        failed = int(dep.get("failedTasks") or 0) if deploying else 0
        while True:
            service = await self.store.get_service(name)
            drain = self._drain(service)
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
                await self.store.add_service_event(
                    name, "unhealthy", f"task {task['id'][:12]}: {why}",
                    deployment_id=dep["id"], task_id=task["id"])
                replaced += 1
                tasks_changed = True
                if deploying:
                    # The circuit breaker: a rollout survives `threshold - 1` bad tasks.
                    failed += 1
                    await self.store.update_deployment(dep["id"], failed_tasks=failed)
                    if failed >= threshold:
                        raise DeploymentFailed(
                            f"task {task['id'][:12]}: {why}"
                            + (f" ({failed} failed task(s), threshold {threshold})"
                               if threshold > 1 else ""))
                # A steady service replaces a task that died, unless replacements keep dying
                # (then back off and retry later).
                elif replaced > max(3, desired):
                    raise DeploymentFailed(f"task {task['id'][:12]}: {why}")
            if tasks_changed:
                continue
            if len(healthy) >= desired:
                # Done. The ingress switches to the new tasks in one step (they become the
                # current deployment before any old task stops); then extra new tasks (count
                # lowered meanwhile) and all old ones go, draining their connections.
                if make_current is not None:
                    await make_current()
                stops = [self.runner.stop(t, "desired count lowered", drain=drain)
                         for t in sorted(healthy, key=lambda t: t["created"])[desired:]]
                stops += [self.runner.stop(t, "desired count reached")
                          for t in new if t not in healthy]
                stops += [self.runner.stop(t, f"replaced by deployment {dep['id']}",
                                           drain=drain) for t in old]
                await asyncio.gather(*stops)
                return
            surplus = len(old) + len(healthy) - desired
            if surplus > 0:
                await asyncio.gather(*[
                    self.runner.stop(t, f"replaced by deployment {dep['id']}", drain=drain)
                    for t in _oldest(old, surplus)])
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
                        if deploying:
                            failed += 1
                            await self.store.update_deployment(dep["id"], failed_tasks=failed)
                        await self.store.add_service_event(name, "unhealthy", result.message,
                                                           deployment_id=dep["id"])
                        if not deploying or failed >= threshold:
                            raise DeploymentFailed(result.message)
                        tasks_changed = True
                    elif isinstance(result, NoCapacity):
                        if result.never:
                            raise DeploymentFailed(result.message, CANNOT_PLACE)
                        busy.append(result)
                    elif isinstance(result, LauncherError):
                        raise DeploymentFailed(result.message)
                    elif isinstance(result, BaseException):
                        raise result
                    else:
                        inst = await self.store.get_instance(result["instanceId"])
                        await self.store.add_service_event(
                            name, "placed", f"task {result['id'][:12]} of "
                            f"{dep['tag'] or dep['digest'][:19]} placed on {inst['name']}"
                            + (f" (ports {','.join(map(str, result['ports']))})"
                               if result["ports"] else ""),
                            deployment_id=dep["id"], task_id=result["id"])
                if not busy or tasks_changed:
                    continue
                # No room: retire an old task if the minimum healthy count allows it.
                if old and len(old) + len(healthy) - 1 >= min_healthy:
                    await self.runner.stop(_oldest(old, 1)[0], "making room for "
                                           f"deployment {dep['id']}", drain=drain)
                    continue
                if starting == 0 and len(results) == len(busy):
                    hint = ""
                    if old:
                        config = service["deploymentConfiguration"]
                        hint = (f"; minimumHealthyPercent={config['minimumHealthyPercent']} "
                                "keeps every old task running until a new one is healthy "
                                "(lower it, e.g. services update --min-healthy 0, to replace "
                                "tasks in place)")
                    raise DeploymentFailed(busy[0].message + hint, CANNOT_PLACE)
            elif want > 0 and starting == 0:
                # maximumPercent forbids starting more: stop old ones down to the minimum.
                can_stop = len(old) + len(healthy) - min_healthy
                if can_stop <= 0:
                    raise DeploymentFailed(
                        "deploymentConfiguration allows no progress: minimumHealthyPercent="
                        f"{service['deploymentConfiguration']['minimumHealthyPercent']} and "
                        f"maximumPercent={service['deploymentConfiguration']['maximumPercent']}",
                        CANNOT_PLACE,
                    )
                await asyncio.gather(*[
                    self.runner.stop(t, f"making room for deployment {dep['id']}", drain=drain)
                    for t in _oldest(old, min(can_stop, want))])
                continue
            elif not deploying and want <= 0 and starting == 0 and not old:
                return
            await asyncio.sleep(self.settings.poll_interval)


def _oldest(tasks: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return sorted(tasks, key=lambda t: t["created"] or 0)[:max(0, n)]
