"""Blob uploads: sessions that stream chunks into storage and commit them as a blob.

The session's row (metadata/uploads.py) is its whole state — offset, driver state and the
running hash, saved after every chunk — so a chunk may arrive at any node, or after a restart,
and continue where the last one ended without re-reading stored bytes. Chunks of one session
are serialised by an in-process lock and, across nodes, by the row's conditional update: a
writer that finds the session moved on gets 416 with the session's real `Range`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

from dockyard.core import hashing
from dockyard.core.errors import (
    BlobUploadUnknown,
    DigestInvalid,
    SizeInvalid,
)
from dockyard.core.oci import ALGORITHMS, customer_of, parse_digest

from .blobs import BlobInfo, Blobs
from .config import RegistrySettings
from .metadata import Metadata, QuotaExceeded, Tenant, UploadRecord
from .quotas import Quotas
from .storage import BlobStore, UploadState, UploadUnreadable


class SessionMoved(Exception):
    """The session's offset is not where this request expected it (the HTTP layer answers
    416 with the session's real Range)."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _new_hasher(algorithm: str, state: bytes | None = None) -> Any:
    if hashing.available():
        return hashing.ResumableHash(algorithm, state)
    return hashlib.new(algorithm)


def _ignore(block: bytes) -> None:
    pass


class UploadSession:
    """One upload session as one request sees it."""

    def __init__(self, service: UploadService, tenant: Tenant, record: UploadRecord) -> None:
        self.service = service
        self.tenant = tenant
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def offset(self) -> int:
        return self.record.offset

    def _state(self) -> UploadState:
        return UploadState(self.record.id, self.record.offset, self.record.driver)

    async def hasher(self, algorithm: str | None = None) -> Any | None:
        """The running hash at the current offset: resumed from the saved state, else rebuilt
        from the stored bytes (an algorithm other than the session's, or no saved state), or
        None when the store cannot give them back before commit (S3 multipart uploads)."""
        algorithm = algorithm or self.record.algorithm
        rec = self.record
        if algorithm == rec.algorithm and rec.hash_state is not None and hashing.available():
            return hashing.ResumableHash(algorithm, rec.hash_state)
        hasher = _new_hasher(algorithm)
        if rec.offset:
            try:
                async for block in self.service.store.read_upload(self._state()):
                    await asyncio.to_thread(hasher.update, block)
            except UploadUnreadable:
                return None
        return hasher

    async def write(
        self, blocks: AsyncIterator[bytes], start: int | None, length: int | None
    ) -> None:
        rec = self.record
        if start is not None and start != rec.offset:
            # spec: chunks MUST be uploaded in order; out-of-order, repeated or gapped → 416.
            raise SessionMoved(rec.offset)
        store = self.service.store
        hasher = await self.hasher()
        # Without a hash to continue, the digest is checked against the stored blob at commit.
        sink = hasher.update if hasher is not None else _ignore
        hint = rec.offset + length if length is not None else None
        old = self._state()
        new = await store.write_upload(old, blocks, sink, size_hint=hint)
        written = new.offset - rec.offset
        state = hasher.state() if isinstance(hasher, hashing.ResumableHash) else None
        recorded = False
        try:
            if length is not None and written != length:
                # The stored offset is unchanged, so the stray bytes are dropped by the next
                # write.
                raise SizeInvalid(f"chunk had {written} bytes, Content-Length said {length}")
            recorded = await self.service.meta.uploads.advance(
                self.tenant, rec.id, rec.offset, new.offset, new.driver, state
            )
        finally:
            if new.driver != old.driver:
                await store.settle_write(old, new, recorded)
        if not recorded:
            current = await self.service.meta.uploads.get(self.tenant, rec.repository, rec.id)
            if current is None:
                raise BlobUploadUnknown("blob upload unknown to registry")
            raise SessionMoved(current.offset)
        self.record = UploadRecord(
            rec.id,
            rec.repository,
            rec.algorithm,
            new.offset,
            new.driver,
            rec.owner,
            rec.created_at,
            time.time(),
            state,
        )

    async def finish(self, digest: str) -> BlobInfo:
        d = parse_digest(digest)
        hasher = await self.hasher(d.algorithm)
        if hasher is not None and hasher.hexdigest() != d.hex:
            raise DigestInvalid(
                "provided digest did not match uploaded content", detail={"digest": digest}
            )
        return await self._commit(digest, verify=hasher is None)

    async def _verify_stored(self, key: str, digest: str) -> None:
        """Hash a committed object before anything records it (the rare session whose bytes
        could not be hashed as they arrived); a mismatch drops the object and the session."""
        svc = self.service
        d = parse_digest(digest)
        hasher = _new_hasher(d.algorithm)
        async for block in svc.store.read_blob(key, self.record.offset):
            await asyncio.to_thread(hasher.update, block)
        if hasher.hexdigest() != d.hex:
            await svc.store.delete_blob(key)
            async with svc.meta.db.transaction() as tx:
                await svc.meta.uploads.delete(tx, self.tenant, self.record.id)
            raise DigestInvalid(
                "provided digest did not match uploaded content", detail={"digest": digest}
            )

    async def _commit(self, digest: str, verify: bool = False) -> BlobInfo:
        svc = self.service
        rec = self.record
        quota = await svc.quotas.of(self.tenant)
        if quota is not None:
            # Refuse before the bytes become a blob; nothing half-done shows.
            try:
                async with svc.meta.db.transaction() as tx:
                    await svc.meta.links.check_quota(tx, self.tenant, quota, [(digest, rec.offset)])
            except QuotaExceeded as exc:
                await self.cancel()
                raise svc.quotas.denied(exc, self.tenant) from None
        key = await svc.store.commit_upload(self._state(), digest)
        if verify:
            await self._verify_stored(key, digest)
        kept = await svc.blobs.keep_one(digest, key, rec.offset)
        try:
            async with svc.meta.db.transaction() as tx:
                await svc.meta.links.check_quota(tx, self.tenant, quota, [(digest, rec.offset)])
                repo_id = await svc.meta.tenants.ensure_repo(tx, self.tenant, rec.repository)
                await svc.meta.links.link(tx, self.tenant, repo_id, [(digest, rec.offset)])
                await svc.meta.uploads.delete(tx, self.tenant, rec.id)
        except QuotaExceeded as exc:
            # A concurrent push used the room first; the object stays for GC to sweep.
            async with svc.meta.db.transaction() as tx:
                await svc.meta.uploads.delete(tx, self.tenant, rec.id)
            raise svc.quotas.denied(exc, self.tenant) from None
        return BlobInfo(digest, rec.offset, kept)

    async def cancel(self) -> None:
        svc = self.service
        if not await svc.committed(self._state()):
            await svc.store.abort_upload(self._state())
        async with svc.meta.db.transaction() as tx:
            await svc.meta.uploads.delete(tx, self.tenant, self.record.id)


