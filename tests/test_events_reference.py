"""Compatibility with the reference registry's notifications (CNCF distribution 2.8.2).

The reference registry is configured with a `notifications` endpoint pointing at our receiver;
a push (blobs, then a manifest by tag), a pull and a delete by digest are made with raw HTTP. The
receiver parses every body with `parse_envelope`, the launcher's reader (`launcher.events.pushes`)
picks the same push out of both streams, and dockyard's own events for the same actions must carry
every field the reference's carry.

Note: distribution 2.8.2 sends `Content-Type: application/vnd.docker.distribution.events.v1+json`
although its documentation says v2; dockyard sends the documented v2, and no reader here looks at
the content type.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import aiohttp

from launcher.events import pushes
from registry.events import open_events
from tests.apiclient import push_to
from tests.support.reference import reference_registry
from tests.test_events_delivery import Receiver, hook, make_event, settings_for

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


async def push_pull_delete(base: str) -> tuple[str, int]:
    """Push an image as `acme/web:v1`, pull it, delete it by digest; return its digest, size."""
    layer, config = b"layer bytes", b'{"architecture":"amd64","os":"linux"}'
    async with aiohttp.ClientSession() as http:
        digest, size = await push_to(http, base, "acme/web", "v1", layer, config)
        async with http.get(
            f"{base}/v2/acme/web/manifests/v1", headers={"Accept": MANIFEST_TYPE}
        ) as resp:
            assert resp.status == 200
        async with http.delete(f"{base}/v2/acme/web/manifests/{digest}") as resp:
            assert resp.status == 202, await resp.text()
    return digest, size


def find(events: list[dict[str, Any]], action: str, **target: Any) -> dict[str, Any]:
    for event in events:
        fields = event["target"]
        if event["action"] == action and all(fields.get(k) == v for k, v in target.items()):
            return event
    raise AssertionError(f"no {action} event with {target} in {json.dumps(events, indent=1)}")


async def test_one_parser_reads_reference_and_dockyard_events(tmp_path: Any) -> None:
    receiver = await Receiver(secret=None).start()
    notifications = {
        "notifications": {
            "endpoints": [
                {
                    "name": "receiver",
                    "url": receiver.url,
                    "timeout": "2s",
                    "threshold": 3,
                    "backoff": "100ms",
                }
            ]
        }
    }
    registry = reference_registry(notifications)
    try:
        ref = await asyncio.to_thread(registry.__enter__)
        try:
            digest, size = await push_pull_delete(ref.url)
            # blob, blob, manifest push, pull, delete by digest, delete of the tag it had.
            await receiver.wait_for(lambda: len(receiver.accepted()) >= 6, "reference events")
        finally:
            await asyncio.to_thread(registry.__exit__, None, None, None)
    finally:
        await receiver.stop()
    # Every body the reference sent was read by parse_envelope (a refusal would answer 400).
    assert receiver.hits and all(hit.answered == 200 for hit in receiver.hits)
    theirs = receiver.accepted()

    pushed = find(theirs, "push", digest=digest, tag="v1")
    assert pushed["target"]["mediaType"] == MANIFEST_TYPE and pushed["target"]["size"] == size
    pulled = find(theirs, "pull", digest=digest)
    deleted = find(theirs, "delete", digest=digest)
    untagged = find(theirs, "delete", tag="v1")
    assert {e["source"]["instanceID"] for e in (pushed, pulled, deleted)} != {""}

    # Dockyard's events for the same actions, through the same receiver and parser.
    ours_receiver = await Receiver(secret=None).start()
    outbox = await open_events(
        tmp_path,
        settings_for(hook(ours_receiver, secret=[], actions=["*"])),
        source_addr="reg.test:5000",
        instance_id="dockyard-1",
    )
    await outbox.start()
    try:
        await outbox.publish(make_event(tag="v1", n=1))
        await outbox.publish(make_event(action="pull", tag="v1", n=1))
        deleted_digest = make_event(action="delete", tag=None, n=1, media_type="", size=0)
        await outbox.publish(replace(deleted_digest, url=""))
        deleted_tag = make_event(action="delete", tag="v1", n=1, media_type="", size=0)
        await outbox.publish(replace(deleted_tag, url="", digest=""))
        await ours_receiver.wait_for(lambda: len(ours_receiver.accepted()) == 4, "our events")
    finally:
        await outbox.close()
        await ours_receiver.stop()
    ours = ours_receiver.accepted()
    pairs = [
        (pushed, find(ours, "push")),
        (pulled, find(ours, "pull")),
        (deleted, find(ours, "delete", digest=make_event().digest)),
        (untagged, find(ours, "delete", tag="v1")),
    ]
    # The launcher's reader takes the manifest push (and only it) from either registry.
    (their_push,) = pushes({"events": theirs})
    (our_push,) = pushes({"events": ours})
    assert (their_push.repository, their_push.tag, their_push.digest) == ("acme/web", "v1", digest)
    assert (our_push.repository, our_push.tag) == ("acme/web", "v1")
    assert our_push.event_id == find(ours, "push")["id"]
    for reference_event, our_event in pairs:
        # Same fields at every level; ours adds only `target.customer`.
        assert set(our_event) == set(reference_event)
        assert set(our_event["target"]) - {"customer"} == set(reference_event["target"])
        for record in ("request", "source"):
            assert set(our_event[record]) == set(reference_event[record]), record
