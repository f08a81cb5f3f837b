"""Health endpoints for load balancers and orchestrators, outside /v2/ and unauthenticated.

- `/healthz`: the process is up and its event loop answers (liveness).
- `/readyz`: the blob store and the state store answer (readiness);
  503 with a JSON reason otherwise, and while the server drains on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .readonly import ReadOnlyMode
from .serve import InFlight

log = logging.getLogger("dockyard.ops")

# A probe that hangs is a failed probe; load balancers time out after a few seconds too.
CHECK_TIMEOUT = 5.0

Check = Callable[[], Awaitable[None]]


class Readiness:
    """Named checks (the blob store's, the state store's, …), each given by the part that owns
    what it checks."""

    def __init__(self, checks: dict[str, Check], mode: ReadOnlyMode, in_flight: InFlight) -> None:
        self.mode = mode
        self.in_flight = in_flight
        self.checks = dict(checks)
        self._last_ready: bool | None = None

    async def _run(self, check: Check) -> str:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT)
            return "ok"
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT:g}s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def probe(self) -> tuple[bool, dict[str, Any]]:
        names = list(self.checks)
        results = await asyncio.gather(*(self._run(self.checks[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        failed = [f"{n}: {r}" for n, r in checks.items() if r != "ok"]
        if self.in_flight.draining:
            failed.insert(0, "shutting down")
        ready = not failed
        body: dict[str, Any] = {
            "status": "ready" if ready else "unavailable",
            "checks": checks,
            "read_only": self.mode.enabled,
        }
        if failed:
            body["reason"] = "; ".join(failed)
        if ready != self._last_ready:
            # Transitions only: a probe every few seconds must not flood the log.
            level = logging.INFO if ready else logging.WARNING
            log.log(
                level,
                "readiness: %s",
                "ready" if ready else body["reason"],
                extra={"event": "readiness", "ready": ready},
            )
            self._last_ready = ready
        return ready, body


def health_routes(app: web.Application, readiness: Readiness) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, body = await readiness.probe()
        return web.json_response(body, status=200 if ready else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
