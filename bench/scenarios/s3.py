"""S3 at the store's speed (issue 21): dockyard and distribution 2.8.2 side by side, each on a
fresh bucket of one SeaweedFS, and the store itself measured in the same run.

- skopeo push and pull of a 128 MiB image (one 64 MiB layer and four of 16 MiB, random
  content), a new image each round, the order alternating; docker push/pull of such an image
  from a private engine when root and dockerd are there.
- The raw store rate, the physical limit: aiobotocore multipart PUT of the same layer bytes in
  dockyard's part size, one part in flight (single stream), and GET of them on one stream;
  for information also all layers at once (PUT) and parallel ranged GETs.
- One 64 MiB blob GET by curl from each registry: the server side of a pull without the
  client's own work on the bytes (skopeo and docker verify and write them, which on 2 cores
  takes as much CPU as the store itself).
- Server peak RSS during a 1 GiB push (one streamed PATCH, as in the `rss` scenario).

distribution runs with `storage.redirect.disable: true`, so that its blob GETs stream through
it like dockyard's (dockyard's `redirect` is off by default). A second distribution process on
the same bucket with the shipped redirect (307 to a presigned SeaweedFS URL) is pulled from too,
for information. 2.8.2's s3 driver has no `forcepathstyle` parameter: it addresses buckets by
path whenever `regionendpoint` is set. The scenario checks that both registries really stored
the image in their buckets (and distribution nothing in its local directory).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.dockerd import DockerDaemon
from tests.support.engines import remove_cgroup
from tests.support.seaweed import SeaweedFS, new_seaweed

from ..client import Client
from ..core import Bench, Row, Scenario, alternate, ratio_target
from ..images import Layer, MiB, random_layer, write_layout
from ..procs import RssSampler
from ..s3raw import RawStore
from ..servers import DOCKYARD, REFERENCE, Target, dockyard, reference
from ..tools import skopeo_copy
from .transfer import docker_push_pull
from .uploads import BIG_SIZE, RSS_BOUND_MB, big_layer

LAYER_SIZES = [64 * MiB, 16 * MiB, 16 * MiB, 16 * MiB, 16 * MiB]
PART_MIB = 16  # dockyard's default storage.part_size_mib, set explicitly; the raw PUT uses it
RAW = "raw"  # the object store on its own
REDIRECT = "reference-redirect"  # distribution with its shipped redirect to presigned URLs
PUSH_RATIO, RAW_RATIO = 1.5, 0.75
RSS_REPS = 2  # the 1 GiB push costs ~1 minute per round: two rounds at most

SK_PUSH, SK_PULL = "S3 skopeo push 128 MiB", "S3 skopeo pull 128 MiB"
DK_PUSH, DK_PULL = "S3 docker push 128 MiB", "S3 docker pull 128 MiB"
RAW_PUT, RAW_GET = "S3 raw PUT 128 MiB (1 stream)", "S3 raw GET 128 MiB (1 stream)"
RAW_PUT_PAR = "S3 raw PUT 128 MiB (5 objects at once)"
RAW_GET_PAR = "S3 raw GET 128 MiB (8 ranged GETs at once)"
BIG = "S3 1 GiB push"
# The registry alone, without skopeo's or docker's own work on the bytes (on 2 cores the client
# takes as much CPU as the store): one blob GET, read by curl into /dev/null.
CURL_GET = "S3 blob GET 64 MiB (curl, 1 stream)"
MIB_S = "throughput (MiB/s)"


def _rows() -> list[Row]:
    vs_ref = f"≥ {PUSH_RATIO}× distribution"
    vs_raw = f"≥ {RAW_RATIO}× raw"
    return [
        Row(SK_PUSH, "mib_s", MIB_S, True, vs_ref, ratio_target(True, PUSH_RATIO)),
        Row(SK_PUSH, "mib_s", MIB_S, True, vs_raw + " PUT", ratio_target(True, RAW_RATIO),
            right=RAW, right_phase=RAW_PUT),
        Row(SK_PUSH, "mib_s", MIB_S, True, "", right=RAW, right_phase=RAW_PUT_PAR),
        Row(SK_PULL, "mib_s", MIB_S, True, vs_ref, ratio_target(True, PUSH_RATIO)),
        Row(SK_PULL, "mib_s", MIB_S, True, vs_raw + " GET", ratio_target(True, RAW_RATIO),
            right=RAW, right_phase=RAW_GET),
        Row(SK_PULL, "mib_s", MIB_S, True, "", right=RAW, right_phase=RAW_GET_PAR),
        Row(SK_PULL, "mib_s", MIB_S, True, "", right=REDIRECT),
        Row(CURL_GET, "mib_s", MIB_S, True, vs_ref, ratio_target(True, PUSH_RATIO)),
        Row(CURL_GET, "mib_s", MIB_S, True, vs_raw + " GET", ratio_target(True, RAW_RATIO),
            right=RAW, right_phase=RAW_GET),
        Row(DK_PUSH, "mib_s", MIB_S, True, vs_ref, ratio_target(True, PUSH_RATIO)),
        Row(DK_PULL, "mib_s", MIB_S, True, vs_ref, ratio_target(True, PUSH_RATIO)),
        Row(BIG, "peak_process_mb", "peak RSS per process (MB)", False,
            f"≤ {RSS_BOUND_MB} MB per worker", lambda dy, ref: dy <= RSS_BOUND_MB),
        Row(BIG, "peak_tree_mb", "peak RSS, whole server (MB)", False),
        Row(BIG, "mib_s", MIB_S, True, "", ratio_target(True)),
    ]


def distribution_s3(weed: SeaweedFS, bucket: str, redirect: bool) -> dict:
    """The `storage` section of distribution's config for its s3 driver on SeaweedFS."""
    return {"storage": {
        "filesystem": None,  # removes the default driver (merge_config)
        "s3": {
            "accesskey": weed.access_key, "secretkey": weed.secret_key,
            "region": "us-east-1", "regionendpoint": weed.endpoint, "bucket": bucket,
            "secure": False, "v4auth": True,
        },
        "redirect": {"disable": not redirect},
    }}


