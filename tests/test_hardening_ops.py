"""Issue 22, findings 2, 7 and 12: slow clients, admin-CLI names, unknown configuration.

Before (finding 2): 1,000 connections sending headers one byte every 5 s, and 500 PATCHes that
declared 2 GiB and sent nothing, stayed open as long as the client liked; with `ulimit -n 400`,
450 of them made every `/v2/` probe time out and the server logged 138,712 `accept … Too many
open files` lines in 45 s. Before (7): `dockyard quota set ../../x/evil 1GiB` wrote outside
`--data`; `quota show 'acme typo'` created a phantom customer. Before (12): `[metadta]` was
dropped without a word by `dockyard serve`.

Every server here is a real `dockyard serve` on a free loopback port, stopped by its PID.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockyard.ops.serve import AcceptErrorLog
from tests.support.net import free_port, wait_http
from tests.support.server import ROOT, DockyardServer

Factory = Callable[..., DockyardServer]
SLOW = "[http]\nheader_timeout = 2\nbody_idle_timeout = 2\n"


def _connect(server: DockyardServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=15)


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response (read to the close, or to Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", head, re.I)
    want = int(match.group(1)) if match else None
    while want is not None and len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ")[1]), body


def _request(server: DockyardServer, raw: bytes) -> tuple[int, bytes]:
    with _connect(server) as sock:
        sock.sendall(raw)
        return _read_response(sock)


def _start_upload(server: DockyardServer, name: str = "acme/slow") -> str:
    with _connect(server) as sock:
        sock.sendall(
            f"POST /v2/{name}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            .encode()
        )
        sock.settimeout(15)
        data = sock.recv(65536).decode()
    match = re.search(r"Location: (\S+)", data)
    assert match, data
    return match.group(1)


# --- finding 2: header timeout, idle-body timeout, connection cap, accept-error log ----------


def test_headers_trickled_byte_by_byte_get_408_while_others_are_served(
    dockyard_factory: Factory,
) -> None:
    server = dockyard_factory(SLOW)
    with _connect(server) as slow:
        slow.sendall(b"GET /v2/ HTTP/1.1\r\nHo")
        # Meanwhile a normal client is served at once.
        assert _request(server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
        started = time.monotonic()
        for _ in range(20):  # one byte per 0.5 s: "moving", but the headers never complete
            try:
                slow.sendall(b"s")
            except OSError:
                break
            time.sleep(0.5)
            slow.settimeout(0.01)
            try:
                if slow.recv(1, socket.MSG_PEEK):
                    break
            except (TimeoutError, BlockingIOError):
                pass
        slow.settimeout(15)
        status, body = _read_response(slow)
        assert status == 408
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        # Cut by the header timeout (2 s), not by the client giving up after 10 s.
        assert time.monotonic() - started < 9


def test_declared_body_never_sent_gets_408_and_the_session_is_unchanged(
    dockyard_factory: Factory,
) -> None:
    server = dockyard_factory(SLOW)
    location = _start_upload(server)
    with _connect(server) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {2 << 30}\r\n\r\nabc".encode()
        )
        status, body = _read_response(sock)
    assert status == 408
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    # Nothing half-written shows: the session still starts at 0.
    with _connect(server) as sock:
        sock.sendall(f"GET {location} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = sock.recv(65536).decode()
    assert " 204 " in data.splitlines()[0] and "Range: 0-0" in data


def test_slow_but_moving_upload_is_not_cut(dockyard_factory: Factory) -> None:
    server = dockyard_factory(SLOW)
    location = _start_upload(server)
    with _connect(server) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: 8\r\n\r\n".encode()
        )
        for _ in range(8):  # 8 s for 8 bytes: longer than both timeouts, never idle 2 s
            time.sleep(1)
            sock.sendall(b"x")
        status, _ = _read_response(sock)
    assert status == 202


def test_connection_cap_refuses_with_503_then_recovers(dockyard_factory: Factory) -> None:
    server = dockyard_factory("[http]\nmax_connections = 8\nheader_timeout = 30\n")
    held = [_connect(server) for _ in range(8)]
    try:
        for sock in held:
            sock.sendall(b"G")  # a request that has begun and is not finished
        time.sleep(0.3)
        status, body = _request(server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert _request(server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


@pytest.fixture
def low_fd_server(tmp_path: Path) -> Iterator[Callable[[str], tuple[subprocess.Popen, int, Path]]]:
    """`dockyard serve` under `ulimit -n 120`, as the issue's reproduction ran it."""
    procs: list[subprocess.Popen] = []

    def start(config: str) -> tuple[subprocess.Popen, int, Path]:
        port = free_port()
        cfg, log_path = tmp_path / "low.toml", tmp_path / "low.log"
        cfg.write_text(config)

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (120, 120))

        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dockyard", "serve", "--config", str(cfg),
                 "--data", str(tmp_path / "low"), "--addr", f"127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=limit,
            )
        procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/v2/", proc=proc)
        return proc, port, log_path

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _flood(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"G")
        socks.append(sock)
    return socks


def test_out_of_descriptors_logs_accept_errors_rate_limited(low_fd_server) -> None:
    # A cap above the descriptor limit lets accept() itself fail with EMFILE.
    _, port, log_path = low_fd_server("[http]\nmax_connections = 10000\nheader_timeout = 60\n")
    socks = _flood(port, 200)
    try:
        time.sleep(5)
    finally:
        for sock in socks:
            sock.close()
    lines = [x for x in log_path.read_text(errors="replace").splitlines() if "accept" in x]
    assert lines, "the EMFILE condition was reported"
    assert len(lines) <= 3  # one per 10 s (was one traceback per retry: 138,712 lines in 45 s)
    assert not any("Traceback" in x for x in log_path.read_text().splitlines())


