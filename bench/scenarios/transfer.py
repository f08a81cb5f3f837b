"""Push and pull of a 5-layer × 16 MiB image, with skopeo and with docker."""

from __future__ import annotations

import os
import shutil
import time

from tests.support.dockerd import DockerDaemon
from tests.support.engines import remove_cgroup

from ..core import Bench, Row, Scenario, Skip, ratio_target
from ..images import Layer, MiB, random_layer, write_layout
from ..servers import Target
from ..tools import skopeo_copy

LAYERS = 5
LAYER_SIZE = 16 * MiB


def _time_rows(phase: str) -> Row:
    return Row(phase, "seconds", "time (s)", False, "≥ 1.0× (time ≤ reference)",
               ratio_target(False))


class SkopeoPushPull(Scenario):
    """skopeo copy from an OCI layout to a new repository, then back into a new layout."""

    name = "skopeo"
    title = "skopeo push/pull, 5 × 16 MiB"
    rows = [_time_rows("skopeo push"), _time_rows("skopeo pull")]

    def setup(self, bench: Bench) -> None:
        self.layout = bench.work / "layout-skopeo"
        layers: list[Layer] = [random_layer(LAYER_SIZE, f"sk{i}") for i in range(LAYERS)]
        write_layout(self.layout, {"app": layers})

    def rep(self, bench: Bench, rep: int) -> None:
        # A fresh namespace per repetition: dockyard's customer-wide dedup would otherwise
        # answer every HEAD from the previous repetition's push.
        repo = f"sk{rep}/app"
        for target in bench.order(rep):
            with bench.measure("skopeo push", target) as m:
                t0 = time.monotonic()
                skopeo_copy(f"oci:{self.layout}:app", f"docker://{target.host}/{repo}:v1")
                m["seconds"] = time.monotonic() - t0
        for target in bench.order(rep):
            dest = bench.work / f"pull-{target.name}-{rep}"
            with bench.measure("skopeo pull", target) as m:
                t0 = time.monotonic()
                skopeo_copy(f"docker://{target.host}/{repo}:v1", f"oci:{dest}:app")
                m["seconds"] = time.monotonic() - t0
            shutil.rmtree(dest, ignore_errors=True)


def rmi(engine: DockerDaemon, image: str) -> None:
    image_id = engine.cli("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
    engine.cli("rmi", "-f", image_id)


def docker_push_pull(bench: Bench, engine: DockerDaemon, local: str, order: list[Target],
                     repo: str, phases: tuple[str, str], mib: float | None = None) -> None:
    """Tag `local` for each target, push to each in `order`, remove it from the engine, pull
    from each: "seconds" per phase (and "mib_s" when the image's size `mib` is given)."""
    refs = {t.name: f"{t.host}/{repo}:v1" for t in order}
    for ref in refs.values():
        engine.cli("tag", local, ref)
    for phase in phases:
        if phase == phases[1]:
            rmi(engine, local)
        for target in order:
            with bench.measure(phase, target) as m:
                t0 = time.monotonic()
                engine.cli("push" if phase == phases[0] else "pull", refs[target.name])
                m["seconds"] = time.monotonic() - t0
                if mib is not None:
                    m["mib_s"] = mib / m["seconds"]
            if phase == phases[1]:
                rmi(engine, refs[target.name])


class DockerPushPull(Scenario):
    """`docker push` of a freshly built image, then `docker rmi` + `docker pull`."""

    name = "docker"
    title = "docker push/pull, 5 × 16 MiB (+ busybox base)"
    rows = [_time_rows("docker push"), _time_rows("docker pull")]

    def setup(self, bench: Bench) -> None:
        if os.geteuid() != 0 or not os.path.exists("/usr/sbin/dockerd"):
            raise Skip("needs root and /usr/sbin/dockerd")
        self.engine = DockerDaemon(bench.work / "dockerd", name="bench")
        self.engine.start()
        bench.client_pids.append(self.engine.proc.pid)  # type: ignore[union-attr]
        self.engine.import_busybox("bench-base:1")
        # One image per repetition: the engine remembers which blobs it pushed where and
        # would mount them instead of uploading a second time.
        self.images: list[str] = []
        for rep in range(bench.reps):
            layers = [os.urandom(LAYER_SIZE - 4096) for _ in range(LAYERS)]
            tag = f"bench-app:{rep}"
            self.engine.build_layers("bench-base:1", tag, layers)
            self.images.append(tag)

    def rep(self, bench: Bench, rep: int) -> None:
        docker_push_pull(bench, self.engine, self.images[rep], bench.order(rep), f"dk{rep}/app",
                         ("docker push", "docker pull"))

    def teardown(self, bench: Bench) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            if engine.proc is not None and engine.proc.pid in bench.client_pids:
                bench.client_pids.remove(engine.proc.pid)
            engine.stop()
            remove_cgroup(f"dy-{engine.name}-{os.getpid()}")
