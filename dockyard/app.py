"""The composition root: one aiohttp application wiring registry, auth, events and launcher."""

from __future__ import annotations

from aiohttp import web

from registry.app import make_registry, setup_registry
from registry.config import Config


def build_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    registry = make_registry(config)
    setup_registry(app, registry)
    return app
