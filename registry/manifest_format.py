"""Manifest parsing and validation: what a manifest is and what it references (the format;
registry/manifests.py is the service).

spec: oci-image-manifest.md, oci-image-image-index.md, docker-manifest-v2-2.md,
oci-distribution-spec.md "Pushing Manifests" and "Listing Referrers".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from dockyard.core.errors import ManifestInvalid
from dockyard.core.oci import (
    IMAGE_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_ARTIFACT,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_digest,
)

# Layers that registries need not hold: clients fetch them from `urls`.
# spec: oci-image-layer.md "Non-distributable layers", docker-manifest-v2-2.md "foreign" layers.
NON_DISTRIBUTABLE = (
    "application/vnd.oci.image.layer.nondistributable.",
    "application/vnd.docker.image.rootfs.foreign.",
)


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: list[str] = field(default_factory=list)

    @property
    def foreign(self) -> bool:
        return bool(self.urls) or self.media_type.startswith(NON_DISTRIBUTABLE)


@dataclass
class ParsedManifest:
    media_type: str
    blobs: list[Descriptor]
    children: list[Descriptor]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestInvalid(f"{where} is not a descriptor object")
    digest, size, media_type = obj.get("digest"), obj.get("size"), obj.get("mediaType")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where} has no digest")
    parse_digest(digest)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_INT64:
        raise ManifestInvalid(f"{where} has an invalid size")
    if media_type is not None and not isinstance(media_type, str):
        raise ManifestInvalid(f"{where} has an invalid mediaType")
    urls = obj.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestInvalid(f"{where} has invalid urls")
    return Descriptor(media_type or "", digest, size, urls)


def _annotations(obj: dict[str, Any]) -> dict[str, str] | None:
    ann = obj.get("annotations")
    if ann is None:
        return None
    if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
        raise ManifestInvalid("annotations must be a map of strings")
    return ann


MAX_INT64 = (1 << 63) - 1


class _NotStandardJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotStandardJson(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotStandardJson(f"number {text[:40]} does not fit a 64-bit float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _NotStandardJson(f"duplicate key {dup[:80]!r}")
    return obj


def strict_json(payload: bytes) -> Any:
    """Parse a manifest as strict parsers (Go's encoding/json, containerd) would: UTF-8 only,
    no NaN/Infinity, no number that overflows a float, no duplicate keys (RFC 8259 §4: names
    SHOULD be unique; two readers may otherwise see two different manifests behind one digest),
    and no nesting deep enough to exhaust the parser (RecursionError)."""
    try:
        text = payload.decode("utf-8")
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise ManifestInvalid("manifest is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        # _NotStandardJson, JSONDecodeError, UnicodeDecodeError, and int() refusing a number
        # of more than 4,300 digits are all ValueErrors.
        raise ManifestInvalid(f"manifest is not valid JSON: {str(exc)[:200]}") from None


def parse_manifest(payload: bytes, content_type: str) -> ParsedManifest:
    """Validate a pushed manifest and list its references.

    The media type is the manifest's `mediaType` field, else the request's Content-Type; when
    both are present they must agree (oci-distribution-spec.md "Pushing Manifests").
    """
    doc = strict_json(payload)
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest is not a JSON object")
    declared = doc.get("mediaType")
    header = content_type.split(";")[0].strip().lower()
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    if declared and header and header != declared and header not in ("application/json", "*/*"):
        raise ManifestInvalid(f"mediaType {declared!r} does not match Content-Type {header!r}")
    media_type = declared or header
    if not media_type or media_type == "application/json":
        # OCI manifests may omit mediaType; tell them apart by shape.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise ManifestInvalid(f"unsupported manifest media type {media_type!r}")
    if media_type != OCI_ARTIFACT and doc.get("schemaVersion") != 2:
        raise ManifestInvalid("schemaVersion must be 2")

    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    blobs: list[Descriptor] = []
    children: list[Descriptor] = []

    if media_type in IMAGE_TYPES:
        config = _descriptor(doc.get("config"), "config")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ManifestInvalid("layers must be a list")
        blobs = [config] + [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers)]
        # spec: oci-distribution-spec.md "Listing Referrers" — artifactType falls back to the
        # config media type for image manifests.
        if not artifact_type:
            artifact_type = config.media_type or None
    elif media_type in INDEX_TYPES:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise ManifestInvalid("manifests must be a list")
        children = [_descriptor(m, f"manifests[{i}]") for i, m in enumerate(manifests)]
    else:  # OCI artifact manifest (draft of image-spec 1.1, still sent by some clients)
        items = doc.get("blobs") or []
        if not isinstance(items, list):
            raise ManifestInvalid("blobs must be a list")
        blobs = [_descriptor(b, f"blobs[{i}]") for i, b in enumerate(items)]

    return ParsedManifest(media_type, blobs, children, subject, artifact_type, _annotations(doc))
