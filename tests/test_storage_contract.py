"""The storage-driver contract (registry/storage/base.py), one suite for every driver.

Like distribution's driver testsuites: each test runs on the filesystem driver and on the S3
driver against a real SeaweedFS. Sizes cross the S3 driver's 5 MiB part boundary on purpose, so
the multipart path (parts, tail, resumption) is exercised, not just single-object puts.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dockyard.core import hashing
from registry.config import StorageSettings
from registry.storage import (
    BlobSource,
    BlobStore,
    LocalFile,
    Redirect,
    StorageError,
    Stream,
    UploadState,
    UploadUnreadable,
    make_store,
)

MIB = 1 << 20
PART = 5 * MIB  # the S3 driver's part size in this suite (its minimum)


def payload(seed: str, size: int) -> bytes:
    """Distinct, incompressible bytes (fast: a hash-seeded random generator)."""
    import random

    return random.Random(seed).randbytes(size)


async def blocks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def failing(data: bytes) -> AsyncIterator[bytes]:
    """A client that sends `data` and then drops the connection."""
    async for block in blocks(data):
        yield block
    raise ConnectionResetError("client went away")


class Driver:
    """A store under test and how to make another instance over the same data (a restart)."""

    def __init__(self, kind: str, data_dir: Path, settings: StorageSettings) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.settings = settings
        self.store: BlobStore = make_store(settings, data_dir)

    async def restart(self) -> BlobStore:
        await self.store.close()
        self.store = make_store(self.settings, self.data_dir)
        await self.store.start()
        return self.store


@pytest.fixture(params=["filesystem", "s3"])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    if request.param == "s3":
        server = request.getfixturevalue("seaweed")
        settings = StorageSettings(
            driver="s3",
            endpoint=server.endpoint,
            bucket="contract",
            # Every test gets its own prefix: listings see only what the test made.
            prefix=f"t-{uuid.uuid4().hex[:12]}/",
            access_key=server.access_key,
            secret_key=server.secret_key,
            create_bucket=True,
            part_size_mib=PART // MIB,
            max_retries=1,
        )
    else:
        settings = StorageSettings()
    d = Driver(request.param, tmp_path / "data", settings)
    await d.store.start()
    yield d
    await d.store.close()


async def read_source(source: BlobSource, start: int, end: int) -> bytes:
    """The bytes a client would receive for start..end (inclusive) of the blob."""
    if isinstance(source, LocalFile):
        # The HTTP layer applies the range to a local file (sendfile).
        with open(source.path, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start + 1)
    if isinstance(source, Redirect):
        async with aiohttp.ClientSession() as http:
            headers = {"Range": f"bytes={start}-{end}"} if end >= start else {}
            async with http.get(source.url, headers=headers) as resp:
                assert resp.status in (200, 206), await resp.text()
                return await resp.read()
    assert isinstance(source, Stream)
    assert (source.start, source.end) == (start, end)
    if end < start:
        return b""
    return b"".join([block async for block in source.chunks()])


async def blob_bytes(store: BlobStore, key: str, size: int, start: int = 0, end: int = -2) -> bytes:
    end = size - 1 if end == -2 else end
    return await read_source(await store.open_blob(key, size, start, end), start, end)


def new_id() -> str:
    return str(uuid.uuid4())


async def open_session(store: BlobStore) -> UploadState:
    upload_id = new_id()
    return UploadState(upload_id, 0, await store.init_upload(upload_id))


async def write(store: BlobStore, state: UploadState, data: bytes, hasher: Any) -> UploadState:
    new = await store.write_upload(state, blocks(data), hasher.update)
    assert new.offset == state.offset + len(data)
    # The registry persists driver state as JSON after every write: it must survive that.
    return UploadState(new.id, new.offset, json.loads(json.dumps(new.driver)))


async def upload(store: BlobStore, pieces: list[bytes]) -> tuple[str, bytes]:
    """A full session: write the pieces, check the hash fed by the sink, commit."""
    state = await open_session(store)
    hasher = hashlib.sha256()
    for piece in pieces:
        state = await write(store, state, piece, hasher)
    data = b"".join(pieces)
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    key = await store.commit_upload(state, f"sha256:{hasher.hexdigest()}")
    return key, data


async def read_back(store: BlobStore, state: UploadState) -> bytes | None:
    """What read_upload gives back, or None where the driver cannot (S3 multipart uploads)."""
    try:
        return b"".join([block async for block in store.read_upload(state)])
    except UploadUnreadable:
        return None


async def upload_ids(store: BlobStore) -> set[str]:
    return {upload_id async for upload_id, _ in store.list_uploads()}


async def blob_keys(store: BlobStore) -> set[str]:
    return {key async for key, _ in store.list_blob_keys()}


async def test_chunked_upload_reads_back_and_commits(driver: Driver) -> None:
    store = driver.store
    # Pieces smaller than a part, one crossing two part boundaries, a one-byte chunk.
    pieces = [payload("a", 3 * MIB), payload("b", 4 * MIB), b"x", payload("c", 5 * MIB + 17)]
    state = await open_session(store)
    hasher = hashlib.sha256()
    for piece in pieces:
        state = await write(store, state, piece, hasher)
    assert state.id in await upload_ids(store)
    data = b"".join(pieces)
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()

    # read_upload streams exactly the bytes written so far, where the driver can read them
    # before commit (the registry re-hashes with it; it never needs to with a saved hash).
    back = await read_back(store, state)
    assert back == data or (back is None and driver.kind == "s3")

    key = await store.commit_upload(state, f"sha256:{hasher.hexdigest()}")
    assert await blob_bytes(store, key, len(data)) == data
    assert key in await blob_keys(store)
    assert state.id not in await upload_ids(store)


@pytest.mark.parametrize(
    "sizes",
    [[], [0], [1000, 24], [PART], [PART - 1, 1, PART]],
    ids=["empty", "empty-chunk", "small", "one-part", "two-parts-exact"],
)
async def test_blob_sizes_at_the_edges(driver: Driver, sizes: list[int]) -> None:
    pieces = [payload(f"edge{i}", n) for i, n in enumerate(sizes)]
    key, data = await upload(driver.store, pieces)
    assert await blob_bytes(driver.store, key, len(data)) == data


async def test_failed_write_leaves_the_old_offset_usable(driver: Driver) -> None:
    store = driver.store
    first = payload("first", 3 * MIB)
    state = await open_session(store)
    hasher = hashlib.sha256()
    state = await write(store, state, first, hasher)

    # The failing chunk crosses a part boundary: the S3 driver has already sent part 1 (with
    # bytes that will never belong to the blob) when the client goes away.
    with pytest.raises(ConnectionResetError):
        await store.write_upload(state, failing(payload("lost", 4 * MIB)), lambda _: None)
    assert await read_back(store, state) == first

    # The client resumes from the old offset with different bytes; nothing of the lost chunk
    # may show up in the blob.
    second = payload("second", 6 * MIB)
    state = await write(store, state, second, hasher)
    key = await store.commit_upload(state, f"sha256:{hasher.hexdigest()}")
    assert await blob_bytes(store, key, len(first) + len(second)) == first + second


async def test_write_to_an_aborted_session_leaves_nothing(driver: Driver) -> None:
    store = driver.store
    state = await open_session(store)
    await store.abort_upload(state)
    try:
        late = await store.write_upload(state, blocks(payload("late", PART + 1)), lambda _: None)
    except StorageError:
        pass  # the driver knows the session is gone (a local file)
    else:
        # A driver that keeps nothing per session cannot know: the registry, which finds no
        # row to record the write in, settles it as lost, and nothing may stay behind.
        await store.settle_write(state, late, recorded=False)
    assert not await blob_keys(store)
    assert state.id not in await upload_ids(store)


async def test_abort_drops_the_session_and_is_idempotent(driver: Driver) -> None:
    store = driver.store
    # Past a part: the S3 driver holds a multipart upload and an object with the 1 MiB after
    # the part, which abort must remove.
    state = await write(store, await open_session(store), payload("abort", PART + MIB),
                        hashlib.sha256())
    other = await write(store, await open_session(store), payload("other", PART + MIB),
                        hashlib.sha256())
    assert {state.id, other.id} <= await upload_ids(store)

    await store.abort_upload(state)
    await store.abort_upload(state)
    remaining = await upload_ids(store)
    assert state.id not in remaining
    assert other.id in remaining
    assert not [key for key in await blob_keys(store) if key.startswith(state.id)]

    # A session known only by id (what garbage collection finds when its row is gone) is
    # dropped the same way; objects it held are left to the orphan sweep (unindexed blobs).
    await store.abort_upload(UploadState(other.id))
    assert not await upload_ids(store)
    assert not [key for key in await blob_keys(store) if key.startswith(state.id)]


async def test_same_digest_committed_twice(driver: Driver) -> None:
    store = driver.store
    data = payload("twice", PART + 3)
    key1, _ = await upload(store, [data])
    key2, _ = await upload(store, [data[:100], data[100:]])
    assert await blob_bytes(store, key1, len(data)) == data
    assert await blob_bytes(store, key2, len(data)) == data
    if key1 != key2:
        # What the registry does with the later copy: one object per digest stays.
        await store.delete_blob(key2)
        assert await blob_bytes(store, key1, len(data)) == data
        assert key2 not in await blob_keys(store)
    assert key1 in await blob_keys(store)


async def test_open_blob_ranges(driver: Driver) -> None:
    store = driver.store
    key, data = await upload(store, [payload("ranges", PART + 1000)])
    size = len(data)
    for start, end in [(0, 0), (10, 99), (PART - 1, PART + 1), (size - 1, size - 1), (0, size - 1)]:
        assert await blob_bytes(store, key, size, start, end) == data[start : end + 1], (start, end)


async def test_put_blob_is_idempotent(driver: Driver) -> None:
    store = driver.store
    manifest = json.dumps({"schemaVersion": 2, "seed": new_id()}).encode()
    digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
    key1 = await store.put_blob(digest, manifest)
    key2 = await store.put_blob(digest, manifest)
    for key in (key1, key2):
        assert await blob_bytes(store, key, len(manifest)) == manifest
    assert {key1, key2} <= await blob_keys(store)


async def test_delete_blob_is_idempotent(driver: Driver) -> None:
    store = driver.store
    key, _ = await upload(store, [b"short-lived"])
    await store.delete_blob(key)
    await store.delete_blob(key)
    assert key not in await blob_keys(store)
    other, other_data = await upload(store, [b"survivor"])
    assert await blob_bytes(store, other, len(other_data)) == other_data


async def test_session_survives_a_restart(driver: Driver) -> None:
    store = driver.store
    first = payload("before", 6 * MIB)  # one full part sent, a 1 MiB tail kept between requests
    state = await open_session(store)
    hasher = hashing.ResumableHash("sha256")
    state = await write(store, state, first, hasher)
    saved = hasher.state()  # what the registry keeps in the session's row

    store = await driver.restart()  # a new process, or another worker: only the state is shared
    assert state.id in await upload_ids(store)
    resumed = hashing.ResumableHash("sha256", saved)
    second = payload("after", 2 * MIB)
    state = await write(store, state, second, resumed)
    assert resumed.hexdigest() == hashlib.sha256(first + second).hexdigest()
    key = await store.commit_upload(state, f"sha256:{resumed.hexdigest()}")
    assert await blob_bytes(store, key, len(first) + len(second)) == first + second


async def test_stray_bytes_after_a_crash_are_dropped(driver: Driver) -> None:
    """A crash mid-write leaves bytes past the recorded offset; the next write replaces them."""
    store = driver.store
    state = await open_session(store)
    state = await write(store, state, b"kept", hashlib.sha256())
    grown = await store.write_upload(state, blocks(b"-unrecorded"), lambda _: None)
    assert grown.offset > state.offset
    # The registry never persisted `grown` (it crashed): it continues from `state`.
    store = await driver.restart()
    state = await write(store, state, b"-next", hashlib.sha256())
    key = await store.commit_upload(state, "sha256:" + "0" * 64)
    assert await blob_bytes(store, key, state.offset) == b"kept-next"


async def test_chunk_min_length(driver: Driver) -> None:
    expected = PART if driver.kind == "s3" else 0
    assert driver.store.chunk_min_length == expected
