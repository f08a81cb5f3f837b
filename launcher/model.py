"""Validated shapes of what users register: task definitions, services, placement rules.

Input is ECS-like JSON. Each `parse_*` function checks one request body and returns its
normalized form (defaults filled in, camelCase kept so what is stored is what the API shows).
"""

from __future__ import annotations

import fnmatch
import math
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dockyard.core.oci import is_repository_name
from launcher.errors import InvalidRequest
from launcher.expressions import compile_expression
from launcher.policy import ORDERS

FAMILY_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
CONTAINER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SERVICE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_CPU_UNITS = 1024 * 1024
MAX_MEMORY_MIB = 1024 * 1024 * 16


def _int(body: dict[str, Any], key: str, where: str, *, default: int | None = None,
         minimum: int = 0, maximum: int | None = None) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{where}.{key} must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        raise InvalidRequest(f"{where}.{key} must be between {minimum} and {maximum}")
    return value


def _seconds(body: dict[str, Any], key: str, where: str, default: float,
             minimum: float = 0.0) -> float:
    value = body.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidRequest(f"{where}.{key} must be a number of seconds")
    if value < minimum or value > 3600:
        raise InvalidRequest(f"{where}.{key} must be between {minimum} and 3600 seconds")
    return float(value)


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{where} must be a list of strings")
    return list(value)


# --- task definitions -----------------------------------------------------------------------


def parse_health_check(body: Any, where: str) -> dict[str, Any] | None:
    if body is None:
        return None
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where} must be an object")
    _refuse_unknown(body, {"command", "interval", "timeout", "retries", "startPeriod"}, where)
    command = body.get("command")
    if isinstance(command, str):
        command = ["CMD-SHELL", command]
    command = _str_list(command, f"{where}.command")
    if not command or command[0] not in ("CMD", "CMD-SHELL", "NONE") or (
        command[0] != "NONE" and len(command) < 2
    ):
        raise InvalidRequest(f"{where}.command must be [\"CMD-SHELL\", \"…\"] or [\"CMD\", …]")
    return {
        "command": command,
        # ECS takes whole seconds; fractions are allowed so tests and fast services need not wait.
        "interval": _seconds(body, "interval", where, 30.0, 0.01),
        "timeout": _seconds(body, "timeout", where, 5.0, 0.01),
        "retries": _int(body, "retries", where, default=3, minimum=1, maximum=100),
        "startPeriod": _seconds(body, "startPeriod", where, 0.0),
    }


