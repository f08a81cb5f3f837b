"""The composition root: one aiohttp application wiring registry, auth, events and launcher."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from auth.config import AuthSettings
from auth.service import create_auth
from dockyard.core.errors import Unauthorized, error_response
from dockyard.core.oci import customer_of
from launcher.api import add_routes as add_launcher_routes
from launcher.config import LauncherSettings
from launcher.service import Launcher
from registry.app import make_registry, setup_registry
from registry.authz import make_auth_middleware
from registry.config import Config
from registry.events import NotificationSettings, RegistryEvent, RequestRecord, open_events
from registry.events.admin import add_admin_routes
from registry.gc import InUseHook
from registry.metrics import record_deployment_event, record_placement
from registry.service import Change, Registry
from registry.usage import usage_report

from .ops import setup_ops

log = logging.getLogger("dockyard")

OUTBOX = web.AppKey("outbox", object)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def launcher_settings(config: Config) -> LauncherSettings:
    return LauncherSettings.from_dict(config.section("launcher"), config.data_dir,
                                      database_url=config.section("metadata").get("url"))


def _repo_ref(image: str) -> str:
    """`host:port/acme/web@sha256:…` → `acme/web@sha256:…` (GC names repositories bare)."""
    head, _, rest = image.partition("/")
    if rest and ("." in head or ":" in head or head == "localhost"):
        return rest
    return image


def gc_hooks(config: Config) -> list[InUseHook]:
    """What other parts mark in use for GC: the launcher's running and rollback images.

    Read from the launcher's database, so `dockyard gc` in another process sees them too.
    """
    settings = launcher_settings(config)
    if not settings.enabled:
        return []

    async def launcher_images() -> set[str]:
        launcher = Launcher(settings)
        await launcher.store.open()
        try:
            return {_repo_ref(image) for image in await launcher.images_in_use()}
        finally:
            await launcher.store.close()

    return [launcher_images]


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


def deployment_event(event: dict[str, Any], default_customer: str) -> RegistryEvent:
    """A launcher deployment state change as an outbox event (`action` = deployment.<state>)."""
    repository = event.get("repository") or ""
    return RegistryEvent(
        action=f"deployment.{str(event.get('state', '')).lower()}",
        customer=customer_of(repository, default_customer),
        repository=repository,
        digest=event.get("digest") or "",
        media_type="application/vnd.dockyard.deployment.v1+json",
        size=0,
        tag=event.get("tag"),
        url=f"/launcher/v1/deployments/{event.get('id', '')}",
        request=RequestRecord(str(event.get("id", "")), "", "", "", "dockyard-launcher"),
        actor="launcher",
        kind="deployment",
    )


def setup_launcher(app: web.Application, config: Config) -> None:
    """Push-to-deploy in process: fed from the durable outbox, so no push is missed across
    restarts; its deployment state changes go back out through the same outbox."""
    settings = launcher_settings(config)
    if not settings.enabled:
        return
    default_customer = config.registry.default_customer

    async def on_deployment(event: dict[str, Any]) -> None:
        await record_deployment_event(event)
        outbox = app.get(OUTBOX)
        if outbox is not None:
            await outbox.publish(deployment_event(event, default_customer))

    launcher = Launcher(settings, on_deployment, on_placement=record_placement)
    add_launcher_routes(app, launcher)

    async def consume() -> None:
        while True:
            try:
                async with app[OUTBOX].subscribe("launcher") as subscription:
                    async for envelope in subscription:
                        await launcher.handle_envelope(envelope)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("launcher event consumer failed; retrying")
                await asyncio.sleep(1)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await launcher.start()
        consumer = asyncio.create_task(consume(), name="launcher-events")
        yield
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await launcher.close()

    app.cleanup_ctx.append(lifecycle)


def add_usage_routes(app: web.Application, registry: Registry) -> None:
    """`GET /admin/usage[/{customer}]`: what `dockyard usage --json` prints."""

    async def usage(request: web.Request) -> web.StreamResponse:
        customer = request.match_info.get("customer")
        rows = await usage_report(registry, customer)
        if customer is not None:
            if not rows:
                raise web.HTTPNotFound(text=f"no customer {customer}")
            return web.json_response(rows[0])
        return web.json_response(rows)

    app.router.add_get("/admin/usage", usage)
    app.router.add_get("/admin/usage/{customer}", usage)


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
    setup_launcher(app, config)
    add_usage_routes(app, registry)
    # /healthz, /readyz, /metrics, read-only mode, periodic GC (dockyard/ops).
    setup_ops(app, config, registry, outbox=lambda: app.get(OUTBOX), gc_hooks=gc_hooks(config))
    return app
