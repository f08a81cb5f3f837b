"""Synthetic OCI image layouts written from scratch (spec: oci-image-layout.md)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def _put(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def layer_tar(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzipped layer tarball and its diff id (digest of the uncompressed tar)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()


def write_image(root: Path, arch: str, files: dict[str, bytes]) -> dict:
    """Write one image (config, layer, manifest) into the layout; return its descriptor."""
    layer, diff_id = layer_tar(files)
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_put(root, layer)}
    config = {
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {"Cmd": ["sh"]},
    }
    config_desc = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **_put(root, json.dumps(config).encode()),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_put(root, json.dumps(manifest).encode()),
        "platform": {"architecture": arch, "os": "linux"},
    }


def write_multi_platform_layout(root: Path, tag: str) -> str:
    """An index of an amd64 and an arm64 image under `tag`; return the index digest."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    images = [
        write_image(root, arch, {f"{arch}.txt": f"hello from {arch}\n".encode()})
        for arch in ("amd64", "arm64")
    ]
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": images,
    }
    index_desc = {
        "mediaType": "application/vnd.oci.image.index.v1+json",
        **_put(root, json.dumps(index).encode()),
    }
    index_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [index_desc]}))
    return index_desc["digest"]
