"""Attack bench (issue 22): the latency of normal pushes while an attack runs, against the same
pushes without it. Not a test: it prints a markdown table and writes JSON to
`bench/results/attacks-<timestamp>.json`.

    .venv/bin/python -m bench.attacks                 # every attack, ~2 minutes
    .venv/bin/python -m bench.attacks --only slowloris --pushes 30

One `dockyard serve` with auth on runs on a free loopback port (stopped by its PID at the end).
The attacker connects from 127.0.0.2, the pushing client from 127.0.0.3 (both loopback), so the
per-address login budgets apply to the attacker only, as they would on a network. A push is an
authenticated 4 MiB blob POST plus a manifest PUT for a new tag. Target: during ≤ 2 × without.

Attacks:
- `slowloris`: N connections sending a request's headers one byte every 5 s;
- `login-flood`: 40 connections sending bad Basic logins with random user names, each as soon as
  the last was answered (closed loop);
- `large-bodies`: N PATCHes that declare 2 GiB and send a byte now and then, never the body.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.support.net import free_port, wait_http

from .servers import ROOT, stop_pid

ATTACKER, CLIENT = "127.0.0.2", "127.0.0.3"
PASSWORD = "bench-attack-pass"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


SOURCE = ROOT  # the checkout whose `dockyard` is served (--source: compare with another)


def _cli(config: Path, data: Path, *args: str, stdin: str = "") -> str:
    res = subprocess.run(
        [sys.executable, "-m", "dockyard", *args, "--config", str(config), "--data", str(data)],
        input=stdin, capture_output=True, text=True, cwd=SOURCE, timeout=60, check=True,
    )
    return res.stdout


class Pusher:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(CLIENT, 0)))
        self.token = ""
        self.n = 0

    async def login(self) -> float:
        started = time.perf_counter()
        auth = base64.b64encode(f"pusher:{PASSWORD}".encode()).decode()
        async with self.http.get(
            f"{self.base}/auth/token",
            params={"service": "dockyard", "scope": "repository:acme/bench:pull,push"},
            headers={"Authorization": f"Basic {auth}"},
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        self.token = body["token"]
        return time.perf_counter() - started

    async def push(self) -> float:
        """One image: a 4 MiB layer, a config, a manifest (seconds)."""
        self.n += 1
        auth = {"Authorization": f"Bearer {self.token}"}
        layer, config = os.urandom(4 << 20), json.dumps({"n": self.n}).encode()
        started = time.perf_counter()
        for blob in (layer, config):
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            async with self.http.post(
                f"{self.base}/v2/acme/bench/blobs/uploads/", params={"digest": digest},
                data=blob, headers=auth,
            ) as resp:
                assert resp.status == 201, await resp.text()
        doc = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                        "size": len(layer)}],
        }).encode()
        async with self.http.put(
            f"{self.base}/v2/acme/bench/manifests/t{self.n}", data=doc,
            headers={**auth, "Content-Type": OCI_MANIFEST},
        ) as resp:
            assert resp.status == 201, await resp.text()
        return time.perf_counter() - started


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
    except OSError:
        return None


async def slowloris(port: int, stop: asyncio.Event, count: int, stats: dict[str, int]) -> None:
    async def one() -> None:
        while not stop.is_set():
            opened = await _open(port)
            if opened is None:
                await asyncio.sleep(0.5)
                continue
            reader, writer = opened
            stats["connections"] += 1
            with contextlib.suppress(OSError):
                writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: ")
                while not stop.is_set() and not reader.at_eof():
                    writer.write(b"a")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1), 5):
                            stats["cut"] += 1
                            break
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)


async def large_bodies(port: int, stop: asyncio.Event, count: int, stats: dict[str, int]) -> None:
    async def one() -> None:
        while not stop.is_set():
            opened = await _open(port)
            if opened is None:
                await asyncio.sleep(0.5)
                continue
            reader, writer = opened
            stats["connections"] += 1
            with contextlib.suppress(OSError):
                # Anonymous: the request is refused at the door (401) or, with a token, would be
                # a PATCH of an upload; either way the body is declared and never sent.
                writer.write(
                    b"PATCH /v2/acme/bench/blobs/uploads/00000000-0000-0000-0000-000000000000 "
                    b"HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: 2147483648\r\n\r\nab"
                )
                await writer.drain()
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        if not await asyncio.wait_for(reader.read(65536), 5):
                            stats["cut"] += 1
                            break
                    writer.write(b"x")
                    await writer.drain()
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)


async def login_flood(port: int, stop: asyncio.Event, count: int, stats: dict[str, int]) -> None:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(ATTACKER, 0), limit=count)
    ) as http:

        async def one() -> None:
            while not stop.is_set():
                creds = f"ghost-{secrets.token_hex(6)}:wrong-password"
                auth = base64.b64encode(creds.encode()).decode()
                try:
                    async with http.get(
                        f"{base}/auth/token", headers={"Authorization": f"Basic {auth}"}
                    ) as resp:
                        await resp.read()
                        stats[str(resp.status)] = stats.get(str(resp.status), 0) + 1
                except aiohttp.ClientError:
                    stats["errors"] = stats.get("errors", 0) + 1

        await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)


async def fresh_probes(port: int, count: int = 10) -> dict[str, int]:
    """`GET /v2/` on new connections from the client's address during the attack (the pusher
    keeps one connection alive, so it does not see what a newcomer sees): status or timeout."""
    seen: dict[str, int] = {}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(CLIENT, 0), force_close=True),
        timeout=aiohttp.ClientTimeout(total=10),
    ) as http:
        for _ in range(count):
            try:
                async with http.get(f"http://127.0.0.1:{port}/v2/") as resp:
                    key = str(resp.status)
            except TimeoutError:
                key = "timeout"
            except aiohttp.ClientError as exc:
                key = type(exc).__name__
            seen[key] = seen.get(key, 0) + 1
    return seen


Attack = Callable[[int, asyncio.Event, int, dict[str, int]], Awaitable[None]]
ATTACKS: dict[str, tuple[Attack, int]] = {
    "slowloris": (slowloris, 450),  # the issue: 450 of them made every probe time out
    "login-flood": (login_flood, 40),
    "large-bodies": (large_bodies, 500),
}


async def measure(port: int, names: list[str], pushes: int, warmup: float) -> list[dict]:
    pusher = Pusher(f"http://127.0.0.1:{port}")
    rows = []
    try:
        await pusher.login()
        for _ in range(3):
            await pusher.push()
        for name in names:
            attack, count = ATTACKS[name]
            quiet = [await pusher.push() for _ in range(pushes)]
            quiet_login = [await pusher.login() for _ in range(3)]
            stop = asyncio.Event()
            stats: dict[str, int] = {"connections": 0, "cut": 0}
            task = asyncio.create_task(attack(port, stop, count, stats))
            await asyncio.sleep(warmup)
            during, failed = [], 0
            for _ in range(pushes):
                try:
                    during.append(await pusher.push())
                except AssertionError:
                    failed += 1  # a 5xx: the attack broke pushes (counted, not fatal)
            during = during or [float("nan")]
            try:
                during_login = [await pusher.login() for _ in range(3)]
            except AssertionError:
                during_login = [float("nan")]
            probes = await fresh_probes(port)
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 15)
            q, d = statistics.median(quiet), statistics.median(during)
            rows.append({
                "attack": name, "attackers": count, "pushes": pushes,
                "push_ms_without": round(q * 1000, 1), "push_ms_during": round(d * 1000, 1),
                "push_max_ms_during": round(max(during) * 1000, 1), "ratio": round(d / q, 2),
                "login_ms_without": round(statistics.median(quiet_login) * 1000, 1),
                "login_ms_during": round(statistics.median(during_login) * 1000, 1),
                "pushes_failed_during": failed,
                "target_met": d <= 2 * q and not failed,
                "attack_stats": stats, "fresh_probes": probes,
            })
            await asyncio.sleep(2)  # let the server close what the attack left
    finally:
        await pusher.http.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated: " + ",".join(ATTACKS))
    parser.add_argument("--pushes", type=int, default=15, help="pushes per phase (median)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of attack first")
    parser.add_argument("--config", default="", help="extra TOML for the server")
    parser.add_argument("--source", type=Path, default=ROOT,
                        help="serve the dockyard of this checkout (an older one: before/after)")
    args = parser.parse_args(argv)
    global SOURCE
    SOURCE = args.source.resolve()
    names = args.only.split(",") if args.only else list(ATTACKS)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # for the attackers
    with tempfile.TemporaryDirectory(prefix="dy-attacks-") as tmp:
        root = Path(tmp)
        config, data = root / "dockyard.toml", root / "data"
        config.write_text("[auth]\nenabled = true\n" + args.config)
        _cli(config, data, "customer", "add", "acme")
        _cli(config, data, "user", "add", "pusher", "--customer", "acme", "--role", "writer",
             stdin=PASSWORD + "\n")
        port = free_port()

        def limit() -> None:
            # The server as the issue ran it: `ulimit -n 400`.
            resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))

        with open(root / "server.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dockyard", "serve", "--config", str(config),
                 "--data", str(data), "--addr", f"127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=SOURCE, preexec_fn=limit,
            )
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/", proc=proc)
            rows = asyncio.run(measure(port, names, args.pushes, args.warmup))
        finally:
            stop_pid(proc)
            kept = ROOT / "bench" / "results" / f"attacks-{time.strftime('%Y%m%d-%H%M%S')}.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_bytes((root / "server.log").read_bytes())
            print(f"server log: {kept}")
        log_lines = kept.read_text(errors="replace").splitlines()
    print("| attack | attackers | push p50 without (ms) | push p50 during (ms) | max during (ms) "
          "| ratio | failed pushes | ≤ 2× | login without / during (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {r['attackers']} | {r['push_ms_without']} | "
              f"{r['push_ms_during']} | {r['push_max_ms_during']} | {r['ratio']} | "
              f"{r['pushes_failed_during']}/{r['pushes']} | "
              f"{'yes' if r['target_met'] else 'NO'} | {r['login_ms_without']} / "
              f"{r['login_ms_during']} |")
    for r in rows:
        print(f"{r['attack']}: attack {r['attack_stats']}; /v2/ on new connections during it: "
              f"{r['fresh_probes']}")
    print(f"server log: {len(log_lines)} lines, "
          f"{sum('accept' in x for x in log_lines)} about accept errors")
    out = ROOT / "bench" / "results" / f"attacks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["target_met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
