"""The benchmark runner's model: rows (what is reported), samples, and the measuring context.

A scenario measures one *phase* against one target inside `Bench.measure`, which also records
the CPU seconds the server tree and the load generator used during that phase.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import procs
from .servers import DOCKYARD, REFERENCE, Target

MiB = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class Row:
    """One reported metric of one phase."""

    phase: str  # e.g. "skopeo push"
    key: str  # key in the values a phase measures, e.g. "seconds"
    label: str  # e.g. "time (s)"
    higher_is_better: bool
    # The target: a ratio bound ("ratio") or an absolute check of dockyard's median.
    target: str = ""
    check: Callable[[float, float | None], bool] | None = None  # (dockyard, reference) -> ok
    # What the two columns hold: by default dockyard's and the reference's samples of `phase`.
    # A row may compare other sides, e.g. dockyard against the raw object store ("raw", from
    # the phase "S3 raw PUT"), a second dockyard configuration against the first, or a phase
    # under attack against the same phase without it; `check` then gets (left, right).
    left: str = DOCKYARD
    right: str = REFERENCE
    right_phase: str | None = None  # default: `phase`

    @property
    def default_sides(self) -> bool:
        return self.left == DOCKYARD and self.right == REFERENCE and self.right_phase is None

    @property
    def sides_label(self) -> str:
        right = self.right if self.right_phase is None else f"{self.right}: {self.right_phase}"
        return f"{self.left} vs {right}"


def ratio_target(row_higher: bool, bound: float = 1.0) -> Callable[[float, float | None], bool]:
    """dockyard/reference ≥ bound (higher is better) or ≤ bound (lower is better)."""

    def check(dy: float, ref: float | None) -> bool:
        if ref is None or ref == 0:
            return False
        return dy / ref >= bound if row_higher else dy / ref <= bound

    return check


def alternate(items: list[T], rep: int) -> list[T]:
    """`items` in even repetitions, reversed in odd ones (as `Bench.order` does for two)."""
    return list(items) if rep % 2 == 0 else list(items)[::-1]


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=lambda: {DOCKYARD: [], REFERENCE: []})

    def add(self, target: str, value: float) -> None:
        self.values.setdefault(target, []).append(value)


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


class Skip(Exception):
    """A scenario that cannot run here; the message goes into the report."""


@dataclass
class Bench:
    targets: dict[str, Target]
    work: Path
    results_dir: Path
    reps: int
    quick: bool
    load_seconds: float
    profiler: object | None = None  # bench.profile.Profiler when --profile
    samples: dict[tuple[str, str], Samples] = field(default_factory=dict)
    cpu: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Long-lived client-side daemons (dockerd) whose CPU counts as load generator.
    client_pids: list[int] = field(default_factory=list)
    # Inputs shared by several scenarios (the fixture image), made once.
    shared: dict[str, object] = field(default_factory=dict)
    # How the run's dockyard was started, for scenarios that start their own (S3, auth, …):
    # `--dockyard-args` and the base config text (quiet logs), and whether logs are quiet.
    dockyard_args: list[str] = field(default_factory=list)
    dockyard_config: str = ""
    quiet_logs: bool = False

    def order(self, rep: int) -> list[Target]:
        """Alternate which registry goes first, so warm caches and drift favour neither."""
        pair = [self.targets[DOCKYARD], self.targets[REFERENCE]]
        return pair if rep % 2 == 0 else pair[::-1]

    def record(self, phase: str, target: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.samples.setdefault((phase, key), Samples()).add(target, value)

    def _client_cpu(self) -> float:
        return procs.self_cpu_seconds() + sum(procs.tree_cpu_seconds(p) for p in self.client_pids)

    @contextlib.contextmanager
    def measure(self, phase: str, target: Target) -> Iterator[dict[str, float]]:
        """Yield a dict the phase fills with its metrics; record them and the CPU used."""
        values: dict[str, float] = {}
        server0, client0 = procs.tree_cpu_seconds(target.pid), self._client_cpu()
        prof = (
            self.profiler.attach(phase, target)  # type: ignore[attr-defined]
            if self.profiler is not None and target.name == DOCKYARD
            else contextlib.nullcontext()
        )
        t0 = time.monotonic()
        with prof:
            yield values
        wall = time.monotonic() - t0
        server = procs.tree_cpu_seconds(target.pid) - server0
        client = self._client_cpu() - client0
        self.record(phase, target.name, values)
        cpu = self.cpu.setdefault(phase, {}).setdefault(
            target.name, {"server_s": [], "client_s": [], "wall_s": []}
        )
        cpu["server_s"].append(server)
        cpu["client_s"].append(client)
        cpu["wall_s"].append(wall)


class Scenario:
    """A group of phases measured against both registries, `Bench.reps` times."""

    name = ""
    title = ""
    rows: list[Row] = []
    max_reps: int | None = None  # fewer repetitions where one run costs much and varies little

    def setup(self, bench: Bench) -> None:
        """Once, before any measurement (generate inputs, seed both registries)."""

    def rep(self, bench: Bench, rep: int) -> None:
        raise NotImplementedError

    def teardown(self, bench: Bench) -> None:
        """Once, even after a failure."""
