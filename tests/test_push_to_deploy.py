"""Push-to-deploy through dockyard itself: a `docker push` to the registry starts the image on an
instance (the launcher is fed from the registry's durable outbox, in process), the deployment's
state changes go out as webhook events, and GC keeps what the launcher runs."""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.dockerd import DockerDaemon
from tests.support.net import free_port
from tests.support.server import DockyardServer

HTTPD = 'echo "serving on $PORT"; exec httpd -f -p "$PORT" -h /www'


def build_site(dockerd: DockerDaemon, base: str, tag: str, version: str, healthy: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        (ctx / "www").mkdir()
        (ctx / "www" / "index.html").write_text(f"{version}\n")
        if healthy:
            (ctx / "www" / "health").write_text("ok\n")
        (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY www /www\n")
        dockerd.cli("build", "-q", "-t", tag, str(ctx))


def task_definition() -> dict[str, Any]:
    return {
        "family": "web",
        "containerDefinitions": [
            {
                "name": "web",
                "image": "acme/web",
                "cpu": 128,
                "memory": 48,
                "portMappings": [{"name": "http"}],
                "command": ["sh", "-c", HTTPD],
                "healthCheck": {
                    "command": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:$PORT/health || exit 1"],
                    "interval": 0.3,
                    "timeout": 2,
                    "retries": 3,
                    "startPeriod": 0,
                },
            }
        ],
    }


class Receiver:
    """A webhook endpoint on loopback collecting delivered events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.port = free_port()

    async def start(self) -> None:
        app = web.Application()

        async def hook(request: web.Request) -> web.Response:
            self.events.extend((await request.json())["events"])
            return web.Response(status=204)

        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


async def wait_deployment(
    http: aiohttp.ClientSession, base: str, headers: dict, digest: str, timeout: float = 90
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(f"{base}/launcher/v1/deployments?service=web", headers=headers) as r:
            deps = [d for d in (await r.json())["deployments"] if d["digest"] == digest]
        if deps and deps[0]["state"] in ("SUCCESSFUL", "ROLLED_BACK"):
            return deps[0]
        await asyncio.sleep(0.3)
    raise AssertionError(f"no finished deployment of {digest}: {deps}")


def push(dockerd: DockerDaemon, ref: str) -> str:
    out = dockerd.cli("push", ref).stdout
    return out.split("digest: ")[1].split()[0]


async def test_push_deploys_rolls_back_and_is_kept_by_gc(
    dockerd: DockerDaemon, busybox: str, tmp_path: Path
) -> None:
    receiver = Receiver()
    await receiver.start()
    low = random.randrange(30000, 60000, 100)
    config = f"""
[gc]
grace_seconds = 0
untagged_age_seconds = 0.001

[launcher]
enabled = true
port_range = "{low}-{low + 99}"
reconcile_interval = 2.0
health_grace = 20.0
stable_seconds = 0.5
stop_timeout = 2

[launcher.instance_types.small]
cpu = 1024
memory = 512

[[launcher.instances]]
name = "local"
endpoint = "{dockerd.host}"
type = "small"

[[notifications.endpoints]]
name = "audit"
url = "http://127.0.0.1:{receiver.port}/hook"
actions = ["*"]
backoff = "100ms"
"""
    server = DockyardServer(tmp_path / "data", config)
    await asyncio.to_thread(server.start)
    try:
        token = (server.data_dir / "launcher" / "api-token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        base = server.url
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/launcher/v1/task-definitions", json=task_definition(), headers=headers
            ) as r:
                assert r.status == 201, await r.text()
            async with http.post(
                f"{base}/launcher/v1/services",
                headers=headers,
                json={
                    "name": "web",
                    "repository": "acme/web",
                    "taskDefinition": "web",
                    "tags": ["v*"],
                    "desiredCount": 1,
                },
            ) as r:
                assert r.status == 201, await r.text()

            ref = f"{server.host}/acme/web"
            await asyncio.to_thread(build_site, dockerd, busybox, f"{ref}:v1", "v1", True)
            v1 = await asyncio.to_thread(push, dockerd, f"{ref}:v1")
            dep = await wait_deployment(http, base, headers, v1)
            assert dep["state"] == "SUCCESSFUL", dep
            async with http.get(f"{base}/launcher/v1/tasks?service=web", headers=headers) as r:
                tasks = [t for t in (await r.json())["tasks"] if t["image"].endswith(v1)]
            port = tasks[0]["ports"][0]
            page = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/").read()
            )
            assert page == b"v1\n"

            # An unhealthy v2 is rolled back to v1 automatically.
            await asyncio.to_thread(build_site, dockerd, busybox, f"{ref}:v2", "v2", False)
            v2 = await asyncio.to_thread(push, dockerd, f"{ref}:v2")
            dep2 = await wait_deployment(http, base, headers, v2)
            assert dep2["state"] == "ROLLED_BACK", dep2

            # The deployment's states went out through the outbox to the webhook.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                actions = [e["action"] for e in receiver.events]
                if "deployment.rolled_back" in actions:
                    break
                await asyncio.sleep(0.2)
            assert {"push", "deployment.successful", "deployment.rolled_back"} <= set(actions)

            # With both tags gone and untagged manifests expiring at once, GC collects v2 but keeps
            # v1, which the launcher runs (and would roll back to).
            for tag in ("v1", "v2"):
                async with http.delete(f"{base}/v2/acme/web/manifests/{tag}") as r:
                    assert r.status == 202
            res = await asyncio.to_thread(server.cli, "gc", "--json")
            assert json.loads(res.stdout)["manifests_deleted"] >= 1  # v2 went, v1 stays
            async with http.get(f"{base}/v2/acme/web/manifests/{v1}") as r:
                assert r.status == 200
            async with http.get(f"{base}/v2/acme/web/manifests/{v2}") as r:
                assert r.status == 404
            async with http.delete(f"{base}/launcher/v1/services/web", headers=headers) as r:
                assert r.status in (200, 202, 204)
    finally:
        await asyncio.to_thread(server.stop)
        await receiver.runner.cleanup()
