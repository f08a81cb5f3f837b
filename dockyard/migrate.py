"""`dockyard metadata migrate --to postgresql://…`: move an embedded installation to PostgreSQL.

Every component's tables (registry, events, auth, leases, and any other part that keeps its
state in the store) are created on the target at the source's schema version, then copied
table by table in foreign-key order, streaming in batches. Progress is recorded in the target
(`metadata_migration`), so a run that was interrupted continues where it stopped: finished
tables are skipped, a half-copied one is emptied and copied again. `--verify` compares row
counts and an order-independent checksum of every table on both sides.

The registry should be stopped (or read-only) while it runs: rows written to the source after a
table was copied are not seen. Blobs are not touched: they stay where `[storage]` puts them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auth.schema import STEPS as AUTH_STEPS
from dockyard.cluster import STEPS as CLUSTER_STEPS
from dockyard.core.leases import STEPS as LEASE_STEPS
from dockyard.core.sql import Database, describe_url, open_database
from registry.config import Config
from registry.events.schema import STEPS as EVENT_STEPS
from registry.metadata.schema import STEPS as REGISTRY_STEPS

from . import legacy

# Every component that keeps tables in the state store, with its migration steps.
COMPONENTS: dict[str, Sequence[str]] = {
    "registry": REGISTRY_STEPS,
    "events": EVENT_STEPS,
    "auth": AUTH_STEPS,
    "leases": LEASE_STEPS,
    "cluster": CLUSTER_STEPS,
}
BATCH = 1000
PROGRESS_TABLE = """
CREATE TABLE IF NOT EXISTS metadata_migration (
    table_name TEXT PRIMARY KEY,
    rows BIGINT NOT NULL,
    finished_at DOUBLE PRECISION NOT NULL
)
"""


class MigrationError(Exception):
    pass


@dataclass
class Table:
    name: str
    columns: list[str]
    key: list[str]  # primary key columns (rowid order where there is none)


def source_tables(conn: sqlite3.Connection) -> list[Table]:
    """The source's tables, parents before children (foreign keys hold while copying)."""
    names = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name NOT IN ('schema_migrations', 'metadata_migration') ORDER BY name"
        )
    ]
    parents = {
        name: {r[2] for r in conn.execute(f'PRAGMA foreign_key_list("{name}")')} - {name}
        for name in names
    }
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise MigrationError(
                f"foreign keys form a cycle among {sorted(set(names) - set(ordered))}"
            )
        ordered += ready
    tables = []
    for name in ordered:
        info = list(conn.execute(f'PRAGMA table_info("{name}")'))
        columns = [r[1] for r in info]
        key = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
        tables.append(Table(name, columns, key))
    return tables


