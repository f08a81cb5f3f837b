"""Storage quotas per customer: `dockyard quota set` (in the database) wins over the config's
`[quotas]` table."""

from __future__ import annotations

from dockyard.core.errors import Denied

from .metadata import Metadata, QuotaExceeded, Tenant


class Quotas:
    def __init__(self, meta: Metadata, configured: dict[str, int]) -> None:
        self.meta = meta
        self.configured = configured

    async def of(self, tenant: Tenant) -> int | None:
        stored = await self.meta.tenants.quota(tenant)
        return stored if stored is not None else self.configured.get(tenant.name)

    @staticmethod
    def denied(exc: QuotaExceeded, tenant: Tenant) -> Denied:
        return Denied(
            f"storage quota of customer {tenant.name} exceeded: the quota is {exc.quota} bytes, "
            f"{exc.used} are used and this push needs {exc.added} more",
            detail={"quota": exc.quota, "used": exc.used, "requested": exc.added},
        )
