"""The scenarios, in the order they run (cheap inputs first, the 1 GiB push last)."""

from __future__ import annotations

from ..core import Scenario
from .customers import POSTGRES, Customers
from .dedup import DockerDedup, SkopeoDedup
from .launcher import PushToRunning
from .load import BlobGet, Listing, SmallRequests
from .s3 import S3PushPull
from .transfer import DockerPushPull, SkopeoPushPull
from .uploads import BigPushRss, ChunkedUpload


def all_scenarios(quick: bool, wanted: list[str] | None = None, pg: bool = False) -> list[Scenario]:
    """--quick drops the docker variant of the dedup push (fresh engines per measurement) unless
    it is `wanted` by name, and seeds 2,000 tags / 200 repositories instead of 10,000 / 1,000.
    `pg` (--pg) adds dockyard on PostgreSQL metadata to `customers`."""
    return [
        SkopeoPushPull(),
        DockerPushPull(),
        SkopeoDedup(),
        *([DockerDedup()] if not quick or "dedup-docker" in (wanted or []) else []),
        BlobGet(),
        SmallRequests(),
        ChunkedUpload(),
        PushToRunning(),
        BigPushRss(),
        Listing(2_000, 200) if quick else Listing(),
        S3PushPull(),
        Customers([POSTGRES] if pg else []),
    ]


NAMES = [s.name for s in all_scenarios(False)]
