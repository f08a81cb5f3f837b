"""Events: configuration, envelope shape, parser, signatures, backoff — no network needed."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import time
from pathlib import Path

import pytest

from dockyard.core.envelope import ENVELOPE_MEDIA_TYPE, cloudevent
from dockyard.core.signing import compute, sign, verify
from registry.events import (
    ConfigError,
    EndpointConfig,
    EnvelopeError,
    NotificationSettings,
    RegistryEvent,
    RequestRecord,
    parse_envelope,
)
from registry.events.config import parse_duration
from registry.events.dispatcher import backoff_delay, render
from registry.events.envelope import build_event
from registry.events.since import parse_since

DIGEST = "sha256:" + "ab" * 32
REQ = RequestRecord(id="r1", addr="10.0.0.1:5555", host="reg.local", method="PUT", useragent="x")


def event(**changes: object) -> RegistryEvent:
    base: dict[str, object] = {
        "action": "push",
        "customer": "acme",
        "repository": "acme/web",
        "digest": DIGEST,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "size": 708,
        "tag": "1.0",
        "url": f"http://reg.local/v2/acme/web/manifests/{DIGEST}",
        "request": REQ,
        "actor": "alice",
    }
    base.update(changes)
    return RegistryEvent(**base)  # type: ignore[arg-type]


def endpoint(**changes: object) -> EndpointConfig:
    return EndpointConfig.from_dict({"name": "e", "url": "http://127.0.0.1:1/hook", **changes})


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1s", 1.0), ("1m30s", 90.0), ("2h", 7200.0), ("7d", 604800.0), (3, 3.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5 parsecs", "1s2", "-1s", True, None, "ms"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(bad)


def test_endpoint_defaults_and_full_table() -> None:
    plain = endpoint()
    assert plain.actions == ("push", "delete")
    assert plain.format == "envelope" and plain.secrets == () and plain.max_attempts >= 1
    full = EndpointConfig.from_dict(
        {
            "name": "ci",
            "url": "https://ci.example/hook",
            # The reference registry's list-valued headers work as well as plain strings.
            "headers": {"Authorization": ["Bearer x"], "X-Team": "infra"},
            "timeout": "500ms",
            "backoff": "100ms",
            "max_backoff": "10s",
            "max_attempts": 4,
            "actions": ["push"],
            "repositories": ["acme/*"],
            "tags": ["v*"],
            "ignore_media_types": ["application/octet-stream"],
            "format": "cloudevents",
            "secret": "s3",
            "threshold": 5,
        }
    )
    assert full.headers == (("Authorization", "Bearer x"), ("X-Team", "infra"))
    assert (full.timeout, full.backoff, full.max_backoff) == (0.5, 0.1, 10.0)
    assert full.secrets == ("s3",) and full.format == "cloudevents"
    # The secret must not leak through logs of the configuration.
    assert "s3" not in repr(full)


def test_reference_style_ignore_block() -> None:
    ep = endpoint(ignore={"mediatypes": ["application/octet-stream"], "actions": ["delete"]})
    assert ep.actions == ("push",)
    assert not ep.matches(event(media_type="application/octet-stream", kind="blob"))


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "from-env")
    assert endpoint(secret_env="HOOK_SECRET").secrets == ("from-env",)
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(ConfigError):
        endpoint(secret_env="HOOK_SECRET")


@pytest.mark.parametrize(
    "bad",
    [
        {"url": "ftp://x/"},
        {"url": "not a url"},
        {"name": "has space"},
        {"format": "xml"},
        {"max_attempts": 0},
        {"secret": ""},
        {"backoff": "10s", "max_backoff": "1s"},
        {"retries": 3},  # a typo must not be ignored silently
        {"headers": {"X": "a\r\nInjected: yes"}},
        {"github_signature": True},  # without a secret there is nothing to sign with
    ],
)
def test_invalid_endpoints(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        EndpointConfig.from_dict({"name": "e", "url": "http://h/", **bad})


def test_settings_section() -> None:
    settings = NotificationSettings.from_dict(
        {
            "poll_interval": "200ms",
            "retention": "2d",
            "endpoints": [{"name": "a", "url": "http://a/"}, {"name": "b", "url": "http://b/"}],
        }
    )
    assert [e.name for e in settings.endpoints] == ["a", "b"]
    assert settings.poll_interval == 0.2 and settings.retention == 172800.0
    assert settings.endpoint("b") is settings.endpoints[1] and settings.endpoint("c") is None
    assert NotificationSettings.from_dict(None).endpoints == ()
    with pytest.raises(ConfigError):
        NotificationSettings.from_dict(
            {"endpoints": [{"name": "a", "url": "http://a/"}, {"name": "a", "url": "http://b/"}]}
        )
    with pytest.raises(ConfigError):
        NotificationSettings.from_dict({"endpoint": []})


def test_endpoint_filters() -> None:
    ep = endpoint(
        actions=["push", "delete"],
        repositories=["acme/*"],
        tags=["v*"],
        ignore_media_types=["application/vnd.oci.image.layer.*"],
    )
    assert ep.matches(event(tag="v1"))
    assert not ep.matches(event(tag="latest"))
    assert not ep.matches(event(tag=None))  # a tag filter wants a tag
    assert not ep.matches(event(tag="v1", repository="other/web"))
    assert not ep.matches(event(tag="v1", action="pull"))
    assert not ep.matches(
        event(tag="v1", kind="blob", media_type="application/vnd.oci.image.layer.v1.tar+gzip")
    )
    assert endpoint(actions=["*"]).matches(event(action="pull"))
    assert not NotificationSettings(endpoints=(ep,)).wants_action("pull")
    assert NotificationSettings(endpoints=(ep,)).wants_action("push")
    assert NotificationSettings(endpoints=(ep, endpoint(actions=["pull"]))).wants_action("pull")
    assert not endpoint(disabled=True).matches(event())


# -- envelope ------------------------------------------------------------------------------------


def test_push_event_has_the_reference_shape() -> None:
    # spec: distribution-notifications.md, "Events" — field names and nesting.
    built = build_event(
        event(), event_id="id-1", timestamp=0.5, source_addr="reg:5000", instance_id="i-1"
    )
    assert built == {
        "id": "id-1",
        "timestamp": "1970-01-01T00:00:00.500000Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 708,
            "digest": DIGEST,
            "length": 708,
            "repository": "acme/web",
            "url": f"http://reg.local/v2/acme/web/manifests/{DIGEST}",
            "tag": "1.0",
            "customer": "acme",
        },
        "request": {
            "id": "r1",
            "addr": "10.0.0.1:5555",
            "host": "reg.local",
            "method": "PUT",
            "useragent": "x",
        },
        "actor": {"name": "alice"},
        "source": {"addr": "reg:5000", "instanceID": "i-1"},
    }


def test_delete_by_digest_sends_only_what_is_known() -> None:
    # spec: "the target struct of events which are sent when manifests and blobs are deleted
    # contains a subset ... only the digest and repository are sent" (plus our customer).
    built = build_event(
        event(action="delete", media_type="", size=0, tag=None, url="", actor=None),
        event_id="id-2",
        timestamp=0,
        source_addr="reg:5000",
        instance_id="i-1",
    )
    assert built["target"] == {"digest": DIGEST, "repository": "acme/web", "customer": "acme"}
    assert built["actor"] == {}


def test_parse_envelope_reads_the_spec_example() -> None:
    # The spec's example uses only `length` (pre-2.1 registries): readers get `size` too.
    body = json.dumps(
        {
            "events": [
                {
                    "id": "asdf-asdf-asdf-asdf-0",
                    "timestamp": "2006-01-02T15:04:05Z",
                    "action": "push",
                    "target": {
                        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "digest": DIGEST,
                        "length": 1,
                        "repository": "library/test",
                        "url": "https://example.com/v2/library/test/manifests/" + DIGEST,
                    },
                    "request": {"id": "asdfasdf", "addr": "client.local", "method": "PUT"},
                    "actor": {"name": "test-actor"},
                    "source": {"addr": "hostname.local:port"},
                    "somethingNew": True,
                }
            ]
        }
    ).encode()
    (parsed,) = parse_envelope(body)
    assert parsed["target"]["size"] == 1 and parsed["target"]["length"] == 1
    assert parsed["somethingNew"] is True  # unknown fields survive


def test_parse_envelope_reads_cloudevents() -> None:
    built = build_event(event(), event_id="id-3", timestamp=1, source_addr="s", instance_id="i")
    single = json.dumps(cloudevent(built, kind="manifest")).encode()
    batch = json.dumps([cloudevent(built), cloudevent(built)]).encode()
    assert parse_envelope(single) == [built]
    assert parse_envelope(batch) == [built, built]
    ce = cloudevent(built, kind="manifest")
    assert ce["type"] == "io.dockyard.registry.manifest.push"
    assert ce["subject"] == "acme/web:1.0" and ce["id"] == "id-3" and ce["specversion"] == "1.0"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[1]",
        b'"events"',
        b"{}",
        b'{"events": {}}',
        b'{"events": [{"id": "x", "target": {"repository": "r"}}]}',
        b'{"events": [{"id": "x", "action": "push", "target": {}}]}',
        b'{"events": [{"action": "push", "target": {"repository": "r"}}]}',
        b'{"specversion": "1.0", "data": null}',
    ],
)
def test_parse_envelope_rejects_what_is_not_an_envelope(body: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope(body)


def test_render_formats() -> None:
    built = build_event(event(), event_id="id-4", timestamp=1, source_addr="s", instance_id="i")
    body, ctype = render(endpoint(), built, "manifest")
    assert ctype == ENVELOPE_MEDIA_TYPE and json.loads(body) == {"events": [built]}
    body, ctype = render(endpoint(format="cloudevents"), built, "manifest")
    assert ctype == "application/cloudevents+json" and json.loads(body)["data"] == built


# -- signatures ----------------------------------------------------------------------------------


def test_signature_round_trip_and_tampering() -> None:
    body = b'{"events":[]}'
    header = sign(["k1"], body, timestamp=1_700_000_000)
    assert header == f"t=1700000000,v1={compute('k1', 1_700_000_000, body)}"
    assert verify("k1", header, body, now=1_700_000_010)
    assert not verify("k1", header, body + b" ", now=1_700_000_010)  # tampered body
    assert not verify("k2", header, body, now=1_700_000_010)  # wrong secret
    assert not verify("k1", header, body, now=1_700_000_000 + 301)  # too old: replayed
    forged = header.replace("t=1700000000", "t=1700000300")  # a fresh timestamp, old hmac
    assert not verify("k1", forged, body, now=1_700_000_300)
    assert not verify("k1", None, body) and not verify("k1", "garbage", body)
    assert not verify("k1", "t=abc,v1=00", body)


def test_rotation_signs_with_every_secret() -> None:
    body = b"x"
    header = sign(["old", "new"], body)
    assert header.count("v1=") == 2
    assert verify("old", header, body) and verify("new", header, body)


# -- backoff and times ---------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_caps() -> None:
    ep = endpoint(backoff="1s", max_backoff="30s", jitter=0.2)
    rng = random.Random(7)
    for failures in range(1, 5):
        base = 2 ** (failures - 1)
        delay = backoff_delay(ep, failures, rng)
        assert base * 0.8 <= delay <= base * 1.2
    assert all(backoff_delay(ep, n, rng) <= 30.0 for n in range(5, 200))
    # Jitter actually varies the delay (spreading retries of many events apart).
    assert len({backoff_delay(ep, 3, rng) for _ in range(20)}) > 1


def test_parse_since() -> None:
    assert parse_since("1700000000") == 1_700_000_000
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000
    assert parse_since("2023-11-14T22:13:20") == 1_700_000_000  # naive means UTC
    assert parse_since("2h", now=10_000) == 10_000 - 7200
    with pytest.raises(ValueError):
        parse_since("yesterday-ish")


# -- the README's promises -----------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "registry" / "events" / "README.md"


def readme_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_readme_example_delivery_is_genuinely_signed() -> None:
    head, _, body = readme_block("http", "Dockyard-Signature").partition("\n\n")
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    raw = body.strip().encode()
    assert int(headers["Content-Length"]) == len(raw)
    signature = headers["Dockyard-Signature"]
    signed_at = int(signature.split(",")[0].removeprefix("t="))
    assert verify("whsec_example", signature, raw, now=signed_at)
    (event,) = parse_envelope(raw)
    assert event["id"] == headers["Dockyard-Event-Id"]


def test_readme_verification_recipe_works() -> None:
    namespace: dict[str, object] = {}
    exec(readme_block("python", "def verify_dockyard_signature"), namespace)
    recipe = namespace["verify_dockyard_signature"]
    body = b'{"events":[]}'
    header = sign(["s3cret"], body)
    assert recipe("s3cret", header, body)  # type: ignore[operator]
    assert not recipe("s3cret", header, body + b"x")  # type: ignore[operator]
    assert not recipe("other", header, body)  # type: ignore[operator]
    assert not recipe("s3cret", "", body)  # type: ignore[operator]
    stale = sign(["s3cret"], body, timestamp=int(time.time()) - 3600)
    assert not recipe("s3cret", stale, body)  # type: ignore[operator]
    # The recipe and `signing.verify` agree on the construction.
    mac = hmac.new(b"k", b"5." + body, hashlib.sha256).hexdigest()
    assert compute("k", 5, body) == mac
