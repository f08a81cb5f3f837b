"""Crash safety and concurrency against a real server process.

- kill -9 in the middle of a push leaves nothing partial visible; after a restart the same
  upload session resumes from its last complete chunk and the push succeeds.
- ten concurrent pushes of one image all succeed and leave one stored copy of each layer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.apiclient import OCI_MANIFEST, manifest, sha256
from tests.support.oci_layout import write_multi_platform_layout
from tests.support.require import require_binary
from tests.support.server import DockyardServer

CHUNK = 4 * 1024 * 1024


async def test_kill_9_mid_patch_then_resume(tmp_path: Path) -> None:
    data = hashlib.sha256(b"seed").digest() * (3 * CHUNK // 32)
    config = b'{"crash": true}'
    server = DockyardServer(tmp_path / "data").start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            async with http.post("/v2/acme/crash/blobs/uploads/") as r:
                loc = r.headers["Location"]
            async with http.patch(
                loc, data=data[:CHUNK], headers={"Content-Range": f"0-{CHUNK - 1}"}
            ) as r:
                assert r.status == 202

            half_sent = asyncio.Event()

            async def slow_second_chunk():
                for i in range(CHUNK, 2 * CHUNK, 256 * 1024):
                    yield data[i : i + 256 * 1024]
                    if i - CHUNK >= CHUNK // 2:
                        half_sent.set()
                    await asyncio.sleep(0.05)

            patch = asyncio.create_task(
                http.patch(
                    loc,
                    data=slow_second_chunk(),
                    headers={"Content-Range": f"{CHUNK}-{2 * CHUNK - 1}"},
                )
            )
            await asyncio.wait_for(half_sent.wait(), 60)
            server.kill()  # SIGKILL half-way through the second chunk
            with pytest.raises(aiohttp.ClientError):
                await patch
    finally:
        server.stop()

    server.start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            # Nothing half written is visible.
            async with http.head(f"/v2/acme/crash/blobs/{sha256(data)}") as r:
                assert r.status == 404
            # The session survived with exactly its first, complete chunk.
            async with http.get(loc) as r:
                assert r.status == 204
                assert r.headers["Range"] == f"0-{CHUNK - 1}"
            async with http.patch(
                loc,
                data=data[CHUNK:],
                headers={"Content-Range": f"{CHUNK}-{len(data) - 1}"},
            ) as r:
                assert r.status == 202, await r.text()
            async with http.put(f"{loc}?digest={sha256(data)}") as r:
                assert r.status == 201, await r.text()
            async with http.post(
                f"/v2/acme/crash/blobs/uploads/?digest={sha256(config)}", data=config
            ) as r:
                assert r.status == 201
            body = manifest(config, [data])
            async with http.put(
                "/v2/acme/crash/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}
            ) as r:
                assert r.status == 201
            async with http.get(f"/v2/acme/crash/blobs/{sha256(data)}") as r:
                h = hashlib.sha256()
                async for block in r.content.iter_chunked(1 << 16):
                    h.update(block)
                assert "sha256:" + h.hexdigest() == sha256(data)
    finally:
        server.stop()


def test_ten_concurrent_pushes_keep_one_copy_per_layer(tmp_path: Path) -> None:
    skopeo = require_binary("skopeo")
    layout = tmp_path / "layout"
    write_multi_platform_layout(layout, tag="img")
    with DockyardServer(tmp_path / "data") as server:
        procs = [
            subprocess.Popen(
                [
                    skopeo,
                    "copy",
                    "--all",
                    "--dest-tls-verify=false",
                    f"oci:{layout}:img",
                    f"docker://{server.host}/acme/same:{i}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(10)
        ]
        deadline = time.monotonic() + 300
        for p in procs:
            _, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
            assert p.returncode == 0, err
        source_blobs = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
        def stored() -> list[str]:
            files = (p for p in (server.data_dir / "blobs").rglob("*") if p.is_file())
            return sorted(p.name.split(".")[0] for p in files)

        # Every source blob (configs, layers, manifests, the index) is stored exactly once,
        # once the duplicates of the racing uploads were deleted (in a deferred batch, so that
        # a commit takes as long whoever else holds the bytes).
        settle = time.monotonic() + 20
        while stored() != sorted(source_blobs) and time.monotonic() < settle:
            time.sleep(0.2)
        assert stored() == sorted(source_blobs)
        tags = json.loads(
            subprocess.run(
                ["curl", "-sf", f"{server.url}/v2/acme/same/tags/list"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert sorted(tags["tags"]) == sorted(str(i) for i in range(10))
