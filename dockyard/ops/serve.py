"""Running the server with a graceful stop that does not cut uploads short.

`web.run_app` closes every connection before waiting for handlers, and a closed aiohttp
connection drops the bytes still arriving (RequestHandler.data_received returns early once
`close()` ran), so an upload in flight at SIGTERM would stall until the timeout and fail. Here
SIGTERM (or SIGINT) stops the listener, waits until the requests in flight have finished (up to
`[http] shutdown_timeout`; a second signal stops waiting), and only then lets aiohttp close idle
connections and run the application's cleanup (event outbox, databases, storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

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


async def _serve(
    make_app: web.Application | Awaitable[web.Application],
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    shutdown_timeout: float,
    reuse_port: bool,
    runner_kwargs: dict[str, Any],
) -> None:
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

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port)
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
    **runner_kwargs: Any,
) -> None:
    """Serve `make_app` (an application or a coroutine returning one) until SIGTERM/SIGINT,
    then drain as described above; requests are counted by the app's IN_FLIGHT middleware
    (dockyard.ops.setup_ops). `runner_kwargs` go to `web.AppRunner` (access_log, …)."""
    asyncio.run(
        _serve(
            make_app,
            host=host,
            port=port,
            ssl_context=ssl_context,
            shutdown_timeout=shutdown_timeout,
            reuse_port=reuse_port,
            runner_kwargs=runner_kwargs,
        )
    )
