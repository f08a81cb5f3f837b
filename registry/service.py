"""The registry's domain: blobs, uploads, manifests, tags and referrers of every customer.

HTTP handlers are thin wrappers over this class; it raises RegistryError subclasses and never
formats a response. Access decisions that reveal content (customer-wide dedup, mounts, the
blobs a manifest may reference) go through the caller's `Access`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .access import Access
from .config import RegistrySettings
from .errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RangeNotSatisfiable,
    SizeInvalid,
    Unsupported,
)
from .manifests import ParsedManifest, parse_manifest
from .metadata import CustomerMeta, ManifestRecord, MetadataStore, NewManifest, UploadRecord
from .reference import ALGORITHMS, check_tag, customer_of, digest_of, is_digest, parse_digest
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
    def __init__(self, settings: RegistrySettings, store: BlobStore, meta: MetadataStore) -> None:
        self.settings = settings
        self.store = store
        self.meta = meta
        self.listeners: list[Listener] = []
        # Upload id -> (offset, running hash). A miss (restart, another worker) re-hashes the
        # bytes already stored; hash state is never serialised.
        self._hashers: dict[str, tuple[int, Any]] = {}
        self._upload_locks: dict[str, asyncio.Lock] = {}

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
        meta = await self._meta(name)
        size = await meta.repo_blob_size(name, digest)
        if size is None and self.settings.customer_dedup:
            for repo, held_size in await meta.repos_holding(digest):
                if await access.can(repo, "pull"):
                    size = held_size
                    break
        if size is None:
            return None
        located = await self.meta.index.lookup(digest)
        if located is None:
            return None
        return BlobInfo(digest, size, located[0])

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
                size = await other.repo_blob_size(from_name, digest)
                located = await self.meta.index.lookup(digest) if size is not None else None
                if size is not None and located:
                    info = BlobInfo(digest, size, located[0])
        if info is None:
            info = await self.find_blob(name, digest, access)
        if info is None:
            return None
        await (await self._meta(name)).link_blob(name, digest, info.size)
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
        hasher = await self._hasher(rec)
        state = UploadState(rec.id, rec.offset, rec.driver)
        self._hashers.pop(upload_id, None)  # the hash is only valid again once the write lands
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
        key = await self.store.commit_upload(state, digest)
        kept = await self.meta.index.add(digest, key, rec.offset)
        if kept != key:
            # Another upload of the same bytes (any customer) committed first: one copy stays.
            await self.store.delete_blob(key)
        await (await self._meta(name)).link_blob(name, digest, rec.offset, upload_id=rec.id)
        return BlobInfo(digest, rec.offset, kept)

    async def cancel_upload(self, name: str, upload_id: str) -> None:
        async with self._lock(upload_id):
            rec = await self.get_upload(name, upload_id)
            await self.store.abort_upload(UploadState(rec.id, rec.offset, rec.driver))
            await (await self._meta(name)).delete_upload(upload_id)
            self._hashers.pop(upload_id, None)
        self._upload_locks.pop(upload_id, None)

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

        key = await self.store.put_blob(digest, payload)
        await self.meta.index.add(digest, key, len(payload))
        await meta.put_manifest(
            name,
            NewManifest(
                digest=digest,
                media_type=parsed.media_type,
                payload=payload,
                artifact_type=parsed.artifact_type,
                subject=parsed.subject.digest if parsed.subject else None,
                annotations=parsed.annotations,
                refs=refs,
                blobs=links,
            ),
            tags,
        )
        customer = self.customer(name)
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
        if not self.meta.exists(self.customer(name)):
            raise NameUnknown("repository name not known to registry", detail={"name": name})
        meta = await self._meta(name)
        if await meta.repo_id(name) is None:
            raise NameUnknown("repository name not known to registry", detail={"name": name})
        return await meta.tags(name, n, last)

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


__all__ = ["BlobInfo", "BlobUploadInvalid", "Change", "Origin", "Registry", "upload_location"]
