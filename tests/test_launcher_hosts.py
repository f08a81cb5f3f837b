"""Real hosts (issue 17, "what to build" 2 and 3): an engine reached over tcp with mutual TLS
(certificates made here with `cryptography`), one whose certificate does not verify refused
with a clear message, and a service moved off an engine that died.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from launcher.api import add_routes
from launcher.config import LauncherSettings
from launcher.service import Launcher
from tests.support.engines import docker_engines, import_image, push
from tests.support.net import free_port
from tests.support.reference import reference_registry
from tests.test_ops_tls import make_certs

TOKEN = "tok-" + uuid.uuid4().hex


async def call(http: aiohttp.ClientSession, base: str, method: str, path: str,
               body: Any = None) -> tuple[int, Any]:
    async with http.request(method, base + path, json=body,
                            headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


async def until(check: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"gave up waiting: {what}")


async def test_tls_engine_and_rescheduling_after_an_engine_dies() -> None:
    root = Path(tempfile.mkdtemp(prefix="dyhosts-", dir="/tmp"))
    certs = make_certs(root / "certs")
    other = make_certs(root / "other")  # a CA the engine's certificate is not from
    tls_port = free_port()
    extra = {"tls": ["-H", f"tcp://127.0.0.1:{tls_port}", "--tlsverify",
                     "--tlscacert", str(certs.ca), "--tlscert", str(certs.server_cert),
                     "--tlskey", str(certs.server_key)]}
    labels = {"dockyard.instance-type": "small"}
    try:
        with docker_engines([("tls", labels), ("plain", labels), ("build", {})],
                            extra) as (tls_engine, plain, build), reference_registry() as reg:
            registry = f"127.0.0.1:{reg.port}"
            settings = LauncherSettings.from_dict({
                "enabled": True, "registry": registry, "api_token": TOKEN,
                "cluster": f"hosts-{uuid.uuid4().hex[:6]}",
                "instance_types": {"small": {"cpu": 1024, "memory": 512}},
                "port_range": f"{30000 + tls_port % 1000 * 20}-{30019 + tls_port % 1000 * 20}",
                "poll_interval": 0.2, "reconcile_interval": 1.0, "stable_seconds": 0.5,
                "stop_timeout": 1, "heartbeat_interval": 0.5, "instance_grace_seconds": 3,
            }, root / "data")
            launcher = Launcher(settings)
            app = web.Application()
            add_routes(app, launcher)
            await launcher.start()
            runner = web.AppRunner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            base = f"http://127.0.0.1:{port}/launcher/v1"
            try:
                async with aiohttp.ClientSession() as http:
                    endpoint = f"tcp://127.0.0.1:{tls_port}"
                    # A CA that did not sign the engine's certificate: refused, saying why.
                    status, body = await call(http, base, "POST", "/instances", {
                        "name": "bad", "endpoint": endpoint, "tls_ca": str(other.ca),
                        "tls_cert": str(certs.client_cert), "tls_key": str(certs.client_key)})
                    assert status == 400, body
                    message = body["errors"][0]["message"]
                    assert "certificate verification failed" in message, message
                    # Plain tcp to a --tlsverify engine: refused too, not a 500.
                    status, body = await call(http, base, "POST", "/instances",
                                              {"name": "bare", "endpoint": endpoint})
                    assert status == 400, body
                    status, inst = await call(http, base, "POST", "/instances", {
                        "name": "tls", "endpoint": endpoint, "tls_ca": str(certs.ca),
                        "tls_cert": str(certs.client_cert), "tls_key": str(certs.client_key)})
                    assert status == 201 and inst["status"] == "ACTIVE", inst
                    status, _ = await call(http, base, "POST", "/instances",
                                           {"name": "plain", "endpoint": plain.endpoint})
                    assert status == 201

                    td = {"family": "sleeper", "containerDefinitions": [{
                        "name": "s", "image": "acme/sleeper", "cpu": 256, "memory": 32,
                        "command": ["sh", "-c", "exec sleep 100000"], "stopTimeout": 1}]}
                    assert (await call(http, base, "POST", "/task-definitions", td))[0] == 201
                    status, _ = await call(http, base, "POST", "/services", {
                        "name": "sleeper", "repository": "acme/sleeper",
                        "taskDefinition": "sleeper", "desiredCount": 1,
                        "placementStrategy": [{"type": "binpack", "field": "cpu"}]})
                    assert status == 201
                    ref = f"{registry}/acme/sleeper:1"
                    await asyncio.to_thread(import_image, build, ref, {})
                    digest = await asyncio.to_thread(push, build, ref)
                    status, out = await call(http, base, "POST", "/services/sleeper/deployments",
                                             {"digest": digest})
                    assert status in (200, 201, 202), out

                    async def running() -> list[dict]:
                        _, body = await call(http, base, "GET", "/tasks?service=sleeper")
                        return [t for t in body["tasks"] if t["status"] == "RUNNING"]

                    first = (await until(running, "a running task"))[0]
                    _, instances = await call(http, base, "GET", "/instances")
                    names = {i["id"]: i["name"] for i in instances["instances"]}
                    # Kill the engine the task runs on (the TLS one if binpack chose it).
                    victim = tls_engine if names[first["instanceId"]] == "tls" else plain
                    died = time.monotonic()
                    victim.proc.send_signal(signal.SIGKILL)
                    victim.proc.wait(30)

                    async def moved() -> list[dict]:
                        return [t for t in await running() if t["instanceId"] !=
                                first["instanceId"]]

                    await until(moved, "the task placed on the other instance")
                    rescheduled = time.monotonic() - died
                    print(f"reschedule after an engine died: {rescheduled:.1f}s "
                          "(grace 3s, heartbeat 0.5s)")
                    _, lost = await call(http, base, "GET", f"/instances/{first['instanceId']}")
                    assert lost["status"] == "LOST", lost
                    _, events = await call(http, base, "GET", "/services/sleeper/events")
                    assert any(e["kind"] == "moved" for e in events["events"]), events
            finally:
                await runner.cleanup()
                await launcher.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
