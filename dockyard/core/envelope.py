"""The wire format of events: the reference registry's notification envelope, and CloudEvents
around it.

spec: distribution-notifications.md, "Events" and "Envelope". An event is the JSON object the
reference registry (CNCF distribution) sends; dockyard adds `target.customer`, which consumers
that decode into distribution's Go structs (or any tolerant JSON reader) ignore.

`parse_envelope` is the one reader for every source: the launcher's webhook endpoint (dockyard's
deliveries in either format, the reference registry's) and the in-process subscription. It needs
only the standard library, so a consumer can copy this file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
CLOUDEVENTS_MEDIA_TYPE = "application/cloudevents+json"
CLOUDEVENTS_BATCH_MEDIA_TYPE = "application/cloudevents-batch+json"
CLOUDEVENTS_TYPE_PREFIX = "io.dockyard.registry"


class EnvelopeError(ValueError):
    """The body is not a notification envelope (nor a CloudEvent carrying one event)."""


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def envelope(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"events": events}


def event_kind(event: dict[str, Any]) -> str:
    """The kind of target, manifest or blob, read from its URL (the reference has no field)."""
    url = str(event.get("target", {}).get("url", ""))
    return "blob" if "/blobs/" in url else "manifest"


def cloudevent(event: dict[str, Any], *, kind: str | None = None) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode event whose `data` is the reference-shaped event."""
    target = event.get("target", {})
    source = event.get("source", {})
    subject = str(target.get("repository", ""))
    if target.get("tag"):
        subject += ":" + str(target["tag"])
    elif target.get("digest"):
        subject += "@" + str(target["digest"])
    return {
        "specversion": "1.0",
        "id": event["id"],
        "source": f"/dockyard/{source.get('instanceID') or source.get('addr') or 'registry'}",
        "type": f"{CLOUDEVENTS_TYPE_PREFIX}.{kind or event_kind(event)}.{event['action']}",
        "subject": subject,
        "time": event["timestamp"],
        "datacontenttype": "application/json",
        "data": event,
    }


def encode(document: dict[str, Any]) -> bytes:
    # Compact and deterministic: the exact bytes are what signatures cover.
    return json.dumps(document, separators=(",", ":"), sort_keys=False).encode()


def _normalise(event: Any, where: str) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise EnvelopeError(f"{where}: an event must be a JSON object")
    if not isinstance(event.get("action"), str) or not event["action"]:
        raise EnvelopeError(f"{where}: `action` is missing")
    target = event.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("repository"), str):
        raise EnvelopeError(f"{where}: `target.repository` is missing")
    if not isinstance(event.get("id"), str) or not event["id"]:
        raise EnvelopeError(f"{where}: `id` is missing")
    # spec: "Newer code should favor `size` but accept either" — give readers both.
    out = dict(event)
    out["target"] = dict(target)
    size = target.get("size", target.get("length"))
    if isinstance(size, int) and not isinstance(size, bool):
        out["target"]["size"] = size
        out["target"]["length"] = size
    for key in ("request", "actor", "source"):
        if not isinstance(out.get(key), dict):
            out[key] = {}
    return out


def parse_envelope(body: bytes) -> list[dict[str, Any]]:
    """The events in a notification body, each with `id`, `action`, `target.repository`.

    Accepts the reference envelope (`{"events": [...]}`), a CloudEvents structured event whose
    `data` is one such event, and a CloudEvents batch (a JSON array of those). Unknown fields are
    kept: consumers must tolerate what newer registries add (spec: "Responses").
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
    if isinstance(doc, list):
        return [_from_cloudevent(item, f"batch[{i}]") for i, item in enumerate(doc)]
    if not isinstance(doc, dict):
        raise EnvelopeError("expected a JSON object")
    if "specversion" in doc:
        return [_from_cloudevent(doc, "cloudevent")]
    events = doc.get("events")
    if not isinstance(events, list):
        raise EnvelopeError("`events` must be an array")
    return [_normalise(event, f"events[{i}]") for i, event in enumerate(events)]


def _from_cloudevent(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or "specversion" not in doc:
        raise EnvelopeError(f"{where}: not a CloudEvent")
    return _normalise(doc.get("data"), f"{where}.data")
