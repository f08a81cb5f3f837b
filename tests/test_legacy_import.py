"""Upgrading a round-1 installation (git f3e7d24: a metadata file per customer, index.db,
events.db, accounts.db): the data directory is built by running that release's own server and
CLI, imported with `dockyard metadata import-legacy`, and the new server then serves what the
old one served — manifests, tags, catalog, blobs, usage, pending events and logins."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.apiclient import OCI_INDEX, OCI_MANIFEST, basic_token, push_to, sha256
from tests.support.net import free_port
from tests.support.postgres import PostgresCluster
from tests.support.server import ROOT, DockyardServer

ROUND_1 = "f3e7d24"
ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"
# A webhook nobody answers: the events of the pushes stay pending in the outbox.
DEAD_HOOK = """
[notifications]
poll_interval = "1h"

[[notifications.endpoints]]
name = "hook"
url = "http://127.0.0.1:9/"
max_attempts = 1000
"""
REPOS = ["acme/web", "acme/api", "globex/app", "initech/tool", "hello"]


def run(
    cwd: Path, config: Path, data: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess:
    """`dockyard ARGS` of the release whose source tree is `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "dockyard", *args, "--config", str(config), "--data", str(data)],
        input=stdin, capture_output=True, text=True, cwd=cwd, timeout=180,
    )


@pytest.fixture(scope="session")
def round1_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The round-1 source tree; this venv runs it (its dependencies are a subset of ours)."""
    tree = tmp_path_factory.mktemp("round1") / "src"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ROUND_1], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    assert (tree / "registry" / "metadata" / "customer.py").exists()  # really the old layout
    return tree


@dataclass
class Legacy:
    data: Path
    config: Path
    seen: dict  # what the old server served
    robot_secret: str


async def _push_all(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        shared = b"a layer every customer has" * 100
        for i, repo in enumerate(REPOS):
            await push_to(http, url, repo, "v1", shared, b"{}")
            own = f"{repo} layer {i}".encode() * 100
            await push_to(http, url, repo, "v2", own, b'{"v": 2}')
        # An index over both acme/web images, tagged, and a tag moved to another image.
        manifests = []
        for tag in ("v1", "v2"):
            async with http.get(
                f"{url}/v2/acme/web/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
            ) as resp:
                body = await resp.read()
            manifests.append(
                {"mediaType": OCI_MANIFEST, "digest": sha256(body), "size": len(body)}
            )
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        ).encode()
        async with http.put(
            f"{url}/v2/acme/web/manifests/multi", data=index, headers={"Content-Type": OCI_INDEX}
        ) as resp:
            assert resp.status == 201, await resp.text()
        await push_to(http, url, "globex/app", "latest", b"moved" * 50, b'{"m": 1}')
        await push_to(http, url, "globex/app", "latest", b"moved again" * 50, b'{"m": 2}')
        # An upload left in flight: round 1 saved no hash state, the import drops it.
        async with http.post(f"{url}/v2/initech/tool/blobs/uploads/") as resp:
            assert resp.status == 202


def snapshot(url: str, headers: dict[str, str] | None = None) -> dict:
    """What a client sees: catalog, tag lists, manifests by tag and by digest, every blob."""

    async def read() -> dict:
        seen: dict = {}
        async with aiohttp.ClientSession(headers=headers or {}) as http:
            async with http.get(f"{url}/v2/_catalog") as resp:
                assert resp.status == 200, await resp.text()
                seen["catalog"] = await resp.json()
            for repo in REPOS:
                async with http.get(f"{url}/v2/{repo}/tags/list") as resp:
                    seen[f"tags {repo}"] = await resp.json()
                for tag in seen[f"tags {repo}"]["tags"]:
                    async with http.get(
                        f"{url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT}
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                        body = await resp.read()
                        digest = resp.headers["Docker-Content-Digest"]
                        seen[f"manifest {repo}:{tag}"] = (digest, resp.content_type, body)
                    async with http.get(
                        f"{url}/v2/{repo}/manifests/{digest}", headers={"Accept": ACCEPT}
                    ) as resp:
                        seen[f"manifest {repo}@{digest}"] = (resp.status, await resp.read())
                    doc = json.loads(body)
                    for desc in [doc.get("config"), *doc.get("layers", [])]:
                        if desc is None:
                            continue
                        async with http.get(f"{url}/v2/{repo}/blobs/{desc['digest']}") as resp:
                            data = await resp.read()
                            seen[f"blob {repo}@{desc['digest']}"] = (resp.status, sha256(data))
        return seen

    return asyncio.run(read())


OPEN = {"pending", "failed"}  # not delivered yet: "failed" means another attempt is scheduled
DELIVERIES = (
    "SELECT e.id, e.seq, d.endpoint, d.status, d.attempts, d.next_attempt, "
    "(SELECT COUNT(*) FROM attempts a WHERE a.delivery_id = d.id) "
    "FROM events e JOIN deliveries d ON d.event_seq = e.seq"
)


def deliveries(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return sorted(tuple(r) for r in conn.execute(DELIVERIES))
    finally:
        conn.close()


def still_open(rows: list[tuple]) -> list[tuple[str, bool]]:
    """(event id, not delivered yet): what a server on the data keeps true however far its
    dispatcher got with the dead hook (an attempt moves pending to failed)."""
    return sorted((r[0], r[1] in OPEN) for r in rows)


@pytest.fixture(scope="module")
def legacy(round1_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Legacy:
    """A round-1 data directory, written by round 1 itself, and what it served."""
    root = tmp_path_factory.mktemp("legacy")
    data = root / "data"
    with DockyardServer(data, DEAD_HOOK, cwd=round1_tree) as old:
        asyncio.run(_push_all(old.url))
        old.cli("quota", "set", "acme", "1GiB")
        for customer in ("acme", "globex", "initech"):
            old.cli("customer", "add", customer)
        old.cli("user", "add", "alice", "--customer", "acme", "--role", "writer",
                stdin="alice-password\n")
        robot = old.cli("robot", "add", "ci", "--customer", "globex", "--repos", "app")
        old.cli("repo", "public", "initech/tool")
        seen = snapshot(old.url)
        blobs = [v for k, v in seen.items() if k.startswith("blob ")]
        assert len(blobs) > 2 * len(REPOS) and all(status == 200 for status, _ in blobs)
        seen["usage"] = sorted(json.loads(old.cli("usage", "--json").stdout),
                               key=lambda r: r["customer"])
        assert not (data / "metadata.db").exists()  # nothing of the new layout
    seen["deliveries"] = deliveries(data / "events" / "events.db")
    seen["events"] = still_open([(r[0], r[3]) for r in seen["deliveries"]])
    assert len(seen["events"]) == 2 * len(REPOS) + 3 and all(o for _, o in seen["events"])
    assert (data / "customers" / "acme" / "meta.db").exists()
    assert (data / "auth" / "accounts.db").exists() and (data / "index.db").exists()
    return Legacy(data, old.config_path, seen, robot.stdout.strip().splitlines()[-1])


def copy_of(legacy: Legacy, tmp_path: Path, config_text: str) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(legacy.data, data)
    config = tmp_path / "data.toml"
    config.write_text(config_text)
    return data, config


def serve(data: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    """`dockyard serve` expected to exit by itself (it refuses): bounded by a timeout."""
    return subprocess.run(
        [sys.executable, "-m", "dockyard", "serve", "--config", str(config), "--data", str(data),
         "--addr", f"127.0.0.1:{free_port()}", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store_config(request: pytest.FixtureRequest) -> Iterator[str]:
    """The [metadata] section of the new installation: the embedded store or PostgreSQL."""
    if request.param == "sqlite":
        yield ""
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    yield f'[metadata]\nurl = "{cluster.new_database()}"\n'


def test_round1_installation_imports_and_serves_the_same(
    legacy: Legacy, tmp_path: Path, store_config: str
) -> None:
    data, config = copy_of(legacy, tmp_path, store_config + DEAD_HOOK)

    # Unimported, the new server refuses rather than serving an empty registry.
    refused = serve(data, config)
    assert refused.returncode == 2, refused.stderr
    assert "dockyard metadata import-legacy" in refused.stderr
    assert f"--config {config}" in refused.stderr
    gc = run(ROOT, config, data, "gc")
    assert gc.returncode == 2 and "import-legacy" in gc.stderr
    assert any(data.rglob("meta.db"))  # nothing was touched

    done = run(ROOT, config, data, "metadata", "import-legacy", "--json")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout[done.stdout.index("{"): done.stdout.rindex("}") + 1])
    assert counts["customers"]["imported"] == 4  # acme, globex, initech, library
    assert counts["repositories"]["imported"] == len(REPOS)
    assert counts["tags"]["imported"] == 2 * len(REPOS) + 2  # + acme/web:multi, globex:latest
    assert counts["auth_users"]["imported"] == 1 and counts["auth_robots"]["imported"] == 1
    assert counts["events"]["imported"] == len(legacy.seen["events"])
    assert counts["deliveries"]["imported"] == len(legacy.seen["events"])
    assert "upload(s) in flight dropped" in done.stdout
    # The old files are kept, renamed; a second run finds nothing left to import.
    assert not any(data.rglob("meta.db"))
    assert (data / "customers" / "acme" / "meta.db.imported").exists()
    assert (data / "index.db.imported").exists() and (data / "auth" / "accounts.db.imported")
    again = run(ROOT, config, data, "metadata", "import-legacy")
    assert again.returncode == 0 and "nothing to import" in again.stdout

    with DockyardServer(data, store_config + DEAD_HOOK) as new:
        seen = snapshot(new.url)
        seen["usage"] = sorted(json.loads(new.cli("usage", "--json").stdout),
                               key=lambda r: r["customer"])
        events = json.loads(new.cli("events", "list", "--json").stdout)
        seen["events"] = still_open([(e["event_id"], e["status"]) for e in events])
    assert seen == {k: v for k, v in legacy.seen.items() if k != "deliveries"}

    # Logins of round-1 accounts, with tokens from /auth/token; a public repository stays public.
    auth_config = store_config + DEAD_HOOK + "\n[auth]\nenabled = true\n"
    with DockyardServer(data, auth_config) as new:
        assert logins(new.url, legacy.robot_secret) == {
            "alice": 200, "robot": 200, "anonymous public": 200, "anonymous private": 401,
        }


def logins(url: str, robot_secret: str) -> dict[str, int]:
    async def check() -> dict[str, int]:
        out: dict[str, int] = {}
        async with aiohttp.ClientSession() as http:
            t = await basic_token(http, url, "alice", "alice-password", "repository:acme/web:pull")
            async with http.get(
                f"{url}/v2/acme/web/manifests/multi",
                headers={"Authorization": f"Bearer {t}", "Accept": ACCEPT},
            ) as resp:
                out["alice"] = resp.status
            t = await basic_token(
                http, url, "robot$globex+ci", robot_secret, "repository:globex/app:pull"
            )
            async with http.get(
                f"{url}/v2/globex/app/tags/list", headers={"Authorization": f"Bearer {t}"}
            ) as resp:
                out["robot"] = resp.status
            anonymous = await anonymous_token(http, url, "repository:initech/tool:pull")
            async with http.get(
                f"{url}/v2/initech/tool/manifests/v1",
                headers={"Authorization": f"Bearer {anonymous}", "Accept": ACCEPT},
            ) as resp:
                out["anonymous public"] = resp.status
            async with http.get(f"{url}/v2/acme/web/tags/list") as resp:
                out["anonymous private"] = resp.status
        return out

    return asyncio.run(check())


async def anonymous_token(http: aiohttp.ClientSession, url: str, scope: str) -> str:
    async with http.get(
        f"{url}/auth/token", params={"service": "dockyard", "scope": scope}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["token"]


def test_import_is_idempotent_and_resumable(legacy: Legacy, tmp_path: Path) -> None:
    """A run interrupted after its commits (files not renamed yet) is run again: every row is
    found by the target's keys, nothing is duplicated, the files are then renamed."""
    data, config = copy_of(legacy, tmp_path, DEAD_HOOK)
    first = run(ROOT, config, data, "metadata", "import-legacy", "--json")
    assert first.returncode == 0, first.stderr
    # Put the old files back as if the first run had died before renaming them.
    for imported in list(data.rglob("*.imported")):
        imported.rename(imported.with_name(imported.name.removesuffix(".imported")))
    second = run(ROOT, config, data, "metadata", "import-legacy", "--json")
    assert second.returncode == 0, second.stderr
    counts = json.loads(second.stdout[second.stdout.index("{"): second.stdout.rindex("}") + 1])
    assert counts and all(c["imported"] == 0 for c in counts.values()), counts
    assert counts["manifests"]["present"] > 0 and counts["events"]["present"] > 0
    conn = sqlite3.connect(data / "metadata.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM repositories").fetchone()[0] == len(REPOS)
        assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == len(
            legacy.seen["events"]
        )
        # Deliveries stay as round 1 left them (status, attempts, schedule, log; same event
        # numbers on a fresh store), leased by nobody.
        assert sorted(tuple(r) for r in conn.execute(DELIVERIES)) == legacy.seen["deliveries"]
        assert conn.execute("SELECT DISTINCT lease_owner FROM deliveries").fetchall() == [(None,)]
        assert conn.execute("SELECT seq FROM event_clock").fetchone()[0] == max(
            r[1] for r in legacy.seen["deliveries"]
        )
        # Every link is readable: the customer holds each blob a repository links.
        assert conn.execute(
            "SELECT COUNT(*) FROM repo_blobs rb LEFT JOIN held_blobs hb ON "
            "hb.customer_id = rb.customer_id AND hb.digest = rb.digest WHERE hb.digest IS NULL"
        ).fetchone()[0] == 0
        assert conn.execute("SELECT quota_bytes FROM customers WHERE name = 'acme'").fetchone() \
            == (1 << 30,)
        assert conn.execute("SELECT COUNT(*) FROM uploads").fetchone()[0] == 0
    finally:
        conn.close()
    assert not any(data.rglob("meta.db"))


def test_serve_without_round1_files_is_not_refused(tmp_path: Path) -> None:
    """A fresh data directory (or one after the import) starts as before."""
    with DockyardServer(tmp_path / "data") as fresh:
        assert fresh.proc is not None and fresh.proc.poll() is None
