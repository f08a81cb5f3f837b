"""Which blobs a customer holds and which of its repositories link them; the global index.

Tenant-scoped (`BlobLinks`): every query is keyed by the tenant's id, so nothing a customer does
can read or change another customer's rows. `BlobIndex` is global by design: one stored object
per digest for everyone, consulted only after a tenant-scoped query said the caller may see the
digest (or after the bytes arrived and were verified).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from dockyard.core.sql import Database, Transaction

from .records import QuotaExceeded, Tenant


@dataclass(frozen=True)
class Link:
    """A blob as linked into one repository: its size and when the link was last relied on."""

    repository: str
    size: int
    linked_at: float


def _marks(n: int) -> str:
    return ",".join("?" * n)


class BlobLinks:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def in_repo(
        self, tenant: Tenant, repo_id: int, digest: str
    ) -> Link | Literal[False] | None:
        """The live link of `digest` in the repository; False for a tombstone (deleted from
        this repository explicitly); None when it was never linked."""
        row = await self.db.fetchone(
            "SELECT rb.deleted, hb.size, rb.linked_at FROM repo_blobs rb "
            "JOIN held_blobs hb ON hb.customer_id = rb.customer_id AND hb.digest = rb.digest "
            "WHERE rb.customer_id = ? AND rb.repo_id = ? AND rb.digest = ?",
            (tenant.id, repo_id, digest),
        )
        if row is None:
            return None
        if row[0]:
            return False
        return Link("", int(row[1]), float(row[2]))

    async def holders(self, tenant: Tenant, digest: str) -> list[Link]:
        """Repositories of the tenant with a live link of `digest`, by name."""
        rows = await self.db.fetchall(
            "SELECT r.name, hb.size, rb.linked_at FROM repo_blobs rb "
            "JOIN repositories r ON r.id = rb.repo_id "
            "JOIN held_blobs hb ON hb.customer_id = rb.customer_id AND hb.digest = rb.digest "
            "WHERE rb.customer_id = ? AND rb.digest = ? AND rb.deleted = 0 ORDER BY r.name",
            (tenant.id, digest),
        )
        return [Link(r[0], int(r[1]), float(r[2])) for r in rows]

    async def touch(self, tenant: Tenant, repository: str, digest: str) -> None:
        """Refresh a link the registry just relied on, so GC's grace period covers the push."""
        await self.db.execute(
            "UPDATE repo_blobs SET linked_at = ? WHERE customer_id = ? AND digest = ? "
            "AND repo_id = (SELECT id FROM repositories WHERE customer_id = ? AND name = ?)",
            (time.time(), tenant.id, digest, tenant.id, repository),
        )

    async def check_quota(
        self, tx: Transaction, tenant: Tenant, quota: int | None, new: Iterable[tuple[str, int]]
    ) -> None:
        """Inside the write transaction: refuse blobs that would take the tenant past quota."""
        wanted = dict(new)
        if quota is None or not wanted:
            return
        # Concurrent pushes of one customer must not both pass the check on PostgreSQL.
        await tx.lock(f"quota:{tenant.id}")
        rows = await tx.fetchall(
            f"SELECT digest FROM held_blobs WHERE customer_id = ? "
            f"AND digest IN ({_marks(len(wanted))})",
            (tenant.id, *wanted),
        )
        held = {r[0] for r in rows}
        added = sum(size for digest, size in wanted.items() if digest not in held)
        if not added:
            return
        used = int(
            await tx.fetchval(
                "SELECT COALESCE(SUM(size), 0) FROM held_blobs WHERE customer_id = ?",
                (tenant.id,),
            )
        )
        if used + added > quota:
            raise QuotaExceeded(quota, used, added)

    async def link(
        self, tx: Transaction, tenant: Tenant, repo_id: int, blobs: Iterable[tuple[str, int]]
    ) -> None:
        """Link blobs into a repository (reviving a tombstone): two statements in all."""
        now = time.time()
        batch = list(blobs)
        await tx.executemany(
            "INSERT INTO held_blobs (customer_id, digest, size, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (customer_id, digest) DO NOTHING",
            [(tenant.id, digest, size, now) for digest, size in batch],
        )
        await tx.executemany(
            "INSERT INTO repo_blobs (repo_id, customer_id, digest, linked_at, deleted) "
            "VALUES (?, ?, ?, ?, 0) ON CONFLICT (repo_id, digest) DO UPDATE SET "
            "deleted = 0, linked_at = excluded.linked_at",
            [(repo_id, tenant.id, digest, now) for digest, _ in batch],
        )

    async def tombstone(self, tx: Transaction, tenant: Tenant, repo_id: int, digest: str) -> None:
        """Mark `digest` deleted from the repository: it answers 404 there from now on."""
        await tx.execute(
            "INSERT INTO repo_blobs (repo_id, customer_id, digest, linked_at, deleted) "
            "VALUES (?, ?, ?, ?, 1) ON CONFLICT (repo_id, digest) DO UPDATE SET deleted = 1, "
            "linked_at = excluded.linked_at",
            (repo_id, tenant.id, digest, time.time()),
        )

    async def held(self, tenant: Tenant) -> dict[str, int]:
        rows = await self.db.fetchall(
            "SELECT digest, size FROM held_blobs WHERE customer_id = ?", (tenant.id,)
        )
        return {r[0]: int(r[1]) for r in rows}


class BlobIndex:
    """digest → stored object key, one row per stored object, for every customer."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def lookup(self, digest: str) -> tuple[str, int] | None:
        row = await self.db.fetchone("SELECT key, size FROM blob_index WHERE digest = ?", (digest,))
        return (row[0], int(row[1])) if row else None

    async def add(self, digest: str, key: str, size: int) -> str:
        """Record `key` for `digest` unless one is recorded; return the key that holds it.

        One upsert makes concurrent commits of a digest race-free without a lock: the first
        recorded object wins, later copies are dropped by the caller.
        """
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO blob_index (digest, key, size, used_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET used_at = excluded.used_at",
                (digest, key, size, time.time()),
            )
            kept = await tx.fetchval("SELECT key FROM blob_index WHERE digest = ?", (digest,))
        return str(kept)

    async def touch(self, digest: str) -> str | None:
        """Mark a recorded digest as in use now; return its key, or None if unknown."""
        async with self.db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE blob_index SET used_at = ? WHERE digest = ?", (time.time(), digest)
            )
            if not changed:
                return None
            key = await tx.fetchval("SELECT key FROM blob_index WHERE digest = ?", (digest,))
        return None if key is None else str(key)

    async def has_key(self, key: str) -> bool:
        return await self.db.fetchone("SELECT 1 FROM blob_index WHERE key = ?", (key,)) is not None

    async def keys(self) -> set[str]:
        return {r[0] for r in await self.db.fetchall("SELECT key FROM blob_index")}
