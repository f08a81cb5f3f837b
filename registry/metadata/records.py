"""What the metadata layer hands back and takes in: plain immutable records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tenant:
    """A customer, resolved to its row. Every tenant-scoped query takes one."""

    id: int
    name: str


@dataclass(frozen=True)
class ManifestRecord:
    digest: str
    media_type: str
    size: int
    payload: bytes


@dataclass(frozen=True)
class UploadRecord:
    id: str
    repository: str
    algorithm: str
    offset: int
    driver: dict[str, Any]
    owner: str | None
    created_at: float
    updated_at: float
    hash_state: bytes | None = None


@dataclass(frozen=True)
class NewManifest:
    digest: str
    media_type: str
    payload: bytes
    artifact_type: str | None
    subject: str | None
    annotations: dict[str, str] | None
    # (digest, kind) pairs: kind is 'blob', 'manifest' or 'subject'.
    refs: list[tuple[str, str]]
    # Blobs to link into the repository with their sizes (config and layers present).
    blobs: list[tuple[str, int]]


@dataclass(frozen=True)
class Referrer:
    media_type: str
    size: int
    digest: str
    artifact_type: str | None
    annotations: dict[str, str] | None


class QuotaExceeded(Exception):
    def __init__(self, quota: int, used: int, added: int) -> None:
        super().__init__(f"quota {quota} bytes: {used} used, {added} more requested")
        self.quota, self.used, self.added = quota, used, added
