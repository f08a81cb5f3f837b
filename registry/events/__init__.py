"""Registry events: a durable outbox, signed webhook delivery and an in-process subscription.

Wiring (the composition root does this once per process)::

    outbox = await open_events(db, settings, source_addr="host:5000", instance_id=uuid)
    await outbox.start()                 # dispatcher: delivers to the configured endpoints
    ...
    await outbox.add(tx, RegistryEvent(...))   # in the transaction of the change it reports
    ...
    await outbox.close()                 # on shutdown

See README.md in this folder for the envelope, the signature and the operations.
"""

from __future__ import annotations

from pathlib import Path

from dockyard.core.envelope import EnvelopeError, parse_envelope
from dockyard.core.sql import Database
from registry.events.config import ConfigError, EndpointConfig, NotificationSettings
from registry.events.model import RegistryEvent, RequestRecord
from registry.events.outbox import EventOutbox

__all__ = [
    "ConfigError",
    "EndpointConfig",
    "EnvelopeError",
    "EventOutbox",
    "NotificationSettings",
    "RegistryEvent",
    "RequestRecord",
    "open_events",
    "parse_envelope",
]


async def open_events(
    target: Database | Path,
    settings: NotificationSettings,
    *,
    source_addr: str,
    instance_id: str,
) -> EventOutbox:
    """Open the outbox on `target` (the shared Database, or a data dir's embedded one),
    migrating its tables; the dispatcher is not started.

    `source_addr` and `instance_id` fill every event's `source` record (spec:
    distribution-notifications.md, "Events"): the address this registry is reached at and an id
    for this process.
    """
    return await EventOutbox.open(
        target, settings, source_addr=source_addr, instance_id=instance_id
    )
