"""The ingress: one stable address per service in front of tasks whose ports change with every
deployment.

`[launcher.ingress] addr = "127.0.0.1:8080"` starts an aiohttp reverse proxy on every node (it
only reads the database, so any node can answer). A service opts in with `ingress = {host,
path}`: requests whose `Host` matches `host` (exact, or `*.example` for one level of subdomain)
and whose path starts with `path` (the prefix is stripped before forwarding, and passed as
`X-Forwarded-Prefix`) go to one of the service's tasks, round robin.

Only RUNNING tasks whose health is HEALTHY receive traffic, and among them those of the
service's current deployment: a deployment makes itself current once its tasks are healthy and
before any old task stops, so clients see the version switch in one step. A task being retired
is marked STOPPING first and stopped `drain_seconds` later, while the route table (re-read
every ROUTE_REFRESH seconds) has already dropped it: requests in flight finish. A request that
cannot connect to a task (it died between two refreshes) is sent to another one, so a rolling
deployment costs clients no failed request. Bodies stream both ways; websocket upgrades are
passed through.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from launcher.config import IngressSettings
from launcher.store import Store

log = logging.getLogger(__name__)

ROUTE_REFRESH = 0.25
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "host"}
RETRYABLE = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
             aiohttp.ClientOSError)
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}


@dataclass
class Route:
    service: str
    host: str | None
    path: str | None
    backends: list[tuple[str, int]] = field(default_factory=list)
    _next: itertools.count[int] = field(default_factory=itertools.count)

    def matches(self, host: str, path: str) -> bool:
        if self.host is not None:
            if self.host.startswith("*."):
                suffix = self.host[1:]
                if not (host.endswith(suffix) and "." not in host[: -len(suffix)]):
                    return False
            elif host != self.host:
                return False
        return self.path is None or self.path == "/" or path == self.path or path.startswith(
            self.path + "/")

    def order(self) -> list[tuple[str, int]]:
        """Backends starting at the next in turn (the rest are the retry order)."""
        if not self.backends:
            return []
        start = next(self._next) % len(self.backends)
        return self.backends[start:] + self.backends[:start]


def instance_host(endpoint: str) -> str:
    """Where an instance's host-network tasks listen: this machine for a local socket."""
    if endpoint.startswith("unix://"):
        return "127.0.0.1"
    parts = urlsplit(endpoint)
    return parts.hostname or "127.0.0.1"


async def route_table(store: Store) -> list[Route]:
    services = [s for s in await store.list_services()
                if s.get("ingress") and s["status"] == "ACTIVE"]
    if not services:
        return []
    hosts = {i["id"]: instance_host(i["endpoint"]) for i in await store.list_instances()
             if i["status"] != "LOST"}
    tasks = [t for t in await store.list_tasks(active=True, limit=100000)
             if t["status"] == "RUNNING" and t["health"] == "HEALTHY" and t["ports"]
             and t["instanceId"] in hosts]
    routes = []
    for s in services:
        mine = [t for t in tasks if t["service"] == s["name"]]
        current = [t for t in mine if t["deploymentId"] == s["currentDeployment"]]
        chosen = current or mine  # first deployment, or the current one lost every task
        backends = sorted((hosts[t["instanceId"]], int(t["ports"][0])) for t in chosen)
        routes.append(Route(s["name"], s["ingress"].get("host"), s["ingress"].get("path"),
                            backends))
    # Most specific first: host and path, then longer paths.
    routes.sort(key=lambda r: (r.host is None, r.host is not None and r.host.startswith("*."),
                               -len(r.path or "")))
    return routes


