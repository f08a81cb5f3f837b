"""The accounts database: schema as versioned migrations, applied on open (PRAGMA user_version)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sqlite3

import aiosqlite

# Each entry migrates from version i to i + 1. Never edit a released entry; append a new one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE customers (
            name TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL
        )""",
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            created_at INTEGER NOT NULL
        )""",
        """CREATE TABLE memberships (
            user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            customer TEXT NOT NULL REFERENCES customers(name) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
            PRIMARY KEY (user, customer)
        )""",
        "CREATE INDEX memberships_customer ON memberships(customer)",
        """CREATE TABLE robots (
            name TEXT PRIMARY KEY,
            customer TEXT NOT NULL REFERENCES customers(name) ON DELETE CASCADE,
            secret_hash TEXT NOT NULL,
            patterns TEXT NOT NULL,
            actions TEXT NOT NULL,
            created_at INTEGER NOT NULL
        )""",
        "CREATE INDEX robots_customer ON robots(customer)",
        """CREATE TABLE public_repositories (
            name TEXT PRIMARY KEY,
            customer TEXT NOT NULL REFERENCES customers(name) ON DELETE CASCADE,
            created_at INTEGER NOT NULL
        )""",
        # Only a hash of each refresh token is kept: a leaked database yields no usable token.
        """CREATE TABLE refresh_tokens (
            token_hash TEXT PRIMARY KEY,
            subject TEXT NOT NULL,
            service TEXT NOT NULL,
            client_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER,
            last_used_at INTEGER
        )""",
        "CREATE INDEX refresh_tokens_subject ON refresh_tokens(subject)",
    ],
]


async def connect(path: pathlib.Path) -> aiosqlite.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    # Autocommit mode: transactions are opened explicitly where several statements must agree.
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA busy_timeout = 5000")
        for attempt in range(100):  # concurrent creation can be refused without waiting
            try:
                await db.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                await asyncio.sleep(0.01 * min(attempt + 1, 10))
        await db.execute("PRAGMA foreign_keys = ON")
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db


async def migrate(db: aiosqlite.Connection) -> None:
    # IMMEDIATE takes the write lock before reading the version, so a CLI command and a server
    # opening a fresh database at the same moment do not both apply a migration.
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"accounts database is at version {version}, newer than this dockyard "
                f"({len(MIGRATIONS)})"
            )
        for index in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[index]:
                await db.execute(statement)
        await db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
