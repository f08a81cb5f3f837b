"""Customers and their repositories: the ids every tenant-scoped query is keyed by.

A read never creates a customer or a repository (`find`, `repo_id`); writes create them inside
their own transaction (`ensure`, `ensure_repo`). Ids never change and rows are never deleted,
so a process may cache them; a cache miss reads the database, so a repository created on
another node is found at once.
"""

from __future__ import annotations

import time

from dockyard.core.sql import Database, IntegrityError, Transaction

from .records import Tenant


class Tenants:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._tenants: dict[str, Tenant] = {}
        self._repos: dict[str, tuple[int, int]] = {}  # name -> (repo id, customer id)

    async def find(self, name: str) -> Tenant | None:
        tenant = self._tenants.get(name)
        if tenant is not None:
            return tenant
        row = await self.db.fetchone("SELECT id FROM customers WHERE name = ?", (name,))
        if row is None:
            return None
        tenant = self._tenants[name] = Tenant(int(row[0]), name)
        return tenant

    async def ensure(self, name: str) -> Tenant:
        tenant = await self.find(name)
        if tenant is not None:
            return tenant
        try:
            async with self.db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO customers (name, created_at) VALUES (?, ?) "
                    "ON CONFLICT (name) DO NOTHING",
                    (name, time.time()),
                )
        except IntegrityError:
            pass  # created concurrently
        found = await self.find(name)
        assert found is not None
        return found

    async def all(self) -> list[Tenant]:
        rows = await self.db.fetchall("SELECT id, name FROM customers ORDER BY name")
        return [Tenant(int(r[0]), r[1]) for r in rows]

    async def repo_id(self, tenant: Tenant, name: str) -> int | None:
        cached = self._repos.get(name)
        if cached is not None:
            return cached[0] if cached[1] == tenant.id else None
        row = await self.db.fetchone(
            "SELECT id FROM repositories WHERE customer_id = ? AND name = ?", (tenant.id, name)
        )
        if row is None:
            return None
        self._repos[name] = (int(row[0]), tenant.id)
        return int(row[0])

    async def ensure_repo(self, tx: Transaction, tenant: Tenant, name: str) -> int:
        """Inside a write transaction: the id of `name`, creating the repository if needed.

        Every read here goes through `tx`: a second connection taken while this one is held
        would let a burst of transactions exhaust the pool waiting on each other."""
        cached = self._repos.get(name)
        if cached is not None and cached[1] == tenant.id:
            return cached[0]
        await tx.execute(
            "INSERT INTO repositories (customer_id, name, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING",
            (tenant.id, name, time.time()),
        )
        repo_id = await tx.fetchval(
            "SELECT id FROM repositories WHERE customer_id = ? AND name = ?", (tenant.id, name)
        )
        if repo_id is None:
            raise IntegrityError(f"repository {name} belongs to another customer")
        return int(repo_id)

    async def repositories(self, tenant: Tenant) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT name FROM repositories WHERE customer_id = ? ORDER BY name", (tenant.id,)
        )
        return [r[0] for r in rows]

    async def quota(self, tenant: Tenant) -> int | None:
        value = await self.db.fetchval(
            "SELECT quota_bytes FROM customers WHERE id = ?", (tenant.id,)
        )
        return None if value is None else int(value)

    async def set_quota(self, tenant: Tenant, quota: int | None) -> None:
        await self.db.execute(
            "UPDATE customers SET quota_bytes = ? WHERE id = ?", (quota, tenant.id)
        )
