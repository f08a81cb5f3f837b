"""Per-customer storage accounting: what each customer holds, shares and saves by dedup."""

from __future__ import annotations

from typing import Any

from .metadata import Metadata
from .quotas import Quotas


async def usage_report(
    meta: Metadata, quotas: Quotas, only: str | None = None
) -> list[dict[str, Any]]:
    """One row per customer.

    - logical_bytes: the blobs the customer holds, each counted once (what its quota counts);
    - repo_bytes: the same summed per repository, i.e. what storing per repository would cost;
    - saved_bytes: repo_bytes - logical_bytes, saved by layer dedup within the customer;
    - shared_bytes: of logical_bytes, what other customers hold too (stored once for all).
    """
    rows = []
    for tenant in await meta.tenants.all():
        if only and tenant.name != only:
            continue
        usage = await meta.usage.of(tenant)
        rows.append(
            {
                "customer": tenant.name,
                **usage.as_dict(),
                "saved_bytes": usage.repo_bytes - usage.logical_bytes,
                "quota_bytes": await quotas.of(tenant),
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
