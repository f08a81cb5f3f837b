"""/v2/<name>/manifests/<reference>: PUT, GET, HEAD, DELETE. spec: end-3, end-7a/7b, end-9."""

from __future__ import annotations

from aiohttp import web

from dockyard.core.errors import ManifestInvalid, ManifestUnknown
from dockyard.core.oci import OCI_MANIFEST

from .. import routes
from ..access import access_of
from .base import origin, registry_of, repo_name


async def _read_limited(request: web.Request, limit: int) -> bytes:
    too_big = ManifestInvalid(f"manifest exceeds the {limit} byte limit", status=413)
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    chunks: list[bytes] = []
    total = 0
    async for block in request.content.iter_chunked(1 << 16):
        total += len(block)
        if total > limit:
            raise too_big
        chunks.append(block)
    return b"".join(chunks)


async def put_manifest(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    registry = registry_of(request)
    payload = await _read_limited(request, registry.settings.max_manifest_bytes)
    pushed = await registry.manifests.put(
        name,
        request.match_info["reference"],
        payload,
        request.headers.get("Content-Type", ""),
        request.query.getall("tag", []),
        access_of(request),
        origin(request),
    )
    headers = {
        "Location": routes.url(
            request, routes.MANIFEST_GET, name=name, reference=pushed.digest
        ),
        "Docker-Content-Digest": pushed.digest,
        "Content-Length": "0",
    }
    resp = web.Response(status=201, headers=headers)
    if pushed.parsed.subject:
        # spec: "Pushing Manifests with Subject" — tells the client referrers are indexed.
        resp.headers["OCI-Subject"] = pushed.parsed.subject.digest
    if request.query.getall("tag", []):
        for tag in pushed.tags:
            resp.headers.add("OCI-Tag", tag)
    return resp


def _acceptable(request: web.Request, media_type: str) -> bool:
    accepted: set[str] = set()
    for value in request.headers.getall("Accept", []):
        for part in value.split(","):
            accepted.add(part.split(";")[0].strip().lower())
    accepted.discard("")
    if not accepted or accepted & {"*/*", "application/*", "application/json"}:
        return True
    return media_type in accepted


async def get_manifest(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    reference = request.match_info["reference"]
    rec = await registry_of(request).manifests.get(name, reference)
    if not _acceptable(request, rec.media_type):
        # We never convert formats; a client that accepts none of ours gets nothing.
        raise ManifestUnknown(
            f"manifest is {rec.media_type}, which the Accept header does not include",
            detail={"reference": reference},
        )
    return web.Response(
        body=rec.payload,
        headers={
            "Content-Type": rec.media_type or OCI_MANIFEST,
            "Docker-Content-Digest": rec.digest,
            "ETag": f'"{rec.digest}"',
        },
    )


async def delete_manifest(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    await registry_of(request).manifests.delete(
        name, request.match_info["reference"], origin(request)
    )
    return web.Response(status=202)
