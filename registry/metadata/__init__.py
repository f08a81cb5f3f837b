"""Metadata: one SQLite database per customer plus the global blob index."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

from .customer import CustomerMeta, ManifestRecord, NewManifest, UploadRecord
from .index import BlobIndex
from .schema import CUSTOMER_MIGRATIONS, connect, connect_reader

# Open connections kept at once; each aiosqlite connection holds a thread.
MAX_OPEN_CUSTOMERS = 64


class MetadataStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "customers"
        self.index_path = data_dir / "index.db"
        self.index: BlobIndex
        self._open: OrderedDict[str, CustomerMeta] = OrderedDict()
        self._opening: dict[str, asyncio.Future[CustomerMeta]] = {}

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.index = await BlobIndex.open(self.index_path)

    async def close(self) -> None:
        for meta in self._open.values():
            await meta.close()
        self._open.clear()
        await self.index.close()

    def exists(self, customer: str) -> bool:
        return customer in self._open or (self.root / customer / "meta.db").exists()

    def customers(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/meta.db"))

    async def customer(self, name: str) -> CustomerMeta:
        meta = self._open.get(name)
        if meta is not None:
            self._open.move_to_end(name)
            return meta
        pending = self._opening.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[CustomerMeta] = asyncio.get_running_loop().create_future()
        self._opening[name] = fut
        try:
            path = self.root / name
            path.mkdir(parents=True, exist_ok=True)
            db_path = str(path / "meta.db")
            writer = await connect(db_path, CUSTOMER_MIGRATIONS)
            meta = CustomerMeta(name, writer, connect_reader(db_path))
            self._open[name] = meta
            fut.set_result(meta)
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            del self._opening[name]
        while len(self._open) > MAX_OPEN_CUSTOMERS:
            _, old = self._open.popitem(last=False)
            await old.close()
        return meta


__all__ = [
    "BlobIndex",
    "CustomerMeta",
    "ManifestRecord",
    "MetadataStore",
    "NewManifest",
    "UploadRecord",
]
