"""Filesystem driver: blobs under DATA/blobs/<alg>/<ab>/<hex>.<n>, uploads under DATA/uploads/<id>.

Commit is one atomic rename within a filesystem, so a crash never leaves a partial blob visible.
Every commit gets its own object (the `.<n>` suffix): garbage collection may then delete an
unreferenced object of a digest while a new upload of the same digest commits, without ever
removing the new one. The global index keeps one object per digest and the rest are deleted.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .base import BlobSource, BlobStore, BlockSink, LocalFile, StorageError, UploadState

# Bytes handed to a worker thread at once: big enough to amortise the hop, small enough for RSS.
WRITE_BATCH = 1 << 20


class FilesystemStore(BlobStore):
    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.uploads = root / "uploads"

    async def start(self) -> None:
        for d in (self.blobs, self.uploads):
            d.mkdir(parents=True, exist_ok=True)
        await self.check()

    async def check(self) -> None:
        if not os.access(self.blobs, os.W_OK) or not os.access(self.uploads, os.W_OK):
            raise StorageError(f"storage directory {self.root} is not writable")

    def _upload_path(self, upload_id: str) -> Path:
        return self.uploads / upload_id

    def blob_path(self, key: str) -> Path:
        return self.blobs / key

    @staticmethod
    def key_for(digest: str) -> str:
        algorithm, _, hexpart = digest.partition(":")
        return f"{algorithm}/{hexpart[:2]}/{hexpart}.{secrets.token_hex(6)}"

    async def init_upload(self, upload_id: str) -> dict[str, Any]:
        self._upload_path(upload_id).touch(exist_ok=False)
        return {}

    async def write_upload(
        self,
        state: UploadState,
        blocks: AsyncIterator[bytes],
        sink: BlockSink,
        size_hint: int | None = None,
    ) -> UploadState:
        path = self._upload_path(state.id)
        try:
            fh = open(path, "r+b")
        except FileNotFoundError as exc:
            raise StorageError(f"upload {state.id} has no data file") from exc
        offset = state.offset
        try:
            # A crash mid-write may have left bytes past the committed offset: drop them.
            fh.truncate(offset)
            fh.seek(offset)
            pending: list[bytes] = []
            pending_len = 0

            def flush(batch: list[bytes]) -> None:
                for block in batch:
                    fh.write(block)
                    sink(block)

            async for block in blocks:
                pending.append(block)
                pending_len += len(block)
                if pending_len >= WRITE_BATCH:
                    batch, pending, pending_len = pending, [], 0
                    await asyncio.to_thread(flush, batch)
                    offset += sum(len(b) for b in batch)
            if pending:
                await asyncio.to_thread(flush, pending)
                offset += pending_len
            fh.flush()
        except BaseException:
            fh.truncate(state.offset)
            raise
        finally:
            fh.close()
        return UploadState(state.id, offset, state.driver)

    async def read_upload(self, state: UploadState) -> AsyncIterator[bytes]:
        path = self._upload_path(state.id)
        with open(path, "rb") as fh:
            remaining = state.offset
            while remaining > 0:
                block = await asyncio.to_thread(fh.read, min(WRITE_BATCH, remaining))
                if not block:
                    break
                remaining -= len(block)
                yield block

    async def commit_upload(self, state: UploadState, digest: str) -> str:
        key = self.key_for(digest)
        src, dst = self._upload_path(state.id), self.blob_path(key)

        def commit() -> None:
            with open(src, "r+b") as fh:
                fh.truncate(state.offset)
                os.fsync(fh.fileno())
            # The object's age starts at commit (GC's orphan sweep goes by it), not at the
            # session's last write.
            os.utime(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)

        try:
            await asyncio.to_thread(commit)
        except FileNotFoundError as exc:
            raise StorageError(f"upload {state.id} vanished before commit") from exc
        return key

    async def abort_upload(self, state: UploadState) -> None:
        self._upload_path(state.id).unlink(missing_ok=True)

    async def put_blob(self, digest: str, data: bytes) -> str:
        key = self.key_for(digest)
        dst = self.blob_path(key)

        def write() -> None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.uploads / f".put-{dst.name}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dst)

        await asyncio.to_thread(write)
        return key

    async def open_blob(self, key: str, size: int, start: int, end: int) -> BlobSource:
        return LocalFile(self.blob_path(key))

    async def delete_blob(self, key: str) -> None:
        self.blob_path(key).unlink(missing_ok=True)

    async def list_blob_keys(self) -> AsyncIterator[tuple[str, float]]:
        for alg in sorted(self.blobs.iterdir()) if self.blobs.exists() else []:
            for prefix in sorted(alg.iterdir()):
                for f in sorted(prefix.iterdir()):
                    try:
                        yield f"{alg.name}/{prefix.name}/{f.name}", f.stat().st_mtime
                    except FileNotFoundError:
                        continue

    async def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        for f in self.uploads.iterdir() if self.uploads.exists() else []:
            try:
                yield f.name, f.stat().st_mtime
            except FileNotFoundError:
                continue

