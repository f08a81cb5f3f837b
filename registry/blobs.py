"""Blobs as a repository sees them: lookup with customer-wide dedup, download, mount, delete.

A blob is visible in repository R of customer C when R links it, or — with customer-wide
dedup — when the caller may pull some other repository of C that links it, unless the blob was
deleted from R explicitly (a tombstone wins: spec "Deleting Blobs"). Another customer's holdings
are never consulted before the bytes are verified, so their existence cannot show in status,
body or timing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from dockyard.core.errors import BlobUnknown, Unsupported
from dockyard.core.oci import customer_of, parse_digest

from .access import Access
from .config import GcSettings, RegistrySettings
from .metadata import Metadata, QuotaExceeded, Tenant
from .metrics import record_dedup
from .quotas import Quotas
from .storage import BlobSource, BlobStore

log = logging.getLogger("dockyard.registry")
# Duplicates of a blob another upload stored first are deleted in batches this long after the
# first of them, so no request's own timing carries the deletion (issue 22, finding 6).
DEFERRED_DELETE_SECONDS = 2.0


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    key: str
    # The repository whose link made the blob visible (another one: customer-wide dedup).
    holder: str = ""

    def deduplicated_for(self, repository: str) -> bool:
        return bool(self.holder) and self.holder != repository


class Blobs:
    def __init__(
        self,
        settings: RegistrySettings,
        gc: GcSettings,
        store: BlobStore,
        meta: Metadata,
        quotas: Quotas,
    ) -> None:
        self.settings = settings
        self.gc = gc
        self.store = store
        self.meta = meta
        self.quotas = quotas
        self._background: set[asyncio.Task[None]] = set()
        self._deferred: list[str] = []  # duplicate objects to delete in the next batch
        self._sweeper: asyncio.Task[None] | None = None

    def customer(self, name: str) -> str:
        return customer_of(name, self.settings.default_customer)

    async def find(self, name: str, digest: str, access: Access) -> BlobInfo | None:
        """The blob as seen from repository `name` by this caller, or None."""
        tenant = await self.meta.tenants.find(self.customer(name))
        if tenant is None:
            return None  # a read never creates a customer
        links = self.meta.links
        link = None
        holder = name
        repo_id = await self.meta.tenants.repo_id(tenant, name)
        if repo_id is not None:
            found = await links.in_repo(tenant, repo_id, digest)
            if found is False:
                return None  # deleted from this repository: 404 here whoever else holds it
            link = found
        if link is None and self.settings.customer_dedup:
            for candidate in await links.holders(tenant, digest):
                if await access.can(candidate.repository, "pull"):
                    link, holder = candidate, candidate.repository
                    break
        if link is None:
            return None
        located = await self.meta.index.lookup(digest)
        if located is None:
            return None
        if link.linked_at < time.time() - self.gc.grace_seconds / 2:
            # The caller may now skip the upload: keep GC off this link for the push.
            await links.touch(tenant, holder, digest)
        return BlobInfo(digest, link.size, located[0], holder)

    async def stat(self, name: str, digest: str, access: Access) -> BlobInfo:
        parse_digest(digest)
        info = await self.find(name, digest, access)
        if info is None:
            raise BlobUnknown("blob unknown to registry", detail={"digest": digest})
        return info

    async def open(self, info: BlobInfo, start: int, end: int) -> BlobSource:
        return await self.store.open_blob(info.key, info.size, start, end)

    async def delete(self, name: str, digest: str, access: Access) -> None:
        """Delete the blob from repository `name`: from now on it answers 404 there, even if
        other repositories of the customer hold it, until it is linked into `name` again."""
        if not self.settings.delete_enabled:
            raise Unsupported("deletion is disabled")
        parse_digest(digest)
        if await self.find(name, digest, access) is None:
            raise BlobUnknown("blob unknown to registry", detail={"digest": digest})
        tenant = await self.meta.tenants.ensure(self.customer(name))
        async with self.meta.db.transaction() as tx:
            repo_id = await self.meta.tenants.ensure_repo(tx, tenant, name)
            await self.meta.links.tombstone(tx, tenant, repo_id, digest)

    async def mount(
        self, name: str, digest: str, from_name: str | None, access: Access
    ) -> BlobInfo | None:
        """Link an existing blob into `name` if the caller could already pull it; else None."""
        parse_digest(digest)
        info: BlobInfo | None = None
        if from_name and self.customer(from_name) != self.customer(name):
            # Another customer's repository: only when the caller may pull it (e.g. public).
            if await access.can(from_name, "pull"):
                info = await self._from_other_customer(from_name, digest)
        if info is None:
            info = await self.find(name, digest, access)
        if info is None:
            return None
        if info.deduplicated_for(name):
            record_dedup(info.size)
        tenant = await self.meta.tenants.ensure(self.customer(name))
        await self.link(tenant, name, [(digest, info.size)])
        return info

    async def _from_other_customer(self, from_name: str, digest: str) -> BlobInfo | None:
        other = await self.meta.tenants.find(self.customer(from_name))
        if other is None:
            return None
        repo_id = await self.meta.tenants.repo_id(other, from_name)
        if repo_id is None:
            return None
        link = await self.meta.links.in_repo(other, repo_id, digest)
        if not link:
            return None
        key = await self.meta.index.touch(digest)
        return BlobInfo(digest, link.size, key) if key else None

    async def link(self, tenant: Tenant, name: str, blobs: list[tuple[str, int]]) -> None:
        quota = await self.quotas.of(tenant)
        try:
            async with self.meta.db.transaction() as tx:
                await self.meta.links.check_quota(tx, tenant, quota, blobs)
                repo_id = await self.meta.tenants.ensure_repo(tx, tenant, name)
                await self.meta.links.link(tx, tenant, repo_id, blobs)
        except QuotaExceeded as exc:
            raise self.quotas.denied(exc, tenant) from None

    async def keep_one(self, digest: str, key: str, size: int) -> str:
        """Record a freshly stored object for `digest`, or drop it when one is recorded already
        (another upload of the same bytes, by any customer, committed first).

        The duplicate is deleted later, in a batch, not by this request: deleting it inline
        made a commit slower exactly when another customer held the bytes, and even a deletion
        started as the response went out still showed in its timing (tests/test_hardening_timing).
        """
        kept = await self.meta.index.add(digest, key, size)
        if kept != key:
            self.later(key)
        return kept

    def later(self, key: str) -> None:
        """Delete stored object `key` in the next batch, DEFERRED_DELETE_SECONDS from now."""
        self._deferred.append(key)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_after_delay())
            self._background.add(self._sweeper)
            self._sweeper.add_done_callback(self._background.discard)

    async def _sweep_after_delay(self) -> None:
        await asyncio.sleep(DEFERRED_DELETE_SECONDS)
        await self._sweep()

    async def _sweep(self) -> None:
        while self._deferred:
            key = self._deferred.pop()
            try:
                await self.store.delete_blob(key)
            except Exception:
                log.warning("background storage cleanup failed (GC will retry)", exc_info=True)

    async def drain(self) -> None:
        """Delete what is pending now and wait for background work (shutdown)."""
        if self._sweeper is not None and not self._sweeper.done():
            self._sweeper.cancel()
        await self._sweep()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
