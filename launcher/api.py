"""JSON HTTP API under /launcher/v1/: a sub-application of thin handlers over `Launcher`.

Access policy, enforced by the sub-application's middleware and visible on each handler:
- every route needs `Authorization: Bearer <api token>` (settings.api_token, or the token
  generated into data_dir/launcher/api-token) unless it is marked `@public`;
- the one public route, POST /events, checks the events shared secret or an HMAC signature of
  the body itself.
Errors leave through one path: handlers raise `dockyard.core.errors.ApiError` subclasses and the
middleware answers with `error_response` (the one error body); anything else is a 500 in the
same body, logged with its traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from dockyard.core.errors import ApiError, InternalError, Unavailable, error_response
from dockyard.core.http import read_body
from dockyard.core.sql import DatabaseUnavailable
from launcher.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from launcher.events import MAX_ENVELOPE_BYTES, authorized
from launcher.service import Launcher

log = logging.getLogger(__name__)

PREFIX = "/launcher/v1"
MAX_BODY = 1024 * 1024
LAUNCHER_API = web.AppKey("dockyard.launcher.api", Launcher)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


def public(handler: H) -> H:
    """Mark a route that does its own authentication (the API token is not asked for)."""
    handler.public = True  # type: ignore[attr-defined]
    return handler


def _dump(value: Any) -> str:
    return json.dumps(value, indent=None, separators=(",", ":"))


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=_dump)


def _public_fields(item: dict[str, Any]) -> dict[str, Any]:
    """Drop the internal epoch fields of store rows."""
    return {k: v for k, v in item.items() if k not in ("created", "started", "times")}


async def _body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    # Every byte that arrives counts (chunked bodies too), not only Content-Length: 413 beyond.
    return await read_body(request, limit)


async def _json_body(request: web.Request) -> Any:
    data = await _body(request)
    try:
        return json.loads(data or b"{}")
    except ValueError:
        raise InvalidRequest("body is not valid JSON") from None


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 0 < int(raw) <= 10000:
        raise InvalidRequest("limit must be between 1 and 10000")
    return int(raw)


def make_middleware(launcher: Launcher) -> Any:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if not getattr(handler, "public", False):
                _check_token(launcher.api_token, request)
            return await handler(request)
        except ApiError as exc:
            if isinstance(exc, Unauthorized):
                exc.headers.setdefault("WWW-Authenticate", 'Bearer realm="dockyard-launcher"')
            return error_response(exc)
        except DatabaseUnavailable as exc:
            return error_response(Unavailable(f"launcher state store: {exc}"))
        except web.HTTPException:
            raise
        except Exception:
            log.exception("launcher API %s %s failed", request.method, request.path)
            return error_response(InternalError("internal error (see the server log)"))

    return guard


def _check_token(token: str | None, request: web.Request) -> None:
    if token is None:
        return  # api_auth = false: the operator chose an open management API
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("launcher API token required (Authorization: Bearer …)")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("launcher API token is not valid")


def subapp(launcher: Launcher) -> web.Application:
    """The /launcher/v1 sub-application (mount with `app.add_subapp(PREFIX, …)`)."""
    app = web.Application(middlewares=[make_middleware(launcher)])
    app[LAUNCHER_API] = launcher
    LauncherApi(launcher).add_routes(app)
    return app


def add_routes(app: web.Application, launcher: Launcher) -> None:
    app.add_subapp(PREFIX, subapp(launcher))


class LauncherApi:
    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.store = launcher.store

    def add_routes(self, app: web.Application) -> None:
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/", self.root),
            ("POST", "/events", self.events),
            ("GET", "/task-definitions", self.list_task_definitions),
            ("POST", "/task-definitions", self.register_task_definition),
            ("GET", "/task-definitions/{family}", self.list_revisions),
            ("GET", "/task-definitions/{family}/{revision}", self.get_task_definition),
            ("DELETE", "/task-definitions/{family}/{revision}", self.deregister_task_definition),
            ("GET", "/instance-types", self.list_instance_types),
            ("GET", "/instances", self.list_instances),
            ("POST", "/instances", self.register_instance),
            ("GET", "/instances/{id}", self.get_instance),
            ("PATCH", "/instances/{id}", self.update_instance),
            ("DELETE", "/instances/{id}", self.remove_instance),
            ("GET", "/services", self.list_services),
            ("POST", "/services", self.create_service),
            ("GET", "/services/{name}", self.get_service),
            ("PATCH", "/services/{name}", self.update_service),
            ("DELETE", "/services/{name}", self.delete_service),
            ("POST", "/services/{name}/deployments", self.deploy_service),
            ("POST", "/services/{name}/rollback", self.rollback_service),
            ("GET", "/services/{name}/events", self.service_events),
            ("GET", "/deployments", self.list_deployments),
            ("GET", "/deployments/{id}", self.get_deployment),
            ("GET", "/tasks", self.list_tasks),
            ("GET", "/tasks/{id}", self.get_task),
            ("POST", "/tasks/{id}/stop", self.stop_task),
            ("GET", "/tasks/{id}/logs", self.task_logs),
            ("GET", "/secrets", self.list_secrets),
            ("PUT", "/secrets/{name}", self.put_secret),
            ("DELETE", "/secrets/{name}", self.delete_secret),
            ("GET", "/images-in-use", self.images_in_use),
            ("POST", "/reconcile", self.reconcile),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)

    # --- handlers (API token unless @public) ------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return _json({
            "services": len(await self.store.list_services()),
            "instances": len(await self.store.list_instances()),
            "registry": self.launcher.settings.registry,
            "cluster": self.launcher.settings.cluster,
            "leader": self.launcher.leading,
            "ingress": self.launcher.settings.ingress_addr,
        })

    @public
    async def events(self, request: web.Request) -> web.Response:
        # Policy: shared secret or HMAC signature; with neither configured, nobody may send.
        settings = self.launcher.settings
        if not (settings.events_secret or settings.events_hmac_key):
            raise Forbidden("inbound events are disabled: set launcher.events_secret")
        body = await _body(request, MAX_ENVELOPE_BYTES)
        if not authorized(request.headers, body, settings.events_secret,
                          settings.events_hmac_key):
            raise Unauthorized("event sender not authenticated")
        try:
            envelope = json.loads(body)
        except ValueError:
            raise InvalidRequest("envelope is not valid JSON") from None
        await self.launcher.handle_envelope(envelope)
        # spec: distribution-notifications.md "Responses" — any 2xx counts as delivered.
        return web.Response(status=202)

    async def list_task_definitions(self, request: web.Request) -> web.Response:
        family = request.query.get("family")
        return _json({"taskDefinitions": await self.store.list_task_definitions(family)})

    async def register_task_definition(self, request: web.Request) -> web.Response:
        td = await self.launcher.register_task_definition(await _json_body(request))
        return _json(td, status=201)

    async def list_revisions(self, request: web.Request) -> web.Response:
        revisions = await self.store.list_task_definitions(request.match_info["family"])
        if not revisions:
            raise NotFound(f"task definition family {request.match_info['family']} not found")
        return _json({"taskDefinitions": revisions})

    def _revision(self, request: web.Request) -> int | None:
        raw = request.match_info["revision"]
        if raw == "latest":
            return None
        if not raw.isdigit():
            raise InvalidRequest("revision must be a number or 'latest'")
        return int(raw)

    async def get_task_definition(self, request: web.Request) -> web.Response:
        return _json(await self.store.get_task_definition(request.match_info["family"],
                                                          self._revision(request)))

    async def deregister_task_definition(self, request: web.Request) -> web.Response:
        revision = self._revision(request)
        if revision is None:
            raise InvalidRequest("name the revision to deregister")
        return _json(await self.store.deregister_task_definition(request.match_info["family"],
                                                                 revision))

    async def list_instance_types(self, request: web.Request) -> web.Response:
        settings = self.launcher.settings
        return _json({"instanceTypes": [
            {**t.as_dict(), "warmPool": settings.warm_pool.get(t.name, 0)}
            for t in sorted(settings.instance_types.values(), key=lambda t: (t.cpu, t.memory))
        ]})

    async def list_instances(self, request: web.Request) -> web.Response:
        return _json({"instances": await self.launcher.describe_instances()})

    async def register_instance(self, request: web.Request) -> web.Response:
        inst = await self.launcher.instances.register(await _json_body(request))
        return _json(await self.launcher.describe_instance(inst["id"]), status=201)

    async def get_instance(self, request: web.Request) -> web.Response:
        return _json(await self.launcher.describe_instance(request.match_info["id"]))

    async def update_instance(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or set(body) - {"status"}:
            raise InvalidRequest("only status (ACTIVE or DRAINING) can be changed")
        inst = await self.launcher.set_instance_status(request.match_info["id"],
                                                       body.get("status"))
        return _json(await self.launcher.describe_instance(inst["id"]))

    async def remove_instance(self, request: web.Request) -> web.Response:
        await self.launcher.instances.remove(request.match_info["id"])
        return web.Response(status=204)

    async def list_services(self, request: web.Request) -> web.Response:
        return _json({"services": await self.store.list_services()})

    async def create_service(self, request: web.Request) -> web.Response:
        return _json(await self.launcher.create_service(await _json_body(request)), status=201)

    async def get_service(self, request: web.Request) -> web.Response:
        return _json(await self.launcher.describe_service(request.match_info["name"]))

    async def update_service(self, request: web.Request) -> web.Response:
        return _json(await self.launcher.update_service(request.match_info["name"],
                                                        await _json_body(request)))

    async def delete_service(self, request: web.Request) -> web.Response:
        await self.launcher.delete_service(request.match_info["name"])
        return web.Response(status=202)

    async def deploy_service(self, request: web.Request) -> web.Response:
        outcome = await self.launcher.manual_deploy(request.match_info["name"],
                                                    await _json_body(request))
        if outcome.deployment is None:
            return _json({"deployment": None, "message": outcome.message})
        return _json({"deployment": _public_fields(outcome.deployment),
                      "message": outcome.message}, status=201)

    async def rollback_service(self, request: web.Request) -> web.Response:
        outcome = await self.launcher.rollback(request.match_info["name"],
                                               await _json_body(request))
        if outcome.deployment is None:
            return _json({"deployment": None, "message": outcome.message})
        return _json({"deployment": _public_fields(outcome.deployment),
                      "message": outcome.message}, status=201)

    async def service_events(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self.store.get_service(name)
        events = await self.store.list_service_events(name, limit=_limit(request))
        return _json({"events": events})

    async def list_deployments(self, request: web.Request) -> web.Response:
        states = [s for s in request.query.get("state", "").upper().split(",") if s]
        deps = await self.store.list_deployments(request.query.get("service"), states or None,
                                                 limit=_limit(request))
        return _json({"deployments": [_public_fields(d) for d in deps]})

    async def get_deployment(self, request: web.Request) -> web.Response:
        dep = await self.store.get_deployment(request.match_info["id"], history=True)
        return _json(_public_fields(dep))

    async def list_tasks(self, request: web.Request) -> web.Response:
        which = request.query.get("status", "active").lower()
        if which not in ("active", "stopped", "all"):
            raise InvalidRequest("status must be active, stopped or all")
        tasks = await self.store.list_tasks(
            service=request.query.get("service"),
            deployment_id=request.query.get("deployment"),
            instance_id=request.query.get("instance"),
            active={"active": True, "stopped": False, "all": None}[which],
            limit=_limit(request),
        )
        return _json({"tasks": [_public_fields(t) for t in tasks]})

    async def get_task(self, request: web.Request) -> web.Response:
        return _json(_public_fields(await self.store.get_task(request.match_info["id"])))

    async def stop_task(self, request: web.Request) -> web.Response:
        return _json(_public_fields(await self.launcher.stop_task(request.match_info["id"])))

    async def task_logs(self, request: web.Request) -> web.Response:
        tail = request.query.get("tail", "200")
        if not tail.isdigit() or not 0 < int(tail) <= 10000:
            raise InvalidRequest("tail must be between 1 and 10000")
        text = await self.launcher.task_logs(request.match_info["id"], int(tail))
        return web.Response(text=text, content_type="text/plain")

    async def list_secrets(self, request: web.Request) -> web.Response:
        return _json({"secrets": await self.store.list_secrets()})

    async def put_secret(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            raise InvalidRequest('body must be {"value": "…"}')
        created = await self.launcher.secrets.put(request.match_info["name"], body["value"])
        # The value is never echoed: only the name comes back.
        return _json({"name": request.match_info["name"], "created": created},
                     status=201 if created else 200)

    async def delete_secret(self, request: web.Request) -> web.Response:
        await self.launcher.secrets.delete(request.match_info["name"])
        return web.Response(status=204)

    async def images_in_use(self, request: web.Request) -> web.Response:
        return _json({"images": sorted(await self.launcher.images_in_use())})

    async def reconcile(self, request: web.Request) -> web.Response:
        return _json(await self.launcher.reconcile())
