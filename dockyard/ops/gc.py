"""Garbage collection inside the server every `[gc] interval_seconds` (0: only `dockyard gc`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from registry.gc import GarbageCollector, GcBusy
from registry.metrics import record_gc

from .readonly import ReadOnlyMode

log = logging.getLogger("dockyard.gc")


def periodic_gc(
    collector: GarbageCollector, mode: ReadOnlyMode, interval: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Every node tries; the `gc` lease lets one collect at a time (the others skip)."""

    async def collect_forever() -> None:
        while True:
            await asyncio.sleep(interval)
            if mode.enabled:
                continue  # maintenance means nothing changes, deletions included
            try:
                report = await collector.run()
            except GcBusy:
                log.info("gc skipped: another collection is running")
                continue
            except Exception:
                log.exception("gc failed")
                continue
            record_gc(report.bytes_freed)
            log.info(
                "gc freed %d bytes (%d blobs, %d manifests) in %.1fs",
                report.bytes_freed,
                report.objects_deleted,
                report.manifests_deleted,
                report.seconds,
                extra={"event": "gc", **report.as_dict()},
            )

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(collect_forever(), name="dockyard-gc")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return lifecycle
