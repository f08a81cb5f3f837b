"""Run `dockyard serve` as a real subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .net import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]


def _metadata_url(config_text: str) -> str | None:
    import tomllib

    try:
        return tomllib.loads(config_text).get("metadata", {}).get("url") or None
    except tomllib.TOMLDecodeError:
        return None


class DockyardServer:
    def __init__(
        self,
        data_dir: Path,
        config_text: str = "",
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        cwd: Path = ROOT,
    ):
        self.data_dir = data_dir
        self.args = tuple(args)  # extra `dockyard serve` arguments
        # The source tree `python -m dockyard` runs from (another release's, to build its data).
        self.cwd = cwd
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.config_path = data_dir.parent / f"{data_dir.name}.toml"
        self.config_path.write_text(config_text)
        self.env = {**os.environ, **(env or {})}
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # The state store the server uses: its own PostgreSQL URL when the config names one.
        self.metadata_url: str | None = _metadata_url(config_text)

    def start(self) -> DockyardServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dockyard",
                "serve",
                "--config",
                str(self.config_path),
                "--data",
                str(self.data_dir),
                "--addr",
                self.host,
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=self.env,
        )
        log.close()
        try:
            wait_http(self.url + "/v2/", proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"dockyard did not start; log:\n{self.log()}") from None
        return self

    def cli(self, *args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
        """Run `dockyard ARGS --config … --data …` against this server's data directory."""
        res = subprocess.run(
            [sys.executable, "-m", "dockyard", *args,
             "--config", str(self.config_path), "--data", str(self.data_dir)],
            input=stdin, capture_output=True, text=True, cwd=self.cwd, env=self.env, timeout=120,
        )
        if check:
            assert res.returncode == 0, f"dockyard {' '.join(args)}: {res.stderr}"
        return res

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> DockyardServer:
        self.stop()
        return self.start()

    def __enter__(self) -> DockyardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
