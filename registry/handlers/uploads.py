"""Blob uploads. spec: end-4a/4b/4c (POST), end-5 (PATCH), end-6 (PUT), end-11 (mount),
end-13 (GET status), end-14 (DELETE)."""

from __future__ import annotations

from aiohttp import web

from dockyard.core.errors import DigestInvalid
from dockyard.core.oci import check_name, parse_digest

from ..access import access_of
from ..metadata import UploadRecord
from ..service import BlobInfo, upload_location, upload_range
from .base import body_blocks, content_range, has_body, registry_of, repo_name


def _session_headers(name: str, rec: UploadRecord, min_chunk: int) -> dict[str, str]:
    headers = {
        "Location": upload_location(name, rec.id),
        "Range": upload_range(rec.offset),
        "Docker-Upload-UUID": rec.id,
        # spec: end-4a — advertised always; 0 means any chunk size is taken without buffering.
        "OCI-Chunk-Min-Length": str(min_chunk),
    }
    return headers


def _created(name: str, info: BlobInfo) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/blobs/{info.digest}",
            "Docker-Content-Digest": info.digest,
            "Content-Length": "0",
        },
    )


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
            except Exception:
                from_name = None  # a bad `from` is ignored like a missing one
        info = await registry.mount_blob(name, mount, from_name, access)
        if info is not None:
            return _created(name, info)
        # spec: a registry unable to mount SHOULD answer 202 and start an upload session.

    digest = query.get("digest")
    algorithm = query.get("digest-algorithm", "sha256")
    if digest is not None:
        algorithm = parse_digest(digest).algorithm
    rec = await registry.start_upload(name, algorithm, access.subject)
    if digest is not None and has_body(request):
        # Single-POST monolithic upload (spec: end-4b).
        info = await registry.finish_upload(
            name, rec.id, digest, body_blocks(request), None, request.content_length
        )
        return _created(name, info)
    headers = _session_headers(name, rec, registry.store.chunk_min_length)
    headers["Content-Length"] = "0"
    return web.Response(status=202, headers=headers)


async def upload_status(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    registry = registry_of(request)
    rec = await registry.get_upload(name, request.match_info["upload_id"])
    headers = _session_headers(name, rec, registry.store.chunk_min_length)
    return web.Response(status=204, headers=headers)


async def patch_upload(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    registry = registry_of(request)
    start, length = content_range(request)
    rec = await registry.write_upload(
        name, request.match_info["upload_id"], body_blocks(request), start, length
    )
    headers = _session_headers(name, rec, registry.store.chunk_min_length)
    headers["Content-Length"] = "0"
    return web.Response(status=202, headers=headers)


async def put_upload(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    digest = request.query.get("digest")
    if not digest:
        raise DigestInvalid("the closing PUT needs ?digest=")
    registry = registry_of(request)
    blocks = None
    start = length = None
    if has_body(request):
        start, length = content_range(request)
        blocks = body_blocks(request)
    info = await registry.finish_upload(
        name, request.match_info["upload_id"], digest, blocks, start, length
    )
    return _created(name, info)


async def cancel_upload(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    await registry_of(request).cancel_upload(name, request.match_info["upload_id"])
    return web.Response(status=204)
