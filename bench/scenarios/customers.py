"""500 customers as fast as one (issue 14): manifest GET req/s on one customer's repository and
spread over 500 customers' repositories, dockyard against the reference registry in one run.

Each customer `cNNN` holds one small image of its own (`cNNN/app:1`: config, one 8 KiB layer,
manifest), pushed over raw HTTP. wrk (64 connections) asks for `c000/app:1` only, then round
robin for all 500 manifests — both through the same Lua request function, so the client does
the same work per request.

dockyard runs in one or more configurations (`VARIANTS`; `--pg` adds PostgreSQL metadata from
a private cluster the bench starts), each a fresh server beside a fresh reference registry, so
that no other scenario's repositories are in their catalogs and these 500 customers are in no
one else's. Adding a configuration is one `DockyardVariant(...)` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ..core import Bench, Row, Scenario, alternate, ratio_target
from ..images import MANIFEST_TYPE, Blob, image_config, manifest, random_layer
from ..servers import DOCKYARD, ROOT, Target, dockyard, reference
from ..wrk import run_wrk
from .load import ACCEPT

CUSTOMERS = 500
REPO = "c{:03d}/app"
TAG = "1"
ONE = "manifest GET, 1 customer ×64"
SPREAD = f"manifest GET, {CUSTOMERS} customers ×64"
RATIO = f"manifest GET: {CUSTOMERS} customers / 1 customer"
SEED = f"seed: {CUSTOMERS} customers ×16"
SPREAD_BOUND = 0.8


@dataclass(frozen=True)
class DockyardVariant:
    """One dockyard configuration measured in this scenario."""

    name: str  # its side in the report ("dockyard" is the embedded default)
    config: str = ""  # TOML appended to the run's dockyard config
    extra_args: list[str] = field(default_factory=list)  # appended to --dockyard-args
    postgres: bool = False  # a private PostgreSQL cluster, and `[metadata] url` pointing at it
    vs_embedded: float | None = None  # target: one-customer rate ≥ this × the embedded one's


EMBEDDED = DockyardVariant(DOCKYARD)
POSTGRES = DockyardVariant("dockyard-pg", postgres=True, vs_embedded=0.7)
VARIANTS = [EMBEDDED]


def _rows(variants: list[DockyardVariant]) -> list[Row]:
    rows = [Row(SEED, "customers_s", "customers seeded/s (2 blobs + manifest each)", True)]
    for v in variants:
        rows += [
            Row(ONE, "rps", "requests/s", True, left=v.name),
            Row(SPREAD, "rps", "requests/s", True, "≥ 1.0× reference", ratio_target(True),
                left=v.name),
            Row(RATIO, "ratio", "spread rate / one-customer rate", True,
                f"≥ {SPREAD_BOUND} (dockyard column)",
                lambda dy, ref: dy >= SPREAD_BOUND, left=v.name),
        ]
        if v.vs_embedded is not None:
            rows.append(Row(ONE, "rps", "requests/s", True, f"≥ {v.vs_embedded}× embedded",
                            ratio_target(True, v.vs_embedded), left=v.name, right=DOCKYARD))
    rows += [Row(phase, key, label, False, left=DOCKYARD) for phase in (ONE, SPREAD)
             for key, label in (("p50_ms", "p50 latency (ms)"), ("p99_ms", "p99 latency (ms)"))]
    return rows


def customer_images(n: int) -> list[tuple[str, Blob, Blob, Blob]]:
    """(repository, config, layer, manifest) per customer; every image is different."""
    out = []
    for i in range(n):
        layer = random_layer(8192, f"c{i:03d}")
        config = image_config([layer])
        out.append((REPO.format(i), config, layer.blob, manifest(config, [layer.blob])))
    return out


async def push_images(base: str, images: list[tuple[str, Blob, Blob, Blob]],
                      concurrency: int = 16) -> float:
    """Monolithic POST + PUT of each blob, then the manifest by tag; customers/s."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=120),
    ) as session:
        queue = iter(images)

        async def check(resp: aiohttp.ClientResponse, status: int, what: str) -> None:
            if resp.status != status:
                raise RuntimeError(f"{what} -> {resp.status} {(await resp.text())[:300]}")

        async def worker() -> None:
            for repo, config, layer, man in queue:
                for b in (config, layer):
                    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
                        await check(resp, 202, f"POST upload {repo}")
                        location = resp.headers["Location"]
                    url = location if location.startswith("http") else base + location
                    sep = "&" if "?" in url else "?"
                    async with session.put(f"{url}{sep}digest={b.digest}", data=b.data,
                                           headers={"Content-Type": "application/octet-stream"},
                                           ) as resp:
                        await check(resp, 201, f"PUT blob {repo}")
                async with session.put(f"{base}/v2/{repo}/manifests/{TAG}", data=man.data,
                                       headers={"Content-Type": MANIFEST_TYPE}) as resp:
                    await check(resp, 201, f"PUT manifest {repo}:{TAG}")

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(images) / (time.monotonic() - t0)


