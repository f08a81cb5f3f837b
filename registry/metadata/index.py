"""The global blob index: digest → stored object key. One row per stored object."""

from __future__ import annotations

import time
from pathlib import Path

import aiosqlite

from .schema import INDEX_MIGRATIONS, connect


class BlobIndex:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> BlobIndex:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(await connect(str(path), INDEX_MIGRATIONS))

    async def close(self) -> None:
        await self.db.close()

    async def lookup(self, digest: str) -> tuple[str, int] | None:
        async with self.db.execute("SELECT key, size FROM blobs WHERE digest=?", (digest,)) as cur:
            row = await cur.fetchone()
        return (row[0], row[1]) if row else None

    async def add(self, digest: str, key: str, size: int) -> str:
        """Record `key` for `digest` unless one is recorded; return the key that holds it.

        A single INSERT OR IGNORE makes concurrent commits of one digest race-free without a
        lock: the first recorded object wins and later copies are dropped by the caller.
        """
        await self.db.execute(
            "INSERT OR IGNORE INTO blobs(digest, key, size, created_at) VALUES (?,?,?,?)",
            (digest, key, size, time.time()),
        )
        found = await self.lookup(digest)
        assert found is not None
        return found[0]

    async def remove(self, digest: str) -> None:
        await self.db.execute("DELETE FROM blobs WHERE digest=?", (digest,))

    async def all(self) -> list[tuple[str, str, int, float]]:
        async with self.db.execute("SELECT digest, key, size, created_at FROM blobs") as cur:
            return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]
