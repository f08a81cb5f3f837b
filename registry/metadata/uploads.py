"""Upload sessions of one tenant: where each is, its driver state and its saved hash state.

The row is the session: any node (or this one after a restart) continues it from what the row
says, so it is written after every chunk that was stored.
"""

from __future__ import annotations

import json
import time
from typing import Any

from dockyard.core.sql import Database, Row, Transaction

from .records import Tenant, UploadRecord

_COLUMNS = (
    "u.id, r.name, u.algorithm, u.received, u.driver, u.owner, u.created_at, u.updated_at, "
    "u.hash_state"
)


def _record(row: Row) -> UploadRecord:
    state = row[8]
    return UploadRecord(
        id=row[0],
        repository=row[1],
        algorithm=row[2],
        offset=int(row[3]),
        driver=json.loads(row[4]),
        owner=row[5],
        created_at=float(row[6]),
        updated_at=float(row[7]),
        hash_state=bytes(state) if state is not None else None,
    )


class Uploads:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        tx: Transaction,
        tenant: Tenant,
        repo_id: int,
        upload_id: str,
        algorithm: str,
        driver: dict[str, Any],
        owner: str | None,
        hash_state: bytes | None,
    ) -> None:
        now = time.time()
        await tx.execute(
            "INSERT INTO uploads (id, repo_id, customer_id, algorithm, received, driver, "
            "hash_state, owner, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (upload_id, repo_id, tenant.id, algorithm, 0, json.dumps(driver), hash_state, owner,
             now, now),
        )

    async def get(self, tenant: Tenant, repository: str, upload_id: str) -> UploadRecord | None:
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM uploads u JOIN repositories r ON r.id = u.repo_id "
            "WHERE u.customer_id = ? AND u.id = ? AND r.name = ?",
            (tenant.id, upload_id, repository),
        )
        return _record(row) if row else None

    async def advance(
        self,
        tenant: Tenant,
        upload_id: str,
        expected: int,
        offset: int,
        driver: dict[str, Any],
        hash_state: bytes | None,
    ) -> bool:
        """Record a stored chunk, only if the session is still where the writer found it (a
        concurrent writer on another node loses and its client sees 416)."""
        changed = await self.db.execute(
            "UPDATE uploads SET received = ?, driver = ?, hash_state = ?, updated_at = ? "
            "WHERE customer_id = ? AND id = ? AND received = ?",
            (offset, json.dumps(driver), hash_state, time.time(), tenant.id, upload_id,
             expected),
        )
        return changed == 1

    async def delete(self, tx: Transaction, tenant: Tenant, upload_id: str) -> None:
        await tx.execute(
            "DELETE FROM uploads WHERE customer_id = ? AND id = ?", (tenant.id, upload_id)
        )

    async def all(self, tenant: Tenant) -> list[UploadRecord]:
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM uploads u JOIN repositories r ON r.id = u.repo_id "
            "WHERE u.customer_id = ?",
            (tenant.id,),
        )
        return [_record(r) for r in rows]

