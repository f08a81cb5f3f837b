"""The registry's domain: blobs, uploads, manifests, tags and referrers of every customer.

HTTP handlers are thin wrappers over this class; it raises ApiError subclasses and never
formats a response. Access decisions that reveal content (customer-wide dedup, mounts, the
blobs a manifest may reference) go through the caller's `Access`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dockyard.core.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    Denied,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RangeNotSatisfiable,
    SizeInvalid,
    Unsupported,
)
from dockyard.core.oci import ALGORITHMS, check_tag, customer_of, digest_of, is_digest, parse_digest

from .access import Access
from .config import GcSettings, RegistrySettings
from .manifests import ParsedManifest, parse_manifest
from .metadata import CustomerMeta, ManifestRecord, MetadataStore, NewManifest, UploadRecord
from .metadata.customer import QuotaExceeded
from .metrics import DEDUP_BYTES, DEDUP_SKIPS
from .storage import BlobSource, BlobStore, UploadState


@dataclass(frozen=True)
class Origin:
    """Who asked, as recorded in events."""

    request_id: str = ""
    addr: str = ""
    host: str = ""
    method: str = ""
    useragent: str = ""
    subject: str | None = None


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    key: str
    # The repository whose link made the blob visible (another one: customer-wide dedup).
    holder: str = ""

    def count_dedup(self, repository: str) -> None:
        if self.holder and self.holder != repository:
            DEDUP_SKIPS.inc()
            DEDUP_BYTES.inc(self.size)


@dataclass(frozen=True)
class Change:
    """A manifest pushed or deleted, handed to listeners (events, launcher, caches)."""

    action: str  # "push" | "delete"
    customer: str
    repository: str
    digest: str
    media_type: str
    size: int
    tag: str | None
    origin: Origin


@dataclass
class PushedManifest:
    digest: str
    parsed: ParsedManifest
    tags: list[str] = field(default_factory=list)


Listener = Callable[[Change], Awaitable[None]]


def upload_location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def upload_range(offset: int) -> str:
    # spec: "Range: 0-<end-of-range>", the last byte written; an empty session reports 0-0
    # as the reference registry does.
    return f"0-{max(offset - 1, 0)}"


class Registry:
    def __init__(
        self,
        settings: RegistrySettings,
        store: BlobStore,
        meta: MetadataStore,
        *,
        gc: GcSettings | None = None,
        quotas: dict[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.meta = meta
        self.gc = gc or GcSettings()
        # Quotas from the config file; one set with `dockyard quota` (in the customer's DB) wins.
        self.quotas = quotas or {}
        self.listeners: list[Listener] = []
        # Upload id -> (offset, running hash). A miss (restart, another worker) re-hashes the
        # bytes already stored; hash state is never serialised.
        self._hashers: dict[str, tuple[int, Any]] = {}
        self._upload_locks: dict[str, asyncio.Lock] = {}
        self._tags_cache: dict[str, tuple[int | None, bytes]] = {}

    # Helpers

    def customer(self, name: str) -> str:
        return customer_of(name, self.settings.default_customer)

    async def _meta(self, name: str) -> CustomerMeta:
        return await self.meta.customer(self.customer(name))

    async def _notify(self, change: Change) -> None:
        for listener in self.listeners:
            await listener(change)

    # Blobs

    async def find_blob(self, name: str, digest: str, access: Access) -> BlobInfo | None:
        """The blob as seen from repository `name` by this caller, or None.

        Linked into `name`: found. Otherwise, with customer-wide dedup, found when the caller
        may pull some repository of the same customer that holds it. Another customer's blobs
        are never looked at, so their existence cannot show in status, body or timing.
        """
        if not self.meta.exists(self.customer(name)):
            return None  # a read never creates a customer's database
        meta = await self._meta(name)
        found = await meta.repo_blob(name, digest)
        holder = name
        if found is None and self.settings.customer_dedup:
            for repo, size, linked_at in await meta.repos_holding(digest):
                if await access.can(repo, "pull"):
                    found, holder = (size, linked_at), repo
                    break
        if found is None:
            return None
        located = await self.meta.index.lookup(digest)
        if located is None:
            return None
        size, linked_at = found
        if linked_at < time.time() - self.gc.grace_seconds / 2:
            # The caller may now skip the upload: keep GC off this link for the push.
            await meta.touch_link(holder, digest)
        return BlobInfo(digest, size, located[0], holder)

    async def quota(self, customer: str) -> int | None:
        meta = await self.meta.customer(customer)
        stored = await meta.quota()
        return stored if stored is not None else self.quotas.get(customer)

    def _quota_denied(self, exc: QuotaExceeded, customer: str) -> Denied:
        return Denied(
            f"storage quota of customer {customer} exceeded: the quota is {exc.quota} bytes, "
            f"{exc.used} are used and this push needs {exc.added} more",
            detail={"quota": exc.quota, "used": exc.used, "requested": exc.added},
        )

    async def stat_blob(self, name: str, digest: str, access: Access) -> BlobInfo:
        parse_digest(digest)
        info = await self.find_blob(name, digest, access)
        if info is None:
            raise BlobUnknown("blob unknown to registry", detail={"digest": digest})
        return info

    async def open_blob(self, info: BlobInfo, start: int, end: int) -> BlobSource:
        return await self.store.open_blob(info.key, info.size, start, end)

    async def delete_blob(self, name: str, digest: str) -> None:
        if not self.settings.delete_enabled:
            raise Unsupported("deletion is disabled")
        parse_digest(digest)
        if not self.meta.exists(self.customer(name)):
            raise BlobUnknown("blob unknown to registry", detail={"digest": digest})
        meta = await self._meta(name)
        if not await meta.unlink_blob(name, digest):
            raise BlobUnknown("blob unknown to registry", detail={"digest": digest})

    async def mount_blob(
        self, name: str, digest: str, from_name: str | None, access: Access
    ) -> BlobInfo | None:
        """Link an existing blob into `name` if the caller could already pull it; else None."""
        parse_digest(digest)
        info: BlobInfo | None = None
        if from_name and self.customer(from_name) != self.customer(name):
            # Another customer's repository: only when the caller may pull it (e.g. public).
            if await access.can(from_name, "pull"):
                other = await self._meta(from_name)
                held = await other.repo_blob(from_name, digest)
                key = await self.meta.index.touch(digest) if held else None
                if held and key:
                    info = BlobInfo(digest, held[0], key)
        if info is None:
            info = await self.find_blob(name, digest, access)
        if info is None:
            return None
        info.count_dedup(name)
        customer = self.customer(name)
        try:
            await (await self._meta(name)).link_blob(
                name, digest, info.size, quota=await self.quota(customer)
            )
        except QuotaExceeded as exc:
            raise self._quota_denied(exc, customer) from None
        return info

    # Uploads

    def _lock(self, upload_id: str) -> asyncio.Lock:
        return self._upload_locks.setdefault(upload_id, asyncio.Lock())

    async def start_upload(self, name: str, algorithm: str, owner: str | None) -> UploadRecord:
        if algorithm not in ALGORITHMS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:32]!r}")
        meta = await self._meta(name)
        upload_id = str(uuid.uuid4())
        driver = await self.store.init_upload(upload_id)
        await meta.create_upload(name, upload_id, algorithm, driver, owner)
        now = time.time()
        return UploadRecord(upload_id, name, algorithm, 0, driver, owner, now, now)

    async def get_upload(self, name: str, upload_id: str) -> UploadRecord:
        try:
            uuid.UUID(upload_id)
        except ValueError:
            raise BlobUploadUnknown("blob upload unknown to registry") from None
        rec = await (await self._meta(name)).get_upload(name, upload_id)
        if rec is None:
            raise BlobUploadUnknown("blob upload unknown to registry")
        return rec

    async def upload_owner(self, name: str, upload_id: str) -> str | None:
        try:
            return (await self.get_upload(name, upload_id)).owner
        except BlobUploadUnknown:
            return None

    async def _hasher(self, rec: UploadRecord, algorithm: str | None = None) -> Any:
        algorithm = algorithm or rec.algorithm
        cached = self._hashers.get(rec.id)
        if algorithm == rec.algorithm and cached and cached[0] == rec.offset:
            return cached[1]
        hasher = hashlib.new(algorithm)
        if rec.offset:
            state = UploadState(rec.id, rec.offset, rec.driver)
            async for block in self.store.read_upload(state):
                await asyncio.to_thread(hasher.update, block)
        return hasher

    async def write_upload(
        self,
        name: str,
        upload_id: str,
        blocks: AsyncIterator[bytes],
        start: int | None,
        length: int | None,
    ) -> UploadRecord:
        async with self._lock(upload_id):
            return await self._write(name, upload_id, blocks, start, length)

    async def _write(
        self,
        name: str,
        upload_id: str,
        blocks: AsyncIterator[bytes],
        start: int | None,
        length: int | None,
    ) -> UploadRecord:
        rec = await self.get_upload(name, upload_id)
        if start is not None and start != rec.offset:
            # spec: chunks MUST be uploaded in order; out-of-order, repeated or gapped → 416.
            raise RangeNotSatisfiable(
                f"chunk starts at {start}, upload is at {rec.offset}",
                headers={
                    "Location": upload_location(name, upload_id),
                    "Range": upload_range(rec.offset),
                    "Docker-Upload-UUID": upload_id,
                },
            )
        # Hash into a copy: a write that fails half-way leaves the cached state at the old
        # offset still valid, so a retry does not re-read what was stored.
        base = await self._hasher(rec)
        self._hashers[upload_id] = (rec.offset, base)
        hasher = base.copy()
        state = UploadState(rec.id, rec.offset, rec.driver)
        new = await self.store.write_upload(state, blocks, hasher.update)
        written = new.offset - rec.offset
        if length is not None and written != length:
            # The stored offset is unchanged, so the stray bytes are dropped by the next write.
            raise SizeInvalid(f"chunk had {written} bytes, Content-Length said {length}")
        await (await self._meta(name)).update_upload(upload_id, new.offset, new.driver)
        self._hashers[upload_id] = (new.offset, hasher)
        return UploadRecord(
            rec.id,
            rec.repository,
            rec.algorithm,
            new.offset,
            new.driver,
            rec.owner,
            rec.created_at,
            time.time(),
        )

    async def finish_upload(
        self,
        name: str,
        upload_id: str,
        digest: str,
        blocks: AsyncIterator[bytes] | None,
        start: int | None,
        length: int | None,
    ) -> BlobInfo:
        d = parse_digest(digest)
        async with self._lock(upload_id):
            if blocks is not None:
                rec = await self._write(name, upload_id, blocks, start, length)
            else:
                rec = await self.get_upload(name, upload_id)
            hasher = await self._hasher(rec, d.algorithm)
            if hasher.hexdigest() != d.hex:
                raise DigestInvalid(
                    "provided digest did not match uploaded content",
                    detail={"digest": digest},
                )
            info = await self._commit(name, rec, digest)
            self._hashers.pop(upload_id, None)
        self._upload_locks.pop(upload_id, None)
        return info

    async def _commit(self, name: str, rec: UploadRecord, digest: str) -> BlobInfo:
        state = UploadState(rec.id, rec.offset, rec.driver)
        customer = self.customer(name)
        meta = await self._meta(name)
        quota = await self.quota(customer)
        if quota is not None:
            # Refuse before the bytes become a blob; the session stays so nothing half-done shows.
            try:
                async with meta.tx() as db:
                    await meta.check_quota(db, quota, [(digest, rec.offset)])
            except QuotaExceeded as exc:
                await self.cancel_upload_unlocked(name, rec)
                raise self._quota_denied(exc, customer) from None
        kept = await self._keep_one(
            digest, await self.store.commit_upload(state, digest), rec.offset
        )
        try:
            await meta.link_blob(name, digest, rec.offset, upload_id=rec.id, quota=quota)
        except QuotaExceeded as exc:
            # A concurrent push used the room first; the object stays for GC to sweep.
            await meta.delete_upload(rec.id)
            raise self._quota_denied(exc, customer) from None
        return BlobInfo(digest, rec.offset, kept)

    async def _keep_one(self, digest: str, key: str, size: int) -> str:
        """Record a freshly stored object for `digest`, or drop it when one is recorded already
        (another upload of the same bytes, by any customer, committed first)."""
        kept = await self.meta.index.add(digest, key, size)
        if kept != key:
            await self.store.delete_blob(key)
        return kept

    async def cancel_upload(self, name: str, upload_id: str) -> None:
        async with self._lock(upload_id):
            await self.cancel_upload_unlocked(name, await self.get_upload(name, upload_id))
        self._upload_locks.pop(upload_id, None)

    async def cancel_upload_unlocked(self, name: str, rec: UploadRecord) -> None:
        await self.store.abort_upload(UploadState(rec.id, rec.offset, rec.driver))
        await (await self._meta(name)).delete_upload(rec.id)
        self._hashers.pop(rec.id, None)

    # Manifests

    async def put_manifest(
        self,
        name: str,
        reference: str,
        payload: bytes,
        content_type: str,
        extra_tags: list[str],
        access: Access,
        origin: Origin,
    ) -> PushedManifest:
        if is_digest(reference):
            claimed = parse_digest(reference)
            digest = str(digest_of(payload, claimed.algorithm))
            if digest != reference:
                raise DigestInvalid(
                    "manifest digest does not match the reference", detail={"digest": reference}
                )
            tags: list[str] = []
        else:
            digest = str(digest_of(payload))
            tags = [check_tag(reference)]
        tags += [check_tag(t) for t in extra_tags if t not in tags]
        parsed = parse_manifest(payload, content_type)
        meta = await self._meta(name)

        links: list[tuple[str, int]] = []
        for desc in parsed.blobs:
            info = await self.find_blob(name, desc.digest, access)
            if info is None:
                if desc.foreign:
                    continue
                raise ManifestBlobUnknown(
                    "manifest references a blob unknown to registry",
                    detail={"digest": desc.digest},
                )
            if info.size != desc.size:
                raise ManifestInvalid(
                    f"descriptor size {desc.size} of {desc.digest} does not match the blob "
                    f"size {info.size}"
                )
            links.append((desc.digest, info.size))
        for child in parsed.children:
            if not await meta.manifest_exists(name, child.digest):
                raise ManifestBlobUnknown(
                    "index references a manifest unknown to registry",
                    detail={"digest": child.digest},
                )
        refs = [(digest_, "blob") for digest_, _ in links]
        refs += [(c.digest, "manifest") for c in parsed.children]
        if parsed.subject:
            refs.append((parsed.subject.digest, "subject"))

        if await self.meta.index.touch(digest) is None:
            await self._keep_one(digest, await self.store.put_blob(digest, payload), len(payload))
        customer = self.customer(name)
        new = NewManifest(
            digest=digest,
            media_type=parsed.media_type,
            payload=payload,
            artifact_type=parsed.artifact_type,
            subject=parsed.subject.digest if parsed.subject else None,
            annotations=parsed.annotations,
            refs=refs,
            blobs=links,
        )
        try:
            await meta.put_manifest(name, new, tags, quota=await self.quota(customer))
        except QuotaExceeded as exc:
            raise self._quota_denied(exc, customer) from None
        for tag in tags or [None]:
            await self._notify(
                Change("push", customer, name, digest, parsed.media_type, len(payload), tag, origin)
            )
        return PushedManifest(digest, parsed, tags)

    async def get_manifest(self, name: str, reference: str) -> ManifestRecord:
        by_digest = is_digest(reference)
        if by_digest:
            parse_digest(reference)
        else:
            check_tag(reference)
        if not self.meta.exists(self.customer(name)):
            raise ManifestUnknown("manifest unknown to registry", detail={"reference": reference})
        rec = await (await self._meta(name)).get_manifest(name, reference, by_digest)
        if rec is None:
            raise ManifestUnknown("manifest unknown to registry", detail={"reference": reference})
        return rec

    async def delete_manifest(self, name: str, reference: str, origin: Origin) -> None:
        if not self.settings.delete_enabled:
            raise Unsupported("deletion is disabled")
        meta = await self._meta(name)
        customer = self.customer(name)
        if is_digest(reference):
            parse_digest(reference)
            deleted = await meta.delete_manifest(name, reference)
            if deleted is None:
                raise ManifestUnknown("manifest unknown to registry", detail={"digest": reference})
            media_type, size = deleted
            change = Change("delete", customer, name, reference, media_type, size, None, origin)
        else:
            check_tag(reference)
            digest = await meta.delete_tag(name, reference)
            if digest is None:
                raise ManifestUnknown("tag unknown to registry", detail={"tag": reference})
            change = Change("delete", customer, name, digest, "", 0, reference, origin)
        await self._notify(change)

    # Discovery

    async def list_tags(self, name: str, n: int | None, last: str | None) -> list[str]:
        meta = await self._existing_repo(name)
        return await meta.tags(name, n, last)

    async def tags_document(self, name: str) -> bytes:
        """The whole tag list as JSON, cached until the customer's database changes."""
        meta = await self._existing_repo(name)
        version = meta.data_version()
        cached = self._tags_cache.get(name)
        if cached is not None and version is not None and cached[0] == version:
            return cached[1]
        body = json.dumps({"name": name, "tags": await meta.tags(name, None, None)}).encode()
        if len(self._tags_cache) >= 1024:
            self._tags_cache.pop(next(iter(self._tags_cache)))
        self._tags_cache[name] = (version, body)
        return body

    async def _existing_repo(self, name: str) -> CustomerMeta:
        if not self.meta.exists(self.customer(name)):
            raise NameUnknown("repository name not known to registry", detail={"name": name})
        meta = await self._meta(name)
        if await meta.repo_id(name) is None:
            raise NameUnknown("repository name not known to registry", detail={"name": name})
        return meta

    async def referrers(
        self, name: str, digest: str, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        parse_digest(digest)
        if not self.meta.exists(self.customer(name)):
            return []
        found = await (await self._meta(name)).referrers(name, digest)
        if artifact_type:
            found = [d for d in found if d.get("artifactType") == artifact_type]
        return found

    async def catalog(self, n: int | None, last: str | None, access: Access) -> list[str]:
        names: list[str] = []
        for customer in self.meta.customers():
            meta = await self.meta.customer(customer)
            names.extend(await meta.repositories())
        names.sort()
        if last is not None:
            names = [r for r in names if r > last]
        out: list[str] = []
        for repo in names:
            if n is not None and len(out) >= n:
                break
            if await access.can(repo, "pull"):
                out.append(repo)
        return out


__all__ = ["BlobInfo", "Change", "Origin", "Registry", "upload_location"]
