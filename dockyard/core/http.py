"""Request bodies read into memory, and clients that go away: the same rules for every part.

- `read_body(request, limit)` reads at most `limit` bytes of what actually arrives — chunked
  bodies and lying `Content-Length` headers included — and raises `PayloadTooLarge` (413) past
  it. aiohttp's own `client_max_size` (`request.read()/post()/json()`) is one limit for the
  whole application; the token form, the launcher API and the admin routes each need a small
  one of their own.
- `client_gone_middleware` answers a request whose client disconnected, or whose body ended
  malformed, without an ERROR traceback: a client going away is not a server error. The status
  is 400 when the client can still read it, else 499 (nginx's "client closed request"), which
  only the access log sees.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .errors import ApiError, InvalidRequest, PayloadTooLarge, error_response

log = logging.getLogger("dockyard.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What reading a request body raises when the client disconnects (aiohttp cancels the payload
# with ConnectionResetError) or sends a body its framing does not allow (RequestPayloadError
# wraps the parser's ContentLengthError / TransferEncodingError).
CLIENT_GONE: tuple[type[BaseException], ...] = (ConnectionResetError, RequestPayloadError)

CLIENT_CLOSED_REQUEST = 499


async def read_body(
    request: web.BaseRequest,
    limit: int,
    *,
    what: str = "request body",
    too_large: type[ApiError] = PayloadTooLarge,
) -> bytes:
    """The whole body, at most `limit` bytes of it actually read; 413 beyond."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(f"{what} larger than {limit} bytes", status=413)
    chunks: list[bytes] = []
    total = 0
    async for block in request.content.iter_chunked(1 << 16):
        total += len(block)
        if total > limit:
            # The rest is not read: aiohttp closes the connection after the response.
            raise too_large(f"{what} larger than {limit} bytes", status=413)
        chunks.append(block)
    return b"".join(chunks)


def client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def client_gone_response(request: web.BaseRequest, exc: BaseException) -> web.StreamResponse:
    """What to answer after CLIENT_GONE was raised while reading the body."""
    if client_gone(request):
        log.debug("client went away during %s %s: %s", request.method, request.path, exc)
        response = web.Response(status=CLIENT_CLOSED_REQUEST)
    else:
        response = error_response(InvalidRequest("the request body is incomplete or malformed"))
    response.force_close()
    return response


@web.middleware
async def client_gone_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: a disconnect while reading a body ends the request quietly."""
    try:
        return await handler(request)
    except CLIENT_GONE as exc:
        return client_gone_response(request, exc)
