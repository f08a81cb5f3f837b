"""S3 driver: blobs in a bucket of any S3-compatible store (AWS S3, SeaweedFS, MinIO, Ceph).

Object layout, under the configured `prefix`:
  blobs/<upload-id>          a blob committed from a multipart upload
  blobs/<upload-id>.<n>      bytes an upload holds between requests (see below); the last one
                             becomes the blob itself when the whole blob fits in it
  blobs/<alg>/<hex>.<n>      a blob stored whole by `put_blob` (manifests)
Keys handed to the registry are relative to `<prefix>blobs/`. Which object holds a digest is
recorded in the registry's global blob index, never derived from the key.

Uploads keep nothing on the node: the session's state (multipart upload id, the parts sent, the
object holding the bytes after them) goes into the upload's row in the shared metadata database
with the running hash, so the next chunk may arrive at any node.

- PATCH bytes are hashed as they arrive and gathered in memory into parts; each full part goes
  to S3 while the next one arrives, at most `parts_in_flight` at once, so an upload holds at most
  (parts_in_flight + 1) parts in memory. Parts are `part_size_mib`, larger for blobs declared or
  grown too large for S3's 10,000 parts.
- When a request ends, the bytes after the last full part must stay readable (S3 cannot read
  back parts of an upload in progress): they are stored as one object of their own. A blob that
  never needed a second part is that object, and committing it costs no request at all. After
  parts, a remainder of at least 5 MiB is simply the next part; a shorter one is stored as an
  object and, at the same time, sent as a provisional last part, so commit on any node is one
  CompleteMultipartUpload, with no copy. Only a following PATCH reads the held bytes back.
- A duplicate of a digest already stored is a separate object that the registry deletes.
- Blob GET is a ranged GetObject streamed through, or a redirect to a presigned URL. Nothing
  else the registry answers (HEAD, manifests, tags, catalog) needs the bucket.

Every S3 failure surfaces as StorageError (a 503 with a spec error body); botocore retries the
safe ones with backoff first. A write that fails leaves the session at its old offset: parts it
sent past that offset are overwritten by part number when the client resumes. Two writers on
one session at the same time (a client retrying on another node while the first request still
runs) lose nothing visible: the registry records one of them, and if the other overwrote a part
the commit fails instead of storing a wrong blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from dockyard.core.errors import BlobUploadInvalid, SizeInvalid

from ..config import ConfigError, StorageSettings
from .base import (
    BlobSource,
    BlobStore,
    BlockSink,
    Redirect,
    StorageError,
    Stream,
    UploadState,
    UploadUnreadable,
)

log = logging.getLogger("dockyard.storage.s3")

MIB = 1 << 20
MIN_PART = 5 * MIB  # S3's smallest part (every part but the last)
# S3 allows 5 GiB parts, but a part is held in memory while it is sent: cap it lower.
MAX_PART = 256 * MIB
MAX_PARTS = 10_000
# Parts grow (double) every this many, so that a blob of unknown size fits in S3's 10,000
# parts: from 16 MiB parts, 1.7 TiB.
PART_GROWTH_EVERY = 1_000
# A chunk's remainder of at least MIN_PART becomes a part of its own (never read back) only
# while half the part numbers are left: a client sending small chunks cannot run out of them.
OWN_PART_BUDGET = MAX_PARTS // 2
MAX_IN_FLIGHT = 16
# Bytes hashed and buffered per worker-thread hop: amortises the hop, bounds what is held.
WRITE_BATCH = MIB
# GET: the most a blob read asks of the response stream at once.
READ_CHUNK = MIB
# aiohttp's client stops reading the socket when this much is buffered (its default is 64 KiB,
# which makes a blob GET stream in ~128 KiB pieces, each a trip through the event loop).
READ_BUFSIZE = 4 * MIB
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
MAX_POOL_CONNECTIONS = 32

_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
_S3_ERRORS = (ClientError, *_TRANSPORT_ERRORS)


_session: AioSession | None = None


def _fixed_mmap_threshold() -> None:
    """Have glibc serve every allocation of 2 MiB or more by mmap, and give it back at free.

    Parts are buffers of many MiB allocated and freed all the time. glibc's default raises its
    mmap threshold to the size of the last such buffer it freed (up to 32 MiB), after which
    parts come from the heap and its per-thread arenas and stay in the process when freed:
    measured here, 1 GiB pushed in 16 MiB parts peaked at 192 MB RSS and kept 122 MB, against
    145 MB and 88 MB with the threshold fixed. Elsewhere than glibc this does nothing."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(name)
        m_mmap_threshold = -3  # malloc.h
        libc.mallopt(m_mmap_threshold, 2 * MIB)