def check_config(config_text: str, workdir: Path) -> str:
    """`dockyard check-config` on the text: "" when valid, else what it says."""
    path = workdir / f"check-{time.monotonic_ns()}.toml"
    path.write_text(config_text)
    res = subprocess.run([sys.executable, "-m", "dockyard", "check-config", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    return "" if res.returncode == 0 else (res.stdout + res.stderr).strip()


class Customers(Scenario):
    name = "customers"
    title = f"manifest GET on 1 customer vs spread over {CUSTOMERS} customers, 64 connections"

    def __init__(self, extra_variants: list[DockyardVariant] | None = None) -> None:
        self.variants = [*VARIANTS, *(extra_variants or [])]
        self.rows = _rows(self.variants)

    def setup(self, bench: Bench) -> None:
        self._stack = contextlib.ExitStack()
        self.failures: dict[str, str] = {}  # variant -> why it did not run
        self.targets: list[Target] = []
        self.cluster = None
        for v in self.variants:
            try:
                self.targets.append(self._start(bench, v))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # also pytest's skip/fail from the shared helpers
                if v is self.variants[0]:
                    raise
                self.failures[v.name] = f"{type(exc).__name__}: {exc}"
        self.targets.append(self._stack.enter_context(reference(bench.quiet_logs)))
        images = customer_images(CUSTOMERS)
        self.one = [f"/v2/{REPO.format(0)}/manifests/{TAG}"]
        self.spread = [f"/v2/{REPO.format(i)}/manifests/{TAG}" for i in range(CUSTOMERS)]
        for target in alternate(self.targets, 0):
            with bench.measure("seed", target):
                rate = asyncio.run(push_images(target.url, images))
            bench.record(SEED, target.name, {"customers_s": rate})
            for path in (self.one[0], self.spread[-1]):
                body = _get(target.url + path)
                assert json.loads(body)["schemaVersion"] == 2
        for v in self.variants:
            if v.postgres and v.name not in self.failures:
                self._check_postgres_used(v)

    def _start(self, bench: Bench, v: DockyardVariant) -> Target:
        config = bench.dockyard_config + v.config
        if v.postgres:
            config += f'\n[metadata]\nurl = "{self._postgres_url()}"\n'
            problem = check_config(config, bench.work)
            if problem:
                raise RuntimeError(
                    f"dockyard does not accept this configuration yet, so {v.name} was not "
                    f"started (it would silently run on embedded metadata): {problem}")
        return self._stack.enter_context(dockyard(
            bench.work, [*bench.dockyard_args, *v.extra_args], config,
            name=f"{v.name}-customers", target_name=v.name))

    def _postgres_url(self) -> str:
        """A fresh database in the private cluster (started on first use)."""
        from tests.support.postgres import PostgresCluster

        if self.cluster is None:
            cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="dy-pg-", dir="/tmp")))
            self._stack.callback(cluster.stop)
            cluster.start()
            self.cluster = cluster
        return self.cluster.new_database()

    def _check_postgres_used(self, v: DockyardVariant) -> None:
        """The seeded customers must be in PostgreSQL, not in files under --data."""
        assert self.cluster is not None
        dbs = self.cluster.psql("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
        tables = sum(int(self.cluster.psql(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema')", db=db) or 0) for db in dbs.split())
        if tables == 0:
            self.failures[v.name] = ("dockyard started with [metadata] url but created no "
                                     "tables in PostgreSQL: its numbers are embedded metadata's")

    def rep(self, bench: Bench, rep: int) -> None:
        for phase, paths in alternate([(ONE, self.one), (SPREAD, self.spread)], rep):
            for target in alternate(self.targets, rep):
                with bench.measure(phase, target) as m:
                    r = run_wrk(target.url + "/", connections=64,
                                seconds=bench.load_seconds, headers={"Accept": ACCEPT},
                                paths=paths)
                    m.update(rps=r.rps, p50_ms=r.p50_ms, p99_ms=r.p99_ms)
                if r.status_errors or r.socket_errors:
                    bench.notes.append(f"{phase} on {target.name}: {r.status_errors} bad "
                                       f"statuses, {r.socket_errors} socket errors")
        for target in self.targets:
            one = bench.samples[(ONE, "rps")].values[target.name][-1]
            spread = bench.samples[(SPREAD, "rps")].values[target.name][-1]
            bench.record(RATIO, target.name, {"ratio": spread / one})
        if rep == bench.reps - 1 and self.failures:
            raise RuntimeError("; ".join(f"{k}: {v}" for k, v in self.failures.items()))

    def teardown(self, bench: Bench) -> None:
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()


def _get(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()
