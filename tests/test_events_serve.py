"""Durability through the real server: push to `dockyard serve`, kill -9, restart — every push's
event reaches the webhook, signed, in the reference envelope.

The receiver is down while the pushes happen, so nothing can be delivered before the kill: the
events can only come from what the server committed before it answered each manifest PUT.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.apiclient import push_to
from tests.support.net import free_port
from tests.support.server import DockyardServer
from tests.test_events_delivery import SECRET, Receiver

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


async def push(http: aiohttp.ClientSession, base: str, repo: str, tag: str) -> tuple[str, int]:
    layer, config = f"layer of {repo}:{tag}".encode(), b'{"architecture":"amd64","os":"linux"}'
    return await push_to(http, base, repo, tag, layer, config)


async def test_serve_kill_9_after_pushes_loses_no_event(tmp_path: Path) -> None:
    receiver = Receiver(port=free_port())  # down until after the crash
    config = f"""
[notifications]
poll_interval = "100ms"

[[notifications.endpoints]]
name = "hook"
url = "{receiver.url}"
timeout = "1s"
backoff = "50ms"
max_backoff = "200ms"
max_attempts = 1000
secret = "{SECRET}"
"""
    server = DockyardServer(tmp_path / "data", config)
    await asyncio.to_thread(server.start)
    try:
        pushed: dict[tuple[str, str], tuple[str, int]] = {}
        async with aiohttp.ClientSession() as http:
            for repo, tag in (("acme/web", "1"), ("acme/web", "2"), ("acme/api", "1")):
                pushed[(repo, tag)] = await push(http, server.url, repo, tag)
        await asyncio.to_thread(server.kill)
        await receiver.start()
        await asyncio.to_thread(server.start)

        def manifest_pushes() -> dict[tuple[str, str], dict]:
            return {
                (e["target"]["repository"], e["target"]["tag"]): e
                for e in receiver.accepted()
                if e["action"] == "push" and e["target"].get("tag")
            }

        await receiver.wait_for(lambda: set(pushed) <= set(manifest_pushes()), "every push")
        events = manifest_pushes()
        for (repo, tag), (digest, size) in pushed.items():
            target = events[(repo, tag)]["target"]
            assert target["digest"] == digest and target["size"] == size == target["length"]
            assert target["mediaType"] == MANIFEST_TYPE
            assert target["customer"] == "acme"
            assert target["url"].endswith(f"/v2/{repo}/manifests/{digest}")
            assert events[(repo, tag)]["request"]["method"] == "PUT"
        web = [
            e["target"]["tag"]
            for e in receiver.accepted()
            if e["target"]["repository"] == "acme/web"
            and e["action"] == "push"
            and e["target"].get("tag")
        ]
        assert web[:2] == ["1", "2"]  # in push order
    finally:
        await asyncio.to_thread(server.stop)
        await receiver.stop()
