"""Token auth with real clients against `dockyard serve` with `[auth] enabled = true`:
docker login/push/pull/logout, robot accounts, skopeo --creds, customer isolation, and a push
whose token expires in the middle of a slow chunked upload."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.dockerd import DockerDaemon
from tests.support.require import require_binary
from tests.support.server import ROOT, DockyardServer

PASSWORDS = {"alice": "alice-e2e-pass", "gus": "gus-e2e-pass"}


def dockyard_cli(server: DockyardServer, *args: str, stdin: str = "") -> str:
    res = subprocess.run(
        [sys.executable, "-m", "dockyard", *args, "--config", str(server.config_path),
         "--data", str(server.data_dir)],
        input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert res.returncode == 0, f"dockyard {' '.join(args)}: {res.stderr}"
    return res.stdout


class Seeded:
    def __init__(self, server: DockyardServer, robot_secret: str) -> None:
        self.server = server
        self.robot = "robot$acme+ci"
        self.robot_secret = robot_secret


def seed(server: DockyardServer) -> Seeded:
    """Accounts made with the real CLI while the server runs (separate process, same DB)."""
    dockyard_cli(server, "customer", "add", "acme")
    dockyard_cli(server, "customer", "add", "globex")
    dockyard_cli(server, "user", "add", "alice", "--customer", "acme", "--role", "writer",
                 stdin=PASSWORDS["alice"] + "\n")
    dockyard_cli(server, "user", "add", "gus", "--customer", "globex", "--role", "writer",
                 stdin=PASSWORDS["gus"] + "\n")
    dockyard_cli(server, "repo", "public", "acme/pub")
    name, secret = dockyard_cli(
        server, "robot", "add", "ci", "--customer", "acme", "--repos", "ci-*",
        "--actions", "pull,push",
    ).split()
    assert name == "robot$acme+ci"
    return Seeded(server, secret)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    root = tmp_path_factory.mktemp("auth-e2e")
    with DockyardServer(root / "data", "[auth]\nenabled = true\n") as server:
        yield seed(server)


def login(dockerd: DockerDaemon, host: str, user: str, password: str,
          check: bool = True) -> subprocess.CompletedProcess:
    return dockerd.cli("login", host, "-u", user, "--password-stdin",
                       input=(password + "\n").encode(), check=check)


def text(res: subprocess.CompletedProcess) -> str:
    out = res.stdout + res.stderr
    return out.decode(errors="replace") if isinstance(out, bytes) else out


@pytest.fixture
def logged_out(dockerd: DockerDaemon, secured: Seeded) -> Iterator[None]:
    dockerd.cli("logout", secured.server.host, check=False)
    yield
    dockerd.cli("logout", secured.server.host, check=False)


def test_docker_login_push_pull_logout(
    secured: Seeded, dockerd: DockerDaemon, busybox: str, logged_out: None
) -> None:
    host = secured.server.host
    ref = f"{host}/acme/web:1"
    dockerd.build_layers(busybox, ref, [b"auth e2e layer " * 1000])
    # before login the push is refused
    res = dockerd.cli("push", ref, check=False)
    assert res.returncode != 0
    assert "denied" in text(res) or "unauthorized" in text(res)

    assert "Login Succeeded" in text(login(dockerd, host, "alice", PASSWORDS["alice"]))
    # The token service handed docker a refresh token (offline_token=true), which docker keeps
    # as an identity token instead of the password.
    config = json.loads((dockerd.root / "client" / "config.json").read_text())
    entry = config["auths"][host]
    assert entry.get("identitytoken")
    assert PASSWORDS["alice"] not in base64.b64decode(entry.get("auth", "")).decode()

    dockerd.cli("push", ref)
    dockerd.cli("rmi", ref)
    dockerd.cli("pull", ref)

    dockerd.cli("logout", host)
    dockerd.cli("rmi", ref)
    res = dockerd.cli("pull", ref, check=False)
    assert res.returncode != 0
    assert "denied" in text(res) or "unauthorized" in text(res)


def test_wrong_password_fails(secured: Seeded, dockerd: DockerDaemon, logged_out: None) -> None:
    res = login(dockerd, secured.server.host, "alice", "not-the-password", check=False)
    assert res.returncode != 0
    assert "unauthorized" in text(res).lower() or "incorrect" in text(res).lower()
    res = login(dockerd, secured.server.host, "nobody", "whatever-pass", check=False)
    assert res.returncode != 0


def test_anonymous_pull_of_public_repository(
    secured: Seeded, dockerd: DockerDaemon, busybox: str, logged_out: None
) -> None:
    host = secured.server.host
    ref = f"{host}/acme/pub:1"
    dockerd.build_layers(busybox, ref, [b"public layer " * 1000])
    login(dockerd, host, "alice", PASSWORDS["alice"])
    dockerd.cli("push", ref)
    dockerd.cli("logout", host)
    dockerd.cli("rmi", ref)
    dockerd.cli("pull", ref)  # anonymous
    run = dockerd.cli("run", "--rm", "--network", "none", ref, "sh", "-c", "echo ran")
    assert run.stdout.strip() == "ran"
    res = dockerd.cli("push", ref, check=False)  # anonymous push to a public repo: refused
    assert res.returncode != 0


def test_robot_pushes_inside_its_pattern_only(
    secured: Seeded, dockerd: DockerDaemon, busybox: str, logged_out: None
) -> None:
    host = secured.server.host
    inside, outside = f"{host}/acme/ci-app:1", f"{host}/acme/web:robot"
    dockerd.build_layers(busybox, inside, [b"robot layer " * 1000])
    dockerd.cli("tag", inside, outside)
    login(dockerd, host, secured.robot, secured.robot_secret)
    dockerd.cli("push", inside)
    res = dockerd.cli("push", outside, check=False)
    assert res.returncode != 0
    assert "denied" in text(res) or "unauthorized" in text(res)


def test_customer_cannot_push_or_pull_another_customers_repository(
    secured: Seeded, dockerd: DockerDaemon, busybox: str, logged_out: None
) -> None:
    host = secured.server.host
    theirs = f"{host}/globex/app:1"
    dockerd.build_layers(busybox, theirs, [b"globex layer " * 1000])
    login(dockerd, host, "gus", PASSWORDS["gus"])
    dockerd.cli("push", theirs)
    dockerd.cli("logout", host)
    login(dockerd, host, "alice", PASSWORDS["alice"])
    dockerd.cli("rmi", theirs)
    assert dockerd.cli("pull", theirs, check=False).returncode != 0
    dockerd.cli("tag", busybox, f"{host}/globex/app:alice")
    assert dockerd.cli("push", f"{host}/globex/app:alice", check=False).returncode != 0


def test_skopeo_with_creds(secured: Seeded, dockerd: DockerDaemon, busybox: str,
                           logged_out: None) -> None:
    exe = require_binary("skopeo")
    host = secured.server.host
    ref = f"{host}/acme/skopeo-src:1"
    dockerd.build_layers(busybox, ref, [b"skopeo auth layer " * 1000])
    login(dockerd, host, "alice", PASSWORDS["alice"])
    dockerd.cli("push", ref)
    dockerd.cli("logout", host)
    creds = f"alice:{PASSWORDS['alice']}"

    def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)

    copied = skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    "--src-creds", creds, "--dest-creds", creds,
                    f"docker://{ref}", f"docker://{host}/acme/skopeo-dst:1")
    assert copied.returncode == 0, copied.stderr
    inspected = skopeo("inspect", "--tls-verify=false", "--creds", creds,
                       f"docker://{host}/acme/skopeo-dst:1")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Name"] == f"{host}/acme/skopeo-dst"
    wrong = skopeo("inspect", "--tls-verify=false", "--creds", "alice:wrong-password",
                   f"docker://{host}/acme/skopeo-dst:1")
    assert wrong.returncode != 0
    anonymous = skopeo("inspect", "--tls-verify=false", f"docker://{host}/acme/skopeo-dst:1")
    assert anonymous.returncode != 0
    robot_outside = skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                           "--src-creds", creds,
                           "--dest-creds", f"{secured.robot}:{secured.robot_secret}",
                           f"docker://{ref}", f"docker://{host}/acme/not-ci:1")
    assert robot_outside.returncode != 0


# -- a push that outlives its token ----------------------------------------------------------


@pytest.fixture
def short_lived(tmp_path: Path) -> Iterator[DockyardServer]:
    config = "[auth]\nenabled = true\ntoken_lifetime = 2\nclock_skew = 0\n"
    with DockyardServer(tmp_path / "data", config) as server:
        dockyard_cli(server, "customer", "add", "acme")
        dockyard_cli(server, "user", "add", "alice", "--customer", "acme", "--role", "writer",
                     stdin=PASSWORDS["alice"] + "\n")
        yield server


async def _slow_push(server: DockyardServer) -> None:
    chunks = [bytes([i]) * (512 * 1024) for i in range(4)]
    digest = "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()
    basic = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
    auth = {"Authorization": f"Basic {basic}"}
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get("/auth/token", headers=auth, params={
            "service": "dockyard", "scope": "repository:acme/slow:pull,push",
        }) as resp:
            assert resp.status == 200
            token = (await resp.json())["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        async with http.post("/v2/acme/slow/blobs/uploads/", headers=bearer) as resp:
            assert resp.status == 202, await resp.text()
            location = resp.headers["Location"]
        offset = 0
        for index, chunk in enumerate(chunks):
            headers = {**bearer, "Content-Type": "application/octet-stream",
                       "Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
            async with http.patch(location, data=chunk, headers=headers) as resp:
                assert resp.status == 202, (index, resp.status, await resp.text())
                location = resp.headers["Location"]
            offset += len(chunk)
            if index == 0:
                # Slow link: the token expires between chunks. Prove it really is expired
                # for anything but this session.
                await asyncio.sleep(3.5)
                async with http.head(f"/v2/acme/slow/blobs/{digest}", headers=bearer) as resp:
                    assert resp.status == 401
                    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
                async with http.post("/v2/acme/slow/blobs/uploads/", headers=bearer) as resp:
                    assert resp.status == 401
                upload_id = location.rstrip("/").split("/")[-1].split("?")[0]
                stolen = f"/v2/acme/other/blobs/uploads/{upload_id}"
                async with http.patch(stolen, data=b"x", headers=bearer) as resp:
                    assert resp.status == 401
        separator = "&" if "?" in location else "?"
        async with http.put(f"{location}{separator}digest={digest}", headers=bearer) as resp:
            assert resp.status == 201, await resp.text()
        async with http.get("/auth/token", headers=auth, params={
            "service": "dockyard", "scope": "repository:acme/slow:pull",
        }) as resp:
            fresh = (await resp.json())["token"]
        async with http.get(f"/v2/acme/slow/blobs/{digest}",
                            headers={"Authorization": f"Bearer {fresh}"}) as resp:
            assert resp.status == 200
            got = hashlib.sha256()
            async for part in resp.content.iter_chunked(65536):
                got.update(part)
            assert "sha256:" + got.hexdigest() == digest


def test_push_completes_after_token_expires_mid_upload(short_lived: DockyardServer) -> None:
    asyncio.run(_slow_push(short_lived))


# -- customer isolation at the API: dedup, mount, catalog -------------------------------------


class Api:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def token(self, user: str | None, *scopes: str) -> str:
        headers = {}
        if user:
            basic = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        params = [("service", "dockyard"), *(("scope", s) for s in scopes)]
        async with self.http.get("/auth/token", params=params, headers=headers) as resp:
            assert resp.status == 200
            return (await resp.json())["token"]

    async def push_image(self, repository: str, token: str, layer: bytes) -> str:
        """Push one layer, a config and a manifest by hand; return the layer digest."""
        bearer = {"Authorization": f"Bearer {token}"}
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        digests = []
        for blob in (layer, config):
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            async with self.http.post(f"/v2/{repository}/blobs/uploads/?digest={digest}",
                                      data=blob, headers={**bearer, "Content-Type":
                                                          "application/octet-stream"}) as resp:
                assert resp.status == 201, await resp.text()
            digests.append((digest, len(blob)))
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digests[1][0], "size": digests[1][1]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digests[0][0], "size": digests[0][1]}],
        }
        async with self.http.put(
            f"/v2/{repository}/manifests/1", data=json.dumps(manifest).encode(),
            headers={**bearer, "Content-Type": manifest["mediaType"]},
        ) as resp:
            assert resp.status == 201, await resp.text()
        return digests[0][0]

    async def status(self, method: str, path: str, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, path, headers=headers) as resp:
            return resp.status

    async def catalog(self, token: str) -> list[str]:
        async with self.http.get("/v2/_catalog",
                                 headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            return (await resp.json())["repositories"]


async def _isolation(server: DockyardServer) -> None:
    async with aiohttp.ClientSession(server.url) as http:
        api = Api(http)
        gus = await api.token("gus", "repository:globex/iso:pull,push")
        theirs = await api.push_image("globex/iso", gus, b"globex secret layer")
        alice_other = await api.token("alice", "repository:acme/iso-other:pull,push")
        ours = await api.push_image("acme/iso-other", alice_other, b"acme shared layer")

        alice = await api.token("alice", "repository:acme/iso-web:pull,push",
                                "repository:globex/iso:pull,push,delete")
        # control: customer-wide dedup answers for acme's own layer ...
        assert await api.status("HEAD", f"/v2/acme/iso-web/blobs/{ours}", alice) == 200
        # ... but another customer's layer is unknown, through any door
        assert await api.status("HEAD", f"/v2/acme/iso-web/blobs/{theirs}", alice) == 404
        assert await api.status("GET", f"/v2/acme/iso-web/blobs/{theirs}", alice) == 404
        assert await api.status("HEAD", f"/v2/globex/iso/blobs/{theirs}", alice) == 401
        assert await api.status("GET", "/v2/globex/iso/manifests/1", alice) == 401
        assert await api.status("GET", "/v2/globex/iso/tags/list", alice) == 401
        assert await api.status("POST", "/v2/globex/iso/blobs/uploads/", alice) == 401
        assert await api.status("DELETE", "/v2/globex/iso/manifests/1", alice) == 401
        mount = "/v2/acme/iso-web/blobs/uploads/?mount={}&from={}"
        assert await api.status("POST", mount.format(theirs, "globex/iso"), alice) == 202
        assert await api.status("POST", mount.format(ours, "acme/iso-other"), alice) == 201

        alice_catalog = await api.catalog(await api.token("alice", "registry:catalog:*"))
        assert "acme/iso-other" in alice_catalog
        assert not [r for r in alice_catalog if r.startswith("globex/")]
        gus_catalog = await api.catalog(await api.token("gus", "registry:catalog:*"))
        assert "globex/iso" in gus_catalog
        assert not [r for r in gus_catalog if r.startswith("acme/") and r != "acme/pub"]
        assert await api.status("GET", "/v2/_catalog", None) == 401
        assert await api.status("GET", "/v2/_catalog",
                                await api.token(None, "registry:catalog:*")) == 401


def test_customer_isolation_through_the_api(secured: Seeded) -> None:
    asyncio.run(_isolation(secured.server))
