"""Upgrading from the round-1 layout: metadata in SQLite files under the data directory.

Round 1 (git f3e7d24) kept its metadata in several files:

- `DATA/customers/<customer>/meta.db`: one database per customer (repositories, blobs,
  repo_blobs, manifests, manifest_refs, tags, uploads, settings);
- `DATA/index.db`: the global blob index (digest → stored object key);
- `DATA/events/events.db`: the events outbox;
- `DATA/auth/accounts.db`: customers, users, memberships, robots, public repositories and
  refresh tokens of the token service;
- `DATA/launcher/launcher.db`: the launcher's store.

This dockyard keeps all of it in one state store (`dockyard.core.sql`). Without an import a
round-1 installation would start with empty metadata: its blobs are still on disk or in S3, but
nothing points at them — and the garbage collector deletes stored objects the blob index does
not know, so running the new version on such a directory before importing loses data. Hence
`dockyard serve` and `dockyard gc` refuse to run while the layout is present (`refusal`).

`import_legacy` copies every file into the configured store (SQLite or PostgreSQL): the blob
index first (so no link ever points at a digest without a stored object), then each customer in
a transaction of its own, then the accounts and the outbox, each in one transaction. Every row is
written with `ON CONFLICT … DO NOTHING` on the target's own keys, so an interrupted run is
simply run again: what was committed is found and not duplicated. Only when everything
succeeded is each file renamed with a `.imported` suffix (kept, never deleted): the rename is
the marker that the file was imported, and what stops the refusal.

What is not carried over, and why:

- upload sessions in flight: round 1 saved no hash state, so the new code could not finish
  them; their clients get BLOB_UPLOAD_UNKNOWN and start the upload again (the spec's answer to
  a lost session). Their partial data is expired by GC like any abandoned upload.
- blob deletions from one repository: round 1 deleted the link row, so there is nothing to
  turn into the new schema's tombstone (`repo_blobs.deleted`). Such a blob stays readable there
  through customer-wide dedup while another repository of the customer links it — exactly what
  round 1 served.
- the launcher: this dockyard still reads `DATA/launcher/launcher.db` in place, so the file is
  neither imported nor renamed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auth.schema import STEPS as AUTH_STEPS
from dockyard.core.sql import Database, DatabaseError, Transaction
from registry.config import Config
from registry.events.schema import STEPS as EVENT_STEPS
from registry.manifest_format import parse_manifest
from registry.metadata import Metadata

from .state import describe_state, open_state

SUFFIX = ".imported"
BATCH = 500
# Schema versions (PRAGMA user_version) round 1 wrote: newer files are not round 1's.
CUSTOMER_VERSIONS = (1, 2)  # 2 added `settings` (quota_bytes)
KNOWN_VERSION = 1  # index.db, events.db, accounts.db


class LegacyError(Exception):
    pass


@dataclass
class LegacyLayout:
    """The round-1 files found in a data directory and not imported yet."""

    data_dir: Path
    customers: list[tuple[str, Path]] = field(default_factory=list)
    index: Path | None = None
    events: Path | None = None
    accounts: Path | None = None

    def files(self) -> list[Path]:
        found = [path for _, path in self.customers]
        found += [p for p in (self.index, self.events, self.accounts) if p is not None]
        return found

    def __bool__(self) -> bool:
        return bool(self.files())


def detect(data_dir: Path) -> LegacyLayout:
    """What of the round-1 layout `data_dir` holds (falsy when nothing is left to import).

    An imported file carries the `.imported` suffix and is no longer found. The launcher's file
    is not part of it: this dockyard still uses it where it is."""
    layout = LegacyLayout(data_dir)
    root = data_dir / "customers"
    if root.is_dir():
        layout.customers = sorted(
            (p.parent.name, p) for p in root.glob("*/meta.db") if p.is_file()
        )
    for attr, path in (
        ("index", data_dir / "index.db"),
        ("events", data_dir / "events" / "events.db"),
        ("accounts", data_dir / "auth" / "accounts.db"),
    ):
        if path.is_file():
            setattr(layout, attr, path)
    return layout


def refusal(config: Config, args: argparse.Namespace | None = None) -> str | None:
    """The message `dockyard serve` (and `gc`) stop with on an unimported round-1 layout."""
    layout = detect(config.data_dir)
    if not layout:
        return None
    command = "dockyard metadata import-legacy"
    if args is not None and getattr(args, "config", None):
        command += f" --config {args.config}"
    command += f" --data {config.data_dir}"
    shown = ", ".join(str(p.relative_to(config.data_dir)) for p in layout.files()[:4])
    more = len(layout.files()) - 4
    if more > 0:
        shown += f" and {more} more"
    return (
        f"dockyard: {config.data_dir} holds metadata of an earlier dockyard ({shown}) that this "
        "version does not read: started now, the registry would look empty and garbage "
        f"collection would delete the blobs it does not know. Import it first:\n    {command}\n"
        "(the old files are kept, renamed *.imported)"
    )


# -- reading the old files ----------------------------------------------------------------------


@contextlib.contextmanager
def _legacy_db(path: Path, versions: tuple[int, ...]) -> Iterator[sqlite3.Connection]:
    """A connection to an old file, reading one snapshot, writing nothing.

    Opened read-write (not `mode=ro`) so that SQLite can recover a WAL the old server left;
    `query_only` guarantees this import never changes the old file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA query_only = 1")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in versions:
            raise LegacyError(
                f"{path} is at schema version {version}; this import reads round-1 files "
                f"(versions {', '.join(map(str, versions))})"
            )
        # One read transaction: every table is read from the same snapshot.
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def _batches(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> Iterator[list]:
    cur = conn.execute(sql, args)
    while batch := cur.fetchmany(BATCH):
        yield batch


def _f(v: Any) -> float | None:
    # SQLite keeps whatever number it was given; PostgreSQL's binary protocol wants the type.
    return None if v is None else float(v)


def _i(v: Any) -> int | None:
    return None if v is None else int(v)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


# -- counting -------------------------------------------------------------------------------------


@dataclass
class Count:
    imported: int = 0
    present: int = 0  # already in the target: a row of an earlier run, or written since


@dataclass
class ImportReport:
    counts: dict[str, Count] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    renamed: list[Path] = field(default_factory=list)

    def add(self, table: str, changed: int) -> None:
        count = self.counts.setdefault(table, Count())
        if changed:
            count.imported += 1
        else:
            count.present += 1

    def touch(self, table: str) -> None:
        self.counts.setdefault(table, Count())


async def _insert(tx: Transaction, report: ImportReport, table: str, sql: str, args: tuple) -> int:
    changed = await tx.execute(sql, args)
    report.add(table, changed)
    return changed


# -- the import -----------------------------------------------------------------------------------


async def _migrate(db: Database) -> None:
    """Create (or bring up to date) every table the import writes."""
    await Metadata(db).open()
    await db.migrate("events", EVENT_STEPS)
    await db.migrate("auth", AUTH_STEPS)


async def _import_index(db: Database, path: Path, report: ImportReport) -> None:
    report.touch("blob_index")
    with _legacy_db(path, (KNOWN_VERSION,)) as conn:
        async with db.transaction() as tx:
            for batch in _batches(conn, "SELECT digest, key, size, created_at FROM blobs"):
                for digest, key, size, created_at in batch:
                    # The old `created_at` was refreshed whenever a push relied on the row: the
                    # new `used_at` has that meaning (GC's grace period counts from it).
                    await _insert(
                        tx, report, "blob_index",
                        "INSERT INTO blob_index (digest, key, size, used_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (digest) DO NOTHING",
                        (digest, key, int(size), float(created_at)),
                    )


def _index_sizes(path: Path | None) -> dict[str, int]:
    """Sizes by digest from the old index, for links whose `blobs` row is missing."""
    if path is None:
        return {}
    with _legacy_db(path, (KNOWN_VERSION,)) as conn:
        return {d: int(s) for d, s in conn.execute("SELECT digest, size FROM blobs")}


async def _import_customer(
    db: Database, name: str, path: Path, sizes: dict[str, int], report: ImportReport
) -> None:
    """One customer's database, in one transaction of the target."""
    with _legacy_db(path, CUSTOMER_VERSIONS) as conn:
        quota: int | None = None
        if _has_table(conn, "settings"):
            row = conn.execute("SELECT value FROM settings WHERE key = 'quota_bytes'").fetchone()
            quota = int(row[0]) if row else None
        # Round 1 kept no creation time per customer: its first repository or blob is one.
        first = conn.execute(
            "SELECT MIN(t) FROM (SELECT MIN(created_at) AS t FROM repositories "
            "UNION ALL SELECT MIN(created_at) FROM blobs)"
        ).fetchone()[0]
        created = float(first) if first is not None else time.time()
        async with db.transaction() as tx:
            await _insert(
                tx, report, "customers",
                "INSERT INTO customers (name, quota_bytes, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, quota, created),
            )
            customer_id = int(await tx.fetchval("SELECT id FROM customers WHERE name = ?", (name,)))
            if quota is not None:
                # `dockyard quota set` of round 1; one set on the new store since is kept.
                await tx.execute(
                    "UPDATE customers SET quota_bytes = ? WHERE id = ? AND quota_bytes IS NULL",
                    (quota, customer_id),
                )
            repo_ids = await _import_repositories(tx, conn, name, customer_id, report)
            await _import_blobs(tx, conn, customer_id, repo_ids, sizes, report)
            await _import_manifests(tx, conn, customer_id, repo_ids, report)
            uploads = conn.execute("SELECT COUNT(*) FROM uploads").fetchone()[0]
            if uploads:
                report.notes.append(
                    f"{name}: {uploads} upload(s) in flight dropped (clients start them again)"
                )


async def _import_repositories(
    tx: Transaction, conn: sqlite3.Connection, customer: str, customer_id: int,
    report: ImportReport,
) -> dict[int, int]:
    """Old repository id → new one. `pushed_at` (new) is the last manifest or tag write."""
    repo_ids: dict[int, int] = {}
    rows = conn.execute(
        "SELECT r.id, r.name, r.created_at, MAX("
        "  COALESCE((SELECT MAX(created_at) FROM manifests m WHERE m.repo_id = r.id), 0),"
        "  COALESCE((SELECT MAX(updated_at) FROM tags t WHERE t.repo_id = r.id), 0)) "
        "FROM repositories r ORDER BY r.id"
    ).fetchall()
    for old_id, repo, created_at, pushed in rows:
        pushed_at = float(pushed) if pushed else None
        await _insert(
            tx, report, "repositories",
            "INSERT INTO repositories (customer_id, name, created_at, pushed_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (customer_id, repo, float(created_at), pushed_at),
        )
        found = await tx.fetchone(
            "SELECT id, customer_id FROM repositories WHERE name = ?", (repo,)
        )
        assert found is not None
        if int(found[1]) != customer_id:
            # One-part names belong to [registry] default_customer: a changed default, or a
            # repository created on the new store first, would put it under another customer.
            raise LegacyError(
                f"repository {repo} of customer {customer} already belongs to another customer "
                "in the state store; nothing of this customer was imported"
            )
        if pushed_at is not None:
            await tx.execute(
                "UPDATE repositories SET pushed_at = ? WHERE id = ? "
                "AND (pushed_at IS NULL OR pushed_at < ?)",
                (pushed_at, int(found[0]), pushed_at),
            )
        repo_ids[int(old_id)] = int(found[0])
    return repo_ids


async def _import_blobs(
    tx: Transaction, conn: sqlite3.Connection, customer_id: int, repo_ids: dict[int, int],
    sizes: dict[str, int], report: ImportReport,
) -> None:
    report.touch("held_blobs")
    report.touch("repo_blobs")
    held: set[str] = set()
    for batch in _batches(conn, "SELECT digest, size, created_at FROM blobs"):
        for digest, size, created_at in batch:
            held.add(digest)
            await _insert(
                tx, report, "held_blobs",
                "INSERT INTO held_blobs (customer_id, digest, size, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (customer_id, digest) DO NOTHING",
                (customer_id, digest, int(size), float(created_at)),
            )
    manifest_sizes = dict(conn.execute("SELECT digest, size FROM manifests").fetchall())
    for batch in _batches(conn, "SELECT repo_id, digest, created_at FROM repo_blobs"):
        for old_repo, digest, created_at in batch:
            if digest not in held:
                # The new schema reads a link through the customer's held row (size and
                # quota come from there): a link round 1 kept without one gets it here.
                size = sizes.get(digest, manifest_sizes.get(digest))
                if size is None:
                    report.notes.append(f"link of unknown blob {digest} skipped (no size)")
                    continue
                held.add(digest)
                await _insert(
                    tx, report, "held_blobs",
                    "INSERT INTO held_blobs (customer_id, digest, size, created_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (customer_id, digest) DO NOTHING",
                    (customer_id, digest, int(size), float(created_at)),
                )
            await _insert(
                tx, report, "repo_blobs",
                "INSERT INTO repo_blobs (repo_id, customer_id, digest, linked_at, deleted) "
                "VALUES (?, ?, ?, ?, 0) ON CONFLICT (repo_id, digest) DO NOTHING",
                (repo_ids[int(old_repo)], customer_id, digest, float(created_at)),
            )


def _derived_refs(payload: bytes, media_type: str) -> set[tuple[str, str]] | None:
    """What the new code records for this manifest: every referenced blob, foreign layers
    included (round 1 recorded only the blobs it linked). None when it no longer parses."""
    try:
        parsed = parse_manifest(payload, media_type)
    except Exception:  # a manifest round 1 accepted and the stricter parser refuses
        return None
    refs = {(d.digest, "blob") for d in parsed.blobs}
    refs |= {(c.digest, "manifest") for c in parsed.children}
    if parsed.subject:
        refs.add((parsed.subject.digest, "subject"))
    return refs


async def _import_manifests(
    tx: Transaction, conn: sqlite3.Connection, customer_id: int, repo_ids: dict[int, int],
    report: ImportReport,
) -> None:
    for table in ("manifests", "manifest_refs", "tags"):
        report.touch(table)
    refs: dict[tuple[int, str], set[tuple[str, str]]] = {}
    for batch in _batches(conn, "SELECT repo_id, manifest, ref, kind FROM manifest_refs"):
        for old_repo, manifest, ref, kind in batch:
            refs.setdefault((int(old_repo), manifest), set()).add((ref, kind))
    unparsed = 0
    for batch in _batches(
        conn,
        "SELECT repo_id, digest, media_type, size, payload, artifact_type, subject, annotations, "
        "created_at FROM manifests",
    ):
        for old_repo, digest, media_type, size, payload, artifact, subject, notes, created in batch:
            repo_id = repo_ids[int(old_repo)]
            await _insert(
                tx, report, "manifests",
                "INSERT INTO manifests (repo_id, customer_id, digest, media_type, size, payload, "
                "artifact_type, subject, annotations, created_at) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (repo_id, digest) DO NOTHING",
                (repo_id, customer_id, digest, media_type, int(size), bytes(payload), artifact,
                 subject, notes, float(created)),
            )
            derived = _derived_refs(bytes(payload), media_type)
            if derived is None:
                unparsed += 1
            wanted = refs.pop((int(old_repo), digest), set()) | (derived or set())
            for ref, kind in sorted(wanted):
                await _insert(
                    tx, report, "manifest_refs",
                    "INSERT INTO manifest_refs (repo_id, manifest, ref, kind) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (repo_id, digest, ref, kind),
                )
    # Refs of a manifest that is gone: round 1 deleted both together, but copy what is there.
    for (old_repo, digest), left in refs.items():
        for ref, kind in sorted(left):
            await _insert(
                tx, report, "manifest_refs",
                "INSERT INTO manifest_refs (repo_id, manifest, ref, kind) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (repo_ids[old_repo], digest, ref, kind),
            )
    if unparsed:
        report.notes.append(f"{unparsed} manifest(s) kept with round 1's refs only (unparsable)")
    for batch in _batches(conn, "SELECT repo_id, name, digest, updated_at FROM tags"):
        for old_repo, tag, digest, updated_at in batch:
            await _insert(
                tx, report, "tags",
                "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (repo_id, name) DO NOTHING",
                (repo_ids[int(old_repo)], tag, digest, float(updated_at)),
            )


# The accounts tables: old name, new name, columns (old → new where they differ), key.
AUTH_TABLES: list[tuple[str, str, list[tuple[str, str]], str]] = [
    ("customers", "auth_customers", [("name", "name"), ("created_at", "created_at")], "name"),
    ("users", "auth_users",
     [("name", "name"), ("password_hash", "password_hash"), ("created_at", "created_at")],
     "name"),
    ("memberships", "auth_memberships",
     [("user", "username"), ("customer", "customer"), ("role", "role")],
     "username, customer"),
    ("robots", "auth_robots",
     [("name", "name"), ("customer", "customer"), ("secret_hash", "secret_hash"),
      ("patterns", "patterns"), ("actions", "actions"), ("created_at", "created_at")],
     "name"),
    ("public_repositories", "auth_public_repositories",
     [("name", "name"), ("customer", "customer"), ("created_at", "created_at")], "name"),
    ("refresh_tokens", "auth_refresh_tokens",
     [("token_hash", "token_hash"), ("subject", "subject"), ("service", "service"),
      ("client_id", "client_id"), ("created_at", "created_at"), ("expires_at", "expires_at"),
      ("last_used_at", "last_used_at")],
     "token_hash"),
]
# Columns holding unix seconds as integers (BIGINT on PostgreSQL).
AUTH_INTEGERS = {"created_at", "expires_at", "last_used_at"}


async def _import_accounts(db: Database, path: Path, report: ImportReport) -> None:
    with _legacy_db(path, (KNOWN_VERSION,)) as conn:
        async with db.transaction() as tx:
            # Parents first: memberships, robots and public marks reference them.
            for old, new, columns, key in AUTH_TABLES:
                report.touch(new)
                old_cols = ", ".join(f'"{o}"' for o, _ in columns)
                new_cols = ", ".join(n for _, n in columns)
                marks = ", ".join("?" for _ in columns)
                sql = (
                    f"INSERT INTO {new} ({new_cols}) VALUES ({marks}) "
                    f"ON CONFLICT ({key}) DO NOTHING"
                )
                for batch in _batches(conn, f"SELECT {old_cols} FROM {old}"):
                    for row in batch:
                        values = tuple(
                            _i(v) if n in AUTH_INTEGERS else v
                            for (_, n), v in zip(columns, row, strict=True)
                        )
                        await _insert(tx, report, new, sql, values)


async def _import_events(db: Database, path: Path, report: ImportReport) -> None:
    """The outbox in one transaction. Pending and failed deliveries stay as they were (their
    attempts count and next attempt too), without the leases of processes that are gone."""
    for table in ("events", "deliveries", "attempts", "subscribers"):
        report.touch(table)
    with _legacy_db(path, (KNOWN_VERSION,)) as conn:
        async with db.transaction() as tx:
            # Take the clock's row first: publishers wait for this transaction (PostgreSQL).
            await tx.execute("UPDATE event_clock SET seq = seq WHERE id = 1")
            clock = int(await tx.fetchval("SELECT seq FROM event_clock WHERE id = 1"))
            seqs: dict[int, int] = {}  # old seq → new seq
            for batch in _batches(
                conn,
                "SELECT seq, id, created, action, kind, customer, repository, tag, digest, "
                "media_type, body FROM events ORDER BY seq",
            ):
                for row in batch:
                    old_seq, event_id = int(row[0]), row[1]
                    found = await tx.fetchval("SELECT seq FROM events WHERE id = ?", (event_id,))
                    if found is not None:
                        seqs[old_seq] = int(found)
                        report.add("events", 0)
                        continue
                    # Keep the old number on a fresh store (subscribers' cursors and `since`
                    # positions stay valid); after events of the new store, number on from it.
                    seq = old_seq if old_seq > clock else clock + 1
                    clock = seq
                    seqs[old_seq] = seq
                    await _insert(
                        tx, report, "events",
                        "INSERT INTO events (seq, id, created, action, kind, customer, "
                        "repository, tag, digest, media_type, body) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, event_id, float(row[2]), *row[3:]),
                    )
            await tx.execute("UPDATE event_clock SET seq = ? WHERE id = 1 AND seq < ?",
                             (clock, clock))
            await _import_deliveries(tx, conn, seqs, report)
            for name, cursor, updated in conn.execute(
                "SELECT name, cursor, updated FROM subscribers"
            ).fetchall():
                await _insert(
                    tx, report, "subscribers",
                    "INSERT INTO subscribers (name, cursor, lease_owner, lease_until, updated) "
                    "VALUES (?, ?, NULL, 0, ?) ON CONFLICT (name) DO NOTHING",
                    (name, _cursor(int(cursor), seqs, clock), float(updated)),
                )


def _cursor(old: int, seqs: dict[int, int], clock: int) -> int:
    """A subscriber's position in new numbers: after the last event it had consumed."""
    before = [new for o, new in seqs.items() if o <= old]
    if before:
        return max(before)
    after = [new for o, new in seqs.items() if o > old]
    return min(after) - 1 if after else clock


async def _import_deliveries(
    tx: Transaction, conn: sqlite3.Connection, seqs: dict[int, int], report: ImportReport
) -> None:
    attempts: dict[int, list[tuple]] = {}
    for batch in _batches(
        conn, "SELECT delivery_id, started, duration, status_code, error, owner FROM attempts "
        "ORDER BY id",
    ):
        for row in batch:
            attempts.setdefault(int(row[0]), []).append(row[1:])
    for batch in _batches(
        conn,
        "SELECT id, event_seq, endpoint, repository, status, attempts, next_attempt, "
        "last_status, last_error, created, updated FROM deliveries ORDER BY id",
    ):
        for (old_id, old_seq, endpoint, repo, status, count, next_attempt, last_status,
             last_error, created, updated) in batch:
            seq = seqs.get(int(old_seq))
            if seq is None:
                continue  # its event is gone (cascade in round 1 makes this not happen)
            changed = await _insert(
                tx, report, "deliveries",
                "INSERT INTO deliveries (event_seq, endpoint, repository, status, attempts, "
                "next_attempt, lease_owner, lease_until, last_status, last_error, created, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, NULL, 0, ?, ?, ?, ?) "
                "ON CONFLICT (event_seq, endpoint) DO NOTHING",
                (seq, endpoint, repo, status, int(count), float(next_attempt),
                 _i(last_status), last_error, float(created), float(updated)),
            )
            if not changed:
                continue  # imported before, with its log: attempts have no key to match on
            new_id = int(await tx.fetchval(
                "SELECT id FROM deliveries WHERE event_seq = ? AND endpoint = ?", (seq, endpoint)
            ))
            for started, duration, code, error, owner in attempts.get(int(old_id), []):
                await _insert(
                    tx, report, "attempts",
                    "INSERT INTO attempts (delivery_id, started, duration, status_code, error, "
                    "owner) VALUES (?, ?, ?, ?, ?, ?)",
                    (new_id, float(started), float(duration), _i(code), error, owner),
                )


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An old file that cannot be read (damaged, not round 1's) is named in the error."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise LegacyError(f"{path}: {exc}") from exc


def _rename(path: Path, report: ImportReport) -> None:
    """Mark a file imported: `x.db` → `x.db.imported`, with its WAL files if any remain (so
    the renamed copy still opens with everything it held)."""
    for suffix in ("-wal", "-shm", ""):
        part = path.with_name(path.name + suffix)
        if part.exists():
            target = path.with_name(path.name + SUFFIX + suffix)
            part.rename(target)
            if not suffix:
                report.renamed.append(target)


async def import_legacy(
    db: Database, data_dir: Path, out: Callable[[str], None] = print
) -> ImportReport:
    layout = detect(data_dir)
    report = ImportReport()
    if not layout:
        return report
    await _migrate(db)
    if layout.index is not None:
        out(f"importing {layout.index}")
        with _naming(layout.index):
            await _import_index(db, layout.index, report)
            # Sizes for links that lack a held row (see _import_blobs).
            sizes = _index_sizes(layout.index)
    else:
        sizes = {}
    for name, path in layout.customers:
        out(f"importing customer {name} ({path})")
        with _naming(path):
            await _import_customer(db, name, path, sizes, report)
    if layout.accounts is not None:
        out(f"importing {layout.accounts}")
        with _naming(layout.accounts):
            await _import_accounts(db, layout.accounts, report)
    if layout.events is not None:
        out(f"importing {layout.events}")
        with _naming(layout.events):
            await _import_events(db, layout.events, report)
    # Only now, with every transaction committed: a failure above leaves every file in place
    # and the next run finds what was committed.
    for path in layout.files():
        _rename(path, report)
    return report


# -- the command ----------------------------------------------------------------------------------


def register(
    commands: argparse._SubParsersAction, common: Callable, config_from: Callable
) -> None:
    """`dockyard metadata import-legacy`, beside `dockyard metadata migrate`."""
    p = commands.add_parser(
        "import-legacy",
        help="import the metadata files of a round-1 data directory into the state store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=lambda args: cmd_import_legacy(config_from(args), args))


def cmd_import_legacy(config: Config, args: argparse.Namespace) -> int:
    layout = detect(config.data_dir)
    if not layout:
        print(f"nothing to import: {config.data_dir} holds no round-1 metadata files")
        return 0

    async def work() -> ImportReport:
        db = await open_state(config)
        try:
            print(f"importing into {describe_state(config)}")
            return await import_legacy(db, config.data_dir)
        finally:
            await db.close()

    try:
        report = asyncio.run(work())
    except (LegacyError, DatabaseError, sqlite3.DatabaseError) as exc:
        print(f"dockyard: import failed: {exc}", file=sys.stderr)
        print("dockyard: nothing was renamed; what was committed is kept and skipped when the "
              "command is run again", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(summary(report), indent=2))
    else:
        for table, count in report.counts.items():
            print(f"{table}: {count.imported} imported, {count.present} already present")
    for note in report.notes:
        print(f"note: {note}")
    for path in report.renamed:
        print(f"renamed {path}")
    launcher = config.data_dir / "launcher" / "launcher.db"
    if launcher.exists():
        print(f"{launcher}: left in place (the launcher still reads it there)")
    print("done: `dockyard serve` starts on this data directory now")
    return 0


def summary(report: ImportReport) -> dict[str, Any]:
    """The counts as plain data (tests, JSON output)."""
    return {t: {"imported": c.imported, "present": c.present} for t, c in report.counts.items()}


__all__ = [
    "ImportReport",
    "LegacyError",
    "LegacyLayout",
    "cmd_import_legacy",
    "detect",
    "import_legacy",
    "refusal",
    "register",
    "summary",
]
