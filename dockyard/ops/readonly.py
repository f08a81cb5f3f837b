"""Read-only maintenance mode: reads are served, writes under /v2/ are refused.

The refusal is the reference registry's (distribution's `storage.maintenance.readonly`):
405 `UNSUPPORTED`, here with a message saying why, which the docker CLI prints
("unsupported: the registry is in read-only maintenance mode…"). Turned on by
`[registry] read_only = true`, toggled at runtime by SIGUSR1 or `PUT /admin/read-only`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dockyard.core.errors import PayloadTooLarge, Unsupported, error_response
from dockyard.core.http import read_body
from registry.metrics import READ_ONLY

log = logging.getLogger("dockyard.ops")

MAX_ADMIN_BODY = 4096  # {"read_only": true} is 18 bytes
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MESSAGE = (
    "the registry is in read-only maintenance mode: pulls work, pushes and deletes are refused "
    "until an operator turns it off"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReadOnlyMode:
    def __init__(self, enabled: bool) -> None:
        self.enabled = False
        self.set(enabled, reason="configuration")

    def set(self, enabled: bool, reason: str) -> None:
        changed = enabled != self.enabled
        self.enabled = enabled
        READ_ONLY.set(1 if enabled else 0)
        if changed or enabled:
            log.warning(
                "read-only mode %s (%s)",
                "on: writes are refused" if enabled else "off: writes accepted",
                reason,
                extra={"event": "read_only", "read_only": enabled},
            )

    def toggle(self, reason: str) -> None:
        self.set(not self.enabled, reason)

    def refuses(self, request: web.Request) -> bool:
        return self.enabled and request.method in WRITE_METHODS and request.path.startswith("/v2/")


def read_only_middleware(mode: ReadOnlyMode) -> Callable:
    @web.middleware
    async def refuse_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
        if mode.refuses(request):
            return error_response(Unsupported(MESSAGE))
        return await handler(request)

    return refuse_writes


def admin_routes(app: web.Application, mode: ReadOnlyMode) -> None:
    """GET/PUT /admin/read-only (behind the admin guard of the composition root)."""

    async def show(_: web.Request) -> web.Response:
        return web.json_response({"read_only": mode.enabled})

    async def change(request: web.Request) -> web.Response:
        try:
            raw = await read_body(request, MAX_ADMIN_BODY)
        except PayloadTooLarge as exc:
            return error_response(exc)
        try:
            body = json.loads(raw)
            wanted = body["read_only"]
            if not isinstance(wanted, bool):
                raise TypeError
        except Exception:
            problem = {"error": 'body must be {"read_only": true|false}'}
            return web.json_response(problem, status=400)
        mode.set(wanted, reason="admin API")
        return web.json_response({"read_only": mode.enabled})

    app.router.add_get("/admin/read-only", show)
    app.router.add_put("/admin/read-only", change)
