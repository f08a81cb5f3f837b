"""Many small or parallel requests: concurrent blob GETs, manifest GET and blob HEAD,
tag list and catalog. wrk (GET) and ab (HEAD) generate the load; see bench/tools.py."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import aiohttp

from ..client import Client
from ..core import Bench, Row, Scenario, ratio_target
from ..images import MANIFEST_TYPE, Blob, Layer, tiny_image
from ..servers import REFERENCE
from ..tools import have_ab, run_ab_head
from ..wrk import run_wrk
from .dedup import push_image
from .transfer import LAYER_SIZE

ACCEPT = ", ".join([
    MANIFEST_TYPE,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
FIXTURE_REPO = "fixture/app"


def fixture(bench: Bench) -> list[Layer]:
    """A 2-layer image (16 MiB layers) pushed once to both registries as fixture/app:v1."""
    if "fixture" not in bench.shared:
        from ..images import random_layer

        layers = [random_layer(LAYER_SIZE, f"fixture{i}") for i in range(2)]
        for target in bench.targets.values():
            with Client(target.url) as client:
                push_image(client, FIXTURE_REPO, "v1", layers)
        bench.shared["fixture"] = layers
    return bench.shared["fixture"]  # type: ignore[return-value]


def _rate_rows(phase: str, unit_key: str, unit_label: str) -> list[Row]:
    return [
        Row(phase, unit_key, unit_label, True, "≥ 1.0×", ratio_target(True)),
        Row(phase, "p50_ms", "p50 latency (ms)", False),
        Row(phase, "p99_ms", "p99 latency (ms)", False),
    ]


def _check_get(url: str, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()


class BlobGet(Scenario):
    name = "blob-get"
    title = "concurrent blob downloads: 32 connections, 16 MiB blob (wrk)"
    rows = [Row("blob GET ×32", "mib_s", "throughput (MiB/s)", True, "≥ 1.0×",
                ratio_target(True))]

    def setup(self, bench: Bench) -> None:
        self.layer = fixture(bench)[0].blob

    def rep(self, bench: Bench, rep: int) -> None:
        for target in bench.order(rep):
            url = f"{target.url}/v2/{FIXTURE_REPO}/blobs/{self.layer.digest}"
            with bench.measure("blob GET ×32", target) as m:
                r = run_wrk(url, connections=32, seconds=bench.load_seconds)
                m["mib_s"] = r.mib_s
            if r.status_errors or r.socket_errors:
                bench.notes.append(f"blob GET on {target.name}: {r.status_errors} bad statuses, "
                                   f"{r.socket_errors} socket errors")


class SmallRequests(Scenario):
    name = "requests"
    title = "manifest GET (wrk) and blob HEAD (ab), 64 connections"
    rows = [*_rate_rows("manifest GET ×64", "rps", "requests/s"),
            *_rate_rows("blob HEAD ×64", "rps", "requests/s")]

    def setup(self, bench: Bench) -> None:
        self.layer = fixture(bench)[0].blob
        for target in bench.targets.values():
            body = _check_get(f"{target.url}/v2/{FIXTURE_REPO}/manifests/v1", {"Accept": ACCEPT})
            assert json.loads(body)["schemaVersion"] == 2

    def rep(self, bench: Bench, rep: int) -> None:
        for target in bench.order(rep):
            url = f"{target.url}/v2/{FIXTURE_REPO}/manifests/v1"
            with bench.measure("manifest GET ×64", target) as m:
                r = run_wrk(url, connections=64, seconds=bench.load_seconds,
                            headers={"Accept": ACCEPT})
                m.update(rps=r.rps, p50_ms=r.p50_ms, p99_ms=r.p99_ms)
            if r.status_errors or r.socket_errors:
                bench.notes.append(f"manifest GET on {target.name}: {r.status_errors} bad "
                                   f"statuses, {r.socket_errors} socket errors")
        if not have_ab():
            bench.notes.append("blob HEAD skipped: `ab` (Debian apache2-utils) is not installed")
            return
        for target in bench.order(rep):
            url = f"{target.url}/v2/{FIXTURE_REPO}/blobs/{self.layer.digest}"
            with bench.measure("blob HEAD ×64", target) as m:
                a = run_ab_head(url, connections=64, seconds=bench.load_seconds)
                m.update(rps=a.rps, p50_ms=a.p50_ms, p99_ms=a.p99_ms)
            if a.failed or a.non_2xx:
                bench.notes.append(f"blob HEAD on {target.name}: {a.failed} failed, "
                                   f"{a.non_2xx} non-2xx")


TAGS_REPO = "tags/app"
CATALOG_PREFIX = "catalog/r"
# Requests per registry that go through HTTP even where the reference is seeded by copying;
# they give the "seed" rows (manifest PUTs/s) for both.
HTTP_SAMPLE_TAGS = 500
HTTP_SAMPLE_REPOS = 100


async def put_manifests(
    base: str, puts: list[tuple[str, str]], body: Blob, media_type: str, concurrency: int = 16
) -> float:
    """PUT `body` as each (repository, tag); return requests/s."""
    headers = {"Content-Type": media_type}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=120),
    ) as session:
        queue = iter(puts)

        async def worker() -> None:
            for repo, tag in queue:
                async with session.put(f"{base}/v2/{repo}/manifests/{tag}", data=body.data,
                                       headers=headers) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"PUT {repo}:{tag} -> {resp.status} "
                                           f"{(await resp.text())[:300]}")

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(puts) / (time.monotonic() - t0)


def _copy_tree(src: Path, dests: list[Path]) -> None:
    """Copy a small directory of small files to many places (faster than copytree)."""
    files = [(p.relative_to(src), p.read_bytes()) for p in src.rglob("*") if p.is_file()]
    for dest in dests:
        for rel, data in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def clone_reference_tags(root: Path, repo: str, source_tag: str, tags: list[str]) -> None:
    """What a manifest PUT by tag leaves in distribution's filesystem layout, copied."""
    tag_dir = root / "docker/registry/v2/repositories" / repo / "_manifests/tags"
    _copy_tree(tag_dir / source_tag, [tag_dir / t for t in tags])


