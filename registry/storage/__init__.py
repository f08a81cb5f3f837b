"""Blob storage drivers behind one interface (see base.py for the contract)."""

from __future__ import annotations

from pathlib import Path

from ..config import StorageSettings
from .base import (
    BlobSource,
    BlobStore,
    LocalFile,
    Redirect,
    StorageError,
    Stream,
    UploadState,
    UploadUnreadable,
)


def make_store(settings: StorageSettings, data_dir: Path) -> BlobStore:
    if settings.driver == "filesystem":
        from .filesystem import FilesystemStore

        return FilesystemStore(data_dir)
    if settings.driver == "s3":
        from .s3 import S3Store

        return S3Store(settings, data_dir)
    raise ValueError(f"unknown storage driver {settings.driver!r} (filesystem or s3)")


__all__ = [
    "BlobSource",
    "BlobStore",
    "LocalFile",
    "Redirect",
    "StorageError",
    "Stream",
    "UploadState",
    "UploadUnreadable",
    "make_store",
]
