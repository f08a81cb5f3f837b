"""Tags, catalog and referrers. spec: end-8a/8b, end-12a/12b, and /v2/_catalog."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from dockyard.core.oci import OCI_INDEX

from .. import routes
from ..access import access_of
from ..metadata import Referrer
from .base import next_link, page_params, registry_of, repo_name


async def list_tags(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    n, last = page_params(request)
    if n == 0:
        # spec: when n is zero, an empty list and no Link header.
        tags: list[str] = []
        await registry_of(request).discovery.tags(name, 0, last)
        return web.json_response({"name": name, "tags": tags})
    if n is None and last is None:
        body = await registry_of(request).discovery.tags_document(name)
        return web.Response(body=body, content_type="application/json")
    # Ask for one more than a page to know whether a next page exists.
    tags = await registry_of(request).discovery.tags(name, n + 1 if n else None, last)
    more = n is not None and len(tags) > n
    tags = tags[:n] if n else tags
    headers = next_link(routes.url(request, routes.TAGS, name=name), n, tags) if more else {}
    return web.json_response({"name": name, "tags": tags}, headers=headers)


async def catalog(request: web.Request) -> web.StreamResponse:
    n, last = page_params(request)
    if n == 0:
        return web.json_response({"repositories": []})
    repos = await registry_of(request).discovery.catalog(
        n + 1 if n else None, last, access_of(request)
    )
    more = n is not None and len(repos) > n
    repos = repos[:n] if n else repos
    headers = next_link("/v2/_catalog", n, repos) if more else {}
    return web.json_response({"repositories": repos}, headers=headers)


async def referrers(request: web.Request) -> web.StreamResponse:
    name = repo_name(request)
    artifact_type = request.query.get("artifactType")
    found = await registry_of(request).discovery.referrers(
        name, request.match_info["digest"], artifact_type
    )
    headers = {"Content-Type": OCI_INDEX}
    if artifact_type:
        headers["OCI-Filters-Applied"] = "artifactType"
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [_descriptor(r) for r in found],
    }
    return web.Response(body=json.dumps(body).encode(), headers=headers)


def _descriptor(r: Referrer) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": r.media_type, "size": r.size, "digest": r.digest}
    if r.artifact_type:
        d["artifactType"] = r.artifact_type
    if r.annotations:
        d["annotations"] = r.annotations
    return d
