"""Shared fixtures: a real dockyard server, a private dockerd, test images."""

from __future__ import annotations

import os

# Before dockyard is imported, here and in every server the tests start: a statement issued on
# the database from inside one of its transactions raises instead of being logged.
os.environ.setdefault("DOCKYARD_STRICT_TRANSACTIONS", "1")

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dockerd import DockerDaemon
from tests.support.postgres import postgres  # noqa: F401 - session fixture: a private cluster
from tests.support.seaweed import seaweed  # noqa: F401 - session fixture for S3 tests
from tests.support.server import DockyardServer


@pytest.fixture
def dockyard(tmp_path: Path) -> Iterator[DockyardServer]:
    """A `dockyard serve` subprocess with a fresh data directory and default config."""
    with DockyardServer(tmp_path / "data") as server:
        yield server


@pytest.fixture
def dockyard_url(dockyard: DockyardServer) -> str:
    return dockyard.url


@pytest.fixture
def dockyard_factory(tmp_path: Path) -> Iterator:
    """Start servers with a given TOML config: `dockyard_factory(config_text, name="data")`."""
    started: list[DockyardServer] = []

    def start(
        config_text: str = "",
        name: str = "data",
        env: dict | None = None,
        args: tuple[str, ...] = (),
    ) -> DockyardServer:
        server = DockyardServer(tmp_path / name, config_text, env, args).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerDaemon]:
    """One private Docker Engine for the session."""
    # A short path: the daemon's unix socket path must stay under 108 bytes.
    daemon = DockerDaemon(Path(tempfile.mkdtemp(prefix="dy-dockerd-", dir="/tmp")))
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def busybox(dockerd: DockerDaemon) -> str:
    """A base image made from Debian's busybox-static (nothing is pulled from the internet)."""
    return dockerd.import_busybox("dy-busybox:latest")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The official OCI conformance program's totals (tests/test_official_conformance.py), shown
    whether the tests passed or not; reports carry them from xdist workers too."""
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == "oci_conformance"
    ]
    if lines:
        terminalreporter.section("official OCI conformance program")
        for line in dict.fromkeys(lines):
            terminalreporter.write_line(line)
