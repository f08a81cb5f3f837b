"""One customer's metadata database: repositories, blobs held, manifests, tags, uploads."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiosqlite


@dataclass(frozen=True)
class ManifestRecord:
    digest: str
    media_type: str
    size: int
    payload: bytes


@dataclass(frozen=True)
class UploadRecord:
    id: str
    repository: str
    algorithm: str
    offset: int
    driver: dict[str, Any]
    owner: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class NewManifest:
    digest: str
    media_type: str
    payload: bytes
    artifact_type: str | None
    subject: str | None
    annotations: dict[str, str] | None
    # (digest, kind) pairs: kind is 'blob', 'manifest' or 'subject'.
    refs: list[tuple[str, str]]
    # Blobs to link into the repository with their sizes (config and layers).
    blobs: list[tuple[str, int]]


class QuotaExceeded(Exception):
    def __init__(self, quota: int, used: int, added: int) -> None:
        super().__init__(f"quota {quota} bytes: {used} used, {added} more requested")
        self.quota, self.used, self.added = quota, used, added


class CustomerMeta:
    def __init__(
        self, name: str, db: aiosqlite.Connection, rdb: sqlite3.Connection | None = None
    ) -> None:
        self.name = name
        self.db = db
        # Reads go to a second, read-only connection used synchronously on the event loop: a
        # WAL reader never waits for writers, and a point query costs microseconds, far less
        # than a hop to aiosqlite's thread. Writes keep the async connection.
        self.rdb = rdb
        # One connection serves many coroutines: transactions must not interleave.
        self._write_lock = asyncio.Lock()
        self._repo_ids: dict[str, int] = {}

    async def close(self) -> None:
        await self.db.close()
        if self.rdb is not None:
            self.rdb.close()

    @asynccontextmanager
    async def tx(self, rollback: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("ROLLBACK" if rollback else "COMMIT")

    def data_version(self) -> int | None:
        """Changes whenever any connection commits to this database (None: no read connection).
        Lets callers cache derived answers across requests and worker processes."""
        if self.rdb is None:
            return None
        return self.rdb.execute("PRAGMA data_version").fetchone()[0]

    async def _one(self, sql: str, args: Iterable[Any] = ()) -> Any:
        if self.rdb is not None:
            return self.rdb.execute(sql, tuple(args)).fetchone()
        async with self.db.execute(sql, tuple(args)) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        if self.rdb is not None:
            return self.rdb.execute(sql, tuple(args)).fetchall()
        async with self.db.execute(sql, tuple(args)) as cur:
            return list(await cur.fetchall())

    # Repositories

    async def repo_id(self, name: str) -> int | None:
        cached = self._repo_ids.get(name)
        if cached is not None:
            return cached
        row = await self._one("SELECT id FROM repositories WHERE name=?", (name,))
        if row:
            self._repo_ids[name] = row[0]
            return row[0]
        return None

    async def ensure_repo(self, db: aiosqlite.Connection, name: str) -> int:
        """Inside a transaction: the id of `name`, creating the repository if needed."""
        row = await self._one("SELECT id FROM repositories WHERE name=?", (name,))
        if row:
            return row[0]
        cur = await db.execute(
            "INSERT INTO repositories(name, created_at) VALUES (?, ?)", (name, time.time())
        )
        return cur.lastrowid  # type: ignore[return-value]

    async def repositories(self) -> list[str]:
        rows = await self._all("SELECT name FROM repositories ORDER BY name")
        return [r[0] for r in rows]

    # Blobs

    async def repo_blob(self, repo: str, digest: str) -> tuple[int, float] | None:
        """(size, linked_at) of a blob linked into `repo`, or None."""
        row = await self._one(
            "SELECT b.size, rb.created_at FROM repo_blobs rb "
            "JOIN repositories r ON r.id = rb.repo_id "
            "JOIN blobs b ON b.digest = rb.digest WHERE r.name=? AND rb.digest=?",
            (repo, digest),
        )
        return (row[0], row[1]) if row else None

    async def repos_holding(self, digest: str) -> list[tuple[str, int, float]]:
        """Repositories of this customer that hold `digest`: (name, size, linked_at)."""
        rows = await self._all(
            "SELECT r.name, b.size, rb.created_at FROM repo_blobs rb "
            "JOIN repositories r ON r.id = rb.repo_id "
            "JOIN blobs b ON b.digest = rb.digest WHERE rb.digest=? ORDER BY r.name",
            (digest,),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def touch_link(self, repo: str, digest: str) -> None:
        """Refresh a link the registry just relied on, so GC's grace period covers the push."""
        repo_id = await self.repo_id(repo)
        if repo_id is None:
            return
        async with self.tx() as db:
            await db.execute(
                "UPDATE repo_blobs SET created_at=? WHERE repo_id=? AND digest=?",
                (time.time(), repo_id, digest),
            )

    # Quota and usage

    async def quota(self) -> int | None:
        row = await self._one("SELECT value FROM settings WHERE key='quota_bytes'")
        return int(row[0]) if row else None

    async def set_quota(self, quota: int | None) -> None:
        async with self.tx() as db:
            if quota is None:
                await db.execute("DELETE FROM settings WHERE key='quota_bytes'")
            else:
                await db.execute(
                    "INSERT INTO settings(key, value) VALUES ('quota_bytes', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(quota),),
                )

    async def check_quota(
        self, db: aiosqlite.Connection, quota: int | None, new: list[tuple[str, int]]
    ) -> None:
        """Inside the write transaction: refuse blobs that would take the customer past quota."""
        if quota is None or not new:
            return
        wanted = dict(new)
        marks = ",".join("?" * len(wanted))
        async with db.execute(
            f"SELECT digest FROM blobs WHERE digest IN ({marks})", tuple(wanted)
        ) as cur:
            held = {row[0] for row in await cur.fetchall()}
        added = sum(size for digest, size in wanted.items() if digest not in held)
        if not added:
            return
        async with db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs") as cur:
            row = await cur.fetchone()
        used = row[0] if row else 0
        if used + added > quota:
            raise QuotaExceeded(quota, used, added)

    async def usage(self) -> dict[str, int]:
        one = self._one
        return {
            "logical_bytes": (await one("SELECT COALESCE(SUM(size),0) FROM blobs"))[0],
            "blobs": (await one("SELECT COUNT(*) FROM blobs"))[0],
            "repo_bytes": (
                await one(
                    "SELECT COALESCE(SUM(b.size),0) FROM repo_blobs rb "
                    "JOIN blobs b ON b.digest = rb.digest"
                )
            )[0],
            "repositories": (await one("SELECT COUNT(*) FROM repositories"))[0],
            "manifests": (await one("SELECT COUNT(*) FROM manifests"))[0],
            "tags": (await one("SELECT COUNT(*) FROM tags"))[0],
        }

    async def held_blobs(self) -> dict[str, int]:
        return {r[0]: r[1] for r in await self._all("SELECT digest, size FROM blobs")}

    @staticmethod
    async def _link(
        db: aiosqlite.Connection, repo_id: int, blobs: list[tuple[str, int]]
    ) -> None:
        """Link blobs into a repository: two statements whatever their number (each statement
        is a round trip to the database thread)."""
        now = time.time()
        await db.executemany(
            "INSERT OR IGNORE INTO blobs(digest, size, created_at) VALUES (?, ?, ?)",
            [(digest, size, now) for digest, size in blobs],
        )
        await db.executemany(
            "INSERT OR IGNORE INTO repo_blobs(repo_id, digest, created_at) VALUES (?, ?, ?)",
            [(repo_id, digest, now) for digest, _ in blobs],
        )

    async def link_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        upload_id: str | None = None,
        quota: int | None = None,
    ) -> None:
        async with self.tx() as db:
            await self.check_quota(db, quota, [(digest, size)])
            repo_id = await self.ensure_repo(db, repo)
            await self._link(db, repo_id, [(digest, size)])
            if upload_id:
                await db.execute("DELETE FROM uploads WHERE id=?", (upload_id,))
        self._repo_ids.setdefault(repo, repo_id)

    async def unlink_blob(self, repo: str, digest: str) -> bool:
        repo_id = await self.repo_id(repo)
        if repo_id is None:
            return False
        async with self.tx() as db:
            cur = await db.execute(
                "DELETE FROM repo_blobs WHERE repo_id=? AND digest=?", (repo_id, digest)
            )
            return cur.rowcount > 0

    # Manifests and tags

    async def put_manifest(
        self, repo: str, m: NewManifest, tags: list[str], quota: int | None = None
    ) -> None:
        now = time.time()
        async with self.tx() as db:
            await self.check_quota(db, quota, [*m.blobs, (m.digest, len(m.payload))])
            repo_id = await self.ensure_repo(db, repo)
            await self._link(db, repo_id, [*m.blobs, (m.digest, len(m.payload))])
            # A re-push refreshes created_at: GC's age for untagged manifests starts again.
            await db.execute(
                "INSERT INTO manifests(repo_id, digest, media_type, size, payload, "
                "artifact_type, subject, annotations, created_at) VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(repo_id, digest) DO UPDATE SET created_at=excluded.created_at",
                (
                    repo_id,
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
            await db.executemany(
                "INSERT OR IGNORE INTO manifest_refs(repo_id, manifest, ref, kind) "
                "VALUES (?,?,?,?)",
                [(repo_id, m.digest, ref, kind) for ref, kind in m.refs],
            )
            # Children an index relies on are as fresh as the index for GC.
            await db.executemany(
                "UPDATE manifests SET created_at=? WHERE repo_id=? AND digest=?",
                [(now, repo_id, ref) for ref, kind in m.refs if kind == "manifest"],
            )
            await db.executemany(
                "INSERT INTO tags(repo_id, name, digest, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT(repo_id, name) DO UPDATE SET digest=excluded.digest, "
                "updated_at=excluded.updated_at",
                [(repo_id, tag, m.digest, now) for tag in tags],
            )
        self._repo_ids.setdefault(repo, repo_id)

    async def manifest_exists(self, repo: str, digest: str) -> bool:
        row = await self._one(
            "SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repo_id "
            "WHERE r.name=? AND m.digest=?",
            (repo, digest),
        )
        return row is not None

    async def get_manifest(
        self, repo: str, reference: str, by_digest: bool
    ) -> ManifestRecord | None:
        if by_digest:
            sql = (
                "SELECT m.digest, m.media_type, m.size, m.payload FROM manifests m "
                "JOIN repositories r ON r.id = m.repo_id WHERE r.name=? AND m.digest=?"
            )
        else:
            sql = (
                "SELECT m.digest, m.media_type, m.size, m.payload FROM tags t "
                "JOIN repositories r ON r.id = t.repo_id "
                "JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest "
                "WHERE r.name=? AND t.name=?"
            )
        row = await self._one(sql, (repo, reference))
        return ManifestRecord(row[0], row[1], row[2], row[3]) if row else None

    async def delete_tag(self, repo: str, tag: str) -> str | None:
        """Remove a tag; return the digest it pointed to, or None if there was no such tag."""
        repo_id = await self.repo_id(repo)
        if repo_id is None:
            return None
        async with self.tx() as db:
            row = await self._one(
                "SELECT digest FROM tags WHERE repo_id=? AND name=?", (repo_id, tag)
            )
            if not row:
                return None
            await db.execute("DELETE FROM tags WHERE repo_id=? AND name=?", (repo_id, tag))
            return row[0]

    async def delete_manifest(self, repo: str, digest: str) -> tuple[str, int] | None:
        """Remove a manifest and every tag on it; return (media type, size) or None."""
        repo_id = await self.repo_id(repo)
        if repo_id is None:
            return None
        async with self.tx() as db:
            row = await self._one(
                "SELECT media_type, size FROM manifests WHERE repo_id=? AND digest=?",
                (repo_id, digest),
            )
            if not row:
                return None
            await db.execute("DELETE FROM tags WHERE repo_id=? AND digest=?", (repo_id, digest))
            await db.execute(
                "DELETE FROM manifest_refs WHERE repo_id=? AND manifest=?", (repo_id, digest)
            )
            await db.execute(
                "DELETE FROM manifests WHERE repo_id=? AND digest=?", (repo_id, digest)
            )
            await db.execute(
                "DELETE FROM repo_blobs WHERE repo_id=? AND digest=?", (repo_id, digest)
            )
            return row[0], row[1]

    async def tags(self, repo: str, n: int | None, last: str | None) -> list[str]:
        repo_id = await self.repo_id(repo)
        if repo_id is None:
            return []
        sql = "SELECT name FROM tags WHERE repo_id=?"
        args: list[Any] = [repo_id]
        if last is not None:
            sql += " AND name > ?"
            args.append(last)
        sql += " ORDER BY name"
        if n is not None:
            sql += " LIMIT ?"
            args.append(n)
        return [r[0] for r in await self._all(sql, args)]

    async def referrers(self, repo: str, subject: str) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT m.media_type, m.size, m.digest, m.artifact_type, m.annotations "
            "FROM manifests m JOIN repositories r ON r.id = m.repo_id "
            "WHERE r.name=? AND m.subject=? ORDER BY m.created_at, m.digest",
            (repo, subject),
        )
        out = []
        for media_type, size, digest, artifact_type, notes in rows:
            d: dict[str, Any] = {"mediaType": media_type, "size": size, "digest": digest}
            if artifact_type:
                d["artifactType"] = artifact_type
            if notes:
                d["annotations"] = json.loads(notes)
            out.append(d)
        return out

    # Garbage collection (see registry/gc.py for why each delete re-checks its condition)

    async def gc_graph(
        self,
    ) -> tuple[
        dict[tuple[int, str], tuple[str, float]],
        set[tuple[int, str]],
        dict[tuple[int, str], list[tuple[int, str]]],
        dict[tuple[int, str], list[tuple[int, str]]],
    ]:
        """Manifests (→ repository, created_at), tagged ones, index children and referrers."""
        manifests = {
            (r[0], r[1]): (r[2], r[3])
            for r in await self._all(
                "SELECT m.repo_id, m.digest, r.name, m.created_at FROM manifests m "
                "JOIN repositories r ON r.id = m.repo_id"
            )
        }
        tagged = {(r[0], r[1]) for r in await self._all("SELECT repo_id, digest FROM tags")}
        children: dict[tuple[int, str], list[tuple[int, str]]] = {}
        subjects: dict[tuple[int, str], list[tuple[int, str]]] = {}
        for repo_id, manifest, ref, kind in await self._all(
            "SELECT repo_id, manifest, ref, kind FROM manifest_refs WHERE kind != 'blob'"
        ):
            if kind == "manifest":
                children.setdefault((repo_id, manifest), []).append((repo_id, ref))
            else:
                subjects.setdefault((repo_id, ref), []).append((repo_id, manifest))
        return manifests, tagged, children, subjects

    _UNREFERENCED_LINK = (
        "created_at < ? AND NOT EXISTS (SELECT 1 FROM manifest_refs mr "
        "WHERE mr.repo_id = repo_blobs.repo_id AND mr.ref = repo_blobs.digest) "
        "AND NOT EXISTS (SELECT 1 FROM manifests m "
        "WHERE m.repo_id = repo_blobs.repo_id AND m.digest = repo_blobs.digest)"
    )
    _UNLINKED_BLOB = (
        "created_at < ? AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = blobs.digest)"
    )

    async def gc_sweep(
        self,
        doomed: set[tuple[int, str]],
        cutoff: float,
        untagged_cutoff: float,
        dry_run: bool,
    ) -> tuple[int, int, dict[str, int]]:
        """Delete unreachable manifests, then links no manifest references, then blobs no
        repository links; return (manifests, links, released blobs → size).

        One transaction: a dry run rolls it back, so it reports exactly what a run would do.
        Every DELETE re-checks its condition, so what a concurrent push relies on stays.
        """
        manifests = 0
        async with self.tx(rollback=dry_run) as db:
            pending = set(doomed)
            while pending:  # parents before children: repeat until a pass deletes nothing
                deleted = set()
                for repo_id, digest in pending:
                    cur = await db.execute(
                        "DELETE FROM manifests WHERE repo_id=? AND digest=? AND created_at < ? "
                        "AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id=? AND t.digest=?) "
                        "AND NOT EXISTS (SELECT 1 FROM manifest_refs mr WHERE mr.repo_id=? "
                        "AND mr.ref=? AND mr.kind='manifest')",
                        (repo_id, digest, untagged_cutoff, repo_id, digest, repo_id, digest),
                    )
                    if cur.rowcount:
                        await db.execute(
                            "DELETE FROM manifest_refs WHERE repo_id=? AND manifest=?",
                            (repo_id, digest),
                        )
                        deleted.add((repo_id, digest))
                if not deleted:
                    break
                manifests += len(deleted)
                pending -= deleted
            cur = await db.execute(
                f"DELETE FROM repo_blobs WHERE {self._UNREFERENCED_LINK}", (cutoff,)
            )
            links = cur.rowcount
            async with db.execute(
                f"DELETE FROM blobs WHERE {self._UNLINKED_BLOB} RETURNING digest, size", (cutoff,)
            ) as rows:
                released = {r[0]: r[1] for r in await rows.fetchall()}
        return manifests, links, released

    # Upload sessions

    async def create_upload(
        self, repo: str, upload_id: str, algorithm: str, driver: dict[str, Any], owner: str | None
    ) -> None:
        now = time.time()
        async with self.tx() as db:
            repo_id = await self.ensure_repo(db, repo)
            await db.execute(
                "INSERT INTO uploads(id, repo_id, algorithm, offset, driver, owner, created_at, "
                "updated_at) VALUES (?,?,?,?,?,?,?,?)",
                (upload_id, repo_id, algorithm, 0, json.dumps(driver), owner, now, now),
            )
        self._repo_ids.setdefault(repo, repo_id)

    async def get_upload(self, repo: str, upload_id: str) -> UploadRecord | None:
        row = await self._one(
            "SELECT u.id, r.name, u.algorithm, u.offset, u.driver, u.owner, u.created_at, "
            "u.updated_at FROM uploads u JOIN repositories r ON r.id = u.repo_id "
            "WHERE u.id=? AND r.name=?",
            (upload_id, repo),
        )
        if not row:
            return None
        return UploadRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), *row[5:])

    async def update_upload(self, upload_id: str, offset: int, driver: dict[str, Any]) -> None:
        async with self.tx() as db:
            await db.execute(
                "UPDATE uploads SET offset=?, driver=?, updated_at=? WHERE id=?",
                (offset, json.dumps(driver), time.time(), upload_id),
            )

    async def delete_upload(self, upload_id: str) -> None:
        async with self.tx() as db:
            await db.execute("DELETE FROM uploads WHERE id=?", (upload_id,))

    async def uploads(self) -> list[UploadRecord]:
        rows = await self._all(
            "SELECT u.id, r.name, u.algorithm, u.offset, u.driver, u.owner, u.created_at, "
            "u.updated_at FROM uploads u JOIN repositories r ON r.id = u.repo_id"
        )
        return [UploadRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), *r[5:]) for r in rows]
