"""The Distribution API's route names: what each needs from a token, and its URLs.

One table says which action each route requires (spec: docker token-scope, "repository:
NAME:pull|push|delete"); the auth middleware reads it from the route the router resolved, so
no second copy of the route table exists. Handlers build URLs from the same names.
"""

from __future__ import annotations

from aiohttp import web

BASE = "v2.base"
CATALOG = "v2.catalog"
TAGS = "tags.list"
REFERRERS = "referrers.list"
MANIFEST_GET = "manifest.get"
MANIFEST_PUT = "manifest.put"
MANIFEST_DELETE = "manifest.delete"
UPLOAD_START = "upload.start"
UPLOAD_STATUS = "upload.status"
UPLOAD_PATCH = "upload.patch"
UPLOAD_PUT = "upload.put"
UPLOAD_CANCEL = "upload.cancel"
BLOB_GET = "blob.get"
BLOB_HEAD = "blob.head"
BLOB_DELETE = "blob.delete"

PULL: tuple[str, ...] = ("pull",)
PUSH: tuple[str, ...] = ("pull", "push")
DELETE: tuple[str, ...] = ("delete",)

# The actions on the route's repository a caller needs. BASE needs only a valid token and the
# catalog its own resource; cancelling one's own upload is part of pushing, not deleting.
REPOSITORY_ACTIONS: dict[str, tuple[str, ...]] = {
    TAGS: PULL,
    REFERRERS: PULL,
    MANIFEST_GET: PULL,
    MANIFEST_PUT: PUSH,
    MANIFEST_DELETE: DELETE,
    UPLOAD_START: PUSH,
    UPLOAD_STATUS: PULL,
    UPLOAD_PATCH: PUSH,
    UPLOAD_PUT: PUSH,
    UPLOAD_CANCEL: PUSH,
    BLOB_GET: PULL,
    BLOB_HEAD: PULL,
    BLOB_DELETE: DELETE,
}
UPLOAD_SESSION_ROUTES = frozenset({UPLOAD_STATUS, UPLOAD_PATCH, UPLOAD_PUT, UPLOAD_CANCEL})


def url(request: web.Request, route: str, **parts: str) -> str:
    """The path of a named route of this application, e.g. an upload's Location. Unescaped:
    names, digests and upload ids hold only characters a path takes as they are, and clients
    compare Locations with what they sent (`sha256:…`, not `sha256%3A…`)."""
    return request.app.router[route].url_for(**parts).path
