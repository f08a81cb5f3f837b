"""/v2/<name>/blobs/<digest>: GET (with Range), HEAD, DELETE. spec: end-2, end-10."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import hdrs, web

from dockyard.core.errors import SizeInvalid

from ..access import access_of
from ..metrics import BYTES_SENT, record_dedup
from ..storage import LocalFile, Redirect, Stream
from .base import bounded_int, registry_of, repo_name

RANGE_RE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range asked for, None for the whole blob; 416 when unsatisfiable.

    RFC 9110 §14.1.2: a last-pos at or beyond the end means "to the end", a suffix longer than
    the blob means the whole blob, and a first-pos at or beyond the end is unsatisfiable (416,
    §15.5.17, with `Content-Range: bytes */size`). spec: a last-pos before first-pos makes the
    range invalid (RFC 9110 §14.1.1); a server may ignore the Range field (§14.2), and RFC 7233
    §3.1 said to answer an invalid range with 416: that is what dockyard does, because the
    official OCI conformance program ("range 500-0") counts a 200 there as "range requests
    unsupported". A Range it does not parse (several ranges, another unit) is ignored: the
    whole blob is sent (§14.2: a unit it does not understand MUST be ignored). Numbers
    of any length are compared without int() (which refuses more than 4,300 digits): a blob is
    never 2^63 bytes, so a longer number is simply "beyond the end".
    """
    if not header:
        return None
    m = RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # RFC 9110 14.2: an unparseable Range is ignored
    first, last = m.group(1), m.group(2)
    beyond = size + 1  # any value past the last byte
    if first:
        start = bounded_int(first, beyond)
        if last and bounded_int(last, beyond) < start:
            raise _unsatisfiable(f"range {header[:100]!r} ends before it starts", size)
        end = min(bounded_int(last, beyond), size - 1) if last else size - 1
    else:
        suffix = bounded_int(last, beyond)
        start, end = max(size - suffix, 0), size - 1
        if suffix == 0:
            start = size
    if start >= size:
        raise _unsatisfiable(f"range {header[:100]!r} is outside the blob of {size} bytes", size)
    return start, end


def _unsatisfiable(message: str, size: int) -> SizeInvalid:
    return SizeInvalid(message, status=416, headers={"Content-Range": f"bytes */{size}"})


class _RangedFile(web.FileResponse):
    """A file response that applies the range parse_range chose, not aiohttp's own reading of
    the client's header (which fails on long numbers and answers 416 where RFC 9110 says to
    ignore): aiohttp sees a request carrying the canonical range, or none."""

    def __init__(self, path: Any, wanted: tuple[int, int] | None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._wanted = wanted

    async def prepare(self, request: web.BaseRequest) -> Any:
        if hdrs.RANGE in request.headers:
            headers = request.headers.copy()
            del headers[hdrs.RANGE]
            if self._wanted is not None:
                headers[hdrs.RANGE] = f"bytes={self._wanted[0]}-{self._wanted[1]}"
            request = request.clone(headers=headers)
        return await super().prepare(request)


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
        return _RangedFile(source.path, wanted, headers=headers)
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
