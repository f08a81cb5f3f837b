"""The registry's domain services, composed once: what the HTTP handlers stand on.

Each service owns one concern (blobs.py, uploads.py, manifests.py, discovery.py) and raises the
shared error types; none formats a response.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blobs import Blobs
from .config import GcSettings, RegistrySettings
from .discovery import Discovery
from .manifests import ManifestService
from .metadata import Metadata
from .quotas import Quotas
from .storage import BlobStore
from .uploads import UploadService


@dataclass
class Registry:
    settings: RegistrySettings
    gc: GcSettings
    store: BlobStore
    meta: Metadata
    quotas: Quotas
    blobs: Blobs
    uploads: UploadService
    manifests: ManifestService
    discovery: Discovery

    @classmethod
    def build(
        cls,
        settings: RegistrySettings,
        gc: GcSettings,
        store: BlobStore,
        meta: Metadata,
        *,
        quotas: dict[str, int] | None = None,
        public_url: str | None = None,
    ) -> Registry:
        q = Quotas(meta, quotas or {})
        blobs = Blobs(settings, gc, store, meta, q)
        return cls(
            settings=settings,
            gc=gc,
            store=store,
            meta=meta,
            quotas=q,
            blobs=blobs,
            uploads=UploadService(settings, store, meta, blobs, q),
            manifests=ManifestService(settings, store, meta, blobs, q, public_url=public_url),
            discovery=Discovery(settings, meta),
        )
