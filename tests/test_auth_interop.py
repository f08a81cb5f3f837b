"""dockyard's token service run alone (`dockyard auth serve`) in front of the reference registry
(CNCF distribution 2.8): distribution trusts it through a certificate of the signing key and
finds the key by the libtrust `kid` (docker-auth-jwt.md), so docker login/push/pull against
distribution proves the tokens follow the spec, not just dockyard's own reading of it."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.support.dockerd import DockerDaemon
from tests.support.net import free_port, wait_http
from tests.support.reference import reference_registry
from tests.support.server import ROOT

PASSWORD = "interop-pass"


class TokenService:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.config = root / "dockyard.toml"
        self.config.write_text("[auth]\nenabled = true\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, stdin: str = "") -> str:
        res = subprocess.run(
            [sys.executable, "-m", "dockyard", *args, "--config", str(self.config),
             "--data", str(self.data)],
            input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    def start(self) -> None:
        log = open(self.root / "auth.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dockyard", "auth", "serve", "--addr",
             f"127.0.0.1:{self.port}", "--config", str(self.config), "--data", str(self.data)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        log.close()
        wait_http(self.url + "/healthz", proc=self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def certificate_bundle(self) -> Path:
        """A self-signed certificate of the signing key: distribution's `rootcertbundle`."""
        key = serialization.load_pem_private_key(
            (self.data / "auth" / "signing-key.pem").read_bytes(), password=None
        )
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "dockyard token")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        )
        path = self.root / "token-bundle.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path


@pytest.fixture
def token_service(tmp_path: Path) -> Iterator[TokenService]:
    service = TokenService(tmp_path)
    service.start()  # generates the signing key
    try:
        service.cli("customer", "add", "acme")
        service.cli("user", "add", "alice", "--customer", "acme", "--role", "writer",
                    stdin=PASSWORD + "\n")
        service.cli("user", "add", "rita", "--customer", "acme", "--role", "reader",
                    stdin=PASSWORD + "\n")
        yield service
    finally:
        service.stop()


def test_reference_registry_trusts_standalone_token_service(
    token_service: TokenService, dockerd: DockerDaemon, busybox: str
) -> None:
    auth = {"token": {
        "realm": f"{token_service.url}/auth/token",
        "service": "dockyard",
        "issuer": "dockyard",
        "rootcertbundle": str(token_service.certificate_bundle()),
    }}
    with reference_registry({"auth": auth}) as reference:
        host = f"127.0.0.1:{reference.port}"
        ref = f"{host}/acme/interop:1"
        dockerd.build_layers(busybox, ref, [b"interop layer " * 1000])
        try:
            dockerd.cli("login", host, "-u", "rita", "--password-stdin",
                        input=(PASSWORD + "\n").encode())
            # a reader's token carries pull only: distribution refuses the push
            assert dockerd.cli("push", ref, check=False).returncode != 0
            dockerd.cli("login", host, "-u", "alice", "--password-stdin",
                        input=(PASSWORD + "\n").encode())
            dockerd.cli("push", ref)
            dockerd.cli("rmi", ref)
            dockerd.cli("pull", ref)
        finally:
            dockerd.cli("logout", host, check=False)
        dockerd.cli("rmi", ref)
        assert dockerd.cli("pull", ref, check=False).returncode != 0  # anonymous: private
