"""The `swarm` backend against a real Docker Swarm (issue 18): a private dockerd initialises
swarm mode on loopback, `dockyard serve` runs with `[launcher] backend = "swarm"`, and pushes
to dockyard drive Swarm services — v1 runs by digest, an unhealthy v2 is rolled back by Swarm
and reported ROLLED_BACK with the task's error, v3 runs, and a secret from dockyard's store is
a file in the container. Everything the user does goes through `dockyard launcher …`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.engines import EngineProcess, docker_engines, import_image, push
from tests.support.net import free_port
from tests.support.server import ROOT, DockyardServer

SECRET_VALUE = "swarm-secret-" + uuid.uuid4().hex
TERMINAL = ("SUCCESSFUL", "ROLLED_BACK", "BLOCKED", "FAILED")

TASK_DEFINITION = {
    "family": "api",
    "containerDefinitions": [{
        "name": "api",
        "image": "acme/api",
        "cpu": 256,
        "memory": 64,
        "memoryReservation": 32,
        "command": ["sh", "-c", "echo started; exec sleep 100000"],
        "secrets": [{"name": "API_KEY", "valueFrom": "api-key"}],
        "healthCheck": {"command": ["CMD-SHELL", "test -f /www/health"],
                        "interval": 0.5, "timeout": 2, "retries": 2, "startPeriod": 0},
        "stopTimeout": 1,
    }],
}


class Swarm:
    def __init__(self, root: Path, server: DockyardServer, manager: EngineProcess,
                 builder: EngineProcess) -> None:
        self.root, self.server, self.manager, self.builder = root, server, manager, builder

    def launcher(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "dockyard", "launcher", *args], input=stdin,
            capture_output=True, text=True, cwd=self.root, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT), "DOCKYARD_LAUNCHER_URL": self.server.url},
        )
        assert res.returncode == 0, f"launcher {' '.join(args)}: {res.stdout}{res.stderr}"
        return res

    def json(self, *args: str) -> Any:
        return json.loads(self.launcher(*args, "--json").stdout)

    def push(self, repo_tag: str, healthy: bool) -> str:
        ref = f"{self.server.host}/{repo_tag}"
        files = {"www/index.html": f"{repo_tag}\n"}
        if healthy:
            files["www/health"] = "ok\n"
        import_image(self.builder, ref, files)
        return push(self.builder, ref)

    def wait_deployment(self, digest: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        deps: list[dict] = []
        while time.monotonic() < deadline:
            deps = [d for d in self.json("deployments", "list", "--service", "api")["deployments"]
                    if d["digest"] == digest]
            if deps and deps[0]["state"] in TERMINAL:
                return self.json("deployments", "show", deps[0]["id"])
            time.sleep(0.5)
        raise AssertionError(f"no finished deployment of {digest}: {deps}")

    def swarm_service(self) -> dict[str, Any]:
        out = self.manager.docker("service", "inspect", self.service_id()).stdout
        return json.loads(out)[0]

    def service_id(self) -> str:
        return str(self.json("services", "show", "api")["swarmServiceId"])

    def running_containers(self) -> list[dict[str, Any]]:
        out = self.manager.docker("ps", "--no-trunc", "--format", "{{json .}}",
                                  "--filter", "label=com.docker.swarm.service.name").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    root = Path(tempfile.mkdtemp(prefix="dyswarm-", dir="/tmp"))
    try:
        with docker_engines([("mgr", {}), ("build", {})]) as (manager, builder):
            port = free_port()
            manager.docker("swarm", "init", "--advertise-addr", f"127.0.0.1:{port}",
                           "--listen-addr", f"127.0.0.1:{port}")
            config = f"""
[launcher]
enabled = true
backend = "swarm"
cluster = "sw{uuid.uuid4().hex[:6]}"
poll_interval = 0.3
reconcile_interval = 2.0
health_grace = 10.0
stop_timeout = 1

