"""Admin HTTP routes over the delivery log: list, inspect, replay, stats.

    GET  /admin/events?endpoint=E&status=failed&event=ID&repository=R&limit=N
    GET  /admin/events/stats
    GET  /admin/events/{id}                      the event and every delivery attempt
    POST /admin/events/{id}/replay[?endpoint=E]
    POST /admin/events/replay?endpoint=E&since=T

Thin handlers over `EventOutbox`; authorisation of `/admin/` is the application's job.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from registry.events.outbox import STATUSES, EventOutbox
from registry.events.since import parse_since

OUTBOX_KEY: web.AppKey[EventOutbox] = web.AppKey("events_outbox", EventOutbox)
MAX_LIMIT = 1000


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_admin_routes(app: web.Application, outbox: EventOutbox) -> None:
    app[OUTBOX_KEY] = outbox
    app.router.add_get("/admin/events", list_deliveries)
    app.router.add_get("/admin/events/stats", stats)
    app.router.add_post("/admin/events/replay", replay_since)
    app.router.add_get("/admin/events/{event_id}", show_event)
    app.router.add_post("/admin/events/{event_id}/replay", replay_event)


async def list_deliveries(request: web.Request) -> web.Response:
    query = request.query
    status = query.get("status")
    if status is not None and status not in STATUSES:
        return _error(400, f"status must be one of {', '.join(STATUSES)}")
    try:
        limit = min(MAX_LIMIT, max(1, int(query.get("limit", "100"))))
    except ValueError:
        return _error(400, "limit must be an integer")
    rows = await request.app[OUTBOX_KEY].list_deliveries(
        endpoint=query.get("endpoint"),
        status=status,
        event_id=query.get("event"),
        repository=query.get("repository"),
        limit=limit,
    )
    return web.json_response({"deliveries": rows})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[OUTBOX_KEY].stats())


async def show_event(request: web.Request) -> web.Response:
    found = await request.app[OUTBOX_KEY].get_event(request.match_info["event_id"])
    if found is None:
        return _error(404, "unknown event")
    return web.json_response(found)


async def replay_event(request: web.Request) -> web.Response:
    try:
        count = await request.app[OUTBOX_KEY].replay_event(
            request.match_info["event_id"], endpoint=request.query.get("endpoint")
        )
    except KeyError as exc:
        return _error(404, str(exc.args[0]))
    return web.json_response(_scheduled(count), status=202)


async def replay_since(request: web.Request) -> web.Response:
    endpoint, since = request.query.get("endpoint"), request.query.get("since")
    if not endpoint or not since:
        return _error(400, "endpoint and since are required")
    try:
        when = parse_since(since)
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        count = await request.app[OUTBOX_KEY].replay_since(endpoint, when)
    except KeyError as exc:
        return _error(404, str(exc.args[0]))
    return web.json_response(_scheduled(count), status=202)


def _scheduled(count: int) -> dict[str, Any]:
    return {"scheduled": count}
