"""The registry's tables (component "registry" of the state store), as versioned steps.

Every customer's rows live in the same tables, each carrying the customer's id: a customer is a
key, not a file, so 500 active customers cost what one does (one connection, one statement
cache, one writer). Tenant isolation is a rule of the code that reads them (tenant.py).

- customers: one row per customer that ever held anything; `quota_bytes` set by `dockyard quota`.
- repositories: names are unique across customers (the first component names the customer).
- held_blobs: the blobs a customer holds, in at least one repository (or until GC releases them).
- repo_blobs: which repository links which blob. `deleted = 1` is a tombstone: the blob was
  deleted from that repository explicitly, which hides customer-wide dedup there until the blob
  is linked into it again (spec: "Deleting Blobs"; issue 16).
- manifests / manifest_refs / tags: manifests with their payload, what each references ('blob',
  'manifest' for index children, 'subject'), and tags.
- uploads: upload sessions, with the driver's state and the saved hash state.
- blob_index: which stored object holds each digest, for every customer at once (stored once);
  `used_at` is refreshed whenever the registry relies on the row, and GC deletes only rows
  unused for its grace period.
"""

from __future__ import annotations

STEPS: list[str] = [
    """
    CREATE TABLE customers (
        id {serial},
        name TEXT NOT NULL UNIQUE,
        quota_bytes BIGINT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE repositories (
        id {serial},
        customer_id BIGINT NOT NULL REFERENCES customers (id),
        name TEXT {bytewise} NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        pushed_at DOUBLE PRECISION
    );
    CREATE INDEX repositories_customer ON repositories (customer_id, name);
    CREATE TABLE held_blobs (
        customer_id BIGINT NOT NULL,
        digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (customer_id, digest)
    ) {without_rowid};
    CREATE INDEX held_blobs_digest ON held_blobs (digest);
    CREATE TABLE repo_blobs (
        repo_id BIGINT NOT NULL,
        customer_id BIGINT NOT NULL,
        digest TEXT NOT NULL,
        linked_at DOUBLE PRECISION NOT NULL,
        deleted SMALLINT NOT NULL DEFAULT 0,
        PRIMARY KEY (repo_id, digest)
    ) {without_rowid};
    CREATE INDEX repo_blobs_customer_digest ON repo_blobs (customer_id, digest);
    CREATE TABLE manifests (
        repo_id BIGINT NOT NULL,
        customer_id BIGINT NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size BIGINT NOT NULL,
        payload {blob} NOT NULL,
        artifact_type TEXT,
        subject TEXT,
        annotations TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (repo_id, digest)
    );
    CREATE INDEX manifests_subject ON manifests (repo_id, subject);
    CREATE INDEX manifests_customer ON manifests (customer_id, created_at);
    CREATE TABLE manifest_refs (
        repo_id BIGINT NOT NULL,
        manifest TEXT NOT NULL,
        ref TEXT NOT NULL,
        kind TEXT NOT NULL,
        PRIMARY KEY (repo_id, manifest, ref, kind)
    ) {without_rowid};
    CREATE INDEX manifest_refs_ref ON manifest_refs (repo_id, ref);
    CREATE TABLE tags (
        repo_id BIGINT NOT NULL,
        name TEXT {bytewise} NOT NULL,
        digest TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (repo_id, name)
    ) {without_rowid};
    CREATE INDEX tags_digest ON tags (repo_id, digest);
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        repo_id BIGINT NOT NULL,
        customer_id BIGINT NOT NULL,
        algorithm TEXT NOT NULL,
        received BIGINT NOT NULL,
        driver TEXT NOT NULL,
        hash_state {blob},
        owner TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX uploads_customer ON uploads (customer_id);
    CREATE TABLE blob_index (
        digest TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        size BIGINT NOT NULL,
        used_at DOUBLE PRECISION NOT NULL
    ) {without_rowid};
    CREATE INDEX blob_index_key ON blob_index (key);
    """,
]
