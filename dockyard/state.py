"""The one state store of a process, opened from `[metadata]`: every part keeps its tables in
it (SQLite file `DATA/metadata.db` by default, or PostgreSQL)."""

from __future__ import annotations

from dockyard.core.sql import Database, describe_url, open_database
from registry.config import Config


async def open_state(config: Config) -> Database:
    m = config.metadata
    return await open_database(
        m.url or None,
        config.data_dir,
        pool_size=m.pool_size,
        connect_timeout=m.connect_timeout,
        statement_timeout=m.statement_timeout,
        sqlite_synchronous=m.sqlite_synchronous,
    )


def describe_state(config: Config) -> str:
    """Which backend a node uses, for its start-up line (no password)."""
    url = config.metadata.url
    if url:
        return describe_url(url)
    return f"sqlite {config.data_dir / 'metadata.db'}"
