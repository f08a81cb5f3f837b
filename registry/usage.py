"""Per-customer storage accounting: what each customer holds, shares and saves by dedup."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .service import Registry


async def usage_report(registry: Registry, only: str | None = None) -> list[dict[str, Any]]:
    """One row per customer.

    - logical_bytes: the blobs the customer holds, each counted once (what its quota counts);
    - repo_bytes: the same summed per repository, i.e. what storing per repository would cost;
    - saved_bytes: repo_bytes - logical_bytes, saved by layer dedup within the customer;
    - shared_bytes: of logical_bytes, what other customers hold too (stored once for all).
    """
    meta = registry.meta
    names = meta.customers()
    held: dict[str, dict[str, int]] = {}
    for name in names:
        held[name] = await (await meta.customer(name)).held_blobs()
    holders: Counter[str] = Counter()
    for blobs in held.values():
        holders.update(blobs.keys())
    rows = []
    for name in names:
        if only and name != only:
            continue
        customer = await meta.customer(name)
        stats = await customer.usage()
        shared = sum(size for digest, size in held[name].items() if holders[digest] > 1)
        rows.append(
            {
                "customer": name,
                **stats,
                "shared_bytes": shared,
                "saved_bytes": stats["repo_bytes"] - stats["logical_bytes"],
                "quota_bytes": await registry.quota(name),
            }
        )
    return rows


def human(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)
