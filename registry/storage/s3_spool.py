"""Local files of the S3 driver's in-flight uploads: the bytes written so far and the id of the
multipart upload they go to.

S3 cannot read back the parts of a multipart upload that is still in progress, yet the registry
must re-hash a session's bytes whenever its in-memory hash is gone (a restart, another worker
process, a failed write). So every upload's bytes are also kept in `DATA/uploads/<id>`, written
as they stream; the driver uploads each full part to S3 as soon as it is complete and deletes the
file at commit or abort. The file also holds the unflushed tail between requests, so a session
survives a restart and can be continued by any worker that shares the data directory (the
metadata databases live there too, so every worker does).

`DATA/uploads/<id>.mpu` records the multipart upload id the moment S3 hands it out, before the
registry persists the session's state: a write that fails after creating the multipart upload
leaves no orphan, the retry finds and reuses it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from .base import BlockSink, StorageError

MPU_SUFFIX = ".mpu"
# The marker's content while CreateMultipartUpload is in flight: the id is not known yet.
CREATING = "creating"


def is_upload_id(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


class UploadSpool:
    def __init__(self, root: Path) -> None:
        self.root = root

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, upload_id: str) -> Path:
        return self.root / upload_id

    def create(self, upload_id: str) -> None:
        self.path(upload_id).touch(exist_ok=False)

    def open_at(self, upload_id: str, offset: int) -> int:
        """A descriptor on the session's file, cut back to `offset`.

        Bytes past the recorded offset come from a write that failed or crashed: they are not
        part of the session and the next write replaces them.
        """
        try:
            fd = os.open(self.path(upload_id), os.O_RDWR)
        except FileNotFoundError as exc:
            raise StorageError(f"upload {upload_id} has no local data file") from exc
        try:
            if os.fstat(fd).st_size < offset:
                raise StorageError(f"upload {upload_id}: local data file is shorter than recorded")
            os.ftruncate(fd, offset)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def append(fd: int, offset: int, blocks: list[bytes], sink: BlockSink) -> int:
        """Write `blocks` at `offset`, hashing each one; return the new end (worker thread)."""
        for block in blocks:
            view = memoryview(block)
            while view:
                written = os.pwrite(fd, view, offset)
                offset += written
                view = view[written:]
            sink(block)
        return offset

    @staticmethod
    def read(fd: int, start: int, length: int) -> bytes:
        """Bytes start..start+length of an open session file (worker thread)."""
        chunks: list[bytes] = []
        while length > 0:
            chunk = os.pread(fd, length, start)
            if not chunk:
                raise StorageError("local upload file ended early")
            chunks.append(chunk)
            start += len(chunk)
            length -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def open_read(self, upload_id: str) -> int:
        try:
            return os.open(self.path(upload_id), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise StorageError(f"upload {upload_id} has no local data file") from exc

    def read_range(self, upload_id: str, start: int, length: int) -> bytes:
        fd = self.open_read(upload_id)
        try:
            return self.read(fd, start, length)
        finally:
            os.close(fd)

    # The multipart upload marker

    def _mpu_path(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}{MPU_SUFFIX}"

    def load_mpu(self, upload_id: str) -> str | None:
        """The recorded multipart upload id, CREATING if its creation may have happened
        unrecorded, or None when no multipart upload was ever started for the session."""
        try:
            return json.loads(self._mpu_path(upload_id).read_text())["mpu"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError):
            return CREATING

    def save_mpu(self, upload_id: str, mpu: str) -> None:
        path = self._mpu_path(upload_id)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"mpu": mpu}))
        os.replace(tmp, path)

    def remove(self, upload_id: str) -> None:
        self.path(upload_id).unlink(missing_ok=True)
        self._mpu_path(upload_id).unlink(missing_ok=True)

    def sessions(self) -> Iterator[tuple[str, float]]:
        """(upload id, last modification time) of every local session."""
        if not self.root.exists():
            return
        for entry in os.scandir(self.root):
            name = entry.name
            if name.endswith(MPU_SUFFIX):
                continue
            if not is_upload_id(name):
                continue
            try:
                yield name, entry.stat().st_mtime
            except FileNotFoundError:
                continue