class Ingress:
    def __init__(self, settings: IngressSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.routes: list[Route] = []
        self._previous: dict[str, Route] = {}
        self._runner: web.AppRunner | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.failures = 0

    async def start(self) -> None:
        await self.refresh()
        self._session = aiohttp.ClientSession(
            auto_decompress=False,  # bytes pass through as the task sent them
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5,
                                          sock_read=self.settings.upstream_timeout),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=5),
        )
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, _, port = self.settings.addr.rpartition(":")
        await web.TCPSite(self._runner, host.strip("[]"), int(port)).start()
        self._refresh = asyncio.create_task(self._refresh_loop(), name="launcher-ingress")
        log.info("ingress listening on %s", self.settings.addr)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def refresh(self) -> None:
        routes = await route_table(self.store)
        for route in routes:  # keep each route's round-robin position across refreshes
            old = self._previous.get(route.service)
            if old is not None:
                route._next = old._next
        self._previous = {r.service: r for r in routes}
        self.routes = routes

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(ROUTE_REFRESH)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the last table: the database may be back soon
                log.warning("ingress: cannot refresh routes: %s", exc)

    def match(self, host: str, path: str) -> Route | None:
        host = host.split(":", 1)[0].lower()
        for route in self.routes:
            if route.matches(host, path):
                return route
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        route = self.match(request.host, request.path)
        if route is None:
            return web.Response(status=404, text="no service is routed here\n")
        backends = route.order()
        if not backends:
            self.failures += 1
            return web.Response(status=503, text=f"service {route.service} has no healthy "
                                "task\n", headers={"Retry-After": "1"})
        path = request.rel_url.raw_path
        if route.path and route.path != "/":
            path = path[len(route.path):] or "/"
        target = path + (f"?{request.rel_url.raw_query_string}"
                         if request.rel_url.raw_query_string else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        forwarded_for = request.headers.get("X-Forwarded-For")
        peer = request.remote or ""
        headers["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Proto"] = request.scheme
        if route.path and route.path != "/":
            headers["X-Forwarded-Prefix"] = route.path
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, backends, target, headers)
        return await self._http(request, route, backends, target, headers)

    async def _http(self, request: web.Request, route: Route, backends: list[tuple[str, int]],
                    target: str, headers: dict[str, str]) -> web.StreamResponse:
        assert self._session is not None
        has_body = request.body_exists
        last: Exception | None = None
        for attempt, (host, port) in enumerate(backends[:3]):
            # A body can be sent once: retry only where none was read yet (a connection that
            # failed before sending) or for requests without one.
            data: Any = request.content.iter_chunked(64 * 1024) if has_body else None
            try:
                async with self._session.request(
                    request.method, f"http://{host}:{port}{target}", headers=headers,
                    data=data, allow_redirects=False,
                ) as upstream:
                    return await self._relay(request, upstream)
            except RETRYABLE as exc:
                last = exc
                retry_ok = isinstance(exc, aiohttp.ClientConnectorError) or (
                    not has_body and request.method in IDEMPOTENT)
                log.info("ingress: %s -> %s:%d failed (%s)%s", route.service, host, port, exc,
                         "; trying another task" if retry_ok else "")
                if not retry_ok or attempt == len(backends) - 1:
                    break
            except TimeoutError as exc:
                last = exc
                break
        self.failures += 1
        return web.Response(status=502, text=f"service {route.service}: no task answered "
                            f"({type(last).__name__})\n")

    async def _relay(self, request: web.Request,
                     upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                response.headers.add(key, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        if request.method != "HEAD":
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(chunk)
        await response.write_eof()
        return response

    async def _websocket(self, request: web.Request, backends: list[tuple[str, int]],
                         target: str, headers: dict[str, str]) -> web.StreamResponse:
        assert self._session is not None
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions"):
            headers.pop(name, None)
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                     .split(",") if p.strip()]
        headers.pop("Sec-WebSocket-Protocol", None)
        upstream = None
        for host, port in backends[:3]:
            try:
                upstream = await self._session.ws_connect(
                    f"http://{host}:{port}{target}", headers=headers, protocols=protocols,
                    autoping=False)
                break
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.info("ingress: websocket to %s:%d failed: %s", host, port, exc)
        if upstream is None:
            self.failures += 1
            return web.Response(status=502, text="no task accepted the websocket\n")
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol
                                       else (), autoping=False)
        await client.prepare(request)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                elif msg.type == aiohttp.WSMsgType.PING:
                    await dst.ping(msg.data)
                elif msg.type == aiohttp.WSMsgType.PONG:
                    await dst.pong(msg.data)
                else:
                    break
            await dst.close()

        try:
            await asyncio.gather(pump(client, upstream), pump(upstream, client))
        finally:
            await upstream.close()
            await client.close()
        return client
