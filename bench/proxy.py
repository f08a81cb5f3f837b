"""A byte-counting TCP proxy, so both registries' received bytes are measured the same way.

It runs its own event loop in a thread and counts what clients send (upstream, "received by the
registry") and what the registry answers (downstream), whatever the protocol details.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

BUFFER = 256 * 1024


class CountingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.sent_to_server = 0
        self.sent_to_client = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.sent_to_server = self.sent_to_client = self.connections = 0

    def start(self) -> CountingProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(10)
        return self

    async def _start(self) -> None:
        self._sock.listen(128)
        self._server = await asyncio.start_server(self._handle, sock=self._sock)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(BUFFER):
                if upstream:
                    self.sent_to_server += len(data)
                else:
                    self.sent_to_client += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if writer.can_write_eof():
                    writer.write_eof()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        try:
            await asyncio.gather(
                self._pipe(c_reader, s_writer, upstream=True),
                self._pipe(s_reader, c_writer, upstream=False),
            )
        finally:
            for w in (c_writer, s_writer):
                with contextlib.suppress(Exception):
                    w.close()

    def stop(self) -> None:
        async def _close() -> None:
            if self._server:
                self._server.close()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._sock.close()


@contextlib.contextmanager
def counting_proxy(url: str) -> Iterator[CountingProxy]:
    """A proxy in front of `url` (http://HOST:PORT) for the duration of the block."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    proxy = CountingProxy(host, int(port)).start()
    try:
        yield proxy
    finally:
        proxy.stop()
