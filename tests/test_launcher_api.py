"""The launcher's HTTP API and CLI over real HTTP on loopback, with its real SQLite state.

No engine is needed here: deployments that would need one fail with a reason, and a service with
desiredCount 0 deploys without any. The engine paths are in test_launcher_e2e.py.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import stat
import uuid
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest
from aiohttp import web

from dockyard.core.envelope import ENVELOPE_MEDIA_TYPE
from dockyard.core.signing import sign
from launcher.app import LAUNCHER_KEY, make_app
from launcher.cli import main_with, register
from launcher.config import LauncherSettings

TOKEN = "test-token"
SECRET = "shared-secret"
DIGEST1 = "sha256:" + "1" * 64
DIGEST2 = "sha256:" + "2" * 64
TD = {"family": "web", "containerDefinitions": [
    {"name": "web", "image": "acme/web", "cpu": 128, "memory": 32,
     "portMappings": [{"name": "http"}], "command": ["sh", "-c", "exec httpd -f -p $PORT"]}]}


def settings(tmp_path, **extra: Any) -> LauncherSettings:
    section = {"enabled": True, "registry": "127.0.0.1:5999", "api_token": TOKEN,
               "events_secret": SECRET, "events_hmac_key": "hmac-key",
               "instance_types": {"small": {"cpu": 512, "memory": 256},
                                  "large": {"cpu": 2048, "memory": 1024}},
               "poll_interval": 0.05, "reconcile_interval": 60, **extra}
    return LauncherSettings.from_dict(section, tmp_path)


@pytest.fixture
async def events_seen():
    return []


@pytest.fixture
async def client(aiohttp_client, tmp_path, events_seen):
    async def listener(event: dict[str, Any]) -> None:
        events_seen.append(event)

    app = make_app(settings(tmp_path), on_deployment_event=listener)
    return await aiohttp_client(app)


H = {"Authorization": f"Bearer {TOKEN}"}


async def call(client, method, path, body=None, status=200, headers=H):
    resp = await client.request(method, "/launcher/v1" + path, json=body, headers=headers)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text) if text and resp.content_type == "application/json" else text


def envelope(digest=DIGEST1, tag="v1", repository="acme/web", event_id=None, action="push",
             media_type="application/vnd.docker.distribution.manifest.v2+json"):
    return {"events": [{
        "id": event_id or uuid.uuid4().hex, "timestamp": "2024-01-01T00:00:00Z",
        "action": action,
        "target": {"mediaType": media_type, "digest": digest, "size": 1, "length": 1,
                   "repository": repository, "tag": tag,
                   "url": f"http://127.0.0.1:5999/v2/{repository}/manifests/{digest}"},
        "request": {"id": "r", "addr": "1.2.3.4", "host": "127.0.0.1:5999", "method": "PUT",
                    "useragent": "t"},
        "actor": {"name": "alice"}, "source": {"addr": "reg:5000", "instanceID": "i"},
    }]}


async def post_events(client, body: dict, headers: dict[str, str], status: int = 202) -> None:
    raw = json.dumps(body).encode()
    resp = await client.post("/launcher/v1/events", data=raw,
                             headers={"Content-Type": ENVELOPE_MEDIA_TYPE, **headers})
    assert resp.status == status, await resp.text()


async def until_terminal(client, service: str, digest: str) -> dict:
    for _ in range(200):
        deps = (await call(client, "GET", f"/deployments?service={service}"))["deployments"]
        mine = [d for d in deps if d["digest"] == digest]
        if mine and mine[0]["state"] in ("SUCCESSFUL", "FAILED", "ROLLED_BACK", "BLOCKED"):
            return await call(client, "GET", f"/deployments/{mine[0]['id']}")
        await asyncio.sleep(0.05)
    raise AssertionError(deps)


# --- access -----------------------------------------------------------------------------------


async def test_management_api_needs_the_token(client):
    resp = await client.get("/launcher/v1/services")
    assert resp.status == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
    assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    resp = await client.get("/launcher/v1/services", headers={"Authorization": "Bearer nope"})
    assert resp.status == 403
    assert (await call(client, "GET", "/services")) == {"services": []}


async def test_generated_token_is_private_and_required(aiohttp_client, tmp_path):
    app = make_app(settings(tmp_path, api_token=None))
    client = await aiohttp_client(app)
    path = tmp_path / "launcher" / "api-token"
    token = path.read_text().strip()
    assert len(token) >= 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert (await client.get("/launcher/v1/services")).status == 401
    await call(client, "GET", "/services", headers={"Authorization": f"Bearer {token}"})


async def test_events_endpoint_authentication(client, aiohttp_client, tmp_path):
    await post_events(client, envelope(), {}, status=401)
    await post_events(client, envelope(), {"Authorization": "Bearer wrong"}, status=401)
    await post_events(client, envelope(), {"Authorization": f"Bearer {TOKEN}"}, status=401)
    await post_events(client, envelope(), {"Authorization": f"Bearer {SECRET}"})
    body = envelope()
    raw = json.dumps(body).encode()
    await post_events(client, body, {"Dockyard-Signature": sign(["hmac-key"], raw)})
    await post_events(client, body, {"Dockyard-Signature": sign(["other"], raw)},
                      status=401)
    resp = await client.post("/launcher/v1/events", data=b"{nope",
                             headers={"Authorization": f"Bearer {SECRET}"})
    assert resp.status == 400
    # With no secret configured nobody may send events.
    closed = await aiohttp_client(make_app(settings(tmp_path / "x", events_secret=None,
                                                    events_hmac_key=None)))
    await post_events(closed, envelope(), {"Authorization": "Bearer "}, status=403)


# --- resources --------------------------------------------------------------------------------


async def test_task_definition_revisions(client):
    first = await call(client, "POST", "/task-definitions", TD, status=201)
    second = await call(client, "POST", "/task-definitions", TD, status=201)
    assert (first["revision"], second["revision"]) == (1, 2)
    assert (await call(client, "GET", "/task-definitions/web/latest"))["revision"] == 2
    await call(client, "DELETE", "/task-definitions/web/2")
    assert (await call(client, "GET", "/task-definitions/web/latest"))["revision"] == 1
    assert (await call(client, "GET", "/task-definitions/web/2"))["status"] == "INACTIVE"
    listed = await call(client, "GET", "/task-definitions/web")
    assert [t["revision"] for t in listed["taskDefinitions"]] == [1, 2]
    await call(client, "GET", "/task-definitions/nope", status=404)
    err = await call(client, "POST", "/task-definitions", {"family": "x"}, status=400)
    assert err["errors"][0]["code"] == "INVALID"
    resp = await client.post("/launcher/v1/task-definitions", data=b"[", headers=H)
    assert resp.status == 400


async def test_instance_types_and_instance_registration_errors(client, tmp_path):
    types = (await call(client, "GET", "/instance-types"))["instanceTypes"]
    assert [t["name"] for t in types] == ["small", "large"]
    await call(client, "POST", "/instances", {"endpoint": "http://x"}, status=400)
    err = await call(client, "POST", "/instances",
                     {"endpoint": f"unix://{tmp_path}/no.sock", "type": "small"}, status=400)
    assert "no Docker Engine answers" in err["errors"][0]["message"]
    err = await call(client, "POST", "/instances", {"provider": "local", "type": "small"},
                     status=400)
    assert "no provider" in err["errors"][0]["message"]
    await call(client, "GET", "/instances/nope", status=404)


async def test_services_crud_and_validation(client):
    await call(client, "POST", "/services", {"name": "web", "repository": "acme/web",
                                             "taskDefinition": "web"}, status=404)
    await call(client, "POST", "/task-definitions", TD, status=201)
    svc = await call(client, "POST", "/services", {
        "name": "web", "repository": "acme/web", "taskDefinition": "web", "tags": ["v*"]},
        status=201)
    assert svc["desiredCount"] == 1 and svc["revision"] is None
    await call(client, "POST", "/services", {"name": "web", "repository": "acme/web",
                                             "taskDefinition": "web"}, status=409)
    updated = await call(client, "PATCH", "/services/web",
                         {"desiredCount": 3, "placementStrategy": [{"type": "random"}]})
    assert updated["desiredCount"] == 3 and updated["placementStrategy"] == [{"type": "random"}]
    await call(client, "PATCH", "/services/web", {"desiredCount": -1}, status=400)
    shown = await call(client, "GET", "/services/web")
    assert shown["runningCount"] == 0 and shown["tasks"] == []
    await call(client, "DELETE", "/services/web", status=202)
    for _ in range(100):
        if not (await call(client, "GET", "/services"))["services"]:
            break
        await asyncio.sleep(0.05)
    assert (await call(client, "GET", "/services"))["services"] == []


# --- push events to deployments ---------------------------------------------------------------


async def test_push_without_any_instance_fails_with_a_reason(client, events_seen):
    await call(client, "POST", "/task-definitions", TD, status=201)
    await call(client, "POST", "/services", {"name": "web", "repository": "acme/web",
                                             "taskDefinition": "web", "tags": ["v*"]},
               status=201)
    await post_events(client, envelope(tag="latest"), {"Authorization": f"Bearer {SECRET}"})
    await post_events(client, envelope(action="pull"), {"Authorization": f"Bearer {SECRET}"})
    await post_events(client, envelope(media_type="application/vnd.oci.image.layer.v1.tar"),
                      {"Authorization": f"Bearer {SECRET}"})
    assert (await call(client, "GET", "/deployments"))["deployments"] == []

    await post_events(client, envelope(event_id="e-1"), {"Authorization": f"Bearer {SECRET}"})
    dep = await until_terminal(client, "web", DIGEST1)
    # Nowhere to run it is a placement problem, not a bad image: BLOCKED, not FAILED.
    assert dep["state"] == "BLOCKED" and dep["failure"] == "CANNOT_PLACE"
    assert "cannot place" in dep["reason"] and "no instance is registered" in dep["reason"]
    assert dep["registry"] == "127.0.0.1:5999" and dep["image"] == f"acme/web@{DIGEST1}"
    assert [e["state"] for e in events_seen] == ["PENDING", "IN_PROGRESS", "BLOCKED"]
    assert events_seen[-1]["previousState"] == "IN_PROGRESS"
    # The same event delivered again (registries retry) starts nothing new.
    await post_events(client, envelope(event_id="e-1"), {"Authorization": f"Bearer {SECRET}"})
    await asyncio.sleep(0.2)
    assert len((await call(client, "GET", "/deployments"))["deployments"]) == 1


async def test_desired_zero_deploys_without_engines_and_marks_images_in_use(client, events_seen):
    await call(client, "POST", "/task-definitions", TD, status=201)
    await call(client, "POST", "/services", {"name": "web", "repository": "acme/web",
                                             "taskDefinition": "web", "desiredCount": 0},
               status=201)
    launcher = client.app[LAUNCHER_KEY]
    await launcher.handle_envelope(envelope(DIGEST1))  # the in-process path
    dep = await until_terminal(client, "web", DIGEST1)
    assert dep["state"] == "SUCCESSFUL"
    assert await launcher.images_in_use() == {f"acme/web@{DIGEST1}"}
    # The same digest under another tag is already current: no new deployment.
    await launcher.handle_envelope(envelope(DIGEST1, tag="v1-again"))
    assert len((await call(client, "GET", "/deployments"))["deployments"]) == 1
    # A manual deployment through the API.
    made = await call(client, "POST", "/services/web/deployments", {"digest": DIGEST2},
                      status=201)
    assert made["deployment"]["trigger"] == "api"
    assert (await until_terminal(client, "web", DIGEST2))["state"] == "SUCCESSFUL"
    # The previous image stays in use too: `services rollback --previous` returns to it.
    assert await launcher.images_in_use() == {f"acme/web@{DIGEST2}", f"acme/web@{DIGEST1}"}
    assert (await call(client, "GET", "/images-in-use"))["images"] == [
        f"acme/web@{DIGEST1}", f"acme/web@{DIGEST2}"]
    await call(client, "POST", "/services/web/deployments", {"digest": "sha256:bad"},
               status=400)
    # A new task definition revision for the running image rolls out by itself.
    await call(client, "POST", "/task-definitions", TD, status=201)
    await call(client, "PATCH", "/services/web", {"taskDefinition": "web:2"})
    await launcher.wait_idle()
    latest = (await call(client, "GET", "/deployments?service=web&limit=1"))["deployments"][0]
    assert (latest["digest"], latest["revision"]) == (DIGEST2, 2)
    assert latest["trigger"] == "api: task definition" and latest["state"] == "SUCCESSFUL"


async def test_newer_pending_push_supersedes_older(client):
    await call(client, "POST", "/task-definitions", TD, status=201)
    await call(client, "POST", "/services", {"name": "web", "repository": "acme/web",
                                             "taskDefinition": "web", "desiredCount": 0},
               status=201)
    launcher = client.app[LAUNCHER_KEY]
    both = {"events": envelope(DIGEST1, "a")["events"] + envelope(DIGEST2, "b")["events"]}
    await launcher.handle_envelope(both)
    await launcher.wait_idle()
    deps = {d["digest"]: d for d in (await call(client, "GET", "/deployments"))["deployments"]}
    assert deps[DIGEST2]["state"] == "SUCCESSFUL"
    # The first either ran before the second arrived or was superseded: never left pending.
    assert deps[DIGEST1]["state"] in ("SUCCESSFUL", "FAILED")
    if deps[DIGEST1]["state"] == "FAILED":
        assert "superseded" in deps[DIGEST1]["reason"]


async def test_task_definition_missing_at_push_fails_clearly(client):
    await call(client, "POST", "/task-definitions", TD, status=201)
    await call(client, "POST", "/services", {"name": "web", "repository": "acme/web",
                                             "taskDefinition": "web"}, status=201)
    await call(client, "DELETE", "/task-definitions/web/1")  # the service follows the latest
    await client.app[LAUNCHER_KEY].handle_envelope(envelope())
    dep = await until_terminal(client, "web", DIGEST1)
    assert dep["state"] == "FAILED" and "no active revision" in dep["reason"]


# --- CLI against the running server ----------------------------------------------------------


def run_cli(argv: list[str], settings_obj: LauncherSettings) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="dockyard")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub, lambda _args: settings_obj)
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main_with(args, lambda _args: settings_obj)
    return code, out.getvalue(), err.getvalue()


async def test_cli_tables_json_and_errors(client, tmp_path):
    url = str(client.make_url("/")).rstrip("/")
    s = settings(tmp_path)
    td_file = tmp_path / "td.json"
    td_file.write_text(json.dumps(TD))

    async def cli(*argv: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(run_cli, ["launcher", "--url", url, *argv], s)

    code, out, _ = await cli("task-definitions", "register", str(td_file), "--json")
    assert code == 0 and json.loads(out)["revision"] == 1
    code, out, _ = await cli("services", "create", "--name", "web", "--repository", "acme/web",
                             "--task-definition", "web", "--tags", "v*", "release-*",
                             "--desired-count", "2", "--strategy", "binpack:memory",
                             "--constraint", "distinctInstance")
    assert code == 0 and "repository: acme/web" in out
    code, out, _ = await cli("services", "list")
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "REPOSITORY", "TAGS"]
    assert row.split()[:5] == ["web", "acme/web", "v*,release-*", "web", "2"]
    code, out, _ = await cli("services", "show", "web", "--json")
    shown = json.loads(out)
    assert shown["placementStrategy"] == [{"type": "binpack", "field": "memory"}]
    assert shown["placementConstraints"] == [{"type": "distinctInstance"}]
    code, out, _ = await cli("--json", "instance-types", "list")
    assert [t["name"] for t in json.loads(out)["instanceTypes"]] == ["small", "large"]
    code, out, err = await cli("services", "show", "nope")
    assert code == 1 and "404" in err and "not found" in err
    code, _, err = await cli("--token", "wrong", "services", "list")
    assert code == 1 and "403" in err
    code, _, err = await asyncio.to_thread(
        run_cli, ["launcher", "--url", "http://127.0.0.1:9", "services", "list"], s)
    assert code == 1 and "cannot reach" in err


async def test_make_app_closes_cleanly(tmp_path):
    app = make_app(settings(tmp_path))
    runner = web.AppRunner(app)
    await runner.setup()
    launcher = app[LAUNCHER_KEY]
    assert launcher.store.db is not None
    await runner.cleanup()
    with pytest.raises(AssertionError):
        _ = launcher.store.db
