"""Push events in the notification envelope of the reference registry, and who may send them.

spec: distribution-notifications.md "Events" / "Envelope". A registry sends
`{"events": [...]}` with media type application/vnd.docker.distribution.events.v2+json; only
manifest pushes that carry a tag can trigger a deployment (layer pushes and pulls arrive in the
same stream and are ignored). The spec asks endpoints not to be picky, so anything unusable in an
event is skipped rather than refused.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from dockyard.core import signing
from dockyard.core.oci import MANIFEST_TYPES, is_digest_valid, is_repository_name, is_tag

MAX_ENVELOPE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Push:
    event_id: str | None
    repository: str
    tag: str
    digest: str
    registry: str | None  # host[:port] the event says the manifest lives at


def pushes(envelope: Any) -> list[Push]:
    if not isinstance(envelope, dict) or not isinstance(envelope.get("events"), list):
        return []
    out = []
    for event in envelope["events"]:
        if not isinstance(event, dict) or event.get("action") != "push":
            continue
        target = event.get("target")
        if not isinstance(target, dict):
            continue
        if target.get("mediaType") not in MANIFEST_TYPES:
            continue
        repository, tag, digest = target.get("repository"), target.get("tag"), target.get("digest")
        if not (
            isinstance(repository, str)
            and is_repository_name(repository)
            and isinstance(tag, str)
            and is_tag(tag)
            and isinstance(digest, str)
            and is_digest_valid(digest)
        ):
            continue
        registry = None
        url = target.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            registry = urlsplit(url).netloc or None
        if registry is None:
            request = event.get("request")
            if isinstance(request, dict) and isinstance(request.get("host"), str):
                registry = request["host"] or None
        event_id = event.get("id") if isinstance(event.get("id"), str) else None
        out.append(Push(event_id, repository, tag, digest, registry))
    return out


def authorized(
    headers: Any,
    body: bytes,
    secret: str | None,
    hmac_key: str | None,
    *,
    now: float | None = None,
) -> bool:
    """A shared secret as `Authorization: Bearer …` (what distribution's endpoint `headers` can
    send), or an HMAC-SHA256 signature of the raw body (Dockyard-Signature or GitHub's)."""
    if secret:
        given = headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), secret.encode()
        ):
            return True
    if hmac_key:
        if signing.verify(hmac_key, headers.get(signing.SIGNATURE_HEADER), body, now=now):
            return True
        given = headers.get(signing.GITHUB_SIGNATURE_HEADER)
        if given and hmac.compare_digest(
            given.strip().encode(), signing.github_signature(hmac_key, body).encode()
        ):
            return True
    return False
