"""Operations: health and readiness, /metrics, read-only mode, shutdown, periodic GC, event logs.

The composition root calls `setup_ops(app, config, registry, ...)` once, after the registry,
auth and events are mounted. TLS (`server_ssl_context`) and the access log
(`dockyard.logs.AccessLogger`) are arguments of `web.run_app`, so `dockyard serve` applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dockyard.core.http import client_gone_middleware
from dockyard.core.sql import Database
from registry.config import Config
from registry.gc import GarbageCollector
from registry.manifests import Change
from registry.service import Registry

from .gc import periodic_gc
from .health import Readiness, health_routes
from .metrics import metrics_handler, separate_listener, webhook_refresher
from .readonly import ReadOnlyMode, admin_routes, read_only_middleware
from .serve import IN_FLIGHT, InFlight, run_server
from .tls import server_ssl_context

log = logging.getLogger("dockyard.ops")

READ_ONLY = web.AppKey("read_only", ReadOnlyMode)
READINESS = web.AppKey("readiness", Readiness)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = [
    "IN_FLIGHT",
    "READINESS",
    "READ_ONLY",
    "ReadOnlyMode",
    "run_server",
    "server_ssl_context",
    "setup_ops",
]


def split_addr(addr: str, key: str) -> tuple[str, int]:
    from registry.config import ConfigError

    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def change_logger() -> Callable[[Change], Awaitable[None]]:
    """Log every manifest push and delete (registry listener), one searchable record each."""
    events = logging.getLogger("dockyard.events")

    async def log_change(change: Change) -> None:
        ref = f"{change.repository}:{change.tag}" if change.tag else change.repository
        events.info(
            "manifest %s %s@%s",
            "pushed" if change.action == "push" else "deleted",
            ref,
            change.digest,
            extra={
                "event": f"manifest_{change.action}",
                "customer": change.customer,
                "repository": change.repository,
                "tag": change.tag,
                "digest": change.digest,
                "media_type": change.media_type,
                "size": change.size,
                "request_id": change.origin.request_id,
                "user": change.origin.subject,
            },
        )

    return log_change


def setup_ops(
    app: web.Application,
    config: Config,
    registry: Registry,
    db: Database,
    collector: GarbageCollector,
    *,
    outbox: Callable[[], Any] = lambda: None,
) -> None:
    """Mount /healthz, /readyz, /metrics (or its own listener), /admin/read-only; refuse writes
    in read-only mode; run periodic GC; log manifest changes; log and drain on shutdown.

    `outbox` returns the event outbox once it is open (for webhook metrics and readiness)."""
    mode = ReadOnlyMode(config.registry.read_only)
    in_flight = InFlight()
    readiness = Readiness(
        {"storage": registry.store.check, "metadata": db.ping}, mode, in_flight
    )
    app[READ_ONLY] = mode
    app[READINESS] = readiness
    app[IN_FLIGHT] = in_flight
    app.middlewares.insert(0, in_flight.middleware())
    # Outermost: a client disconnecting mid-body ends its request without an ERROR traceback.
    app.middlewares.insert(0, client_gone_middleware)
    app.middlewares.append(read_only_middleware(mode))
    registry.manifests.listeners.append(change_logger())

    serve_metrics = metrics_handler([webhook_refresher(outbox)])

    def probe_routes(target: web.Application) -> None:
        health_routes(target, readiness)
        target.router.add_get("/metrics", serve_metrics)

    if config.http.metrics_addr:
        host, port = split_addr(config.http.metrics_addr, "http.metrics_addr")
        health_routes(app, readiness)
        app.cleanup_ctx.append(separate_listener(host, port, probe_routes))
    else:
        probe_routes(app)
    admin_routes(app, mode)

    if config.gc.interval_seconds > 0:
        app.cleanup_ctx.append(periodic_gc(collector, mode, config.gc.interval_seconds))

    async def started(_: web.Application) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # Only where signals can be handled (the main thread of `dockyard serve`).
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, mode.toggle, "SIGUSR1")

    async def stopped(_: web.Application) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
        if in_flight.count:
            log.warning(
                "stopped with %d request(s) still in flight (shutdown_timeout %gs)",
                in_flight.count,
                config.http.shutdown_timeout,
                extra={"event": "stopped", "in_flight": in_flight.count},
            )
        else:
            log.info("stopped", extra={"event": "stopped"})

    app.on_startup.append(started)
    app.on_cleanup.append(stopped)
