"""The launcher as a new user meets it (issue 17, findings 1–11 and the features that followed):
`dockyard serve` with the launcher in process, two private Docker Engines, `docker push` to
dockyard itself, and every step through the `dockyard launcher …` CLI the README shows, run from
the directory that holds `data/` with no token flag. Task definitions and services come from
examples/launcher/, so the examples are exercised as they are shipped.

The scenarios build on each other in file order (one server, one set of engines).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.engines import EngineProcess, docker_engines, import_image, push
from tests.support.net import free_port, wait_http
from tests.support.server import ROOT, DockyardServer

EXAMPLES = ROOT / "examples" / "launcher"
SECRET_VALUE = "sk-" + uuid.uuid4().hex  # must never appear in an API answer or a log line
WORKER_JOB = "job-" + uuid.uuid4().hex
TERMINAL = ("SUCCESSFUL", "ROLLED_BACK", "BLOCKED", "FAILED")


def site(version: str, healthy: bool = True) -> dict[str, str]:
    files = {"www/index.html": f"{version}\n"}
    if healthy:
        files["www/health"] = "ok\n"
    return files


class Fleet:
    """The server, its engines, and the user's shell (cwd holds data/)."""

    def __init__(self, root: Path, server: DockyardServer, engines: dict[str, EngineProcess],
                 builder: EngineProcess, ingress: str, roots: Path) -> None:
        self.root, self.server, self.engines, self.builder = root, server, engines, builder
        self.ingress, self.volume_root = ingress, roots
        self.digests: dict[str, str] = {}

    # The user's commands -----------------------------------------------------------------

    def launcher(self, *args: str, stdin: str = "", check: bool = True,
                 cwd: Path | None = None, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "dockyard", "launcher", *args], input=stdin,
            capture_output=True, text=True, cwd=cwd or self.root, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT),
                 "DOCKYARD_LAUNCHER_URL": self.server.url, **(env or {})},
        )
        if check:
            assert res.returncode == 0, f"launcher {' '.join(args)}: {res.stdout}{res.stderr}"
        return res

    def json(self, *args: str) -> Any:
        return json.loads(self.launcher(*args, "--json").stdout)

    def push(self, repo_tag: str, files: dict[str, str]) -> str:
        ref = f"{self.server.host}/{repo_tag}"
        import_image(self.builder, ref, files)
        digest = push(self.builder, ref)
        self.digests[repo_tag] = digest
        return digest

    # What the user looks at ----------------------------------------------------------------

    def api(self, path: str) -> Any:
        token = (self.server.data_dir / "launcher" / "api-token").read_text().strip()
        req = urllib.request.Request(f"{self.server.url}/launcher/v1{path}",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def wait_deployment(self, service: str, digest: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        deps: list[dict] = []
        while time.monotonic() < deadline:
            deps = [d for d in self.api(f"/deployments?service={service}")["deployments"]
                    if d["digest"] == digest]
            if deps and deps[0]["state"] in TERMINAL and deps[0].get("rollback") != "PENDING":
                return deps[0]
            time.sleep(0.3)
        raise AssertionError(f"no finished deployment of {digest} for {service}: {deps}")

    def wait(self, check: Any, what: str, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.3)
        raise AssertionError(f"gave up waiting: {what}")

    def via_ingress(self, host: str, path: str = "/") -> tuple[int, str]:
        req = urllib.request.Request(f"http://{self.ingress}{path}", headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def containers(self, engine: str, *filters: str) -> list[dict[str, Any]]:
        args = ["ps", "-a", "--no-trunc", "--format", "{{json .}}"]
        for f in filters:
            args += ["--filter", f]
        out = self.engines[engine].docker(*args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def inspect(self, cid: str) -> dict[str, Any]:
        for engine in self.engines.values():
            res = engine.docker("inspect", cid, check=False)
            if res.returncode == 0:
                return json.loads(res.stdout)[0]
        raise AssertionError(f"container {cid} on no engine")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    root = Path(tempfile.mkdtemp(prefix="dyfleet-", dir="/tmp"))
    # "build" is the user's workstation (docker build/push), not an instance.
    specs = [("a", {"dockyard.instance-type": "small"}), ("b", {"dockyard.instance-type": "small"}),
             ("build", {})]
    low = 20000 + (os.getpid() % 50) * 200
    ingress = f"127.0.0.1:{free_port()}"
    roots = root / "volumes"
    (roots / "worker-config").mkdir(parents=True)
    (roots / "worker-config" / "job").write_text(WORKER_JOB)
    try:
        with docker_engines(specs) as started:
            engines = {e.name: e for e in started if e.name != "build"}
            builder = next(e for e in started if e.name == "build")
            config = f"""
[launcher]
enabled = true
cluster = "fleet-{uuid.uuid4().hex[:6]}"
port_range = "{low}-{low + 199}"
poll_interval = 0.2
reconcile_interval = 1.0
health_grace = 15.0
stable_seconds = 0.5
stop_timeout = 2
volume_roots = ["{roots}"]
keep_images = 2

[launcher.ingress]
addr = "{ingress}"
drain_seconds = 1.0

[launcher.instance_types.small]
cpu = 1024
memory = 512

[[launcher.instances]]
name = "a"
endpoint = "{engines['a'].endpoint}"
attributes = {{ zone = "z1" }}

[[launcher.instances]]
name = "b"
endpoint = "{engines['b'].endpoint}"
attributes = {{ zone = "z2" }}
"""
            server = DockyardServer(root / "data", config)
            server.start()
            try:
                yield Fleet(root, server, engines, builder, ingress, roots)
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table_ids(text: str) -> list[str]:
    """The ID column of a CLI table, as printed."""
    return [line.split()[0] for line in text.splitlines()[1:] if line.strip()]


# --- findings 1, 2, 3, 11: the README's first commands ----------------------------------------


def test_td_alias_registers_the_example_and_finds_the_token_from_the_data_directory(fleet):
    # Finding 1: `td register` (the README's command) registers; finding 2: run from the
    # directory holding data/, with no token flag, the CLI finds data/launcher/api-token.
    res = fleet.launcher("td", "register", str(EXAMPLES / "web.json"))
    assert "family: web" in res.stdout and "revision: 1" in res.stdout, res.stdout
    listed = fleet.launcher("td", "list").stdout
    assert re.search(r"^web\s+1\s+ACTIVE", listed, re.M), listed

    # Finding 2 again: --config is accepted before and after the command, from anywhere.
    elsewhere = fleet.root / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    cfg = str(fleet.server.config_path)
    data = str(fleet.server.data_dir)
    for args in (("--config", cfg, "--data", data, "td", "list"),
                 ("td", "list", "--config", cfg, "--data", data)):
        out = fleet.launcher(*args, cwd=elsewhere).stdout
        assert "web" in out, out
    # Without any way to find the token the error says where it looked, not a bare 401.
    lost = fleet.launcher("td", "list", cwd=elsewhere, check=False)
    assert lost.returncode == 1 and "401" in lost.stderr and "token" in lost.stderr


def test_launcher_serve_on_its_own_port(fleet):
    # Finding 3: `dockyard launcher serve --port N` (the mode for --workers > 1) serves.
    port = free_port()
    data = fleet.root / "standalone"
    cfg = fleet.root / "standalone.toml"
    cfg.write_text('[launcher]\nenabled = true\napi_token = "standalone-token"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockyard", "launcher", "serve", "--port", str(port),
         "--config", str(cfg), "--data", str(data)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(fleet.root / "standalone.log", "wb"),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/launcher/v1/", proc=proc)
        res = fleet.launcher("services", "list", "--url", f"http://127.0.0.1:{port}",
                             "--token", "standalone-token")
        assert res.stdout.startswith("NAME"), res.stdout
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, (fleet.root / "standalone.log").read_text()


# --- findings 4, 5, 9 and the ingress ---------------------------------------------------------


def test_push_deploys_and_printed_ids_work_and_the_ingress_serves(fleet):
    out = fleet.launcher("services", "create", "--file", str(EXAMPLES / "web.service.json"))
    assert "name: web" in out.stdout
    v1 = fleet.push("acme/web:v1", site("v1"))
    assert fleet.wait_deployment("web", v1)["state"] == "SUCCESSFUL"

    # Finding 4: the ids the tables print are the ids `show` takes.
    for listing, show in ((("deployments", "list", "--service", "web"), "deployments"),
                          (("tasks", "list", "--service", "web"), "tasks")):
        ids = table_ids(fleet.launcher(*listing).stdout)
        assert ids
        shown = fleet.launcher(show, "show", ids[0]).stdout
        assert re.search(rf"^id: {ids[0]}[0-9a-f]*$", shown, re.M), shown

    # A stable address: the ingress routes Host web.example to a healthy task.
    assert fleet.wait(lambda: fleet.via_ingress("web.example") == (200, "v1\n"), "ingress v1")
    status, _ = fleet.via_ingress("nothing.example")
    assert status == 404


def test_deploy_by_tag_digest_without_registry_and_rollback(fleet):
    # Finding 5: no [launcher] registry is configured: a digest deploys from this dockyard
    # (not Docker Hub); --tag resolves to what the tag names now; rollback is a verb.
    v2 = fleet.push("acme/web:v2", site("v2"))
    assert fleet.wait_deployment("web", v2)["state"] == "SUCCESSFUL"
    out = fleet.json("services", "deploy", "web", "--tag", "v1", "--force")
    assert out["deployment"]["digest"] == fleet.digests["acme/web:v1"], out
    assert fleet.wait_deployment("web", fleet.digests["acme/web:v1"])["state"] == "SUCCESSFUL"
    assert fleet.wait(lambda: fleet.via_ingress("web.example") == (200, "v1\n"), "back at v1")

    out = fleet.json("services", "rollback", "web")
    assert out["deployment"]["digest"] == v2, out
    assert fleet.wait_deployment("web", v2)["state"] == "SUCCESSFUL"
    out = fleet.json("services", "deploy", "web", "--digest", fleet.digests["acme/web:v1"],
                     "--force")
    dep = fleet.wait_deployment("web", fleet.digests["acme/web:v1"])
    assert dep["state"] == "SUCCESSFUL" and dep["registry"] == fleet.server.host, dep
    events = fleet.launcher("services", "events", "web").stdout
    assert "rollback" in events


def test_semver_policy_refuses_a_downgrade(fleet):
    # Finding 9: under order = "semver" an older tag is recorded and ignored.
    v4 = fleet.push("acme/web:v4", site("v4"))
    assert fleet.wait_deployment("web", v4)["state"] == "SUCCESSFUL"
    old = fleet.push("acme/web:v0.9", site("v0.9"))
    events = fleet.wait(
        lambda: [e for e in fleet.json("services", "events", "web")["events"]
                 if e["kind"] == "ignored" and "v0.9" in e["message"]],
        "the ignored push recorded")
    assert "older than" in events[0]["message"] or "not newer" in events[0]["message"], events
    assert not [d for d in fleet.api("/deployments?service=web")["deployments"]
                if d["digest"] == old]
    assert fleet.via_ingress("web.example") == (200, "v4\n")
    res = fleet.launcher("services", "deploy", "web", "--tag", "v0.9", check=False)
    assert "not deployed" in res.stdout + res.stderr
    fleet.json("services", "deploy", "web", "--tag", "v0.9", "--force")
    assert fleet.wait_deployment("web", old)["state"] == "SUCCESSFUL"
    fleet.json("services", "deploy", "web", "--tag", "v4", "--force")
    assert fleet.wait_deployment("web", v4)["state"] == "SUCCESSFUL"


def test_ingress_zero_failed_requests_during_a_rolling_deploy(fleet):
    # A client loop through the ingress while v5 replaces v4: no failed request, and the
    # version switches once (v4 … v4 v5 … v5), never back.
    async def loop() -> tuple[int, list[str], list[str]]:
        seen: list[str] = []
        failures: list[str] = []
        done = asyncio.Event()

        async def deploy() -> None:
            v5 = await asyncio.to_thread(fleet.push, "acme/web:v5", site("v5"))
            dep = await asyncio.to_thread(fleet.wait_deployment, "web", v5)
            assert dep["state"] == "SUCCESSFUL", dep
            done.set()

        job = asyncio.create_task(deploy())
        made = 0
        async with aiohttp.ClientSession() as http:
            while made < 2000 or not done.is_set():
                try:
                    async with http.get(f"http://{fleet.ingress}/",
                                        headers={"Host": "web.example"}) as resp:
                        body = await resp.text()
                        if resp.status != 200:
                            failures.append(f"{resp.status} {body[:80]}")
                        elif not seen or seen[-1] != body:
                            seen.append(body)
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))
                made += 1
                if job.done() and job.exception():
                    raise job.exception()  # type: ignore[misc]
        await job
        return made, seen, failures

    made, seen, failures = asyncio.run(loop())
    print(f"rolling deploy through the ingress: {made} requests, {len(failures)} failed")
    assert made >= 2000
    assert failures == []
    assert seen == ["v4\n", "v5\n"], seen


def test_images_of_old_deployments_are_removed_from_instances(fleet):
    # Only the running and the previous deployment's images stay (keep_images = 2).
    current = fleet.digests["acme/web:v5"]
    previous = fleet.digests["acme/web:v4"]

    def web_images() -> set[str]:
        found = set()
        for engine in fleet.engines.values():
            out = engine.docker("images", "--digests", "--format", "{{.Repository}}@{{.Digest}}")
            found |= {line.split("@", 1)[1] for line in out.stdout.split()
                      if line.startswith(f"{fleet.server.host}/acme/web@")}
        return found

    assert fleet.wait(lambda: web_images() <= {current, previous} and current in web_images(),
                      f"old images removed: {web_images()}")


def test_stopped_tasks_keep_their_last_health_not_healthy(fleet):
    stopped = fleet.json("tasks", "list", "--service", "web", "--status", "stopped")["tasks"]
    assert stopped
    assert all(t["health"] != "HEALTHY" for t in stopped), stopped
    assert {t["lastHealth"] for t in stopped} >= {"HEALTHY"}
    text = fleet.launcher("tasks", "list", "--service", "web", "--status", "stopped").stdout
    assert "LAST HEALTH" in text.splitlines()[0]


# --- findings 6, 7, 10 ------------------------------------------------------------------------


def test_capacity_shortfall_says_why_and_scale_down_is_immediate(fleet):
    # Finding 10: 2 instances × 1024 CPU units hold 8 web tasks (256 each); ask for 12.
    fleet.launcher("services", "update", "web", "--desired-count", "12")
    shown = fleet.wait(
        lambda: (s := fleet.json("services", "show", "web")).get("message") and s,
        "a shortfall message on the service")
    assert shown["runningCount"] < 12
    assert "cpu" in shown["message"], shown["message"]
    kinds = {e["kind"] for e in fleet.json("services", "events", "web")["events"]}
    assert "shortfall" in kinds
    # Finding 7: scaling down acts now, not after the failed scale-up's retry timer.
    fleet.launcher("services", "update", "web", "--desired-count", "1")
    fleet.wait(lambda: len(fleet.api("/tasks?service=web&status=active")["tasks"]) == 1,
               "scaled down to one task")
    shown = fleet.json("services", "show", "web")
    assert "message" not in shown or not shown["message"]


def test_fixed_host_port_on_one_instance_is_blocked_not_rolled_back(fleet):
    # Finding 6: a fixed hostPort pinned to one instance cannot run old and new side by side;
    # with the default 100/200 rollout the deployment is BLOCKED naming the port (not
    # "rolled back" as if the image were bad); --min-healthy 0 --max-percent 100 goes through.
    port = free_port()
    td = json.loads((EXAMPLES / "web.json").read_text())
    td["family"] = "fixed"
    td["containerDefinitions"][0]["image"] = "acme/fixed"
    td["containerDefinitions"][0]["portMappings"] = [{"containerPort": port, "hostPort": port}]
    (fleet.root / "fixed.json").write_text(json.dumps(td))
    fleet.launcher("td", "register", str(fleet.root / "fixed.json"))
    fleet.launcher("services", "create", "--name", "fixed", "--repository", "acme/fixed",
                   "--task-definition", "fixed", "--constraint", "memberOf:attribute:zone == z1")
    f1 = fleet.push("acme/fixed:1", site("f1"))
    assert fleet.wait_deployment("fixed", f1)["state"] == "SUCCESSFUL"
    f2 = fleet.push("acme/fixed:2", site("f2"))
    dep = fleet.wait_deployment("fixed", f2)
    assert dep["state"] == "BLOCKED", dep
    assert "cannot place" in dep["reason"] and str(port) in dep["reason"], dep
    assert "--min-healthy" in dep["reason"], dep  # it says what to do
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read() == b"f1\n"

    fleet.launcher("services", "update", "fixed", "--min-healthy", "0", "--max-percent", "100")
    fleet.json("services", "deploy", "fixed", "--digest", f2, "--force")
    deps = fleet.wait(lambda: [d for d in fleet.api("/deployments?service=fixed")["deployments"]
                               if d["digest"] == f2 and d["state"] == "SUCCESSFUL"],
                      "fixed:2 deployed in place")
    assert deps
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read() == b"f2\n"
    fleet.launcher("services", "delete", "fixed")


# --- finding 8 and the worker/pair examples ---------------------------------------------------


def test_worker_gets_its_secret_volume_and_log_configuration(fleet):
    fleet.launcher("secrets", "put", "worker-api-key", stdin=SECRET_VALUE + "\n")
    assert "worker-api-key" in fleet.launcher("secrets", "list").stdout

    td = json.loads((EXAMPLES / "worker.json").read_text())
    # The example names a production path; point it at this test's allowed volume root.
    for vol in td["volumes"]:
        if "host" in vol:
            vol["host"]["sourcePath"] = str(fleet.volume_root / "worker-config")
    (fleet.root / "worker.json").write_text(json.dumps(td))
    fleet.launcher("td", "register", str(fleet.root / "worker.json"))
    fleet.launcher("services", "create", "--file", str(EXAMPLES / "worker.service.json"))
    w1 = fleet.push("acme/worker:1", {"www/index.html": "worker\n"})
    assert fleet.wait_deployment("worker", w1)["state"] == "SUCCESSFUL"
    task = fleet.api("/tasks?service=worker")["tasks"][0]
    info = fleet.inspect(task["containers"][0]["id"])
    assert f"API_KEY={SECRET_VALUE}" in info["Config"]["Env"]
    assert info["HostConfig"]["LogConfig"] == {
        "Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}}
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/config"]["RW"] is False and mounts["/spool"]["Type"] == "volume"
    engine = next(e for e in fleet.engines.values()
                  if e.docker("inspect", info["Id"], check=False).returncode == 0)
    job = engine.docker("exec", info["Id"], "cat", "/spool/job").stdout
    assert job == WORKER_JOB

    # The value is in no API answer and no log line.
    answers = [
        fleet.launcher("td", "show", "worker", "--json").stdout,
        fleet.launcher("tasks", "list", "--service", "worker", "--status", "all",
                       "--json").stdout,
        fleet.launcher("services", "show", "worker", "--json").stdout,
        fleet.launcher("secrets", "list", "--json").stdout,
        fleet.launcher("services", "events", "worker", "--json").stdout,
        fleet.launcher("deployments", "list", "--json").stdout,
    ]
    for text in answers:
        assert SECRET_VALUE not in text
    assert SECRET_VALUE not in fleet.server.log()
    fleet.launcher("services", "delete", "worker")


def test_unsupported_or_unsafe_task_definition_keys_are_refused(fleet):
    td = json.loads((EXAMPLES / "web.json").read_text())
    td["containerDefinitions"][0]["links"] = ["db"]
    (fleet.root / "bad.json").write_text(json.dumps(td))
    res = fleet.launcher("td", "register", str(fleet.root / "bad.json"), check=False)
    assert res.returncode == 1 and "400" in res.stderr and "links" in res.stderr, res.stderr

    td = json.loads((EXAMPLES / "worker.json").read_text())  # /srv/… is not an allowed root
    (fleet.root / "outside.json").write_text(json.dumps(td))
    res = fleet.launcher("td", "register", str(fleet.root / "outside.json"), check=False)
    assert res.returncode == 1 and "volume_roots" in res.stderr, res.stderr


def test_depends_on_healthy_starts_the_frontend_after_its_backend(fleet):
    fleet.launcher("td", "register", str(EXAMPLES / "pair.json"))
    fleet.launcher("services", "create", "--file", str(EXAMPLES / "pair.service.json"))
    p1 = fleet.push("acme/pair:1", site("backend-1"))
    assert fleet.wait_deployment("pair", p1)["state"] == "SUCCESSFUL"
    task = fleet.api("/tasks?service=pair")["tasks"][0]
    assert [c["name"] for c in task["containers"]] == ["backend", "frontend"]
    ports = task["ports"]
    # The frontend fetched from the backend before serving: it only started once that was up.
    pages = {urllib.request.urlopen(f"http://127.0.0.1:{p}/upstream", timeout=5).read()
             for p in ports if _answers(f"http://127.0.0.1:{p}/upstream")}
    assert pages == {b"backend-1\n"}
    backend = fleet.inspect(task["containers"][0]["id"])
    frontend = fleet.inspect(task["containers"][1]["id"])
    assert backend["State"]["Health"]["Status"] == "healthy"
    assert frontend["State"]["StartedAt"] > backend["State"]["StartedAt"]
    fleet.launcher("services", "delete", "pair")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).read()
        return True
    except OSError:
        return False
