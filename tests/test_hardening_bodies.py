"""Issue 22, findings 3 and 11: body limits count the bytes that arrive, and a client that goes
away mid-request is not an error.

Before: POST /auth/token checked only Content-Length, so a chunked 2 MiB form was parsed (40 ×
7 MiB took the server from 120 to 718 MiB); the launcher API read one chunk of a body and
judged it; every client disconnecting during POST /auth/token logged an ERROR traceback.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from auth.config import AuthSettings
from auth.service import create_auth
from dockyard.app import build_app
from dockyard.core.errors import PayloadTooLarge
from dockyard.core.http import client_gone_middleware, read_body
from dockyard.core.sql import open_database
from launcher.app import make_app as make_launcher_app
from launcher.config import LauncherSettings
from registry.config import load_config
from tests.support.server import DockyardServer

FORM = "application/x-www-form-urlencoded"


async def chunked(total: int, block: int = 64 * 1024, prefix: bytes = b"") -> AsyncIterator[bytes]:
    """A body without Content-Length (aiohttp sends it chunked)."""
    yield prefix
    sent = 0
    while sent < total:
        n = min(block, total - sent)
        yield b"x" * n
        sent += n


@pytest.fixture
async def token_client(aiohttp_client, tmp_path: Path) -> AsyncIterator[TestClient]:
    db = await open_database(None, tmp_path)
    auth = await create_auth(AuthSettings.from_dict({"enabled": True}, tmp_path), "library", db)
    app = web.Application(middlewares=[client_gone_middleware])
    auth.add_routes(app)
    try:
        yield await aiohttp_client(app)
    finally:
        await db.close()


async def test_chunked_token_form_over_limit_is_413(token_client: TestClient) -> None:
    body = chunked(2 << 20, prefix=b"grant_type=password&username=a&password=")
    resp = await token_client.post("/auth/token", data=body, headers={"Content-Type": FORM})
    assert resp.status == 413
    assert (await resp.json())["errors"][0]["code"] == "SIZE_INVALID"


async def test_declared_token_form_over_limit_is_413(token_client: TestClient) -> None:
    resp = await token_client.post(
        "/auth/token", data=b"x" * (65 * 1024), headers={"Content-Type": FORM}
    )
    assert resp.status == 413


async def test_chunked_token_form_under_limit_still_works(token_client: TestClient) -> None:
    async def small() -> AsyncIterator[bytes]:
        for part in (b"grant_type=pass", b"word&username=nobody&pass", b"word=wrong-pass"):
            yield part

    resp = await token_client.post("/auth/token", data=small(), headers={"Content-Type": FORM})
    assert resp.status == 401  # parsed whole: the credentials were checked (and are wrong)
    resp = await token_client.post(
        "/auth/token", data=b"grant_type=password&username=%FF&password=x",
        headers={"Content-Type": FORM},
    )
    assert resp.status == 400


async def test_read_body_counts_actual_bytes() -> None:
    class Fake:
        content_length = None

        class content:  # mimics request.content
            @staticmethod
            async def iter_chunked(_n: int) -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b"y" * 1000

    with pytest.raises(PayloadTooLarge) as info:
        await read_body(Fake(), 5000)  # type: ignore[arg-type]
    assert info.value.status == 413
    Fake.content_length = 10  # a lie: 10,000 bytes follow
    with pytest.raises(PayloadTooLarge):
        await read_body(Fake(), 5000)  # type: ignore[arg-type]


# -- the launcher API ---------------------------------------------------------------------------


@pytest.fixture
async def launcher_client(aiohttp_client, tmp_path: Path) -> TestClient:
    settings = LauncherSettings.from_dict(
        {"enabled": True, "registry": "127.0.0.1:5999", "api_token": "t",
         "instance_types": {"small": {"cpu": 512, "memory": 256}}, "reconcile_interval": 60},
        tmp_path,
    )
    return await aiohttp_client(make_launcher_app(settings))


async def test_launcher_chunked_body_over_limit_is_413(launcher_client: TestClient) -> None:
    resp = await launcher_client.post(
        "/launcher/v1/task-definitions", data=chunked(3 << 20),
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
    )
    assert resp.status == 413


async def test_launcher_reads_a_body_arriving_in_pieces(launcher_client: TestClient) -> None:
    td = json.dumps({"family": "web", "containerDefinitions": [
        {"name": "web", "image": "acme/web", "cpu": 128, "memory": 32,
         "environment": [{"name": f"K{i}", "value": "v" * 100} for i in range(300)]}]}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(td), 1000):
            yield td[i : i + 1000]
            await asyncio.sleep(0)

    resp = await launcher_client.post(
        "/launcher/v1/task-definitions", data=pieces(),
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
    )
    # Before: only the first chunk was read and judged "not valid JSON" (400).
    assert resp.status == 201, await resp.text()


# -- admin routes -------------------------------------------------------------------------------


async def test_admin_read_only_body_over_limit_is_413(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(await build_app(load_config(None, data_dir=tmp_path / "d")))
    resp = await client.put("/admin/read-only", data=chunked(1 << 20, prefix=b'{"read_only":'))
    assert resp.status == 413
    resp = await client.put("/admin/read-only", data=b'{"read_only": false}')
    assert resp.status == 200


# -- finding 11: clients going away ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    data = tmp_path_factory.mktemp("gone") / "data"
    with DockyardServer(data, "[auth]\nenabled = true\n") as srv:
        yield srv


def _abandon(port: int, request: bytes, *, half_close: bool = False) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        time.sleep(0.05)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            try:
                sock.recv(1000)
            except OSError:
                pass


def test_disconnects_during_token_post_log_no_error(server: DockyardServer) -> None:
    head = (
        "POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: " + FORM + "\r\n"
    ).encode()
    for _ in range(20):
        _abandon(server.port, head + b"Content-Length: 1000\r\n\r\ngrant_type=pa")
        _abandon(server.port, head + b"Transfer-Encoding: chunked\r\n\r\n5\r\ngrant")
        _abandon(server.port, head + b"Transfer-Encoding: chunked\r\n\r\n5\r\ngr", half_close=True)
    time.sleep(0.5)
    log = server.log()
    assert '"level": "error"' not in log and "Traceback" not in log, log[-3000:]
    statuses = [
        rec.get("status") for rec in map(json.loads, log.splitlines())
        if rec.get("path") == "/auth/token"
    ]
    assert statuses.count(499) == 60  # one access-log line each, no traceback


def test_disconnect_during_blob_patch_logs_no_error(tmp_path: Path) -> None:
    with DockyardServer(tmp_path / "data") as srv:
        import urllib.request

        req = urllib.request.Request(srv.url + "/v2/acme/web/blobs/uploads/", method="POST")
        with urllib.request.urlopen(req) as resp:
            location = resp.headers["Location"]
        for _ in range(10):
            _abandon(
                srv.port,
                f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
                + b"z" * 5000,
            )
        time.sleep(0.5)
        log = srv.log()
        assert '"level": "error"' not in log and "Traceback" not in log, log[-3000:]
        # The session survived and still takes bytes from its last good offset.
        req = urllib.request.Request(srv.url + location, data=b"abc", method="PATCH",
                                     headers={"Content-Range": "0-2"})
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 202 and resp.headers["Range"] == "0-2"