def botocore_session() -> AioSession:
    """One per process: it caches the parsed S3 service model, which takes long to load."""
    global _session
    if _session is None:
        _session = get_session()
    return _session


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _describe(exc: BaseException) -> str:
    """Why an S3 call failed, without URLs or credentials (the text reaches clients)."""
    if isinstance(exc, ClientError):
        return f"{error_code(exc) or 'error'} (HTTP {http_status(exc)})"
    if isinstance(exc, NoCredentialsError):
        return "no credentials"
    if isinstance(exc, EndpointConnectionError):
        return "endpoint unreachable"
    return type(exc).__name__


@contextlib.contextmanager
def s3_call(operation: str) -> Iterator[None]:
    """Turn any S3 or transport failure inside the block into StorageError."""
    try:
        yield
    except _S3_ERRORS as exc:
        log.warning("S3 %s failed: %r", operation, exc)
        raise StorageError(f"S3 {operation} failed: {_describe(exc)}") from exc


@dataclass(frozen=True)
class Session:
    """The driver state of one upload, as persisted by the registry after every write.

    The session's bytes are `parts` (sent to the multipart upload `mpu`, in order from part 1)
    followed by `held_size` bytes in the object `held`; `held_part` is the ETag of those bytes
    sent as the provisional last part (number len(parts) + 1) when there is a multipart upload.
    """

    key: str
    part_size: int
    mpu: str | None = None
    parts: tuple[tuple[str, int], ...] = ()
    held: str | None = None
    held_size: int = 0
    held_part: str | None = None

    @property
    def size(self) -> int:
        return sum(size for _, size in self.parts) + self.held_size

    def dump(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "part_size": self.part_size,
            "mpu": self.mpu,
            "parts": [list(p) for p in self.parts],
            "held": self.held,
            "held_size": self.held_size,
            "held_part": self.held_part,
        }


