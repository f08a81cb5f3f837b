"""Running the server with a graceful stop that does not cut uploads short.

`web.run_app` closes every connection before waiting for handlers, and a closed aiohttp
connection drops the bytes still arriving (RequestHandler.data_received returns early once
`close()` ran), so an upload in flight at SIGTERM would stall until the timeout and fail. Here
SIGTERM (or SIGINT) stops the listener, waits until the requests in flight have finished (up to
`[http] shutdown_timeout`; a second signal stops waiting), and only then lets aiohttp close idle
connections and run the application's cleanup (event outbox, databases, storage).

Slow and idle clients (issue 22, finding 2): every connection must deliver a request's headers
within `[http] header_timeout` of its first byte (or of connecting), and a request body that
stops moving for `[http] body_idle_timeout` is cut (a slow upload that keeps moving is fine);
both answer `408` when no response has started. At most `[http] max_connections` are served at
once; one more gets `503 UNAVAILABLE` with `Retry-After` and is closed, rather than holding a
file descriptor until the process runs out and every client times out. The event loop's
`accept()` errors (EMFILE when descriptors run out anyway) are logged at most every
`ACCEPT_LOG_INTERVAL` seconds with a count, not once per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import signal
import ssl
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from dockyard.core.errors import error_body

log = logging.getLogger("dockyard.ops")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InFlight:
    """Requests being handled; `draining` asks clients to drop keep-alive connections."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def middleware(self) -> Callable:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.count += 1
            self._idle.clear()
            try:
                response = await handler(request)
                if self.draining:
                    response.force_close()  # "Connection: close": no new request on it
                return response
            finally:
                self.count -= 1
                if self.count == 0:
                    self._idle.set()

        return count

    async def drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


IN_FLIGHT = web.AppKey("in_flight", InFlight)


# Descriptors kept free of connections when `max_connections` is derived from the process's
# limit: ~100 for the databases, blob files and logs, and 128 because asyncio accepts up to 100
# connections in one go before any of them can be refused (a reconnect storm under `ulimit -n
# 400` exhausted a reserve of 100, and blob commits failed with EMFILE).
RESERVED_FDS = 228
ACCEPT_LOG_INTERVAL = 10.0  # seconds between two log lines about failing accept() calls
# A connection over the cap is closed this long after connecting if it has sent nothing.
REFUSAL_HEADER_TIMEOUT = 0.5
# Refusals answered at once at most; past that, new connections over the cap are reset.
REFUSAL_SLOTS = 16


