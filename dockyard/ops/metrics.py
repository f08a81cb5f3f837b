"""/metrics: the registry's Prometheus registry, refreshed from slower sources at scrape time.

Counters and histograms are updated where things happen (registry/metrics.py); what lives in a
database (the webhook outbox) is read when Prometheus scrapes, so the numbers agree with
`dockyard events stats` and cover every process sharing the data directory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from registry import metrics as m

log = logging.getLogger("dockyard.ops")

Refresh = Callable[[], Awaitable[None]]


def webhook_refresher(get_outbox: Callable[[], Any]) -> Refresh:
    """Set the webhook gauges from `outbox.stats()` (registry/events/outbox.py)."""

    async def refresh() -> None:
        outbox = get_outbox()
        if outbox is None or outbox.closed:
            return
        stats = await outbox.stats()
        for gauge in (
            m.WEBHOOK_QUEUE,
            m.WEBHOOK_OLDEST,
            m.WEBHOOK_DELIVERIES,
            m.WEBHOOK_FAILED_ATTEMPTS,
        ):
            gauge.clear()  # endpoints removed from the config disappear from the scrape
        for name, entry in stats["endpoints"].items():
            m.WEBHOOK_QUEUE.labels(name).set(entry.get("queue_depth", 0))
            m.WEBHOOK_OLDEST.labels(name).set(entry.get("oldest_open_seconds", 0))
            m.WEBHOOK_FAILED_ATTEMPTS.labels(name).set(entry.get("failed_attempts", 0))
            for status in ("pending", "failed", "delivered", "dead"):
                m.WEBHOOK_DELIVERIES.labels(name, status).set(entry.get(status, 0))

    return refresh


def metrics_handler(refreshers: list[Refresh]) -> Callable:
    async def serve_metrics(_: web.Request) -> web.Response:
        for refresh in refreshers:
            try:
                await refresh()
            except Exception as exc:  # a stale gauge is better than no metrics at all
                log.warning("metrics refresh failed: %s", exc)
        return web.Response(
            body=generate_latest(m.METRICS), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return serve_metrics


def separate_listener(
    host: str, port: int, routes: Callable[[web.Application], None]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context running a second, plain-HTTP listener (`[http] metrics_addr`)."""

    async def listener(_: web.Application) -> AsyncIterator[None]:
        side = web.Application()
        routes(side)
        runner = web.AppRunner(side, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("metrics on http://%s:%d/metrics", host, port, extra={"event": "listening"})
        yield
        await runner.cleanup()

    return listener
