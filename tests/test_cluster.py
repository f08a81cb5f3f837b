"""Three stateless nodes behind HAProxy (round-robin, no stickiness) on one PostgreSQL database
and one S3 store, each node with its own data directory: any node answers any request, and the
loss of one costs a client nothing it cannot retry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

import conformance
from conformance.suite import all_checks
from tests.apiclient import OCI_MANIFEST, push_to, sha256
from tests.support.cluster import Cluster
from tests.support.dockerd import DockerDaemon
from tests.support.net import free_port
from tests.support.oci_layout import write_multi_platform_layout
from tests.support.postgres import PostgresCluster
from tests.support.seaweed import SeaweedFS
from tests.support.server import ROOT
from tests.test_dedup import layer
from tests.test_e2e_docker import skopeo
from tests.test_events_delivery import Receiver


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresCluster, seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("cluster"), postgres, seaweed) as c:
        yield c


def test_chunked_upload_whose_requests_each_go_to_another_node(cluster: Cluster) -> None:
    """POST on node0, one PATCH on each node, PUT on node2: the blob verifies through HAProxy."""
    chunks = [bytes([65 + i]) * (6 * 1024 * 1024 + i) for i in range(3)]  # over one S3 part each
    blob = b"".join(chunks)
    nodes = [n.url for n in cluster.nodes]
    req = urllib.request.Request(f"{nodes[0]}/v2/acme/chunked/blobs/uploads/", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        location = resp.headers["Location"]
    path = location.removeprefix(cluster.url)  # absolute, on the public (HAProxy) URL
    assert path.startswith("/v2/acme/chunked/blobs/uploads/")
    offset = 0
    for i, chunk in enumerate(chunks):
        req = urllib.request.Request(
            nodes[i % 3] + path,
            data=chunk,
            method="PATCH",
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            },
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 202
            offset += len(chunk)
            assert resp.headers["Range"] == f"0-{offset - 1}"
            path = resp.headers["Location"].removeprefix(cluster.url)
    sep = "&" if "?" in path else "?"
    req = urllib.request.Request(f"{nodes[2]}{path}{sep}digest={sha256(blob)}", method="PUT")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 201
    with urllib.request.urlopen(f"{cluster.url}/v2/acme/chunked/blobs/{sha256(blob)}") as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == sha256(blob).split(":")[1]


def test_docker_push_pull_run_and_dedup_through_haproxy(
    cluster: Cluster, dockerd: DockerDaemon, busybox: str
) -> None:
    host = cluster.url.removeprefix("http://")
    layers = [layer(f"cluster-{i}", 512 * 1024) for i in range(3)]
    dockerd.build_layers(busybox, f"{host}/acme/web:1", layers)
    dockerd.cli("push", f"{host}/acme/web:1")
    # Another repository of the customer with two of those layers and one new: only the new
    # one is uploaded, whichever node answers each HEAD.
    dockerd.build_layers(busybox, f"{host}/acme/api:1", [*layers[:2], layer("cluster-new", 4096)])
    out = dockerd.cli("push", f"{host}/acme/api:1").stdout
    assert out.count("Layer already exists") >= 3, out  # busybox base + the two shared layers
    dockerd.cli("rmi", f"{host}/acme/web:1", f"{host}/acme/api:1")
    dockerd.cli("pull", f"{host}/acme/web:1")
    ran = dockerd.cli("run", "--rm", "--network", "none", f"{host}/acme/web:1", "echo", "hello")
    assert ran.stdout.strip() == "hello"


def test_skopeo_copy_all_of_a_multi_platform_image_through_haproxy(
    cluster: Cluster, tmp_path: Path
) -> None:
    """An index of two platform images pushed and pulled with `--all`: every manifest and blob
    request of one copy lands on any node."""
    src = tmp_path / "multi"
    index_digest = write_multi_platform_layout(src, tag="multi")
    ref = f"docker://{cluster.url.removeprefix('http://')}/acme/multi:1"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{src}:multi", ref)
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", ref).stdout)
    assert len(raw["manifests"]) == 2
    back = tmp_path / "back"
    skopeo("copy", "--all", "--src-tls-verify=false", ref, f"oci:{back}:multi")
    index = json.loads((back / "index.json").read_text())
    assert index["manifests"][0]["digest"] == index_digest
    for m in raw["manifests"]:
        assert (back / "blobs" / "sha256" / m["digest"].split(":")[1]).exists()


def test_conformance_through_haproxy(cluster: Cluster) -> None:
    results = conformance.run(cluster.url, "conformance/cluster")
    failed = results.failed_ids() | results.skipped_ids()
    assert (results.failed, results.skipped) == (0, 0), sorted(failed)
    assert results.passed == len(all_checks())


def dockyard_cli(node_index: int, cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    node = cluster.nodes[node_index]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dockyard",
            *args,
            "--config",
            str(node.config_path),
            "--data",
            str(node.data_dir),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=node.env,  # the node's DOCKYARD_* settings, as an operator's shell on it would have
        timeout=300,
    )


def test_cluster_status_lists_every_node_and_lease(cluster: Cluster) -> None:
    # Any node's configuration sees the whole cluster: the state is in PostgreSQL.
    out = dockyard_cli(1, cluster, "cluster", "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    alive = sorted(n["name"] for n in status["nodes"] if n["alive"])
    assert alive == ["node0", "node1", "node2"]
    assert all(set(n["roles"]) == {"api", "dispatcher", "gc", "launcher"} for n in status["nodes"])
    text = dockyard_cli(0, cluster, "cluster", "status")
    assert "postgresql://dockyard:***@" in text.stdout and "node2" in text.stdout
    # Each node's /metrics says which node it is, so a cluster's scrapes can be told apart.
    for i, node in enumerate(cluster.nodes):
        with urllib.request.urlopen(f"{node.url}/metrics", timeout=30) as resp:
            assert f'dockyard_node_info{{id="node{i}:' in resp.read().decode()


def test_gc_on_one_node_while_the_others_take_pushes(cluster: Cluster) -> None:
    pushed: list[tuple[str, str]] = []

    async def pushes(stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            i = 0
            while not stop.is_set() or i < 5:
                repo = f"gcload/app{i % 4}"
                digest, _ = await push_to(
                    http, cluster.url, repo, f"t{i}", layer(f"gc-{i}", 64 * 1024), b"{}"
                )
                pushed.append((repo, digest))
                i += 1

    async def run() -> subprocess.CompletedProcess:
        stop = asyncio.Event()
        task = asyncio.create_task(pushes(stop))
        await asyncio.sleep(0.5)
        # With the default grace, blobs of pushes in flight (no manifest yet) are kept; the
        # sweep runs against what the other nodes are writing at that moment.
        result = await asyncio.to_thread(dockyard_cli, 0, cluster, "gc", "--json")
        stop.set()
        await task
        return result

    result = asyncio.run(run())
    assert result.returncode == 0, result.stderr
    assert len(pushed) >= 5

    async def verify() -> None:
        async with aiohttp.ClientSession() as http:
            for repo, digest in pushed:
                url = f"{cluster.url}/v2/{repo}/manifests/{digest}"
                async with http.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
                    assert resp.status == 200
                    body = json.loads(await resp.read())
                for desc in [body["config"], *body["layers"]]:
                    async with http.get(f"{cluster.url}/v2/{repo}/blobs/{desc['digest']}") as r:
                        assert r.status == 200, (repo, desc)
                        assert sha256(await r.read()) == desc["digest"]

    asyncio.run(verify())


async def push_with_retries(http: aiohttp.ClientSession, base: str, repo: str, i: int) -> str:
    """What a client does when a node dies under it: try the push again."""
    last: BaseException | None = None
    for _attempt in range(5):
        try:
            digest, _ = await push_to(
                http, base, repo, f"v{i}", layer(f"kill-{i}", 256 * 1024), b'{"i": %d}' % i
            )
            return digest
        except (TimeoutError, AssertionError, aiohttp.ClientError) as exc:
            last = exc
            await asyncio.sleep(0.3)
    raise AssertionError(f"push {i} failed five times: {last}")


def test_kill_9_of_a_node_during_a_push_loop(
    postgres: PostgresCluster, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    receiver = Receiver(port=free_port())
    hook = f"""
