"""The registry's side of the wire format: a `RegistryEvent` shaped as the reference registry
shapes its events (spec: distribution-notifications.md, "Events")."""

from __future__ import annotations

from typing import Any

from dockyard.core.envelope import rfc3339
from registry.events.model import RegistryEvent


def build_event(
    event: RegistryEvent,
    *,
    event_id: str,
    timestamp: float,
    source_addr: str,
    instance_id: str,
) -> dict[str, Any]:
    """The event object exactly as the reference registry shapes it (empty fields omitted)."""
    target: dict[str, Any] = {}
    # Go's `omitempty`: the reference sends only digest and repository for deletes by digest.
    if event.media_type:
        target["mediaType"] = event.media_type
    if event.size:
        target["size"] = event.size
    if event.digest:
        target["digest"] = event.digest
    if event.size:
        target["length"] = event.size  # deprecated alias of size; still sent by the reference
    target["repository"] = event.repository
    if event.url:
        target["url"] = event.url
    if event.tag:
        target["tag"] = event.tag
    target["customer"] = event.customer
    req = event.request
    return {
        "id": event_id,
        "timestamp": rfc3339(timestamp),
        "action": event.action,
        "target": target,
        "request": {
            "id": req.id,
            "addr": req.addr,
            "host": req.host,
            "method": req.method,
            "useragent": req.useragent,
        },
        "actor": {"name": event.actor} if event.actor else {},
        "source": {"addr": source_addr, "instanceID": instance_id},
    }
