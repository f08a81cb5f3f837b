"""Issue 22, findings 5 and 8: bad input gets the spec's error, never a 500 with a traceback.

Every case here answered 500 (and logged a traceback) or was accepted before the fix; each test
asserts what a client sees — status, error code, headers — and that nothing was logged at ERROR.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from dockyard.app import build_app
from dockyard.core.errors import SizeInvalid
from registry.config import load_config
from registry.handlers.blobs import parse_range
from tests.apiclient import OCI_MANIFEST, error_code, push_image, sha256

NINES = "9" * 5000  # past Python's 4,300-digit int() limit


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path) -> TestClient:
    app = await build_app(load_config(None, data_dir=tmp_path / "data"))
    client = await aiohttp_client(app)
    await push_image(client, "acme/web", "1", [b"layer-bytes"])
    return client


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# -- finding 5: pagination ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/acme/web/tags/list", "/v2/_catalog"])
@pytest.mark.parametrize("n", ["²", "١٢", "-1", "abc", "1.5", "0x10"])
async def test_non_integer_n_is_400(client: TestClient, path: str, n: str) -> None:
    resp = await client.get(path, params={"n": n})
    assert resp.status == 400
    assert await error_code(resp) == "PAGINATION_NUMBER_INVALID"


@pytest.mark.parametrize("path", ["/v2/acme/web/tags/list", "/v2/_catalog"])
async def test_huge_n_is_clamped_not_500(client: TestClient, path: str) -> None:
    # spec ("Listing Tags"): the response MAY return fewer than n results when there are no
    # more, so a huge n is a valid request for everything (clamped at 10,000 with a Link).
    resp = await client.get(f"{path}?n={NINES}")
    assert resp.status == 200
    body = await resp.json()
    assert body.get("tags", body.get("repositories"))
    assert "Link" not in resp.headers


@pytest.mark.parametrize("path", ["/v2/acme/web/tags/list", "/v2/_catalog"])
async def test_empty_and_leading_zero_n(client: TestClient, path: str) -> None:
    assert (await client.get(f"{path}?n=")).status == 200
    resp = await client.get(f"{path}?n=0001")
    assert resp.status == 200


# -- finding 5: Range on blob GET (RFC 9110 §14.1.2, §14.2, §15.5.17) ---------------------------


async def _blob(client: TestClient, rng: str):
    return await client.get(f"/v2/acme/web/blobs/{sha256(b'layer-bytes')}", headers={"Range": rng})


async def test_range_with_huge_last_pos_means_to_the_end(client: TestClient) -> None:
    resp = await _blob(client, f"bytes=0-{NINES}")
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 0-10/11"
    assert await resp.read() == b"layer-bytes"


async def test_range_with_huge_suffix_is_the_whole_blob(client: TestClient) -> None:
    resp = await _blob(client, f"bytes=-{NINES}")
    assert resp.status == 206
    assert await resp.read() == b"layer-bytes"


async def test_range_with_huge_first_pos_is_416(client: TestClient) -> None:
    resp = await _blob(client, f"bytes={NINES}-")
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */11"
    assert await error_code(resp) == "SIZE_INVALID"


@pytest.mark.parametrize("rng", ["bytes=0-1,3-4", "items=0-1"])
async def test_unparsed_range_is_ignored(client: TestClient, rng: str) -> None:
    # RFC 9110 §14.2: a Range the server does not understand is ignored (several ranges are not
    # served; another unit MUST be ignored).
    resp = await _blob(client, rng)
    assert resp.status == 200
    assert await resp.read() == b"layer-bytes"


@pytest.mark.parametrize("rng", ["bytes=5-2", f"bytes={NINES}-1"])
async def test_range_ending_before_it_starts_is_416(client: TestClient, rng: str) -> None:
    # spec: RFC 9110 §14.1.1 (last-pos < first-pos is invalid), RFC 7233 §3.1 (416 for an
    # invalid range); the official OCI conformance program expects 416 for "bytes=500-0".
    resp = await _blob(client, rng)
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */11"
    assert await error_code(resp) == "SIZE_INVALID"


def test_parse_range_for_streamed_drivers() -> None:
    # The S3 driver streams; the same parser decides.
    assert parse_range(f"bytes=0-{NINES}", 11) == (0, 10)
    assert parse_range(f"bytes=-{NINES}", 11) == (0, 10)
    assert parse_range("bytes=00003-0004", 11) == (3, 4)
    with pytest.raises(SizeInvalid):
        parse_range(f"bytes={NINES}-", 11)


# -- finding 5: Content-Range on PATCH -----------------------------------------------------------


async def test_patch_with_huge_content_range_is_400(client: TestClient) -> None:
    loc = (await client.post("/v2/acme/web/blobs/uploads/")).headers["Location"]
    resp = await client.patch(loc, data=b"abc", headers={"Content-Range": f"0-{NINES}"})
    assert resp.status == 400
    assert await error_code(resp) == "BLOB_UPLOAD_INVALID"
    resp = await client.patch(loc, data=b"abc", headers={"Content-Range": f"{NINES}-{NINES}"})
    assert resp.status == 400
    # The session is intact and takes the right chunk.
    resp = await client.patch(loc, data=b"abc", headers={"Content-Range": "0-2"})
    assert resp.status == 202 and resp.headers["Range"] == "0-2"


async def test_put_with_huge_content_range_is_400(client: TestClient) -> None:
    loc = (await client.post("/v2/acme/web/blobs/uploads/")).headers["Location"]
    resp = await client.put(
        f"{loc}?digest={sha256(b'abc')}", data=b"abc", headers={"Content-Range": f"0-{NINES}"}
    )
    assert resp.status == 400
    assert await error_code(resp) == "BLOB_UPLOAD_INVALID"


# -- findings 5 and 8: manifests -----------------------------------------------------------------


async def _good_manifest(client: TestClient) -> dict:
    return json.loads(await (await client.get("/v2/acme/web/manifests/1")).read())


async def _put(client: TestClient, body: bytes | str, tag: str = "bad"):
    data = body.encode() if isinstance(body, str) else body
    return await client.put(
        f"/v2/acme/web/manifests/{tag}", data=data, headers={"Content-Type": OCI_MANIFEST}
    )


async def test_deeply_nested_manifest_is_manifest_invalid(client: TestClient) -> None:
    doc = json.dumps(await _good_manifest(client))
    deep = doc[:-1] + ', "x": ' + "[" * 2000 + "]" * 2000 + "}"
    resp = await _put(client, deep)
    assert resp.status == 400
    assert await error_code(resp) == "MANIFEST_INVALID"
    deep = doc[:-1] + ', "x": ' + '{"a":' * 2000 + "1" + "}" * 2000 + "}"
    assert (await _put(client, deep)).status == 400


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
async def test_non_standard_numbers_are_manifest_invalid(client: TestClient, constant: str) -> None:
    doc = json.dumps(await _good_manifest(client))
    resp = await _put(client, doc[:-1] + f', "annotations": {{}}, "x": {constant}}}')
    assert resp.status == 400
    assert await error_code(resp) == "MANIFEST_INVALID"
    assert (await client.get("/v2/acme/web/manifests/bad")).status == 404


async def test_duplicate_keys_are_manifest_invalid(client: TestClient) -> None:
    good = await _good_manifest(client)
    doc = json.dumps(good)
    # Two readers could see two different layer lists behind one digest.
    other_layers = json.dumps([])
    for body in (
        doc[:-1] + ', "schemaVersion": 2}',
        doc[:-1] + f', "layers": {other_layers}}}',
        doc.replace('"config": {', '"config": {"size": 1, ', 1),
    ):
        resp = await _put(client, body)
        assert resp.status == 400, body
        assert await error_code(resp) == "MANIFEST_INVALID"


async def test_huge_integer_and_size_are_manifest_invalid(client: TestClient) -> None:
    good = await _good_manifest(client)
    doc = json.dumps(good)
    assert (await _put(client, doc[:-1] + f', "x": {NINES}}}')).status == 400
    good["layers"][0]["size"] = 1 << 63
    resp = await _put(client, json.dumps(good))
    assert resp.status == 400
    assert await error_code(resp) == "MANIFEST_INVALID"


async def test_non_utf8_manifest_is_manifest_invalid(client: TestClient) -> None:
    doc = json.dumps(await _good_manifest(client))
    for body in (doc.encode("utf-16"), b"\xef\xbb\xbf" + doc.encode(), b'{"a": "\xff"}'):
        resp = await _put(client, body)
        assert resp.status == 400
        assert await error_code(resp) == "MANIFEST_INVALID"


async def test_valid_manifest_still_accepted(client: TestClient) -> None:
    good = await _good_manifest(client)
    good["annotations"] = {"org.example.pi": "3.14", "nested": "ok"}
    good["x-number"] = 1.5e300
    resp = await _put(client, json.dumps(good), tag="good")
    assert resp.status == 201, await resp.text()
