"""A private Docker Engine per test session (see shared ENVIRONMENT.md for the flags).

It pushes to and pulls from registries on 127.0.0.1 over plain HTTP (loopback registries are
insecure by default) and runs containers with host networking.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from .require import missing, require_binary, require_root

DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "echo", "cat", "ls", "sleep", "httpd", "wget", "true", "false", "env", "test"]


class DockerDaemon:
    def __init__(self, root: Path, name: str = "t") -> None:
        self.root = root
        self.name = name
        self.sock = root / "sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> DockerDaemon:
        require_root()
        require_binary("dockerd", DOCKERD)
        require_binary("docker", DOCKER)
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "dockerd.log", "ab")
        k = f"dy-{self.name}-{os.getpid()}"
        self.proc = subprocess.Popen(
            [
                DOCKERD,
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "pid"),
                "-H",
                self.host,
                "--cgroup-parent",
                f"/{k}",
                "--containerd-namespace",
                k,
                "--containerd-plugins-namespace",
                f"{k}-p",
                "--shutdown-timeout",
                "3",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                missing(f"dockerd exited: {(self.root / 'dockerd.log').read_text()[-2000:]}")
            ok = subprocess.run(
                ["curl", "-sf", "--unix-socket", str(self.sock), "http://d/_ping"],
                capture_output=True,
            )
            if ok.returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        missing("dockerd did not become ready")
        return self

    def cli(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_CONFIG": str(self.root / "client"), "DOCKER_BUILDKIT": "0"}
        res = subprocess.run(
            [DOCKER, "-H", self.host, *args],
            capture_output=True,
            text=input is None,
            input=input,
            env=env,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {res.stdout}\n{res.stderr}")
        return res  # type: ignore[return-value]

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.host, timeout=300)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        # Mounts such as exec/netns/default outlive the daemon.
        mounts = Path("/proc/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target.startswith(str(self.root)):
                subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def import_busybox(self, tag: str) -> str:
        """`docker import` a base image with Debian's static busybox and its applets."""
        require_binary("busybox", BUSYBOX)
        with tempfile.TemporaryDirectory() as tmp:
            tar_path = Path(tmp) / "rootfs.tar"
            with tarfile.open(tar_path, "w") as tar:
                tar.add(BUSYBOX, arcname="bin/busybox")
                for applet in APPLETS:
                    info = tarfile.TarInfo(f"bin/{applet}")
                    info.type = tarfile.SYMTYPE
                    info.linkname = "busybox"
                    tar.addfile(info)
                for d in ("tmp", "etc", "www"):
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o1777 if d == "tmp" else 0o755
                    tar.addfile(info)
            self.cli("import", "--change", 'CMD ["sh"]', str(tar_path), tag)
        return tag

    def build_layers(self, base: str, tag: str, layers: list[bytes]) -> str:
        """Build `tag` on `base` with one COPY layer per content (no container runs)."""
        with tempfile.TemporaryDirectory() as tmp:
            ctx = Path(tmp)
            lines = [f"FROM {base}"]
            for content in layers:
                name = hashlib.sha256(content).hexdigest()[:12] + ".bin"
                (ctx / name).write_bytes(content)
                lines.append(f"COPY {name} /data/{name}")
            (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
            self.cli("build", "-q", "-t", tag, str(ctx), timeout=900)
        return tag
