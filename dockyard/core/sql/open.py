"""Which engine a `[metadata] url` names, and opening it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .base import Database


def describe_url(url: str) -> str:
    """The URL without its password, for logs and `dockyard serve`'s first line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def open_database(
    url: str | None,
    data_dir: Path,
    *,
    pool_size: int = 10,
    connect_timeout: float = 5.0,
    statement_timeout: float = 30.0,
    sqlite_synchronous: str = "full",
) -> Database:
    """`postgresql://…` (or `postgres://…`) opens a pool; None or `sqlite:PATH` the embedded
    file (default `DATA/metadata.db`)."""
    if url and url.split(":", 1)[0] in ("postgresql", "postgres"):
        from .postgres import PostgresDatabase

        return await PostgresDatabase(
            url,
            description=f"postgresql {describe_url(url)}",
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
        ).open()
    from .sqlite import SqliteDatabase

    path = data_dir / "metadata.db"
    if url:
        if not url.startswith("sqlite:"):
            raise ValueError(
                f"metadata url {describe_url(url)!r}: use postgresql://… or sqlite:PATH"
            )
        path = Path(url.removeprefix("sqlite:").removeprefix("//"))
    return await SqliteDatabase(path, synchronous=sqlite_synchronous).open()
