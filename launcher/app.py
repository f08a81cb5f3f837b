"""Run the launcher alone: an aiohttp application with only the /launcher/v1/ routes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from dockyard.core.http import client_gone_middleware
from dockyard.core.leases import Leases
from launcher.api import add_routes
from launcher.config import LauncherSettings
from launcher.service import DeploymentListener, Launcher

LAUNCHER_KEY = web.AppKey("dockyard.launcher", Launcher)


def make_app(settings: LauncherSettings,
             on_deployment_event: DeploymentListener | None = None) -> web.Application:
    app = web.Application(middlewares=[client_gone_middleware])
    launcher = Launcher(settings, on_deployment_event)
    app[LAUNCHER_KEY] = launcher

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        # The state store first, then the lease on it: several `launcher serve` processes on
        # one database (workers, or nodes on PostgreSQL) all answer the API, one acts.
        await launcher.store.open()
        leases = await Leases(launcher.store.db, f"launcher-{uuid.uuid4().hex[:12]}").open()
        await launcher.start(leases=leases)
        yield
        await launcher.close()

    app.cleanup_ctx.append(lifecycle)
    add_routes(app, launcher)
    return app
