"""Run the same end-to-end test on every setup: storage driver, and where the metadata lives.

"filesystem" and "s3" keep metadata in the embedded SQLite file; "s3+postgresql" is the
scale-out setup (S3 blobs, a fresh PostgreSQL database per test).
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from registry.config import load_config
from registry.storage import make_store

from .server import DockyardServer

DRIVERS = ["filesystem", "s3", "s3+postgresql"]


def driver_config(request: pytest.FixtureRequest, driver: str) -> str:
    """Config text for setup `driver` (a fresh bucket and database per test)."""
    storage, _, metadata = driver.partition("+")
    text = ""
    if storage == "s3":
        seaweed = request.getfixturevalue("seaweed")
        text += seaweed.config_text(bucket=f"t-{secrets.token_hex(6)}")
    if metadata == "postgresql":
        text += metadata_config(request)
    return text


def metadata_config(request: pytest.FixtureRequest) -> str:
    """A `[metadata]` section on a fresh PostgreSQL database of the session's cluster."""
    url = request.getfixturevalue("postgres").new_database()
    return f'\n[metadata]\nurl = "{url}"\n'


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
