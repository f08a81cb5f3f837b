"""Placement: which instance gets a task, and the reservation that makes the choice stick.

`choose()` is a pure function over instances and the tasks already reserved on them. `Placer`
serializes choices behind one lock and writes the task row (the reservation) before releasing it,
so two placements can never both take the last free CPU of an instance.

Order of preference, as in the seeds: instances already running (strategy and constraints
decide among those with room), then an idle instance from the warm pool (smallest type that fits),
then a freshly provisioned instance of the smallest type that fits. If no type could ever hold
the task, the failure names the shortfall.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from launcher.config import InstanceType
from launcher.errors import LauncherError, NoCapacity
from launcher.expressions import compile_expression
from launcher.model import Resources
from launcher.store import Store

log = logging.getLogger(__name__)

Provision = Callable[[InstanceType], Awaitable[dict[str, Any]]]
# (seconds, outcome): outcome is placed, warm_pool, provisioned or no_capacity.
PlacementHook = Callable[[float, str], None]


@dataclass(frozen=True)
class Placement:
    instance: dict[str, Any]
    ports: list[int]


def describe(res: Resources) -> str:
    return f"cpu={res.cpu} memory={res.memory}MiB" + (
        f" ports={sorted(res.fixed_ports)}" if res.fixed_ports else ""
    )


def subject(instance: dict[str, Any]) -> dict[str, str]:
    """What constraint expressions and spread fields see of an instance."""
    return {
        **instance["attributes"],
        "instanceType": instance.get("type") or "",
        "instanceId": instance["id"],
        "host": instance["network"],
    }


def check_never_fits(res: Resources, types: Iterable[InstanceType],
                     instances: Iterable[dict[str, Any]]) -> None:
    """Raise NoCapacity(never=True) when neither a type nor a registered instance is big enough."""
    shapes = [(f"type {t.name!r}", t.cpu, t.memory) for t in types]
    shapes += [(f"instance {i['name']!r}", i["cpu"], i["memory"]) for i in instances]
    if any(cpu >= res.cpu and memory >= res.memory for _, cpu, memory in shapes):
        return
    if not shapes:
        raise NoCapacity(
            f"task needs {describe(res)} but no instance type or instance is configured",
            never=True,
        )
    largest_cpu = max(shapes, key=lambda s: (s[1], s[2]))
    largest_mem = max(shapes, key=lambda s: (s[2], s[1]))
    short = []
    if res.cpu > largest_cpu[1]:
        short.append(
            f"cpu short by {res.cpu - largest_cpu[1]} units "
            f"(largest: {largest_cpu[0]} with {largest_cpu[1]})"
        )
    if res.memory > largest_mem[2]:
        short.append(
            f"memory short by {res.memory - largest_mem[2]} MiB "
            f"(largest: {largest_mem[0]} with {largest_mem[2]} MiB)"
        )
    if not short:  # each dimension fits somewhere, but never both on one shape
        short.append(
            "no single type has both; largest by cpu "
            f"{largest_cpu[0]} has {largest_cpu[2]} MiB, largest by memory "
            f"{largest_mem[0]} has {largest_mem[1]} cpu units"
        )
    raise NoCapacity(f"no instance type can ever hold a task needing {describe(res)}: "
                     + "; ".join(short), never=True)


def choose(
    instances: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    res: Resources,
    *,
    service: str | None,
    strategy: list[dict[str, str]],
    constraints: list[dict[str, str]],
    port_range: tuple[int, int],
    all_instances: list[dict[str, Any]] | None = None,
    rng: random.Random | None = None,
) -> Placement:
    """Pick one of `instances` for a task, or raise NoCapacity saying why each one was refused.

    `tasks` are all active tasks (the reservations); `all_instances` (default: `instances`) is
    used to find which instances share a network namespace and therefore a port space.
    """
    rng = rng or random.Random()
    by_instance: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        by_instance.setdefault(t["instanceId"], []).append(t)
    network_of = {i["id"]: i["network"] for i in (all_instances or instances)}
    used_ports: dict[str, set[int]] = {}
    for t in tasks:
        used_ports.setdefault(network_of.get(t["instanceId"], t["instanceId"]), set()).update(
            t["ports"]
        )
    expressions = [compile_expression(c["expression"]) for c in constraints
                   if c["type"] == "memberOf"]
    distinct = any(c["type"] == "distinctInstance" for c in constraints)

    fits: list[tuple[dict[str, Any], int, int, list[int]]] = []
    refusals: list[str] = []
    for inst in instances:
        mine = by_instance.get(inst["id"], [])
        free_cpu = inst["cpu"] - sum(t["cpu"] for t in mine)
        free_mem = inst["memory"] - sum(t["memory"] for t in mine)
        why = []
        if inst["status"] != "ACTIVE":
            why.append(inst["status"])
        if not inst.get("reachable", True):
            why.append("unreachable")
        if res.cpu > free_cpu:
            why.append(f"cpu short by {res.cpu - free_cpu}")
        if res.memory > free_mem:
            why.append(f"memory short by {res.memory - free_mem} MiB")
        taken = used_ports.get(inst["network"], set())
        clash = sorted(res.fixed_ports & taken)
        if clash:
            why.append(f"port(s) {clash} in use")
        ports: list[int] = []
        if not why and res.dynamic_ports:
            ports = _free_ports(res.dynamic_ports, taken | res.fixed_ports, port_range)
            if len(ports) < res.dynamic_ports:
                why.append(f"no free port in {port_range[0]}-{port_range[1]}")
        if distinct and service and any(t["service"] == service for t in mine):
            why.append("distinctInstance: already runs a task of this service")
        for expr in expressions:
            if not expr.matches(subject(inst)):
                why.append(f"memberOf({expr.source}) not satisfied")
        if why:
            refusals.append(f"{inst['name']}: " + ", ".join(why))
        else:
            fits.append((inst, free_cpu, free_mem, ports))
    if not fits:
        detail = "; ".join(refusals) if refusals else "no instance is registered"
        raise NoCapacity(f"no instance can take a task needing {describe(res)} ({detail})")

    service_count = Counter(t["instanceId"] for t in tasks if service and t["service"] == service)

    def spread_count(field: str, inst: dict[str, Any]) -> int:
        if field == "instanceId":
            return service_count[inst["id"]]
        key = field.removeprefix("attribute:")
        value = subject(inst).get(key)
        return sum(
            n for other in (all_instances or instances)
            if subject(other).get(key) == value
            for n in [service_count[other["id"]]]
        )

    def key(entry: tuple[dict[str, Any], int, int, list[int]]) -> tuple[Any, ...]:
        inst, free_cpu, free_mem, _ = entry
        parts: list[Any] = []
        for rule in strategy:
            if rule["type"] == "binpack":
                # Least room left after placing wins: fill one instance before the next.
                parts.append(free_cpu if rule["field"] == "cpu" else free_mem)
            elif rule["type"] == "spread":
                parts.append(spread_count(rule["field"], inst))
            else:
                parts.append(rng.random())
        parts.append(inst["name"])
        return tuple(parts)

    inst, _, _, ports = min(fits, key=key)
    return Placement(inst, ports)


def _free_ports(count: int, taken: set[int], port_range: tuple[int, int]) -> list[int]:
    out = []
    for port in range(port_range[0], port_range[1] + 1):
        if port not in taken:
            out.append(port)
            if len(out) == count:
                break
    return out


def type_order(types: Iterable[InstanceType]) -> list[InstanceType]:
    return sorted(types, key=lambda t: (t.cpu, t.memory, t.name))


class Placer:
    def __init__(
        self,
        store: Store,
        types: dict[str, InstanceType],
        port_range: tuple[int, int],
        provision: Provision | None,
        on_placement: PlacementHook | None = None,
    ) -> None:
        self.store = store
        self.types = types
        self.port_range = port_range
        self.provision = provision
        self.on_placement = on_placement
        self.lock = asyncio.Lock()

    def _observe(self, started: float, outcome: str) -> None:
        if self.on_placement is None:
            return
        try:
            self.on_placement(time.perf_counter() - started, outcome)
        except Exception:
            log.exception("placement hook failed")

    async def place(
        self,
        res: Resources,
        *,
        task: dict[str, Any],
        strategy: list[dict[str, str]],
        constraints: list[dict[str, str]],
    ) -> Placement:
        """Choose an instance and record `task` on it (status PROVISIONING) atomically."""
        started = time.perf_counter()
        async with self.lock:
            instances = await self.store.list_instances()
            known = {i["id"] for i in instances}
            try:
                check_never_fits(res, self.types.values(), instances)
                tasks = await self.store.list_tasks(active=True, limit=100000)
                service = task.get("service")
                running = [i for i in instances if not i["pool"]]
                try:
                    chosen = choose(running, tasks, res, service=service, strategy=strategy,
                                    constraints=constraints, port_range=self.port_range,
                                    all_instances=instances)
                    outcome = "placed"
                except NoCapacity as busy:
                    chosen = await self._from_pool_or_provider(
                        busy, res, instances, tasks, service, constraints
                    )
                    outcome = "provisioned" if chosen.instance["id"] not in known else "warm_pool"
            except NoCapacity:
                self._observe(started, "no_capacity")
                raise
            await self.store.insert_task(
                {**task, "instance_id": chosen.instance["id"], "cpu": res.cpu,
                 "memory": res.memory, "ports": sorted(res.fixed_ports) + chosen.ports}
            )
        self._observe(started, outcome)
        return chosen

    async def _from_pool_or_provider(
        self,
        busy: NoCapacity,
        res: Resources,
        instances: list[dict[str, Any]],
        tasks: list[dict[str, Any]],
        service: str | None,
        constraints: list[dict[str, str]],
    ) -> Placement:
        fitting = [t for t in type_order(self.types.values())
                   if t.cpu >= res.cpu and t.memory >= res.memory]
        rank = {t.name: n for n, t in enumerate(fitting)}
        pool = [i for i in instances if i["pool"] and i.get("type") in rank]
        # Smallest warm type first; the strategy has nothing to weigh among idle instances.
        for inst in sorted(pool, key=lambda i: (rank[i["type"]], i["name"])):
            try:
                chosen = choose([inst], tasks, res, service=service, strategy=[],
                                constraints=constraints, port_range=self.port_range,
                                all_instances=instances)
            except NoCapacity:
                continue
            await self.store.update_instance(inst["id"], pool=0, idle_since=None)
            return Placement({**chosen.instance, "pool": False}, chosen.ports)
        if self.provision is None:
            raise NoCapacity(f"{busy.message}; no warm instance fits and no provider is configured")
        errors = []
        for itype in fitting:
            probe = {"id": "new", "name": f"new {itype.name}", "type": itype.name,
                     "cpu": itype.cpu, "memory": itype.memory, "attributes": {},
                     "network": "", "status": "ACTIVE"}
            try:
                choose([probe], [], res, service=None, strategy=[], constraints=constraints,
                       port_range=self.port_range)
            except NoCapacity as exc:
                errors.append(f"type {itype.name}: {exc.message}")
                continue
            try:
                inst = await self.provision(itype)
            except LauncherError as exc:
                errors.append(f"provisioning {itype.name} failed: {exc.message}")
                break
            instances = [*instances, inst]
            return choose([inst], tasks, res, service=service, strategy=[],
                          constraints=constraints, port_range=self.port_range,
                          all_instances=instances)
        raise NoCapacity(f"{busy.message}; " + ("; ".join(errors) or "no type fits"))
