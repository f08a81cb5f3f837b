"""Cluster bench (issue 15): request rates through HAProxy with 1, 2 and 3 nodes, and a
5 × 16 MiB push and pull through the cluster against one node on its own. Not a test: it prints
a markdown table and writes JSON to `bench/results/cluster-<timestamp>.json`.

    .venv/bin/python -m bench.cluster [--seconds 3] [--reps 2]

Every node runs `examples/cluster/node.toml` (PostgreSQL metadata, S3 on SeaweedFS, its own
data directory) behind `examples/cluster/haproxy.cfg`, exactly as tests/test_cluster.py does;
the PostgreSQL cluster, SeaweedFS, HAProxy and nodes are started here on free loopback ports
and stopped by their PIDs. On a 2-core machine more nodes add processes, not cores: the rows
say what a node costs, not what a real cluster gains.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.apiclient import OCI_MANIFEST, manifest, push_to, sha256
from tests.support.cluster import Cluster
from tests.support.postgres import PostgresCluster
from tests.support.seaweed import new_seaweed

from .tools import have_ab, run_ab_head
from .wrk import run_wrk

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1 << 20


def _layers() -> list[bytes]:
    return [os.urandom(16 * MIB) for _ in range(5)]


async def _seed(base: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http:
        digest, _ = await push_to(http, base, "bench/app", "1", b"layer" * 2000, b"{}")
    return digest, sha256(b"layer" * 2000)


async def _push_pull(base: str, repo: str, layers: list[bytes]) -> tuple[float, float]:
    """A 5-layer image pushed monolithically, then every blob pulled: (push s, pull s)."""
    config = json.dumps({"repo": repo}).encode()
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        start = time.monotonic()

        async def put(blob: bytes) -> None:
            async with http.post(
                f"{base}/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)}, data=blob
            ) as resp:
                assert resp.status == 201, await resp.text()

        await asyncio.gather(*(put(b) for b in [*layers, config]))
        async with http.put(
            f"{base}/v2/{repo}/manifests/1",
            data=manifest(config, layers),
            headers={"Content-Type": OCI_MANIFEST},
        ) as resp:
            assert resp.status == 201
        pushed = time.monotonic() - start

        start = time.monotonic()

        async def get(blob: bytes) -> None:
            async with http.get(f"{base}/v2/{repo}/blobs/{sha256(blob)}") as resp:
                assert resp.status == 200
                async for _ in resp.content.iter_chunked(1 << 20):
                    pass

        await asyncio.gather(*(get(b) for b in layers))
        return pushed, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="each load phase")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dy-bench-cluster-", dir="/tmp"))
    pg = PostgresCluster(Path(tempfile.mkdtemp(prefix="dy-pg-", dir="/tmp")))
    weed = new_seaweed()
    rows: list[dict] = []
    layers = _layers()
    try:
        pg.start()
        weed.start()
        for nodes in (1, 2, 3):
            for rep in range(args.reps):
                with Cluster(root / f"n{nodes}-{rep}", pg, weed, nodes=nodes) as cluster:
                    _, blob = asyncio.run(_seed(cluster.url))
                    gets = run_wrk(
                        f"{cluster.url}/v2/bench/app/manifests/1",
                        connections=args.connections,
                        seconds=args.seconds,
                        headers={"Accept": OCI_MANIFEST},
                    )
                    heads = (
                        run_ab_head(
                            f"{cluster.url}/v2/bench/app/blobs/{blob}",
                            connections=args.connections,
                            seconds=args.seconds,
                        )
                        if have_ab()
                        else None
                    )
                    push, pull = asyncio.run(_push_pull(cluster.url, f"bench/big{rep}", layers))
                    single = None
                    if nodes == 3:
                        # The same push and pull sent to one node directly, beside the others.
                        single = asyncio.run(
                            _push_pull(cluster.nodes[0].url, f"bench/one{rep}", layers)
                        )
                rows.append(
                    {
                        "nodes": nodes,
                        "rep": rep,
                        "manifest_get_rps": gets.requests / gets.seconds,
                        "manifest_get_errors": gets.status_errors + gets.socket_errors,
                        "blob_head_rps": heads.requests / heads.seconds if heads else None,
                        "push_s": push,
                        "pull_s": pull,
                        "single_node_push_s": single[0] if single else None,
                        "single_node_pull_s": single[1] if single else None,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        weed.destroy()
        pg.stop()

    def med(nodes: int, key: str) -> float | None:
        values = [r[key] for r in rows if r["nodes"] == nodes and r[key] is not None]
        return statistics.median(values) if values else None

    size = 80  # MiB pushed and pulled
    print(
        "\n| nodes behind HAProxy | manifest GET req/s | blob HEAD req/s | push 5×16 MiB "
        "MiB/s | pull MiB/s |"
    )
    print("|---|---|---|---|---|")
    for n in (1, 2, 3):
        head = med(n, "blob_head_rps")
        print(
            f"| {n} | {med(n, 'manifest_get_rps'):,.0f} | "
            f"{'-' if head is None else f'{head:,.0f}'} | "
            f"{size / med(n, 'push_s'):.0f} | {size / med(n, 'pull_s'):.0f} |"  # type: ignore[operator]
        )
    one_push, one_pull = med(3, "single_node_push_s"), med(3, "single_node_pull_s")
    if one_push and one_pull:
        print(
            f"| one node directly (3 running) | | | {size / one_push:.0f} | {size / one_pull:.0f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
