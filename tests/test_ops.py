"""Operations against real `dockyard serve` processes: /metrics, /healthz and /readyz, logs,
graceful shutdown under a slow upload, read-only mode (config, SIGUSR1, admin API), periodic GC.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from registry import metrics as registry_metrics
from tests.apiclient import push_blob, push_image, sha256
from tests.support.dockerd import DockerDaemon
from tests.support.net import free_port
from tests.support.server import DockyardServer

Factory = Callable[..., DockyardServer]
BLOB_ROUTE = "/v2/{name}/blobs/{digest}"
MANIFEST_ROUTE = "/v2/{name}/manifests/{reference}"


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page, keyed by (name, labels)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return parse(text)


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def poll(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until `predicate()` holds (a wait with a generous bound, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(predicate):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def log_records(server: DockyardServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


async def logged(server: DockyardServer, match: Callable[[dict[str, Any]], bool]) -> dict:
    """The first JSON log record matching `match`. The access line is written once the response
    is sent, so it may trail the client by a moment."""
    found: list[dict[str, Any]] = []

    def search() -> bool:
        found[:] = [r for r in log_records(server) if match(r)]
        return bool(found)

    await wait_for(search, "a log record")
    return found[0]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """One default server for the tests that need no configuration of their own."""
    with DockyardServer(tmp_path_factory.mktemp("ops") / "data") as server:
        yield server


# --- metrics ----------------------------------------------------------------------------------


async def test_metrics_change_as_requests_happen(shared: DockyardServer) -> None:
    before = scrape(shared.url)
    layer = os.urandom(300_000)
    async with aiohttp.ClientSession(base_url=shared.url) as http:
        await push_image(http, "acme/metrics", "1", [layer])
        # customer-wide dedup: another repository of acme finds the layer without an upload
        async with http.head(f"/v2/acme/metrics-2/blobs/{sha256(layer)}") as resp:
            assert resp.status == 200
        async with http.get(f"/v2/acme/metrics/blobs/{sha256(layer)}") as resp:
            assert await resp.read() == layer
        async with http.get("/v2/acme/metrics/manifests/nope") as resp:
            assert resp.status == 404
    after = scrape(shared.url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    put = {"route": MANIFEST_ROUTE, "method": "PUT"}
    assert grew("dockyard_http_requests_total", status="201", **put) == 1
    assert grew("dockyard_http_request_duration_seconds_count", **put) == 1
    get_manifest = {"route": MANIFEST_ROUTE, "method": "GET"}
    assert grew("dockyard_http_requests_total", status="404", **get_manifest) == 1
    assert grew("dockyard_http_requests_total", route=BLOB_ROUTE, method="GET", status="200") == 1
    assert grew("dockyard_blob_bytes_received_total") >= len(layer)
    assert grew("dockyard_blob_bytes_sent_total") == len(layer)
    assert grew("dockyard_dedup_skips_total") == 1
    assert grew("dockyard_dedup_bytes_saved_total") == len(layer)
    assert value(after, "dockyard_uploads_in_flight") == 0
    assert value(after, "dockyard_read_only") == 0
    assert value(after, "process_resident_memory_bytes") > 0


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint on loopback that accepts every delivery."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_webhook_queue_deliveries_and_failures_in_metrics(
    dockyard_factory: Factory, receiver: Receiver
) -> None:
    dead = free_port()  # nothing listens here: every attempt fails
    server = dockyard_factory(
        f"""
