"""The fresh-client dedup push: image B shares 4 of its 5 layers with image A, already pushed
to another repository of the same customer; a client with an empty cache pushes B.

What each registry receives is counted by a TCP proxy in front of it (same for both). The
reference links blobs per repository, so it asks for all five layers; dockyard answers the
HEAD of the four shared layers from the customer's holdings and should receive only the new one.

Two clients: skopeo from an OCI layout (it HEADs every blob), and optionally docker, the
realistic CI runner: a fresh engine pulls B from an upstream registry (a third registry, the
reference standing in for Docker Hub) and pushes it; it only HEADs layers whose compressed
digest it learnt from that pull, and cannot mount across registries.
"""

from __future__ import annotations

import os
import time

from tests.support.dockerd import DockerDaemon
from tests.support.engines import remove_cgroup
from tests.support.reference import reference_registry

from ..client import Client
from ..core import Bench, Row, Scenario, Skip, ratio_target
from ..images import Layer, MiB, image_config, manifest, random_layer, write_layout
from ..proxy import counting_proxy
from ..tools import skopeo_copy
from .transfer import LAYER_SIZE

BOUND = 1.05


def _rows(phase: str) -> list[Row]:
    new = LAYER_SIZE / MiB
    return [
        Row(phase, "received_mib", "bytes received (MiB)", False,
            f"≤ {BOUND} × new layer ({new * BOUND:.1f} MiB)",
            lambda dy, ref: dy <= BOUND * new),
        Row(phase, "seconds", "time (s)", False, "", ratio_target(False)),
    ]


def make_layers() -> tuple[list[Layer], list[Layer]]:
    shared = [random_layer(LAYER_SIZE, f"shared{i}") for i in range(4)]
    return [*shared, random_layer(LAYER_SIZE, "a5")], [*shared, random_layer(LAYER_SIZE, "b5")]


def push_image(client: Client, repo: str, tag: str, layers: list[Layer]) -> None:
    config = image_config(layers)
    for b in (config, *(la.blob for la in layers)):
        client.push_blob(repo, b)
    client.put_manifest(repo, tag, manifest(config, [la.blob for la in layers]))


class SkopeoDedup(Scenario):
    name = "dedup"
    title = "fresh-client dedup push (skopeo, empty cache), 4 of 5 layers shared"
    rows = _rows("dedup push (skopeo)")

    def setup(self, bench: Bench) -> None:
        self.a, self.b = make_layers()
        self.layout = bench.work / "layout-dedup"
        write_layout(self.layout, {"b": self.b})

    def rep(self, bench: Bench, rep: int) -> None:
        # A new customer per repetition, so nothing from earlier repetitions is shared.
        ns = f"dd{rep}"
        for target in bench.order(rep):
            with Client(target.url) as client:
                push_image(client, f"{ns}/x", "a", self.a)
            with counting_proxy(target.url) as proxy:
                with bench.measure("dedup push (skopeo)", target) as m:
                    t0 = time.monotonic()
                    skopeo_copy(f"oci:{self.layout}:b", f"docker://{proxy.host}/{ns}/y:b")
                    m["seconds"] = time.monotonic() - t0
                    m["received_mib"] = proxy.sent_to_server / MiB


class DockerDedup(Scenario):
    name = "dedup-docker"
    title = "fresh-client dedup push (new dockerd pulls B from upstream, pushes to repo Y)"
    rows = _rows("dedup push (docker)")

    def setup(self, bench: Bench) -> None:
        if os.geteuid() != 0 or not os.path.exists("/usr/sbin/dockerd"):
            raise Skip("needs root and /usr/sbin/dockerd")
        self.a, self.b = make_layers()
        self._upstream_cm = reference_registry()
        self.upstream = self._upstream_cm.__enter__()
        with Client(self.upstream.url) as client:
            push_image(client, "hub/b", "latest", self.b)

    def rep(self, bench: Bench, rep: int) -> None:
        ns = f"dk-dd{rep}"
        for i, target in enumerate(bench.order(rep)):
            with Client(target.url) as client:
                push_image(client, f"{ns}/x", "a", self.a)
            engine = DockerDaemon(bench.work / f"dd{rep}{i}", name=f"bdd{rep}{i}")
            try:
                engine.start()
                bench.client_pids.append(engine.proc.pid)  # type: ignore[union-attr]
                upstream_ref = f"{self.upstream.url.removeprefix('http://')}/hub/b:latest"
                engine.cli("pull", upstream_ref)
                with counting_proxy(target.url) as proxy:
                    ref = f"{proxy.host}/{ns}/y:b"
                    engine.cli("tag", upstream_ref, ref)
                    with bench.measure("dedup push (docker)", target) as m:
                        t0 = time.monotonic()
                        engine.cli("push", ref)
                        m["seconds"] = time.monotonic() - t0
                        m["received_mib"] = proxy.sent_to_server / MiB
            finally:
                if engine.proc is not None and engine.proc.pid in bench.client_pids:
                    bench.client_pids.remove(engine.proc.pid)
                engine.stop()
                remove_cgroup(f"dy-{engine.name}-{os.getpid()}")

    def teardown(self, bench: Bench) -> None:
        cm = getattr(self, "_upstream_cm", None)
        if cm is not None:
            cm.__exit__(None, None, None)
