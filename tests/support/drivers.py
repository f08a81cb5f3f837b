"""Run the same end-to-end test on every storage driver."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from registry.config import load_config
from registry.storage import make_store

from .server import DockyardServer

DRIVERS = ["filesystem", "s3"]


def driver_config(request: pytest.FixtureRequest, driver: str) -> str:
    """Config text putting a server's blobs on `driver` (a fresh bucket per test on S3)."""
    if driver == "filesystem":
        return ""
    seaweed = request.getfixturevalue("seaweed")
    return seaweed.config_text(bucket=f"t-{secrets.token_hex(6)}")


def stored_keys(server: DockyardServer) -> list[str]:
    """Every blob object in the server's storage, listed through its own driver."""
    config = load_config(server.config_path, data_dir=server.data_dir)

    async def listing() -> list[str]:
        store = make_store(config.storage, config.data_dir)
        await store.start()
        try:
            return [key async for key, _ in store.list_blob_keys()]
        finally:
            await store.close()

    return asyncio.run(listing())
