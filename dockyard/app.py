"""The composition root: one aiohttp application wiring registry, auth, events and launcher."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from auth.config import AuthSettings
from auth.service import create_auth
from dockyard.core.errors import Unauthorized, error_response
from dockyard.core.leases import Leases
from dockyard.core.oci import customer_of
from dockyard.core.sql import Database
from launcher.api import add_routes as add_launcher_routes
from launcher.config import LauncherSettings
from launcher.service import Launcher
from registry.app import make_registry, setup_registry
from registry.authz import make_auth_middleware
from registry.config import Config
from registry.events import (
    EventOutbox,
    NotificationSettings,
    RegistryEvent,
    RequestRecord,
    open_events,
)
from registry.events.admin import add_admin_routes
from registry.gc import GarbageCollector, InUseHook
from registry.metrics import NODE_INFO, record_deployment_event, record_placement
from registry.service import Registry
from registry.usage import usage_report

from .cluster import Node
from .ops import setup_ops
from .state import open_state

log = logging.getLogger("dockyard")

OUTBOX = web.AppKey("outbox", EventOutbox)

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
    settings = AuthSettings.from_dict(config.section("auth"), config.data_dir)
    if settings.realm is None and config.http.public_url:
        # Clients see [http] public_url, never an echo of their own Host header (DESIGN.md;
        # issue 22, finding 9): the challenge's realm is the token endpoint under it.
        realm = config.http.public_url.rstrip("/") + "/auth/token"
        settings = dataclasses.replace(settings, realm=realm)
    return settings


def notification_settings(config: Config) -> NotificationSettings:
    return NotificationSettings.from_dict(config.section("notifications"))


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


def setup_events(
    app: web.Application, config: Config, registry: Registry, db: Database, node: Node
) -> None:
    settings = notification_settings(config)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        outbox = await open_events(db, settings, source_addr=config.http.addr, instance_id=node.id)
        registry.manifests.events = outbox
        add_admin_routes(app, outbox)
        app[OUTBOX] = outbox
        if node.runs("dispatcher"):
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


def own_registry(config: Config) -> str:
    """host:port of this server as engines should name it."""
    if config.http.public_url:
        return urlsplit(config.http.public_url).netloc
    host, _, port = config.http.addr.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def setup_launcher(app: web.Application, config: Config, db: Database, leases: Leases) -> None:
    """Push-to-deploy in process: fed from the durable outbox, so no push is missed across
    restarts; its deployment state changes go back out through the same outbox. Its tables live
    in the registry's database, and it acts on engines only while holding the "launcher" lease,
    so on a cluster exactly one node reconciles while every node answers its API."""
    settings = launcher_settings(config)
    if not settings.enabled:
        return
    if settings.registry is None:
        # In process the registry is this server: engines pull from its public address, never
        # from Docker Hub (what a bare `acme/web@sha256:…` would mean to them).
        settings = dataclasses.replace(settings, registry=own_registry(config))
    default_customer = config.registry.default_customer

    async def on_deployment(event: dict[str, Any]) -> None:
        await record_deployment_event(event)
        outbox = app.get(OUTBOX)
        if outbox is not None:
            await outbox.publish(deployment_event(event, default_customer))

    launcher = Launcher(settings, on_deployment, on_placement=record_placement, db=db)
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
        await leases.open()  # idempotent; the launcher's lifecycle may run before open_leases
        await launcher.start(leases=leases)
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
        rows = await usage_report(registry.meta, registry.quotas, customer)
        if customer is not None:
            if not rows:
                raise web.HTTPNotFound(text=f"no customer {customer}")
            return web.json_response(rows[0])
        return web.json_response(rows)

    app.router.add_get("/admin/usage", usage)
    app.router.add_get("/admin/usage/{customer}", usage)


async def build_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    db = await open_state(config)

    async def close_state(_: web.Application) -> None:
        await db.close()

    app.on_cleanup.append(close_state)
    registry = make_registry(config, db)
    setup_registry(app, registry)

    settings = auth_settings(config)
    admin_token = config.section("admin").get("token")
    app.middlewares.append(admin_guard(admin_token, settings.enabled))
    if settings.enabled:
        auth = await create_auth(settings, config.registry.default_customer, db)
        auth.add_routes(app)
        app.middlewares.append(make_auth_middleware(auth, settings, registry.uploads.owner))
    node = Node(db, config.cluster, config.http.public_url or f"http://{config.http.addr}")
    NODE_INFO.info({"node": node.name, "id": node.id, "roles": ",".join(sorted(node.roles))})
    app.cleanup_ctx.append(node.lifecycle())
    setup_events(app, config, registry, db, node)
    leases = Leases(db, node.id)
    if node.runs("launcher"):
        setup_launcher(app, config, db, leases)
    add_usage_routes(app, registry)
    if not node.runs("gc"):
        config.gc.interval_seconds = 0  # `dockyard gc` still works on any node
    collector = GarbageCollector(
        registry.settings, registry.gc, registry.store, registry.meta, leases, gc_hooks(config)
    )

    async def open_leases(_: web.Application) -> None:
        await leases.open()

    app.on_startup.append(open_leases)
    # /healthz, /readyz, /metrics, read-only mode, periodic GC (dockyard/ops).
    setup_ops(app, config, registry, db, collector, outbox=lambda: app.get(OUTBOX))
    return app
