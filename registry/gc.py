"""Online mark-and-sweep garbage collection across every customer and the global blob index.

It runs while the registry serves pushes, on any node. Safety rests on three rules:
- nothing newer than the grace period is collected, and the registry refreshes a link's or an
  index row's timestamp whenever it tells a client "you already have this" (blob HEAD, mount,
  a manifest's reference), so a push in flight is always inside the grace period;
- every delete re-checks its condition in the same statement or transaction (still
  unreferenced, still old), so a push that lands between mark and sweep keeps what it needs;
- one collector at a time across the cluster: the `gc` lease in the state store.

Roots: tagged manifests, untagged manifests younger than `untagged_age_seconds`, and the
`repo@digest` references that registered hooks report in use (the launcher's running and
rollback images); then, transitively, index children and referrers of kept manifests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field

from dockyard.core.leases import Leases

from .config import GcSettings, RegistrySettings
from .metadata import Metadata, Tenant
from .metadata.gc import Graph, Node
from .storage import BlobStore, UploadState

log = logging.getLogger("dockyard.gc")

InUseHook = Callable[[], Awaitable[set[str]]]
Progress = Callable[[str, int, int], None]

LEASE = "gc"
LEASE_TTL = 60.0


class GcBusy(Exception):
    pass


@dataclass
class GcReport:
    dry_run: bool = False
    customers: int = 0
    manifests_deleted: int = 0
    links_removed: int = 0
    blobs_released: int = 0
    objects_deleted: int = 0
    orphans_deleted: int = 0
    uploads_expired: int = 0
    bytes_freed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class GarbageCollector:
    def __init__(
        self,
        settings: RegistrySettings,
        gc: GcSettings,
        store: BlobStore,
        meta: Metadata,
        leases: Leases,
        hooks: list[InUseHook] | None = None,
    ) -> None:
        self.settings = settings
        self.gc = gc
        self.store = store
        self.meta = meta
        self.leases = leases
        self.hooks = hooks if hooks is not None else []
        self._held: set[str] = set()

    @contextlib.asynccontextmanager
    async def _lease(self) -> AsyncIterator[None]:
        if not await self.leases.acquire(LEASE, LEASE_TTL):
            raise GcBusy("another garbage collection is running")

        async def renew() -> None:
            while True:
                await asyncio.sleep(LEASE_TTL / 3)
                await self.leases.acquire(LEASE, LEASE_TTL)

        keeper = asyncio.create_task(renew())
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
            with contextlib.suppress(Exception):
                await self.leases.release(LEASE)

    async def run(
        self,
        *,
        dry_run: bool = False,
        customer: str | None = None,
        progress: Progress | None = None,
    ) -> GcReport:
        async with self._lease():
            return await self._run(dry_run, customer, progress)

    async def _run(self, dry_run: bool, only: str | None, progress: Progress | None) -> GcReport:
        started = time.monotonic()
        report = GcReport(dry_run=dry_run)
        now = time.time()
        cutoff = now - self.gc.grace_seconds
        age = self.gc.untagged_age_seconds
        untagged_cutoff = now - age if age else None
        in_use: set[str] = set()
        for hook in self.hooks:
            try:
                in_use |= await hook()
            except Exception as exc:  # a broken hook must not make GC delete what it protects
                raise RuntimeError(f"GC in-use hook failed, nothing collected: {exc}") from exc

        tenants = await self.meta.tenants.all()
        if only:
            tenants = [t for t in tenants if t.name == only]
        released: dict[int, set[str]] = {}
        # Objects that live upload sessions hold (S3: the bytes kept between two PATCHes, or a
        # whole small blob before its commit): not orphans, however old.
        self._held = set()
        total = len(tenants) + (0 if only else 1)
        for i, tenant in enumerate(tenants):
            if progress:
                progress(tenant.name, i, total)
            released[tenant.id] = await self._sweep_tenant(
                tenant, report, dry_run, cutoff, untagged_cutoff, in_use, now
            )
            report.customers += 1
        if not only:
            if progress:
                progress("blob index", len(tenants), total)
            await self._sweep_index(report, dry_run, cutoff, released)
        if progress:
            progress("done", total, total)
        report.seconds = round(time.monotonic() - started, 3)
        log.info("gc finished: %s", report.as_dict())
        return report

    async def _sweep_tenant(
        self,
        tenant: Tenant,
        report: GcReport,
        dry_run: bool,
        cutoff: float,
        untagged_cutoff: float | None,
        in_use: set[str],
        now: float,
    ) -> set[str]:
        """Sweep one tenant; return the digests it no longer holds (even in a dry run)."""
        expiry = now - self.settings.upload_expiry_seconds
        for upload in await self.meta.uploads.all(tenant):
            state = UploadState(upload.id, upload.offset, upload.driver)
            if upload.updated_at >= expiry:
                self._held |= self.store.session_keys(state)
                continue
            report.uploads_expired += 1
            if not dry_run:
                if not await self._committed(state):
                    await self.store.abort_upload(state)
                async with self.meta.db.transaction() as tx:
                    await self.meta.uploads.delete(tx, tenant, upload.id)

        doomed: set[Node] = set()
        if untagged_cutoff is not None:
            doomed = unreachable(await self.meta.gc.graph(tenant), untagged_cutoff, in_use)
        swept = await self.meta.gc.sweep(
            tenant, doomed, cutoff, untagged_cutoff or 0.0, dry_run
        )
        report.manifests_deleted += swept.manifests
        report.links_removed += swept.links
        report.blobs_released += len(swept.released)
        return set(swept.released)

    async def _sweep_index(
        self, report: GcReport, dry_run: bool, cutoff: float, released: dict[int, set[str]]
    ) -> None:
        queries = self.meta.gc
        candidates = await queries.unheld_index_rows(cutoff)
        if dry_run:
            # What the rolled-back tenant sweeps would have let go, where nobody else holds it.
            seen = {digest for digest, _, _ in candidates}
            for digest in set().union(*released.values()) - seen:
                holders = await queries.holders(digest)
                if all(digest in released.get(t, set()) for t in holders):
                    row = await queries.index_row(digest)
                    if row is not None and row[2] < cutoff:
                        candidates.append((digest, row[0], row[1]))
            for _digest, _key, size in candidates:
                report.objects_deleted += 1
                report.bytes_freed += size
        else:
            for digest, _key, size in candidates:
                key = await queries.remove_index_row(digest, cutoff)
                if key is not None:
                    await self.store.delete_blob(key)
                    report.objects_deleted += 1
                    report.bytes_freed += size
        # Objects a crash left between storage commit and index insert.
        known = await self.meta.index.keys()
        async for key, mtime in self.store.list_blob_keys():
            # Re-read just before deleting: a commit may have recorded the key since `known`
            # (an S3 multipart object is dated by the start of its upload, not its end).
            if key in self._held:
                continue
            if key not in known and mtime < cutoff and not await self.meta.index.has_key(key):
                report.orphans_deleted += 1
                if not dry_run:
                    await self.store.delete_blob(key)
        # Upload data whose session row is gone (crash between the two writes).
        live = await queries.upload_ids()
        expiry = time.time() - self.settings.upload_expiry_seconds
        async for upload_id, mtime in self.store.list_uploads():
            if upload_id not in live and mtime < min(expiry, cutoff):
                report.uploads_expired += 1
                if not dry_run:
                    await self.store.abort_upload(UploadState(upload_id))


    async def _committed(self, state: UploadState) -> bool:
        """A session whose commit reached the index (a crash left its row): its objects are
        a blob now, not upload data to abort."""
        for key in self.store.session_keys(state):
            if await self.meta.index.has_key(key):
                return True
        return False


def unreachable(graph: Graph, untagged_cutoff: float, in_use: set[str]) -> set[Node]:
    """Manifests no root reaches: roots are tagged, young or in-use manifests; index children
    and referrers of kept manifests are kept too."""
    kept: set[Node] = set()
    for node, (repo, created_at) in graph.manifests.items():
        if node in graph.tagged or created_at >= untagged_cutoff or f"{repo}@{node[1]}" in in_use:
            kept.add(node)
    frontier = list(kept)
    while frontier:
        node = frontier.pop()
        for child in graph.children.get(node, ()):
            if child in graph.manifests and child not in kept:
                kept.add(child)
                frontier.append(child)
        for referrer in graph.referrers.get(node, ()):
            if referrer not in kept:
                kept.add(referrer)
                frontier.append(referrer)
    return set(graph.manifests) - kept
