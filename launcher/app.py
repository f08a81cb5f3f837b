"""Run the launcher alone: an aiohttp application with only the /launcher/v1/ routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from launcher.api import add_routes
from launcher.config import LauncherSettings
from launcher.service import DeploymentListener, Launcher

LAUNCHER_KEY = web.AppKey("dockyard.launcher", Launcher)


def make_app(settings: LauncherSettings,
             on_deployment_event: DeploymentListener | None = None) -> web.Application:
    app = web.Application()
    launcher = Launcher(settings, on_deployment_event)
    app[LAUNCHER_KEY] = launcher

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await launcher.start()
        yield
        await launcher.close()

    app.cleanup_ctx.append(lifecycle)
    add_routes(app, launcher)
    return app
