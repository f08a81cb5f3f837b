"""Manifests: push (validated, linked, tagged and announced in one transaction), pull, delete.

A push commits the manifest, the links of the blobs it references, its tags and the event
that reports it in one transaction, so a webhook never announces a manifest that is not there,
and a manifest is never there without its event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from dockyard.core.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    Unsupported,
)
from dockyard.core.oci import check_tag, customer_of, digest_of, is_digest, parse_digest
from dockyard.core.sql import Transaction

from .access import Access
from .blobs import Blobs
from .config import RegistrySettings
from .events.model import RegistryEvent, RequestRecord
from .manifest_format import ParsedManifest, parse_manifest
from .metadata import ManifestRecord, Metadata, NewManifest, QuotaExceeded, Tenant
from .origin import Origin
from .quotas import Quotas
from .storage import BlobStore


class EventSink(Protocol):
    """Where a change's event is written, inside the change's own transaction."""

    async def add(self, tx: Transaction, event: RegistryEvent) -> str: ...

    def notify(self) -> None: ...


@dataclass(frozen=True)
class Change:
    """A manifest pushed or deleted, handed to listeners (logs, caches) after it committed."""

    action: str  # "push" | "delete"
    customer: str
    repository: str
    digest: str
    media_type: str
    size: int
    tag: str | None
    origin: Origin


Listener = Callable[[Change], Awaitable[None]]


@dataclass
class PushedManifest:
    digest: str
    parsed: ParsedManifest
    tags: list[str] = field(default_factory=list)


class ManifestService:
    def __init__(
        self,
        settings: RegistrySettings,
        store: BlobStore,
        meta: Metadata,
        blobs: Blobs,
        quotas: Quotas,
        *,
        public_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.meta = meta
        self.blobs = blobs
        self.quotas = quotas
        self.public_url = public_url.rstrip("/") if public_url else None
        self.events: EventSink | None = None
        self.listeners: list[Listener] = []

    def customer(self, name: str) -> str:
        return customer_of(name, self.settings.default_customer)

    def _event(self, change: Change) -> RegistryEvent:
        o = change.origin
        # Without a configured public URL the event names the host the client used (README).
        base = self.public_url or (f"http://{o.host}" if o.host else "")
        return RegistryEvent(
            action=change.action,
            customer=change.customer,
            repository=change.repository,
            digest=change.digest,
            media_type=change.media_type,
            size=change.size,
            tag=change.tag,
            url=f"{base}/v2/{change.repository}/manifests/{change.digest}",
            request=RequestRecord(o.request_id, o.addr, o.host, o.method, o.useragent),
            actor=o.subject,
        )

    async def _announce(self, tx: Transaction, changes: list[Change]) -> None:
        if self.events is not None:
            for change in changes:
                await self.events.add(tx, self._event(change))

    async def _after_commit(self, changes: list[Change]) -> None:
        if self.events is not None:
            self.events.notify()
        for change in changes:
            for listener in self.listeners:
                await listener(change)

    async def put(
        self,
        name: str,
        reference: str,
        payload: bytes,
        content_type: str,
        extra_tags: list[str],
        access: Access,
        origin: Origin,
    ) -> PushedManifest:
        if is_digest(reference):
            claimed = parse_digest(reference)
            digest = str(digest_of(payload, claimed.algorithm))
            if digest != reference:
                raise DigestInvalid(
                    "manifest digest does not match the reference", detail={"digest": reference}
                )
            tags: list[str] = []
        else:
            digest = str(digest_of(payload))
            tags = [check_tag(reference)]
        tags += [check_tag(t) for t in extra_tags if t not in tags]
        parsed = parse_manifest(payload, content_type)
        tenant = await self.meta.tenants.ensure(self.customer(name))
        links = await self._present_blobs(name, parsed, access)
        repo_id = await self.meta.tenants.repo_id(tenant, name)
        if not self.settings.sparse_manifests:
            for child in parsed.children:
                if repo_id is None or not await self.meta.manifests.exists(repo_id, child.digest):
                    raise ManifestBlobUnknown(
                        "index references a manifest unknown to registry",
                        detail={"digest": child.digest},
                    )
        refs = [(d.digest, "blob") for d in parsed.blobs]
        refs += [(c.digest, "manifest") for c in parsed.children]
        if parsed.subject:
            refs.append((parsed.subject.digest, "subject"))
        await self._store_payload(tenant, name, digest, payload)
        new = NewManifest(
            digest=digest,
            media_type=parsed.media_type,
            payload=payload,
            artifact_type=parsed.artifact_type,
            subject=parsed.subject.digest if parsed.subject else None,
            annotations=parsed.annotations,
            refs=refs,
            blobs=links,
        )
        changes = [
            Change("push", tenant.name, name, digest, parsed.media_type, len(payload), tag, origin)
            for tag in ([*tags] if tags else [None])
        ]
        linked = [*links, (digest, len(payload))]
        quota = await self.quotas.of(tenant)
        try:
            async with self.meta.db.transaction() as tx:
                await self.meta.links.check_quota(tx, tenant, quota, linked)
                repo = await self.meta.tenants.ensure_repo(tx, tenant, name)
                await self.meta.links.link(tx, tenant, repo, linked)
                await self.meta.manifests.put(tx, tenant, repo, new, tags)
                await self._announce(tx, changes)
        except QuotaExceeded as exc:
            raise self.quotas.denied(exc, tenant) from None
        await self._after_commit(changes)
        return PushedManifest(digest, parsed, tags)

    async def _present_blobs(
        self, name: str, parsed: ParsedManifest, access: Access
    ) -> list[tuple[str, int]]:
        """The referenced blobs this caller may link, with their sizes. A missing one refuses
        the push — unless it is a foreign layer, or sparse manifests are on: then it stays
        missing (not linked, not held, not readable; never another customer's copy)."""
        links: list[tuple[str, int]] = []
        for desc in parsed.blobs:
            info = await self.blobs.find(name, desc.digest, access)
            if info is None:
                if desc.foreign or self.settings.sparse_manifests:
                    continue
                raise ManifestBlobUnknown(
                    "manifest references a blob unknown to registry",
                    detail={"digest": desc.digest},
                )
            if info.size != desc.size:
                raise ManifestInvalid(
                    f"descriptor size {desc.size} of {desc.digest} does not match the blob "
                    f"size {info.size}"
                )
            links.append((desc.digest, info.size))
        return links

    async def _store_payload(self, tenant: Tenant, name: str, digest: str, payload: bytes) -> None:
        """Keep the manifest's bytes as a blob too. Whether to write them depends only on this
        customer's holdings, never on another's (the work done must not reveal them)."""
        holders = await self.meta.links.holders(tenant, digest)
        if holders and await self.meta.index.touch(digest) is not None:
            return
        key = await self.store.put_blob(digest, payload)
        await self.blobs.keep_one(digest, key, len(payload))

    async def get(self, name: str, reference: str) -> ManifestRecord:
        by_digest = is_digest(reference)
        if by_digest:
            parse_digest(reference)
        else:
            check_tag(reference)
        rec = None
        tenant = await self.meta.tenants.find(self.customer(name))
        repo_id = await self.meta.tenants.repo_id(tenant, name) if tenant else None
        if repo_id is not None:
            rec = await self.meta.manifests.get(repo_id, reference, by_digest)
        if rec is None:
            raise ManifestUnknown("manifest unknown to registry", detail={"reference": reference})
        return rec

    async def delete(self, name: str, reference: str, origin: Origin) -> None:
        if not self.settings.delete_enabled:
            raise Unsupported("deletion is disabled")
        by_digest = is_digest(reference)
        if by_digest:
            parse_digest(reference)
        else:
            check_tag(reference)
        tenant = await self.meta.tenants.find(self.customer(name))
        repo_id = await self.meta.tenants.repo_id(tenant, name) if tenant else None
        if tenant is None or repo_id is None:
            raise ManifestUnknown("manifest unknown to registry", detail={"reference": reference})
        async with self.meta.db.transaction() as tx:
            if by_digest:
                deleted = await self.meta.manifests.delete(tx, repo_id, reference)
                if deleted is None:
                    raise ManifestUnknown(
                        "manifest unknown to registry", detail={"digest": reference}
                    )
                media_type, size = deleted
                change = Change(
                    "delete", tenant.name, name, reference, media_type, size, None, origin
                )
            else:
                digest = await self.meta.manifests.delete_tag(tx, repo_id, reference)
                if digest is None:
                    raise ManifestUnknown("tag unknown to registry", detail={"tag": reference})
                change = Change("delete", tenant.name, name, digest, "", 0, reference, origin)
            await self._announce(tx, [change])
        await self._after_commit([change])

