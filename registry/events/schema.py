"""The outbox database: `DATA/events/events.db`, SQLite in WAL mode, versioned migrations.

It is separate from the per-customer metadata databases so that delivery bookkeeping (an update
per attempt) never contends with pushes, and one file holds every customer's queue in order.

Tables:
- `events`: one row per published event; `seq` orders them, `id` is the stable event id and
  `body` the event object as JSON (the reference registry's shape).
- `deliveries`: one row per (event, endpoint); `status` is pending | failed | delivered | dead.
  `failed` means "last attempt failed, another is scheduled at `next_attempt`". A process that
  works on a row holds it by writing `lease_owner`/`lease_until`; others skip leased rows.
- `attempts`: the delivery log, one row per HTTP attempt.
- `subscribers`: durable cursors of in-process subscriptions (the launcher), with a lease so that
  only one process consumes a subscription at a time.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from registry.metadata.schema import migrate as migrate_schema
from registry.metadata.schema import use_wal

MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created REAL NOT NULL,
        action TEXT NOT NULL,
        kind TEXT NOT NULL,
        customer TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX events_created ON events (created);

    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_seq INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
        endpoint TEXT NOT NULL,
        repository TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL NOT NULL DEFAULT 0,
        last_status INTEGER,
        last_error TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        UNIQUE (event_seq, endpoint)
    );
    -- Queue heads: the oldest open delivery of each (endpoint, repository).
    CREATE INDEX deliveries_open ON deliveries (endpoint, repository, event_seq)
        WHERE status IN ('pending', 'failed');
    CREATE INDEX deliveries_endpoint_status ON deliveries (endpoint, status, event_seq);

    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
        started REAL NOT NULL,
        duration REAL NOT NULL,
        status_code INTEGER,
        error TEXT,
        owner TEXT NOT NULL
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id, id);

    CREATE TABLE subscribers (
        name TEXT PRIMARY KEY,
        cursor INTEGER NOT NULL,
        lease_owner TEXT,
        lease_until REAL NOT NULL DEFAULT 0,
        updated REAL NOT NULL
    );
    """,
)

BUSY_TIMEOUT_MS = 10_000


async def connect(path: Path) -> aiosqlite.Connection:
    """Open (creating and migrating) the outbox database at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: every write below is an explicit BEGIN IMMEDIATE … COMMIT.
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        db.row_factory = aiosqlite.Row
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await use_wal(db)
        # FULL: a publish that returned survives power loss, not only a process crash.
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db


async def migrate(db: aiosqlite.Connection) -> None:
    await migrate_schema(db, MIGRATIONS, "events")
