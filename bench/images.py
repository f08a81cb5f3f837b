"""Synthetic images for the benchmarks: OCI layouts (oci-image-layout.md) with random layers.

Layers are gzip tarballs of random bytes stored uncompressed (deflate level 0): valid for every
client, incompressible, and cheap to make. Each layer's diff id is right, so engines can load it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    data: bytes


@dataclass(frozen=True)
class Layer:
    blob: Blob
    diff_id: str


def blob(data: bytes) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data), data)


def random_layer(size: int, name: str) -> Layer:
    """A layer whose gzip blob is about `size` bytes of incompressible content."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        content = os.urandom(size - 4096)
        info = tarfile.TarInfo(f"data/{name}.bin")
        info.size = len(content)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    return Layer(blob(gzip.compress(raw, compresslevel=0, mtime=0)),
                 "sha256:" + hashlib.sha256(raw).hexdigest())


def image_config(layers: list[Layer]) -> Blob:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]},
        "config": {"Cmd": ["sh"]},
    }
    return blob(json.dumps(config).encode())


def manifest(config: Blob, layers: list[Blob]) -> Blob:
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config.digest, "size": config.size},
        "layers": [
            {"mediaType": LAYER_TYPE, "digest": b.digest, "size": b.size} for b in layers
        ],
    }
    return blob(json.dumps(doc).encode())


def _put(root: Path, b: Blob) -> None:
    path = root / "blobs" / "sha256" / b.digest.removeprefix("sha256:")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b.data)


def write_layout(root: Path, images: dict[str, list[Layer]]) -> None:
    """One OCI layout holding each image under its ref name (`skopeo copy oci:ROOT:REF …`)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = []
    for ref, layers in images.items():
        config = image_config(layers)
        man = manifest(config, [la.blob for la in layers])
        for b in (config, man, *(la.blob for la in layers)):
            _put(root, b)
        index.append({
            "mediaType": MANIFEST_TYPE, "digest": man.digest, "size": man.size,
            "annotations": {"org.opencontainers.image.ref.name": ref},
        })
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": index}))


def tiny_image() -> tuple[Blob, Blob, Blob]:
    """(config, layer, manifest) of a small image for manifest/tag/catalog benchmarks."""
    layer = random_layer(8192, "tiny")
    config = image_config([layer])
    return config, layer.blob, manifest(config, [layer.blob])