def test_descriptor_exhaustion_gets_a_clear_refusal_not_a_timeout(low_fd_server) -> None:
    # The default cap (descriptor limit less a reserve) keeps room for the refusal itself.
    _, port, _ = low_fd_server("[http]\nheader_timeout = 4\n")
    socks = _flood(port, 100)
    # Let the burst be accepted (past 16 refusals at once the rest of a burst is reset).
    time.sleep(1)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as probe:
            probe.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = _read_response(probe)
        assert status == 503
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as probe:
        probe.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(probe)[0] == 200


async def test_accept_error_handler_reports_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    handler = AcceptErrorLog(interval=3600)
    error = OSError(24, "Too many open files")
    for _ in range(1000):
        handler(loop, {"message": "socket.accept() out of system resource", "exception": error})
    accepted = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(accepted) == 1 and handler.suppressed == 999


# --- finding 7: the admin CLI checks names as the API does ------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("quota", "set", "../../x/evil", "1GiB"),
        ("quota", "show", "acme typo"),
        ("quota", "clear", "ACME"),
        ("usage", "../etc"),
        ("gc", "--customer", "a/b", "--dry-run"),
        ("events", "list", "--repository", "../../x"),
        ("customer", "add", "bad name"),
        ("user", "list", "--customer", "../x"),
    ],
)
def test_cli_refuses_invalid_names_and_writes_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    data = tmp_path / "data"
    res = subprocess.run(
        [sys.executable, "-m", "dockyard", *args, "--data", str(data)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert "invalid" in res.stderr and ("customer name" in res.stderr or "repository" in res.stderr)
    assert not data.exists(), "nothing was opened or created"
    assert not (tmp_path / "x").exists()


def test_cli_quota_show_does_not_create_a_customer(dockyard: DockyardServer) -> None:
    assert "no quota" in dockyard.cli("quota", "show", "ghost").stdout
    usage = json.loads(dockyard.cli("usage", "--json").stdout)
    assert "ghost" not in {row["customer"] for row in usage}


# --- finding 12: serve refuses unknown sections and keys ---------------------------------------


def _serve(tmp_path: Path, config: str, *extra: str) -> subprocess.Popen:
    cfg = tmp_path / "serve.toml"
    cfg.write_text(config)
    return subprocess.Popen(
        [sys.executable, "-m", "dockyard", "serve", "--config", str(cfg),
         "--data", str(tmp_path / "d"), "--addr", f"127.0.0.1:{free_port()}", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )


def test_serve_refuses_unknown_section_and_key_naming_them(tmp_path: Path) -> None:
    proc = _serve(tmp_path, '[metadta]\nurl = "postgresql://x"\n[http]\ntls_crt = "c.pem"\n')
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    assert "unknown section metadta (did you mean 'metadata'?)" in err
    assert "unknown key http.tls_crt (did you mean 'tls_cert'?)" in err
    assert "--allow-unknown-config" in err


def test_serve_starts_with_allow_unknown_config_and_warns(dockyard_factory: Factory) -> None:
    server = dockyard_factory("[metadta]\nurl = 1\n", args=("--allow-unknown-config",))
    assert _request(server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    assert "unknown section metadta" in server.log()


# --- finding 9: the client's Host header is not echoed once public_url is set ------------------


def _push_with_host(server: DockyardServer, host: str, token: str = "") -> None:
    """A one-config-blob image pushed with a forged Host header."""
    import hashlib

    config = b'{"host": "forged"}'
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    status, body = _request(
        server,
        f"POST /v2/acme/host/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {host}\r\n{auth}"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(config)}\r\n\r\n"
        .encode() + config,
    )
    assert status == 201, body
    doc = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest,
                   "size": len(config)},
        "layers": [],
    }).encode()
    status, body = _request(
        server,
        f"PUT /v2/acme/host/manifests/v1 HTTP/1.1\r\nHost: {host}\r\n{auth}"
        f"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        f"Content-Length: {len(doc)}\r\n\r\n".encode() + doc,
    )
    assert status == 201, body


def test_public_url_is_what_clients_see_not_their_host_header(dockyard_factory: Factory) -> None:
    hook = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: the event stays queued
    server = dockyard_factory(
        '[http]\npublic_url = "https://registry.example.com/"\n'
        f'[[notifications.endpoints]]\nname = "sink"\nurl = "{hook}"\n'
    )
    _push_with_host(server, "evil.example:8443")
    rows = json.loads(server.cli("events", "list", "--json").stdout)
    event = json.loads(server.cli("events", "show", rows[0]["event_id"], "--json").stdout)
    url = event["event"]["target"]["url"]
    assert url.startswith("https://registry.example.com/v2/acme/host/manifests/sha256:")
    assert "evil" not in json.dumps(event["event"]["target"])

    secured = dockyard_factory(
        '[auth]\nenabled = true\n[http]\npublic_url = "https://registry.example.com"\n',
        name="secured",
    )
    with _connect(secured) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: evil.example:8443\r\n\r\n")
        head = sock.recv(65536).decode()
    assert " 401 " in head.splitlines()[0]
    assert 'realm="https://registry.example.com/auth/token"' in head
    assert "evil" not in head
