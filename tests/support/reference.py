"""Start the reference registry (CNCF distribution 2.8.2, Debian `docker-registry`) for a test.

The registry runs on 127.0.0.1 on a free port with its storage in a fresh temporary directory and
is stopped by its PID when the context exits. Extra configuration (a `notifications` section, a
different `storage.delete` setting, …) is deep-merged over the defaults, so benchmark and event
tests can reuse this helper.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.require import require_binary

READY_TIMEOUT = 20.0


@dataclass(frozen=True)
class ReferenceRegistry:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    port: int
    pid: int
    root: Path  # storage root directory
    config_path: Path
    log_path: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` over `base` (dicts merge key by key, anything else replaces; a None
    value removes the key, e.g. `{"storage": {"filesystem": None, "s3": {…}}}`)."""
    merged = dict(base)
    for key, value in extra.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def base_config(root: Path, port: int) -> dict[str, Any]:
    return {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            # The janitor would otherwise walk the upload directory right after start.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=1) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        # 401 means it is up but wants credentials (an `auth` section was passed in).
        return exc.code == 401
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextmanager
def reference_registry(
    extra_config: dict[str, Any] | None = None,
    *,
    binary: str | None = None,
) -> Iterator[ReferenceRegistry]:
    """Run `docker-registry serve` until the block exits.

    `extra_config` is merged over the default config (filesystem storage in a temp dir, delete
    enabled, `http.addr` on a free loopback port). Skips the test when the binary is missing
    (fails under REQUIRE_E2E=1).
    """
    exe = require_binary("docker-registry", binary)
    workdir = Path(tempfile.mkdtemp(prefix="reference-registry-"))
    try:
        root = workdir / "storage"
        root.mkdir()
        config_path = workdir / "config.yml"
        log_path = workdir / "registry.log"
        # A port picked free can be taken before the registry binds it: try a few.
        for _attempt in range(3):
            port = free_port()
            config = merge_config(base_config(root, port), extra_config or {})
            # YAML is a superset of JSON, so no YAML library is needed.
            config_path.write_text(json.dumps(config, indent=2))
            url = f"http://127.0.0.1:{port}"
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [exe, "serve", str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                deadline = time.monotonic() + READY_TIMEOUT
                while proc.poll() is None and time.monotonic() < deadline:
                    if _answers(url):
                        break
                    time.sleep(0.05)
                if proc.poll() is not None:
                    continue  # exited (port taken?): try another port
                if not _answers(url):
                    raise RuntimeError(
                        f"reference registry did not answer within {READY_TIMEOUT}s:\n"
                        + log_path.read_text(errors="replace")[-4000:]
                    )
                yield ReferenceRegistry(url, port, proc.pid, root, config_path, log_path)
                return
            finally:
                _stop(proc)
        raise RuntimeError(
            "reference registry failed to start:\n" + log_path.read_text(errors="replace")[-4000:]
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
