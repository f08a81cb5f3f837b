"""The composition root: one aiohttp application wiring registry, auth, events and launcher."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from auth.config import AuthSettings
from auth.service import create_auth
from registry.app import make_registry, setup_registry
from registry.authz import make_auth_middleware
from registry.config import Config
from registry.errors import Unauthorized, error_response
from registry.events import NotificationSettings, RegistryEvent, RequestRecord, open_events
from registry.events.admin import add_admin_routes
from registry.gc import InUseHook
from registry.service import Change, Registry

from .ops import setup_ops

OUTBOX = web.AppKey("outbox", object)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def gc_hooks(config: Config) -> list[InUseHook]:
    """What other parts mark in use for GC (the launcher's running and rollback images)."""
    return []


def auth_settings(config: Config) -> AuthSettings:
    return AuthSettings.from_dict(config.section("auth"), config.data_dir)


def notification_settings(config: Config) -> NotificationSettings:
    return NotificationSettings.from_dict(config.section("notifications"))


def to_event(change: Change, base_url: str) -> RegistryEvent:
    o = change.origin
    return RegistryEvent(
        action=change.action,
        customer=change.customer,
        repository=change.repository,
        digest=change.digest,
        media_type=change.media_type,
        size=change.size,
        tag=change.tag,
        url=f"{base_url}/v2/{change.repository}/manifests/{change.digest}",
        request=RequestRecord(o.request_id, o.addr, o.host, o.method, o.useragent),
        actor=o.subject,
    )


def admin_guard(token: str | None, auth_enabled: bool) -> Callable:
    """/admin/* needs the configured admin token once auth is on (or always, if one is set)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/admin/") and (token or auth_enabled):
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not token or not hmac.compare_digest(given.encode(), token.encode()):
                return error_response(Unauthorized("admin endpoints need the admin token"))
        return await handler(request)

    return guard


def setup_events(app: web.Application, config: Config, registry: Registry) -> None:
    settings = notification_settings(config)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        outbox = await open_events(
            config.data_dir, settings, source_addr=config.http.addr, instance_id=uuid.uuid4().hex
        )
        base_url = f"http://{config.http.addr}"

        async def publish(change: Change) -> None:
            host = change.origin.host or config.http.addr
            await outbox.publish(to_event(change, f"http://{host}" if host else base_url))

        registry.listeners.append(publish)
        add_admin_routes(app, outbox)
        app[OUTBOX] = outbox
        await outbox.start()
        yield
        await outbox.close()

    app.cleanup_ctx.append(lifecycle)


async def build_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    registry = make_registry(config)
    setup_registry(app, registry)

    settings = auth_settings(config)
    admin_token = config.section("admin").get("token")
    app.middlewares.append(admin_guard(admin_token, settings.enabled))
    if settings.enabled:
        auth = await create_auth(settings, config.registry.default_customer)
        auth.add_routes(app)
        app.middlewares.append(make_auth_middleware(auth, settings, registry.upload_owner))

        async def close_auth(_: web.Application) -> None:
            await auth.close()

        app.on_cleanup.append(close_auth)
    setup_events(app, config, registry)
    # /healthz, /readyz, /metrics, read-only mode, periodic GC (dockyard/ops).
    setup_ops(app, config, registry, outbox=lambda: app.get(OUTBOX), gc_hooks=gc_hooks(config))
    return app
