"""Uploads: a 64 MiB blob in 5 MiB PATCHes, and a 1 GiB layer streamed while the server's
resident memory is watched."""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Iterator

from ..client import Client
from ..core import Bench, Row, Scenario, ratio_target
from ..images import MiB
from ..procs import RssSampler

CHUNKED_SIZE = 64 * MiB
CHUNK = 5 * MiB
BIG_SIZE = 1024 * MiB
RSS_BOUND_MB = 150


class ChunkedUpload(Scenario):
    name = "chunked"
    title = "64 MiB upload in 5 MiB PATCHes with Content-Range"
    rows = [Row("chunked upload 64 MiB", "mib_s", "throughput (MiB/s)", True, "≥ 1.0×",
                ratio_target(True))]

    def rep(self, bench: Bench, rep: int) -> None:
        data = os.urandom(CHUNKED_SIZE)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        view = memoryview(data)
        chunks = [bytes(view[i:i + CHUNK]) for i in range(0, CHUNKED_SIZE, CHUNK)]
        for target in bench.order(rep):
            with Client(target.url) as client, bench.measure("chunked upload 64 MiB", target) as m:
                t0 = time.monotonic()
                client.chunked_upload(f"chunked{rep}/blob", chunks, digest)
                m["mib_s"] = CHUNKED_SIZE / MiB / (time.monotonic() - t0)


def big_layer(size: int, seed: bytes) -> Iterator[bytes]:
    """`size` bytes of incompressible, unique content, 1 MiB at a time, never all in memory."""
    base = bytearray(seed)
    for i in range(size // MiB):
        base[:8] = struct.pack(">Q", i)
        yield bytes(base)


class BigPushRss(Scenario):
    name = "rss"
    title = "server peak RSS while a 1 GiB layer is pushed (one streamed PATCH, like docker)"
    max_reps = 2
    rows = [
        Row("1 GiB push", "peak_process_mb", "peak RSS per process (MB)", False,
            f"≤ {RSS_BOUND_MB} MB per worker", lambda dy, ref: dy <= RSS_BOUND_MB),
        Row("1 GiB push", "peak_tree_mb", "peak RSS, whole server (MB)", False),
        Row("1 GiB push", "mib_s", "throughput (MiB/s)", True, "", ratio_target(True)),
    ]

    def rep(self, bench: Bench, rep: int) -> None:
        seed = os.urandom(MiB)
        for target in bench.order(rep):
            with Client(target.url) as client, bench.measure("1 GiB push", target) as m:
                with RssSampler(target.pid) as rss:
                    t0 = time.monotonic()
                    client.streamed_upload(f"big{rep}/layer", big_layer(BIG_SIZE, seed), BIG_SIZE)
                    m["mib_s"] = BIG_SIZE / MiB / (time.monotonic() - t0)
                m["peak_process_mb"] = rss.peak_process / 1e6
                m["peak_tree_mb"] = rss.peak_tree / 1e6
