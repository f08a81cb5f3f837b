"""The registry's aiohttp application: routes, error mapping, lifecycle."""

from __future__ import annotations

import errno
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from dockyard.core.errors import (
    API_VERSION_HEADER,
    ApiError,
    InternalError,
    NameUnknown,
    Unavailable,
    Unsupported,
    error_response,
)
from dockyard.core.sql import Database, DatabaseUnavailable

from . import routes
from .config import Config, quotas_of
from .handlers import blobs, discovery, manifests, uploads
from .handlers.base import REGISTRY, REQUEST_ID
from .metadata import Metadata
from .metrics import STORAGE_ERRORS, metrics_middleware
from .service import Registry
from .storage import StorageError, make_store

log = logging.getLogger("dockyard.registry")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err)
    except StorageError as err:
        STORAGE_ERRORS.inc()
        log.warning("storage error on %s %s: %s", request.method, request.path, err)
        return error_response(Unavailable(f"storage unavailable: {err}"))
    except DatabaseUnavailable as err:
        log.warning("metadata unavailable on %s %s: %s", request.method, request.path, err)
        return error_response(Unavailable("metadata database unavailable; retry later"))
    except web.HTTPException as exc:
        if not request.path.startswith("/v2/") or exc.status not in (404, 405):
            raise
        if exc.status == 405:
            return error_response(Unsupported(f"{request.method} is not supported here"))
        return error_response(NameUnknown("no such endpoint or repository"))
    except (ConnectionResetError, RequestPayloadError, web.HTTPClientError):
        # A client that went away or sent a broken body: answered by
        # dockyard.core.http.client_gone_middleware, without a traceback.
        raise
    except OSError as err:
        if err.errno not in (errno.EMFILE, errno.ENFILE):
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(InternalError("internal error; see the server log"))
        # Out of file descriptors: the server is overloaded, not broken; nothing was committed.
        log.warning("out of file descriptors on %s %s", request.method, request.path)
        return error_response(Unavailable("server overloaded; retry later"))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(InternalError("internal error; see the server log"))


async def _stamp(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v2"):
        response.headers.update(API_VERSION_HEADER)
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]


async def api_base(request: web.Request) -> web.StreamResponse:
    return web.json_response({})


def add_routes(app: web.Application) -> None:
    """The Distribution API's routes, each named: handlers build URLs with `url_for` and the
    auth middleware reads the scope a route needs from its name (registry/routes.py)."""
    name = "/v2/{name:.+}"
    r = app.router
    r.add_get("/v2/", api_base, name=routes.BASE)
    r.add_get("/v2/_catalog", discovery.catalog, name=routes.CATALOG)
    r.add_get(name + "/tags/list", discovery.list_tags, name=routes.TAGS)
    r.add_get(name + "/referrers/{digest}", discovery.referrers, name=routes.REFERRERS)
    r.add_get(name + "/manifests/{reference}", manifests.get_manifest, name=routes.MANIFEST_GET)
    r.add_put(name + "/manifests/{reference}", manifests.put_manifest, name=routes.MANIFEST_PUT)
    r.add_delete(
        name + "/manifests/{reference}", manifests.delete_manifest, name=routes.MANIFEST_DELETE
    )
    r.add_post(name + "/blobs/uploads/", uploads.start_upload, name=routes.UPLOAD_START)
    upload = name + "/blobs/uploads/{upload_id}"
    r.add_get(upload, uploads.upload_status, name=routes.UPLOAD_STATUS)
    r.add_patch(upload, uploads.patch_upload, name=routes.UPLOAD_PATCH)
    r.add_put(upload, uploads.put_upload, name=routes.UPLOAD_PUT)
    r.add_delete(upload, uploads.cancel_upload, name=routes.UPLOAD_CANCEL)
    # HEAD of a blob answers from metadata alone; it must not open the object.
    blob = name + "/blobs/{digest}"
    r.add_get(blob, blobs.get_blob, allow_head=False, name=routes.BLOB_GET)
    r.add_head(blob, blobs.head_blob, name=routes.BLOB_HEAD)
    r.add_delete(blob, blobs.delete_blob, name=routes.BLOB_DELETE)


def make_registry(config: Config, db: Database) -> Registry:
    return Registry.build(
        config.registry,
        config.gc,
        make_store(config.storage, config.data_dir),
        Metadata(db),
        quotas=quotas_of(config),
        public_url=config.http.public_url,
    )


def setup_registry(app: web.Application, registry: Registry) -> None:
    """Mount the Distribution API on `app` and tie the registry's lifecycle to it."""
    app[REGISTRY] = registry
    app.middlewares.append(metrics_middleware)
    app.middlewares.append(error_middleware)
    app.on_response_prepare.append(_stamp)
    add_routes(app)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await registry.store.start()
        await registry.meta.open()
        yield
        await registry.blobs.drain()
        await registry.store.close()

    app.cleanup_ctx.append(lifecycle)
