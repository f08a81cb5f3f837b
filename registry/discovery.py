"""Listing: tags of a repository, the catalog, and referrers of a manifest."""

from __future__ import annotations

import json

from dockyard.core.errors import NameUnknown
from dockyard.core.oci import customer_of, parse_digest

from .access import Access
from .config import RegistrySettings
from .metadata import Metadata, Referrer

CATALOG_BATCH = 500
TAGS_CACHE_SIZE = 1024


class Discovery:
    def __init__(self, settings: RegistrySettings, meta: Metadata) -> None:
        self.settings = settings
        self.meta = meta
        self._tags_cache: dict[str, tuple[object, bytes]] = {}

    async def _repo_id(self, name: str) -> int:
        tenant = await self.meta.tenants.find(customer_of(name, self.settings.default_customer))
        repo_id = await self.meta.tenants.repo_id(tenant, name) if tenant else None
        if repo_id is None:
            raise NameUnknown("repository name not known to registry", detail={"name": name})
        return repo_id

    async def tags(self, name: str, n: int | None, last: str | None) -> list[str]:
        return await self.meta.manifests.tags(await self._repo_id(name), n, last)

    async def tags_document(self, name: str) -> bytes:
        """The whole tag list as JSON, cached until anything commits (where the engine can
        tell cheaply: SQLite's data_version; PostgreSQL answers every time)."""
        repo_id = await self._repo_id(name)
        version = self.meta.db.change_token()
        cached = self._tags_cache.get(name)
        if cached is not None and version is not None and cached[0] == version:
            return cached[1]
        tags = await self.meta.manifests.tags(repo_id, None, None)
        body = json.dumps({"name": name, "tags": tags}).encode()
        if version is not None:
            if len(self._tags_cache) >= TAGS_CACHE_SIZE:
                self._tags_cache.pop(next(iter(self._tags_cache)))
            self._tags_cache[name] = (version, body)
        return body

    async def referrers(self, name: str, digest: str, artifact_type: str | None) -> list[Referrer]:
        parse_digest(digest)
        tenant = await self.meta.tenants.find(customer_of(name, self.settings.default_customer))
        repo_id = await self.meta.tenants.repo_id(tenant, name) if tenant else None
        if repo_id is None:
            return []
        found = await self.meta.manifests.referrers(repo_id, digest)
        if artifact_type:
            found = [r for r in found if r.artifact_type == artifact_type]
        return found

    async def catalog(self, n: int | None, last: str | None, access: Access) -> list[str]:
        """Repository names after `last` that the caller may pull, at most `n`."""
        out: list[str] = []
        after = last
        while n is None or len(out) < n:
            page = await self.meta.catalog.page(after, CATALOG_BATCH)
            for repo in page:
                if await access.can(repo, "pull"):
                    out.append(repo)
                    if n is not None and len(out) >= n:
                        break
            if len(page) < CATALOG_BATCH:
                break
            after = page[-1]
        return out
