"""The storage-driver contract. Every driver passes tests/test_storage_contract.py.

A driver stores two things: upload sessions (bytes being written, addressed by an upload id)
and blobs (immutable, content-addressed objects, addressed by an opaque key that the global
blob index records per digest). It knows nothing of repositories, customers or manifests.

Contract:
- `write_upload` appends a stream at `state.offset` and returns the new offset and driver state;
  a failed write leaves the session at its old offset (a chunk is all or nothing).
- `commit_upload` turns a finished session into a blob and returns its key; bytes are never
  copied server-side. Committing the same digest twice is safe: the caller keeps the first key
  recorded in the index and deletes the other with `delete_blob` (a no-op when keys are equal).
- Blobs are never visible before commit; an aborted or expired session leaves nothing behind.
- `open_blob` returns a `BlobSource`: a local file (sent with sendfile), a redirect URL, or a
  stream. The HTTP layer picks the response; it does not know which driver made the source.
"""

from __future__ import annotations

import abc
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
        self, state: UploadState, blocks: AsyncIterator[bytes], sink: BlockSink
    ) -> UploadState:
        """Append `blocks` at `state.offset`, passing each block to `sink` before returning."""

    @abc.abstractmethod
    def read_upload(self, state: UploadState) -> AsyncIterator[bytes]:
        """Stream the bytes written so far (used to re-hash a session after a restart)."""

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

    @abc.abstractmethod
    async def delete_blob(self, key: str) -> None:
        """Remove a blob. Idempotent."""

    @abc.abstractmethod
    def list_blob_keys(self) -> AsyncIterator[tuple[str, float]]:
        """Every stored blob key with its modification time (for GC of orphaned objects)."""

    @abc.abstractmethod
    def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        """Every upload session id with its last modification time."""
