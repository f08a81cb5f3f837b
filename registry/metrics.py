"""Prometheus metrics of the registry (served at /metrics)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)

# No `*_created` series: they double the scrape and Prometheus does not use them.
disable_created_metrics()
# The Prometheus registry of this process (not to be confused with the Registry service).
METRICS = CollectorRegistry(auto_describe=True)

# Which node and process the scrape came from: join on it (`* on(instance) group_left(node)`)
# to sum per node across a cluster.
NODE_INFO = Info("dockyard_node", "This node of the cluster", registry=METRICS)

REQUESTS = Counter(
    "dockyard_http_requests_total",
    "HTTP requests",
    ["route", "method", "status"],
    registry=METRICS,
)
LATENCY = Histogram(
    "dockyard_http_request_duration_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=METRICS,
)
BYTES_RECEIVED = Counter(
    "dockyard_blob_bytes_received_total", "Blob bytes received in uploads", registry=METRICS
)
BYTES_SENT = Counter(
    "dockyard_blob_bytes_sent_total", "Blob bytes served (redirects excluded)", registry=METRICS
)
UPLOADS_IN_FLIGHT = Gauge(
    "dockyard_uploads_in_flight", "Blob upload requests being received", registry=METRICS
)
DEDUP_SKIPS = Counter(
    "dockyard_dedup_skips_total",
    "Blob HEADs and mounts answered from another repository of the same customer",
    registry=METRICS,
)
DEDUP_BYTES = Counter(
    "dockyard_dedup_bytes_saved_total",
    "Bytes clients did not have to upload thanks to dedup",
    registry=METRICS,
)


def record_dedup(size: int) -> None:
    """A client skipped `size` bytes because another repository of its customer holds them."""
    DEDUP_SKIPS.inc()
    DEDUP_BYTES.inc(size)


STORAGE_ERRORS = Counter(
    "dockyard_storage_errors_total", "Requests failed by the storage backend", registry=METRICS
)
GC_RUNS = Counter("dockyard_gc_runs_total", "Garbage collections", registry=METRICS)
GC_BYTES = Counter("dockyard_gc_bytes_freed_total", "Bytes freed by GC", registry=METRICS)
READ_ONLY = Gauge(
    "dockyard_read_only", "1 while writes are refused (maintenance mode)", registry=METRICS
)
# Webhook gauges are read from the durable outbox at scrape time (dockyard/ops), so they agree
# with `dockyard events stats` and include work of every process sharing the data directory.
WEBHOOK_QUEUE = Gauge(
    "dockyard_webhook_queue_depth",
    "Webhook deliveries waiting to be delivered (pending or retrying)",
    ["endpoint"],
    registry=METRICS,
)
WEBHOOK_OLDEST = Gauge(
    "dockyard_webhook_oldest_pending_seconds",
    "Age of the oldest webhook delivery still waiting",
    ["endpoint"],
    registry=METRICS,
)
WEBHOOK_DELIVERIES = Gauge(
    "dockyard_webhook_deliveries",
    "Webhook deliveries kept in the outbox (within retention) by status",
    ["endpoint", "status"],
    registry=METRICS,
)
WEBHOOK_FAILED_ATTEMPTS = Gauge(
    "dockyard_webhook_failed_attempts",
    "Failed webhook delivery attempts kept in the outbox (within retention)",
    ["endpoint"],
    registry=METRICS,
)
LAUNCHER_DEPLOYMENTS = Counter(
    "dockyard_launcher_deployments_total",
    "Launcher deployments entering each state",
    ["state"],
    registry=METRICS,
)
LAUNCHER_PLACEMENT = Histogram(
    "dockyard_launcher_placement_seconds",
    "Time to choose (or provision) an instance for a task",
    ["outcome"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300),
    registry=METRICS,
)
ProcessCollector(registry=METRICS)


def record_gc(bytes_freed: int) -> None:
    """A finished (not dry-run) garbage collection."""
    GC_RUNS.inc()
    GC_BYTES.inc(bytes_freed)


async def record_deployment_event(event: dict[str, Any]) -> None:
    """A launcher deployment event (launcher.service.DeploymentListener). The launcher imports
    nothing of the registry: the composition root passes this in, next to the outbox."""
    state = event.get("state")
    if isinstance(state, str) and state:
        LAUNCHER_DEPLOYMENTS.labels(state).inc()


def record_placement(seconds: float, outcome: str = "placed") -> None:
    """One placement decision of the launcher (outcome: placed, provisioned, no_capacity)."""
    LAUNCHER_PLACEMENT.labels(outcome).observe(seconds)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        REQUESTS.labels(route, request.method, str(status)).inc()
        LATENCY.labels(route, request.method).observe(time.perf_counter() - started)