[notifications]
poll_interval = "0.2s"
[[notifications.endpoints]]
name = "ci"
url = "http://127.0.0.1:{receiver.server_address[1]}/hook"
[[notifications.endpoints]]
name = "down"
url = "http://127.0.0.1:{dead}/hook"
backoff = "1h"
max_backoff = "1h"
"""
    )
    async with aiohttp.ClientSession(base_url=server.url) as http:
        await push_image(http, "acme/web", "1", [b"layer"])

    def settled() -> bool:
        m = scrape(server.url)
        return (
            value(m, "dockyard_webhook_deliveries", endpoint="ci", status="delivered") == 1
            and value(m, "dockyard_webhook_failed_attempts", endpoint="down") >= 1
        )

    await wait_for(settled, "one delivery to ci and a failed attempt to down")
    m = scrape(server.url)
    assert value(m, "dockyard_webhook_queue_depth", endpoint="ci") == 0
    # Retried only after an hour: still queued.
    assert value(m, "dockyard_webhook_queue_depth", endpoint="down") == 1
    assert value(m, "dockyard_webhook_deliveries", endpoint="down", status="failed") == 1
    assert value(m, "dockyard_webhook_oldest_pending_seconds", endpoint="down") >= 0
    assert len(receiver.bodies) == 1


def test_launcher_hooks_reach_the_exposition() -> None:
    """The launcher cannot import the registry; the composition root passes these in."""

    def current() -> dict:
        return parse(generate_latest(registry_metrics.METRICS).decode())

    before = current()
    asyncio.run(registry_metrics.record_deployment_event({"state": "COMPLETED"}))
    asyncio.run(registry_metrics.record_deployment_event({"type": "no state"}))
    registry_metrics.record_placement(0.25, "provisioned")
    after = current()
    completed = "dockyard_launcher_deployments_total"
    assert (
        value(after, completed, state="COMPLETED")
        == value(before, completed, state="COMPLETED") + 1
    )
    count = "dockyard_launcher_placement_seconds_count"
    assert (
        value(after, count, outcome="provisioned")
        == value(before, count, outcome="provisioned") + 1
    )
    assert (
        value(after, "dockyard_launcher_placement_seconds_bucket", outcome="provisioned", le="0.5")
        >= 1
    )


async def test_periodic_gc_counts_runs_and_bytes_freed(dockyard_factory: Factory) -> None:
    server = dockyard_factory(
        "[gc]\ninterval_seconds = 0.5\ngrace_seconds = 0\nuntagged_age_seconds = 0.001\n"
    )
    layer = os.urandom(50_000)
    async with aiohttp.ClientSession(base_url=server.url) as http:
        digest, _ = await push_image(http, "acme/gc", "1", [layer])
        async with http.delete(f"/v2/acme/gc/manifests/{digest}") as resp:
            assert resp.status == 202

    def freed() -> bool:
        return value(scrape(server.url), "dockyard_gc_bytes_freed_total") >= len(layer)

    await wait_for(freed, "GC to free the deleted image's layer")
    assert value(scrape(server.url), "dockyard_gc_runs_total") >= 1
    gc_lines = [r for r in log_records(server) if r.get("event") == "gc"]
    assert gc_lines and any(r["bytes_freed"] >= len(layer) for r in gc_lines)


# --- health -----------------------------------------------------------------------------------


def test_readyz_fails_while_storage_is_broken_and_recovers(shared: DockyardServer) -> None:
    status, body = get_json(f"{shared.url}/readyz")
    assert status == 200 and body["status"] == "ready"
    assert body["checks"] == {"storage": "ok", "metadata": "ok"}
    assert body["read_only"] is False

    blobs = shared.data_dir / "blobs"
    blobs.rename(shared.data_dir / "blobs.away")
    try:
        status, body = get_json(f"{shared.url}/readyz")
        assert status == 503
        assert body["status"] == "unavailable"
        assert body["reason"].startswith("storage: ")
        assert body["checks"]["metadata"] == "ok"
        # Liveness is another question: the process is fine.
        assert get_json(f"{shared.url}/healthz") == (200, {"status": "ok"})
    finally:
        (shared.data_dir / "blobs.away").rename(blobs)
    status, body = get_json(f"{shared.url}/readyz")
    assert status == 200, body
    transitions = [r["ready"] for r in log_records(shared) if r.get("event") == "readiness"]
    assert transitions[-3:] == [True, False, True]


def test_probes_need_no_credentials_but_admin_needs_its_token(dockyard_factory: Factory) -> None:
    server = dockyard_factory('[auth]\nenabled = true\n[admin]\ntoken = "s3cret"\n')
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server.url}/v2/", timeout=10)
    assert err.value.code == 401
    assert get_json(f"{server.url}/healthz")[0] == 200
    assert get_json(f"{server.url}/readyz")[0] == 200
    unauthorized = {"route": "/v2/", "method": "GET", "status": "401"}
    assert value(scrape(server.url), "dockyard_http_requests_total", **unauthorized) >= 1

    put = urllib.request.Request(
        f"{server.url}/admin/read-only", data=b'{"read_only": true}', method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(put, timeout=10)
    assert err.value.code == 401
    put.add_header("Authorization", "Bearer s3cret")
    with urllib.request.urlopen(put, timeout=10) as resp:
        assert json.loads(resp.read()) == {"read_only": True}


# --- logs -------------------------------------------------------------------------------------


async def test_json_access_log_line_per_request(shared: DockyardServer) -> None:
    async with aiohttp.ClientSession(base_url=shared.url) as http:
        digest = await push_blob(http, "acme/logs", b"hello")
        async with http.get(
            f"/v2/acme/logs/blobs/{digest}", headers={"User-Agent": "ops-test/1"}
        ) as resp:
            assert await resp.read() == b"hello"
            request_id = resp.headers["X-Request-Id"]
        await push_image(http, "acme/logs", "v1", [b"layer"])

    line = await logged(shared, lambda r: r.get("request_id") == request_id and "status" in r)
    assert line["logger"] == "dockyard.access"
    assert line["method"] == "GET"
    assert line["path"] == f"/v2/acme/logs/blobs/{digest}"
    assert line["status"] == 200
    assert line["customer"] == "acme"
    assert line["repository"] == "acme/logs"
    assert line["user_agent"] == "ops-test/1"
    assert line["remote"] == "127.0.0.1"
    assert line["bytes_out"] >= 5
    assert line["duration_ms"] >= 0
    assert line["level"] == "info" and line["time"].endswith("Z")
    upload = await logged(
        shared, lambda r: r.get("path") == "/v2/acme/logs/blobs/uploads/" and "status" in r
    )
    assert upload["status"] == 201 and upload["bytes_in"] == 5
    pushed = await logged(
        shared, lambda r: r.get("event") == "manifest_push" and r["repository"] == "acme/logs"
    )
    assert pushed["tag"] == "v1" and pushed["customer"] == "acme" and pushed["request_id"]
    log_records(shared)  # every line of the log is one JSON object


def test_text_format_level_and_unknown_key_warning(dockyard_factory: Factory) -> None:
    text = dockyard_factory(
        '[log]\nformat = "text"\n[http]\nshutdown_timout = 5\n',
        name="text",
        args=("--allow-unknown-config",),  # without it serve refuses (tests/test_hardening_ops)
    )
    urllib.request.urlopen(f"{text.url}/v2/_catalog", timeout=10).read()
    poll(lambda: "GET /v2/_catalog" in text.log(), "the access line")
    line = next(x for x in text.log().splitlines() if "GET /v2/_catalog" in x)
    assert "dockyard.access" in line and " 200 " in line and "request_id=" in line
    assert any("WARNING" in x and "http.shutdown_timout" in x for x in text.log().splitlines())

    quiet = dockyard_factory('[log]\nlevel = "warning"\n', name="quiet")
    urllib.request.urlopen(f"{quiet.url}/v2/_catalog", timeout=10).read()
    urllib.request.urlopen(f"{quiet.url}/healthz", timeout=10).read()
    quiet.stop()  # everything it logged is on disk now
    assert "_catalog" not in quiet.log()


# --- graceful shutdown ------------------------------------------------------------------------


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


async def test_sigterm_lets_a_slow_large_upload_finish(dockyard_factory: Factory) -> None:
    probes = f"127.0.0.1:{free_port()}"  # metrics_addr stays open while the main port drains
    server = dockyard_factory(f'[http]\nshutdown_timeout = 120\nmetrics_addr = "{probes}"\n')
    probes = f"http://{probes}"
    assert server.proc is not None
    chunk_count, chunk_size = 48, 1 << 20  # 48 MiB, sent over a few seconds

    def chunk(i: int) -> bytes:
        return i.to_bytes(2, "big") * (chunk_size // 2)

    digest = "sha256:" + hashlib.sha256(b"".join(chunk(i) for i in range(chunk_count))).hexdigest()
    signalled = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal signalled
        for i in range(chunk_count):
            yield chunk(i)
            if i == 2:
                # The upload is in flight on the server: now stop it.
                await wait_for(
                    lambda: value(scrape(probes), "dockyard_uploads_in_flight") == 1,
                    "the upload to be in flight",
                )
                server.proc.send_signal(signal.SIGTERM)
                signalled = True
                await wait_for(lambda: _refused(server.port), "the listener to close")
                status, ready = await asyncio.to_thread(get_json, f"{probes}/readyz")
                assert status == 503 and ready["reason"].startswith("shutting down")
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(base_url=server.url) as http:
        async with http.post("/v2/acme/big/blobs/uploads/") as resp:
            assert resp.status == 202
            location = resp.headers["Location"]
        async with http.put(f"{location}?digest={digest}", data=body()) as resp:
            assert resp.status == 201, await resp.text()
            assert resp.headers["Docker-Content-Digest"] == digest
    assert signalled
    assert await asyncio.to_thread(server.proc.wait, 60) == 0
    records = log_records(server)
    shutdown = next(r for r in records if r.get("event") == "shutdown")
    assert shutdown["in_flight"] >= 1
    assert records[-1]["event"] == "stopped"

    server.start()  # the blob was committed before the process exited
    async with aiohttp.ClientSession(base_url=server.url) as http:
        async with http.get(f"/v2/acme/big/blobs/{digest}") as resp:
            assert resp.status == 200
            hasher = hashlib.sha256()
            async for block in resp.content.iter_chunked(1 << 20):
                hasher.update(block)
    assert "sha256:" + hasher.hexdigest() == digest


# --- read-only mode ---------------------------------------------------------------------------


async def _error(resp: aiohttp.ClientResponse) -> tuple[int, str, str]:
    body = await resp.json()
    return resp.status, body["errors"][0]["code"], body["errors"][0]["message"]


async def test_read_only_mode_from_config_signal_and_admin_api(dockyard_factory: Factory) -> None:
    server = dockyard_factory()
    async with aiohttp.ClientSession(base_url=server.url) as http:
        digest, _ = await push_image(http, "acme/web", "1", [b"layer-1"])
    server.stop()
    server.config_path.write_text("[registry]\nread_only = true\n")
    server.start()
    assert server.proc is not None

    async with aiohttp.ClientSession(base_url=server.url) as http:

        async def push_refused() -> bool:
            async with http.post("/v2/acme/web/blobs/uploads/") as resp:
                if resp.status == 202:
                    return False
                # spec: "Error Codes" — UNSUPPORTED, as distribution's maintenance.readonly
                status, code, message = await _error(resp)
                assert (status, code) == (405, "UNSUPPORTED")
                assert "read-only maintenance mode" in message
                return True

        assert await push_refused()
        for method, path in [
            ("PUT", "/v2/acme/web/manifests/2"),
            ("DELETE", f"/v2/acme/web/manifests/{digest}"),
            ("PATCH", "/v2/acme/web/blobs/uploads/x"),
        ]:
            async with http.request(method, path, data=b"{}") as resp:
                assert (await _error(resp))[:2] == (405, "UNSUPPORTED")
        async with http.get("/v2/acme/web/manifests/1") as resp:  # reads are served
            assert resp.status == 200
        assert get_json(f"{server.url}/readyz")[1]["read_only"] is True
        assert value(scrape(server.url), "dockyard_read_only") == 1

        server.proc.send_signal(signal.SIGUSR1)
        await wait_for(
            lambda: get_json(f"{server.url}/admin/read-only")[1]["read_only"] is False,
            "SIGUSR1 to turn read-only off",
        )
        assert not await push_refused()
        await push_image(http, "acme/web", "2", [b"layer-2"])

        async with http.put("/admin/read-only", json={"read_only": True}) as resp:
            assert await resp.json() == {"read_only": True}
        assert await push_refused()
        async with http.put("/admin/read-only", json={"read_only": "yes"}) as resp:
            assert resp.status == 400
    events = [r for r in log_records(server) if r.get("event") == "read_only"]
    assert [r["read_only"] for r in events] == [True, False, True]


def test_docker_push_refused_in_read_only_mode(
    dockyard_factory: Factory, dockerd: DockerDaemon, busybox: str
) -> None:
    server = dockyard_factory("[registry]\nread_only = true\n")
    ref = f"{server.host}/acme/ro:1"
    dockerd.cli("tag", busybox, ref)
    try:
        res = dockerd.cli("push", ref, check=False)
    finally:
        dockerd.cli("rmi", ref)
    assert res.returncode != 0
    assert "read-only maintenance mode" in res.stdout + res.stderr