[launcher.swarm]
endpoint = "{manager.endpoint}"
"""
            server = DockyardServer(root / "data", config)
            server.start()
            try:
                yield Swarm(root, server, manager, builder)
            finally:
                server.stop()
                manager.docker("swarm", "leave", "--force", check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_push_runs_a_swarm_service_by_digest_with_its_secret(swarm):
    swarm.launcher("secrets", "put", "api-key", stdin=SECRET_VALUE + "\n")
    (swarm.root / "api.json").write_text(json.dumps(TASK_DEFINITION))
    swarm.launcher("td", "register", str(swarm.root / "api.json"))
    swarm.launcher("services", "create", "--name", "api", "--repository", "acme/api",
                   "--task-definition", "api", "--tags", "v*", "--desired-count", "2")
    v1 = swarm.push("acme/api:v1", healthy=True)
    dep = swarm.wait_deployment(v1)
    assert dep["state"] == "SUCCESSFUL", dep

    shown = swarm.json("services", "show", "api")
    assert shown["backend"] == "swarm" and shown["swarmServiceId"], shown
    assert shown["runningCount"] == 2, shown
    text = swarm.launcher("services", "show", "api").stdout
    assert "backend: swarm" in text and f"swarmServiceId: {shown['swarmServiceId']}" in text

    spec = swarm.swarm_service()["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Image"] == f"{swarm.server.host}/acme/api@{v1}"
    resources = spec["TaskTemplate"]["Resources"]
    assert resources["Limits"] == {"NanoCPUs": 250_000_000, "MemoryBytes": 64 << 20}
    assert resources["Reservations"] == {"NanoCPUs": 250_000_000, "MemoryBytes": 32 << 20}
    assert spec["UpdateConfig"]["FailureAction"] == "rollback"
    assert spec["UpdateConfig"]["Order"] == "start-first"
    assert container["Healthcheck"]["Test"] == ["CMD-SHELL", "test -f /www/health"]

    # The secret is a file in every task's container, and in no API answer.
    running = swarm.running_containers()
    assert len(running) == 2
    for c in running:
        got = swarm.manager.docker("exec", c["ID"], "cat", "/run/secrets/API_KEY").stdout
        assert got == SECRET_VALUE
        env = swarm.manager.docker("exec", c["ID"], "env").stdout
        assert "API_KEY_FILE=/run/secrets/API_KEY" in env and SECRET_VALUE not in env
    for args in (("services", "show", "api"), ("td", "show", "api"), ("secrets", "list")):
        assert SECRET_VALUE not in swarm.launcher(*args, "--json").stdout
    assert SECRET_VALUE not in json.dumps(swarm.swarm_service())


def test_unhealthy_push_is_rolled_back_by_swarm_and_reported(swarm):
    v1 = swarm.swarm_service()["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    v2 = swarm.push("acme/api:v2", healthy=False)
    dep = swarm.wait_deployment(v2)
    assert dep["state"] == "ROLLED_BACK", dep
    assert "swarm task" in dep["reason"], dep["reason"]
    assert [e["state"] for e in dep["events"]][-2:] == ["FAILED", "ROLLED_BACK"], dep["events"]
    # Swarm went back to v1 by itself; dockyard did not start a second rollout.
    service = swarm.swarm_service()
    assert service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == v1
    assert service["UpdateStatus"]["State"] == "rollback_completed"
    events = swarm.json("services", "events", "api")["events"]
    assert any(e["kind"] == "rollback" and "swarm rolled back" in e["message"] for e in events)


def test_next_push_runs_after_a_rollback(swarm):
    v3 = swarm.push("acme/api:v3", healthy=True)
    dep = swarm.wait_deployment(v3)
    assert dep["state"] == "SUCCESSFUL", dep
    image = swarm.swarm_service()["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    assert image.endswith(f"@{v3}")
    # desiredCount is carried over to Swarm.
    swarm.launcher("services", "update", "api", "--desired-count", "1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mode = swarm.swarm_service()["Spec"]["Mode"]["Replicated"]["Replicas"]
        if mode == 1:
            break
        time.sleep(0.5)
    assert mode == 1
    swarm.launcher("services", "delete", "api")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not swarm.manager.docker("service", "ls", "-q").stdout.strip():
            break
        time.sleep(0.5)
    assert not swarm.manager.docker("service", "ls", "-q").stdout.strip()
