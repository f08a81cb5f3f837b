"""The object store on its own: aiobotocore straight against SeaweedFS, the physical limit the
`s3` scenario compares the registries with, and bucket listings to check what they stored.

Every call is blocking (one `asyncio.run`); the client is created before the clock starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

READ_CHUNK = 1024 * 1024


class RawStore:
    def __init__(self, endpoint: str, access_key: str, secret_key: str,
                 region: str = "us-east-1") -> None:
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[Any]:
        config = AioConfig(s3={"addressing_style": "path"}, max_pool_connections=32,
                           retries={"max_attempts": 1})
        async with get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=config,
        ) as client:
            yield client

    def create_bucket(self, bucket: str) -> None:
        async def go() -> None:
            async with self._client() as s3:
                await s3.create_bucket(Bucket=bucket)

        asyncio.run(go())

    def usage(self, bucket: str, prefix: str = "") -> tuple[int, int]:
        """(objects, bytes) under `prefix`."""
        async def go() -> tuple[int, int]:
            count = size = 0
            async with self._client() as s3:
                paginator = s3.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                    for obj in page.get("Contents", []):
                        count += 1
                        size += obj["Size"]
            return count, size

        return asyncio.run(go())

    def put(self, bucket: str, objects: dict[str, bytes], part_size: int,
            parallel: bool = False) -> float:
        """Multipart upload of each object in `part_size` parts; seconds.

        Sequential (one part in flight at a time: a single stream), or every object at once
        (`parallel`, like a client pushing its layers concurrently; parts of one object stay
        sequential)."""
        async def upload(s3: Any, key: str, data: bytes) -> None:
            view = memoryview(data)
            mpu = await s3.create_multipart_upload(Bucket=bucket, Key=key)
            parts = []
            for number, start in enumerate(range(0, len(data), part_size), 1):
                resp = await s3.upload_part(Bucket=bucket, Key=key, UploadId=mpu["UploadId"],
                                            PartNumber=number,
                                            Body=bytes(view[start:start + part_size]))
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            await s3.complete_multipart_upload(Bucket=bucket, Key=key,
                                               UploadId=mpu["UploadId"],
                                               MultipartUpload={"Parts": parts})

        async def go() -> float:
            async with self._client() as s3:
                t0 = time.monotonic()
                if parallel:
                    await asyncio.gather(*(upload(s3, k, d) for k, d in objects.items()))
                else:
                    for key, data in objects.items():
                        await upload(s3, key, data)
                return time.monotonic() - t0

        return asyncio.run(go())

    def get(self, bucket: str, keys: list[str]) -> tuple[float, int]:
        """GET each object in turn on one stream, reading 1 MiB at a time and dropping it;
        (seconds, bytes)."""
        async def go() -> tuple[float, int]:
            total = 0
            async with self._client() as s3:
                t0 = time.monotonic()
                for key in keys:
                    resp = await s3.get_object(Bucket=bucket, Key=key)
                    async with resp["Body"] as body:
                        while chunk := await body.read(READ_CHUNK):
                            total += len(chunk)
                return time.monotonic() - t0, total

        return asyncio.run(go())

    def get_ranged(self, bucket: str, sizes: dict[str, int], range_size: int,
                   parallel: int) -> tuple[float, int]:
        """Each object in turn as `parallel` concurrent ranged GETs of `range_size`;
        (seconds, bytes)."""
        async def go() -> tuple[float, int]:
            total = 0
            async with self._client() as s3:
                sem = asyncio.Semaphore(parallel)

                async def one(key: str, start: int, end: int) -> int:
                    async with sem:
                        resp = await s3.get_object(Bucket=bucket, Key=key,
                                                   Range=f"bytes={start}-{end}")
                        n = 0
                        async with resp["Body"] as body:
                            while chunk := await body.read(READ_CHUNK):
                                n += len(chunk)
                        return n

                t0 = time.monotonic()
                for key, size in sizes.items():
                    got = await asyncio.gather(*(
                        one(key, s, min(s + range_size, size) - 1)
                        for s in range(0, size, range_size)))
                    total += sum(got)
                return time.monotonic() - t0, total

        return asyncio.run(go())
