"""`dockyard metadata migrate --to postgresql://…`: a populated embedded installation moves to
PostgreSQL with one command and a restart, and serves the same manifests, tags, usage, events
and logins there."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.apiclient import OCI_MANIFEST, basic_token, push_to
from tests.support.postgres import PostgresCluster
from tests.support.server import ROOT, DockyardServer

DEAD_HOOK = """
[notifications]
poll_interval = "1h"

[[notifications.endpoints]]
name = "hook"
url = "http://127.0.0.1:9/"
max_attempts = 1000
"""


def dockyard(config: Path, data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dockyard", *args, "--config", str(config), "--data", str(data)],
        input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=180,
    )


def snapshot(server: DockyardServer, repos: list[str]) -> dict:
    """What a user sees: manifests by tag, tag lists, catalog, usage, pending events."""

    async def read() -> dict:
        seen: dict = {}
        async with aiohttp.ClientSession() as http:
            for repo in repos:
                async with http.get(f"{server.url}/v2/{repo}/tags/list") as resp:
                    seen[f"tags {repo}"] = await resp.json()
                for tag in seen[f"tags {repo}"]["tags"]:
                    url = f"{server.url}/v2/{repo}/manifests/{tag}"
                    async with http.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
                        seen[f"manifest {repo}:{tag}"] = (resp.status, await resp.read())
            async with http.get(f"{server.url}/v2/_catalog") as resp:
                seen["catalog"] = await resp.json()
        return seen

    seen = asyncio.run(read())
    usage = server.cli("usage", "--json").stdout
    seen["usage"] = sorted(json.loads(usage), key=lambda r: r["customer"])
    events = json.loads(server.cli("events", "list", "--json").stdout)
    seen["events"] = sorted((e["event_id"], e["status"]) for e in events)
    return seen


def test_embedded_installation_moves_to_postgresql(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    repos = ["acme/web", "acme/api", "globex/app", "initech/tool"]
    with DockyardServer(data, DEAD_HOOK) as embedded:

        async def push_all() -> None:
            async with aiohttp.ClientSession() as http:
                for i, repo in enumerate(repos):
                    shared = b"a layer every customer has" * 100
                    await push_to(http, embedded.url, repo, "v1", shared, b"{}")
                    own = f"{repo} layer {i}".encode() * 100
                    await push_to(http, embedded.url, repo, "v2", own, b'{"v": 2}')

        asyncio.run(push_all())
        for customer in ("acme", "globex"):
            embedded.cli("customer", "add", customer)
        embedded.cli("user", "add", "alice", "--customer", "acme", "--role", "writer",
                     stdin="alice-password\n")
        robot = embedded.cli("robot", "add", "ci", "--customer", "globex", "--repos", "app")
        robot_secret = robot.stdout.strip().splitlines()[-1]
        before = snapshot(embedded, repos)
    assert len(before["events"]) == 2 * len(repos)  # pending: the hook never answered

    url = postgres.new_database()
    config = data.parent / "data.toml"
    moved = dockyard(config, data, "metadata", "migrate", "--to", url, "--verify")
    assert moved.returncode == 0, moved.stderr
    assert "MISMATCH" not in moved.stdout and "verified" in moved.stdout
    assert "dockyard-test" not in moved.stdout  # the password is not printed

    # Run again: finished tables are skipped, and the target still verifies.
    again = dockyard(config, data, "metadata", "migrate", "--to", url, "--verify")
    assert again.returncode == 0, again.stderr
    assert "manifests: already copied" in again.stdout

    # The embedded file is moved aside: whatever is served now comes from PostgreSQL.
    for path in data.glob("metadata.db*"):
        path.rename(path.with_name("old-" + path.name))
    pg_config = f'[metadata]\nurl = "{url}"\n' + DEAD_HOOK + "\n[auth]\nenabled = true\n"
    with DockyardServer(tmp_path / "data", pg_config) as served:
        with_auth = snapshot_with_login(served, repos, robot_secret)
        assert not (data / "metadata.db").exists()
    assert with_auth["alice"] == 200 and with_auth["robot"] == 200
    after = with_auth["seen"]
    assert after == before


def snapshot_with_login(server: DockyardServer, repos: list[str], robot_secret: str) -> dict:
    """Logins work on the migrated accounts; with a token per request the same things show."""

    async def check() -> dict:
        out: dict = {}
        async with aiohttp.ClientSession() as http:
            t = await basic_token(
                http, server.url, "alice", "alice-password", "repository:acme/web:pull"
            )
            async with http.get(
                f"{server.url}/v2/acme/web/manifests/v1",
                headers={"Authorization": f"Bearer {t}", "Accept": OCI_MANIFEST},
            ) as resp:
                out["alice"] = resp.status
            t = await basic_token(
                http, server.url, "robot$globex+ci", robot_secret, "repository:globex/app:pull"
            )
            async with http.get(
                f"{server.url}/v2/globex/app/tags/list", headers={"Authorization": f"Bearer {t}"}
            ) as resp:
                out["robot"] = resp.status
        return out

    out = asyncio.run(check())
    # The rest of the comparison reads without auth: restart the same data without [auth].
    return {**out, "seen": _open_snapshot(server, repos)}


def _open_snapshot(server: DockyardServer, repos: list[str]) -> dict:
    text = server.config_path.read_text().replace("enabled = true", "enabled = false")
    server.stop()
    server.config_path.write_text(text)
    server.start()
    return snapshot(server, repos)


def test_migrate_refuses_what_it_cannot_do(postgres: PostgresCluster, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("")
    empty = dockyard(config, tmp_path / "nothing", "metadata", "migrate", "--to",
                     postgres.new_database())
    assert empty.returncode == 1 and "no embedded metadata" in empty.stderr
    wrong = dockyard(config, tmp_path, "metadata", "migrate", "--to", "mysql://x")
    assert wrong.returncode == 2 and "postgresql://" in wrong.stderr
    # A source with tables of a part this dockyard does not know is not half-copied.
    (tmp_path / "odd").mkdir()
    conn = sqlite3.connect(tmp_path / "odd" / "metadata.db")
    conn.execute("CREATE TABLE schema_migrations (component TEXT, version INT, updated_at REAL)")
    conn.execute("INSERT INTO schema_migrations VALUES ('future-part', 1, 0)")
    conn.commit()
    conn.close()
    odd = dockyard(config, tmp_path / "odd", "metadata", "migrate", "--to",
                   postgres.new_database())
    assert odd.returncode == 1 and "future-part" in odd.stderr
