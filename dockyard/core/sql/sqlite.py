"""The embedded engine: one SQLite file in WAL mode.

Reads run synchronously on the event loop on a read-only connection: a WAL reader never waits
for a writer, and a point query costs microseconds, far less than a hop to a thread. Writes go
through one writer connection, one transaction at a time (an asyncio lock in the process,
SQLite's write lock across processes). Inside a transaction the statements also run on the
loop — the write lock is already held, so they only do CPU work — while the two steps that may
wait (BEGIN IMMEDIATE on another process's lock, COMMIT's fsync and checkpoint) run on the
writer's own thread. A transaction therefore costs two thread hops however many statements it
has, and never queues behind other work of the process's default thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

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

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
READ_BUSY_TIMEOUT_MS = 2_000
STATEMENT_CACHE = 512


def _translate(exc: sqlite3.Error) -> Exception:
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(str(exc))
    if isinstance(exc, sqlite3.OperationalError):
        return DatabaseUnavailable(f"sqlite: {exc}")
    return exc


class SqliteTransaction(Transaction):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Args = ()) -> int:
        try:
            cur = self._conn.execute(sql, tuple(args))
            cur.fetchall()  # a RETURNING statement completes only when read to the end
            return cur.rowcount
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def executemany(self, sql: str, rows: Iterable[Args]) -> None:
        try:
            self._conn.executemany(sql, [tuple(r) for r in rows])
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        try:
            rows = self._conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return rows[0] if rows else None

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        try:
            return self._conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def lock(self, key: str) -> None:
        return None  # BEGIN IMMEDIATE already holds the one write lock


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "full") -> None:
        self.path = path
        self.description = f"sqlite {path}"
        self._synchronous = synchronous
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._lock = asyncio.Lock()

    async def open(self) -> SqliteDatabase:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._in_thread(self._connect_writer)
        self._reader = sqlite3.connect(
            f"file:{self.path}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=STATEMENT_CACHE,
        )
        self._reader.row_factory = sqlite3.Row
        self._reader.execute(f"PRAGMA busy_timeout={READ_BUSY_TIMEOUT_MS}")
        return self

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=STATEMENT_CACHE,
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Several processes creating one database at once (worker processes, a CLI beside the
        # server) can get SQLITE_BUSY here without the busy handler being consulted: retry.
        for attempt in range(200):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == 199:
                    raise
                time.sleep(0.01 * min(attempt + 1, 10))
        # FULL: a commit that returned survives power loss, not only a process crash.
        conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """Run on the writer's thread; a cancelled caller still waits for the call to end, so
        the connection is never left mid-statement while the lock is released."""
        fut = asyncio.get_running_loop().run_in_executor(self._thread, fn)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await fut
            raise

    @property
    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise DatabaseUnavailable("the database is closed")
        return self._reader

    @property
    def writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise DatabaseUnavailable("the database is closed")
        return self._writer

    async def execute(self, sql: str, args: Args = ()) -> int:
        if IN_TRANSACTION.get() is self:
            nested_statement(sql, fatal=True)  # it would wait forever for its own lock
        async with self.transaction() as tx:
            return await tx.execute(sql, args)

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        if IN_TRANSACTION.get() is self:
            nested_statement(sql)
        try:
            return self.reader.execute(sql, tuple(args)).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        if IN_TRANSACTION.get() is self:
            nested_statement(sql)
        try:
            return self.reader.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        if IN_TRANSACTION.get() is self:
            nested_statement("BEGIN (inside a transaction)", fatal=True)
        async with self._lock:
            conn = self.writer
            try:
                await self._in_thread(lambda: conn.execute("BEGIN IMMEDIATE"))
            except sqlite3.Error as exc:
                raise _translate(exc) from exc
            token = IN_TRANSACTION.set(self)
            try:
                yield SqliteTransaction(conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._in_thread(lambda: conn.execute("ROLLBACK"))
                raise
            finally:
                IN_TRANSACTION.reset(token)
            try:
                await self._in_thread(lambda: conn.execute("COMMIT"))
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    await self._in_thread(lambda: conn.execute("ROLLBACK"))
                raise _translate(exc) from exc

    @contextlib.asynccontextmanager
    async def _migration_lock(self, tx: Transaction) -> AsyncIterator[None]:
        yield  # BEGIN IMMEDIATE: other processes wait for this transaction

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    @property
    def now_sql(self) -> str:
        return "((julianday('now') - 2440587.5) * 86400.0)"

    def change_token(self) -> object | None:
        # data_version changes when another connection (ours or another process's) commits.
        return self.reader.execute("PRAGMA data_version").fetchone()[0]

    async def close(self) -> None:
        async with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            writer, self._writer = self._writer, None
            if writer is not None:
                await self._in_thread(writer.close)
        self._thread.shutdown(wait=True)

