"""Manifests, what they reference, tags and referrers of one tenant's repositories.

Every statement is keyed by a repository id that `Tenants.repo_id` resolved for the tenant, or
by the tenant's id itself.
"""

from __future__ import annotations

import json
import time
from typing import Any

from dockyard.core.sql import Database, Transaction

from .records import ManifestRecord, NewManifest, Referrer, Tenant


class Manifests:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(
        self, tx: Transaction, tenant: Tenant, repo_id: int, m: NewManifest, tags: list[str]
    ) -> None:
        now = time.time()
        # A re-push refreshes created_at: GC's age for untagged manifests starts again.
        await tx.execute(
            "INSERT INTO manifests (repo_id, customer_id, digest, media_type, size, payload, "
            "artifact_type, subject, annotations, created_at) VALUES (?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (repo_id, digest) DO UPDATE SET created_at = excluded.created_at",
            (
                repo_id,
                tenant.id,
                m.digest,
                m.media_type,
                len(m.payload),
                m.payload,
                m.artifact_type,
                m.subject,
                json.dumps(m.annotations) if m.annotations else None,
                now,
            ),
        )
        await tx.executemany(
            "INSERT INTO manifest_refs (repo_id, manifest, ref, kind) VALUES (?,?,?,?) "
            "ON CONFLICT DO NOTHING",
            [(repo_id, m.digest, ref, kind) for ref, kind in m.refs],
        )
        # Children an index relies on are as fresh as the index for GC.
        await tx.executemany(
            "UPDATE manifests SET created_at = ? WHERE repo_id = ? AND digest = ?",
            [(now, repo_id, ref) for ref, kind in m.refs if kind == "manifest"],
        )
        await tx.executemany(
            "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (?,?,?,?) "
            "ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest, "
            "updated_at = excluded.updated_at",
            [(repo_id, tag, m.digest, now) for tag in tags],
        )
        await tx.execute(
            "UPDATE repositories SET pushed_at = ? WHERE id = ? AND customer_id = ?",
            (now, repo_id, tenant.id),
        )

    async def exists(self, repo_id: int, digest: str) -> bool:
        row = await self.db.fetchone(
            "SELECT 1 FROM manifests WHERE repo_id = ? AND digest = ?", (repo_id, digest)
        )
        return row is not None

    async def get(self, repo_id: int, reference: str, by_digest: bool) -> ManifestRecord | None:
        if by_digest:
            sql = (
                "SELECT digest, media_type, size, payload FROM manifests "
                "WHERE repo_id = ? AND digest = ?"
            )
        else:
            sql = (
                "SELECT m.digest, m.media_type, m.size, m.payload FROM tags t "
                "JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest "
                "WHERE t.repo_id = ? AND t.name = ?"
            )
        row = await self.db.fetchone(sql, (repo_id, reference))
        if row is None:
            return None
        return ManifestRecord(row[0], row[1], int(row[2]), bytes(row[3]))

    async def tag_digest(self, repo_id: int, tag: str) -> str | None:
        value = await self.db.fetchval(
            "SELECT digest FROM tags WHERE repo_id = ? AND name = ?", (repo_id, tag)
        )
        return None if value is None else str(value)

    async def delete_tag(self, tx: Transaction, repo_id: int, tag: str) -> str | None:
        """Remove a tag; return the digest it pointed to, or None if there was no such tag."""
        digest = await tx.fetchval(
            "SELECT digest FROM tags WHERE repo_id = ? AND name = ?", (repo_id, tag)
        )
        if digest is None:
            return None
        await tx.execute("DELETE FROM tags WHERE repo_id = ? AND name = ?", (repo_id, tag))
        return str(digest)

    async def delete(self, tx: Transaction, repo_id: int, digest: str) -> tuple[str, int] | None:
        """Remove a manifest and every tag on it; return (media type, size) or None."""
        row = await tx.fetchone(
            "SELECT media_type, size FROM manifests WHERE repo_id = ? AND digest = ?",
            (repo_id, digest),
        )
        if row is None:
            return None
        await tx.execute("DELETE FROM tags WHERE repo_id = ? AND digest = ?", (repo_id, digest))
        await tx.execute(
            "DELETE FROM manifest_refs WHERE repo_id = ? AND manifest = ?", (repo_id, digest)
        )
        await tx.execute(
            "DELETE FROM manifests WHERE repo_id = ? AND digest = ?", (repo_id, digest)
        )
        await tx.execute(
            "DELETE FROM repo_blobs WHERE repo_id = ? AND digest = ?", (repo_id, digest)
        )
        return str(row[0]), int(row[1])

    async def tags(self, repo_id: int, n: int | None, last: str | None) -> list[str]:
        sql = "SELECT name FROM tags WHERE repo_id = ?"
        args: list[Any] = [repo_id]
        if last is not None:
            sql += " AND name > ?"
            args.append(last)
        sql += " ORDER BY name"
        if n is not None:
            sql += " LIMIT ?"
            args.append(n)
        return [r[0] for r in await self.db.fetchall(sql, args)]

    async def referrers(self, repo_id: int, subject: str) -> list[Referrer]:
        rows = await self.db.fetchall(
            "SELECT media_type, size, digest, artifact_type, annotations FROM manifests "
            "WHERE repo_id = ? AND subject = ? ORDER BY created_at, digest",
            (repo_id, subject),
        )
        return [
            Referrer(r[0], int(r[1]), r[2], r[3], json.loads(r[4]) if r[4] else None)
            for r in rows
        ]
