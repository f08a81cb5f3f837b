"""Delivers outbox rows to HTTP endpoints: at least once, in order per (endpoint, repository).

Each (endpoint, repository) pair is a queue; only its oldest open delivery (its head) may be
attempted, so one repository's events arrive in publish order while a failing repository only
holds up itself, and only until its head is delivered or dead-lettered after `max_attempts`.

A process claims a head by writing a lease (`lease_until`) in the same transaction that selected
it, and the claim is conditional on the row being unleased, so of several dispatchers sharing one
database exactly one makes a given attempt (one runs at a time anyway, under the cluster lease).
A lease outlives a killed process only until it expires (the endpoint's timeout plus a margin);
then any process retries the row: at least once, never zero times.

Retries back off exponentially (`backoff`, doubling, capped at `max_backoff`) with multiplicative
jitter, and honour a `Retry-After` header within that cap. Any final (after redirects) status below
400 counts as delivered, as with the reference registry (spec: distribution-notifications.md,
"Responses"); anything else, or no answer, is a failed attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import aiohttp
from multidict import CIMultiDict

from dockyard.core.envelope import (
    CLOUDEVENTS_MEDIA_TYPE,
    ENVELOPE_MEDIA_TYPE,
    cloudevent,
    encode,
    envelope,
)
from dockyard.core.signing import (
    GITHUB_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    github_signature,
    sign,
)
from dockyard.core.sql import Database, Row
from registry.events.config import EndpointConfig, NotificationSettings
from registry.events.signal import Signal

log = logging.getLogger(__name__)

LEASE_MARGIN = 2.0  # seconds a lease outlasts the endpoint timeout
PRUNE_INTERVAL = 600.0
USER_AGENT = "dockyard-notifications/1"
EVENT_ID_HEADER = "Dockyard-Event-Id"
ATTEMPT_HEADER = "Dockyard-Delivery-Attempt"
MAX_ERROR_LENGTH = 500


def backoff_delay(endpoint: EndpointConfig, failures: int, rng: random.Random) -> float:
    """Delay after the `failures`-th consecutive failed attempt (1-based)."""
    base = min(endpoint.max_backoff, endpoint.backoff * 2 ** min(failures - 1, 60))
    jittered = base * rng.uniform(1 - endpoint.jitter, 1 + endpoint.jitter)
    return min(endpoint.max_backoff, jittered)


def render(endpoint: EndpointConfig, event: dict[str, Any], kind: str) -> tuple[bytes, str]:
    """The request body and its content type for `endpoint`'s format."""
    if endpoint.format == "cloudevents":
        return encode(cloudevent(event, kind=kind)), CLOUDEVENTS_MEDIA_TYPE
    return encode(envelope([event])), ENVELOPE_MEDIA_TYPE


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: ignored, our own backoff applies