class UploadService:
    def __init__(
        self,
        settings: RegistrySettings,
        store: BlobStore,
        meta: Metadata,
        blobs: Blobs,
        quotas: Quotas,
    ) -> None:
        self.settings = settings
        self.store = store
        self.meta = meta
        self.blobs = blobs
        self.quotas = quotas
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def committed(self, state: UploadState) -> bool:
        """Whether a commit of this session reached the blob index (a crash can leave the
        session's row behind it): then its objects are a blob and must not be aborted."""
        for key in self.store.session_keys(state):
            if await self.meta.index.has_key(key):
                return True
        return False

    def lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = asyncio.Lock()
        return lock

    async def start(self, name: str, algorithm: str, owner: str | None) -> UploadSession:
        if algorithm not in ALGORITHMS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:32]!r}")
        tenant = await self.meta.tenants.ensure(customer_of(name, self.settings.default_customer))
        upload_id = str(uuid.uuid4())
        driver = await self.store.init_upload(upload_id)
        hasher = _new_hasher(algorithm)
        state = hasher.state() if isinstance(hasher, hashing.ResumableHash) else None
        async with self.meta.db.transaction() as tx:
            repo_id = await self.meta.tenants.ensure_repo(tx, tenant, name)
            await self.meta.uploads.create(
                tx, tenant, repo_id, upload_id, algorithm, driver, owner, state
            )
        now = time.time()
        record = UploadRecord(upload_id, name, algorithm, 0, driver, owner, now, now, state)
        return UploadSession(self, tenant, record)

    async def get(self, name: str, upload_id: str) -> UploadSession:
        try:
            uuid.UUID(upload_id)
        except ValueError:
            raise BlobUploadUnknown("blob upload unknown to registry") from None
        tenant = await self.meta.tenants.find(customer_of(name, self.settings.default_customer))
        rec = await self.meta.uploads.get(tenant, name, upload_id) if tenant else None
        if tenant is None or rec is None:
            raise BlobUploadUnknown("blob upload unknown to registry")
        return UploadSession(self, tenant, rec)

    async def owner(self, name: str, upload_id: str) -> str | None:
        try:
            return (await self.get(name, upload_id)).record.owner
        except BlobUploadUnknown:
            return None

    async def write(
        self,
        name: str,
        upload_id: str,
        blocks: AsyncIterator[bytes],
        start: int | None,
        length: int | None,
    ) -> UploadSession:
        async with self.lock(upload_id):
            session = await self.get(name, upload_id)
            await session.write(blocks, start, length)
            return session

    async def finish(
        self,
        name: str,
        upload_id: str,
        digest: str,
        blocks: AsyncIterator[bytes] | None,
        start: int | None,
        length: int | None,
    ) -> BlobInfo:
        parse_digest(digest)
        async with self.lock(upload_id):
            session = await self.get(name, upload_id)
            if blocks is not None:
                await session.write(blocks, start, length)
            return await session.finish(digest)

    async def cancel(self, name: str, upload_id: str) -> None:
        async with self.lock(upload_id):
            await (await self.get(name, upload_id)).cancel()