class S3Store(BlobStore):
    name = "s3"

    def __init__(self, settings: StorageSettings, data_dir: Path) -> None:
        if not settings.bucket:
            raise ConfigError("storage.bucket must name an S3 bucket")
        part_size = int(settings.part_size_mib) * MIB
        if not MIN_PART <= part_size <= MAX_PART:
            raise ConfigError(
                f"storage.part_size_mib must be between {MIN_PART // MIB} and {MAX_PART // MIB}, "
                f"not {settings.part_size_mib}"
            )
        in_flight = int(settings.parts_in_flight)
        if not 1 <= in_flight <= MAX_IN_FLIGHT:
            raise ConfigError(
                f"storage.parts_in_flight must be between 1 and {MAX_IN_FLIGHT}, not {in_flight}"
            )
        self.settings = settings
        self.bucket = settings.bucket
        self.part_size = part_size
        self.parts_in_flight = in_flight
        self.chunk_min_length = part_size
        self.base = f"{settings.prefix}blobs/"
        # `data_dir` is unused: an S3 node keeps nothing of its uploads locally.
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    # Lifecycle

    @property
    def where(self) -> str:
        endpoint = self.settings.endpoint or f"AWS S3 ({self.settings.region})"
        return f"bucket {self.bucket!r} at {endpoint}"

    def _config(self) -> AioConfig:
        return AioConfig(
            # Path-style addressing works with every S3-compatible store on any host name;
            # AWS itself prefers virtual-hosted buckets.
            s3={"addressing_style": "path" if self.settings.endpoint else "virtual"},
            retries={"max_attempts": max(0, int(self.settings.max_retries)), "mode": "standard"},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            max_pool_connections=MAX_POOL_CONNECTIONS,
            signature_version="s3v4",
        )

    async def start(self) -> None:
        _fixed_mmap_threshold()
        stack = AsyncExitStack()
        creds: dict[str, str] = {}
        if self.settings.access_key and self.settings.secret_key:
            creds = {
                "aws_access_key_id": self.settings.access_key,
                "aws_secret_access_key": self.settings.secret_key,
            }
        # Otherwise botocore's standard chain: AWS_* environment, ~/.aws files, instance roles.
        try:
            self._client = await stack.enter_async_context(
                botocore_session().create_client(
                    "s3",
                    endpoint_url=self.settings.endpoint or None,
                    region_name=self.settings.region or None,
                    config=self._config(),
                    **creds,
                )
            )
            self._stack = stack
            await self._ensure_bucket()
        except BaseException:
            await stack.aclose()
            self._stack = self._client = None
            raise

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StorageError("the S3 store is not started")
        return self._client

    async def _ensure_bucket(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
            return
        except NoCredentialsError as exc:
            raise StorageError(
                f"no S3 credentials for {self.where}: set storage.access_key and "
                "storage.secret_key, or provide them through the AWS environment or config files"
            ) from exc
        except ClientError as exc:
            status = http_status(exc)
            if status in (401, 403):
                raise StorageError(
                    f"S3 refused access to {self.where} (HTTP {status}): check "
                    "storage.access_key/secret_key (or the AWS credential chain) and the bucket "
                    "policy"
                ) from exc
            if status != 404:
                raise StorageError(
                    f"S3 cannot use {self.where}: {_describe(exc)}; check storage.region and "
                    "storage.endpoint"
                ) from exc
        except _TRANSPORT_ERRORS as exc:
            raise StorageError(f"cannot reach S3 for {self.where}: {exc}") from exc
        if not self.settings.create_bucket:
            raise StorageError(
                f"{self.where} does not exist: create it, or set storage.create_bucket = true"
            )
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.settings.region and self.settings.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            await self.client.create_bucket(**args)
        except ClientError as exc:
            if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"cannot create {self.where}: {_describe(exc)}") from exc
        except _TRANSPORT_ERRORS as exc:
            raise StorageError(f"cannot reach S3 for {self.where}: {exc}") from exc
        log.info("created %s", self.where)

    async def check(self) -> None:
        with s3_call("HeadBucket"):
            await self.client.head_bucket(Bucket=self.bucket)

    # Keys

    def object_name(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid blob key {key[:80]!r}")
        return self.base + key

    def _session(self, state: UploadState) -> Session:
        d = state.driver or {}
        try:
            parts = tuple((str(etag), int(size)) for etag, size in d.get("parts") or ())
            session = Session(
                key=str(d.get("key") or state.id),
                part_size=int(d.get("part_size") or self.part_size),
                mpu=d.get("mpu") or None,
                parts=parts,
                held=d.get("held") or None,
                held_size=int(d.get("held_size") or 0),
                held_part=d.get("held_part") or None,
            )
        except (TypeError, ValueError) as exc:
            raise StorageError(f"upload {state.id}: unreadable driver state") from exc
        if d.get("etags") and not parts:
            # Written by a version that kept the bytes after the parts in a local file.
            raise BlobUploadInvalid("this upload was started by an older dockyard; start again")
        return session

    def part_size_for(self, base: int, number: int, size_hint: int | None) -> int:
        """The size of part `number`: the session's part size, raised for a declared size that
        would not fit in half the part numbers, doubled every PART_GROWTH_EVERY parts."""
        size = base
        if size_hint:
            wanted = -(-size_hint // OWN_PART_BUDGET)
            size = max(size, -(-wanted // MIB) * MIB)
        size <<= (number - 1) // PART_GROWTH_EVERY
        return min(size, MAX_PART)

    def session_keys(self, state: UploadState) -> set[str]:
        session = self._session(state)
        return {session.key} | ({session.held} if session.held else set())

    # Uploads

    async def init_upload(self, upload_id: str) -> dict[str, Any]:
        # Nothing touches S3 yet: most blobs (configs, small layers) fit in one object, stored
        # by the PATCH that brings their bytes.
        return Session(key=upload_id, part_size=self.part_size).dump()

    async def write_upload(
        self,
        state: UploadState,
        blocks: AsyncIterator[bytes],
        sink: BlockSink,
        size_hint: int | None = None,
    ) -> UploadState:
        session = self._session(state)
        if state.offset != session.size:
            raise StorageError(f"upload {state.id}: recorded parts do not match its size")
        writer = _PartWriter(self, state.id, session, sink, size_hint)
        try:
            new = await writer.run(blocks)
        except BaseException:
            await writer.abandon()
            raise
        return UploadState(state.id, new.size, new.dump())

    async def settle_write(
        self, previous: UploadState, current: UploadState, recorded: bool
    ) -> None:
        old, new = self._session(previous), self._session(current)
        doomed = old.held if recorded else new.held
        if doomed and old.held != new.held:
            await self._delete_quietly(doomed)
        if not recorded and new.mpu and new.mpu != old.mpu:
            # The losing write started this multipart upload; nobody will complete it.
            with contextlib.suppress(StorageError):
                await self._abort_mpu(self.object_name(new.key), new.mpu)

    async def _delete_quietly(self, key: str) -> None:
        try:
            await self.delete_blob(key)
        except StorageError:
            log.warning("could not delete %s (garbage collection will)", key)

    async def read_upload(self, state: UploadState) -> AsyncIterator[bytes]:
        session = self._session(state)
        if session.mpu is not None:
            raise UploadUnreadable(
                f"upload {state.id}: S3 cannot read back a multipart upload in progress"
            )
        if session.held and session.held_size:
            async for block in self._stream(self.object_name(session.held), 0,
                                            session.held_size - 1, session.held_size):
                yield block

    async def commit_upload(self, state: UploadState, digest: str) -> str:
        session = self._session(state)
        if state.offset != session.size:
            raise StorageError(f"upload {state.id}: recorded parts do not match its size")
        if session.mpu is None:
            if session.held:
                # The object the last PATCH stored holds the whole blob: it is the blob.
                return session.held
            with s3_call("PutObject"):  # the empty blob
                await self.client.put_object(
                    Bucket=self.bucket, Key=self.object_name(session.key), Body=b""
                )
            return session.key
        await self._complete(state, session)
        if session.held:
            await self._delete_quietly(session.held)
        return session.key

    async def _complete(self, state: UploadState, session: Session) -> None:
        assert session.mpu is not None
        name = self.object_name(session.key)
        parts = [{"PartNumber": i + 1, "ETag": etag} for i, (etag, _) in enumerate(session.parts)]
        if session.held:
            if session.held_part is None:
                raise StorageError(f"upload {state.id}: its last part was never sent")
            parts.append({"PartNumber": len(parts) + 1, "ETag": session.held_part})
        try:
            with s3_call("CompleteMultipartUpload"):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=session.mpu,
                    MultipartUpload={"Parts": parts},
                )
        except StorageError as exc:
            cause = exc.__cause__
            code = error_code(cause) if isinstance(cause, ClientError) else ""
            if code == "InvalidPart":
                # Another write to this session overwrote a part after this one was recorded.
                raise BlobUploadInvalid(
                    "a part of this upload was overwritten by a concurrent write; start again"
                ) from exc
            if code != "NoSuchUpload":
                raise
            # An earlier commit completed it but its answer was lost: done if the object is whole.
            with s3_call("HeadObject"):
                head = await self.client.head_object(Bucket=self.bucket, Key=name)
            if int(head.get("ContentLength", -1)) != state.offset:
                raise StorageError(f"upload {state.id}: its multipart upload is gone") from exc

    async def abort_upload(self, state: UploadState) -> None:
        session = self._session(state)
        if session.held:
            await self.delete_blob(session.held)
        # Also the multipart uploads a failed write may have started without recording them.
        name = self.object_name(session.key)
        ids = set(await self._multipart_uploads(name))
        if session.mpu:
            ids.add(session.mpu)
        for mpu in ids:
            await self._abort_mpu(name, mpu)

    async def _abort_mpu(self, name: str, mpu: str) -> None:
        try:
            await self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=mpu)
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise StorageError(f"S3 AbortMultipartUpload failed: {_describe(exc)}") from exc
        except _TRANSPORT_ERRORS as exc:
            raise StorageError(f"S3 AbortMultipartUpload failed: {_describe(exc)}") from exc

    async def _multipart_uploads(self, name: str) -> list[str]:
        found: list[str] = []
        with s3_call("ListMultipartUploads"):
            paginator = self.client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=name):
                found += [u["UploadId"] for u in page.get("Uploads", []) if u["Key"] == name]
        return found

    async def _create_multipart(self, name: str) -> str:
        with s3_call("CreateMultipartUpload"):
            resp = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=name, ContentType="application/octet-stream"
            )
        return str(resp["UploadId"])

    async def _upload_part(self, name: str, mpu: str, number: int, data: io.BytesIO) -> str:
        # A file object, not bytes: aiohttp then sends it in pieces as the socket drains,
        # where bytes would be copied whole into the transport's buffer (twice the memory).
        data.seek(0)
        with s3_call("UploadPart"):
            resp = await self.client.upload_part(
                Bucket=self.bucket, Key=name, UploadId=mpu, PartNumber=number, Body=data
            )
        return str(resp["ETag"])

    async def _put_held(self, upload_id: str, data: io.BytesIO) -> str:
        """Store bytes a session holds between requests in a fresh object; return its key.

        A fresh name per write: the previous object stays what the recorded state says until
        the registry records the new one (settle_write then deletes the old)."""
        key = f"{upload_id}.{secrets.token_hex(6)}"
        data.seek(0)
        with s3_call("PutObject"):
            await self.client.put_object(Bucket=self.bucket, Key=self.object_name(key), Body=data)
        return key

    async def _read_held(self, session: Session) -> bytes:
        assert session.held is not None
        chunks = [b async for b in self._stream(self.object_name(session.held), 0,
                                                session.held_size - 1, session.held_size)]
        return b"".join(chunks)

    # Blobs

    async def put_blob(self, digest: str, data: bytes) -> str:
        algorithm, _, hexpart = digest.partition(":")
        # A fresh object per call, like every commit: garbage collection may be deleting an
        # unreferenced object of this digest at this very moment, and must not take this one.
        key = f"{algorithm}/{hexpart}.{secrets.token_hex(6)}"
        with s3_call("PutObject"):
            await self.client.put_object(Bucket=self.bucket, Key=self.object_name(key), Body=data)
        return key

    async def open_blob(self, key: str, size: int, start: int, end: int) -> BlobSource:
        name = self.object_name(key)
        if self.settings.redirect:
            # Signed locally: no request to S3. The client's Range goes to S3 with it.
            with s3_call("presign"):
                url = await self.client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": name},
                    ExpiresIn=int(self.settings.redirect_expiry),
                )
            return Redirect(url)
        if size == 0 or end < start:
            return Stream(_no_bytes, start, end)
        stream = self._stream(name, start, end, size)
        # The request is made here, before the response starts, so a failure is still a 503.
        first = await anext(stream, b"")
        return Stream(lambda: _prepend(first, stream), start, end)

    async def read_blob(self, key: str, size: int) -> AsyncIterator[bytes]:
        if size:
            async for block in self._stream(self.object_name(key), 0, size - 1, size):
                yield block

    async def _stream(self, name: str, start: int, end: int, size: int) -> AsyncIterator[bytes]:
        """Bytes start..end of object `name` (of `size` bytes) as one GetObject, read straight
        from the HTTP response in pieces of up to READ_CHUNK."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if start > 0 or end < size - 1:
            args["Range"] = f"bytes={start}-{end}"
        with s3_call("GetObject"):
            resp = await self.client.get_object(**args)
        body = resp["Body"]
        try:
            wanted = end - start + 1
            if int(resp.get("ContentLength", -1)) != wanted:
                raise StorageError(f"S3 object {name[-80:]!r} does not have the recorded size")
            # aiobotocore's body adds bookkeeping per read; its aiohttp stream is what it reads.
            content = body.raw_stream.content
            raise_limit = getattr(content, "set_read_chunk_size", None)
            if raise_limit is not None:
                raise_limit(READ_BUFSIZE)
            got = 0
            while got < wanted:
                with s3_call("GetObject"):
                    block = await content.read(min(READ_CHUNK, wanted - got))
                if not block:
                    raise StorageError(f"S3 object {name[-80:]!r} ended early")
                got += len(block)
                yield block
        finally:
            body.close()

    async def delete_blob(self, key: str) -> None:
        with s3_call("DeleteObject"):
            await self.client.delete_object(Bucket=self.bucket, Key=self.object_name(key))

    async def list_blob_keys(self) -> AsyncIterator[tuple[str, float]]:
        with s3_call("ListObjectsV2"):
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.base):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.base) :], obj["LastModified"].timestamp()

    async def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        """Sessions with a multipart upload in progress in S3 (the objects a session holds
        are blobs to garbage collection: it sweeps them when nothing records them)."""
        with s3_call("ListMultipartUploads"):
            paginator = self.client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.base):
                for upload in page.get("Uploads", []):
                    upload_id = upload["Key"][len(self.base) :]
                    if _is_upload_id(upload_id):
                        yield upload_id, upload["Initiated"].timestamp()


@dataclass
class _Sent:
    number: int
    size: int
    task: asyncio.Task[str]


@dataclass
class _PartWriter:
    """One write_upload call: hashes and gathers the bytes, sends each full part as the next
    one arrives (at most `parts_in_flight` parts in flight), and stores what is left over."""

    store: S3Store
    upload_id: str
    session: Session
    sink: BlockSink
    size_hint: int | None
    mpu: str | None = None
    created_mpu: str | None = None  # started by this write: aborted if the write fails
    sent: list[_Sent] = field(default_factory=list)
    buf: io.BytesIO = field(default_factory=io.BytesIO)
    filled: int = 0  # bytes in `buf`: the part being gathered
    target: int = 0  # the size at which `buf` is a full part
    batch: list[bytes] = field(default_factory=list)
    batch_len: int = 0
    absorbing: asyncio.Future[None] | None = None
    received: int = 0
    held_loaded: bool = False
    new_held: str | None = None

    def __post_init__(self) -> None:
        self.name = self.store.object_name(self.session.key)
        self.mpu = self.session.mpu
        self.next_number = len(self.session.parts) + 1
        self.target = self._size_of(self.next_number)

    def _size_of(self, number: int) -> int:
        base = self.session.part_size
        return self.store.part_size_for(base, number, self.size_hint)

    async def run(self, blocks: AsyncIterator[bytes]) -> Session:
        async for block in blocks:
            if block:
                await self._take(block)
        if not self.received:
            return self.session  # nothing arrived: nothing changes, not even the held object
        await self._absorbed()
        return await self._finish()

    async def _take(self, block: bytes) -> None:
        if not self.held_loaded:
            # The bytes held since the last request start the next part. Read only now: a
            # request that brings nothing costs nothing.
            self.held_loaded = True
            if self.session.held and self.session.held_size:
                self.buf.write(await self.store._read_held(self.session))
                self.filled = self.session.held_size
        self.received += len(block)
        while block:
            room = self.target - self.filled
            if room == 0:
                # Full, and more bytes follow: the part is complete. (Strictly past the
                # boundary, so that a blob of exactly one part stays one object.)
                await self._cut()
                continue
            piece = block if len(block) <= room else block[:room]
            self.batch.append(piece)
            self.batch_len += len(piece)
            self.filled += len(piece)
            block = block[len(piece) :]
        if self.batch_len >= WRITE_BATCH:
            await self._absorb()

    async def _absorb(self) -> None:
        """Hash and buffer the batch in a worker thread, overlapping the next batch's arrival
        (one batch at a time, so the hash sees the bytes in order)."""
        batch, self.batch, self.batch_len = self.batch, [], 0
        if self.absorbing is not None:
            await self.absorbing
        buf, sink = self.buf, self.sink

        def absorb() -> None:
            for piece in batch:
                buf.write(piece)
                sink(piece)

        self.absorbing = asyncio.get_running_loop().run_in_executor(None, absorb)

    async def _absorbed(self) -> None:
        if self.batch:
            await self._absorb()
        if self.absorbing is not None:
            absorbing, self.absorbing = self.absorbing, None
            await absorbing

    async def _cut(self) -> None:
        await self._absorbed()
        data, size = self.buf, self.filled
        self.buf, self.filled = io.BytesIO(), 0
        await self._send(data, size)
        self.target = self._size_of(self.next_number)

    async def _send(self, data: io.BytesIO, size: int) -> _Sent:
        number = self.next_number
        if number > MAX_PARTS:
            raise SizeInvalid(
                f"blob exceeds S3's {MAX_PARTS} parts: send it in larger chunks"
            )
        if self.mpu is None:
            self.mpu = self.created_mpu = await self.store._create_multipart(self.name)
        await self._room()
        task = asyncio.create_task(self.store._upload_part(self.name, self.mpu, number, data))
        sent = _Sent(number, size, task)
        self.sent.append(sent)
        self.next_number += 1
        return sent

    async def _room(self) -> None:
        """Wait until fewer than parts_in_flight parts are on their way; fail early if one
        of them failed."""
        while True:
            pending = [s.task for s in self.sent if not s.task.done()]
            for s in self.sent:
                if s.task.done() and s.task.exception() is not None:
                    raise s.task.exception()  # type: ignore[misc]
            if len(pending) < self.store.parts_in_flight:
                return
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    async def _finish(self) -> Session:
        left, data = self.filled, self.buf
        held: str | None = None
        held_part: str | None = None
        if self.mpu is None:
            # Never more than one part: one object holds the whole blob so far.
            self.new_held = held = await self.store._put_held(self.upload_id, data)
        elif left >= MIN_PART and self.next_number <= OWN_PART_BUDGET:
            await self._send(data, left)  # a part that may be followed by more
        elif left:
            # Too short for a part that is not the last: keep it readable for a following
            # request, and send it as the provisional last part so that commit is one request.
            assert self.mpu is not None
            await self._room()
            value = data.getvalue()
            self.new_held = held = await self.store._put_held(self.upload_id, io.BytesIO(value))
            held_part = await self.store._upload_part(
                self.name, self.mpu, self.next_number, io.BytesIO(value)
            )
        parts = list(self.session.parts)
        for s in self.sent:
            parts.append((await s.task, s.size))
        return Session(
            key=self.session.key,
            part_size=self.session.part_size,
            mpu=self.mpu,
            parts=tuple(parts),
            held=held,
            held_size=left if held else 0,
            held_part=held_part,
        )

    async def abandon(self) -> None:
        """Stop parts still in flight (S3 keeps or drops them; a resumed write overwrites
        them) and drop what only this write started."""
        for s in self.sent:
            if not s.task.done():
                s.task.cancel()
        for s in self.sent:
            with contextlib.suppress(BaseException):
                await s.task
        if self.absorbing is not None:
            with contextlib.suppress(BaseException):
                await self.absorbing
        with contextlib.suppress(BaseException):
            if self.new_held:
                await self.store._delete_quietly(self.new_held)
            if self.created_mpu:
                await self.store._abort_mpu(self.name, self.created_mpu)


def _is_upload_id(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for block in rest:
        yield block


async def _no_bytes() -> AsyncIterator[bytes]:
    return
    yield b""
