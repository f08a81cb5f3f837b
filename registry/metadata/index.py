"""The global blob index: digest → stored object key. One row per stored object.

`used_at` is refreshed whenever a commit or a manifest push relies on the row; garbage
collection only deletes rows whose `used_at` is older than its grace period, with the check
inside the DELETE itself, so a concurrent commit can never lose its object.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import aiosqlite

from .schema import INDEX_MIGRATIONS, connect, connect_reader


class BlobIndex:
    def __init__(self, db: aiosqlite.Connection, rdb: sqlite3.Connection) -> None:
        self.db = db
        self.rdb = rdb  # synchronous reads on the event loop (see CustomerMeta)

    @classmethod
    async def open(cls, path: Path) -> BlobIndex:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await connect(str(path), INDEX_MIGRATIONS)
        return cls(db, connect_reader(str(path)))

    async def close(self) -> None:
        await self.db.close()
        self.rdb.close()

    async def lookup(self, digest: str) -> tuple[str, int] | None:
        row = self.rdb.execute("SELECT key, size FROM blobs WHERE digest=?", (digest,)).fetchone()
        return (row[0], row[1]) if row else None

    async def add(self, digest: str, key: str, size: int) -> str:
        """Record `key` for `digest` unless one is recorded; return the key that holds it.

        One upsert makes concurrent commits of a digest race-free without a lock: the first
        recorded object wins, later copies are dropped by the caller.
        """
        async with self.db.execute(
            "INSERT INTO blobs(digest, key, size, created_at) VALUES (?,?,?,?) "
            "ON CONFLICT(digest) DO UPDATE SET created_at=excluded.created_at RETURNING key",
            (digest, key, size, time.time()),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return row[0]

    async def touch(self, digest: str) -> str | None:
        """Mark a recorded digest as in use now; return its key, or None if unknown."""
        async with self.db.execute(
            "UPDATE blobs SET created_at=? WHERE digest=? RETURNING key", (time.time(), digest)
        ) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def remove_if_unused_since(self, digest: str, cutoff: float) -> str | None:
        """Delete the row when nothing used it since `cutoff`; return the freed key."""
        async with self.db.execute(
            "DELETE FROM blobs WHERE digest=? AND created_at < ? RETURNING key, size",
            (digest, cutoff),
        ) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def has_key(self, key: str) -> bool:
        async with self.db.execute("SELECT 1 FROM blobs WHERE key=? LIMIT 1", (key,)) as cur:
            return await cur.fetchone() is not None

    async def all(self) -> list[tuple[str, str, int, float]]:
        async with self.db.execute("SELECT digest, key, size, created_at FROM blobs") as cur:
            return [(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]
