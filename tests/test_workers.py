"""`dockyard serve --workers N`: several processes share the port and one data directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import conformance
from tests.support.dockerd import DockerDaemon
from tests.support.server import ROOT, DockyardServer


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_two_workers_pass_conformance_and_serve_docker(
    dockerd: DockerDaemon, busybox: str, tmp_path: Path
) -> None:
    with DockyardServer(tmp_path / "data", "[http]\nworkers = 2\n") as server:
        assert server.proc is not None
        assert len(children(server.proc.pid)) == 2
        # Requests of one upload land on either process: hash state is rebuilt where needed,
        # writes serialise in SQLite, caches follow the database version.
        results = conformance.run(server.url, "conformance/workers")
        assert (results.failed, results.skipped) == (0, 0), results.failed_ids()
        ref = f"{server.host}/acme/workers"
        dockerd.build_layers(busybox, f"{ref}:1", [b"w" * 300_000, b"x" * 200_000])
        dockerd.cli("push", f"{ref}:1")
        dockerd.cli("rmi", f"{ref}:1")
        dockerd.cli("pull", f"{ref}:1")
        out = dockerd.cli(
            "run", "--rm", "--network", "none", f"{ref}:1", "sh", "-c", "cat /data/*.bin | wc -c"
        ).stdout
        assert out.strip() == "500000"


def test_workers_refuse_an_in_process_launcher(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[launcher]\nenabled = true\n")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "dockyard",
            "serve",
            "--workers",
            "2",
            "--config",
            str(config),
            "--data",
            str(tmp_path / "d"),
            "--addr",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 2
    assert "launcher runs in exactly one process" in res.stderr
