"""The queries of garbage collection (registry/gc.py says why each delete re-checks its
condition): a tenant's manifest graph and sweeps, then the global index."""

from __future__ import annotations

from dataclasses import dataclass, field

from dockyard.core.sql import Database

from .records import Tenant

Node = tuple[int, str]  # (repository id, manifest digest)


@dataclass
class Graph:
    manifests: dict[Node, tuple[str, float]] = field(default_factory=dict)  # → (repo, created)
    tagged: set[Node] = field(default_factory=set)
    children: dict[Node, list[Node]] = field(default_factory=dict)
    referrers: dict[Node, list[Node]] = field(default_factory=dict)  # subject → its referrers


@dataclass
class Swept:
    manifests: int
    links: int
    released: dict[str, int]  # digests the tenant no longer holds → size


class GcQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def graph(self, tenant: Tenant) -> Graph:
        g = Graph()
        for repo_id, digest, repo, created in await self.db.fetchall(
            "SELECT m.repo_id, m.digest, r.name, m.created_at FROM manifests m "
            "JOIN repositories r ON r.id = m.repo_id WHERE m.customer_id = ?",
            (tenant.id,),
        ):
            g.manifests[(int(repo_id), digest)] = (repo, float(created))
        for repo_id, digest in await self.db.fetchall(
            "SELECT t.repo_id, t.digest FROM tags t JOIN repositories r ON r.id = t.repo_id "
            "WHERE r.customer_id = ?",
            (tenant.id,),
        ):
            g.tagged.add((int(repo_id), digest))
        for repo_id, manifest, ref, kind in await self.db.fetchall(
            "SELECT mr.repo_id, mr.manifest, mr.ref, mr.kind FROM manifest_refs mr "
            "JOIN repositories r ON r.id = mr.repo_id WHERE r.customer_id = ? "
            "AND mr.kind <> 'blob'",
            (tenant.id,),
        ):
            node = (int(repo_id), manifest)
            if kind == "manifest":
                g.children.setdefault(node, []).append((int(repo_id), ref))
            else:
                g.referrers.setdefault((int(repo_id), ref), []).append(node)
        return g

    async def sweep(
        self,
        tenant: Tenant,
        doomed: set[Node],
        cutoff: float,
        untagged_cutoff: float,
        dry_run: bool,
    ) -> Swept:
        """Delete unreachable manifests, then links no manifest references, then blobs no
        repository links. One transaction; a dry run rolls it back, so it reports exactly what
        a run would do. Every DELETE re-checks its condition, so what a concurrent push relies
        on stays."""

        class DryRun(Exception):
            pass

        result = Swept(0, 0, {})
        try:
            async with self.db.transaction() as tx:
                pending = set(doomed)
                while pending:  # parents before children: repeat until a pass deletes nothing
                    deleted = set()
                    for repo_id, digest in pending:
                        n = await tx.execute(
                            "DELETE FROM manifests WHERE customer_id = ? AND repo_id = ? "
                            "AND digest = ? AND created_at < ? "
                            "AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = ? "
                            "AND t.digest = ?) AND NOT EXISTS (SELECT 1 FROM manifest_refs mr "
                            "WHERE mr.repo_id = ? AND mr.ref = ? AND mr.kind = 'manifest')",
                            (tenant.id, repo_id, digest, untagged_cutoff, repo_id, digest,
                             repo_id, digest),
                        )
                        if n:
                            await tx.execute(
                                "DELETE FROM manifest_refs WHERE repo_id = ? AND manifest = ?",
                                (repo_id, digest),
                            )
                            deleted.add((repo_id, digest))
                    if not deleted:
                        break
                    result.manifests += len(deleted)
                    pending -= deleted
                result.links = await tx.execute(
                    "DELETE FROM repo_blobs WHERE customer_id = ? AND deleted = 0 "
                    "AND linked_at < ? AND NOT EXISTS (SELECT 1 FROM manifest_refs mr "
                    "WHERE mr.repo_id = repo_blobs.repo_id AND mr.ref = repo_blobs.digest) "
                    "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = "
                    "repo_blobs.repo_id AND m.digest = repo_blobs.digest)",
                    (tenant.id, cutoff),
                )
                released = await tx.fetchall(
                    "SELECT digest, size FROM held_blobs WHERE customer_id = ? "
                    "AND created_at < ? AND NOT EXISTS (SELECT 1 FROM repo_blobs rb "
                    "WHERE rb.customer_id = held_blobs.customer_id "
                    "AND rb.digest = held_blobs.digest AND rb.deleted = 0)",
                    (tenant.id, cutoff),
                )
                for digest, size in released:
                    n = await tx.execute(
                        "DELETE FROM held_blobs WHERE customer_id = ? AND digest = ? "
                        "AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.customer_id = ? "
                        "AND rb.digest = ? AND rb.deleted = 0)",
                        (tenant.id, digest, tenant.id, digest),
                    )
                    if n:
                        result.released[digest] = int(size)
                # A tombstone only matters while the tenant holds the blob somewhere.
                await tx.execute(
                    "DELETE FROM repo_blobs WHERE customer_id = ? AND deleted = 1 "
                    "AND NOT EXISTS (SELECT 1 FROM held_blobs hb WHERE hb.customer_id = ? "
                    "AND hb.digest = repo_blobs.digest)",
                    (tenant.id, tenant.id),
                )
                if dry_run:
                    raise DryRun
        except DryRun:
            pass
        return result

    async def unheld_index_rows(self, cutoff: float) -> list[tuple[str, str, int]]:
        """(digest, key, size) of index rows no tenant holds and nothing used since cutoff."""
        rows = await self.db.fetchall(
            "SELECT digest, key, size FROM blob_index WHERE used_at < ? AND NOT EXISTS "
            "(SELECT 1 FROM held_blobs hb WHERE hb.digest = blob_index.digest)",
            (cutoff,),
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def remove_index_row(self, digest: str, cutoff: float) -> str | None:
        """Delete the row when still unheld and unused since `cutoff`; return the freed key."""
        async with self.db.transaction() as tx:
            key = await tx.fetchval(
                "SELECT key FROM blob_index WHERE digest = ? AND used_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM held_blobs hb WHERE hb.digest = blob_index.digest)",
                (digest, cutoff),
            )
            if key is None:
                return None
            await tx.execute("DELETE FROM blob_index WHERE digest = ?", (digest,))
        return str(key)

    async def holders(self, digest: str) -> set[int]:
        """The tenants holding `digest` (a dry run's view of the index sweep)."""
        rows = await self.db.fetchall(
            "SELECT customer_id FROM held_blobs WHERE digest = ?", (digest,)
        )
        return {int(r[0]) for r in rows}

    async def index_row(self, digest: str) -> tuple[str, int, float] | None:
        row = await self.db.fetchone(
            "SELECT key, size, used_at FROM blob_index WHERE digest = ?", (digest,)
        )
        return (row[0], int(row[1]), float(row[2])) if row else None

    async def upload_ids(self) -> set[str]:
        return {r[0] for r in await self.db.fetchall("SELECT id FROM uploads")}
