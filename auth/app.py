"""The token service alone, as its own aiohttp application (`dockyard auth serve`).

A registry on another host then verifies tokens with the keys from `/auth/jwks.json` (or the PEM
files) and points its challenge at this service with `[auth] realm`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from auth.challenge import JWKS_PATH, TOKEN_PATH
from auth.config import AuthSettings
from auth.service import Auth, create_auth
from dockyard.core.http import client_gone_middleware
from dockyard.core.sql import Database

AUTH_KEY = web.AppKey("dockyard_auth", Auth)


def make_token_app(
    settings: AuthSettings, default_customer: str, open_state: Callable[[], Awaitable[Database]]
) -> web.Application:
    app = web.Application(middlewares=[client_gone_middleware])

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        db = await open_state()
        try:
            app[AUTH_KEY] = await create_auth(settings, default_customer, db)
            yield
        finally:
            await db.close()

    app.cleanup_ctx.append(lifecycle)

    # Routes are fixed before startup, the Auth object only exists after it: delegate.
    async def get_token(request: web.Request) -> web.StreamResponse:
        return await request.app[AUTH_KEY].endpoint.get_token(request)

    async def post_token(request: web.Request) -> web.StreamResponse:
        return await request.app[AUTH_KEY].endpoint.post_token(request)

    async def jwks(request: web.Request) -> web.StreamResponse:
        return await request.app[AUTH_KEY].endpoint.jwks(request)

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    app.router.add_get(TOKEN_PATH, get_token)
    app.router.add_post(TOKEN_PATH, post_token)
    app.router.add_get(JWKS_PATH, jwks)
    app.router.add_get("/healthz", healthz)
    return app
