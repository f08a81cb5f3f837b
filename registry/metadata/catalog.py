"""The catalog: repository names of every tenant in byte order, a page at a time.

The only query here that lists across tenants; the registry filters each page down to what the
caller may pull before anything is answered.
"""

from __future__ import annotations

from dockyard.core.sql import Database


class Catalog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(self, after: str | None, limit: int) -> list[str]:
        if after is None:
            rows = await self.db.fetchall(
                "SELECT name FROM repositories ORDER BY name LIMIT ?", (limit,)
            )
        else:
            rows = await self.db.fetchall(
                "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?",
                (after, limit),
            )
        return [r[0] for r in rows]
