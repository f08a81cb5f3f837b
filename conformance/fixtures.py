"""Content the checks push: blobs, configs and manifests of every media type.

Everything is random per run (layer bytes, config, annotations) so runs against the same
registry never collide and a registry cannot pass by having seen the content before.
Manifests are serialised with unusual indentation so a registry that re-encodes JSON instead of
storing the exact bytes (Push › Pushing Manifests) is caught.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import secrets
import tarfile
from dataclasses import dataclass
from typing import Any

# Media types (OCI image spec media-types.md, Docker manifest v2 schema 2).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
# What a client that understands every manifest type sends (Pull › Pulling manifests).
ACCEPT_ALL = ", ".join(MANIFEST_TYPES)

EMPTY_JSON = b"{}"  # image-manifest.md, Guidance for an Empty Descriptor


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def random_digest(algorithm: str = "sha256") -> str:
    """A well-formed digest of content that exists nowhere."""
    return digest(secrets.token_bytes(32), algorithm)


def run_id() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str = "application/octet-stream"
    algorithm: str = "sha256"
    urls: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return digest(self.data, self.algorithm)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                             "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        d.update(extra)
        return d


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    algorithm: str = "sha256"
    # What the manifest references, so a check can push them first.
    blobs: tuple[Blob, ...] = ()
    children: tuple[Manifest, ...] = ()

    @property
    def digest(self) -> str:
        return digest(self.body, self.algorithm)

    @property
    def size(self) -> int:
        return len(self.body)

    def doc(self) -> dict[str, Any]:
        return json.loads(self.body)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                             "size": self.size}
        d.update(extra)
        return d

    def with_algorithm(self, algorithm: str) -> Manifest:
        return Manifest(self.body, self.media_type, algorithm, self.blobs, self.children)


def encode(doc: dict[str, Any]) -> bytes:
    # Three-space indent and a trailing newline: valid JSON that no encoder emits by default.
    return (json.dumps(doc, indent=3) + "\n").encode()


def random_blob(size: int = 1024, algorithm: str = "sha256") -> Blob:
    return Blob(os.urandom(size), algorithm=algorithm)


def layer(size: int = 2048, media_type: str = OCI_LAYER_GZIP) -> tuple[Blob, str]:
    """A real gzipped tar with one random file; returns the blob and its diff_id."""
    payload = os.urandom(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(f"conformance-{secrets.token_hex(4)}.bin")
        info.size = len(payload)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    return Blob(gzip.compress(tar_bytes, mtime=0), media_type), digest(tar_bytes)


def config(diff_ids: list[str], media_type: str = OCI_CONFIG) -> Blob:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [f"CONFORMANCE_RUN={secrets.token_hex(8)}"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return Blob(json.dumps(doc).encode(), media_type)


def empty_blob() -> Blob:
    return Blob(EMPTY_JSON, OCI_EMPTY)


def image(layers: int = 2, *, annotations: dict[str, str] | None = None,
          subject: Manifest | None = None, docker: bool = False) -> Manifest:
    """An OCI image manifest (or Docker schema 2 with docker=True) with fresh config and layers."""
    layer_type = DOCKER_LAYER if docker else OCI_LAYER_GZIP
    made = [layer(1024 + 512 * i, layer_type) for i in range(layers)]
    cfg = config([d for _, d in made], DOCKER_CONFIG if docker else OCI_CONFIG)
    return image_of(cfg, [b for b, _ in made], annotations=annotations, subject=subject,
                    docker=docker)


def image_of(cfg: Blob, layers: list[Blob], *, annotations: dict[str, str] | None = None,
             subject: Manifest | None = None, docker: bool = False,
             artifact_type: str | None = None, upload: list[Blob] | None = None) -> Manifest:
    """An image manifest over given blobs; `upload` overrides which blobs must be pushed."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = cfg.descriptor()
    doc["layers"] = [b.descriptor() for b in layers]
    if subject is not None:
        doc["subject"] = subject.descriptor()
    if annotations:
        doc["annotations"] = annotations
    blobs = tuple(upload if upload is not None else [cfg, *layers])
    return Manifest(encode(doc), doc["mediaType"], blobs=_unique(blobs))


def artifact(artifact_type: str, *, subject: Manifest | None = None,
             annotations: dict[str, str] | None = None, with_layer: bool = True) -> Manifest:
    """An artifact: image manifest with artifactType and the empty config (image-manifest.md,
    Guidelines for Artifact Usage)."""
    empty = empty_blob()
    layers = [Blob(os.urandom(256), "application/vnd.conformance.payload")] if with_layer else []
    return image_of(empty, layers or [empty], annotations=annotations, subject=subject,
                    artifact_type=artifact_type)


def index(children: list[Manifest], *, docker: bool = False, subject: Manifest | None = None,
          artifact_type: str | None = None,
          annotations: dict[str, str] | None = None) -> Manifest:
    platforms = [("amd64", None), ("arm64", "v8"), ("arm", "v7"), ("s390x", None)]
    entries = []
    for i, child in enumerate(children):
        arch, variant = platforms[i % len(platforms)]
        platform: dict[str, str] = {"architecture": arch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        entries.append(child.descriptor(platform=platform))
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST if docker else OCI_INDEX,
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["manifests"] = entries
    if subject is not None:
        doc["subject"] = subject.descriptor()
    if annotations:
        doc["annotations"] = annotations
    return Manifest(encode(doc), doc["mediaType"], children=tuple(children))


def oversized_image(target_size: int) -> Manifest:
    """A valid image manifest padded with an annotation to at least target_size bytes."""
    base = image(1)
    doc = base.doc()
    doc["annotations"] = {"org.example.padding": ""}
    pad = target_size - len(encode(doc)) + 1
    doc["annotations"]["org.example.padding"] = base64.b64encode(os.urandom(pad))[:pad].decode()
    return Manifest(encode(doc), OCI_MANIFEST, blobs=base.blobs)


def _unique(blobs: tuple[Blob, ...]) -> tuple[Blob, ...]:
    seen: dict[str, Blob] = {}
    for b in blobs:
        seen.setdefault(b.digest, b)
    return tuple(seen.values())