def default_max_connections() -> int:
    """What `max_connections = 0` means: the soft RLIMIT_NOFILE less RESERVED_FDS (at least 16)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, int(soft) - RESERVED_FDS)


@dataclass
class ConnectionGuard:
    """Limits of one listener, shared by its connections, with what they did (for tests, logs)."""

    header_timeout: float = 20.0
    body_idle_timeout: float = 60.0
    max_connections: int = 0  # 0: default_max_connections()
    open: int = 0
    refusing: int = 0  # refused connections not closed yet
    refused: int = 0
    dropped: int = 0  # reset without an answer: more than REFUSAL_SLOTS refusals at once
    header_timeouts: int = 0
    body_timeouts: int = 0
    _last_refusal_log: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.max_connections <= 0:
            self.max_connections = default_max_connections()

    def note_refusal(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= ACCEPT_LOG_INTERVAL:
            self._last_refusal_log = now
            log.warning(
                "connection limit reached (%d open): refusing new connections with 503 "
                "(%d refused so far)",
                self.open,
                self.refused,
                extra={"event": "connection_limit", "open": self.open, "refused": self.refused},
            )


def _raw_response(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    body = json.dumps(error_body(code, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


REQUEST_TIMEOUT = _raw_response(
    408, "Request Timeout", "UNAVAILABLE", "the request did not arrive in time; connection closed"
)


TOO_MANY_CONNECTIONS = _raw_response(
    503,
    "Service Unavailable",
    "UNAVAILABLE",
    "too many connections; try again shortly",
    "Retry-After: 1\r\n",
)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with the header, idle-body and connection limits above.

    aiohttp has no header timeout of its own: its keep-alive timer is not reset by arriving
    bytes, but defaults to an hour, and a body that stops arriving waits forever."""

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._counted = False
        self._refusing = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_byte = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        guard = self._guard
        self._last_byte = self._loop.time()
        if guard.open >= guard.max_connections:
            # Answered 503 as soon as its first bytes arrive (closing before reading them would
            # often reset the connection and lose the answer), and closed REFUSAL_HEADER_TIMEOUT
            # after connecting otherwise: a refused connection holds its descriptor briefly, so
            # attackers reconnecting in a loop cannot exhaust them through the refusals.
            guard.note_refusal()
            if guard.refusing >= REFUSAL_SLOTS:
                # A reconnect storm: answering each would itself use up the descriptors the
                # served connections and the stores need. Reset at once instead.
                guard.dropped += 1
                # A TCP server's transports are asyncio.Transport (abort: reset, no linger).
                typing.cast(asyncio.Transport, transport).abort()
                return
            guard.refusing += 1
            self._refusing = True
            self._arm_header_timer(REFUSAL_HEADER_TIMEOUT)
            return
        guard.open += 1
        self._counted = True
        self._arm_header_timer(guard.header_timeout)
        self._arm_idle_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refusing:
            self._refusing = False
            self._guard.refusing -= 1
        if self._counted:
            self._counted = False
            self._guard.open -= 1
        for timer in (self._header_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._idle_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            if self.transport is not None and not self._force_close:
                self.transport.write(TOO_MANY_CONNECTIONS)
                self.force_close()
            return
        self._last_byte = self._loop.time()
        between_requests = not self._request_in_progress and not self._messages
        if data and between_requests and self._header_timer is None:
            # The first byte of a new request on a kept-alive connection starts its clock.
            self._arm_header_timer(self._guard.header_timeout)
        super().data_received(data)
        if self._header_timer is not None and (self._messages or self._request_in_progress):
            self._header_timer.cancel()  # headers complete: the request is being handled
            self._header_timer = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Malformed HTTP refused by aiohttp's parser (a header line over 8 KiB, a control
        character in a header, a bad request line) is the client's error: answer the spec's
        JSON error and log one line, not a traceback (found by tests/test_fuzz.py)."""
        if not isinstance(exc, HttpProcessingError) or status >= 500:
            return super().handle_error(request, status, exc, message)
        log.info(
            "malformed HTTP request from %s: %s",
            request.remote,
            getattr(exc, "message", "") or type(exc).__name__,
            extra={"event": "bad_http", "status": status},
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        text = (getattr(exc, "message", "") or "malformed HTTP request").splitlines()[0][:200]
        response = web.json_response(error_body("INVALID", text), status=status)
        response.force_close()
        return response

    def _arm_header_timer(self, timeout: float) -> None:
        if timeout > 0:
            self._header_timer = self._loop.call_later(timeout, self._header_expired)

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.transport is None or self._request_in_progress or self._messages:
            return
        if self._refusing:
            self.transport.write(TOO_MANY_CONNECTIONS)
            self.force_close()
            return
        self._guard.header_timeouts += 1
        self.transport.write(REQUEST_TIMEOUT)
        self.force_close()

    def _arm_idle_timer(self) -> None:
        timeout = self._guard.body_idle_timeout
        if timeout > 0:
            # Checked a few times per timeout rather than re-armed on every chunk.
            self._idle_timer = self._loop.call_later(max(0.25, timeout / 4), self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self.transport is None:
            return
        request = self._current_request
        if (
            request is not None
            and not request.content.is_eof()
            # Paused reading is the server's back-pressure, not the client stalling.
            and not self._reading_paused
            and self._loop.time() - self._last_byte > self._guard.body_idle_timeout
        ):
            self._guard.body_timeouts += 1
            writer = getattr(request, "_payload_writer", None)
            if getattr(writer, "output_size", 0) == 0:
                self.transport.write(REQUEST_TIMEOUT)  # nothing of a response went out yet
            self.force_close()  # the handler sees the client gone; nothing half-written shows
            return
        self._arm_idle_timer()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections are GuardedHandler protocols."""

    def __init__(self, runner: web.AppRunner, *args: Any, guard: ConnectionGuard, **kwargs: Any):
        super().__init__(runner, *args, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        # BaseSite.start registers the site; TCPSite.start would bind with the plain protocol.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        guard = self.guard

        def protocol() -> GuardedHandler:
            # Server() builds RequestHandler(server, loop=…, **handler kwargs) the same way.
            return GuardedHandler(
                server,
                loop=server._loop,  # aiohttp keeps these on the Server (private)
                guard=guard,
                **server._kwargs,
            )

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]


