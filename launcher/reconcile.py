"""Reconciliation: compare what the database says runs with what each engine actually runs.

Containers carry the cluster label and their task id. For every reachable instance:
- a task row whose containers are all running is adopted (its container ids recorded, even when
  the launcher died between creating them and writing that down);
- a task row whose containers exited or vanished is marked STOPPED, with the exit status and the
  tail of its logs kept on the row;
- a task caught half-started or half-stopped by a crash is finished off: its containers are
  removed and the row marked STOPPED (the service loop starts a replacement);
- a labelled container with no active task row is an orphan and is removed.
Tasks that this process is starting right now are left alone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from launcher.config import LauncherSettings
from launcher.engine import LABEL_CONTAINER, LABEL_TASK, Engines
from launcher.errors import EngineError, NotFound
from launcher.store import Store
from launcher.tasks import LOG_TAIL, TaskRunner, last_health

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, settings: LauncherSettings, store: Store, engines: Engines,
                 runner: TaskRunner) -> None:
        self.settings = settings
        self.store = store
        self.engines = engines
        self.runner = runner

    async def run_once(self) -> dict[str, int]:
        counts = {"adopted": 0, "stopped": 0, "orphans": 0, "unreachable": 0}
        for inst in await self.store.list_instances():
            engine = self.engines.of(inst)
            listed_at = time.time()
            try:
                containers = await engine.managed_containers(self.settings.cluster)
            except EngineError as exc:
                counts["unreachable"] += 1
                if inst["reachable"]:
                    log.warning("instance %s unreachable: %s", inst["name"], exc.message)
                    await self.store.update_instance(inst["id"], reachable=0)
                continue
            if not inst["reachable"]:
                await self.store.update_instance(inst["id"], reachable=1)
            by_task: dict[str, list[dict[str, Any]]] = {}
            for c in containers:
                by_task.setdefault(c["Labels"].get(LABEL_TASK, ""), []).append(c)
            active = await self.store.list_tasks(instance_id=inst["id"], active=True,
                                                 limit=100000)
            for task in active:
                # Started by this process after the listing: its containers may not be in it.
                if task["id"] in self.runner.inflight or (task["started"] or 0) >= listed_at:
                    continue
                try:
                    outcome = await self._task(engine, task, by_task.get(task["id"], []))
                except EngineError as exc:
                    log.warning("reconciling task %s: %s", task["id"][:12], exc.message)
                    continue
                if outcome:
                    counts[outcome] += 1
            known = {t["id"] for t in active} | self.runner.inflight
            for task_id, found in by_task.items():
                if task_id in known:
                    continue
                # Re-read: the task may have become active or been started since the listing.
                if task_id and task_id in self.runner.inflight:
                    continue
                for c in found:
                    log.warning("removing orphan container %s (task %s) on %s",
                                c["Id"][:12], task_id[:12] or "?", inst["name"])
                    try:
                        await engine.stop_and_remove(c["Id"], self.settings.stop_timeout)
                    except EngineError as exc:
                        log.warning("removing orphan %s: %s", c["Id"][:12], exc.message)
                        continue
                    counts["orphans"] += 1
        return counts

    async def _task(self, engine: Any, task: dict[str, Any],
                    found: list[dict[str, Any]]) -> str | None:
        try:
            task_def = await self.store.get_task_definition(task["family"], task["revision"])
            expected = {c["name"] for c in task_def["containerDefinitions"]}
        except NotFound:
            expected = {c["name"] for c in task["containers"]}
        names = {c["Labels"].get(LABEL_CONTAINER) for c in found}
        all_running = bool(found) and all(c["State"] == "running" for c in found)
        if task["status"] in ("RUNNING", "PROVISIONING", "PENDING") and all_running and (
            names == expected
        ):
            ids = [{"name": c["Labels"].get(LABEL_CONTAINER), "id": c["Id"]} for c in found]
            if task["status"] != "RUNNING" or {c["id"] for c in task["containers"]} != {
                c["id"] for c in ids
            }:
                started = task["started"] or time.time()
                await self.store.update_task(task["id"], status="RUNNING", containers=ids,
                                             started_at=started)
                return "adopted"
            return None
        if task["status"] == "RUNNING":
            dead = [c for c in found if c["State"] != "running"]
            if dead:
                reason = "; ".join(
                    f"container {c['Labels'].get(LABEL_CONTAINER)} is not running ({c['Status']})"
                    for c in dead
                )
            else:
                reason = "container(s) gone from the instance"
        elif task["status"] == "STOPPING":
            reason = task["reason"] or "stopped"
        else:
            reason = "launcher restarted before the task was fully started"
        logs = ""
        for c in found:
            try:
                tail = await engine.logs(c["Id"], tail=LOG_TAIL)
                if tail:
                    logs += f"--- {c['Labels'].get(LABEL_CONTAINER)}\n{tail}"
            except EngineError:
                pass
            await engine.stop_and_remove(c["Id"], self.settings.stop_timeout)
        fields: dict[str, Any] = {"status": "STOPPED", "reason": reason,
                                  "stopped_at": time.time(), "health": "UNKNOWN",
                                  "last_health": last_health(task)}
        if logs:
            fields["logs"] = logs[-8000:]
        await self.store.update_task(task["id"], **fields)
        log.info("task %s: %s", task["id"][:12], reason)
        return "stopped"