[notifications]
poll_interval = "100ms"

[[notifications.endpoints]]
name = "hook"
url = "{receiver.url}"
timeout = "2s"
backoff = "50ms"
max_backoff = "200ms"
max_attempts = 1000
secret = "{receiver.secret}"
"""

    async def run(cluster: Cluster) -> tuple[list[str], list[dict]]:
        await receiver.start()
        try:
            digests = []
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                for i in range(20):
                    if i == 6:
                        cluster.kill(1)
                    digests.append(
                        await push_with_retries(http, cluster.url, f"acme/loop{i % 3}", i)
                    )
                for i, digest in enumerate(digests):
                    url = f"{cluster.url}/v2/acme/loop{i % 3}/manifests/v{i}"
                    async with http.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
                        assert resp.status == 200
                        assert sha256(await resp.read()) == digest

            def pushes() -> list[dict]:
                return [e for e in receiver.accepted() if e.get("action") == "push"]

            def covered() -> bool:
                return set(digests) <= {e["target"]["digest"] for e in pushes()}

            await receiver.wait_for(covered, "a push event for every image")
            await asyncio.sleep(1.0)  # a duplicate would arrive now
            return digests, pushes()
        finally:
            await receiver.stop()

    with Cluster(tmp_path, postgres, seaweed, extra_config=hook) as cluster:
        digests, events = asyncio.run(run(cluster))
        status = json.loads(dockyard_cli(0, cluster, "cluster", "status", "--json").stdout)
    assert len(set(digests)) == 20
    ids = [e["id"] for e in events]
    # Every image has its event (checked above); none was delivered twice. A push the client
    # retried after its node died may have two events (two pushes were made): at most one per
    # retried push.
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert len(ids) <= 20 + 5
    states = {n["name"]: n["alive"] for n in status["nodes"]}
    assert states == {"node0": True, "node1": False, "node2": True}