def rows_of(conn: sqlite3.Connection, table: Table) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows in batches, in key order, without holding them all."""
    cols = ", ".join(f'"{c}"' for c in table.columns)
    order = ", ".join(f'"{c}"' for c in table.key) or "rowid"
    cur = conn.execute(f'SELECT {cols} FROM "{table.name}" ORDER BY {order}')
    while batch := cur.fetchmany(BATCH):
        yield [tuple(r) for r in batch]


Coerce = Callable[[Any], Any]


def _coercer(pg_type: str) -> Coerce:
    # SQLite keeps what it was given; PostgreSQL's binary protocol wants the column's own type.
    if pg_type in ("double precision", "real", "numeric"):
        return lambda v: None if v is None else float(v)
    if pg_type in ("bigint", "integer", "smallint"):
        return lambda v: None if v is None else int(v)
    if pg_type == "boolean":
        return lambda v: None if v is None else bool(v)
    if pg_type == "bytea":
        return lambda v: None if v is None else bytes(v)
    if pg_type == "text":
        return lambda v: None if v is None else str(v)
    return lambda v: v


def row_digest(row: Sequence[Any]) -> int:
    """A value-level digest of one row, equal on both engines for equal contents."""
    parts = []
    for v in row:
        if v is None:
            parts.append("n")
        elif isinstance(v, bool):
            parts.append(f"i{int(v)}")
        elif isinstance(v, int):
            parts.append(f"i{v}")
        elif isinstance(v, float):
            parts.append(f"i{int(v)}" if v.is_integer() else f"f{v!r}")
        elif isinstance(v, (bytes, bytearray, memoryview)):
            parts.append("b" + bytes(v).hex())
        else:
            parts.append("s" + str(v))
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest(), "big")


def _fold(total: int, digest: int) -> int:
    # A sum modulo 2^256: the same for the same multiset of rows, whatever order they come in.
    return (total + digest) % (1 << 256)


@dataclass
class TableCheck:
    name: str
    source_rows: int
    target_rows: int
    source_sum: int
    target_sum: int

    @property
    def ok(self) -> bool:
        return self.source_rows == self.target_rows and self.source_sum == self.target_sum


class Migration:
    def __init__(self, source: Path, target: Database, out: Callable[[str], None] = print) -> None:
        if not source.exists():
            raise MigrationError(f"no embedded metadata at {source}")
        self.source_path = source
        self.target = target
        self.out = out

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.source_path}?mode=ro", uri=True)

    async def run(self) -> int:
        conn = self._connect()
        try:
            versions = dict(
                conn.execute("SELECT component, version FROM schema_migrations").fetchall()
            )
            unknown = sorted(set(versions) - set(COMPONENTS))
            if unknown:
                raise MigrationError(f"the source has tables of unknown parts: {unknown}")
            for component, version in sorted(versions.items()):
                await self.target.migrate(component, COMPONENTS[component][: int(version)])
            await self.target.execute(PROGRESS_TABLE.strip())
            done = {
                r[0]
                for r in await self.target.fetchall("SELECT table_name FROM metadata_migration")
            }
            total = 0
            for table in source_tables(conn):
                if table.name in done:
                    self.out(f"{table.name}: already copied")
                    continue
                copied = await self._copy(conn, table)
                total += copied
                self.out(f"{table.name}: {copied} rows")
            await self._advance_sequences()
            return total
        finally:
            conn.close()

    async def _copy(self, conn: sqlite3.Connection, table: Table) -> int:
        types = {
            r[0]: r[1]
            for r in await self.target.fetchall(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ?",
                (table.name,),
            )
        }
        missing = [c for c in table.columns if c not in types]
        if missing:
            raise MigrationError(f"{table.name}: the target has no columns {missing}")
        coerce = [_coercer(types[c]) for c in table.columns]
        cols = ", ".join(f'"{c}"' for c in table.columns)
        marks = ", ".join("?" for _ in table.columns)
        insert = f'INSERT INTO "{table.name}" ({cols}) VALUES ({marks})'
        copied = 0
        async with self.target.transaction() as tx:
            # A table left half-copied by an interrupted run starts again from empty.
            await tx.execute(f'DELETE FROM "{table.name}"')
            for batch in rows_of(conn, table):
                await tx.executemany(
                    insert, [tuple(f(v) for f, v in zip(coerce, row, strict=True)) for row in batch]
                )
                copied += len(batch)
            await tx.execute(
                "INSERT INTO metadata_migration (table_name, rows, finished_at) VALUES (?, ?, ?)",
                (table.name, copied, time.time()),
            )
        return copied

    async def _advance_sequences(self) -> None:
        """Identity columns continue after the copied ids (rows were inserted with their ids)."""
        rows = await self.target.fetchall(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND "
            "(column_default LIKE 'nextval%' OR is_identity = 'YES')"
        )
        for table, column in rows:
            await self.target.execute(
                f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'), "
                f'COALESCE((SELECT MAX("{column}") FROM "{table}"), 0) + 1, false)'
            )

    async def verify(self) -> list[TableCheck]:
        conn = self._connect()
        try:
            checks = []
            for table in source_tables(conn):
                source_rows, source_sum = 0, 0
                for batch in rows_of(conn, table):
                    source_rows += len(batch)
                    for row in batch:
                        source_sum = _fold(source_sum, row_digest(row))
                cols = ", ".join(f'"{c}"' for c in table.columns)
                target_rows, target_sum = 0, 0
                # Streamed in key ranges would be kinder to huge tables; metadata rows are small.
                for record in await self.target.fetchall(f'SELECT {cols} FROM "{table.name}"'):
                    target_rows += 1
                    target_sum = _fold(target_sum, row_digest(tuple(record)))
                checks.append(
                    TableCheck(table.name, source_rows, target_rows, source_sum, target_sum)
                )
            return checks
        finally:
            conn.close()


def register(sub: argparse._SubParsersAction, common: Callable, config_from: Callable) -> None:
    meta = sub.add_parser(
        "metadata", help="the metadata store: move it to PostgreSQL, import a round-1 layout"
    )
    commands = meta.add_subparsers(dest="metadata_command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "migrate",
        help="copy the embedded (SQLite) metadata into an empty PostgreSQL database",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("--to", required=True, metavar="URL", help="postgresql://USER:PASSWORD@HOST/DB")
    p.add_argument("--verify", action="store_true", help="compare counts and checksums after it")
    p.set_defaults(func=lambda args: cmd_migrate(config_from(args), args))
    legacy.register(commands, common, config_from)


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    if not args.to.startswith(("postgresql://", "postgres://")):
        print("dockyard: --to must be a postgresql:// URL", file=sys.stderr)
        return 2
    if config.metadata.url:
        print(
            "dockyard: this configuration already uses "
            f"{describe_url(config.metadata.url)}; migrate reads the embedded store",
            file=sys.stderr,
        )
        return 2
    source = config.data_dir / "metadata.db"

    async def work() -> int:
        target = await open_database(args.to, config.data_dir)
        try:
            migration = Migration(source, target)
            print(f"copying {source} to {describe_url(args.to)}")
            total = await migration.run()
            print(f"copied {total} rows")
            if not args.verify:
                return 0
            bad = 0
            for check in await migration.verify():
                state = "ok" if check.ok else "MISMATCH"
                bad += not check.ok
                print(
                    f"verify {check.name}: {check.source_rows} / {check.target_rows} rows {state}"
                )
            if bad:
                print(f"dockyard: {bad} tables differ", file=sys.stderr)
                return 1
            print(f'verified; set [metadata] url = "{describe_url(args.to)}" and restart')
            return 0
        finally:
            await target.close()

    try:
        return asyncio.run(work())
    except MigrationError as exc:
        print(f"dockyard: {exc}", file=sys.stderr)
        return 1