def clone_reference_repos(root: Path, source: str, names: list[str]) -> None:
    repos = root / "docker/registry/v2/repositories"
    _copy_tree(repos / source, [repos / n for n in names])


async def new_repos(base: str, names: list[str], config: Blob, layer: Blob, man: Blob,
                    concurrency: int = 16) -> float:
    """Each repository: mount the config and layer from TAGS_REPO, PUT the manifest as v1.

    (The reference's catalog only lists repositories with a `_layers` directory, so each
    needs real blobs.) Returns repositories/s."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=120),
    ) as session:
        queue = iter(names)

        async def worker() -> None:
            for repo in queue:
                for b in (config, layer):
                    async with session.post(
                        f"{base}/v2/{repo}/blobs/uploads/?mount={b.digest}&from={TAGS_REPO}"
                    ) as resp:
                        if resp.status != 201:
                            raise RuntimeError(f"mount into {repo} -> {resp.status}")
                async with session.put(f"{base}/v2/{repo}/manifests/v1", data=man.data,
                                       headers={"Content-Type": MANIFEST_TYPE}) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"PUT {repo}:v1 -> {resp.status}")

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(names) / (time.monotonic() - t0)


class Listing(Scenario):
    """Seeding goes through HTTP for dockyard. The reference takes a sample over HTTP (the seed
    rows) and the rest by copying the directories its PUTs create: its manifest PUT is as slow
    as dockyard's here, and seeding both over HTTP alone would take minutes."""

    name = "listing"
    title = "tag list and catalog, 16 connections (wrk)"

    def __init__(self, tags: int = 10_000, repos: int = 1_000) -> None:
        self.tags, self.repos = tags, repos
        self.tags_phase = f"tag list ({tags} tags)"
        self.page = min(1000, tags)
        self.page_phase = f"tag list page (n={self.page} of {tags})"
        self.catalog_phase = f"catalog ({repos} repos)"
        self.rows = [
            Row("seed: tag PUT ×16", "rps", "manifest PUTs/s", True),
            Row("seed: new repo ×16", "rps", "repositories/s (2 mounts + PUT)", True),
            *_rate_rows(self.tags_phase, "rps", "requests/s"),
            *_rate_rows(self.page_phase, "rps", "requests/s"),
            *_rate_rows(self.catalog_phase, "rps", "requests/s"),
        ]

    def setup(self, bench: Bench) -> None:
        config, layer, man = tiny_image()
        tag_names = [f"t{i:05d}" for i in range(self.tags)]
        repo_names = [f"{CATALOG_PREFIX}{i:04d}" for i in range(self.repos)]
        n_tags, n_repos = min(HTTP_SAMPLE_TAGS, self.tags), min(HTTP_SAMPLE_REPOS, self.repos)
        for target in bench.order(0):
            with Client(target.url) as client:
                for b in (config, layer):
                    client.push_blob(TAGS_REPO, b)
            with bench.measure("seed", target):
                tag_rate = asyncio.run(put_manifests(
                    target.url, [(TAGS_REPO, t) for t in tag_names[:n_tags]], man, MANIFEST_TYPE))
                repo_rate = asyncio.run(
                    new_repos(target.url, repo_names[:n_repos], config, layer, man))
                if target.name == REFERENCE:
                    clone_reference_tags(target.data_dir, TAGS_REPO, tag_names[0],
                                         tag_names[n_tags:])
                    clone_reference_repos(target.data_dir, repo_names[0], repo_names[n_repos:])
                else:
                    asyncio.run(put_manifests(
                        target.url, [(TAGS_REPO, t) for t in tag_names[n_tags:]], man,
                        MANIFEST_TYPE))
                    asyncio.run(new_repos(target.url, repo_names[n_repos:], config, layer, man))
            bench.record("seed: tag PUT ×16", target.name, {"rps": tag_rate})
            bench.record("seed: new repo ×16", target.name, {"rps": repo_rate})
            listed = json.loads(_check_get(f"{target.url}/v2/{TAGS_REPO}/tags/list"))
            if len(listed["tags"]) != self.tags:
                bench.notes.append(f"tag list on {target.name} returned {len(listed['tags'])} "
                                   f"of {self.tags} tags")
            cat = json.loads(_check_get(f"{target.url}/v2/_catalog?n={self.repos}"))
            names = [r for r in cat["repositories"] if r.startswith(CATALOG_PREFIX)]
            if len(cat["repositories"]) != self.repos or len(names) < self.repos - 20:
                bench.notes.append(f"catalog on {target.name} returned "
                                   f"{len(cat['repositories'])} repositories ({len(names)} "
                                   f"seeded) for n={self.repos}")

    def rep(self, bench: Bench, rep: int) -> None:
        # The tag list as skopeo or crane ask for it (no n: the whole list), one page of it,
        # and the catalog (the reference returns 100 repositories unless asked for more).
        for phase, path in ((self.tags_phase, f"/v2/{TAGS_REPO}/tags/list"),
                            (self.page_phase, f"/v2/{TAGS_REPO}/tags/list?n={self.page}"),
                            (self.catalog_phase, f"/v2/_catalog?n={self.repos}")):
            for target in bench.order(rep):
                with bench.measure(phase, target) as m:
                    r = run_wrk(target.url + path, connections=16, seconds=bench.load_seconds)
                    m.update(rps=r.rps, p50_ms=r.p50_ms, p99_ms=r.p99_ms)
                if r.status_errors or r.socket_errors:
                    bench.notes.append(f"{phase} on {target.name}: {r.status_errors} bad "
                                       f"statuses, {r.socket_errors} socket errors")
