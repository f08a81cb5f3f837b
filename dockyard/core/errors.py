"""One error path for every part: errors carry their status, code and headers; one writer
formats the body.

The body is the OCI Distribution spec's (oci-distribution-spec.md, "Error Codes"):
`{"errors": [{"code": …, "message": …, "detail": …}]}`. The registry, the token service, the
admin routes and the launcher API all answer in it, so one client parses every part's errors.
Handlers and domain code raise; only `error_response` (and the middleware that calls it) formats.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from aiohttp import web

API_VERSION_HEADER: Mapping[str, str] = {"Docker-Distribution-API-Version": "registry/2.0"}


class ApiError(Exception):
    """An error with a spec code and an HTTP status; subclasses fix both."""

    code: ClassVar[str] = "UNKNOWN"
    status: int = 500

    def __init__(
        self,
        message: str = "",
        detail: Any = None,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.code)
        self.message = message
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.detail)


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """The one shape of an error body."""
    err: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        err["detail"] = detail
    return {"errors": [err]}


def error_response(err: ApiError, extra_headers: Mapping[str, str] | None = None) -> web.Response:
    headers = {**(extra_headers or {}), **err.headers}
    return web.Response(
        status=err.status,
        body=json.dumps(err.body()).encode(),
        content_type="application/json",
        headers=headers,
    )


# The OCI Distribution spec's codes.


class BlobUnknown(ApiError):
    code = "BLOB_UNKNOWN"
    status = 404


class BlobUploadInvalid(ApiError):
    code = "BLOB_UPLOAD_INVALID"
    status = 400


class BlobUploadUnknown(ApiError):
    code = "BLOB_UPLOAD_UNKNOWN"
    status = 404


class DigestInvalid(ApiError):
    code = "DIGEST_INVALID"
    status = 400


class ManifestBlobUnknown(ApiError):
    code = "MANIFEST_BLOB_UNKNOWN"
    status = 400


class ManifestInvalid(ApiError):
    code = "MANIFEST_INVALID"
    status = 400


class ManifestUnknown(ApiError):
    code = "MANIFEST_UNKNOWN"
    status = 404


class NameInvalid(ApiError):
    code = "NAME_INVALID"
    status = 400


class NameUnknown(ApiError):
    code = "NAME_UNKNOWN"
    status = 404


class SizeInvalid(ApiError):
    code = "SIZE_INVALID"
    status = 400


class Unauthorized(ApiError):
    code = "UNAUTHORIZED"
    status = 401


class Denied(ApiError):
    code = "DENIED"
    status = 403


class Unsupported(ApiError):
    code = "UNSUPPORTED"
    status = 405


class TooManyRequests(ApiError):
    code = "TOOMANYREQUESTS"
    status = 429


class Unavailable(ApiError):
    code = "UNAVAILABLE"
    status = 503


class RangeNotSatisfiable(BlobUploadInvalid):
    """416 for an out-of-order chunk or an unsatisfiable blob Range."""

    status = 416


# Codes beyond the spec's, for the parts that are not the Distribution API.


class PaginationNumberInvalid(ApiError):
    """`?n=` that is not a non-negative integer; the reference registry's code (distribution
    registry/api/errcode), as OCI defines none for it."""

    code = "PAGINATION_NUMBER_INVALID"
    status = 400


class InvalidRequest(ApiError):
    """A request body or parameter that does not validate (400)."""

    code = "INVALID"
    status = 400


class NotFound(ApiError):
    code = "NOT_FOUND"
    status = 404


class Conflict(ApiError):
    code = "CONFLICT"
    status = 409


class PayloadTooLarge(ApiError):
    code = "SIZE_INVALID"
    status = 413


class InternalError(ApiError):
    code = "UNKNOWN"
    status = 500
