"""Webhook delivery over real HTTP on loopback: envelope, signatures, retries, dead letters,
replay, ordering, leases between processes, subscriptions, CLI and admin routes.

The outbox is driven directly (no registry needed); a small aiohttp receiver plays the consumer:
it verifies signatures the way README.md tells consumers to, and answers what each test scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import io
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dockyard.core.envelope import ENVELOPE_MEDIA_TYPE
from dockyard.core.signing import SIGNATURE_HEADER, verify
from dockyard.core.sql import Database, SchemaTooNew, open_database
from registry.events import (
    EventOutbox,
    NotificationSettings,
    RegistryEvent,
    RequestRecord,
    open_events,
    parse_envelope,
)
from registry.events.admin import add_admin_routes
from registry.events.cli import register
from registry.events.schema import STEPS

SECRET = "whsec_test_0123456789"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
WAIT = 15.0  # generous deadline for conditions; never a performance assertion


def digest_of(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def make_event(
    repository: str = "acme/web",
    *,
    action: str = "push",
    tag: str | None = "1.0",
    n: int = 1,
    media_type: str = MANIFEST_TYPE,
    size: int = 512,
    kind: str = "manifest",
    actor: str | None = "alice",
) -> RegistryEvent:
    digest = digest_of(n)
    section = "blobs" if kind == "blob" else "manifests"
    return RegistryEvent(
        action=action,
        customer=repository.split("/", 1)[0],
        repository=repository,
        digest=digest,
        media_type=media_type,
        size=size,
        tag=tag,
        url=f"http://reg.test/v2/{repository}/{section}/{digest}",
        request=RequestRecord(
            id=f"req-{n}",
            addr="127.0.0.1:40000",
            host="reg.test",
            method="DELETE" if action == "delete" else "PUT",
            useragent="docker/24.0",
        ),
        actor=actor,
        kind=kind,
    )


@dataclass
class Hit:
    at: float  # monotonic, when the receiver got it
    headers: dict[str, str]
    body: bytes
    answered: int
    events: list[dict[str, Any]] = field(default_factory=list)


class Receiver:
    """A webhook consumer on 127.0.0.1 that records every request it gets."""

    def __init__(self, *, secret: str | None = SECRET, port: int = 0) -> None:
        self.secret = secret
        self.port = port
        self.hits: list[Hit] = []
        # Decides the answer to a verified delivery: (hit number for this event id, events).
        self.answer: Callable[[int, list[dict[str, Any]]], int] = lambda n, events: 200
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # verify the exact bytes, before parsing
        headers = dict(request.headers)
        status = 200
        events: list[dict[str, Any]] = []
        if self.secret is not None and not verify(
            self.secret, request.headers.get(SIGNATURE_HEADER), body
        ):
            status = 401
        else:
            try:
                events = parse_envelope(body)
            except ValueError:
                status = 400
        if status == 200:
            ids = {e["id"] for e in events}
            seen = sum(1 for h in self.hits if ids & {e["id"] for e in h.events})
            status = self.answer(seen + 1, events)
        self.hits.append(Hit(time.monotonic(), headers, body, status, events))
        self._changed.set()
        return web.Response(status=status)

    def accepted(self) -> list[dict[str, Any]]:
        return [e for h in self.hits if h.answered < 400 for e in h.events]

    def accepted_ids(self) -> list[str]:
        return [e["id"] for e in self.accepted()]

    async def wait_for(self, condition: Callable[[], bool], what: str = "condition") -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; hits={len(self.hits)}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))


def settings_for(*endpoints: dict[str, Any], poll_interval: float = 0.05) -> NotificationSettings:
    return NotificationSettings.from_dict(
        {"poll_interval": poll_interval, "endpoints": list(endpoints)}
    )


def hook(receiver: Receiver, **options: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "hook",
        "url": receiver.url,
        "timeout": "2s",
        "backoff": "50ms",
        "max_backoff": "1s",
        "max_attempts": 8,
        "secret": SECRET,
    }
    base.update(options)
    return base


OutboxFactory = Callable[..., Awaitable[EventOutbox]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = await Receiver().start()
    yield rec
    await rec.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def outboxes(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[OutboxFactory]:
    """Outboxes on either backend; two opened on one data dir share one store (one PostgreSQL
    database per data dir), as two processes of one node would."""
    opened: list[tuple[EventOutbox, Database]] = []
    urls: dict[Path, str] = {}

    async def factory(
        settings: NotificationSettings, *, data_dir: Path | None = None, start: bool = True
    ) -> EventOutbox:
        data = data_dir or tmp_path
        url = None
        if request.param == "postgresql":
            if data not in urls:
                urls[data] = request.getfixturevalue("postgres").new_database()
            url = urls[data]
        db = await open_database(url, data)
        outbox = await open_events(
            db, settings, source_addr="reg.test:5000", instance_id="test-1"
        )
        opened.append((outbox, db))
        if start:
            await outbox.start()
        return outbox

    yield factory
    for outbox, db in opened:
        await outbox.close()
        await db.close()


async def wait_status(outbox: EventOutbox, event_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        rows = await outbox.list_deliveries(event_id=event_id)
        if rows and all(r["status"] == status for r in rows):
            return rows[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"{event_id} never reached {status}: {rows}")
        await asyncio.sleep(0.05)


# -- envelope and signature, end to end ----------------------------------------------------------


async def test_push_and_delete_envelopes_arrive_signed(
    receiver: Receiver, outboxes: OutboxFactory
) -> None:
    outbox = await outboxes(settings_for(hook(receiver)))
    published = {
        "push-tag": await outbox.publish(make_event(tag="1.0", n=1)),
        "push-digest": await outbox.publish(make_event(tag=None, n=2)),
        "delete-tag": await outbox.publish(
            make_event(action="delete", tag="1.0", n=1, media_type="", size=0)
        ),
        "delete-digest": await outbox.publish(
            make_event(action="delete", tag=None, n=2, media_type="", size=0, actor=None)
        ),
    }
    await receiver.wait_for(lambda: len(receiver.accepted()) == 4, "four events")
    by_id = {e["id"]: e for e in receiver.accepted()}
    assert set(by_id) == set(published.values())

    for hit in receiver.hits:
        # spec: distribution-notifications.md, "Envelope" — the media type is on the request.
        assert hit.headers["Content-Type"] == ENVELOPE_MEDIA_TYPE
        assert hit.headers["Dockyard-Event-Id"] == hit.events[0]["id"]
        assert hit.headers[SIGNATURE_HEADER].startswith("t=")
        assert list(json.loads(hit.body)) == ["events"]

    push_tag = by_id[published["push-tag"]]
    assert push_tag["action"] == "push"
    assert push_tag["target"] == {
        "mediaType": MANIFEST_TYPE,
        "size": 512,
        "digest": digest_of(1),
        "length": 512,
        "repository": "acme/web",
        "url": f"http://reg.test/v2/acme/web/manifests/{digest_of(1)}",
        "tag": "1.0",
        "customer": "acme",
    }
    assert push_tag["request"] == {
        "id": "req-1",
        "addr": "127.0.0.1:40000",
        "host": "reg.test",
        "method": "PUT",
        "useragent": "docker/24.0",
    }
    assert push_tag["actor"] == {"name": "alice"}
    assert push_tag["source"] == {"addr": "reg.test:5000", "instanceID": "test-1"}
    assert push_tag["timestamp"].endswith("Z")

    push_digest = by_id[published["push-digest"]]
    assert "tag" not in push_digest["target"] and push_digest["target"]["digest"] == digest_of(2)

    delete_tag = by_id[published["delete-tag"]]
    assert delete_tag["action"] == "delete" and delete_tag["target"]["tag"] == "1.0"
    assert delete_tag["request"]["method"] == "DELETE"

    delete_digest = by_id[published["delete-digest"]]
    # spec: deletes carry only the digest and repository (we add the customer).
    assert set(delete_digest["target"]) == {"digest", "repository", "url", "customer"}
    assert delete_digest["actor"] == {}


async def test_receiver_rejects_tampered_and_missigned_deliveries(
    receiver: Receiver, outboxes: OutboxFactory, tmp_path: Path
) -> None:
    outbox = await outboxes(settings_for(hook(receiver)))
    await outbox.publish(make_event())
    await receiver.wait_for(lambda: len(receiver.accepted()) == 1, "a delivery")
    good = receiver.hits[0]
    headers = {k: v for k, v in good.headers.items() if k.lower() not in ("content-length", "host")}
    tampered = good.body.replace(b'"acme/web"', b'"evil/web"', 1)
    assert tampered != good.body
    async with aiohttp.ClientSession() as session:
        async with session.post(receiver.url, data=tampered, headers=headers) as resp:
            assert resp.status == 401
        unsigned = {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}
        async with session.post(receiver.url, data=good.body, headers=unsigned) as resp:
            assert resp.status == 401
        # The untouched original still verifies: the rejections above are about the changes.
        async with session.post(receiver.url, data=good.body, headers=headers) as resp:
            assert resp.status == 200

    # An endpoint configured with the wrong secret is refused, logged and retried.
    wrong = await outboxes(
        settings_for(hook(receiver, name="wrong", secret="not-the-secret", max_attempts=2)),
        data_dir=tmp_path / "other",
    )
    event_id = await wrong.publish(make_event(n=9))
    row = await wait_status(wrong, event_id, "dead")
    assert row["last_status"] == 401 and row["attempts"] == 2
    assert event_id not in receiver.accepted_ids()


async def test_github_style_signature_for_ready_made_receivers(
    receiver: Receiver, outboxes: OutboxFactory
) -> None:
    outbox = await outboxes(settings_for(hook(receiver, github_signature=True)))
    await outbox.publish(make_event())
    await receiver.wait_for(lambda: len(receiver.accepted()) == 1, "a delivery")
    hit = receiver.hits[0]
    expected = hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-Hub-Signature-256"] == f"sha256={expected}"
    assert SIGNATURE_HEADER in hit.headers  # the timestamped signature is still there


async def test_cloudevents_format(receiver: Receiver, outboxes: OutboxFactory) -> None:
    outbox = await outboxes(settings_for(hook(receiver, format="cloudevents")))
    event_id = await outbox.publish(make_event(tag="2.0"))
    await receiver.wait_for(lambda: len(receiver.accepted()) == 1, "a cloudevent")
    hit = receiver.hits[0]
    assert hit.headers["Content-Type"] == "application/cloudevents+json"
    doc = json.loads(hit.body)
    assert doc["specversion"] == "1.0" and doc["id"] == event_id
    assert doc["type"] == "io.dockyard.registry.manifest.push"
    assert doc["subject"] == "acme/web:2.0"
    assert doc["data"]["target"]["tag"] == "2.0"


# -- retries, dead letters, replay ---------------------------------------------------------------


async def test_retry_until_fourth_attempt_with_growing_backoff(
    receiver: Receiver, outboxes: OutboxFactory
) -> None:
    receiver.answer = lambda n, events: 500 if n <= 3 else 200
    outbox = await outboxes(settings_for(hook(receiver, backoff="100ms", max_backoff="5s")))
    event_id = await outbox.publish(make_event())
    await receiver.wait_for(lambda: receiver.accepted_ids() == [event_id], "the 4th attempt")

    assert [h.answered for h in receiver.hits] == [500, 500, 500, 200]
    assert {h.events[0]["id"] for h in receiver.hits} == {event_id}  # the same id every time
    assert [h.headers["Dockyard-Delivery-Attempt"] for h in receiver.hits] == ["1", "2", "3", "4"]
    # Each attempt is signed afresh (the timestamp is when that attempt was made).
    assert all(SIGNATURE_HEADER in h.headers for h in receiver.hits)
    times = [h.at for h in receiver.hits]
    intervals = [b - a for a, b in itertools.pairwise(times)]
    # Backoff doubles (±20 % jitter): 0.1 s, 0.2 s, 0.4 s as the receiver sees them.
    assert intervals[0] < intervals[1] < intervals[2], intervals

    row = await wait_status(outbox, event_id, "delivered")
    assert row["attempts"] == 4 and row["last_status"] == 200 and row["last_error"] is None
    log = (await outbox.get_event(event_id))["deliveries"][0]["log"]  # type: ignore[index]
    assert [a["status_code"] for a in log] == [500, 500, 500, 200]
    assert [a["error"] for a in log][:3] == ["HTTP 500 Internal Server Error"] * 3
    assert all(a["duration"] >= 0 and a["time"].endswith("Z") for a in log)
    stats = await outbox.stats()
    assert stats["endpoints"]["hook"]["failed_attempts"] == 3
    assert stats["endpoints"]["hook"]["delivered"] == 1
    assert stats["endpoints"]["hook"]["queue_depth"] == 0


async def test_dead_letter_then_replay_delivers_once(
    receiver: Receiver, outboxes: OutboxFactory
) -> None:
    broken = True
    receiver.answer = lambda n, events: 503 if broken else 200
    outbox = await outboxes(settings_for(hook(receiver, max_attempts=3)))
    first = await outbox.publish(make_event(n=1))
    second = await outbox.publish(make_event(n=2, repository="acme/api"))
    await wait_status(outbox, first, "dead")
    await wait_status(outbox, second, "dead")
    assert len(receiver.hits) == 6  # 3 attempts each, then no more
    dead = await outbox.list_deliveries(status="dead", endpoint="hook")
    assert {r["event_id"] for r in dead} == {first, second}
    stats = (await outbox.stats())["endpoints"]["hook"]
    assert stats["dead"] == 2 and stats["queue_depth"] == 0

    broken = False
    assert await outbox.replay_event(first) == 1
    await receiver.wait_for(lambda: receiver.accepted_ids() == [first], "the replayed event")
    await wait_status(outbox, first, "delivered")
    # The other dead letter stays dead until it is replayed too — by endpoint and time.
    assert (await outbox.list_deliveries(event_id=second))[0]["status"] == "dead"
    assert await outbox.replay_since("hook", time.time() - 60) == 2
    expected = sorted([first, first, second])
    await receiver.wait_for(lambda: sorted(receiver.accepted_ids()) == expected, "both")
    await wait_status(outbox, second, "delivered")
    with pytest.raises(KeyError):
        await outbox.replay_event("no-such-event")
    with pytest.raises(KeyError):
        await outbox.replay_since("no-such-endpoint", 0)


async def test_unreachable_endpoint_is_logged_and_dead_lettered(
    receiver: Receiver, outboxes: OutboxFactory
) -> None:
    url = receiver.url
    await receiver.stop()  # nothing listens there any more
    outbox = await outboxes(
        settings_for({"name": "gone", "url": url, "backoff": "10ms", "max_attempts": 2})
    )
    event_id = await outbox.publish(make_event())
    row = await wait_status(outbox, event_id, "dead")
    assert row["last_status"] is None and "Connect" in row["last_error"]


# -- ordering, filters, several processes --------------------------------------------------------


async def test_order_per_repository_and_no_head_of_line_blocking_across_repositories(
    receiver: Receiver, outboxes: OutboxFactory
) -> None:
    blocked = True

    def answer(n: int, events: list[dict[str, Any]]) -> int:
        return 500 if blocked and events[0]["target"]["repository"] == "acme/slow" else 200

    receiver.answer = answer
    outbox = await outboxes(settings_for(hook(receiver, max_attempts=100, max_backoff="100ms")))
    slow = [await outbox.publish(make_event("acme/slow", n=i, tag=f"s{i}")) for i in range(5)]
    fast = [await outbox.publish(make_event("acme/fast", n=i, tag=f"f{i}")) for i in range(5)]
    # The failing repository does not hold up the other one...
    await receiver.wait_for(lambda: receiver.accepted_ids() == fast, "acme/fast in order")
    # ...and nothing behind its failing head was sent out of order.
    slow_hits = [h.events[0]["id"] for h in receiver.hits if h.answered == 500]
    assert set(slow_hits) == {slow[0]}
    blocked = False
    await receiver.wait_for(lambda: receiver.accepted_ids() == fast + slow, "acme/slow in order")


async def test_filters_decide_which_endpoint_gets_what(
    receiver: Receiver, outboxes: OutboxFactory
) -> None:
    outbox = await outboxes(
        settings_for(
            hook(receiver, name="releases", repositories=["acme/*"], tags=["v*"]),
            hook(
                receiver,
                name="everything",
                actions=["*"],
                ignore_media_types=["application/vnd.oci.image.layer.*"],
            ),
        )
    )
    release = await outbox.publish(make_event(tag="v1.2"))
    latest = await outbox.publish(make_event(tag="latest", n=2))
    foreign = await outbox.publish(make_event("other/web", tag="v1", n=3))
    layer = await outbox.publish(
        make_event(kind="blob", tag=None, n=4, media_type="application/vnd.oci.image.layer.v1.tar")
    )
    pulled = await outbox.publish(make_event(action="pull", n=5))
    await receiver.wait_for(lambda: len(receiver.accepted()) == 5, "five deliveries")
    # The receiver answered; the dispatcher records the outcome right after.
    deadline = time.monotonic() + WAIT
    while len(await outbox.list_deliveries(status="delivered")) < 5:
        assert time.monotonic() < deadline, "deliveries recorded"
        await asyncio.sleep(0.02)
    routed = {
        (row["event_id"], row["endpoint"])
        for row in await outbox.list_deliveries(status="delivered")
    }
    assert routed == {
        (release, "releases"),
        (release, "everything"),
        (latest, "everything"),
        (foreign, "everything"),
        (pulled, "everything"),
    }
    assert layer not in receiver.accepted_ids()


async def test_two_processes_sharing_a_data_dir_deliver_each_event_once(
    receiver: Receiver, outboxes: OutboxFactory, tmp_path: Path
) -> None:
    settings = settings_for(hook(receiver, timeout="5s"))
    # Two outboxes with their own connections and dispatchers stand for two worker processes.
    a = await outboxes(settings, data_dir=tmp_path)
    b = await outboxes(settings, data_dir=tmp_path)
    ids: list[str] = []
    for i in range(40):
        ids.append(await (a if i % 2 else b).publish(make_event(f"acme/r{i % 4}", n=i)))
    await receiver.wait_for(lambda: len(receiver.accepted()) >= len(ids), "every event")
    await asyncio.sleep(0.3)  # room for a duplicate to show up, if leases were broken
    got = receiver.accepted_ids()
    assert sorted(got) == sorted(ids), "each event exactly once"
    for repo in range(4):
        mine = [e for e in ids if e in set(ids[repo::4])]
        assert [e for e in got if e in set(mine)] == mine  # order kept per repository
    assert len(receiver.hits) == len(ids)
    for event_id in ids:
        found = await a.get_event(event_id)
        assert found is not None and len(found["deliveries"][0]["log"]) == 1


# -- subscription --------------------------------------------------------------------------------


async def test_subscription_is_durable_and_acknowledges_after_processing(
    outboxes: OutboxFactory, tmp_path: Path
) -> None:
    settings = settings_for()
    outbox = await outboxes(settings)
    ids = [await outbox.publish(make_event(n=i, tag=f"t{i}")) for i in range(3)]

    async def take(sub: Any, count: int) -> list[str]:
        got = []
        async for env in sub:
            (event,) = parse_envelope(json.dumps(env).encode())
            got.append(event["id"])
            if len(got) == count:
                break
        return got

    async with outbox.subscribe("launcher") as sub:
        assert await take(sub, 1) == ids[:1]
        await sub.ack()  # processed: acknowledged before leaving the loop
        assert await take(sub, 1) == ids[1:2]  # left unacknowledged (as if it crashed)
    await outbox.close()

    # After a restart the unacknowledged event comes again, then the rest, then new ones.
    reopened = await outboxes(settings)
    async with reopened.subscribe("launcher") as sub:
        assert await take(sub, 2) == ids[1:]
        await sub.ack()
        later = asyncio.create_task(take(sub, 1))
        await asyncio.sleep(0.1)
        assert not later.done()  # waits for a publish
        new_id = await reopened.publish(make_event(n=9))
        assert await asyncio.wait_for(later, WAIT) == [new_id]
        await sub.ack()
    stats = await reopened.stats()
    assert stats["subscribers"]["launcher"]["lag"] == 0

    # A new name starting at "latest" skips history; "earliest" replays all retained events.
    async with reopened.subscribe("late", start="latest") as late:
        pending = asyncio.create_task(take(late, 1))
        await asyncio.sleep(0.1)
        newest = await reopened.publish(make_event(n=10))
        assert await asyncio.wait_for(pending, WAIT) == [newest]
    async with reopened.subscribe("fresh") as fresh:
        assert await take(fresh, 5) == [*ids, new_id, newest]


async def test_one_consumer_per_subscription_name_across_processes(
    outboxes: OutboxFactory, tmp_path: Path
) -> None:
    a = await outboxes(settings_for(), data_dir=tmp_path)
    b = await outboxes(settings_for(), data_dir=tmp_path)
    event_id = await a.publish(make_event())
    sub_a = a.subscribe("launcher")
    first = await sub_a.__anext__()
    assert first["events"][0]["id"] == event_id
    sub_b = b.subscribe("launcher")
    waiting = asyncio.create_task(sub_b.__anext__())
    await asyncio.sleep(0.3)
    assert not waiting.done()  # a holds the lease
    await sub_a.ack()
    await sub_a.aclose()  # releases the lease: b takes over after a's acknowledged cursor
    second_id = await a.publish(make_event(n=2))
    got = await asyncio.wait_for(waiting, WAIT)
    assert got["events"][0]["id"] == second_id
    await sub_b.aclose()


# -- operations: admin HTTP and CLI --------------------------------------------------------------


async def test_admin_routes(receiver: Receiver, outboxes: OutboxFactory) -> None:
    receiver.answer = lambda n, events: 500
    outbox = await outboxes(settings_for(hook(receiver, max_attempts=1)))
    event_id = await outbox.publish(make_event())
    await wait_status(outbox, event_id, "dead")

    app = web.Application()
    add_admin_routes(app, outbox)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/admin/events"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base, params={"status": "dead", "endpoint": "hook"}) as resp:
                assert resp.status == 200
                rows = (await resp.json())["deliveries"]
                assert [r["event_id"] for r in rows] == [event_id]
            async with http.get(base, params={"status": "bogus"}) as resp:
                assert resp.status == 400
            async with http.get(f"{base}/{event_id}") as resp:
                detail = await resp.json()
                assert detail["event"]["id"] == event_id
                assert detail["deliveries"][0]["log"][0]["status_code"] == 500
            async with http.get(f"{base}/stats") as resp:
                assert (await resp.json())["endpoints"]["hook"]["dead"] == 1
            async with http.get(f"{base}/unknown-id") as resp:
                assert resp.status == 404
            async with http.post(f"{base}/unknown-id/replay") as resp:
                assert resp.status == 404

            receiver.answer = lambda n, events: 200
            async with http.post(f"{base}/{event_id}/replay") as resp:
                assert resp.status == 202 and (await resp.json()) == {"scheduled": 1}
            await receiver.wait_for(lambda: receiver.accepted_ids() == [event_id], "replay")

            async with http.post(f"{base}/replay", params={"endpoint": "hook"}) as resp:
                assert resp.status == 400
            async with http.post(
                f"{base}/replay", params={"endpoint": "nope", "since": "1h"}
            ) as resp:
                assert resp.status == 404
            async with http.post(
                f"{base}/replay", params={"endpoint": "hook", "since": "1h"}
            ) as resp:
                assert resp.status == 202 and (await resp.json()) == {"scheduled": 1}
            await receiver.wait_for(lambda: receiver.accepted_ids() == [event_id] * 2, "again")
    finally:
        await runner.cleanup()


def test_cli_list_show_replay(tmp_path: Path) -> None:
    # Synchronous on purpose: the CLI runs its own event loop, like `dockyard events …` does.
    settings = NotificationSettings.from_dict(
        {"endpoints": [{"name": "ci", "url": "http://127.0.0.1:9/hook", "max_attempts": 1}]}
    )

    async def seed() -> list[str]:
        outbox = await open_events(tmp_path, settings, source_addr="s", instance_id="i")
        try:
            ids = [await outbox.publish(make_event(n=i, tag=f"v{i}")) for i in range(2)]
        finally:
            await outbox.close()
        return ids

    ids = asyncio.run(seed())
    parser = argparse.ArgumentParser(prog="dockyard")
    register(
        parser.add_subparsers(dest="command"),
        lambda a: (lambda: open_database(None, Path(a.data)), settings),
    )

    def run(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args([*argv, "--data", str(tmp_path)])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = args.func(args)
        return code, out.getvalue(), err.getvalue()

    code, out, _ = run("events", "list", "--status", "pending", "--json")
    assert code == 0 and {r["event_id"] for r in json.loads(out)} == set(ids)
    code, out, _ = run("events", "list", "--endpoint", "ci")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["EVENT", "ENDPOINT", "STATUS"]
    assert "acme/web:v1" in out
    code, out, _ = run("events", "show", ids[0], "--json")
    assert json.loads(out)["event"]["id"] == ids[0]
    code, out, _ = run("events", "replay", ids[1])
    assert code == 0 and out.strip() == "scheduled 1 delivery"
    code, out, _ = run("events", "replay", "--endpoint", "ci", "--since", "2h")
    assert code == 0 and out.strip() == "scheduled 2 deliveries"
    code, _, err = run("events", "replay", "missing-id")
    assert code == 2 and "unknown event" in err
    code, _, err = run("events", "replay", "--endpoint", "ci")
    assert code == 2 and "--since" in err
    code, out, _ = run("events", "stats")
    assert json.loads(out)["endpoints"]["ci"]["pending"] == 2

    # A composition root may hand in its own `--config/--data` parser instead.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", type=Path)
    other = argparse.ArgumentParser(prog="dockyard")
    register(
        other.add_subparsers(dest="command"),
        lambda a: (lambda: open_database(None, a.data), settings),
        parents=[common],
    )
    args = other.parse_args(["events", "list", "--json", "--data", str(tmp_path)])
    out_buf = io.StringIO()
    with contextlib.redirect_stdout(out_buf):
        assert args.func(args) == 0
    assert len(json.loads(out_buf.getvalue())) == 2

    def broken(_: argparse.Namespace) -> tuple[Path, NotificationSettings]:
        return tmp_path, NotificationSettings.from_dict({"endpoints": [{"name": "x"}]})

    bad = argparse.ArgumentParser(prog="dockyard")
    register(bad.add_subparsers(dest="command"), broken)
    args = bad.parse_args(["events", "stats"])
    err_buf = io.StringIO()
    with contextlib.redirect_stderr(err_buf):
        assert args.func(args) == 2
    assert "url" in err_buf.getvalue()


async def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    outbox = await open_events(tmp_path, settings_for(), source_addr="s", instance_id="i")
    event_id = await outbox.publish(make_event())
    await outbox.close()
    db_path = tmp_path / "metadata.db"
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = "SELECT version FROM schema_migrations WHERE component = 'events'"
        assert db.execute(version).fetchone() == (len(STEPS),)
    # Reopening migrates nothing and keeps the data.
    again = await open_events(tmp_path, settings_for(), source_addr="s", instance_id="i")
    assert (await again.get_event(event_id)) is not None
    await again.close()
    # A database from a newer dockyard is refused rather than misread.
    with sqlite3.connect(db_path) as db:
        db.execute(
            "UPDATE schema_migrations SET version = ? WHERE component = 'events'",
            (len(STEPS) + 1,),
        )
    with pytest.raises(SchemaTooNew, match="newer"):
        await open_events(tmp_path, settings_for(), source_addr="s", instance_id="i")


async def test_retention_deletes_old_events_with_their_log(outboxes: OutboxFactory) -> None:
    outbox = await outboxes(
        settings_for({"name": "x", "url": "http://127.0.0.1:9/", "max_attempts": 1}), start=False
    )
    old = await outbox.publish(make_event(n=1))
    cutoff = time.time() + 0.001
    await asyncio.sleep(0.01)
    kept = await outbox.publish(make_event(n=2))
    assert await outbox.prune(older_than=cutoff) == 1
    assert await outbox.get_event(old) is None
    assert await outbox.list_deliveries(event_id=old) == []  # deliveries went with it
    assert await outbox.get_event(kept) is not None
    assert (await outbox.stats())["events"] == 1
