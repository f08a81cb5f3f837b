"""The OCI Distribution API in process: every endpoint, status code and error case.

spec: oci-distribution-spec.md (endpoint ids end-1 … end-14 are named in each test).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from dockyard.app import build_app
from registry.config import load_config
from registry.handlers.base import REGISTRY
from tests.apiclient import (
    EMPTY,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    error_code,
    manifest,
    push_blob,
    push_image,
    sha256,
    sha512,
)
from tests.support.drivers import DRIVERS, driver_config

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture(params=DRIVERS)
async def client(aiohttp_client, tmp_path: Path, request: pytest.FixtureRequest) -> TestClient:
    """The whole API in process, on each storage driver (S3: a fresh bucket on SeaweedFS)."""
    config = tmp_path / "dockyard.toml"
    config.write_text(driver_config(request, request.param))
    return await aiohttp_client(await build_app(load_config(config, data_dir=tmp_path / "data")))


async def stored_keys(client: TestClient) -> list[str]:
    return [key async for key, _ in client.app[REGISTRY].store.list_blob_keys()]


async def settled_keys(client: TestClient) -> list[str]:
    """Stored keys once duplicate copies are deleted (in a batch a little after the commit that
    found them: registry/blobs.py DEFERRED_DELETE_SECONDS, issue 22 finding 6)."""
    await client.app[REGISTRY].blobs.drain()
    return await stored_keys(client)


async def upload_sessions(client: TestClient) -> list[str]:
    return [upload async for upload, _ in client.app[REGISTRY].store.list_uploads()]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# end-1


async def test_api_version_check(client: TestClient) -> None:
    resp = await client.get("/v2/")
    assert resp.status == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


# end-2, end-10: blobs


async def test_blob_get_head_and_ranges(client: TestClient) -> None:
    data = bytes(range(256)) * 40
    digest = await push_blob(client, "acme/web", data)
    head = await client.head(f"/v2/acme/web/blobs/{digest}")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest
    get = await client.get(f"/v2/acme/web/blobs/{digest}")
    assert await get.read() == data
    assert get.headers["Docker-Content-Digest"] == digest
    # spec: "A registry SHOULD support the Range request header" (RFC 9110 §14)
    part = await client.get(f"/v2/acme/web/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert await part.read() == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    suffix = await client.get(f"/v2/acme/web/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert suffix.status == 206 and await suffix.read() == data[-5:]
    bad = await client.get(f"/v2/acme/web/blobs/{digest}", headers={"Range": "bytes=99999-"})
    assert bad.status == 416
    assert bad.headers["Content-Range"] == f"bytes */{len(data)}"
    assert await error_code(bad) == "SIZE_INVALID"


async def test_missing_blob_and_bad_digest(client: TestClient) -> None:
    await push_blob(client, "acme/web", b"x")
    missing = await client.get(f"/v2/acme/web/blobs/{sha256(b'nope')}")
    assert missing.status == 404 and await error_code(missing) == "BLOB_UNKNOWN"
    head = await client.head(f"/v2/acme/web/blobs/{sha256(b'nope')}")
    assert head.status == 404
    # Reads of unknown customers answer 404 without creating anything for them.
    stranger = await client.head(f"/v2/stranger/web/blobs/{sha256(b'nope')}")
    assert stranger.status == 404
    tenants = await client.app[REGISTRY].meta.tenants.all()
    assert "stranger" not in [t.name for t in tenants]
    for bad in ("sha256:abc", "md5:" + "a" * 32, "sha256:" + "G" * 64, "nodigest"):
        resp = await client.get(f"/v2/acme/web/blobs/{bad}")
        assert resp.status == 400, bad
        assert await error_code(resp) == "DIGEST_INVALID"


async def test_invalid_names_are_name_invalid(client: TestClient) -> None:
    for name in ("Acme/web", "acme//web", "acme/-web", "acme/web_", "a" * 300):
        resp = await client.get(f"/v2/{name}/tags/list")
        assert resp.status == 400, name
        assert await error_code(resp) == "NAME_INVALID"


async def test_delete_blob(client: TestClient) -> None:
    digest = await push_blob(client, "acme/web", b"to delete")
    resp = await client.delete(f"/v2/acme/web/blobs/{digest}")
    assert resp.status == 202
    assert (await client.head(f"/v2/acme/web/blobs/{digest}")).status == 404
    again = await client.delete(f"/v2/acme/web/blobs/{digest}")
    assert again.status == 404 and await error_code(again) == "BLOB_UNKNOWN"


async def test_deletion_disabled_is_405(aiohttp_client, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[registry]\ndelete_enabled = false\n")
    client = await aiohttp_client(await build_app(load_config(cfg, data_dir=tmp_path / "d")))
    digest, _ = await push_image(client, "acme/web", "v1", [b"l"])
    for url in (
        f"/v2/acme/web/blobs/{sha256(b'l')}",
        "/v2/acme/web/manifests/v1",
        f"/v2/acme/web/manifests/{digest}",
    ):
        resp = await client.delete(url)
        assert resp.status == 405
        assert await error_code(resp) == "UNSUPPORTED"


# end-4a/4b/4c, end-5, end-6, end-13, end-14: uploads


async def test_post_then_put_monolithic(client: TestClient) -> None:
    resp = await client.post("/v2/acme/web/blobs/uploads/")
    assert resp.status == 202
    location = resp.headers["Location"]
    assert location.startswith("/v2/acme/web/blobs/uploads/")
    assert "OCI-Chunk-Min-Length" in resp.headers
    put = await client.put(f"{location}?digest={sha256(b'mono')}", data=b"mono")
    assert put.status == 201
    assert put.headers["Location"] == f"/v2/acme/web/blobs/{sha256(b'mono')}"
    assert put.headers["Docker-Content-Digest"] == sha256(b"mono")


async def test_chunked_upload_with_status_and_order_checks(client: TestClient) -> None:
    data = b"0123456789" * 10
    start = await client.post("/v2/acme/web/blobs/uploads/", headers={"Content-Length": "0"})
    loc = start.headers["Location"]
    status = await client.get(loc)
    assert status.status == 204 and status.headers["Range"] == "0-0"
    r1 = await client.patch(loc, data=data[:40], headers={"Content-Range": "0-39"})
    assert r1.status == 202 and r1.headers["Range"] == "0-39"
    loc = r1.headers["Location"]
    # spec: out-of-order, repeated or gapped chunks MUST get 416.
    gap = await client.patch(loc, data=data[50:60], headers={"Content-Range": "50-59"})
    assert gap.status == 416
    repeat = await client.patch(loc, data=data[:40], headers={"Content-Range": "0-39"})
    assert repeat.status == 416
    overlap = await client.patch(loc, data=data[30:50], headers={"Content-Range": "30-49"})
    assert overlap.status == 416
    status = await client.get(loc)
    assert status.status == 204
    assert status.headers["Range"] == "0-39"
    assert status.headers["Location"] == loc
    r2 = await client.patch(loc, data=data[40:90], headers={"Content-Range": "40-89"})
    assert r2.status == 202 and r2.headers["Range"] == "0-89"
    # Final chunk in the closing PUT.
    put = await client.put(
        f"{loc}?digest={sha256(data)}", data=data[90:], headers={"Content-Range": "90-99"}
    )
    assert put.status == 201, await put.text()
    got = await client.get(f"/v2/acme/web/blobs/{sha256(data)}")
    assert await got.read() == data


async def test_streamed_patch_without_content_range(client: TestClient) -> None:
    data = b"stream" * 100_000

    async def gen():
        for i in range(0, len(data), 7000):
            yield data[i : i + 7000]

    loc = (await client.post("/v2/acme/web/blobs/uploads/")).headers["Location"]
    resp = await client.patch(loc, data=gen())
    assert resp.status == 202 and resp.headers["Range"] == f"0-{len(data) - 1}"
    put = await client.put(f"{resp.headers['Location']}?digest={sha256(data)}")
    assert put.status == 201


async def test_digest_mismatch_keeps_nothing(client: TestClient) -> None:
    loc = (await client.post("/v2/acme/web/blobs/uploads/")).headers["Location"]
    resp = await client.put(f"{loc}?digest={sha256(b'other')}", data=b"actual")
    assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"
    assert (await client.head(f"/v2/acme/web/blobs/{sha256(b'actual')}")).status == 404
    assert (await client.head(f"/v2/acme/web/blobs/{sha256(b'other')}")).status == 404
    bad = await client.put(f"{loc}?digest=sha256:short", data=b"actual")
    assert bad.status == 400 and await error_code(bad) == "DIGEST_INVALID"


async def test_cancel_upload(client: TestClient) -> None:
    loc = (await client.post("/v2/acme/web/blobs/uploads/")).headers["Location"]
    await client.patch(loc, data=b"abc", headers={"Content-Range": "0-2"})
    resp = await client.delete(loc)
    assert resp.status == 204
    gone = await client.get(loc)
    assert gone.status == 404 and await error_code(gone) == "BLOB_UPLOAD_UNKNOWN"
    unknown = await client.patch("/v2/acme/web/blobs/uploads/not-a-uuid", data=b"x")
    assert unknown.status == 404


async def test_upload_session_is_bound_to_its_repository(client: TestClient) -> None:
    loc = (await client.post("/v2/acme/web/blobs/uploads/")).headers["Location"]
    upload_id = loc.rsplit("/", 1)[1]
    other = await client.patch(f"/v2/acme/other/blobs/uploads/{upload_id}", data=b"x")
    assert other.status == 404
    other_customer = await client.get(f"/v2/globex/web/blobs/uploads/{upload_id}")
    assert other_customer.status == 404


async def test_sha512_uploads(client: TestClient) -> None:
    data = b"sha512 content"
    single = await client.post(f"/v2/acme/web/blobs/uploads/?digest={sha512(data)}", data=data)
    assert single.status == 201
    assert single.headers["Docker-Content-Digest"] == sha512(data)
    start = await client.post("/v2/acme/web/blobs/uploads/?digest-algorithm=sha512")
    assert start.status == 202
    loc = start.headers["Location"]
    await client.patch(loc, data=b"more", headers={"Content-Range": "0-3"})
    put = await client.put(f"{loc}?digest={sha512(b'more')}")
    assert put.status == 201
    head = await client.head(f"/v2/acme/web/blobs/{sha512(b'more')}")
    assert head.status == 200 and head.headers["Content-Length"] == "4"
    bad = await client.post("/v2/acme/web/blobs/uploads/?digest-algorithm=md5")
    assert bad.status == 400


async def test_mount_with_and_without_from(client: TestClient) -> None:
    digest = await push_blob(client, "acme/base", b"shared layer")
    with_from = await client.post(f"/v2/acme/app1/blobs/uploads/?mount={digest}&from=acme/base")
    assert with_from.status == 201
    assert with_from.headers["Location"] == f"/v2/acme/app1/blobs/{digest}"
    # spec: "The registry MAY treat the from parameter as optional"
    without = await client.post(f"/v2/acme/app2/blobs/uploads/?mount={digest}")
    assert without.status == 201
    assert (await client.head(f"/v2/acme/app2/blobs/{digest}")).status == 200
    unknown = await client.post(f"/v2/acme/app3/blobs/uploads/?mount={sha256(b'?')}&from=acme/base")
    assert unknown.status == 202 and "Location" in unknown.headers


async def test_concurrent_uploads_of_one_blob_all_succeed(client: TestClient) -> None:
    data = b"same layer" * 50_000

    async def upload(i: int) -> int:
        loc = (await client.post(f"/v2/acme/app{i}/blobs/uploads/")).headers["Location"]
        await client.patch(loc, data=data)
        return (await client.put(f"{loc}?digest={sha256(data)}")).status

    assert await asyncio.gather(*(upload(i) for i in range(10))) == [201] * 10
    assert len(await settled_keys(client)) == 1
    assert await upload_sessions(client) == []


# end-3, end-7a/7b, end-9: manifests


async def test_manifest_push_pull_by_tag_and_digest(client: TestClient) -> None:
    digest, body = await push_image(client, "acme/web", "v1", [b"layer-1", b"layer-2"])
    assert digest == sha256(body)
    for ref in ("v1", digest):
        resp = await client.get(f"/v2/acme/web/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert resp.status == 200
        assert await resp.read() == body  # spec: the exact bytes the client pushed
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == digest
        head = await client.head(f"/v2/acme/web/manifests/{ref}")
        assert head.status == 200 and head.headers["Content-Length"] == str(len(body))
    missing = await client.get("/v2/acme/web/manifests/nope")
    assert missing.status == 404 and await error_code(missing) == "MANIFEST_UNKNOWN"
    no_repo = await client.get("/v2/nobody/none/manifests/v1")
    assert no_repo.status == 404


async def test_accept_negotiation_never_returns_an_unaccepted_type(client: TestClient) -> None:
    await push_image(client, "acme/web", "v1", [b"l"])
    resp = await client.get("/v2/acme/web/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
    assert resp.status == 404
    ok = await client.get(
        "/v2/acme/web/manifests/v1", headers={"Accept": f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"}
    )
    assert ok.status == 200


async def test_manifest_referencing_missing_blob_is_refused(client: TestClient) -> None:
    body = manifest(b"{}", [b"never uploaded"])
    await push_blob(client, "acme/web", b"{}")
    resp = await client.put(
        "/v2/acme/web/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 400 and await error_code(resp) == "MANIFEST_BLOB_UNKNOWN"
    assert (await client.get("/v2/acme/web/manifests/v1")).status == 404


async def test_invalid_manifests(client: TestClient) -> None:
    cases = [
        (b"not json", OCI_MANIFEST),
        (b"[]", OCI_MANIFEST),
        (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode(), OCI_MANIFEST),
        (
            json.dumps({"schemaVersion": 1, "mediaType": OCI_INDEX, "manifests": []}).encode(),
            OCI_INDEX,
        ),
        (
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode(),
            OCI_MANIFEST,
        ),  # mediaType and Content-Type disagree
        (json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(), "text/plain"),
    ]
    for body, ctype in cases:
        resp = await client.put(
            "/v2/acme/web/manifests/v1", data=body, headers={"Content-Type": ctype}
        )
        assert resp.status == 400, body
        assert await error_code(resp) == "MANIFEST_INVALID"
    bad_tag = await client.put(
        "/v2/acme/web/manifests/-bad", data=cases[0][0], headers={"Content-Type": OCI_MANIFEST}
    )
    assert bad_tag.status == 400


async def test_oversized_manifest_is_413(client: TestClient) -> None:
    body = b'{"schemaVersion":2,"pad":"' + b"x" * (4 * 1024 * 1024) + b'"}'
    resp = await client.put(
        "/v2/acme/web/manifests/big", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 413


async def test_put_by_digest_with_several_tags(client: TestClient) -> None:
    config, layer = b'{"c":1}', b"layer"
    await push_blob(client, "acme/web", config)
    await push_blob(client, "acme/web", layer)
    body = manifest(config, [layer])
    digest = sha256(body)
    resp = await client.put(
        f"/v2/acme/web/manifests/{digest}?tag=1.2.3&tag=1.2&tag=latest",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201
    # spec: end-7b — an OCI-Tag header for each accepted tag.
    assert resp.headers.getall("OCI-Tag") == ["1.2.3", "1.2", "latest"]
    tags = await (await client.get("/v2/acme/web/tags/list")).json()
    assert tags["tags"] == ["1.2", "1.2.3", "latest"]
    wrong = await client.put(
        f"/v2/acme/web/manifests/{sha256(b'other')}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert wrong.status == 400 and await error_code(wrong) == "DIGEST_INVALID"


async def test_sha512_manifest(client: TestClient) -> None:
    config, layer = b'{"c":512}', b"layer512"
    await push_blob(client, "acme/web", config)
    await push_blob(client, "acme/web", layer)
    body = manifest(config, [layer])
    resp = await client.put(
        f"/v2/acme/web/manifests/{sha512(body)}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == sha512(body)
    got = await client.get(f"/v2/acme/web/manifests/{sha512(body)}")
    assert await got.read() == body


async def test_every_manifest_media_type(client: TestClient) -> None:
    name = "acme/types"
    # Docker schema 2 manifest and manifest list.
    cfg, layer = b'{"docker":1}', b"docker layer"
    await push_blob(client, name, cfg)
    await push_blob(client, name, layer)
    docker_manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": sha256(cfg),
                "size": len(cfg),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    r = await client.put(
        f"/v2/{name}/manifests/docker",
        data=docker_manifest,
        headers={"Content-Type": DOCKER_MANIFEST},
    )
    assert r.status == 201
    docker_list = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                {
                    "mediaType": DOCKER_MANIFEST,
                    "digest": sha256(docker_manifest),
                    "size": len(docker_manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    ).encode()
    r = await client.put(
        f"/v2/{name}/manifests/list", data=docker_list, headers={"Content-Type": DOCKER_LIST}
    )
    assert r.status == 201
    got = await client.get(f"/v2/{name}/manifests/list", headers={"Accept": DOCKER_LIST})
    assert got.headers["Content-Type"] == DOCKER_LIST
    # OCI index of an index.
    inner_digest, inner = await push_image(client, name, "inner", [b"oci layer"])
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": inner_digest, "size": len(inner)}],
        }
    ).encode()
    r = await client.put(
        f"/v2/{name}/manifests/index", data=index, headers={"Content-Type": OCI_INDEX}
    )
    assert r.status == 201
    outer = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_INDEX, "digest": sha256(index), "size": len(index)}],
        }
    ).encode()
    r = await client.put(
        f"/v2/{name}/manifests/outer", data=outer, headers={"Content-Type": OCI_INDEX}
    )
    assert r.status == 201
    # An index whose child is missing.
    orphan = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(b"missing"), "size": 7}],
        }
    ).encode()
    r = await client.put(
        f"/v2/{name}/manifests/orphan", data=orphan, headers={"Content-Type": OCI_INDEX}
    )
    assert r.status == 400 and await error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    # An artifact: empty config, artifactType, no layers.
    empty = b"{}"
    await push_blob(client, name, empty)
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom.v1",
            "config": {"mediaType": EMPTY, "digest": sha256(empty), "size": 2},
            "layers": [],
        }
    ).encode()
    r = await client.put(
        f"/v2/{name}/manifests/artifact", data=artifact, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 201
    # Non-distributable layer with foreign URLs that the registry never received.
    foreign = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(empty), "size": 2},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    "digest": sha256(b"foreign"),
                    "size": 7,
                    "urls": ["https://example.com/layer"],
                }
            ],
        }
    ).encode()
    r = await client.put(
        f"/v2/{name}/manifests/foreign", data=foreign, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 201


async def test_delete_tag_and_manifest(client: TestClient) -> None:
    digest, body = await push_image(client, "acme/web", "v1", [b"l1"])
    put = await client.put(
        "/v2/acme/web/manifests/v2", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert put.status == 201
    resp = await client.delete("/v2/acme/web/manifests/v2")
    assert resp.status == 202
    assert (await client.get("/v2/acme/web/manifests/v2")).status == 404
    assert (await client.get(f"/v2/acme/web/manifests/{digest}")).status == 200
    assert (await client.get("/v2/acme/web/manifests/v1")).status == 200
    resp = await client.delete(f"/v2/acme/web/manifests/{digest}")
    assert resp.status == 202
    assert (await client.get(f"/v2/acme/web/manifests/{digest}")).status == 404
    assert (await client.get("/v2/acme/web/manifests/v1")).status == 404
    again = await client.delete(f"/v2/acme/web/manifests/{digest}")
    assert again.status == 404 and await error_code(again) == "MANIFEST_UNKNOWN"


# end-8a/8b and catalog


async def test_tag_list_pagination(client: TestClient) -> None:
    body = None
    for tag in ["b", "a", "c", "e", "d"]:
        if body is None:
            _, body = await push_image(client, "acme/web", tag, [b"l"])
        else:
            await client.put(
                f"/v2/acme/web/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}
            )
    full = await (await client.get("/v2/acme/web/tags/list")).json()
    assert full == {"name": "acme/web", "tags": ["a", "b", "c", "d", "e"]}
    page = await client.get("/v2/acme/web/tags/list?n=2")
    assert (await page.json())["tags"] == ["a", "b"]
    assert page.headers["Link"] == '</v2/acme/web/tags/list?n=2&last=b>; rel="next"'
    page2 = await client.get("/v2/acme/web/tags/list?n=2&last=b")
    assert (await page2.json())["tags"] == ["c", "d"]
    last = await client.get("/v2/acme/web/tags/list?n=2&last=d")
    assert (await last.json())["tags"] == ["e"] and "Link" not in last.headers
    exact = await client.get("/v2/acme/web/tags/list?n=5")
    assert "Link" not in exact.headers
    zero = await client.get("/v2/acme/web/tags/list?n=0")
    assert (await zero.json())["tags"] == [] and "Link" not in zero.headers
    # The full list follows every change (it is cached until the database changes).
    await client.put("/v2/acme/web/manifests/f", data=body, headers={"Content-Type": OCI_MANIFEST})
    await client.delete("/v2/acme/web/manifests/a")
    after = await (await client.get("/v2/acme/web/tags/list")).json()
    assert after["tags"] == ["b", "c", "d", "e", "f"]
    unknown = await client.get("/v2/acme/nothing/tags/list")
    assert unknown.status == 404 and await error_code(unknown) == "NAME_UNKNOWN"


async def test_catalog_pagination(client: TestClient) -> None:
    for name in ["acme/b", "acme/a", "globex/c", "busybox"]:
        await push_image(client, name, "v1", [name.encode()])
    full = await (await client.get("/v2/_catalog")).json()
    assert full["repositories"] == ["acme/a", "acme/b", "busybox", "globex/c"]
    page = await client.get("/v2/_catalog?n=3")
    assert (await page.json())["repositories"] == ["acme/a", "acme/b", "busybox"]
    assert page.headers["Link"] == '</v2/_catalog?n=3&last=busybox>; rel="next"'
    rest = await (await client.get("/v2/_catalog?n=3&last=busybox")).json()
    assert rest["repositories"] == ["globex/c"]


async def test_single_component_names_belong_to_default_customer(client: TestClient) -> None:
    await push_image(client, "busybox", "latest", [b"bb"])
    tenants = client.app[REGISTRY].meta.tenants
    library = await tenants.find("library")
    assert library is not None and await tenants.repositories(library) == ["busybox"]


# end-12a/12b: referrers


async def test_referrers_and_subject(client: TestClient) -> None:
    subject_digest, subject = await push_image(client, "acme/web", "v1", [b"app"])
    empty = b"{}"
    await push_blob(client, "acme/web", empty)

    async def refer(artifact_type: str, note: str) -> str:
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": {"mediaType": EMPTY, "digest": sha256(empty), "size": 2},
                "layers": [],
                "subject": {
                    "mediaType": OCI_MANIFEST,
                    "digest": subject_digest,
                    "size": len(subject),
                },
                "annotations": {"note": note},
            }
        ).encode()
        resp = await client.put(
            f"/v2/acme/web/manifests/{sha256(body)}",
            data=body,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert resp.status == 201
        # spec: "Pushing Manifests with Subject" — OCI-Subject tells the client it was indexed.
        assert resp.headers["OCI-Subject"] == subject_digest
        return sha256(body)

    sbom = await refer("application/vnd.example.sbom.v1", "sbom")
    sig = await refer("application/vnd.example.sig.v1", "sig")
    resp = await client.get(f"/v2/acme/web/referrers/{subject_digest}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == OCI_INDEX
    index = await resp.json()
    assert {m["digest"] for m in index["manifests"]} == {sbom, sig}
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert by_digest[sbom]["artifactType"] == "application/vnd.example.sbom.v1"
    assert by_digest[sbom]["annotations"] == {"note": "sbom"}
    filtered = await client.get(
        f"/v2/acme/web/referrers/{subject_digest}?artifactType=application/vnd.example.sig.v1"
    )
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in (await filtered.json())["manifests"]] == [sig]
    none = await client.get(f"/v2/acme/web/referrers/{sha256(b'unknown')}")
    assert none.status == 200 and (await none.json())["manifests"] == []
    bad = await client.get("/v2/acme/web/referrers/sha256:bad")
    assert bad.status == 400


async def test_referrer_before_its_subject(client: TestClient) -> None:
    """spec: a registry MUST accept a manifest whose subject does not exist yet."""
    empty = b"{}"
    await push_blob(client, "acme/web", empty)
    future = sha256(b"future subject")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/x.sig",
            "config": {"mediaType": EMPTY, "digest": sha256(empty), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": future, "size": 10},
        }
    ).encode()
    resp = await client.put(
        f"/v2/acme/web/manifests/{sha256(body)}", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201
    listed = await (await client.get(f"/v2/acme/web/referrers/{future}")).json()
    assert [m["digest"] for m in listed["manifests"]] == [sha256(body)]


# Customers


async def test_other_customers_blobs_are_invisible(client: TestClient) -> None:
    data = b"acme secret layer"
    digest = await push_blob(client, "acme/secret", data)
    unknown = sha256(b"never seen")
    seen = await client.head(f"/v2/globex/app/blobs/{digest}")
    never = await client.head(f"/v2/globex/app/blobs/{unknown}")
    assert seen.status == never.status == 404
    got = await client.get(f"/v2/globex/app/blobs/{digest}")
    got_never = await client.get(f"/v2/globex/app/blobs/{unknown}")
    assert (await got.json())["errors"][0]["code"] == (await got_never.json())["errors"][0]["code"]
    mount = await client.post(f"/v2/globex/app/blobs/uploads/?mount={digest}")
    assert mount.status == 202
    # globex must send the bytes; storage still holds one object for the digest.
    await push_blob(client, "globex/app", data)
    assert len(await settled_keys(client)) == 1


async def test_unknown_route_and_method_get_json_errors(client: TestClient) -> None:
    resp = await client.post("/v2/acme/web/tags/list")
    assert resp.status == 405 and await error_code(resp) == "UNSUPPORTED"
    resp = await client.get("/v2/acme/web/nothing-here")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"]
