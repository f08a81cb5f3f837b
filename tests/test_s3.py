"""dockyard on S3, end to end: real `dockyard serve` processes on a real SeaweedFS.

A counting proxy sits between the registry and SeaweedFS, so the tests see every S3 request:
none may copy data server-side (ANCHORS 2), and HEAD, manifests, tags and the catalog must not
reach S3 at all (ANCHORS 3).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from registry.blobs import DEFERRED_DELETE_SECONDS
from registry.config import StorageSettings
from registry.storage import StorageError
from registry.storage.s3 import S3Store
from tests.support.dockerd import DockerDaemon
from tests.support.net import free_port
from tests.support.require import require_binary
from tests.support.seaweed import CountingProxy, S3Request, SeaweedFS, new_seaweed
from tests.support.server import DockyardServer

MIB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
COPY_OPERATIONS = {"CopyObject", "UploadPartCopy"}
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "s3.toml"


def payload(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    exe = require_binary("skopeo")
    res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"skopeo {' '.join(args)}: {res.stderr}"
    return res


def operations(records: list[S3Request]) -> Counter[str]:
    return Counter(r.operation for r in records if r.from_registry)


def assert_no_copies(records: list[S3Request]) -> None:
    copies = [r for r in records if "x-amz-copy-source" in r.headers]
    copies += [r for r in records if r.operation in COPY_OPERATIONS]
    assert not copies, f"server-side copies: {[(r.method, r.path) for r in copies]}"


def s3_dockyard(
    data_dir: Path, config_text: str, env: dict[str, str] | None = None
) -> DockyardServer:
    """A `dockyard serve` whose storage is exactly `config_text` (+ `env`): storage settings
    the CI may export for the rest of the suite (DOCKYARD_STORAGE_*) are not inherited."""
    server = DockyardServer(data_dir, config_text)
    server.env = {k: v for k, v in server.env.items() if not k.startswith("DOCKYARD_STORAGE_")}
    server.env.update(env or {})
    return server


@pytest.fixture(scope="module")
def proxy(seaweed: SeaweedFS) -> Iterator[CountingProxy]:
    counting = CountingProxy(seaweed.endpoint).start()
    yield counting
    counting.stop()


@pytest.fixture(scope="module")
def s3_server(
    seaweed: SeaweedFS, proxy: CountingProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockyardServer]:
    """dockyard streaming blobs from S3, through the counting proxy."""
    text = seaweed.config_text("e2e", prefix="stream/", endpoint=proxy.endpoint)
    with s3_dockyard(tmp_path_factory.mktemp("s3") / "data", text) as server:
        yield server


@pytest.fixture(scope="module")
def redirect_server(
    seaweed: SeaweedFS, proxy: CountingProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockyardServer]:
    """dockyard answering blob GETs with 307 to presigned URLs (of the proxy, so they count)."""
    text = seaweed.config_text("e2e", prefix="redirect/", endpoint=proxy.endpoint, redirect=True)
    with s3_dockyard(tmp_path_factory.mktemp("s3redirect") / "data", text) as server:
        yield server


# The protocol, driven with aiohttp


async def chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def start_upload(http: aiohttp.ClientSession, base: str, name: str) -> str:
    async with http.post(f"{base}/v2/{name}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        return base + resp.headers["Location"]


async def patch(
    http: aiohttp.ClientSession, location: str, data: bytes, start: int
) -> aiohttp.ClientResponse:
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{start}-{start + len(data) - 1}",
        "Content-Length": str(len(data)),
    }
    async with http.patch(location, data=chunks(data), headers=headers) as resp:
        await resp.read()
        return resp


async def finish(
    http: aiohttp.ClientSession, location: str, digest: str, data: bytes = b"", start: int = 0
) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
    if data:
        headers["Content-Range"] = f"{start}-{start + len(data) - 1}"
    sep = "&" if "?" in location else "?"
    async with http.put(f"{location}{sep}digest={digest}", data=data, headers=headers) as resp:
        await resp.read()
        return resp


async def push_chunked(
    http: aiohttp.ClientSession, base: str, name: str, data: bytes, chunk: int
) -> str:
    location = await start_upload(http, base, name)
    offset = 0
    while offset < len(data):
        piece = data[offset : offset + chunk]
        resp = await patch(http, location, piece, offset)
        assert resp.status == 202
        location = base + resp.headers["Location"]
        offset += len(piece)
    resp = await finish(http, location, sha256(data))
    assert resp.status == 201
    return sha256(data)


async def push_monolithic(http: aiohttp.ClientSession, base: str, name: str, data: bytes) -> str:
    digest = sha256(data)
    async with http.post(f"{base}/v2/{name}/blobs/uploads/?digest={digest}", data=data) as resp:
        assert resp.status == 201, await resp.text()
    return digest


async def push_manifest(
    http: aiohttp.ClientSession, base: str, name: str, tag: str, config: bytes, layers: list[bytes]
) -> str:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
                for layer in layers
            ],
        }
    ).encode()
    headers = {"Content-Type": OCI_MANIFEST}
    async with http.put(f"{base}/v2/{name}/manifests/{tag}", data=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
    return sha256(body)


async def fetch_blob(http: aiohttp.ClientSession, base: str, name: str, digest: str) -> bytes:
    async with http.get(f"{base}/v2/{name}/blobs/{digest}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


# Zero copies, and which requests reach S3


async def test_s3_requests_per_layer_and_zero_copies(
    s3_server: DockyardServer, proxy: CountingProxy, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    base, name = s3_server.url, "acme/count"
    big = payload("count-big", 12 * MIB)  # parts of 5 MiB: two full ones, a 2 MiB tail
    small = payload("count-small", 300 * 1024)
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": "count"}).encode()
    proxy.take()
    seen: list[S3Request] = []

    def take() -> list[S3Request]:
        records = proxy.take()
        seen.extend(records)
        return records

    async with aiohttp.ClientSession() as http:
        # A layer sent in one PATCH, as docker and skopeo do, then committed by an empty PUT.
        # Parts go to the multipart upload as they fill; the 2 MiB after the last full part
        # are stored as an object (so that another node could continue the upload) and sent
        # as the provisional last part, so the commit is one CompleteMultipartUpload.
        await push_chunked(http, base, name, big, len(big))
        big_ops = operations(take())
        await push_monolithic(http, base, name, small)
        small_ops = operations(take())
        await push_monolithic(http, base, name, config)
        digest = await push_manifest(http, base, name, "1", config, [big, small])
        rest_ops = operations(take())

        # The multipart upload is completed where it was written: nothing is copied, and the
        # held 2 MiB go once the blob is whole.
        assert big_ops == {
            "CreateMultipartUpload": 1,
            "UploadPart": 3,
            "PutObject": 1,
            "CompleteMultipartUpload": 1,
            "DeleteObject": 1,
        }
        # A blob under one part never starts a multipart upload: the object its PATCH (here
        # its POST) stored is the blob, and the commit costs no request.
        assert small_ops == {"PutObject": 1}
        assert rest_ops == {"PutObject": 2}  # the config blob and the manifest

        # Metadata answers never touch S3 (ANCHORS 3).
        for method, path in [
            ("HEAD", f"/v2/{name}/blobs/{sha256(big)}"),
            ("HEAD", f"/v2/{name}/blobs/{sha256(small)}"),
            ("GET", f"/v2/{name}/manifests/1"),
            ("HEAD", f"/v2/{name}/manifests/1"),
            ("GET", f"/v2/{name}/manifests/{digest}"),
            ("HEAD", f"/v2/{name}/manifests/{digest}"),
            ("GET", f"/v2/{name}/tags/list"),
            ("GET", "/v2/_catalog"),
        ]:
            headers = {"Accept": OCI_MANIFEST}
            async with http.request(method, base + path, headers=headers) as resp:
                assert resp.status == 200, (method, path, resp.status)
        assert take() == []

        # A ranged blob GET is one ranged GetObject, streamed through.
        wanted = f"bytes={5 * MIB - 10}-{5 * MIB + 9}"
        async with http.get(
            f"{base}/v2/{name}/blobs/{sha256(big)}", headers={"Range": wanted}
        ) as resp:
            assert resp.status == 206
            assert await resp.read() == big[5 * MIB - 10 : 5 * MIB + 10]
        gets = [r for r in take() if r.from_registry]
        assert [r.operation for r in gets] == ["GetObject"]
        assert gets[0].headers["range"] == wanted

        # A chunked client (spec: end-5) with chunks smaller than a part: every PATCH reads
        # back what the last one held (at most a part), nothing is copied, the blob verifies.
        await push_chunked(http, base, "acme/chunks", big, 4 * MIB)
        chunk_ops = operations(take())
        assert chunk_ops["CompleteMultipartUpload"] == 1 and chunk_ops["GetObject"] == 2
        assert sha256(await fetch_blob(http, base, "acme/chunks", sha256(big))) == sha256(big)
        take()

        # Another customer pushes the same layer: it is uploaded (knowing a digest grants
        # nothing), then the duplicate object is deleted, never copied.
        await push_chunked(http, base, "other/count", big, 12 * MIB)
        # Duplicates are deleted in a batch a little later (registry/blobs.py, issue 22 #6).
        await asyncio.sleep(DEFERRED_DELETE_SECONDS + 1)
        dup_ops = operations(take())
        # The held tail and the duplicate blob at least; a deferred delete of the chunked push
        # above may land in this window too. What stays stored is checked exactly below.
        assert dup_ops["DeleteObject"] >= 2
        assert await fetch_blob(http, base, "other/count", sha256(big)) == big
        take()

    assert_no_copies(seen)
    written = {r.key for r in seen if r.operation in ("PutObject", "CompleteMultipartUpload")}
    deleted = {r.key for r in seen if r.operation == "DeleteObject"}
    # One stored object per digest: the two layers, the config and the manifest (the held
    # objects of the uploads and the duplicate are gone).
    assert len(written - deleted) == 4
    store = S3Store(
        StorageSettings(
            driver="s3",
            endpoint=seaweed.endpoint,
            bucket="e2e",
            prefix="stream/",
            access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
        ),
        tmp_path,
    )
    await store.start()
    try:
        listed = {store.base + key async for key, _ in store.list_blob_keys()}
    finally:
        await store.close()
    assert written - deleted <= listed
    assert not deleted & listed


# Real clients


def test_docker_push_pull_run_on_s3(
    s3_server: DockyardServer, proxy: CountingProxy, dockerd: DockerDaemon, busybox: str
) -> None:
    ref = f"{s3_server.host}/acme/web"
    layers = [payload("s3-docker-a", 256 * 1024), payload("s3-docker-b", 6 * MIB)]
    dockerd.build_layers(busybox, f"{ref}:1", layers)
    proxy.take()
    out = dockerd.cli("push", f"{ref}:1").stdout
    digest = out.split("digest: ")[1].split()[0]
    pushed = proxy.take()
    assert_no_copies(pushed)
    # The 6 MiB layer went up as a multipart upload, completed in place.
    assert operations(pushed)["CompleteMultipartUpload"] >= 1

    dockerd.cli("rmi", f"{ref}:1")
    dockerd.cli("pull", f"{ref}@{digest}")
    run = dockerd.cli(
        "run", "--rm", "--network", "none", f"{ref}@{digest}", "sh", "-c", "cat /data/*.bin | wc -c"
    )
    assert run.stdout.strip() == str(sum(len(layer) for layer in layers))
    assert_no_copies(proxy.take())


def test_skopeo_round_trip_on_s3(
    s3_server: DockyardServer, dockerd: DockerDaemon, busybox: str, tmp_path: Path
) -> None:
    ref = f"{s3_server.host}/acme/tools"
    dockerd.build_layers(busybox, f"{ref}:src", [payload("s3-skopeo", 5 * MIB + 1)])
    dockerd.cli("push", f"{ref}:src")
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}:src", f"oci:{layout}:img")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:img", f"docker://{ref}:copy")
    src = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}:src").stdout)
    copy = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}:copy").stdout)
    assert copy["Layers"] == src["Layers"]
    # And back out again: skopeo verifies every blob digest it reads.
    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}:copy", f"oci:{out}:img")
    for layer in copy["Layers"]:
        blob = (out / "blobs" / "sha256" / layer.split(":")[1]).read_bytes()
        assert sha256(blob) == layer


# Redirect mode


async def test_redirect_answers_307_to_a_presigned_url(
    redirect_server: DockyardServer, proxy: CountingProxy
) -> None:
    base, name = redirect_server.url, "acme/redirect"
    data = payload("redirect", 2 * MIB)
    async with aiohttp.ClientSession() as http:
        digest = await push_monolithic(http, base, name, data)
        proxy.take()
        async with http.get(f"{base}/v2/{name}/blobs/{digest}", allow_redirects=False) as resp:
            assert resp.status == 307
            location = resp.headers["Location"]
            assert resp.headers["Docker-Content-Digest"] == digest
        assert location.startswith(proxy.endpoint)
        assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
        # Presigning is local: the registry itself made no request to S3.
        assert operations(proxy.take()) == {}

        async with http.get(location, headers={"Range": "bytes=100-199"}) as resp:
            assert resp.status == 206
            assert await resp.read() == data[100:200]
        async with http.get(f"{base}/v2/{name}/blobs/{digest}") as resp:  # followed
            assert await resp.read() == data
        # A tampered URL is refused by S3.
        async with http.get(location.replace("X-Amz-Expires=300", "X-Amz-Expires=301")) as resp:
            assert resp.status == 403


def test_docker_and_skopeo_pull_through_redirects(
    redirect_server: DockyardServer,
    proxy: CountingProxy,
    dockerd: DockerDaemon,
    busybox: str,
    tmp_path: Path,
) -> None:
    ref = f"{redirect_server.host}/acme/redirected"
    layers = [payload("redirect-docker", 6 * MIB)]
    dockerd.build_layers(busybox, f"{ref}:1", layers)
    out = dockerd.cli("push", f"{ref}:1").stdout
    digest = out.split("digest: ")[1].split()[0]
    dockerd.cli("rmi", f"{ref}:1")
    proxy.take()
    dockerd.cli("pull", f"{ref}@{digest}")
    pulled = proxy.take()
    # Docker fetched the blobs from S3 itself, with presigned URLs; the registry did not.
    assert [r for r in pulled if r.operation == "GetObject" and not r.from_registry]
    assert not [r for r in pulled if r.operation == "GetObject" and r.from_registry]
    size = dockerd.cli(
        "run", "--rm", "--network", "none", f"{ref}@{digest}", "sh", "-c", "cat /data/*.bin | wc -c"
    )
    assert size.stdout.strip() == str(len(layers[0]))

    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}@{digest}", f"oci:{layout}:img")
    manifest = json.loads(
        skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}:1").stdout
    )
    for layer in manifest["layers"]:
        blob = (layout / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()
        assert sha256(blob) == layer["digest"]


# Failures


@pytest.fixture
def own_seaweed() -> Iterator[SeaweedFS]:
    """A SeaweedFS this test may stop and start without disturbing the others."""
    server = new_seaweed()
    server.start()
    yield server
    server.destroy()


def error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


async def test_seaweedfs_stopped_mid_push_then_the_push_resumes(
    own_seaweed: SeaweedFS, tmp_path: Path
) -> None:
    text = own_seaweed.config_text("fault", max_retries=1)
    server = s3_dockyard(tmp_path / "data", text).start()
    base, name = server.url, "acme/fault"
    layer = payload("fault-layer", 13 * MIB + 5)
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": "fault"}).encode()
    try:
        async with aiohttp.ClientSession() as http:
            await push_monolithic(http, base, name, config)
            location = await start_upload(http, base, name)
            first = layer[: 6 * MIB]  # part 1 reaches S3 while it is up
            resp = await patch(http, location, first, 0)
            assert resp.status == 202
            location = base + resp.headers["Location"]

            await asyncio.to_thread(own_seaweed.stop)

            # The next chunk completes part 2, which cannot be stored: a spec error, 5xx.
            second = layer[6 * MIB : 11 * MIB]
            async with http.patch(
                location,
                data=chunks(second),
                headers={
                    "Content-Range": f"{6 * MIB}-{11 * MIB - 1}",
                    "Content-Length": str(len(second)),
                },
            ) as resp:
                assert resp.status >= 500
                assert resp.content_type == "application/json"
                assert error_code(await resp.read()) == "UNAVAILABLE"
            # The session stays at its old offset; the blob is not visible.
            async with http.get(location) as resp:
                assert resp.status == 204
                assert resp.headers["Range"] == f"0-{6 * MIB - 1}"
            async with http.head(f"{base}/v2/{name}/blobs/{sha256(layer)}") as resp:
                assert resp.status == 404
            # Metadata still answers; blob bytes cannot be had and say so.
            async with http.head(f"{base}/v2/{name}/blobs/{sha256(config)}") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/v2/{name}/blobs/{sha256(config)}") as resp:
                assert resp.status >= 500
                assert error_code(await resp.read()) == "UNAVAILABLE"
            # Committing now fails the same way and changes nothing.
            resp = await finish(http, location, sha256(layer), layer[6 * MIB :], 6 * MIB)
            assert resp.status >= 500

            await asyncio.to_thread(own_seaweed.start)

            # The client resumes from the offset the registry reports.
            resp = await patch(http, location, second, 6 * MIB)
            assert resp.status == 202, resp.status
            resp = await finish(http, location, sha256(layer), layer[11 * MIB :], 11 * MIB)
            assert resp.status == 201
            digest = await push_manifest(http, base, name, "1", config, [layer])

            # Every digest verifies on the way back out.
            assert sha256(await fetch_blob(http, base, name, sha256(layer))) == sha256(layer)
            assert sha256(await fetch_blob(http, base, name, sha256(config))) == sha256(config)
            async with http.get(
                f"{base}/v2/{name}/manifests/1", headers={"Accept": OCI_MANIFEST}
            ) as resp:
                assert sha256(await resp.read()) == digest
    finally:
        server.stop()


def test_startup_fails_clearly_on_bad_credentials(seaweed: SeaweedFS, tmp_path: Path) -> None:
    text = seaweed.config_text("startup").replace(seaweed.secret_key, "not-the-secret")
    with pytest.raises(RuntimeError) as failed:
        s3_dockyard(tmp_path / "data", text).start()
    assert "S3 refused access to bucket 'startup'" in str(failed.value)


def test_startup_fails_clearly_on_an_unreachable_endpoint(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    text = seaweed.config_text("startup", endpoint=nowhere, max_retries=0)
    with pytest.raises(RuntimeError) as failed:
        s3_dockyard(tmp_path / "data", text).start()
    assert f"cannot reach S3 for bucket 'startup' at {nowhere}" in str(failed.value)


async def test_startup_needs_the_bucket_unless_told_to_create_it(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    settings = StorageSettings(
        driver="s3",
        endpoint=seaweed.endpoint,
        bucket="never-created",
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        create_bucket=False,
    )
    store = S3Store(settings, tmp_path)
    with pytest.raises(StorageError, match="does not exist: create it, or set"):
        await store.start()
    await store.close()


async def test_expired_sessions_abort_their_multipart_uploads(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """An abandoned upload holds a multipart upload in S3; `dockyard gc` aborts it on expiry."""
    text = seaweed.config_text("expiry", prefix=f"{tmp_path.name}/")
    text += "[registry]\nupload_expiry_seconds = 1\n"
    server = s3_dockyard(tmp_path / "data", text).start()
    settings = StorageSettings(
        driver="s3",
        endpoint=seaweed.endpoint,
        bucket="expiry",
        prefix=f"{tmp_path.name}/",
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
    )
    store = S3Store(settings, tmp_path / "observer")
    await store.start()
    try:
        async with aiohttp.ClientSession() as http:
            location = await start_upload(http, server.url, "acme/abandoned")
            resp = await patch(http, location, payload("abandoned", 6 * MIB), 0)
            assert resp.status == 202
            upload_id = location.rsplit("/", 1)[1]
            assert upload_id in {u async for u, _ in store.list_uploads()}  # in S3, in progress

            await asyncio.sleep(1.5)  # past upload_expiry_seconds
            gc = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "dockyard",
                    "gc",
                    "--json",
                    "--config",
                    str(server.config_path),
                    "--data",
                    str(server.data_dir),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                env=server.env,
            )
            assert gc.returncode == 0, gc.stderr
            assert json.loads(gc.stdout)["uploads_expired"] == 1

            assert upload_id not in {u async for u, _ in store.list_uploads()}
            # The 1 MiB held after the part went with it, and nothing was ever kept locally.
            assert not [k async for k, _ in store.list_blob_keys() if k.startswith(upload_id)]
            assert not (server.data_dir / "uploads").exists()
            async with http.get(location) as resp:
                assert resp.status == 404
    finally:
        await store.close()
        server.stop()


@pytest.mark.parametrize("part_size_mib", [4, 257])
def test_part_size_outside_limits_is_a_config_error(part_size_mib: int, tmp_path: Path) -> None:
    from registry.config import ConfigError

    settings = StorageSettings(driver="s3", bucket="b", part_size_mib=part_size_mib)
    with pytest.raises(ConfigError, match="part_size_mib must be between 5 and 256"):
        S3Store(settings, tmp_path)


async def test_example_config_serves_with_env_overrides(seaweed: SeaweedFS, tmp_path: Path) -> None:
    """examples/s3.toml as shipped, pointed at SeaweedFS through DOCKYARD_STORAGE_* variables."""
    from registry.config import load_config

    assert load_config(EXAMPLE).raw["_unknown"] == []
    env = {
        "DOCKYARD_STORAGE_ENDPOINT": seaweed.endpoint,
        "DOCKYARD_STORAGE_BUCKET": "example",
        "DOCKYARD_STORAGE_ACCESS_KEY": seaweed.access_key,
        "DOCKYARD_STORAGE_SECRET_KEY": seaweed.secret_key,
        "DOCKYARD_STORAGE_CREATE_BUCKET": "true",
    }
    text = await asyncio.to_thread(EXAMPLE.read_text)
    with s3_dockyard(tmp_path / "data", text, env) as server:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}/v2/acme/example/blobs/uploads/") as resp:
                assert resp.headers["OCI-Chunk-Min-Length"] == str(16 * MIB)
            data = payload("example", 1000)
            digest = await push_monolithic(http, server.url, "acme/example", data)
            assert await fetch_blob(http, server.url, "acme/example", digest) == data


# Several nodes: each with its own --data, one PostgreSQL database and one bucket (issue 15)


@pytest.fixture
def two_nodes(
    seaweed: SeaweedFS, postgres: Any, tmp_path: Path
) -> Iterator[tuple[DockyardServer, DockyardServer]]:
    """Two `dockyard serve` processes that share nothing local: separate data directories,
    one PostgreSQL database for metadata (a shared SQLite file would be a shared filesystem)
    and one S3 prefix."""
    text = seaweed.config_text("nodes", prefix=f"{tmp_path.name}/")
    text += f'\n[metadata]\nurl = "{postgres.new_database()}"\n'
    nodes: list[DockyardServer] = []
    try:
        for name in ("node-a", "node-b"):
            nodes.append(s3_dockyard(tmp_path / name, text).start())
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()


def local_upload_files(*nodes: DockyardServer) -> list[Path]:
    return [p for n in nodes if (n.data_dir / "uploads").exists()
            for p in (n.data_dir / "uploads").iterdir()]


async def upload_range(http: aiohttp.ClientSession, location: str) -> str:
    async with http.get(location) as resp:
        assert resp.status == 204, await resp.text()
        return resp.headers["Range"]


async def test_an_upload_continues_chunk_after_chunk_on_the_other_node(
    two_nodes: tuple[DockyardServer, DockyardServer]
) -> None:
    a, b = two_nodes
    name = "acme/nodes"
    layer = payload("nodes", 17 * MIB + 3)
    # Chunks that end inside a part, on a part boundary and past one: what each node finds
    # held by the other differs every time.
    sizes = [6 * MIB, 3 * MIB, 5 * MIB + 1, 3 * MIB + 2]
    assert sum(sizes) == len(layer)
    async with aiohttp.ClientSession() as http:
        path = (await start_upload(http, a.url, name))[len(a.url):]
        offset = 0
        for i, size in enumerate(sizes):
            node = (b, a)[i % 2]  # POST on A, then B, A, B, A
            resp = await patch(http, node.url + path, layer[offset:offset + size], offset)
            assert resp.status == 202, resp.status
            path = resp.headers["Location"]
            offset += size
            # The other node sees the session where this one left it.
            other = a if node is b else b
            assert await upload_range(http, other.url + path) == f"0-{offset - 1}"
            assert not local_upload_files(a, b)
        resp = await finish(http, b.url + path, sha256(layer))  # committed on B, after A
        assert resp.status == 201
        for node in (a, b):
            assert sha256(await fetch_blob(http, node.url, name, sha256(layer))) == sha256(layer)

        # The common push, one PATCH, committed on the other node: also no copy (the held
        # tail was sent as the last part when the PATCH ended).
        small = payload("nodes-one-patch", 7 * MIB)
        path = (await start_upload(http, b.url, name))[len(b.url):]
        resp = await patch(http, a.url + path, small, 0)
        assert resp.status == 202
        resp = await finish(http, b.url + resp.headers["Location"], sha256(small))
        assert resp.status == 201
        assert sha256(await fetch_blob(http, a.url, name, sha256(small))) == sha256(small)


async def test_a_node_killed_mid_chunk_the_client_resumes_on_another(
    two_nodes: tuple[DockyardServer, DockyardServer]
) -> None:
    a, b = two_nodes
    name = "acme/killed"
    layer = payload("killed", 16 * MIB + 5)
    first, second = layer[: 6 * MIB], layer[6 * MIB :]
    async with aiohttp.ClientSession() as http:
        path = (await start_upload(http, a.url, name))[len(a.url):]
        resp = await patch(http, a.url + path, first, 0)
        assert resp.status == 202
        path = resp.headers["Location"]

        # The second chunk reaches A in part (enough for A to send a part of it to S3), then A
        # dies with the request open.
        sent = asyncio.Event()

        async def stalled() -> AsyncIterator[bytes]:
            view = memoryview(second)
            for i in range(0, 7 * MIB, MIB):
                yield bytes(view[i : i + MIB])
            sent.set()
            await asyncio.Event().wait()  # never finishes: the node dies first

        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{6 * MIB}-{len(layer) - 1}",
            "Content-Length": str(len(second)),
        }
        request = asyncio.create_task(http.patch(a.url + path, data=stalled(), headers=headers))
        await asyncio.wait_for(sent.wait(), 60)
        await asyncio.sleep(1.0)  # A reads what was sent and starts sending its part
        await asyncio.to_thread(a.kill)
        with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
            await asyncio.wait_for(request, 30)

        # The client asks B where the upload is: where A's last finished chunk left it.
        assert await upload_range(http, b.url + path) == f"0-{6 * MIB - 1}"
        resp = await patch(http, b.url + path, second, 6 * MIB)
        assert resp.status == 202
        resp = await finish(http, b.url + resp.headers["Location"], sha256(layer))
        assert resp.status == 201
        assert sha256(await fetch_blob(http, b.url, name, sha256(layer))) == sha256(layer)
