"""S3 driver: blobs in a bucket of any S3-compatible store (AWS S3, SeaweedFS, MinIO, Ceph).

Object layout, under the configured `prefix`:
  blobs/<upload-id>        a blob committed from an upload session
  blobs/<alg>/<hex>.<n>    a blob stored whole by `put_blob` (manifests)
Keys handed to the registry are relative to `<prefix>blobs/`. Which object holds a digest is
recorded in the registry's global blob index, never derived from the key, so:

- An upload is an S3 multipart upload to its final object. PATCH bytes stream into a local file
  (s3_spool.py says why) and each full part of `part_size_mib` is sent as soon as it is complete,
  one part in flight while the next arrives. Commit sends the tail as the last part and completes
  the multipart upload where it was written: no CopyObject, no UploadPartCopy. A blob of at
  most one part never starts a multipart upload; commit stores it with one PutObject.
- A duplicate of a digest already stored is a separate object that the registry deletes.
- Blob GET is a ranged GetObject streamed through, or a redirect to a presigned URL. Nothing
  else the registry answers (HEAD, manifests, tags, catalog) needs the bucket.

Every S3 failure surfaces as StorageError (a 503 with a spec error body); botocore retries the
safe ones with backoff first. A write that fails leaves the session at its old offset: parts it
sent past that offset are overwritten by part number when the client resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
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

from ..config import ConfigError, StorageSettings
from .base import (
    BlobSource,
    BlobStore,
    BlockSink,
    Redirect,
    StorageError,
    Stream,
    UploadState,
)
from .s3_spool import CREATING, UploadSpool, is_upload_id

log = logging.getLogger("dockyard.storage.s3")

MIB = 1 << 20
MIN_PART = 5 * MIB  # S3's smallest part (every part but the last)
# S3 allows 5 GiB parts, but a part is held in memory while it is sent: cap it lower.
MAX_PART = 256 * MIB
MAX_PARTS = 10_000
# Bytes hashed and spooled per worker-thread hop: amortises the hop, bounds what is held.
WRITE_BATCH = MIB
READ_CHUNK = 256 * 1024
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
MAX_POOL_CONNECTIONS = 32

_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
_S3_ERRORS = (ClientError, *_TRANSPORT_ERRORS)


_session: AioSession | None = None


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
    """The driver state of one upload, as persisted by the registry after every write."""

    key: str
    part_size: int
    mpu: str | None = None
    etags: tuple[str, ...] = ()

    @property
    def flushed(self) -> int:
        """Bytes already sent to S3 as parts."""
        return len(self.etags) * self.part_size

    def dump(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "part_size": self.part_size,
            "mpu": self.mpu,
            "etags": list(self.etags),
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
        self.settings = settings
        self.bucket = settings.bucket
        self.part_size = part_size
        self.chunk_min_length = part_size
        self.base = f"{settings.prefix}blobs/"
        self.spool = UploadSpool(data_dir / "uploads")
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
        await asyncio.to_thread(self.spool.setup)
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
        return Session(
            key=str(d.get("key") or state.id),
            part_size=int(d.get("part_size") or self.part_size),
            mpu=d.get("mpu") or None,
            etags=tuple(d.get("etags") or ()),
        )

    # Uploads

    async def init_upload(self, upload_id: str) -> dict[str, Any]:
        # Nothing touches S3 yet: most blobs (configs, small layers) fit in one part and are
        # stored by one PutObject at commit.
        await asyncio.to_thread(self.spool.create, upload_id)
        return Session(key=upload_id, part_size=self.part_size).dump()

    async def write_upload(
        self, state: UploadState, blocks: AsyncIterator[bytes], sink: BlockSink
    ) -> UploadState:
        session = self._session(state)
        if state.offset < session.flushed:
            raise StorageError(f"upload {state.id}: state records more parts than bytes")
        fd = await asyncio.to_thread(self.spool.open_at, state.id, state.offset)
        writer = _PartWriter(self, state.id, session, fd, state.offset)
        try:
            batch: list[bytes] = []
            size = 0
            async for block in blocks:
                batch.append(block)
                size += len(block)
                if size >= WRITE_BATCH:
                    await writer.write(batch, sink)
                    batch, size = [], 0
            if batch:
                await writer.write(batch, sink)
            await writer.finish()
        except BaseException:
            await writer.abandon()
            raise
        finally:
            os.close(fd)
        new = replace(session, mpu=writer.mpu, etags=tuple(writer.etags))
        return UploadState(state.id, writer.offset, new.dump())

    async def read_upload(self, state: UploadState) -> AsyncIterator[bytes]:
        fd = await asyncio.to_thread(self.spool.open_read, state.id)
        try:
            start = 0
            while start < state.offset:
                n = min(WRITE_BATCH, state.offset - start)
                yield await asyncio.to_thread(UploadSpool.read, fd, start, n)
                start += n
        finally:
            os.close(fd)

    async def commit_upload(self, state: UploadState, digest: str) -> str:
        session = self._session(state)
        tail_len = state.offset - session.flushed
        if not 0 <= tail_len <= session.part_size:
            raise StorageError(f"upload {state.id}: recorded parts do not match its size")
        tail = await asyncio.to_thread(self.spool.read_range, state.id, session.flushed, tail_len)
        name = self.object_name(session.key)
        if not session.etags:
            with s3_call("PutObject"):
                await self.client.put_object(Bucket=self.bucket, Key=name, Body=tail)
            # A write that failed after starting a multipart upload may have left one behind.
            with contextlib.suppress(StorageError):
                await self._abort_all(state.id, session, listing=False)
        else:
            await self._complete(state, session, tail)
        await asyncio.to_thread(self.spool.remove, state.id)
        return session.key

    async def _complete(self, state: UploadState, session: Session, tail: bytes) -> None:
        assert session.mpu is not None
        name = self.object_name(session.key)
        parts = [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(session.etags)]
        try:
            if tail:
                number = len(parts) + 1
                etag = await self._upload_part(name, session.mpu, number, tail)
                parts.append({"PartNumber": number, "ETag": etag})
            with s3_call("CompleteMultipartUpload"):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=session.mpu,
                    MultipartUpload={"Parts": parts},
                )
        except StorageError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and error_code(cause) == "NoSuchUpload"):
                raise
            # An earlier commit completed it but its answer was lost: done if the object is whole.
            with s3_call("HeadObject"):
                head = await self.client.head_object(Bucket=self.bucket, Key=name)
            if int(head.get("ContentLength", -1)) != state.offset:
                raise StorageError(f"upload {state.id}: its multipart upload is gone") from exc

    async def abort_upload(self, state: UploadState) -> None:
        session = self._session(state)
        # An empty driver state (a session only known from list_uploads) gets a full search.
        await self._abort_all(state.id, session, listing=not state.driver)
        await asyncio.to_thread(self.spool.remove, state.id)

    async def _abort_all(self, upload_id: str, session: Session, listing: bool) -> None:
        """Abort every multipart upload this session may have started."""
        name = self.object_name(session.key)
        ids = {session.mpu} if session.mpu else set()
        marker = await asyncio.to_thread(self.spool.load_mpu, upload_id)
        if marker == CREATING or listing:
            ids |= set(await self._multipart_uploads(name))
        elif marker:
            ids.add(marker)
        for mpu in ids:
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

    async def _create_multipart(self, upload_id: str, name: str) -> str:
        # The marker goes first: a crash between S3's answer and our record of it still leaves
        # a trace that abort_upload and the next write follow.
        await asyncio.to_thread(self.spool.save_mpu, upload_id, CREATING)
        with s3_call("CreateMultipartUpload"):
            resp = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=name, ContentType="application/octet-stream"
            )
        mpu = str(resp["UploadId"])
        await asyncio.to_thread(self.spool.save_mpu, upload_id, mpu)
        return mpu

    async def _recover_multipart(self, upload_id: str, name: str) -> str | None:
        """A multipart upload that a failed write started but the session did not record."""
        marker = await asyncio.to_thread(self.spool.load_mpu, upload_id)
        if marker != CREATING:
            return marker
        found = await self._multipart_uploads(name)
        if not found:
            return None
        await asyncio.to_thread(self.spool.save_mpu, upload_id, found[0])
        return found[0]

    async def _upload_part(self, name: str, mpu: str, number: int, data: bytes) -> str:
        with s3_call("UploadPart"):
            resp = await self.client.upload_part(
                Bucket=self.bucket, Key=name, UploadId=mpu, PartNumber=number, Body=data
            )
        return str(resp["ETag"])

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
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if start > 0 or end < size - 1:
            args["Range"] = f"bytes={start}-{end}"
        # The request is made here, before the response starts, so a failure is still a 503.
        with s3_call("GetObject"):
            resp = await self.client.get_object(**args)
        body = resp["Body"]
        if int(resp.get("ContentLength", -1)) != end - start + 1:
            body.close()
            raise StorageError(f"S3 object for {key[:80]!r} does not have the recorded size")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    with s3_call("GetObject"):
                        block = await body.read(READ_CHUNK)
                    if not block:
                        return
                    yield block
            finally:
                body.close()

        return Stream(chunks, start, end)

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
        """Local sessions and, to catch orphans, multipart uploads S3 still holds for them."""
        seen = dict(await asyncio.to_thread(lambda: list(self.spool.sessions())))
        with s3_call("ListMultipartUploads"):
            paginator = self.client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.base):
                for upload in page.get("Uploads", []):
                    upload_id = upload["Key"][len(self.base) :]
                    if is_upload_id(upload_id):
                        when = upload["Initiated"].timestamp()
                        seen[upload_id] = max(seen.get(upload_id, 0.0), when)
        for upload_id, when in seen.items():
            yield upload_id, when


class _PartWriter:
    """One write_upload call: spools and hashes batches, sends each full part as it completes.

    At most one part is in flight while the next is received, so an upload holds at most one
    part in memory besides the batch being spooled.
    """

    def __init__(
        self, store: S3Store, upload_id: str, session: Session, fd: int, offset: int
    ) -> None:
        self.store = store
        self.upload_id = upload_id
        self.name = store.object_name(session.key)
        self.part_size = session.part_size
        self.fd = fd
        self.offset = offset
        self.mpu = session.mpu
        self.etags = list(session.etags)
        self.sent = len(self.etags)  # parts handed to S3, landed or in flight
        self.inflight: asyncio.Task[str] | None = None

    async def write(self, batch: list[bytes], sink: BlockSink) -> None:
        self.offset = await asyncio.to_thread(UploadSpool.append, self.fd, self.offset, batch, sink)
        # Strictly past the boundary: a blob of exactly one part stays a single PutObject.
        while self.offset > (self.sent + 1) * self.part_size:
            await self._send_next()

    async def _send_next(self) -> None:
        number = self.sent + 1
        if number > MAX_PARTS:
            raise StorageError(
                f"blob exceeds {MAX_PARTS} parts of {self.part_size // MIB} MiB; "
                "raise storage.part_size_mib"
            )
        await self._land()
        if self.mpu is None:
            self.mpu = await self.store._recover_multipart(self.upload_id, self.name)
        if self.mpu is None:
            self.mpu = await self.store._create_multipart(self.upload_id, self.name)
        data = await asyncio.to_thread(
            UploadSpool.read, self.fd, self.sent * self.part_size, self.part_size
        )
        self.inflight = asyncio.create_task(
            self.store._upload_part(self.name, self.mpu, number, data)
        )
        self.sent = number

    async def _land(self) -> None:
        if self.inflight is not None:
            task, self.inflight = self.inflight, None
            self.etags.append(await task)

    async def finish(self) -> None:
        await self._land()

    async def abandon(self) -> None:
        """Stop a part still in flight; S3 keeps or drops it, a resumed write overwrites it."""
        task, self.inflight = self.inflight, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(BaseException):
                await task


async def _no_bytes() -> AsyncIterator[bytes]:
    return
    yield b""
