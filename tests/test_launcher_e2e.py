"""Push-to-deploy end to end: three real Docker Engines of two types, the reference registry
(CNCF distribution 2.8.2) notifying the launcher's inbound endpoint, and the launcher placing,
rolling out, rolling back, provisioning and recovering from kill -9.

Every push here is a real `docker push` to the reference registry; the registry's own
notification (spec: distribution-notifications.md "Endpoints", with the shared secret sent as a
configured `Authorization` header) is what starts each deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from dockyard.core.envelope import ENVELOPE_MEDIA_TYPE
from launcher.api import add_routes
from launcher.config import LauncherSettings
from launcher.service import Launcher
from tests.support.engines import (
    EngineProcess,
    docker_engines,
    htpasswd_line,
    import_image,
    push,
    reap_dockerds_under,
)
from tests.support.reference import free_port, reference_registry

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "s3cret-" + uuid.uuid4().hex
TOKEN = "tok-" + uuid.uuid4().hex
TYPES = {
    "small": {"cpu": 512, "memory": 256},
    "medium": {"cpu": 1024, "memory": 512},
    "large": {"cpu": 2048, "memory": 1024},
    "xlarge": {"cpu": 2048, "memory": 2048},
}
TERMINAL = ("SUCCESSFUL", "FAILED", "ROLLED_BACK", "BLOCKED")
# Dynamic task ports come from a range; pick two disjoint random blocks below the ephemeral range
# (where other tests' servers bind) so runs and the two launchers here never share ports.
_BLOCKS = random.sample(range(20000, 32000, 200), 2)
PORTS_MAIN = f"{_BLOCKS[0]}-{_BLOCKS[0] + 199}"
PORTS_KILL = f"{_BLOCKS[1]}-{_BLOCKS[1] + 199}"
HTTPD = 'echo "$GREETING from $DOCKYARD_SERVICE on $PORT"; exec httpd -f -p $PORT -h /www'


def web_task(family: str, repository: str, *, cpu: int, memory: int,
             command: str = HTTPD, retries: int = 3) -> dict[str, Any]:
    return {
        "family": family,
        "containerDefinitions": [{
            "name": "web",
            "image": repository,
            "cpu": cpu,
            "memory": memory,
            "portMappings": [{"name": "http"}],  # dynamic host port, passed as $PORT
            "environment": [{"name": "GREETING", "value": "hello"}],
            "command": ["sh", "-c", command],
            "healthCheck": {
                "command": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:$PORT/health || exit 1"],
                "interval": 0.3, "timeout": 2, "retries": retries, "startPeriod": 0,
            },
        }],
    }


def site(version: str, healthy: bool = True) -> dict[str, str]:
    files = {"www/index.html": f"{version}\n"}
    if healthy:
        files["www/health"] = "ok\n"
    return files


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session, self.base = session, base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        async with self.session.request(method, self.base + path, json=body,
                                        headers=self.headers) as resp:
            text = await resp.text()
            assert resp.status == expect, f"{method} {path}: {resp.status} {text}"
            return json.loads(text) if text and resp.content_type == "application/json" else text

    async def deployment_for(self, service: str, digest: str, timeout: float = 90) -> dict:
        """Wait until the deployment of `digest` for `service` reaches a terminal state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            deps = (await self.call("GET", f"/deployments?service={service}"))["deployments"]
            mine = [d for d in deps if d["digest"] == digest]
            # FAILED with a rollback under way is not the end yet.
            if mine and mine[0]["state"] in TERMINAL and mine[0]["rollback"] != "PENDING":
                return await self.call("GET", f"/deployments/{mine[0]['id']}")
            await asyncio.sleep(0.2)
        raise AssertionError(f"no terminal deployment of {digest} for {service}: {deps}")

    async def tasks(self, service: str, status: str = "active") -> list[dict]:
        return (await self.call("GET", f"/tasks?service={service}&status={status}"))["tasks"]


