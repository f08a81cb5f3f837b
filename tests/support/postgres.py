"""A private PostgreSQL 15 cluster (Debian's `postgresql`) on a free loopback port.

The server refuses to run as root, so the cluster belongs to the `postgres` OS user, in a
directory that user owns under /tmp (every parent must be traversable). Tests get a fresh,
empty database each (`PostgresCluster.new_database()`), so they never see each other's rows.
fsync is off: the tests crash processes, not the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .net import free_port
from .require import missing

BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "dockyard-test"


# Started as the postgres user directly (not through runuser), so the PID the test holds is
# the server's own and a signal reaches it.
AS_POSTGRES = {"user": "postgres", "group": "postgres", "extra_groups": []}


def _as_postgres(*cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), cwd=cwd, capture_output=True, text=True, timeout=120, **AS_POSTGRES
    )


class PostgresCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "postgres.log"

    def start(self) -> PostgresCluster:
        if os.geteuid() != 0 or not (BIN / "postgres").exists():
            missing("PostgreSQL 15 (Debian postgresql) and root are needed for PostgreSQL tests")
        shutil.chown(self.root, "postgres")
        os.chmod(self.root, 0o755)
        self.sock.mkdir()
        shutil.chown(self.sock, "postgres")
        res = _as_postgres(
            str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8",
            "--no-sync", cwd=self.root,
        )
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed: {res.stderr}")
        self.start_server()
        self.psql(f"CREATE ROLE dockyard LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        return self

    def start_server(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "postgres"), "-D", str(self.data),
             "-p", str(self.port), "-k", str(self.sock), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=400"],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, **AS_POSTGRES,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not start: {self.log_path.read_text()[-2000:]}")

    def stop_server(self) -> None:
        """Fast shutdown (SIGINT): open client sessions are cut, as in an outage."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def psql(self, *commands: str, db: str = "postgres") -> str:
        args = [str(BIN / "psql"), "-h", str(self.sock), "-p", str(self.port), "-U", "postgres",
                "-d", db, "-v", "ON_ERROR_STOP=1", "-At"]
        for command in commands:
            args += ["-c", command]
        res = _as_postgres(*args, cwd=self.root)
        if res.returncode != 0:
            raise RuntimeError(f"psql failed: {res.stderr}")
        return res.stdout

    def url(self, db: str) -> str:
        return f"postgresql://dockyard:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def new_database(self, template: str = "") -> str:
        """A fresh database owned by the dockyard role (empty, or a copy of `template`, which
        nobody may be connected to); returns its URL."""
        name = f"t_{secrets.token_hex(6)}"
        copy = f" TEMPLATE {template}" if template else ""
        self.psql(f"CREATE DATABASE {name} OWNER dockyard{copy}")
        return self.url(name)

    def stop(self) -> None:
        self.stop_server()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    root = Path(tempfile.mkdtemp(prefix="dy-pg-", dir="/tmp"))
    cluster = PostgresCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