def parse_port_mappings(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{where} must be a list")
    out = []
    for i, pm in enumerate(value):
        w = f"{where}[{i}]"
        if not isinstance(pm, dict):
            raise InvalidRequest(f"{w} must be an object")
        _refuse_unknown(pm, {"containerPort", "hostPort", "protocol", "name"}, w)
        container_port = _int(pm, "containerPort", w, default=0, maximum=65535)
        host_port = _int(pm, "hostPort", w, default=0, maximum=65535)
        # Host networking: the process listens on the host port itself, so the two must agree.
        if container_port and host_port and container_port != host_port:
            raise InvalidRequest(f"{w}: with host networking hostPort must equal containerPort")
        protocol = pm.get("protocol", "tcp")
        if protocol not in ("tcp", "udp"):
            raise InvalidRequest(f"{w}.protocol must be tcp or udp")
        name = pm.get("name")
        if name is not None and (not isinstance(name, str) or not ENV_NAME_RE.match(name)):
            raise InvalidRequest(f"{w}.name must be a word (it becomes PORT_<NAME>)")
        out.append(
            {"hostPort": host_port or container_port, "protocol": protocol, "name": name}
        )
    return out


def parse_environment(value: Any, where: str) -> list[dict[str, str]]:
    if value is None:
        return []
    if isinstance(value, dict):
        value = [{"name": k, "value": v} for k, v in value.items()]
    if not isinstance(value, list):
        raise InvalidRequest(f"{where} must be a list of {{name, value}}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequest(f"{where}[{i}] must be {{name, value}}")
        if not ENV_NAME_RE.match(item["name"]):
            raise InvalidRequest(f"{where}[{i}].name {item['name']!r} is not a variable name")
        out.append({"name": item["name"], "value": str(item.get("value", ""))})
    return out


CONTAINER_KEYS = {
    "name", "image", "cpu", "memory", "memoryReservation", "portMappings", "environment",
    "secrets", "command", "entryPoint", "healthCheck", "stopTimeout", "essential", "dependsOn",
    "mountPoints", "logConfiguration", "workingDirectory", "user",
}
TASK_KEYS = {"family", "cpu", "memory", "containerDefinitions", "placementConstraints",
             "volumes", "networkMode"}
# What `task-definitions show` prints besides the definition: accepted back, and ignored.
TASK_READ_ONLY = {"revision", "status", "registeredAt"}
DEPENDENCY_CONDITIONS = ("START", "HEALTHY")
LOG_DRIVER_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _refuse_unknown(body: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(
            f"{where}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
            "supported (refused rather than silently dropped)"
        )


def _objects(
    value: Any, where: str, shape: str, keys: set[str] | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The items of a list of JSON objects, each with its path for error messages; refuses a
    non-list, a non-object item and (given `keys`) an unknown key."""
    if not isinstance(value, list):
        raise InvalidRequest(f"{where} must be a list")
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{w} must be {shape}")
        if keys is not None:
            _refuse_unknown(item, keys, w)
        yield w, item


def parse_secrets(value: Any, where: str) -> list[dict[str, str]]:
    """ECS's `secrets`: [{name: ENV_VAR, valueFrom: SECRET}] from the launcher's secret store."""
    if value is None:
        return []
    out = []
    for w, item in _objects(value, where, "{name, valueFrom}", {"name", "valueFrom"}):
        name, source = item.get("name"), item.get("valueFrom")
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise InvalidRequest(f"{w}.name must be an environment variable name")
        if not isinstance(source, str) or not VOLUME_NAME_RE.match(source):
            raise InvalidRequest(f"{w}.valueFrom must name a secret (launcher secrets put)")
        out.append({"name": name, "valueFrom": source})
    return out


def parse_mount_points(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    out = []
    keys = {"sourceVolume", "containerPath", "readOnly"}
    for w, item in _objects(value, where, "{sourceVolume, containerPath, readOnly}", keys):
        source, path = item.get("sourceVolume"), item.get("containerPath")
        if not isinstance(source, str) or not source:
            raise InvalidRequest(f"{w}.sourceVolume must name a task volume")
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidRequest(f"{w}.containerPath must be an absolute path")
        out.append({"sourceVolume": source, "containerPath": path,
                    "readOnly": bool(item.get("readOnly", False))})
    return out


def parse_depends_on(value: Any, where: str) -> list[dict[str, str]]:
    if value is None:
        return []
    out = []
    keys = {"containerName", "condition"}
    for w, item in _objects(value, where, "{containerName, condition}", keys):
        name, condition = item.get("containerName"), item.get("condition", "START")
        if not isinstance(name, str):
            raise InvalidRequest(f"{w}.containerName must name a container of this task")
        if condition not in DEPENDENCY_CONDITIONS:
            raise InvalidRequest(f"{w}.condition {condition!r} is not supported "
                                 f"(one of {', '.join(DEPENDENCY_CONDITIONS)})")
        out.append({"containerName": name, "condition": condition})
    return out


def parse_log_configuration(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be {{logDriver, options}}")
    _refuse_unknown(value, {"logDriver", "options"}, where)
    driver = value.get("logDriver")
    if not isinstance(driver, str) or not LOG_DRIVER_RE.match(driver):
        raise InvalidRequest(f"{where}.logDriver must name a Docker logging driver")
    options = value.get("options") or {}
    if not isinstance(options, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in options.items()
    ):
        raise InvalidRequest(f"{where}.options must map strings to strings")
    return {"logDriver": driver, "options": dict(options)}


def parse_container(body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where} must be an object")
    _refuse_unknown(body, CONTAINER_KEYS, where)
    name = body.get("name")
    if not isinstance(name, str) or not CONTAINER_NAME_RE.match(name):
        raise InvalidRequest(f"{where}.name must match {CONTAINER_NAME_RE.pattern}")
    image = body.get("image")
    if not isinstance(image, str) or not image or len(image) > 512 or any(
        c.isspace() for c in image
    ):
        raise InvalidRequest(f"{where}.image must be a repository name or image reference")
    essential = body.get("essential", True)
    if not isinstance(essential, bool):
        raise InvalidRequest(f"{where}.essential must be true or false")
    for key in ("workingDirectory", "user"):
        if key in body and (not isinstance(body[key], str) or not body[key]):
            raise InvalidRequest(f"{where}.{key} must be a non-empty string")
    out: dict[str, Any] = {
        "name": name,
        "image": image,
        "cpu": _int(body, "cpu", where, default=0, maximum=MAX_CPU_UNITS),
        "memory": _int(body, "memory", where, default=None, minimum=4, maximum=MAX_MEMORY_MIB),
        "memoryReservation": _int(
            body, "memoryReservation", where, default=None, minimum=4, maximum=MAX_MEMORY_MIB
        ),
        "portMappings": parse_port_mappings(body.get("portMappings"), f"{where}.portMappings"),
        "environment": parse_environment(body.get("environment"), f"{where}.environment"),
        "secrets": parse_secrets(body.get("secrets"), f"{where}.secrets"),
        "command": _str_list(body["command"], f"{where}.command") if "command" in body else None,
        "entryPoint": (
            _str_list(body["entryPoint"], f"{where}.entryPoint") if "entryPoint" in body else None
        ),
        "healthCheck": parse_health_check(body.get("healthCheck"), f"{where}.healthCheck"),
        "stopTimeout": _int(body, "stopTimeout", where, default=None, maximum=600),
        "essential": essential,
        "dependsOn": parse_depends_on(body.get("dependsOn"), f"{where}.dependsOn"),
        "mountPoints": parse_mount_points(body.get("mountPoints"), f"{where}.mountPoints"),
        "logConfiguration": parse_log_configuration(body.get("logConfiguration"),
                                                    f"{where}.logConfiguration"),
        "workingDirectory": body.get("workingDirectory"),
        "user": body.get("user"),
    }
    return out


def parse_volumes(value: Any, volume_roots: tuple[str, ...]) -> list[dict[str, Any]]:
    """Task volumes: a host directory (`host.sourcePath`, only under a configured
    `volume_roots` directory) or a named Docker volume (`dockerVolumeConfiguration`)."""
    if value is None:
        return []
    out = []
    keys = {"name", "host", "dockerVolumeConfiguration"}
    for w, item in _objects(value, "volumes", "an object", keys):
        name = item.get("name")
        if not isinstance(name, str) or not VOLUME_NAME_RE.match(name):
            raise InvalidRequest(f"{w}.name must match {VOLUME_NAME_RE.pattern}")
        host, docker_cfg = item.get("host"), item.get("dockerVolumeConfiguration")
        if host is not None and docker_cfg is not None:
            raise InvalidRequest(f"{w}: host or dockerVolumeConfiguration, not both")
        if host is not None:
            if not isinstance(host, dict):
                raise InvalidRequest(f"{w}.host must be {{sourcePath}}")
            _refuse_unknown(host, {"sourcePath"}, f"{w}.host")
            path = host.get("sourcePath")
            if not isinstance(path, str) or not path.startswith("/"):
                raise InvalidRequest(f"{w}.host.sourcePath must be an absolute path")
            normal = posixpath.normpath(path)
            if not any(normal == root or normal.startswith(root.rstrip("/") + "/")
                       for root in volume_roots):
                allowed = ", ".join(volume_roots) or "none are configured"
                raise InvalidRequest(
                    f"{w}.host.sourcePath {path} is not under an allowed directory "
                    f"([launcher] volume_roots: {allowed})")
            out.append({"name": name, "host": {"sourcePath": normal}})
        else:
            cfg = docker_cfg or {}
            if not isinstance(cfg, dict):
                raise InvalidRequest(f"{w}.dockerVolumeConfiguration must be an object")
            _refuse_unknown(cfg, {"scope", "driver", "autoprovision"},
                            f"{w}.dockerVolumeConfiguration")
            scope = cfg.get("scope", "shared")
            if scope != "shared":
                raise InvalidRequest(f"{w}.dockerVolumeConfiguration.scope {scope!r} is not "
                                     "supported (only shared: one volume per family and "
                                     "instance, kept across deployments)")
            driver = cfg.get("driver", "local")
            if not isinstance(driver, str) or not LOG_DRIVER_RE.match(driver):
                raise InvalidRequest(f"{w}.dockerVolumeConfiguration.driver must name a driver")
            out.append({"name": name, "dockerVolumeConfiguration": {"scope": scope,
                                                                    "driver": driver}})
    if len({v["name"] for v in out}) != len(out):
        raise InvalidRequest("volume names must be unique within a task definition")
    return out


def parse_task_definition(body: Any, *, volume_roots: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate a task definition registration (without revision, which the store assigns)."""
    if not isinstance(body, dict):
        raise InvalidRequest("task definition must be a JSON object")
    _refuse_unknown(body, TASK_KEYS | TASK_READ_ONLY, "taskDefinition")
    if body.get("networkMode", "host") != "host":
        raise InvalidRequest("taskDefinition.networkMode: only host is supported (engines run "
                             "without a bridge; every container shares the instance's network)")
    family = body.get("family")
    if not isinstance(family, str) or not FAMILY_RE.match(family):
        raise InvalidRequest("family must be 1-255 letters, digits, '-' or '_'")
    containers = body.get("containerDefinitions")
    if not isinstance(containers, list) or not containers:
        raise InvalidRequest("containerDefinitions must be a non-empty list")
    if len(containers) > 10:
        raise InvalidRequest("at most 10 containerDefinitions")
    defs = [parse_container(c, f"containerDefinitions[{i}]") for i, c in enumerate(containers)]
    if len({c["name"] for c in defs}) != len(defs):
        raise InvalidRequest("container names must be unique within a task definition")
    task_cpu = _int(body, "cpu", "taskDefinition", default=None, maximum=MAX_CPU_UNITS)
    task_memory = _int(body, "memory", "taskDefinition", default=None, minimum=4,
                       maximum=MAX_MEMORY_MIB)
    for c in defs:
        if c["memory"] is None and c["memoryReservation"] is None and task_memory is None:
            raise InvalidRequest(
                f"container {c['name']!r} needs memory (a hard limit, MiB) or the task needs memory"
            )
    fixed = [pm["hostPort"] for c in defs for pm in c["portMappings"] if pm["hostPort"]]
    if len(fixed) != len(set(fixed)):
        raise InvalidRequest("a host port may be mapped only once per task")
    volumes = parse_volumes(body.get("volumes"), volume_roots)
    names = {v["name"] for v in volumes}
    by_name = {c["name"]: c for c in defs}
    for c in defs:
        for m in c["mountPoints"]:
            if m["sourceVolume"] not in names:
                raise InvalidRequest(f"container {c['name']!r} mounts unknown volume "
                                     f"{m['sourceVolume']!r} (declare it under volumes)")
        for d in c["dependsOn"]:
            dep = by_name.get(d["containerName"])
            if dep is None or dep is c:
                raise InvalidRequest(f"container {c['name']!r} depends on unknown container "
                                     f"{d['containerName']!r}")
            if d["condition"] == "HEALTHY" and not dep["healthCheck"]:
                raise InvalidRequest(f"container {c['name']!r} waits for {dep['name']!r} to be "
                                     "HEALTHY, but that container has no healthCheck")
    start_order(defs)  # refuses a dependency cycle
    if not any(c["essential"] for c in defs):
        raise InvalidRequest("at least one container must be essential")
    return {
        "family": family,
        "cpu": task_cpu,
        "memory": task_memory,
        "containerDefinitions": defs,
        "volumes": volumes,
        "placementConstraints": parse_constraints(body.get("placementConstraints")),
    }


def start_order(containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Containers in an order where each starts after what it depends on."""
    done: list[dict[str, Any]] = []
    seen: set[str] = set()
    visiting: set[str] = set()
    by_name = {c["name"]: c for c in containers}

    def visit(c: dict[str, Any]) -> None:
        if c["name"] in seen:
            return
        if c["name"] in visiting:
            raise InvalidRequest(f"dependsOn has a cycle through container {c['name']!r}")
        visiting.add(c["name"])
        for d in c.get("dependsOn") or ():
            visit(by_name[d["containerName"]])
        visiting.discard(c["name"])
        seen.add(c["name"])
        done.append(c)

    for c in containers:
        visit(c)
    return done




@dataclass(frozen=True)
class Resources:
    """What a task reserves on an instance."""

    cpu: int
    memory: int
    fixed_ports: frozenset[int]
    dynamic_ports: int


def task_resources(task_def: dict[str, Any]) -> Resources:
    containers = task_def["containerDefinitions"]
    cpu = sum(c["cpu"] or 0 for c in containers)
    memory = sum(c["memory"] or c["memoryReservation"] or 0 for c in containers)
    # ECS: task-level values, when given, are what the task reserves.
    cpu = max(cpu, task_def.get("cpu") or 0)
    memory = max(memory, task_def.get("memory") or 0)
    fixed = frozenset(pm["hostPort"] for c in containers for pm in c["portMappings"]
                      if pm["hostPort"])
    dynamic = sum(1 for c in containers for pm in c["portMappings"] if not pm["hostPort"])
    return Resources(cpu, memory, fixed, dynamic)


# --- placement ------------------------------------------------------------------------------

STRATEGY_FIELDS = {"binpack": ("cpu", "memory"), "random": ()}


def parse_strategy(value: Any) -> list[dict[str, str]] | None:
    if value is None:
        return None
    out = []
    for where, item in _objects(value, "placementStrategy", "an object"):
        kind, fld = item.get("type"), item.get("field")
        if kind == "binpack":
            if fld not in ("cpu", "memory"):
                raise InvalidRequest(f"{where}: binpack field must be cpu or memory")
        elif kind == "spread":
            if not isinstance(fld, str) or not (
                fld in ("instanceId", "instanceType", "host")
                or (fld.startswith("attribute:") and len(fld) > len("attribute:"))
            ):
                raise InvalidRequest(
                    f"{where}: spread field must be instanceId, instanceType or attribute:NAME"
                )
        elif kind == "random":
            fld = None
        else:
            raise InvalidRequest(f"{where}: type must be binpack, spread or random")
        out.append({"type": kind, "field": fld} if fld else {"type": kind})
    return out


def parse_constraints(value: Any) -> list[dict[str, str]]:
    if value is None:
        return []
    out = []
    for where, item in _objects(value, "placementConstraints", "an object"):
        kind = item.get("type")
        if kind == "distinctInstance":
            out.append({"type": kind})
        elif kind == "memberOf":
            compile_expression(str(item.get("expression") or ""))  # reject typos now
            out.append({"type": kind, "expression": item["expression"]})
        else:
            raise InvalidRequest(f"{where}: type must be distinctInstance or memberOf")
    return out


# --- services -------------------------------------------------------------------------------


def parse_task_definition_ref(value: Any) -> tuple[str, int | None]:
    """`family` (follow the latest revision) or `family:revision` (pinned)."""
    if not isinstance(value, str):
        raise InvalidRequest("taskDefinition must be 'family' or 'family:revision'")
    family, _, rev = value.partition(":")
    if not FAMILY_RE.match(family) or (rev and not rev.isdigit()):
        raise InvalidRequest("taskDefinition must be 'family' or 'family:revision'")
    return family, int(rev) if rev else None


def parse_deployment_configuration(value: Any) -> dict[str, int]:
    value = value or {}
    if not isinstance(value, dict):
        raise InvalidRequest("deploymentConfiguration must be an object")
    where = "deploymentConfiguration"
    _refuse_unknown(value, {"minimumHealthyPercent", "maximumPercent"}, where)
    min_healthy = _int(value, "minimumHealthyPercent", where, default=100, maximum=100)
    max_percent = _int(value, "maximumPercent", where, default=200, minimum=100, maximum=400)
    # Both have defaults, so neither is None.
    return {"minimumHealthyPercent": min_healthy or 0, "maximumPercent": max_percent or 100}


SERVICE_KEYS = {"name", "repository", "tags", "taskDefinition", "desiredCount",
                "deploymentConfiguration", "placementStrategy", "placementConstraints", "order",
                "ingress", "deploymentCircuitBreaker", "digest", "tag"}
HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]"
                     r"([A-Za-z0-9-]{0,62})?)*$")


def parse_tags(tags: Any) -> list[str]:
    if isinstance(tags, str):
        tags = [tags]
    tags = _str_list(tags, "tags")
    if not tags or any(not t or len(t) > 128 for t in tags):
        raise InvalidRequest("tags must be a non-empty list of glob patterns")
    return tags


def parse_order(value: Any) -> str:
    if value not in ORDERS:
        raise InvalidRequest(f"order must be one of {', '.join(ORDERS)}")
    return str(value)


def parse_ingress(value: Any) -> dict[str, str] | None:
    """Where the ingress proxy routes to the service: a Host header and/or a path prefix."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("ingress must be {host, path}")
    _refuse_unknown(value, {"host", "path"}, "ingress")
    host, path = value.get("host"), value.get("path")
    if host is None and path is None:
        raise InvalidRequest("ingress needs a host, a path, or both")
    out: dict[str, str] = {}
    if host is not None:
        if not isinstance(host, str) or not HOST_RE.match(host):
            raise InvalidRequest("ingress.host must be a host name such as web.example")
        out["host"] = host.lower()
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/") or "?" in path:
            raise InvalidRequest("ingress.path must be a path prefix such as /web")
        out["path"] = "/" + path.strip("/") if path != "/" else "/"
    return out


def parse_circuit_breaker(value: Any) -> dict[str, Any]:
    """ECS's deploymentCircuitBreaker: `threshold` failed new tasks end the rollout (then
    `rollback` returns to the last good deployment)."""
    value = value or {}
    if not isinstance(value, dict):
        raise InvalidRequest("deploymentCircuitBreaker must be {threshold, rollback}")
    _refuse_unknown(value, {"threshold", "rollback", "enable"}, "deploymentCircuitBreaker")
    threshold = _int(value, "threshold", "deploymentCircuitBreaker", default=1, minimum=1,
                     maximum=100)
    rollback = value.get("rollback", True)
    if not isinstance(rollback, bool):
        raise InvalidRequest("deploymentCircuitBreaker.rollback must be true or false")
    return {"threshold": threshold, "rollback": rollback}


def parse_service(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("service must be a JSON object")
    _refuse_unknown(body, SERVICE_KEYS, "service")
    name = body.get("name")
    if not isinstance(name, str) or not SERVICE_NAME_RE.match(name):
        raise InvalidRequest(f"name must match {SERVICE_NAME_RE.pattern}")
    repository = body.get("repository")
    if not isinstance(repository, str) or not is_repository_name(repository):
        raise InvalidRequest("repository must be a repository name such as acme/web")
    tags = parse_tags(body.get("tags", ["*"]))
    family, revision = parse_task_definition_ref(body.get("taskDefinition"))
    desired = _int(body, "desiredCount", "service", default=1, maximum=1000)
    return {
        "name": name,
        "repository": repository,
        "tags": tags,
        "family": family,
        "revision": revision,
        "desiredCount": desired,
        "deploymentConfiguration": parse_deployment_configuration(
            body.get("deploymentConfiguration")
        ),
        "placementStrategy": parse_strategy(body.get("placementStrategy")),
        "placementConstraints": parse_constraints(body.get("placementConstraints")),
        "order": parse_order(body.get("order", "any")),
        "ingress": parse_ingress(body.get("ingress")),
        "deploymentCircuitBreaker": parse_circuit_breaker(body.get("deploymentCircuitBreaker")),
    }


def tag_matches(patterns: list[str], tag: str) -> bool:
    # cosign/notation attach signatures under sha256-<hex>.sig tags: never deploy those.
    if tag.startswith(("sha256-", "sha512-")):
        return False
    return any(fnmatch.fnmatchcase(tag, p) for p in patterns)


def rollout_bounds(desired: int, config: dict[str, int]) -> tuple[int, int]:
    """(minimum healthy tasks, maximum tasks) during a rollout, rounded as ECS rounds them."""
    min_healthy = math.ceil(desired * config["minimumHealthyPercent"] / 100)
    max_total = max(desired, math.floor(desired * config["maximumPercent"] / 100))
    return min_healthy, max_total
