"""What the registry tells the events package about a change: a plain, immutable record.

The registry builds a `RegistryEvent` for every manifest (and, where configured, blob) push,
delete, pull or mount and hands it to `EventOutbox.publish`. Nothing here knows about HTTP
delivery or storage; the envelope module turns it into the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("push", "delete", "pull", "mount")
KINDS = ("manifest", "blob")


@dataclass(frozen=True)
class RequestRecord:
    """The HTTP request that caused the event (distribution's `RequestRecord`)."""

    id: str
    addr: str
    host: str
    method: str
    useragent: str


@dataclass(frozen=True)
class RegistryEvent:
    action: str  # "push" | "delete" | "pull" | "mount"
    customer: str
    repository: str  # full name, e.g. "acme/web"
    digest: str
    media_type: str  # "" when unknown (delete by digest)
    size: int  # 0 when unknown
    tag: str | None
    url: str  # e.g. "http://HOST/v2/acme/web/manifests/sha256:…"
    request: RequestRecord
    actor: str | None  # authenticated subject, None when anonymous / auth off
    kind: str = "manifest"  # "manifest" | "blob"
