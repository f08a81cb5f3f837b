"""Push → container running through dockyard's launcher (push-to-deploy), on a warm instance.

A second dockyard runs with a `[launcher]` table naming one running engine (the warm instance)
and a service deploying `bench/svc:v*`. A client engine pushes a new version; the clock stops
when the instance engine reports a running container of the pushed digest. The instance
already holds the base layer (a warm-up deployment ran first), so it pulls one small layer.
The reference registry has no launcher: its column stays empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import urllib.request
from typing import Any

from tests.support.dockerd import DockerDaemon
from tests.support.engines import remove_cgroup

from ..core import Bench, Row, Scenario, Skip
from ..servers import ROOT, Target, dockyard

TOKEN = "bench-launcher-token"
REPO = "bench/svc"


def launcher_wired() -> bool:
    source = (ROOT / "dockyard" / "app.py").read_text()
    return "from launcher" in source or "import launcher" in source


def _config(instance_host: str) -> str:
    low = random.randrange(30000, 60000, 100)
    return f"""
[launcher]
enabled = true
api_token = "{TOKEN}"
port_range = "{low}-{low + 99}"
stable_seconds = 0.5
stop_timeout = 1

[launcher.instance_types.small]
cpu = 1024
memory = 512

[[launcher.instances]]
name = "warm"
endpoint = "{instance_host}"
type = "small"
"""


def _api(base: str, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(
        f"{base}/launcher/v1{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = resp.read()
    return json.loads(data) if data else None


class PushToRunning(Scenario):
    name = "launcher"
    title = "push → container running (launcher, warm instance)"
    rows = [
        Row("push → running", "after_push_s", "push done → running (s)", False, "≤ 2 s",
            lambda dy, ref: dy <= 2.0),
        Row("push → running", "total_s", "push start → running (s)", False),
    ]

    def setup(self, bench: Bench) -> None:
        if not launcher_wired():
            raise Skip("the launcher is not wired into `dockyard serve` (dockyard/app.py)")
        if os.geteuid() != 0 or not os.path.exists("/usr/sbin/dockerd"):
            raise Skip("needs root and /usr/sbin/dockerd")
        self._stack = contextlib.ExitStack()
        self.engines: list[DockerDaemon] = []
        self.client = self._engine(bench, "lcli")
        self.instance = self._engine(bench, "linst")
        self.server: Target = self._stack.enter_context(
            dockyard(bench.work, [], _config(self.instance.host), name="dockyard-launcher")
        )
        base = self.server.url
        _api(base, "POST", "/task-definitions", {
            "family": "svc",
            "containerDefinitions": [{
                "name": "svc", "image": REPO, "cpu": 128, "memory": 48,
                "command": ["sleep", "3600"],
            }],
        })
        _api(base, "POST", "/services", {
            "name": "svc", "repository": REPO, "taskDefinition": "svc", "tags": ["v*"],
            "desiredCount": 1,
        })
        self.client.import_busybox("bench-base:1")
        self.docker_api = self.instance.client()
        # Warm-up: the instance pulls the base layer and runs a first version.
        self._deploy(bench, "warm", measure=False)

    def _engine(self, bench: Bench, name: str) -> DockerDaemon:
        engine = DockerDaemon(bench.work / name, name=name)
        self.engines.append(engine)
        engine.start()
        return engine

    def _running_with(self, digest: str) -> bool:
        for c in self.docker_api.containers.list(filters={"status": "running"}):
            if digest in (c.attrs.get("Config", {}).get("Image") or "") or digest in str(
                c.image.attrs.get("RepoDigests", [])
            ):
                return True
        return False

    def _deploy(self, bench: Bench, version: str, measure: bool, timeout: float = 120) -> None:
        ref = f"{self.server.host}/{REPO}:v{version}"
        self.client.build_layers("bench-base:1", ref, [f"{version} {time.time()}\n".encode()])
        ctx = (bench.measure("push → running", self.server) if measure
               else contextlib.nullcontext({}))
        with ctx as m:
            t0 = time.monotonic()
            out = self.client.cli("push", ref).stdout
            pushed = time.monotonic()
            digest = out.split("digest: ")[1].split()[0]
            deadline = pushed + timeout
            while not self._running_with(digest):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ref} ({digest}) not running after {timeout}s")
                time.sleep(0.02)
            done = time.monotonic()
            m["after_push_s"] = done - pushed
            m["total_s"] = done - t0

    def rep(self, bench: Bench, rep: int) -> None:
        self._deploy(bench, str(rep + 1), measure=True)

    def teardown(self, bench: Bench) -> None:
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()  # dockyard first: it stops what it started on the instance
        for engine in getattr(self, "engines", []):
            engine.stop()
            remove_cgroup(f"dy-{engine.name}-{os.getpid()}")
