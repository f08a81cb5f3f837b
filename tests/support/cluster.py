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

HAPROXY_CONFIG = """
global
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-request 30s
    retries 2
    option redispatch
    # Round-robin without stickiness: each request of one push may land on another node.
    # A request is retried on another node only when the connection could not be made.
    retry-on conn-failure

frontend registry
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
{servers}
"""


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
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metadata_url = postgres.new_database()
        bucket = f"c-{secrets.token_hex(6)}"
        self.nodes: list[DockyardServer] = []
        for i in range(nodes):
            config = (
                seaweed.config_text(bucket=bucket)
                + f'\n[metadata]\nurl = "{self.metadata_url}"\n'
                + f'\n[cluster]\nnode_name = "node{i}"\nheartbeat_seconds = 0.5\n'
                + f'\n[http]\npublic_url = "{self.url}"\n'
                + extra_config
            )
            self.nodes.append(DockyardServer(root / f"node{i}", config))
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.haproxy_log = root / "haproxy.log"

    def start(self) -> Cluster:
        binary = require_binary("haproxy", "/usr/sbin/haproxy")
        for node in self.nodes:
            node.start()
        servers = "\n".join(
            f"    server node{i} {n.host} check inter 300ms fall 2 rise 1"
            for i, n in enumerate(self.nodes)
        )
        cfg = self.root / "haproxy.cfg"
        cfg.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
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
