"""JSON HTTP API under /launcher/v1/: thin handlers over `Launcher`.

Access policy, visible at the top of every handler:
- management routes need `Authorization: Bearer <api token>` (settings.api_token, or the token
  generated into data_dir/launcher/api-token); the routes are added to someone else's
  application, so they cannot lean on its middleware;
- POST /launcher/v1/events needs the events shared secret or an HMAC signature of the body.
Errors are `{"errors": [{"code", "message"}]}` with the domain error's status.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dockyard.core.http import read_body
from launcher.errors import Forbidden, InvalidRequest, LauncherError, NotFound, Unauthorized
from launcher.events import MAX_ENVELOPE_BYTES, authorized

if TYPE_CHECKING:
    from launcher.service import Launcher

PREFIX = "/launcher/v1"
MAX_BODY = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except LauncherError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="dockyard-launcher"'} if isinstance(
                exc, Unauthorized) else None
            return web.json_response(
                {"errors": [{"code": exc.code, "message": exc.message}]},
                status=exc.status, headers=headers,
            )

    return wrapped


def _dump(value: Any) -> str:
    return json.dumps(value, indent=None, separators=(",", ":"))


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=_dump)


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """Drop internal epoch fields from store rows."""
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


class LauncherApi:
    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.store = launcher.store

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        p = PREFIX
        routes: list[tuple[str, str, Handler]] = [
            ("GET", f"{p}/", self.root),
            ("POST", f"{p}/events", self.events),
            ("GET", f"{p}/task-definitions", self.list_task_definitions),
            ("POST", f"{p}/task-definitions", self.register_task_definition),
            ("GET", f"{p}/task-definitions/{{family}}", self.list_revisions),
            ("GET", f"{p}/task-definitions/{{family}}/{{revision}}", self.get_task_definition),
            ("DELETE", f"{p}/task-definitions/{{family}}/{{revision}}",
             self.deregister_task_definition),
            ("GET", f"{p}/instance-types", self.list_instance_types),
            ("GET", f"{p}/instances", self.list_instances),
            ("POST", f"{p}/instances", self.register_instance),
            ("GET", f"{p}/instances/{{id}}", self.get_instance),
            ("PATCH", f"{p}/instances/{{id}}", self.update_instance),
            ("DELETE", f"{p}/instances/{{id}}", self.remove_instance),
            ("GET", f"{p}/services", self.list_services),
            ("POST", f"{p}/services", self.create_service),
            ("GET", f"{p}/services/{{name}}", self.get_service),
            ("PATCH", f"{p}/services/{{name}}", self.update_service),
            ("DELETE", f"{p}/services/{{name}}", self.delete_service),
            ("POST", f"{p}/services/{{name}}/deployments", self.deploy_service),
            ("GET", f"{p}/deployments", self.list_deployments),
            ("GET", f"{p}/deployments/{{id}}", self.get_deployment),
            ("GET", f"{p}/tasks", self.list_tasks),
            ("GET", f"{p}/tasks/{{id}}", self.get_task),
            ("POST", f"{p}/tasks/{{id}}/stop", self.stop_task),
            ("GET", f"{p}/tasks/{{id}}/logs", self.task_logs),
            ("GET", f"{p}/images-in-use", self.images_in_use),
            ("POST", f"{p}/reconcile", self.reconcile),
        ]
        for method, path, handler in routes:
            r.add_route(method, path, _errors(handler))

    # --- access -----------------------------------------------------------------------------

    def _admin(self, request: web.Request) -> None:
        token = self.launcher.api_token
        if token is None:
            return  # api_auth = false: the operator chose an open management API
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("launcher API token required (Authorization: Bearer …)")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Forbidden("launcher API token is not valid")

    # --- handlers ---------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json({
            "services": len(await self.store.list_services()),
            "instances": len(await self.store.list_instances()),
            "registry": self.launcher.settings.registry,
            "cluster": self.launcher.settings.cluster,
        })

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
        self._admin(request)
        family = request.query.get("family")
        return _json({"taskDefinitions": await self.store.list_task_definitions(family)})

    async def register_task_definition(self, request: web.Request) -> web.Response:
        self._admin(request)
        td = await self.launcher.register_task_definition(await _json_body(request))
        return _json(td, status=201)

    async def list_revisions(self, request: web.Request) -> web.Response:
        self._admin(request)
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
        self._admin(request)
        return _json(await self.store.get_task_definition(request.match_info["family"],
                                                          self._revision(request)))

    async def deregister_task_definition(self, request: web.Request) -> web.Response:
        self._admin(request)
        revision = self._revision(request)
        if revision is None:
            raise InvalidRequest("name the revision to deregister")
        return _json(await self.store.deregister_task_definition(request.match_info["family"],
                                                                 revision))

    async def list_instance_types(self, request: web.Request) -> web.Response:
        self._admin(request)
        settings = self.launcher.settings
        return _json({"instanceTypes": [
            {**t.as_dict(), "warmPool": settings.warm_pool.get(t.name, 0)}
            for t in sorted(settings.instance_types.values(), key=lambda t: (t.cpu, t.memory))
        ]})

    async def list_instances(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json({"instances": await self.launcher.describe_instances()})

    async def register_instance(self, request: web.Request) -> web.Response:
        self._admin(request)
        inst = await self.launcher.instances.register(await _json_body(request))
        return _json(await self.launcher.describe_instance(inst["id"]), status=201)

    async def get_instance(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json(await self.launcher.describe_instance(request.match_info["id"]))

    async def update_instance(self, request: web.Request) -> web.Response:
        self._admin(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or set(body) - {"status"}:
            raise InvalidRequest("only status (ACTIVE or DRAINING) can be changed")
        inst = await self.launcher.instances.set_status(request.match_info["id"],
                                                        body.get("status"))
        for service in await self.store.list_services():
            self.launcher.deployments.kick(service["name"])  # replace tasks on a drained one
        return _json(await self.launcher.describe_instance(inst["id"]))

    async def remove_instance(self, request: web.Request) -> web.Response:
        self._admin(request)
        await self.launcher.instances.remove(request.match_info["id"])
        return web.Response(status=204)

    async def list_services(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json({"services": await self.store.list_services()})

    async def create_service(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json(await self.launcher.create_service(await _json_body(request)), status=201)

    async def get_service(self, request: web.Request) -> web.Response:
        self._admin(request)
        name = request.match_info["name"]
        service = await self.store.get_service(name)
        tasks = await self.store.list_tasks(service=name, active=True)
        current = None
        if service["currentDeployment"]:
            current = _public(await self.store.get_deployment(service["currentDeployment"]))
        return _json({**service, "runningCount": len(tasks), "current": current,
                      "tasks": [_public(t) for t in tasks]})

    async def update_service(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json(await self.launcher.update_service(request.match_info["name"],
                                                        await _json_body(request)))

    async def delete_service(self, request: web.Request) -> web.Response:
        self._admin(request)
        await self.launcher.delete_service(request.match_info["name"])
        return web.Response(status=202)

    async def deploy_service(self, request: web.Request) -> web.Response:
        self._admin(request)
        dep = await self.launcher.manual_deploy(request.match_info["name"],
                                                await _json_body(request))
        if dep is None:
            return _json({"deployment": None,
                          "message": "that image is already deployed or being deployed"})
        return _json({"deployment": _public(dep)}, status=201)

    async def list_deployments(self, request: web.Request) -> web.Response:
        self._admin(request)
        states = [s for s in request.query.get("state", "").upper().split(",") if s]
        limit = _limit(request)
        deps = await self.store.list_deployments(request.query.get("service"), states or None,
                                                 limit=limit)
        return _json({"deployments": [_public(d) for d in deps]})

    async def get_deployment(self, request: web.Request) -> web.Response:
        self._admin(request)
        dep = await self.store.get_deployment(request.match_info["id"], history=True)
        return _json(_public(dep))

    async def list_tasks(self, request: web.Request) -> web.Response:
        self._admin(request)
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
        return _json({"tasks": [_public(t) for t in tasks]})

    async def get_task(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json(_public(await self.store.get_task(request.match_info["id"])))

    async def stop_task(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json(_public(await self.launcher.stop_task(request.match_info["id"])))

    async def task_logs(self, request: web.Request) -> web.Response:
        self._admin(request)
        tail = request.query.get("tail", "200")
        if not tail.isdigit() or not 0 < int(tail) <= 10000:
            raise InvalidRequest("tail must be between 1 and 10000")
        text = await self.launcher.task_logs(request.match_info["id"], int(tail))
        return web.Response(text=text, content_type="text/plain")

    async def images_in_use(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json({"images": sorted(await self.launcher.images_in_use())})

    async def reconcile(self, request: web.Request) -> web.Response:
        self._admin(request)
        return _json(await self.launcher.reconcile())


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 0 < int(raw) <= 10000:
        raise InvalidRequest("limit must be between 1 and 10000")
    return int(raw)
