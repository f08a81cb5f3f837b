"""The transactional outbox: a manifest push and its event commit together, or neither does.

A child process serves the whole app with the outbox instrumented to SIGKILL itself at one
point of the manifest PUT: before the event row is written (the manifest's rows are already
written in the open transaction), after it (before COMMIT), or right after COMMIT. A fresh
server on the same store then shows either both the manifest and its event, or neither.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.apiclient import OCI_MANIFEST, manifest, push_blob_raw, sha256
from tests.support.drivers import metadata_config
from tests.support.net import free_port, wait_http
from tests.support.server import ROOT, DockyardServer

CHILD = """
import asyncio, os, signal, sys
from aiohttp import web
import registry.events.outbox as outbox
from dockyard.app import build_app
from registry.config import load_config

config_path, data_dir, port, point = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
add, notify = outbox.EventOutbox.add, outbox.EventOutbox.notify

def die():
    os.kill(os.getpid(), signal.SIGKILL)

async def instrumented_add(self, tx, event):
    if point == "before-event":
        die()
    event_id = await add(self, tx, event)
    if point == "after-event":
        die()
    return event_id

def instrumented_notify(self):
    if point == "after-commit":
        die()
    notify(self)

outbox.EventOutbox.add = instrumented_add
outbox.EventOutbox.notify = instrumented_notify

async def main():
    app = await build_app(load_config(config_path, data_dir=data_dir))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""

HOOK = """
[notifications]
poll_interval = "1h"

[[notifications.endpoints]]
name = "hook"
url = "http://127.0.0.1:9/"
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize(
    ("point", "committed"),
    [("before-event", False), ("after-event", False), ("after-commit", True)],
)
def test_a_crash_leaves_both_or_neither(
    backend: str, point: str, committed: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    config = HOOK + (metadata_config(request) if backend == "postgresql" else "")
    config_path = tmp_path / "dockyard.toml"
    config_path.write_text(config)
    data = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config_path), str(data), str(port), point],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_http(f"{base}/v2/", proc=child)
        body = manifest(b"{}", [b"layer"])

        async def push() -> None:
            async with aiohttp.ClientSession() as http:
                for blob in (b"layer", b"{}"):
                    await push_blob_raw(http, base, "acme/app", blob)
                with pytest.raises(aiohttp.ClientError):  # the server died mid-request
                    async with http.put(
                        f"{base}/v2/acme/app/manifests/v1",
                        data=body,
                        headers={"Content-Type": OCI_MANIFEST},
                    ) as resp:
                        await resp.read()

        asyncio.run(push())
        assert child.wait(10) == -9
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)

    with DockyardServer(data, config) as server:
        server.config_path.write_text(config)
        status = _status(f"{server.url}/v2/acme/app/manifests/{sha256(body)}")
        events = json.loads(server.cli("events", "list", "--json").stdout)
    pushes = [e for e in events if e.get("action") == "push"]
    if committed:
        assert status == 200 and len(pushes) == 1 and pushes[0]["digest"] == sha256(body)
    else:
        assert status == 404 and pushes == []


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method="HEAD", headers={"Accept": OCI_MANIFEST})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