class AcceptErrorLog:
    """An event-loop exception handler that reports failing accept() calls (EMFILE, ENFILE,
    ENOBUFS, ENOMEM) as one line per ACCEPT_LOG_INTERVAL with a count, instead of a traceback
    per retry; everything else goes to the loop's default handler."""

    def __init__(self, interval: float = ACCEPT_LOG_INTERVAL) -> None:
        self.interval = interval
        self.suppressed = 0
        self._last = float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept" not in message:
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            self.suppressed += 1
            return
        self._last = now
        log.error(
            "%s: %s (%d more since the last report)",
            message,
            context.get("exception"),
            self.suppressed,
            extra={"event": "accept_error", "suppressed": self.suppressed},
        )
        self.suppressed = 0


async def _serve(
    make_app: web.Application | Awaitable[web.Application],
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    shutdown_timeout: float,
    reuse_port: bool,
    guard: ConnectionGuard,
    runner_kwargs: dict[str, Any],
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrorLog())
    app = make_app if isinstance(make_app, web.Application) else await make_app
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=shutdown_timeout, **runner_kwargs
    )
    await runner.setup()
    stop = asyncio.Event()
    signals = 0

    def on_signal(name: str) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("%s again: not waiting for requests in flight any longer", name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        site = GuardedSite(
            runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port, guard=guard
        )
        await site.start()
        await stop.wait()
        stop.clear()
        await site.stop()  # no new connections; open ones keep their requests
        in_flight = app.get(IN_FLIGHT)
        if in_flight is not None:
            in_flight.draining = True  # /readyz answers 503 from now on
            log.info(
                "shutting down: listener closed; waiting up to %gs for %d request(s) in flight",
                shutdown_timeout,
                in_flight.count,
                extra={"event": "shutdown", "in_flight": in_flight.count},
            )
            waiting = asyncio.ensure_future(in_flight.drained(shutdown_timeout))
            interrupted = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiting, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            interrupted.cancel()
            if not waiting.done() or not waiting.result():
                waiting.cancel()
                log.warning(
                    "stopping with %d request(s) still in flight",
                    in_flight.count,
                    extra={"event": "shutdown_timeout", "in_flight": in_flight.count},
                )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await runner.cleanup()


def run_server(
    make_app: web.Application | Awaitable[web.Application],
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = 30.0,
    reuse_port: bool = False,
    guard: ConnectionGuard | None = None,
    **runner_kwargs: Any,
) -> None:
    """Serve `make_app` (an application or a coroutine returning one) until SIGTERM/SIGINT,
    then drain as described above; requests are counted by the app's IN_FLIGHT middleware
    (dockyard.ops.setup_ops). `guard` carries the slow-client limits (defaults when None);
    `runner_kwargs` go to `web.AppRunner` (access_log, keepalive_timeout, …)."""
    asyncio.run(
        _serve(
            make_app,
            host=host,
            port=port,
            ssl_context=ssl_context,
            shutdown_timeout=shutdown_timeout,
            reuse_port=reuse_port,
            guard=guard or ConnectionGuard(),
            runner_kwargs=runner_kwargs,
        )
    )
