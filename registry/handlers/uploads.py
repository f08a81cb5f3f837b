"""Blob uploads. spec: end-4a/4b/4c (POST), end-5 (PATCH), end-6 (PUT), end-11 (mount),
end-13 (GET status), end-14 (DELETE)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from dockyard.core.errors import DigestInvalid, NameInvalid, RangeNotSatisfiable
from dockyard.core.oci import check_name, parse_digest

from .. import routes
from ..access import access_of
from ..blobs import BlobInfo
from ..uploads import SessionMoved, UploadSession
from .base import body_blocks, content_range, has_body, registry_of, repo_name


def upload_range(offset: int) -> str:
    # spec: "Range: 0-<end-of-range>", the last byte written; an empty session reports 0-0
    # as the reference registry does.
    return f"0-{max(offset - 1, 0)}"


def _session_headers(
    request: web.Request, name: str, upload_id: str, offset: int
) -> dict[str, str]:
    min_chunk = registry_of(request).store.chunk_min_length
    return {
        "Location": routes.url(request, routes.UPLOAD_STATUS, name=name, upload_id=upload_id),
        "Range": upload_range(offset),
        "Docker-Upload-UUID": upload_id,
        # spec: end-4a — advertised always; 0 means any chunk size is taken without buffering.
        "OCI-Chunk-Min-Length": str(min_chunk),
    }


def _created(request: web.Request, name: str, info: BlobInfo) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": routes.url(request, routes.BLOB_GET, name=name, digest=info.digest),
            "Docker-Content-Digest": info.digest,
            "Content-Length": "0",
        },
    )


T = TypeVar("T")


async def _in_order(
    request: web.Request,
    name: str,
    upload_id: str,
    start: int | None,
    work: Callable[[], Awaitable[T]],
) -> T:
    """Run a chunk write; a chunk that does not start where the session is gets 416."""
    try:
        return await work()
    except SessionMoved as moved:
        headers = _session_headers(request, name, upload_id, moved.offset)
        raise RangeNotSatisfiable(
            f"chunk starts at {start}, upload is at {moved.offset}", headers=headers
        ) from None


async def start_upload(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    registry = registry_of(request)
    access = access_of(request)
    query = request.query

    mount = query.get("mount")
    if mount is not None:
        from_name = query.get("from")
        if from_name is not None:
            try:
                check_name(from_name)
            except NameInvalid:
                from_name = None  # a bad `from` is ignored like a missing one
        info = await registry.blobs.mount(name, mount, from_name, access)
        if info is not None:
            return _created(request, name, info)
        # spec: a registry unable to mount SHOULD answer 202 and start an upload session.

    digest = query.get("digest")
    algorithm = query.get("digest-algorithm", "sha256")
    if digest is not None:
        algorithm = parse_digest(digest).algorithm
    session = await registry.uploads.start(name, algorithm, access.subject)
    if digest is not None and has_body(request):
        # Single-POST monolithic upload (spec: end-4b).
        info = await registry.uploads.finish(
            name, session.id, digest, body_blocks(request), None, request.content_length
        )
        return _created(request, name, info)
    headers = _headers(request, name, session)
    headers["Content-Length"] = "0"
    return web.Response(status=202, headers=headers)


def _headers(request: web.Request, name: str, session: UploadSession) -> dict[str, str]:
    return _session_headers(request, name, session.id, session.offset)


async def upload_status(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    session = await registry_of(request).uploads.get(name, request.match_info["upload_id"])
    return web.Response(status=204, headers=_headers(request, name, session))


async def patch_upload(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    upload_id = request.match_info["upload_id"]
    start, length = content_range(request)
    session = await _in_order(
        request,
        name,
        upload_id,
        start,
        lambda: registry_of(request).uploads.write(
            name, upload_id, body_blocks(request), start, length
        ),
    )
    headers = _headers(request, name, session)
    headers["Content-Length"] = "0"
    return web.Response(status=202, headers=headers)


async def put_upload(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    upload_id = request.match_info["upload_id"]
    digest = request.query.get("digest")
    if not digest:
        raise DigestInvalid("the closing PUT needs ?digest=")
    blocks = None
    start = length = None
    if has_body(request):
        start, length = content_range(request)
        blocks = body_blocks(request)
    info = await _in_order(
        request,
        name,
        upload_id,
        start,
        lambda: registry_of(request).uploads.finish(name, upload_id, digest, blocks, start, length),
    )
    return _created(request, name, info)


async def cancel_upload(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    await registry_of(request).uploads.cancel(name, request.match_info["upload_id"])
    return web.Response(status=204)