class Dispatcher:
    def __init__(
        self,
        db: Database,
        settings: NotificationSettings,
        owner: str,
        signal: Signal,
        prune: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.owner = owner
        self.signal = signal
        self._prune = prune
        self._rng = random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._last_prune = 0.0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
        )
        self._task = asyncio.create_task(self._run(), name="events-dispatcher")

    async def close(self, grace: float) -> None:
        self._stopping = True
        self.signal.notify()
        if self._task is not None:
            with suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            _done, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        names = [e.name for e in self.settings.endpoints if not e.disabled]
        while not self._stopping:
            try:
                delay = await self._step(names)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A locked or briefly unavailable database must not end delivery for good.
                log.exception("events dispatcher: step failed; retrying")
                delay = self.settings.poll_interval
            if self._stopping:
                break
            await self.signal.wait(delay)

    async def _step(self, names: list[str]) -> float:
        now = time.time()
        if now - self._last_prune > PRUNE_INTERVAL:
            self._last_prune = now
            if self._prune is not None:
                await self._prune()
        if not names:
            return self.settings.poll_interval
        free = self.settings.concurrency - len(self._inflight)
        if free > 0:
            for row in await self._claim(names, free):
                task = asyncio.create_task(self._deliver(row))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
        return await self._next_due(names, self.settings.poll_interval)

    async def _claim(self, names: list[str], limit: int) -> list[Row]:
        now = time.time()
        marks = ",".join("?" * len(names))
        claimed: list[Row] = []
        async with self.db.transaction() as tx:
            # Heads of every open (endpoint, repository) queue that are due and not leased.
            rows = await tx.fetchall(
                "SELECT d.id, d.endpoint, d.attempts, e.id AS event_id, e.kind, e.body"
                " FROM (SELECT endpoint, repository, MIN(event_seq) AS head FROM deliveries"
                f"       WHERE status IN ('pending', 'failed') AND endpoint IN ({marks})"
                "       GROUP BY endpoint, repository) h"
                " JOIN deliveries d ON d.endpoint = h.endpoint AND d.event_seq = h.head"
                " JOIN events e ON e.seq = d.event_seq"
                " WHERE d.next_attempt <= ? AND d.lease_until <= ?"
                " ORDER BY d.next_attempt, d.event_seq LIMIT ?",
                (*names, now, now, limit),
            )
            for row in rows:
                endpoint = self.settings.endpoint(row["endpoint"])
                assert endpoint is not None
                changed = await tx.execute(
                    "UPDATE deliveries SET lease_owner = ?, lease_until = ?"
                    " WHERE id = ? AND lease_until <= ? AND status IN ('pending', 'failed')",
                    (self.owner, now + endpoint.timeout + LEASE_MARGIN, row["id"], now),
                )
                if changed == 1:
                    claimed.append(row)
        return claimed

    async def _next_due(self, names: list[str], cap: float) -> float:
        now = time.time()
        marks = ",".join("?" * len(names))
        later = "CASE WHEN next_attempt > lease_until THEN next_attempt ELSE lease_until END"
        due = await self.db.fetchval(
            f"SELECT MIN({later}) FROM deliveries"
            f" WHERE status IN ('pending', 'failed') AND endpoint IN ({marks})"
            f" AND {later} > ?",
            (*names, now),
        )
        if due is None:
            return cap
        return max(0.0, min(cap, due - now))

    async def _deliver(self, row: Row) -> None:
        endpoint = self.settings.endpoint(row["endpoint"])
        assert endpoint is not None and self._session is not None
        attempt = row["attempts"] + 1
        started = time.time()
        t0 = time.monotonic()
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            body, content_type = render(endpoint, json.loads(row["body"]), row["kind"])
            headers: CIMultiDict[str] = CIMultiDict(endpoint.headers)
            headers["Content-Type"] = content_type
            headers[EVENT_ID_HEADER] = row["event_id"]
            headers[ATTEMPT_HEADER] = str(attempt)
            if endpoint.secrets:
                # Signed per attempt: the timestamp is when this request was made.
                headers[SIGNATURE_HEADER] = sign(endpoint.secrets, body)
            if endpoint.github_signature:
                headers[GITHUB_SIGNATURE_HEADER] = github_signature(endpoint.secrets[0], body)
            async with self._session.post(
                endpoint.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout),
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                # Drain a little so the connection can be reused; the answer's body is unused.
                await resp.content.read(65536)
            if status >= 400:
                error = f"HTTP {status} {resp.reason or ''}".strip()
        except asyncio.CancelledError:
            raise  # close(): the lease is released by the outbox
        except TimeoutError:
            error = f"timeout after {endpoint.timeout:g}s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            # Whatever it is, it is recorded and retried like a failed request, not lost.
            log.exception("events: delivering %s failed unexpectedly", row["event_id"])
            error = f"internal error: {type(exc).__name__}: {exc}"
        duration = time.monotonic() - t0
        if error is None:
            new_status, next_attempt = "delivered", started
        elif attempt >= endpoint.max_attempts:
            new_status, next_attempt = "dead", started
            log.warning(
                "events: %s to %s dead after %d attempts: %s",
                row["event_id"],
                endpoint.name,
                attempt,
                error,
            )
        else:
            delay = backoff_delay(endpoint, attempt, self._rng)
            if retry_after is not None:
                delay = min(endpoint.max_backoff, max(delay, retry_after))
            new_status, next_attempt = "failed", time.time() + delay
        try:
            await self._record(row, new_status, next_attempt, status, error, started, duration)
        except Exception:
            # The lease expires and the attempt is repeated: a duplicate, never a loss.
            log.exception("events: could not record attempt of %s", row["event_id"])
        self.signal.notify()

    async def _record(
        self,
        row: Row,
        new_status: str,
        next_attempt: float,
        status: int | None,
        error: str | None,
        started: float,
        duration: float,
    ) -> None:
        if error is not None and len(error) > MAX_ERROR_LENGTH:
            error = error[:MAX_ERROR_LENGTH] + "…"
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO attempts (delivery_id, started, duration, status_code, error, owner)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (row["id"], started, duration, status, error, self.owner),
            )
            # Only while we still hold the lease: a replay or another process may have moved on.
            await tx.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt = ?,"
                " lease_owner = NULL, lease_until = 0, last_status = ?, last_error = ?,"
                " updated = ? WHERE id = ? AND lease_owner = ?",
                (
                    new_status,
                    next_attempt,
                    status,
                    error,
                    time.time(),
                    row["id"],
                    self.owner,
                ),
            )
