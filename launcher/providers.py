"""The `local` provider: a new instance is a private dockerd on this machine.

Each instance gets its own data root (under the launcher's data dir), its own exec root, socket
and pidfile (under a short run root: unix socket paths are limited to 108 bytes), its own
containerd namespaces, and a cgroup parent whose CPU quota and memory limit are the instance
type's capacity, so a type's capacity is enforced by the kernel, not only by bookkeeping. The
capacity is also declared as daemon labels (`docker info` would report the whole host).

dockerd runs in its own session so it outlives a launcher restart; the launcher re-adopts it by
pid (checked against its command line, so a recycled pid is never signalled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

from launcher.config import InstanceType, LocalProviderSettings
from launcher.engine import DAEMON_CPU, DAEMON_MEMORY, DAEMON_TYPE, LABEL_CLUSTER
from launcher.errors import EngineError

CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
READY_TIMEOUT = 30.0


class LocalProvider:
    name = "local"

    def __init__(self, settings: LocalProviderSettings, cluster: str,
                 instances_dir: pathlib.Path) -> None:
        self.settings = settings
        self.cluster = cluster
        self.instances_dir = instances_dir
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # --- public -----------------------------------------------------------------------------

    async def create(self, instance_id: str, itype: InstanceType) -> dict[str, Any]:
        """Start a dockerd for a new instance; returns the instance fields to record."""
        short = instance_id[:12]
        state = {
            "key": short,
            "data_dir": str(self.instances_dir / instance_id),
            "run_dir": str(self.settings.run_root / short),
            "cgroup": f"dockyard-{short}",
            "type": itype.name,
            "cpu": itype.cpu,
            "memory": itype.memory,
        }
        await asyncio.to_thread(self._start, state, fresh=True)
        return {
            "endpoint": f"unix://{state['run_dir']}/sock",
            "provider_state": state,
            "network": self.settings.network,
            "attributes": {"provider": "local"},
        }

    async def ensure_running(self, state: dict[str, Any]) -> bool:
        """After a launcher restart: True if the instance's dockerd answers (restarting it with
        the same data root when it died)."""
        if await asyncio.to_thread(_ping, _sock(state)):
            return True
        try:
            await asyncio.to_thread(self._start, state, fresh=False)
        except EngineError:
            return False
        return True

    async def destroy(self, state: dict[str, Any]) -> None:
        await asyncio.to_thread(self._destroy, state)

    def close(self) -> None:
        """Reap children that already exited (the launcher never leaves zombies)."""
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._children.pop(pid, None)

    # --- blocking work (threads) ------------------------------------------------------------

    def _start(self, state: dict[str, Any], *, fresh: bool) -> None:
        data_dir = pathlib.Path(state["data_dir"])
        run_dir = pathlib.Path(state["run_dir"])
        if fresh and run_dir.exists():
            raise EngineError(f"run dir {run_dir} already exists")
        data_dir.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (run_dir / "sock").unlink()  # a stale socket from a dead daemon
        if self.settings.enforce_cgroup:
            _limit_cgroup(state["cgroup"], state["cpu"], state["memory"])
        args = [
            self.settings.dockerd,
            f"--storage-driver={self.settings.storage_driver}",
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--data-root", str(data_dir / "data"),
            "--exec-root", str(run_dir / "exec"),
            "--pidfile", str(run_dir / "pid"),
            "-H", f"unix://{run_dir}/sock",
            "--cgroup-parent", f"/{state['cgroup']}",
            "--containerd-namespace", state["cgroup"],
            "--containerd-plugins-namespace", f"{state['cgroup']}-p",
            "--label", f"dockyard.instance={state['key']}",
            "--label", f"{DAEMON_TYPE}={state['type']}",
            "--label", f"{DAEMON_CPU}={state['cpu']}",
            "--label", f"{DAEMON_MEMORY}={state['memory']}",
            "--label", f"{LABEL_CLUSTER}={self.cluster}",
            "--shutdown-timeout", "3",
            *self.settings.extra_args,
        ]
        log_path = data_dir / "dockerd.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # survive the launcher; it re-adopts by pid
            )
        self._children[proc.pid] = proc
        state["pid"] = proc.pid
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _ping(run_dir / "sock"):
                return
            time.sleep(0.05)
        self._destroy(state)
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise EngineError(f"local dockerd for {state['key']} did not start:\n{tail}")

    def _destroy(self, state: dict[str, Any]) -> None:
        run_dir = pathlib.Path(state["run_dir"])
        data_dir = pathlib.Path(state["data_dir"])
        pid = state.get("pid")
        if pid and _is_our_dockerd(pid, run_dir):
            os.kill(pid, signal.SIGTERM)
            if not self._wait_exit(pid, 20.0):
                os.kill(pid, signal.SIGKILL)
                self._wait_exit(pid, 5.0)
        _unmount_under(run_dir)
        _unmount_under(data_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        _remove_cgroup(state["cgroup"])

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        proc = self._children.get(pid)
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            self._children.pop(pid, None)
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.05)
        return False


def _sock(state: dict[str, Any]) -> pathlib.Path:
    return pathlib.Path(state["run_dir"]) / "sock"


def _ping(sock_path: pathlib.Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock_path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = s.recv(4096)
    except OSError:
        return False
    return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_our_dockerd(pid: int, run_dir: pathlib.Path) -> bool:
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(run_dir / "exec").encode() in cmdline


def _unmount_under(root: pathlib.Path) -> None:
    """dockerd leaves mounts (e.g. exec/netns/default) behind; detach them, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    try:
        lines = pathlib.Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].encode().decode("unicode_escape")  # mountinfo escapes " " as \040
            if point.startswith(prefix) or point == str(root):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _cgroup_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _limit_cgroup(name: str, cpu_units: int, memory_mib: int) -> None:
    """Best effort: where cgroups are not writable the capacity is still declared by labels."""
    quota = max(1000, cpu_units * CFS_PERIOD_US // 1024)
    limit = memory_mib * 1024 * 1024
    try:
        if _cgroup_v2():
            group = CGROUP_ROOT / name
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            (group / "memory.max").write_text(str(limit))
        else:
            cpu = CGROUP_ROOT / "cpu" / name
            cpu.mkdir(exist_ok=True)
            (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota))
            memory = CGROUP_ROOT / "memory" / name
            memory.mkdir(exist_ok=True)
            (memory / "memory.limit_in_bytes").write_text(str(limit))
    except OSError:
        pass


def _remove_cgroup(name: str) -> None:
    roots = [CGROUP_ROOT] if _cgroup_v2() else [p for p in CGROUP_ROOT.iterdir() if p.is_dir()]
    for root in roots:
        group = root / name
        if not group.is_dir() or group.is_symlink():
            continue
        # Children first: the engine made one cgroup per container under the parent.
        for sub in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            group.rmdir()
