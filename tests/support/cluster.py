"""Several dockyard nodes behind HAProxy (Debian `haproxy`), on one PostgreSQL database and one
S3 bucket (SeaweedFS), each node with its own data directory as if on its own machine."""

from __future__ import annotations

import secrets
import signal
import subprocess
from pathlib import Path

from .net import free_port, wait_http
from .postgres import PostgresCluster
from .require import require_binary
from .seaweed import SeaweedFS
from .server import DockyardServer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster"


def haproxy_config(port: int, nodes: list[DockyardServer]) -> str:
    """The README's example (examples/cluster/haproxy.cfg) with this test's ports."""
    text = (EXAMPLE / "haproxy.cfg").read_text()
    text = text.replace("bind 127.0.0.1:5000", f"bind 127.0.0.1:{port}")
    for i, node in enumerate(nodes):
        text = text.replace(f"127.0.0.1:{5001 + i} ", f"{node.host} ")
    # Fewer nodes than the example's three: their server lines go.
    lines = [
        line for line in text.splitlines()
        if not (line.startswith("    server node") and "127.0.0.1:500" in line)
    ]
    assert sum(line.startswith("    server node") for line in lines) == len(nodes)
    return "\n".join(lines) + "\n"


class Cluster:
    def __init__(
        self,
        root: Path,
        postgres: PostgresCluster,
        seaweed: SeaweedFS,
        nodes: int = 3,
        extra_config: str = "",
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metadata_url = postgres.new_database()
        bucket = f"c-{secrets.token_hex(6)}"
        self.nodes: list[DockyardServer] = []
        # Each node runs the README's example node config; the environment says where this
        # test's database, bucket and load balancer are.
        config = (EXAMPLE / "node.toml").read_text() + extra_config
        for i in range(nodes):
            env = {
                "DOCKYARD_METADATA_URL": self.metadata_url,
                "DOCKYARD_STORAGE_ENDPOINT": seaweed.endpoint,
                "DOCKYARD_STORAGE_ACCESS_KEY": seaweed.access_key,
                "DOCKYARD_STORAGE_SECRET_KEY": seaweed.secret_key,
                "DOCKYARD_STORAGE_BUCKET": bucket,
                "DOCKYARD_STORAGE_CREATE_BUCKET": "true",
                "DOCKYARD_STORAGE_PART_SIZE_MIB": "5",
                "DOCKYARD_HTTP_PUBLIC_URL": self.url,
                "DOCKYARD_CLUSTER_NODE_NAME": f"node{i}",
                "DOCKYARD_CLUSTER_HEARTBEAT_SECONDS": "0.5",
                "DOCKYARD_GC_INTERVAL_SECONDS": "0",
            }
            self.nodes.append(DockyardServer(root / f"node{i}", config, env))
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.haproxy_log = root / "haproxy.log"

    def start(self) -> Cluster:
        binary = require_binary("haproxy", "/usr/sbin/haproxy")
        for node in self.nodes:
            node.start()
        cfg = self.root / "haproxy.cfg"
        cfg.write_text(haproxy_config(self.port, self.nodes))
        log = open(self.haproxy_log, "ab")
        # -db: stay in the foreground, so the PID held here is the proxy's own.
        self.haproxy = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=log)
        log.close()
        wait_http(f"{self.url}/healthz", proc=self.haproxy)
        return self

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def stop(self) -> None:
        if self.haproxy and self.haproxy.poll() is None:
            self.haproxy.send_signal(signal.SIGTERM)
            try:
                self.haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(5)
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
