"""Helpers for API tests: an in-process dockyard app and small protocol steps."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from aiohttp.test_utils import TestClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY = "application/vnd.oci.empty.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


async def push_blob(client: TestClient, name: str, data: bytes) -> str:
    digest = sha256(data)
    resp = await client.post(f"/v2/{name}/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201, await resp.text()
    return digest


def manifest(config: bytes, layers: list[bytes], **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    doc.update(extra)
    return json.dumps(doc).encode()


async def push_image(
    client: TestClient,
    name: str,
    tag: str,
    layers: list[bytes],
    config: bytes | None = None,
    **extra: Any,
) -> tuple[str, bytes]:
    config = config if config is not None else json.dumps({"tag": tag, "n": name}).encode()
    await push_blob(client, name, config)
    for layer in layers:
        await push_blob(client, name, layer)
    body = manifest(config, layers, **extra)
    resp = await client.put(
        f"/v2/{name}/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"], body


async def error_code(resp: Any) -> str:
    body = await resp.json(content_type=None)
    return body["errors"][0]["code"]


async def basic_token(http: Any, base: str, user: str, password: str, scope: str) -> str:
    """A bearer token from the registry's token endpoint for `user`, via Basic auth."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    async with http.get(
        f"{base}/auth/token",
        params={"service": "dockyard", "scope": scope},
        headers={"Authorization": f"Basic {auth}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["token"])


async def push_blob_raw(http: Any, base: str, repo: str, blob: bytes) -> str:
    """A monolithic blob upload (POST with ?digest) to the registry at `base`."""
    async with http.post(
        f"{base}/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)}, data=blob
    ) as resp:
        assert resp.status == 201, await resp.text()
    return sha256(blob)


async def push_to(
    http: Any, base: str, repo: str, tag: str, layer: bytes, config: bytes
) -> tuple[str, int]:
    """Push a one-layer image to any registry at `base` (POST then PUT, which every registry
    takes); return the manifest's digest and size."""
    for blob in (layer, config):
        async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
            assert resp.status == 202, await resp.text()
            location = resp.headers["Location"]
        if location.startswith("/"):
            location = base + location
        async with http.put(location, params={"digest": sha256(blob)}, data=blob) as resp:
            assert resp.status == 201, await resp.text()
    body = manifest(config, [layer])
    async with http.put(
        f"{base}/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}
    ) as resp:
        assert resp.status == 201, await resp.text()
    return sha256(body), len(body)