@contextlib.contextmanager
def _without_env(name: str) -> Iterator[None]:
    """Start children without `name` in their environment. aws-sdk-go (in distribution) panics
    at start when AWS_CA_BUNDLE is set and it uses its own HTTP transport ("unable to load
    custom CA bundle, HTTPClient's transport unsupported type"); the store is plain HTTP."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _status(url: str, path: str) -> int:
    """Status of a GET without following redirects (the body is not read)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _files_under(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


class S3PushPull(Scenario):
    name = "s3"
    title = "S3 (SeaweedFS): dockyard vs distribution vs the raw store, 128 MiB image"
    rows = _rows()

    def setup(self, bench: Bench) -> None:
        self._stack = contextlib.ExitStack()
        self.weed = new_seaweed()
        self._stack.callback(self.weed.destroy)
        self.weed.start()
        self.raw = RawStore(self.weed.endpoint, self.weed.access_key, self.weed.secret_key)
        tag = secrets.token_hex(3)
        self.buckets = {DOCKYARD: f"bench-dy-{tag}", REFERENCE: f"bench-ref-{tag}",
                        RAW: f"bench-raw-{tag}"}
        self.raw.create_bucket(self.buckets[REFERENCE])  # distribution does not create it
        self.raw.create_bucket(self.buckets[RAW])
        config = bench.dockyard_config + self.weed.config_text(
            self.buckets[DOCKYARD], part_size_mib=PART_MIB)
        self.dy: Target = self._stack.enter_context(
            dockyard(bench.work, bench.dockyard_args, config, name="dockyard-s3"))
        with _without_env("AWS_CA_BUNDLE"):
            self.ref: Target = self._stack.enter_context(reference(
                bench.quiet_logs, distribution_s3(self.weed, self.buckets[REFERENCE], False)))
            self.redirect: Target = self._stack.enter_context(reference(
                bench.quiet_logs, distribution_s3(self.weed, self.buckets[REFERENCE], True),
                name=REDIRECT))
        weed_pid = self.weed.proc.pid  # type: ignore[union-attr]
        self.raw_target = Target(RAW, self.weed.endpoint, weed_pid, self.weed.root,
                                 self.weed.root / "weed.log")
        self.engine: DockerDaemon | None = None
        if os.geteuid() == 0 and os.path.exists("/usr/sbin/dockerd"):
            self.engine = DockerDaemon(bench.work / "dockerd-s3", name="bench-s3")
            self.engine.start()
            bench.client_pids.append(self.engine.proc.pid)  # type: ignore[union-attr]
            self.engine.import_busybox("bench-base:1")
        else:
            bench.notes.append("s3: docker rows skipped (needs root and /usr/sbin/dockerd)")

    def _image(self, bench: Bench, rep: int) -> tuple[Path, list[Layer]]:
        layers = [random_layer(size, f"s3-{rep}-{i}") for i, size in enumerate(LAYER_SIZES)]
        layout = bench.work / f"layout-s3-{rep}"
        write_layout(layout, {"app": layers})
        return layout, layers

    def rep(self, bench: Bench, rep: int) -> None:
        # A new image each round: nothing is deduplicated against an earlier round.
        layout, layers = self._image(bench, rep)
        mib = sum(la.blob.size for la in layers) / MiB
        repo = f"s3r{rep}/app"
        objects = {f"r{rep}/{la.blob.digest}": la.blob.data for la in layers}
        sizes = {k: len(v) for k, v in objects.items()}
        for side in alternate([self.dy, self.ref, self.raw_target], rep):
            if side is self.raw_target:
                with bench.measure(RAW_PUT, side) as m:
                    m["mib_s"] = mib / self.raw.put(self.buckets[RAW], objects, PART_MIB * MiB)
                par = {f"p{k}": v for k, v in objects.items()}
                with bench.measure(RAW_PUT_PAR, side) as m:
                    m["mib_s"] = mib / self.raw.put(self.buckets[RAW], par, PART_MIB * MiB,
                                                    parallel=True)
                continue
            with bench.measure(SK_PUSH, side) as m:
                t0 = time.monotonic()
                skopeo_copy(f"oci:{layout}:app", f"docker://{side.host}/{repo}:v1")
                m["mib_s"] = mib / (time.monotonic() - t0)
        if rep == 0:
            self._check_stored(bench, mib, layers)
        for side in alternate([self.dy, self.ref, self.raw_target, self.redirect], rep):
            if side is self.raw_target:
                with bench.measure(RAW_GET, side) as m:
                    seconds, got = self.raw.get(self.buckets[RAW], list(objects))
                    m["mib_s"] = got / MiB / seconds
                with bench.measure(RAW_GET_PAR, side) as m:
                    seconds, got = self.raw.get_ranged(self.buckets[RAW], sizes, 8 * MiB, 8)
                    m["mib_s"] = got / MiB / seconds
                continue
            dest = bench.work / f"pull-s3-{side.name}-{rep}"
            with bench.measure(SK_PULL, side) as m:
                t0 = time.monotonic()
                skopeo_copy(f"docker://{side.host}/{repo}:v1", f"oci:{dest}:app")
                m["mib_s"] = mib / (time.monotonic() - t0)
            shutil.rmtree(dest, ignore_errors=True)
        self._curl_get(bench, rep, repo, layers[0])
        shutil.rmtree(layout, ignore_errors=True)
        del objects, layers
        if self.engine is not None:
            self._docker(bench, rep)
        if rep < RSS_REPS:
            self._big_push(bench, rep)

    def _curl_get(self, bench: Bench, rep: int, repo: str, layer: Layer) -> None:
        curl = shutil.which("curl")
        if curl is None:
            if rep == 0:
                bench.notes.append("s3: curl GET rows skipped (no curl)")
            return
        for side in alternate([self.dy, self.ref], rep):
            url = f"{side.url}/v2/{repo}/blobs/{layer.blob.digest}"
            with bench.measure(CURL_GET, side) as m:
                # curl's own figure (size / time from its request to the last byte), so that
                # starting the curl process is not counted.
                res = subprocess.run(
                    [curl, "-sf", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}",
                     url], capture_output=True, text=True, timeout=120)
                size, _, speed = res.stdout.partition(" ")
                if res.returncode != 0 or int(size or 0) != layer.blob.size:
                    raise RuntimeError(f"curl GET from {side.name} failed: {res.stderr[:300]}")
                m["mib_s"] = float(speed) / MiB

    def _check_stored(self, bench: Bench, mib: float, layers: list[Layer]) -> None:
        """Both registries must have written the image into their SeaweedFS buckets."""
        for name, prefix in ((DOCKYARD, ""), (REFERENCE, "docker/registry/v2/blobs/")):
            count, size = self.raw.usage(self.buckets[name], prefix)
            bench.notes.append(f"s3: after the first push, bucket {self.buckets[name]} "
                               f"({name}) holds {count} objects, {size / MiB:.1f} MiB "
                               f"under '{prefix}'")
            if size < mib * MiB:
                raise RuntimeError(f"{name} stored only {size / MiB:.1f} MiB of the "
                                   f"{mib:.1f} MiB image in bucket {self.buckets[name]}")
        local = _files_under(self.ref.data_dir)
        if local:
            raise RuntimeError(f"distribution wrote {local} files to its local directory")
        digest = layers[1].blob.digest  # any blob: distribution redirects every blob GET
        path = f"/v2/s3r0/app/blobs/{digest}"
        statuses = {t.name: _status(t.url, path) for t in (self.ref, self.redirect)}
        bench.notes.append(f"s3: a layer GET without following redirects: {statuses}")
        if statuses != {REFERENCE: 200, REDIRECT: 307}:
            bench.notes.append("s3: unexpected redirect behaviour of distribution (above)")

    def _docker(self, bench: Bench, rep: int) -> None:
        assert self.engine is not None
        local = f"bench-s3:{rep}"
        sizes = [size - 4096 for size in LAYER_SIZES]
        self.engine.build_layers("bench-base:1", local, [os.urandom(n) for n in sizes])
        docker_push_pull(bench, self.engine, local, alternate([self.dy, self.ref], rep),
                         f"s3dk{rep}/app", (DK_PUSH, DK_PULL), mib=sum(sizes) / MiB)

    def _big_push(self, bench: Bench, rep: int) -> None:
        seed = os.urandom(MiB)
        for target in alternate([self.dy, self.ref], rep):
            with Client(target.url) as client, bench.measure(BIG, target) as m:
                with RssSampler(target.pid) as rss:
                    t0 = time.monotonic()
                    client.streamed_upload(f"s3big{rep}/layer", big_layer(BIG_SIZE, seed),
                                           BIG_SIZE)
                    m["mib_s"] = BIG_SIZE / MiB / (time.monotonic() - t0)
                m["peak_process_mb"] = rss.peak_process / 1e6
                m["peak_tree_mb"] = rss.peak_tree / 1e6

    def teardown(self, bench: Bench) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            if engine.proc is not None and engine.proc.pid in bench.client_pids:
                bench.client_pids.remove(engine.proc.pid)
            engine.stop()
            remove_cgroup(f"dy-{engine.name}-{os.getpid()}")
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()  # the registries first, then SeaweedFS