async def eventually(check, timeout: float = 30, interval: float = 0.2):
    """Poll the coroutine function `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


def ts(iso: str | None) -> float:
    assert iso is not None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


# --- module fixtures: engines, registry, launcher ---------------------------------------------


@pytest.fixture(scope="module")
def engines():
    specs = [
        ("a", {"dockyard.instance-type": "small"}),
        ("b", {"dockyard.instance-type": "small"}),
        ("c", {"dockyard.instance-type": "medium"}),
    ]
    with docker_engines(specs) as started:
        yield {e.name: e for e in started}


@pytest.fixture(scope="module")
def launcher_port() -> int:
    return free_port()


ROBOT, ROBOT_PASSWORD = "robot-deployer", "pw-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def registry(launcher_port, workdir):
    """The reference registry with basic auth on: the launcher pulls with a robot credential."""
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(htpasswd_line(ROBOT, ROBOT_PASSWORD))
    extra = {
        "auth": {"htpasswd": {"realm": "dockyard-test", "path": str(htpasswd)}},
        "notifications": {"endpoints": [{
        "name": "launcher",
        "url": f"http://127.0.0.1:{launcher_port}/launcher/v1/events",
        "headers": {"Authorization": [f"Bearer {SECRET}"]},
        "timeout": "3s", "threshold": 3, "backoff": "1s",
    }]}}
    with reference_registry(extra) as reg:
        yield reg


@pytest.fixture(scope="module")
def workdir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="dyl-", dir="/tmp"))
    yield path
    leaked = reap_dockerds_under(path)
    subprocess.run(["rm", "-rf", str(path)], check=False)
    assert not leaked, f"provisioned dockerds outlived the launcher: {leaked}"


def launcher_section(engines: dict[str, EngineProcess], registry, run_root: pathlib.Path,
                     cluster: str, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "registry": f"127.0.0.1:{registry.port}",
        "cluster": cluster,
        "api_token": TOKEN,
        "events_secret": SECRET,
        "registry_auth": {"username": ROBOT, "password": ROBOT_PASSWORD},
        "instance_types": TYPES,
        "instances": [
            {"name": "a", "endpoint": engines["a"].endpoint, "attributes": {"zone": "z1"}},
            {"name": "b", "endpoint": engines["b"].endpoint, "attributes": {"zone": "z2"}},
            {"name": "c", "endpoint": engines["c"].endpoint, "type": "medium",
             "attributes": {"zone": "z1"}},
        ],
        "port_range": PORTS_MAIN,
        "poll_interval": 0.2,
        "reconcile_interval": 1.0,
        "health_grace": 10,
        "stable_seconds": 1,
        "stop_timeout": 2,
        **extra,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(engines, registry, launcher_port, workdir):
    """The launcher in process, serving HTTP where the registry sends its notifications."""
    events: list[dict[str, Any]] = []

    async def on_event(event: dict[str, Any]) -> None:
        events.append(event)

    section = launcher_section(
        engines, registry, workdir / "r", f"dytest-{uuid.uuid4().hex[:8]}",
        providers={"local": {"run_root": str(workdir / "r"), "max_instances": 4}},
        warm_pool={"large": 1},
        idle_instance_seconds=3,
        stop_provisioned_on_close=True,
    )
    settings = LauncherSettings.from_dict(section, workdir / "data")
    placements: list[str] = []
    launcher = Launcher(settings, on_deployment_event=on_event,
                        on_placement=lambda seconds, outcome: placements.append(outcome))
    app = web.Application()
    add_routes(app, launcher)
    await launcher.start()
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", launcher_port).start()
    session = aiohttp.ClientSession()
    api = Api(session, f"http://127.0.0.1:{launcher_port}/launcher/v1", TOKEN)
    try:
        yield {"launcher": launcher, "api": api, "events": events, "engines": engines,
               "cluster": settings.cluster, "placements": placements,
               "registry": registry, "reg": f"127.0.0.1:{registry.port}", "workdir": workdir}
    finally:
        await session.close()
        await runner.cleanup()
        await launcher.close()


@pytest.fixture(scope="module")
def images(engines, registry):
    """Build and push helper: every call imports a fresh busybox image and pushes it."""
    reg = f"127.0.0.1:{registry.port}"
    engines["a"].docker("login", "--username", ROBOT, "--password-stdin", reg,
                        stdin=ROBOT_PASSWORD)

    def build_and_push(repo_tag: str, files: dict[str, str]) -> str:
        ref = f"{reg}/{repo_tag}"
        import_image(engines["a"], ref, files)
        return push(engines["a"], ref)

    async def build_and_push_async(repo_tag: str, files: dict[str, str]) -> str:
        # Off the loop: the launcher under test shares it and must keep serving meanwhile.
        return await asyncio.to_thread(build_and_push, repo_tag, files)

    return build_and_push_async


def cgroup_memory_limit(name: str) -> int | None:
    path = pathlib.Path(f"/sys/fs/cgroup/memory/{name}/memory.limit_in_bytes")
    return int(path.read_text()) if path.exists() else None


def process_gone(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped


async def containers_of(engine: EngineProcess, cluster: str) -> list[dict[str, Any]]:
    out = await asyncio.to_thread(
        engine.docker, "ps", "-a", "--no-trunc", "--filter", f"label=dockyard.cluster={cluster}",
        "--format", "{{json .}}",
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


async def inspect(engine: EngineProcess, cid: str) -> dict[str, Any]:
    out = await asyncio.to_thread(engine.docker, "inspect", cid)
    return json.loads(out.stdout)[0]


def engine_of(env, task: dict[str, Any], instances: list[dict[str, Any]]) -> EngineProcess:
    inst = next(i for i in instances if i["id"] == task["instanceId"])
    return env["engines"][inst["name"]]


# --- scenarios ------------------------------------------------------------------------------


async def test_push_v1_binpack_fills_one_instance_with_limits(env, images):
    api = env["api"]
    await api.call("POST", "/task-definitions",
                   web_task("web", "acme/web", cpu=128, memory=48), expect=201)
    await api.call("POST", "/services", {
        "name": "web", "repository": "acme/web", "taskDefinition": "web", "tags": ["v*"],
        "desiredCount": 2, "placementStrategy": [{"type": "binpack", "field": "cpu"}],
    }, expect=201)

    digest = await images("acme/web:v1", site("v1"))
    dep = await api.deployment_for("web", digest)
    assert dep["state"] == "SUCCESSFUL", dep
    assert dep["trigger"].startswith("event "), "the registry's notification started it"
    assert env["placements"] == ["placed", "placed"]
    assert dep["tag"] == "v1"
    assert [e["state"] for e in dep["events"]] == ["PENDING", "IN_PROGRESS", "SUCCESSFUL"]

    tasks = await api.tasks("web")
    instances = (await api.call("GET", "/instances"))["instances"]
    assert len(tasks) == 2
    # binpack on cpu: both on the same (fullest-fitting) instance, the smallest with room.
    assert {t["instanceId"] for t in tasks} == {tasks[0]["instanceId"]}
    inst = next(i for i in instances if i["id"] == tasks[0]["instanceId"])
    assert inst["name"] == "a" and inst["free"]["cpu"] == 512 - 2 * 128

    for task in tasks:
        assert task["image"] == f"acme/web@{digest}" and task["health"] == "HEALTHY"
        engine = env["engines"][inst["name"]]
        info = await inspect(engine, task["containers"][0]["id"])
        assert info["HostConfig"]["NanoCpus"] == 128 * 10**9 // 1024
        assert info["HostConfig"]["Memory"] == 48 * 1024 * 1024
        assert info["HostConfig"]["NetworkMode"] == "host"
        assert info["HostConfig"]["Init"] is True
        assert info["Config"]["Image"] == f"{env['reg']}/acme/web@{digest}"  # never a tag
        labels = info["Config"]["Labels"]
        assert labels["dockyard.service"] == "web"
        assert labels["dockyard.deployment"] == dep["id"]
        assert labels["dockyard.task"] == task["id"]
        port = task["ports"][0]
        assert f"PORT={port}" in info["Config"]["Env"]
        assert get(f"http://127.0.0.1:{port}/") == "v1\n"
        logs = await api.call("GET", f"/tasks/{task['id']}/logs?tail=10")
        assert f"hello from web on {port}" in logs

    emitted = [e["state"] for e in env["events"] if e["id"] == dep["id"]]
    assert emitted == ["PENDING", "IN_PROGRESS", "SUCCESSFUL"]
    assert await env["launcher"].images_in_use() >= {f"acme/web@{digest}"}


async def test_spread_distributes_across_instances(env, images):
    api = env["api"]
    await api.call("POST", "/task-definitions",
                   web_task("spread", "acme/web", cpu=64, memory=32), expect=201)
    await api.call("POST", "/services", {
        "name": "spread", "repository": "acme/web", "taskDefinition": "spread",
        "tags": ["spread-*"], "desiredCount": 3,
        "placementStrategy": [{"type": "spread", "field": "instanceId"}],
    }, expect=201)
    digest = await images("acme/web:spread-1", site("spread"))
    dep = await api.deployment_for("spread", digest)
    assert dep["state"] == "SUCCESSFUL", dep
    tasks = await api.tasks("spread")
    instances = {i["id"]: i["name"] for i in (await api.call("GET", "/instances"))["instances"]}
    assert sorted(instances[t["instanceId"]] for t in tasks) == ["a", "b", "c"]
    # b and c pulled the image, and the registry refuses anonymous pulls: the robot
    # credential (auth_config) is what let them in.
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(get, f"{env['registry'].url}/v2/acme/web/manifests/{digest}")
    assert refused.value.code == 401
    # The other service did not move: a tag outside its patterns does not deploy it.
    assert all(t["image"] != f"acme/web@{digest}" for t in await api.tasks("web"))

    await api.call("DELETE", "/services/spread", expect=202)

    async def deleted() -> bool:
        return "spread" not in [s["name"] for s in (await api.call("GET", "/services"))[
            "services"]]

    assert await eventually(deleted)
    for task in tasks:
        assert (await api.call("GET", f"/tasks/{task['id']}"))["status"] == "STOPPED"


async def test_push_v2_new_tasks_healthy_before_old_stop(env, images):
    api = env["api"]
    old = await api.tasks("web")
    digest = await images("acme/web:v2", site("v2"))
    dep = await api.deployment_for("web", digest)
    assert dep["state"] == "SUCCESSFUL", dep

    new = await api.tasks("web")
    assert len(new) == 2 and all(t["image"] == f"acme/web@{digest}" for t in new)
    old_final = [await api.call("GET", f"/tasks/{t['id']}") for t in old]
    assert all(t["status"] == "STOPPED" for t in old_final)
    # minimumHealthyPercent=100: whenever an old task stopped, enough tasks were healthy.
    for stopping in old_final:
        at = ts(stopping["stoppedAt"])
        healthy_new = sum(1 for t in new if ts(t["healthyAt"]) <= at)
        still_old = sum(1 for t in old_final if ts(t["stoppedAt"]) > at)
        assert healthy_new + still_old >= 2, (stopping, new, old_final)
    for task in new:
        assert get(f"http://127.0.0.1:{task['ports'][0]}/") == "v2\n"
    # The image v2 replaced stays in use: `services rollback --previous` returns to it.
    v1 = old[0]["image"]
    assert await env["launcher"].images_in_use() == {f"acme/web@{digest}", v1}


async def test_push_v3_failing_health_check_rolls_back_to_v2(env, images):
    api = env["api"]
    v2 = (await api.tasks("web"))[0]["image"]
    digest = await images("acme/web:v3", site("v3", healthy=False))
    dep = await api.deployment_for("web", digest)
    assert dep["state"] == "ROLLED_BACK", dep
    assert "health check" in dep["reason"] and v2 in dep["reason"]
    states = [e["state"] for e in dep["events"]]
    assert states == ["PENDING", "IN_PROGRESS", "FAILED", "ROLLED_BACK"]
    emitted = [e["state"] for e in env["events"] if e["id"] == dep["id"]]
    assert emitted == states

    tasks = await api.tasks("web")
    assert len(tasks) == 2 and all(t["image"] == v2 for t in tasks)
    for task in tasks:
        assert get(f"http://127.0.0.1:{task['ports'][0]}/") == "v2\n"
    failed = [t for t in await api.tasks("web", "stopped") if t["deploymentId"] == dep["id"]]
    assert failed and all(t["status"] == "STOPPED" for t in failed)
    assert any("health check" in (t["reason"] or "") for t in failed)
    service = await api.call("GET", "/services/web")
    assert service["current"]["image"] == v2


async def test_task_larger_than_running_instances_takes_warm_pool_then_provider(env, images):
    api = env["api"]
    before = (await api.call("GET", "/instances"))["instances"]
    pool = [i for i in before if i["pool"]]
    assert len(pool) == 1 and pool[0]["type"] == "large" and pool[0]["origin"] == "provider"

    await api.call("POST", "/task-definitions",
                   web_task("big", "acme/big", cpu=1536, memory=128), expect=201)
    await api.call("POST", "/services", {"name": "big", "repository": "acme/big",
                                         "taskDefinition": "big"}, expect=201)
    digest = await images("acme/big:1", site("big"))
    dep = await api.deployment_for("big", digest)
    assert dep["state"] == "SUCCESSFUL", dep
    (task,) = await api.tasks("big")
    assert task["instanceId"] == pool[0]["id"], "the idle warm instance took the task"
    assert env["placements"][-1] == "warm_pool"
    assert get(f"http://127.0.0.1:{task['ports'][0]}/") == "big\n"
    # Its container really runs on that instance's own dockerd, under its cgroup limit.
    state = pool[0]["providerState"]
    info = await asyncio.to_thread(
        subprocess.run, ["/usr/bin/docker", "-H", f"unix://{state['run_dir']}/sock", "inspect",
                         task["containers"][0]["id"]], capture_output=True, text=True, check=True)
    assert json.loads(info.stdout)[0]["HostConfig"]["NanoCpus"] == 1536 * 10**9 // 1024
    limit = await asyncio.to_thread(cgroup_memory_limit, f"dockyard-{pool[0]['id'][:12]}")
    if limit is not None:  # cgroup v1 here; the type's memory is the instance's hard cap
        assert limit == TYPES["large"]["memory"] * 1024 * 1024

    async def refilled() -> list[dict]:
        now = (await api.call("GET", "/instances"))["instances"]
        return now if any(i["pool"] and i["id"] != pool[0]["id"] for i in now) else []

    now = await eventually(refilled)
    assert now, "the warm pool starts a replacement"

    # No warm instance of a type that fits: the local provider starts one.
    await api.call("POST", "/task-definitions",
                   web_task("wide", "acme/big", cpu=256, memory=1536), expect=201)
    await api.call("POST", "/services", {"name": "wide", "repository": "acme/big",
                                         "taskDefinition": "wide", "tags": ["wide-*"]},
                   expect=201)
    digest = await images("acme/big:wide-1", site("wide"))
    dep = await api.deployment_for("wide", digest)
    assert dep["state"] == "SUCCESSFUL", dep
    (task,) = await api.tasks("wide")
    inst = await api.call("GET", f"/instances/{task['instanceId']}")
    assert inst["type"] == "xlarge" and inst["origin"] == "provider"
    assert env["placements"][-1] == "provisioned"
    assert inst["id"] not in {i["id"] for i in now}
    assert get(f"http://127.0.0.1:{task['ports'][0]}/") == "wide\n"

    # Removing a provisioned instance stops its dockerd and cleans up.
    await api.call("DELETE", "/services/wide", expect=202)

    async def no_tasks() -> bool:
        return not await api.tasks("wide")

    assert await eventually(no_tasks)
    await api.call("DELETE", f"/instances/{inst['id']}", expect=204)
    gone = await asyncio.to_thread(process_gone, inst["providerState"]["pid"])
    assert gone, "its dockerd was stopped"
    assert not await asyncio.to_thread(os.path.exists, inst["providerState"]["run_dir"])

    # An instance provisioned for a task that is gone is retired once idle long enough
    # (the pool already has its warm instance, so it is not kept).
    await api.call("DELETE", "/services/big", expect=202)

    async def retired() -> bool:
        ids = {i["id"] for i in (await api.call("GET", "/instances"))["instances"]}
        return pool[0]["id"] not in ids

    assert await eventually(retired, timeout=30)
    pool_now = [i for i in (await api.call("GET", "/instances"))["instances"] if i["pool"]]
    assert len(pool_now) == 1


async def test_task_larger_than_every_type_fails_naming_shortfall(env, images):
    api = env["api"]
    await api.call("POST", "/task-definitions",
                   web_task("huge", "acme/huge", cpu=4096, memory=64), expect=201)
    await api.call("POST", "/services", {"name": "huge", "repository": "acme/huge",
                                         "taskDefinition": "huge"}, expect=201)
    digest = await images("acme/huge:1", site("huge"))
    dep = await api.deployment_for("huge", digest)
    assert dep["state"] == "BLOCKED" and dep["failure"] == "CANNOT_PLACE"  # not a bad image
    assert "no instance type can ever hold" in dep["reason"]
    assert "cpu short by 2048 units" in dep["reason"], dep["reason"]
    assert env["placements"][-1] == "no_capacity"
    assert await api.tasks("huge") == []


async def test_dead_tasks_are_replaced_orphans_removed_and_draining_moves_tasks(env):
    api, cluster = env["api"], env["cluster"]
    instances = (await api.call("GET", "/instances"))["instances"]
    by_name = {i["name"]: i for i in instances}
    tasks = await api.tasks("web")
    assert len(tasks) == 2 and {t["instanceId"] for t in tasks} == {by_name["a"]["id"]}
    image = tasks[0]["image"]
    a = env["engines"]["a"]

    # Someone removes a task's container behind the launcher's back, and leaves a labelled
    # container that no task owns.
    await asyncio.to_thread(a.docker, "rm", "-f", tasks[0]["containers"][0]["id"])
    ghost = (await asyncio.to_thread(
        a.docker, "run", "-d", "--network", "host", "--label", f"dockyard.cluster={cluster}",
        "--label", "dockyard.task=ghost", f"{env['reg']}/acme/web:v2", "sleep", "600",
    )).stdout.strip()

    async def healed() -> bool:
        now = await api.tasks("web")
        return (len(now) == 2 and tasks[0]["id"] not in {t["id"] for t in now}
                and all(t["health"] == "HEALTHY" for t in now))

    assert await eventually(healed)
    dead = await api.call("GET", f"/tasks/{tasks[0]['id']}")
    # Seen either mid-removal or after it, by reconciliation or by the service loop.
    assert dead["status"] == "STOPPED"
    assert "gone" in dead["reason"] or "not running" in dead["reason"], dead["reason"]
    assert all(t["image"] == image for t in await api.tasks("web"))

    async def ghost_gone() -> bool:
        return ghost not in {c["ID"] for c in await containers_of(a, cluster)}

    assert await eventually(ghost_gone)

    # Draining instance a moves its tasks elsewhere (healthy first), then a is empty.
    await api.call("PATCH", f"/instances/{by_name['a']['id']}", {"status": "DRAINING"})

    async def moved() -> bool:
        now = await api.tasks("web")
        return (len(now) == 2 and by_name["a"]["id"] not in {t["instanceId"] for t in now}
                and all(t["health"] == "HEALTHY" for t in now))

    assert await eventually(moved)
    for task in await api.tasks("web"):
        assert get(f"http://127.0.0.1:{task['ports'][0]}/") == "v2\n"
    assert (await api.call("GET", f"/instances/{by_name['a']['id']}"))["runningTasks"] == 0
    await api.call("PATCH", f"/instances/{by_name['a']['id']}", {"status": "ACTIVE"})
    await api.call("PATCH", f"/instances/{by_name['a']['id']}", {"status": "GONE"}, expect=400)


async def send_push(
    session: aiohttp.ClientSession, port: int, reg: str, repo: str, digest: str, tag: str
) -> None:
    """The registry's push notification for `repo@digest`, posted to a launcher's events
    endpoint on `port` (as a webhook endpoint of the registry would)."""
    envelope = {"events": [{
        "id": uuid.uuid4().hex, "timestamp": "2024-01-01T00:00:00Z", "action": "push",
        "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                   "digest": digest, "size": 1, "length": 1, "repository": repo, "tag": tag,
                   "url": f"http://{reg}/v2/{repo}/manifests/{digest}"},
        "request": {"id": "r", "addr": "127.0.0.1", "host": reg, "method": "PUT",
                    "useragent": "test"},
        "actor": {}, "source": {"addr": "test", "instanceID": "test"},
    }]}
    async with session.post(
        f"http://127.0.0.1:{port}/launcher/v1/events", data=json.dumps(envelope),
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": ENVELOPE_MEDIA_TYPE},
    ) as resp:
        assert resp.status == 202, await resp.text()


async def test_kill_9_mid_deployment_then_restart_completes_without_orphans(env, images,
                                                                            workdir):
    """A second launcher, as its own process (`python -m launcher … serve`), killed with -9
    while a new task is starting; after restart it finishes the rollout and leaves nothing
    behind."""
    engines, api_main = env["engines"], env["api"]
    cluster = f"dykill-{uuid.uuid4().hex[:8]}"
    port = free_port()
    section = launcher_section(engines, env["registry"], workdir / "r2", cluster)
    # Both launchers share this host's network: their dynamic ports must not overlap.
    section["port_range"] = PORTS_KILL
    config = workdir / "kill.toml"
    config.write_text(_toml({"data_dir": str(workdir / "kill-data"), "launcher": section}))
    log_path = workdir / "kill.log"

    def start() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "launcher", "--config", str(config), "launcher", "serve",
                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                cwd=pathlib.Path(__file__).resolve().parents[1],
            )
        return proc

    async def wait_up(proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                await api.call("GET", "/")
                return
            except (aiohttp.ClientError, AssertionError):
                await asyncio.sleep(0.1)
        raise AssertionError(log_path.read_text())

    async def send(digest: str, tag: str) -> None:
        await send_push(api_main.session, port, env["reg"], "acme/slow", digest, tag)

    api = Api(api_main.session, f"http://127.0.0.1:{port}/launcher/v1", TOKEN)
    proc = start()
    try:
        await wait_up(proc)
        # Healthy only after a 2 s start-up: there is time to kill the launcher mid-rollout.
        td = web_task("slow", "acme/slow", cpu=64, memory=32,
                      command=f"sleep 2; {HTTPD}", retries=30)
        await api.call("POST", "/task-definitions", td, expect=201)
        await api.call("POST", "/services", {"name": "slow", "repository": "acme/slow",
                                             "taskDefinition": "slow", "desiredCount": 2},
                       expect=201)
        v1 = await images("acme/slow:1", site("slow-1"))
        await send(v1, "1")
        assert (await api.deployment_for("slow", v1))["state"] == "SUCCESSFUL"

        v2 = await images("acme/slow:2", site("slow-2"))
        await send(v2, "2")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = [t for t in await api.tasks("slow") if t["image"].endswith(v2)
                   and t["status"] == "RUNNING"]
            if new:
                break
            await asyncio.sleep(0.05)
        assert new, "a new task should be starting"
        dep = (await api.call("GET", "/deployments?service=slow&limit=1"))["deployments"][0]
        assert dep["state"] == "IN_PROGRESS" and dep["digest"] == v2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

        proc = start()
        await wait_up(proc)
        dep = await api.deployment_for("slow", v2)
        assert dep["state"] == "SUCCESSFUL", dep
        tasks = await api.tasks("slow")
        assert len(tasks) == 2 and all(t["image"] == f"acme/slow@{v2}" for t in tasks)
        # The task that was running at the kill was adopted by the new process, not replaced.
        assert new[0]["id"] in {t["id"] for t in tasks}
        for task in tasks:
            assert get(f"http://127.0.0.1:{task['ports'][0]}/") == "slow-2\n"
        # No orphans: what runs under this launcher's label is exactly its active tasks.
        await api.call("POST", "/reconcile")
        expected = {c["id"] for t in tasks for c in t["containers"]}
        found = set()
        for engine in engines.values():
            for c in await containers_of(engine, cluster):
                found.add(c["ID"])
                assert c["State"] == "running", c
        assert found == expected
        if os.environ.get("LAUNCHER_SHOW_LOG"):
            print(log_path.read_text())
    finally:
        if proc.poll() is None:
            # Leave the shared engines clean: delete the service, then stop the process.
            with contextlib.suppress(Exception):
                await api.call("DELETE", "/services/slow", expect=202)

                async def drained() -> bool:
                    return not await api.tasks("slow")

                await eventually(drained, timeout=20)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for engine in engines.values():
            for c in await containers_of(engine, cluster):
                await asyncio.to_thread(engine.docker, "rm", "-f", c["ID"], check=False)


def _toml(doc: dict[str, Any]) -> str:
    """Just enough TOML for the test config (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(v)

    def table(name: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items()
                   if not (isinstance(v, dict) or (isinstance(v, list) and v
                                                   and isinstance(v[0], dict)))}
        if name:
            lines.append(f"[{name}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {value(v)}")
        for k, v in d.items():
            if k in scalars:
                continue
            if isinstance(v, dict):
                table(f"{name}.{k}" if name else k, v)
            else:
                for item in v:
                    lines.append(f"[[{name}.{k}]]" if name else f"[[{k}]]")
                    for ik, iv in item.items():
                        lines.append(f"{ik} = {value(iv)}")

    table("", doc)
    return "\n".join(lines) + "\n"


async def test_leader_killed_mid_deployment_another_node_finishes_it(
    env, images, workdir, postgres
):
    """Two launcher processes on one PostgreSQL database (two nodes of a cluster): the one
    holding the `launcher:<cluster>` lease is killed with -9 while a new task is starting; the
    other takes the lease and finishes the rollout (issue 15). Prints the failover time."""
    engines, api_main = env["engines"], env["api"]
    cluster = f"dyfail-{uuid.uuid4().hex[:8]}"
    url = postgres.new_database()
    ports = [free_port(), free_port()]
    procs: list[subprocess.Popen[bytes]] = []
    configs = []
    for i in range(2):
        section = launcher_section(engines, env["registry"], workdir / f"fo{i}", cluster,
                                   leader_ttl=3.0)
        section["port_range"] = PORTS_KILL
        path = workdir / f"failover{i}.toml"
        path.write_text(_toml({"data_dir": str(workdir / f"failover-data{i}"),
                               "metadata": {"url": url}, "launcher": section}))
        configs.append(path)
    log_path = workdir / "failover.log"

    def start(i: int) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "launcher", "--config", str(configs[i]), "launcher",
                 "serve", "--port", str(ports[i])], stdout=log, stderr=subprocess.STDOUT,
                cwd=pathlib.Path(__file__).resolve().parents[1],
            )

    apis = [Api(api_main.session, f"http://127.0.0.1:{p}/launcher/v1", TOKEN) for p in ports]

    async def leader() -> list[int]:  # a list: index 0 must count as found
        for i, api in enumerate(apis):
            if procs[i].poll() is None:
                with contextlib.suppress(aiohttp.ClientError, AssertionError):
                    if (await api.call("GET", "/"))["leader"]:
                        return [i]
        return []

    async def send(i: int, digest: str, tag: str) -> None:
        await send_push(api_main.session, ports[i], env["reg"], "acme/fo", digest, tag)

    try:
        procs.extend([start(0), start(1)])
        found = await eventually(leader, timeout=30)
        assert found, log_path.read_text()
        lead = found[0]
        other = 1 - lead
        api = apis[other]  # every node answers the API; only the leader acts on engines
        td = web_task("fo", "acme/fo", cpu=64, memory=32, command=f"sleep 2; {HTTPD}",
                      retries=30)
        await api.call("POST", "/task-definitions", td, expect=201)
        await api.call("POST", "/services", {"name": "fo", "repository": "acme/fo",
                                             "taskDefinition": "fo", "desiredCount": 2},
                       expect=201)
        v1 = await images("acme/fo:1", site("fo-1"))
        await send(other, v1, "1")
        assert (await api.deployment_for("fo", v1))["state"] == "SUCCESSFUL"

        v2 = await images("acme/fo:2", site("fo-2"))
        await send(other, v2, "2")

        async def starting() -> bool:
            return any(t["image"].endswith(v2) and t["status"] == "RUNNING"
                       for t in await api.tasks("fo"))

        await eventually(starting, timeout=30)
        os.kill(procs[lead].pid, signal.SIGKILL)
        procs[lead].wait(timeout=10)
        killed = time.monotonic()
        dep = await api.deployment_for("fo", v2)
        failover = time.monotonic() - killed
        print(f"\nlauncher leader failover: deployment finished {failover:.1f}s after the kill")
        assert dep["state"] == "SUCCESSFUL", dep
        assert (await api.call("GET", "/"))["leader"] is True
        tasks = await api.tasks("fo")
        assert len(tasks) == 2 and all(t["image"] == f"acme/fo@{v2}" for t in tasks)
        for task in tasks:
            assert get(f"http://127.0.0.1:{task['ports'][0]}/") == "fo-2\n"
    finally:
        alive = [i for i, p in enumerate(procs) if p.poll() is None]
        if alive:
            with contextlib.suppress(Exception):
                await apis[alive[0]].call("DELETE", "/services/fo", expect=202)

                async def drained() -> bool:
                    return not await apis[alive[0]].tasks("fo")

                await eventually(drained, timeout=20)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for engine in engines.values():
            for c in await containers_of(engine, cluster):
                await asyncio.to_thread(engine.docker, "rm", "-f", c["ID"], check=False)
