"""The registry's metadata: tenant-scoped stores over one state store (SQLite or PostgreSQL).

`Metadata` opens them all on a `dockyard.core.sql.Database` that the composition root owns.
Units of work that must be atomic (a manifest push with its links, tags and event) are composed
by the services in one `db.transaction()`.
"""

from __future__ import annotations

from dockyard.core.sql import Database

from .blobs import BlobIndex, BlobLinks, Link
from .catalog import Catalog
from .gc import GcQueries
from .manifests import Manifests
from .records import (
    ManifestRecord,
    NewManifest,
    QuotaExceeded,
    Referrer,
    Tenant,
    UploadRecord,
)
from .schema import STEPS
from .tenants import Tenants
from .uploads import Uploads
from .usage import Usage, UsageQueries


class Metadata:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.tenants = Tenants(db)
        self.links = BlobLinks(db)
        self.index = BlobIndex(db)
        self.manifests = Manifests(db)
        self.uploads = Uploads(db)
        self.catalog = Catalog(db)
        self.gc = GcQueries(db)
        self.usage = UsageQueries(db)

    async def open(self) -> Metadata:
        await self.db.migrate("registry", STEPS)
        return self


__all__ = [
    "BlobIndex",
    "Link",
    "ManifestRecord",
    "Metadata",
    "NewManifest",
    "QuotaExceeded",
    "Referrer",
    "Tenant",
    "UploadRecord",
    "Usage",
]
