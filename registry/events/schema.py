"""The outbox's tables (component "events" of the state store, beside the registry's own, so
an event is committed in the same transaction as the change it reports).

- `events`: one row per published event; `seq` orders them, `id` is the stable event id and
  `body` the event object as JSON (the reference registry's shape). `seq` comes from the
  one-row `event_clock`, updated inside the publishing transaction: its row lock makes
  publishers take numbers in commit order, so a reader following `seq` never skips an event
  that commits late (an identity column would hand out numbers in start order).
- `deliveries`: one row per (event, endpoint); `status` is pending | failed | delivered | dead.
  `failed` means "last attempt failed, another is scheduled at `next_attempt`". A process that
  works on a row holds it by writing `lease_owner`/`lease_until`; others skip leased rows.
- `attempts`: the delivery log, one row per HTTP attempt.
- `subscribers`: durable cursors of in-process subscriptions (the launcher), with a lease so
  that only one process consumes a subscription at a time.
"""

from __future__ import annotations

STEPS: list[str] = [
    """
    CREATE TABLE event_clock (
        id SMALLINT PRIMARY KEY,
        seq BIGINT NOT NULL
    );
    INSERT INTO event_clock (id, seq) VALUES (1, 0);
    CREATE TABLE events (
        seq BIGINT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        created DOUBLE PRECISION NOT NULL,
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
        id {serial},
        event_seq BIGINT NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
        endpoint TEXT NOT NULL,
        repository TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_status BIGINT,
        last_error TEXT,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        UNIQUE (event_seq, endpoint)
    );
    -- Queue heads: the oldest open delivery of each (endpoint, repository).
    CREATE INDEX deliveries_open ON deliveries (endpoint, repository, event_seq)
        WHERE status IN ('pending', 'failed');
    CREATE INDEX deliveries_endpoint_status ON deliveries (endpoint, status, event_seq);
    CREATE TABLE attempts (
        id {serial},
        delivery_id BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
        started DOUBLE PRECISION NOT NULL,
        duration DOUBLE PRECISION NOT NULL,
        status_code BIGINT,
        error TEXT,
        owner TEXT NOT NULL
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id, id);
    CREATE TABLE subscribers (
        name TEXT PRIMARY KEY,
        cursor BIGINT NOT NULL,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        updated DOUBLE PRECISION NOT NULL
    );
    """,
]
