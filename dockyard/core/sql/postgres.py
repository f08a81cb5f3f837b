"""PostgreSQL through asyncpg: a connection pool, statements prepared and cached per connection.

asyncpg was chosen by measurement on this project's machine (bench/README.md, "pgdriver"): at
the concurrency the server runs (8–32 requests in flight) it used less client CPU per statement
than psycopg 3 with its pool (71–87 µs against 94–99 µs per point SELECT at 32, 169 against
248 µs per three-statement transaction at 8), and CPU is what a registry node runs out of.

Transactions are READ COMMITTED (the default). Code that reads then writes a decision that
concurrent transactions could invalidate (a quota check) takes `Transaction.lock(key)`, a
transaction-scoped advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg

from .base import (
    IN_TRANSACTION,
    Args,
    Database,
    DatabaseUnavailable,
    IntegrityError,
    Row,
    Transaction,
    nested_statement,
)
from .script import to_numbered

MIGRATION_LOCK = 0x646F636B  # "dock": the advisory lock id every node's migrations take

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(str(exc))
    if isinstance(exc, _UNAVAILABLE):
        return DatabaseUnavailable(f"postgresql: {type(exc).__name__}: {exc}".rstrip(": "))
    return exc


_numbered: dict[str, str] = {}


def _sql(sql: str) -> str:
    out = _numbered.get(sql)
    if out is None:
        out = _numbered[sql] = to_numbered(sql)
    return out


def _count(status: str) -> int:
    # asyncpg returns the command tag: "UPDATE 3", "INSERT 0 1", "DELETE 0".
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PostgresTransaction(Transaction):
    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Args = ()) -> int:
        try:
            if args:
                return _count(await self._conn.execute(_sql(sql), *args))
            return _count(await self._conn.execute(sql))
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise _translate(exc) from exc

    async def executemany(self, sql: str, rows: Iterable[Args]) -> None:
        batch = [tuple(r) for r in rows]
        if not batch:
            return
        try:
            await self._conn.executemany(_sql(sql), batch)
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise _translate(exc) from exc

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        try:
            return await self._conn.fetchrow(_sql(sql), *args)
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise _translate(exc) from exc

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        try:
            return list(await self._conn.fetch(_sql(sql), *args))
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise _translate(exc) from exc

    async def lock(self, key: str) -> None:
        await self.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        description: str,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.description = description
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> PostgresDatabase:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                # No floor: asyncpg would reconnect it in a loop during an outage, logging a
                # traceback each second; requests reconnect on demand instead.
                min_size=0,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._statement_timeout,
                statement_cache_size=1024,
                max_inactive_connection_lifetime=300.0,
                server_settings={"application_name": "dockyard"},
            )
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise _translate(exc) from exc
        return self

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("the database is closed")
        return self._pool

    async def _run(self, method: str, sql: str, args: Args) -> Any:
        if IN_TRANSACTION.get() is self:
            nested_statement(sql)
        try:
            async with self.pool.acquire(timeout=self._connect_timeout) as conn:
                return await getattr(conn, method)(_sql(sql), *args)
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise _translate(exc) from exc

    async def execute(self, sql: str, args: Args = ()) -> int:
        return _count(await self._run("execute", sql, args))

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        row: Row | None = await self._run("fetchrow", sql, args)
        return row

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        return list(await self._run("fetch", sql, args))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        if IN_TRANSACTION.get() is self:
            nested_statement("BEGIN (inside a transaction)")
        try:
            conn = await self.pool.acquire(timeout=self._connect_timeout)
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise _translate(exc) from exc
        token = IN_TRANSACTION.set(self)
        try:
            tx = conn.transaction()
            try:
                await tx.start()
            except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
                raise _translate(exc) from exc
            try:
                yield PostgresTransaction(conn)
            except BaseException:
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise
            try:
                await tx.commit()
            except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
                raise _translate(exc) from exc
        finally:
            IN_TRANSACTION.reset(token)
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

    @contextlib.asynccontextmanager
    async def _migration_lock(self, tx: Transaction) -> AsyncIterator[None]:
        await tx.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        yield

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    @property
    def now_sql(self) -> str:
        return "EXTRACT(EPOCH FROM clock_timestamp())::double precision"

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
