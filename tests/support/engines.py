"""Private Docker Engines for tests, and tiny busybox images to run on them.

Each engine is its own dockerd (vfs storage, no bridge, no iptables) with its own data root, exec
root, socket, cgroup parent and containerd namespaces, as ../shared/ENVIRONMENT.md describes.
Engines start in parallel and are stopped by pid (SIGTERM), then leftover mounts are detached
(`umount -l`) and their directories and cgroups removed.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tests.support.require import missing, require_binary, require_root

DOCKER_CLI = "/usr/bin/docker"  # the first `docker` on PATH may be a client without engine
READY_TIMEOUT = 30.0
APPLETS = ("sh", "httpd", "sleep", "wget", "cat", "echo", "ls", "mkdir", "true", "false", "env",
           "kill", "ps", "test", "[")


@dataclass
class EngineProcess:
    name: str
    root: pathlib.Path
    sock: pathlib.Path
    cgroup: str
    proc: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"unix://{self.sock}"

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        # A private CLI config: `docker login` must not touch the user's ~/.docker.
        return subprocess.run(
            [DOCKER_CLI, "--config", str(self.root / "cli"), "-H", self.endpoint, *args],
            capture_output=True, text=True, check=check, timeout=timeout, input=stdin,
        )


def _ping(sock: pathlib.Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return b" 200 " in s.recv(1024).split(b"\r\n", 1)[0]
    except OSError:
        return False


def unmount_under(root: pathlib.Path) -> None:
    prefix = str(root).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].startswith(prefix):
                points.append(fields[4])
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def remove_cgroup(name: str) -> None:
    for controller in pathlib.Path("/sys/fs/cgroup").iterdir():
        group = controller / name
        if not group.is_dir():
            continue
        for sub in sorted((p for p in group.rglob("*") if p.is_dir()),
                          key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            group.rmdir()


def stop_engine(engine: EngineProcess) -> None:
    if engine.proc.poll() is None:
        os.kill(engine.proc.pid, signal.SIGTERM)
        try:
            engine.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(engine.proc.pid, signal.SIGKILL)
            engine.proc.wait(timeout=10)
    unmount_under(engine.root)
    shutil.rmtree(engine.root, ignore_errors=True)
    remove_cgroup(engine.cgroup)


def reap_dockerds_under(root: pathlib.Path) -> list[int]:
    """Stop every dockerd whose command line points under `root` (instances a launcher under
    test provisioned in its own session, if it could not stop them); returns their pids."""
    found = []
    for proc_dir in pathlib.Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            argv = (proc_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[0].endswith("dockerd") and any(str(root) in a for a in argv):
            found.append((int(proc_dir.name), argv))
    for pid, argv in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and pathlib.Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if "--cgroup-parent" in argv:
            remove_cgroup(argv[argv.index("--cgroup-parent") + 1].lstrip("/"))
    unmount_under(root)
    return [pid for pid, _ in found]


@contextlib.contextmanager
def docker_engines(specs: Sequence[tuple[str, dict[str, str]]],
                   extra_args: dict[str, list[str]] | None = None
                   ) -> Iterator[list[EngineProcess]]:
    """Start one dockerd per (name, daemon labels) and stop them all when the block exits;
    `extra_args[name]` are more dockerd flags (another -H listener with TLS, …)."""
    require_root()
    dockerd = require_binary("dockerd", "/usr/sbin/dockerd")
    require_binary("docker", DOCKER_CLI)
    engines: list[EngineProcess] = []
    try:
        for name, labels in specs:
            # Short root: containerd puts its socket under the exec root (108-byte limit).
            root = pathlib.Path(tempfile.mkdtemp(prefix=f"dy-{name[:6]}-", dir="/tmp"))
            cgroup = f"dytest-{uuid.uuid4().hex[:8]}"
            args = [
                dockerd, "--storage-driver=vfs", "--iptables=false", "--ip6tables=false",
                "--bridge=none", "--data-root", str(root / "data"),
                "--exec-root", str(root / "x"), "--pidfile", str(root / "pid"),
                "-H", f"unix://{root}/sock", "--cgroup-parent", f"/{cgroup}",
                "--containerd-namespace", cgroup, "--containerd-plugins-namespace", f"{cgroup}-p",
                "--shutdown-timeout", "3",
            ]
            for key, value in labels.items():
                args += ["--label", f"{key}={value}"]
            args += (extra_args or {}).get(name, [])
            with open(root / "dockerd.log", "wb") as log:
                proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT)
            engines.append(EngineProcess(name, root, root / "sock", cgroup, proc))
        deadline = time.monotonic() + READY_TIMEOUT
        for engine in engines:
            while not _ping(engine.sock):
                if engine.proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (engine.root / "dockerd.log").read_text(errors="replace")
                    raise RuntimeError(f"dockerd {engine.name} did not start:\n{log_text[-3000:]}")
                time.sleep(0.05)
        yield engines
    finally:
        # SIGTERM all first: each takes up to --shutdown-timeout stopping its containers.
        for engine in engines:
            if engine.proc.poll() is None:
                engine.proc.send_signal(signal.SIGTERM)
        for engine in engines:
            stop_engine(engine)


# --- images ---------------------------------------------------------------------------------


def htpasswd_line(user: str, password: str) -> str:
    """An htpasswd entry with a bcrypt hash (the only kind distribution's htpasswd accepts)."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # libxcrypt does bcrypt; the module is gone in Python 3.13

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))
        if hashed and hashed.startswith("$2"):
            return f"{user}:{hashed}\n"
    except (ImportError, AttributeError, OSError):
        pass
    try:
        import bcrypt  # type: ignore[import-not-found]
    except ImportError:
        missing("no bcrypt implementation (crypt module or the bcrypt package) for htpasswd")
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).decode()}\n"


def busybox_tar(files: dict[str, str] | None = None) -> bytes:
    """A root filesystem: Debian's static busybox, its applet links, and `files` (path: text)."""
    busybox = require_binary("busybox", "/bin/busybox")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "www"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for path, text in (files or {}).items():
            data = text.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_image(engine: EngineProcess, ref: str, files: dict[str, str] | None = None,
                 cmd: str = '["sh"]') -> None:
    """`docker import` a busybox root filesystem as `ref` (every call makes a new layer)."""
    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(busybox_tar(files))
        f.flush()
        engine.docker("import", "--change", f"CMD {cmd}", f.name, ref)


_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def push(engine: EngineProcess, ref: str) -> str:
    """`docker push` with the engine's CLI; returns the manifest digest."""
    out = engine.docker("push", ref).stdout
    found = _DIGEST.findall(out)
    if not found:
        raise RuntimeError(f"no digest in push output:\n{out}")
    return found[-1]
