"""What every handler shares: the app keys, name parsing, request origin, body streaming."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import web

from dockyard.core.errors import BlobUploadInvalid, PaginationNumberInvalid, RangeNotSatisfiable
from dockyard.core.oci import check_name

from ..access import ACCESS
from ..metrics import BYTES_RECEIVED, UPLOADS_IN_FLIGHT
from ..origin import Origin
from ..service import Registry

REGISTRY = web.AppKey("registry", Registry)
REQUEST_ID = web.RequestKey("request_id", str)

CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?([0-9]+)-([0-9]+)$")
READ_BLOCK = 1 << 18
# Byte offsets and counts beyond this cannot be real (2^63 - 1 has 19 digits): such a number is
# refused or clamped before int(), which refuses strings of more than 4,300 digits.
MAX_OFFSET_DIGITS = 18
MAX_PAGE = 10_000


def bounded_int(digits: str, cap: int) -> int:
    """int(digits) capped at `cap`, for ASCII digit strings of any length."""
    stripped = digits.lstrip("0")
    if len(stripped) > len(str(cap)):
        return cap
    return min(int(stripped or "0"), cap)


def repo_name(request: web.Request) -> str:
    return check_name(request.match_info["name"])


def registry_of(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def origin(request: web.Request) -> Origin:
    access = request.get(ACCESS)
    peer = request.remote or ""
    return Origin(
        request_id=request.get(REQUEST_ID, ""),
        addr=peer,
        host=request.host,
        method=request.method,
        useragent=request.headers.get("User-Agent", ""),
        subject=getattr(access, "subject", None),
    )


async def body_blocks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives, never held whole."""
    UPLOADS_IN_FLIGHT.inc()
    try:
        async for block in request.content.iter_chunked(READ_BLOCK):
            BYTES_RECEIVED.inc(len(block))
            yield block
    finally:
        UPLOADS_IN_FLIGHT.dec()


def has_body(request: web.Request) -> bool:
    if request.content_length is not None:
        return request.content_length > 0
    return request.body_exists


def content_range(request: web.Request) -> tuple[int | None, int | None]:
    """(start, length) from a chunk's Content-Range, or (None, Content-Length) without one."""
    value = request.headers.get("Content-Range")
    if value is None:
        return None, request.content_length
    m = CONTENT_RANGE_RE.match(value.strip())
    if not m:
        raise RangeNotSatisfiable(f"invalid Content-Range {value[:100]!r}")
    if any(len(g.lstrip("0")) > MAX_OFFSET_DIGITS for g in m.groups()):
        # Not a byte offset any blob could have: bad input (400), not an out-of-order chunk.
        raise BlobUploadInvalid(f"Content-Range {value[:100]!r} is out of range")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RangeNotSatisfiable(f"invalid Content-Range {value[:100]!r}")
    length = end - start + 1
    if request.content_length is not None and request.content_length != length:
        raise RangeNotSatisfiable("Content-Range does not match Content-Length")
    return start, length


def page_params(request: web.Request) -> tuple[int | None, str | None]:
    """`n` and `last` of a paginated list (spec: "Listing Tags"). `n` is ASCII digits (any
    length; more than 10,000 is 10,000); anything else is 400 PAGINATION_NUMBER_INVALID, as
    the reference registry answers. An empty `n` means no limit."""
    n_raw = request.query.get("n")
    n: int | None = None
    if n_raw is not None and n_raw.strip():
        digits = n_raw.strip()
        # str.isdigit() also accepts "²" and other Unicode digits, which int() refuses.
        if not (digits.isascii() and digits.isdigit()):
            raise PaginationNumberInvalid(
                f"n must be a non-negative integer, not {n_raw[:50]!r}", detail={"n": n_raw[:50]}
            )
        n = bounded_int(digits, MAX_PAGE)
    return n, request.query.get("last")


def next_link(path: str, n: int | None, items: list[str], extra: str = "") -> dict[str, str]:
    """A `Link: <…>; rel="next"` header when a full page suggests more items follow."""
    if not n or len(items) < n:
        return {}
    return {"Link": f'<{path}?n={n}&last={quote(items[-1], safe="")}{extra}>; rel="next"'}
