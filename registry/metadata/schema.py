"""SQLite schemas with versioned migrations (PRAGMA user_version counts applied steps)."""

from __future__ import annotations

import asyncio
import sqlite3

import aiosqlite

# Per-customer database: everything one customer owns. One customer's load, corruption or
# deletion never touches another's.
CUSTOMER_MIGRATIONS: list[str] = [
    """
    CREATE TABLE repositories (
        id INTEGER PRIMARY KEY,
        name TEXT UNIQUE NOT NULL,
        created_at REAL NOT NULL
    );
    -- Blobs this customer holds (in at least one repository, or mid-GC).
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE repo_blobs (
        repo_id INTEGER NOT NULL REFERENCES repositories(id),
        digest TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (repo_id, digest)
    ) WITHOUT ROWID;
    CREATE INDEX repo_blobs_digest ON repo_blobs(digest);
    CREATE TABLE manifests (
        repo_id INTEGER NOT NULL REFERENCES repositories(id),
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        payload BLOB NOT NULL,
        artifact_type TEXT,
        subject TEXT,
        annotations TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (repo_id, digest)
    );
    CREATE INDEX manifests_subject ON manifests(repo_id, subject);
    -- What a manifest references: kind is 'blob', 'manifest' (index children) or 'subject'.
    CREATE TABLE manifest_refs (
        repo_id INTEGER NOT NULL,
        manifest TEXT NOT NULL,
        ref TEXT NOT NULL,
        kind TEXT NOT NULL,
        PRIMARY KEY (repo_id, manifest, ref, kind)
    ) WITHOUT ROWID;
    CREATE INDEX manifest_refs_ref ON manifest_refs(repo_id, ref);
    CREATE TABLE tags (
        repo_id INTEGER NOT NULL REFERENCES repositories(id),
        name TEXT NOT NULL,
        digest TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (repo_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX tags_digest ON tags(repo_id, digest);
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        repo_id INTEGER NOT NULL REFERENCES repositories(id),
        algorithm TEXT NOT NULL,
        offset INTEGER NOT NULL,
        driver TEXT NOT NULL,
        owner TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    """
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE INDEX manifests_created ON manifests(created_at);
    """,
]

# The global blob index: which stored object holds each digest. Shared by every customer; it
# is what garbage collection sweeps against.
INDEX_MIGRATIONS: list[str] = [
    """
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    """,
]


async def migrate(
    db: aiosqlite.Connection, migrations: list[str] | tuple[str, ...], name: str = "metadata"
) -> None:
    """Apply missing steps; the version is read under the write lock so that several worker
    processes opening one database at once migrate it exactly once."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = row[0] if row else 0
        if version > len(migrations):
            raise RuntimeError(
                f"{name} database is at schema version {version}, newer than this dockyard "
                f"({len(migrations)})"
            )
        for step, script in enumerate(migrations[version:], start=version + 1):
            for statement in statements(script):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {step}")
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise


def statements(script: str) -> list[str]:
    """Split a migration script: executescript() would COMMIT the migration's transaction
    first. Comment lines are dropped; statements hold no semicolons in their bodies."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def connect_reader(path: str) -> sqlite3.Connection:
    """A read-only connection for synchronous point queries on the event loop."""
    db = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    db.execute("PRAGMA busy_timeout=2000")
    return db


async def use_wal(db: aiosqlite.Connection) -> None:
    """Switch a database to WAL. Several processes creating one database at once (worker
    processes, a CLI beside the server) can get SQLITE_BUSY here without the busy handler being
    consulted, so retry for a while."""
    for attempt in range(100):
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            await asyncio.sleep(0.01 * min(attempt + 1, 10))
    await db.execute("PRAGMA journal_mode=WAL")


async def connect(path: str, migrations: list[str]) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA busy_timeout=10000")
    await use_wal(db)
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA foreign_keys=ON")
    await migrate(db, migrations)
    return db
