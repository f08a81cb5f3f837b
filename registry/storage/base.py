"""The storage-driver contract. Every driver passes tests/test_storage_contract.py.

A driver stores two things: upload sessions (bytes being written, addressed by an upload id)
and blobs (immutable, content-addressed objects, addressed by an opaque key that the global
blob index records per digest). It knows nothing of repositories, customers or manifests.

Contract:
- `write_upload` appends a stream at `state.offset` and returns the new offset and driver state;
  a failed write leaves the session at its old offset (a chunk is all or nothing). The registry
  then records the new state only if nobody else moved the session meanwhile, and tells the
  driver with `settle_write`, so that the objects of the losing state can go.
- Everything a session needs is in its state (which the registry keeps in its database, shared
  by every node): a driver keeps no local file per session, so any node continues any upload.
  `read_upload` may therefore be impossible (S3 cannot read back the parts of a multipart upload
  in progress): it raises UploadUnreadable, and the registry relies on its saved hash state.
- `commit_upload` turns a finished session into a blob and returns its key; bytes are never
  copied server-side. Committing the same digest twice is safe: the caller keeps the first key
  recorded in the index and deletes the other with `delete_blob` (a no-op when keys are equal).
- Blobs are never visible before commit; an aborted or expired session leaves nothing behind.
- `open_blob` returns a `BlobSource`: a local file (sent with sendfile), a redirect URL, or a
  stream. The HTTP layer picks the response; it does not know which driver made the source.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class UploadState:
    id: str
    offset: int = 0
    driver: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalFile:
    path: Path


@dataclass(frozen=True)
class Redirect:
    url: str


@dataclass(frozen=True)
class Stream:
    """Bytes `start..end` (inclusive) of the blob, produced by `chunks()`."""

    chunks: Callable[[], AsyncIterator[bytes]]
    start: int
    end: int


BlobSource = LocalFile | Redirect | Stream

# Called with each block of bytes as it is written, so the caller hashes while bytes flow.
BlockSink = Callable[[bytes], Any]


class StorageError(Exception):
    """The backing store failed or is unreachable; the request may be retried."""


class UploadUnreadable(StorageError):
    """The driver cannot stream back the bytes of this session (they are in the store, but not
    readable until committed)."""


class BlobStore(abc.ABC):
    #: Smallest chunk the driver takes without buffering (advertised as OCI-Chunk-Min-Length).
    chunk_min_length: int = 0
    name: str = "abstract"

    async def start(self) -> None:
        """Check the backing store is usable; raise StorageError with a clear message if not."""

    async def close(self) -> None:
        """Release connections."""

    async def check(self) -> None:
        """Readiness probe: raise StorageError when the store cannot be reached."""

    @abc.abstractmethod
    async def init_upload(self, upload_id: str) -> dict[str, Any]:
        """Create a session's storage and return its initial driver state."""

    @abc.abstractmethod
    async def write_upload(
        self,
        state: UploadState,
        blocks: AsyncIterator[bytes],
        sink: BlockSink,
        size_hint: int | None = None,
    ) -> UploadState:
        """Append `blocks` at `state.offset`, passing each block to `sink` before returning.

        `size_hint` is the session's size after this write when the client declared it
        (Content-Length), for drivers that size their parts by it."""

    async def settle_write(
        self, previous: UploadState, current: UploadState, recorded: bool
    ) -> None:
        """After `write_upload` turned `previous` into `current`: the registry recorded
        `current` (drop what only `previous` needed) or did not (drop what only `current`
        needed). Best effort; garbage collection sweeps whatever stays behind."""

    def session_keys(self, state: UploadState) -> set[str]:
        """Blob keys (as `list_blob_keys` names them) of objects this session's bytes occupy
        before commit: garbage collection leaves them alone while the session lives, and a
        session whose key the blob index already records was committed."""
        return set()

    @abc.abstractmethod
    def read_upload(self, state: UploadState) -> AsyncIterator[bytes]:
        """Stream the bytes written so far, or raise UploadUnreadable (see above)."""

    @abc.abstractmethod
    async def commit_upload(self, state: UploadState, digest: str) -> str:
        """Make the session's bytes an immutable blob and return its key."""

    @abc.abstractmethod
    async def abort_upload(self, state: UploadState) -> None:
        """Drop a session and everything it wrote. Idempotent."""

    @abc.abstractmethod
    async def put_blob(self, digest: str, data: bytes) -> str:
        """Store small content (a manifest) as a blob; return its key. Idempotent."""

    @abc.abstractmethod
    async def open_blob(self, key: str, size: int, start: int, end: int) -> BlobSource:
        """Give access to bytes start..end (inclusive) of the blob at `key`."""

    async def read_blob(self, key: str, size: int) -> AsyncIterator[bytes]:
        """The whole blob as a stream, for the registry itself (never a redirect)."""
        if size == 0:
            return
        source = await self.open_blob(key, size, 0, size - 1)
        if isinstance(source, Stream):
            async for block in source.chunks():
                yield block
        elif isinstance(source, LocalFile):
            with open(source.path, "rb") as fh:
                while block := await asyncio.to_thread(fh.read, 1 << 20):
                    yield block
        else:
            raise StorageError(f"{self.name} driver cannot stream blob {key[:80]!r} itself")

    @abc.abstractmethod
    async def delete_blob(self, key: str) -> None:
        """Remove a blob. Idempotent."""

    @abc.abstractmethod
    def list_blob_keys(self) -> AsyncIterator[tuple[str, float]]:
        """Every stored blob key with its modification time (for GC of orphaned objects)."""

    @abc.abstractmethod
    def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        """Every upload session id with its last modification time."""
