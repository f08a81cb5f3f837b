"""The registries under test: dockyard (`dockyard serve` subprocess) and the reference registry.

Each runs on a free loopback port with a fresh data directory and is stopped by its PID when its
context exits (also on Ctrl-C or failure). A `Target` is what scenarios see.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_http
from tests.support.reference import reference_registry

ROOT = Path(__file__).resolve().parents[1]
DOCKYARD = "dockyard"
REFERENCE = "reference"


@dataclass(frozen=True)
class Target:
    name: str  # DOCKYARD or REFERENCE
    url: str  # http://127.0.0.1:PORT
    pid: int  # root of the server's process tree
    data_dir: Path
    log_path: Path

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def dockyard(
    workdir: Path, extra_args: list[str], config_text: str = "", name: str = "dockyard",
    target_name: str = DOCKYARD,
) -> Iterator[Target]:
    """`dockyard serve` with the default (filesystem) configuration and `extra_args` appended.

    `name` names its files in `workdir`; `target_name` is the side it reports as (a second
    dockyard configuration reports as e.g. "dockyard-pg")."""
    data = workdir / f"{name}-data"
    data.mkdir(parents=True)
    config = workdir / f"{name}.toml"
    config.write_text(config_text)
    log_path = workdir / f"{name}.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable, "-m", "dockyard", "serve", "--config", str(config), "--data", str(data),
        "--addr", f"127.0.0.1:{port}", *extra_args,
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, not the server
        )
    try:
        try:
            wait_http(url + "/v2/", timeout=30, proc=proc)
        except Exception as exc:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"dockyard did not start ({exc}); log:\n{tail}") from None
        yield Target(target_name, url, proc.pid, data, log_path)
    finally:
        stop_pid(proc)


# What Debian's /etc/docker/registry/config.yml (and distribution's example config) ship: the
# in-memory blob descriptor cache (without it every HEAD/GET re-reads link files from disk),
# info-level logs and the access log, like dockyard's defaults.
REFERENCE_CONFIG = {
    "storage": {"cache": {"blobdescriptor": "inmemory"}},
    "log": {"level": "info", "accesslog": {"disabled": False}},
}
# --quiet-logs: no per-request log lines on either side.
REFERENCE_QUIET = {"log": {"level": "warn", "accesslog": {"disabled": True}}}
DOCKYARD_QUIET = '[log]\nlevel = "warning"\naccess_log = false\n'


def _overlay(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge like merge_config but keep None values, so that the helper's own merge over
    its defaults still removes those keys."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


@contextlib.contextmanager
def reference(
    quiet_logs: bool = False, extra: dict[str, Any] | None = None, name: str = REFERENCE
) -> Iterator[Target]:
    """The reference registry as shipped; `extra` is deep-merged over it (see merge_config:
    `{"storage": {"filesystem": None, "s3": {…}}}` swaps the storage driver)."""
    config = _overlay({**REFERENCE_CONFIG, **(REFERENCE_QUIET if quiet_logs else {})},
                      extra or {})
    with reference_registry(config) as ref:
        yield Target(name, ref.url, ref.pid, ref.root, ref.log_path)


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="dybench-", dir="/tmp"))
