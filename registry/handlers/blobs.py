"""/v2/<name>/blobs/<digest>: GET (with Range), HEAD, DELETE. spec: end-2, end-10."""

from __future__ import annotations

import re

from aiohttp import web

from dockyard.core.errors import SizeInvalid

from ..access import access_of
from ..metrics import BYTES_SENT, record_dedup
from ..storage import LocalFile, Redirect, Stream
from .base import registry_of, repo_name

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range asked for, None for the whole blob; 416 when unsatisfiable."""
    if not header:
        return None
    m = RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # RFC 9110 14.2: an unparseable Range is ignored
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    else:
        suffix = int(last)
        start, end = max(size - suffix, 0), size - 1
        if suffix == 0:
            start = size
    if start >= size:
        raise SizeInvalid(
            f"range {header[:100]!r} is outside the blob of {size} bytes",
            status=416,
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


def _headers(digest: str) -> dict[str, str]:
    return {
        "Docker-Content-Digest": digest,
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
        "ETag": f'"{digest}"',
    }


async def head_blob(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    info = await registry_of(request).blobs.stat(
        name, request.match_info["digest"], access_of(request)
    )
    if info.deduplicated_for(name):
        record_dedup(info.size)
    headers = _headers(info.digest)
    headers["Content-Length"] = str(info.size)
    headers["Content-Type"] = "application/octet-stream"
    return web.Response(status=200, headers=headers)


async def get_blob(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    registry = registry_of(request)
    info = await registry.blobs.stat(name, request.match_info["digest"], access_of(request))
    wanted = parse_range(request.headers.get("Range"), info.size)
    start, end = wanted if wanted else (0, info.size - 1)
    source = await registry.blobs.open(info, start, end)
    headers = _headers(info.digest)
    BYTES_SENT.inc(end - start + 1 if info.size else 0)
    if isinstance(source, LocalFile):
        # aiohttp applies the (already validated) Range itself and sends with sendfile.
        return web.FileResponse(source.path, headers=headers)
    if isinstance(source, Redirect):
        return web.Response(status=307, headers={**headers, "Location": source.url})
    assert isinstance(source, Stream)
    resp = web.StreamResponse(status=206 if wanted else 200, headers=headers)
    resp.content_type = "application/octet-stream"
    resp.content_length = end - start + 1 if info.size else 0
    if wanted:
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    await resp.prepare(request)
    if info.size:
        async for block in source.chunks():
            await resp.write(block)
    await resp.write_eof()
    return resp


async def delete_blob(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    digest = request.match_info["digest"]
    await registry_of(request).blobs.delete(name, digest, access_of(request))
    return web.Response(status=202, headers={"Docker-Content-Digest": digest})
