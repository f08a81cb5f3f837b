"""Storage accounting per tenant: what it holds, what its repositories link, what it shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dockyard.core.sql import Database

from .records import Tenant


@dataclass(frozen=True)
class Usage:
    logical_bytes: int  # blobs the tenant holds, each counted once (what its quota counts)
    blobs: int
    repo_bytes: int  # the same summed per repository: what storing per repository would cost
    repositories: int
    manifests: int
    tags: int
    shared_bytes: int  # of logical_bytes, what other tenants hold too (stored once for all)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class UsageQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def of(self, tenant: Tenant) -> Usage:
        t = (tenant.id,)
        one = self.db.fetchval
        return Usage(
            logical_bytes=int(
                await one("SELECT COALESCE(SUM(size), 0) FROM held_blobs WHERE customer_id = ?", t)
            ),
            blobs=int(await one("SELECT COUNT(*) FROM held_blobs WHERE customer_id = ?", t)),
            repo_bytes=int(
                await one(
                    "SELECT COALESCE(SUM(hb.size), 0) FROM repo_blobs rb JOIN held_blobs hb "
                    "ON hb.customer_id = rb.customer_id AND hb.digest = rb.digest "
                    "WHERE rb.customer_id = ? AND rb.deleted = 0",
                    t,
                )
            ),
            repositories=int(
                await one("SELECT COUNT(*) FROM repositories WHERE customer_id = ?", t)
            ),
            manifests=int(await one("SELECT COUNT(*) FROM manifests WHERE customer_id = ?", t)),
            tags=int(
                await one(
                    "SELECT COUNT(*) FROM tags t JOIN repositories r ON r.id = t.repo_id "
                    "WHERE r.customer_id = ?",
                    t,
                )
            ),
            # Accounting for the operator: the figure never reaches another tenant.
            shared_bytes=int(
                await one(
                    "SELECT COALESCE(SUM(h.size), 0) FROM held_blobs h WHERE h.customer_id = ? "
                    "AND EXISTS (SELECT 1 FROM held_blobs o WHERE o.digest = h.digest "
                    "AND o.customer_id <> h.customer_id)",
                    t,
                )
            ),
        )
