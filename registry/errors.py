"""Domain errors and their mapping to the OCI Distribution spec's JSON error bodies.

Handlers and domain code raise; only `error_response` formats.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


class RegistryError(Exception):
    """An error with a spec code (oci-distribution-spec.md, "Error Codes") and an HTTP status."""

    code = "UNKNOWN"
    status = 500

    def __init__(
        self,
        message: str = "",
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.code)
        self.message = message
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            err["detail"] = self.detail
        return {"errors": [err]}


def _error(code: str, status: int) -> type[RegistryError]:
    return type(
        code.title().replace("_", "") + "Error", (RegistryError,), {"code": code, "status": status}
    )


BlobUnknown = _error("BLOB_UNKNOWN", 404)
BlobUploadInvalid = _error("BLOB_UPLOAD_INVALID", 400)
BlobUploadUnknown = _error("BLOB_UPLOAD_UNKNOWN", 404)
DigestInvalid = _error("DIGEST_INVALID", 400)
ManifestBlobUnknown = _error("MANIFEST_BLOB_UNKNOWN", 400)
ManifestInvalid = _error("MANIFEST_INVALID", 400)
ManifestUnknown = _error("MANIFEST_UNKNOWN", 404)
NameInvalid = _error("NAME_INVALID", 400)
NameUnknown = _error("NAME_UNKNOWN", 404)
SizeInvalid = _error("SIZE_INVALID", 400)
Unauthorized = _error("UNAUTHORIZED", 401)
Denied = _error("DENIED", 403)
Unsupported = _error("UNSUPPORTED", 405)
TooManyRequests = _error("TOOMANYREQUESTS", 429)
Unavailable = _error("UNAVAILABLE", 503)


class RangeNotSatisfiable(BlobUploadInvalid):
    """416 for an out-of-order chunk or an unsatisfiable blob Range."""

    status = 416


def error_response(err: RegistryError) -> web.Response:
    headers = {**API_VERSION_HEADER, **err.headers}
    return web.Response(
        status=err.status,
        body=json.dumps(err.body()).encode(),
        content_type="application/json",
        headers=headers,
    )
