"""Push events in the notification envelope of the reference registry, and who may send them.

spec: distribution-notifications.md "Events" / "Envelope". A registry sends
`{"events": [...]}` with media type application/vnd.docker.distribution.events.v2+json; only
manifest pushes that carry a tag can trigger a deployment (layer pushes and pulls arrive in the
same stream and are ignored). The spec asks endpoints not to be picky, so anything unusable in an
event is skipped rather than refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from launcher.model import DIGEST_RE, REPOSITORY_RE

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
MANIFEST_MEDIA_TYPES = frozenset({
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
})
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# dockyard's outbox signs `Dockyard-Signature: t=<unix>,v1=<hex HMAC of "t." + body>` (several
# v1 during a key rotation); GitHub-style senders use `X-Hub-Signature-256: sha256=<hex>`.
SIGNATURE_HEADER = "Dockyard-Signature"
GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
SIGNATURE_TOLERANCE = 300.0  # seconds; an older signed delivery may be a replay
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
        if target.get("mediaType") not in MANIFEST_MEDIA_TYPES:
            continue
        repository, tag, digest = target.get("repository"), target.get("tag"), target.get("digest")
        if not (isinstance(repository, str) and REPOSITORY_RE.match(repository)
                and isinstance(tag, str) and TAG_RE.match(tag)
                and isinstance(digest, str) and DIGEST_RE.match(digest)):
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


def authorized(headers: Any, body: bytes, secret: str | None, hmac_key: str | None,
               *, now: float | None = None) -> bool:
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
        if _dockyard_signature_ok(hmac_key, headers.get(SIGNATURE_HEADER), body, now):
            return True
        given = headers.get(GITHUB_SIGNATURE_HEADER)
        if given and hmac.compare_digest(given.strip().encode(),
                                         github_signature(hmac_key, body).encode()):
            return True
    return False


def _hmac(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def _dockyard_signature_ok(key: str, header: str | None, body: bytes, now: float | None) -> bool:
    if not header:
        return False
    stamp, candidates = None, []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            stamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if stamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - stamp) > SIGNATURE_TOLERANCE:
        return False
    expected = _hmac(key, str(stamp).encode() + b"." + body)
    return any(hmac.compare_digest(expected.encode(), c.encode()) for c in candidates)


def dockyard_signature(key: str, body: bytes, stamp: int | None = None) -> str:
    """The Dockyard-Signature value a sender puts on `body` (tests, scripts)."""
    stamp = int(time.time()) if stamp is None else stamp
    return f"t={stamp},v1={_hmac(key, str(stamp).encode() + b'.' + body)}"


def github_signature(key: str, body: bytes) -> str:
    return "sha256=" + _hmac(key, body)
