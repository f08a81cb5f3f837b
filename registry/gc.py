"""Online mark-and-sweep garbage collection across every customer and the global blob index.

It runs while the registry serves pushes. Safety rests on three rules rather than a lock:
- nothing newer than the grace period is collected, and the registry refreshes a link's or an
  index row's timestamp whenever it tells a client "you already have this" (blob HEAD, mount,
  a manifest's reference), so a push in flight is always inside the grace period;
- every delete re-checks its condition in the same SQL statement (still unreferenced, still
  old), so a push that lands between mark and sweep keeps what it needs;
- one collector at a time (a lock file), across processes.

Roots: tagged manifests, untagged manifests younger than `untagged_age_seconds`, and the
`repo@digest` references that registered hooks report in use (the launcher's running and
rollback images); then, transitively, index children and referrers of kept manifests.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

from .metadata import CustomerMeta
from .service import Registry
from .storage import UploadState

log = logging.getLogger("dockyard.gc")

InUseHook = Callable[[], Awaitable[set[str]]]
Progress = Callable[[str, int, int], None]


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
    def __init__(self, registry: Registry, hooks: list[InUseHook] | None = None) -> None:
        self.registry = registry
        self.hooks = hooks if hooks is not None else []

    async def run(
        self,
        *,
        dry_run: bool = False,
        customer: str | None = None,
        progress: Progress | None = None,
    ) -> GcReport:
        lock_path = self.registry.meta.root.parent / "gc.lock"
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GcBusy("another garbage collection is running") from None
            return await self._run(dry_run, customer, progress)

    async def _run(self, dry_run: bool, only: str | None, progress: Progress | None) -> GcReport:
        started = time.monotonic()
        report = GcReport(dry_run=dry_run)
        settings = self.registry.gc
        now = time.time()
        cutoff = now - settings.grace_seconds
        untagged_cutoff = (
            now - settings.untagged_age_seconds if settings.untagged_age_seconds else None
        )
        in_use: set[str] = set()
        for hook in self.hooks:
            try:
                in_use |= await hook()
            except Exception as exc:  # a broken hook must not make GC delete what it protects
                raise RuntimeError(f"GC in-use hook failed, nothing collected: {exc}") from exc

        customers = [only] if only else self.registry.meta.customers()
        released: dict[str, set[str]] = {}
        total = len(customers) + (0 if only else 1)
        for i, name in enumerate(customers):
            if progress:
                progress(name, i, total)
            meta = await self.registry.meta.customer(name)
            released[name] = await self._sweep_customer(
                meta, report, dry_run, cutoff, untagged_cutoff, in_use, now
            )
            report.customers += 1
        if not only:
            if progress:
                progress("blob index", len(customers), total)
            await self._sweep_index(report, dry_run, cutoff, released)
        if progress:
            progress("done", total, total)
        report.seconds = round(time.monotonic() - started, 3)
        log.info("gc finished: %s", report.as_dict())
        return report

    async def _sweep_customer(
        self,
        meta: CustomerMeta,
        report: GcReport,
        dry_run: bool,
        cutoff: float,
        untagged_cutoff: float | None,
        in_use: set[str],
        now: float,
    ) -> set[str]:
        """Sweep one customer; return the digests it no longer holds (even in a dry run)."""
        expiry = now - self.registry.settings.upload_expiry_seconds
        for upload in await meta.uploads():
            if upload.updated_at < expiry:
                report.uploads_expired += 1
                if not dry_run:
                    await self.registry.store.abort_upload(
                        UploadState(upload.id, upload.offset, upload.driver)
                    )
                    await meta.delete_upload(upload.id)

        doomed = await self._unreachable_manifests(meta, untagged_cutoff, in_use)
        manifests, links, released = await meta.gc_sweep(
            doomed, cutoff, untagged_cutoff or 0.0, dry_run
        )
        report.manifests_deleted += manifests
        report.links_removed += links
        report.blobs_released += len(released)
        return set(released)

    async def _unreachable_manifests(
        self, meta: CustomerMeta, untagged_cutoff: float | None, in_use: set[str]
    ) -> set[tuple[int, str]]:
        if untagged_cutoff is None:
            return set()
        manifests, tagged, children, subjects = await meta.gc_graph()
        kept: set[tuple[int, str]] = set()
        for (repo_id, digest), (repo, created_at) in manifests.items():
            if (
                (repo_id, digest) in tagged
                or created_at >= untagged_cutoff
                or f"{repo}@{digest}" in in_use
            ):
                kept.add((repo_id, digest))
        frontier = list(kept)
        while frontier:
            node = frontier.pop()
            for child in children.get(node, ()):
                if child in manifests and child not in kept:
                    kept.add(child)
                    frontier.append(child)
            for referrer in subjects.get(node, ()):
                if referrer not in kept:
                    kept.add(referrer)
                    frontier.append(referrer)
        return set(manifests) - kept

    async def _sweep_index(
        self, report: GcReport, dry_run: bool, cutoff: float, released: dict[str, set[str]]
    ) -> None:
        held: set[str] = set()
        for name in self.registry.meta.customers():
            digests = set((await (await self.registry.meta.customer(name)).held_blobs()).keys())
            if dry_run:  # what the rolled-back customer sweep would have let go
                digests -= released.get(name, set())
            held |= digests
        index = self.registry.meta.index
        store = self.registry.store
        for digest, _key, size, used_at in await index.all():
            if digest in held or used_at >= cutoff:
                continue
            if dry_run:
                report.objects_deleted += 1
                report.bytes_freed += size
                continue
            key = await index.remove_if_unused_since(digest, cutoff)
            if key is not None:
                await store.delete_blob(key)
                report.objects_deleted += 1
                report.bytes_freed += size
        # Objects a crash left between storage commit and index insert.
        known = {key for _, key, _, _ in await index.all()}
        async for key, mtime in store.list_blob_keys():
            # Re-read just before deleting: a commit may have recorded the key since `known`
            # (an S3 multipart object is dated by the start of its upload, not its end).
            if key not in known and mtime < cutoff and not await index.has_key(key):
                report.orphans_deleted += 1
                if not dry_run:
                    await store.delete_blob(key)
        # Upload data whose session row is gone (crash between the two writes).
        live: set[str] = set()
        for name in self.registry.meta.customers():
            live |= {u.id for u in await (await self.registry.meta.customer(name)).uploads()}
        expiry = time.time() - self.registry.settings.upload_expiry_seconds
        async for upload_id, mtime in store.list_uploads():
            if upload_id not in live and mtime < min(expiry, cutoff):
                report.uploads_expired += 1
                if not dry_run:
                    await store.abort_upload(UploadState(upload_id))
