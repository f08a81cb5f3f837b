"""The composition root: one aiohttp application wiring registry, auth, events and launcher."""

from __future__ import annotations

from aiohttp import web

from auth.config import AuthSettings
from auth.service import create_auth
from registry.app import make_registry, setup_registry
from registry.authz import make_auth_middleware
from registry.config import Config
from registry.gc import InUseHook


def gc_hooks(config: Config) -> list[InUseHook]:
    """What other parts mark in use for GC (the launcher's running and rollback images)."""
    return []


def auth_settings(config: Config) -> AuthSettings:
    return AuthSettings.from_dict(config.section("auth"), config.data_dir)


async def build_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    registry = make_registry(config)
    setup_registry(app, registry)

    settings = auth_settings(config)
    if settings.enabled:
        auth = await create_auth(settings, config.registry.default_customer)
        auth.add_routes(app)
        app.middlewares.append(make_auth_middleware(auth, settings, registry.upload_owner))

        async def close_auth(_: web.Application) -> None:
            await auth.close()

        app.on_cleanup.append(close_auth)
    return app
