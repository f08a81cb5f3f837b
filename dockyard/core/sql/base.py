"""The engine-neutral interface of the state store."""

from __future__ import annotations

import abc
import contextvars
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from .script import render, split_statements

Args = Sequence[Any]
log = logging.getLogger("dockyard.sql")


# The database whose transaction the current task is in. A statement on the database itself
# from inside one of its transactions is a bug of the caller, which must use the transaction:
# on PostgreSQL it takes a second pooled connection while holding one (a burst of such
# transactions exhausts the pool waiting on each other), on SQLite a write would wait forever
# for the writer lock its own task holds. Logged once per statement, or raised where
# DOCKYARD_STRICT_TRANSACTIONS is set (the test suite).
IN_TRANSACTION: contextvars.ContextVar[object] = contextvars.ContextVar(
    "in_transaction", default=None
)
_STRICT = bool(os.environ.get("DOCKYARD_STRICT_TRANSACTIONS"))
_reported: set[str] = set()


def nested_statement(sql: str, *, fatal: bool = False) -> None:
    message = f"statement outside the open transaction of this task: {sql[:200]}"
    if _STRICT or fatal:
        raise RuntimeError(message)
    if sql not in _reported:
        _reported.add(sql)
        log.warning("%s", message, stack_info=True)


class Row(Protocol):
    """A result row: by position and by column name (sqlite3.Row and asyncpg.Record both are)."""

    def __getitem__(self, key: int | str) -> Any: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def keys(self) -> Iterable[str]: ...


class DatabaseError(Exception):
    """Base of the errors this package raises."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached or refused the work for now; retrying later may succeed.
    The HTTP layers answer it with 503 UNAVAILABLE."""


class IntegrityError(DatabaseError):
    """A constraint (unique key, foreign key, check) refused a write."""


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer dockyard than this one."""


MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
)
"""


class Transaction(abc.ABC):
    """Statements run inside one transaction; it commits when the `async with` block ends."""

    dialect: str

    @abc.abstractmethod
    async def execute(self, sql: str, args: Args = ()) -> int:
        """Run a statement; return the number of rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Args]) -> None: ...

    @abc.abstractmethod
    async def fetchone(self, sql: str, args: Args = ()) -> Row | None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]: ...

    async def fetchval(self, sql: str, args: Args = ()) -> Any:
        row = await self.fetchone(sql, args)
        return None if row is None else row[0]

    @abc.abstractmethod
    async def lock(self, key: str) -> None:
        """Serialise this transaction with every other that locks `key` until it ends (a
        no-op where the engine already serialises all writers)."""


class Database(abc.ABC):
    """Reads outside a transaction see everything committed before they started."""

    dialect: str
    #: What `dockyard serve` prints: the engine and where, never a password.
    description: str

    @abc.abstractmethod
    async def execute(self, sql: str, args: Args = ()) -> int: ...

    @abc.abstractmethod
    async def fetchone(self, sql: str, args: Args = ()) -> Row | None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]: ...

    async def fetchval(self, sql: str, args: Args = ()) -> Any:
        row = await self.fetchone(sql, args)
        return None if row is None else row[0]

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query succeeds now."""

    @property
    @abc.abstractmethod
    def now_sql(self) -> str:
        """An SQL expression for the database server's clock in unix seconds: leases compare
        against one clock, whatever the nodes' clocks say."""

    def change_token(self) -> object | None:
        """A value that changes whenever anything commits, or None if the engine cannot say
        cheaply (callers then do not cache)."""
        return None

    @abc.abstractmethod
    def _migration_lock(self, tx: Transaction) -> AbstractAsyncContextManager[None]:
        """Held while one component migrates: several nodes starting together migrate once."""

    async def migrate(self, component: str, steps: Sequence[str]) -> int:
        """Apply the steps of `component` not applied yet; return its version.

        Each step is a script of statements (`{serial}`, `{blob}`, `{without_rowid}` rendered
        for this engine). Released steps are never edited: a change is a new step. A node keeps
        working with a database one step newer than itself only if that step is additive, which
        is the rule for every step (README, "Upgrading node by node").
        """
        async with self.transaction() as tx, self._migration_lock(tx):
            await tx.execute(MIGRATIONS_TABLE.strip())
            current = await tx.fetchval(
                "SELECT version FROM schema_migrations WHERE component = ?", (component,)
            )
            version = int(current or 0)
            if version > len(steps):
                raise SchemaTooNew(
                    f"the {component} tables are at version {version}, newer than this dockyard "
                    f"({len(steps)}); upgrade dockyard"
                )
            for step in steps[version:]:
                for statement in split_statements(render(step, self.dialect)):
                    await tx.execute(statement)
            if version < len(steps):
                await tx.execute(
                    "INSERT INTO schema_migrations (component, version, updated_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (component) DO UPDATE SET "
                    "version = excluded.version, updated_at = excluded.updated_at",
                    (component, len(steps), time.time()),
                )
            return len(steps)

