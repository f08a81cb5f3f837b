"""TLS on the main listener: docker and skopeo against a test CA, mutual TLS, bad settings.

The docker engine treats every 127.0.0.0/8 registry as insecure: it speaks TLS to it but skips
certificate verification and does not read /etc/docker/certs.d for it (docker 20.10
registry.newTLSConfig reads the certs dir only for secure registries). So the docker test
proves pushes and pulls work over TLS; skopeo, which verifies loopback registries too, proves
the certificate chain is right and that an unknown CA is refused.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dockyard.ops.tls import server_ssl_context
from registry.config import ConfigError, HttpSettings
from tests.support.dockerd import DockerDaemon
from tests.support.oci_layout import write_multi_platform_layout
from tests.support.require import require_binary
from tests.support.server import ROOT, DockyardServer


@dataclass
class Certs:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def skopeo_dir(self, name: str, client: bool = False) -> Path:
        """A --cert-dir for skopeo: ca.crt, and client.cert/client.key for mutual TLS."""
        d = self.dir / name
        d.mkdir(exist_ok=True)
        shutil.copy(self.ca, d / "ca.crt")
        if client:
            shutil.copy(self.client_cert, d / "client.cert")
            shutil.copy(self.client_key, d / "client.key")
        return d


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_certs(root: Path) -> Certs:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def issue(cn: str, key: ec.EllipticCurvePrivateKey, *, ca: bool = False) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name("dockyard test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        elif cn == "client":
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        return builder.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    certs = Certs(
        root,
        root / "ca.crt",
        root / "server.crt",
        root / "server.key",
        root / "client.cert",
        root / "client.key",
    )
    certs.ca.write_bytes(issue("dockyard test CA", ca_key, ca=True).public_bytes(pem))
    server_key = ec.generate_private_key(ec.SECP256R1())
    certs.server_cert.write_bytes(issue("127.0.0.1", server_key).public_bytes(pem))
    _write_key(certs.server_key, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    certs.client_cert.write_bytes(issue("client", client_key).public_bytes(pem))
    _write_key(certs.client_key, client_key)
    return certs


def start_tls(
    data_dir: Path, certs: Certs, monkeypatch: pytest.MonkeyPatch, extra: str = ""
) -> DockyardServer:
    """`dockyard serve` over HTTPS; the readiness wait trusts the test CA (SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    server = DockyardServer(
        data_dir,
        f'[http]\ntls_cert = "{certs.server_cert}"\ntls_key = "{certs.server_key}"\n{extra}',
    )
    server.url = f"https://{server.host}"
    return server.start()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_server(tmp_path: Path, certs: Certs, monkeypatch: pytest.MonkeyPatch):
    server = start_tls(tmp_path / "data", certs, monkeypatch)
    yield server
    server.stop()


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = require_binary("skopeo")
    # Without SSL_CERT_FILE (set for the readiness wait): skopeo must trust only --cert-dir.
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert res.returncode == 0, f"skopeo {' '.join(args)}: {res.stderr}"
    return res


def test_https_only_and_the_chain_verifies(tls_server: DockyardServer, certs: Certs) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    with urllib.request.urlopen(f"{tls_server.url}/v2/", context=context, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    # Plain HTTP on the TLS port gets no HTTP answer.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{tls_server.host}/v2/", timeout=10).read()


def test_docker_push_and_pull_over_tls(
    tls_server: DockyardServer, dockerd: DockerDaemon, busybox: str
) -> None:
    ref = f"{tls_server.host}/acme/tls-busybox:1"
    dockerd.cli("tag", busybox, ref)
    dockerd.cli("push", ref)
    dockerd.cli("rmi", ref)
    pulled = dockerd.cli("pull", ref)
    assert "Downloaded newer image" in pulled.stdout or "Image is up to date" in pulled.stdout
    out = dockerd.cli("run", "--rm", "--network", "none", ref, "echo", "over-tls").stdout
    assert out.strip() == "over-tls"
    dockerd.cli("rmi", ref)


def test_skopeo_trusts_the_test_ca_and_refuses_without_it(
    tls_server: DockyardServer, certs: Certs, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    write_multi_platform_layout(layout, "v1")
    dest = f"docker://{tls_server.host}/acme/tls-skopeo:1"

    refused = skopeo("copy", "--all", f"oci:{layout}:v1", dest, check=False)
    assert refused.returncode != 0
    assert "certificate signed by unknown authority" in refused.stderr

    cert_dir = certs.skopeo_dir("skopeo-ca")
    skopeo("copy", "--all", "--dest-cert-dir", str(cert_dir), f"oci:{layout}:v1", dest)
    back = tmp_path / "back"
    skopeo("copy", "--all", "--src-cert-dir", str(cert_dir), dest, f"oci:{back}:v1")
    assert (back / "index.json").exists()


def spawn(server: DockyardServer) -> DockyardServer:
    """Start without the HTTP readiness wait (which has no client certificate to offer)."""
    server.data_dir.mkdir(parents=True, exist_ok=True)
    with open(server.log_path, "ab") as log:
        server.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dockyard",
                "serve",
                "--config",
                str(server.config_path),
                "--data",
                str(server.data_dir),
                "--addr",
                server.host,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, f"dockyard exited: {server.log()}"
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"dockyard did not listen: {server.log()}")


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, certs: Certs) -> None:
    server = DockyardServer(
        tmp_path / "data",
        f'[http]\ntls_cert = "{certs.server_cert}"\ntls_key = "{certs.server_key}"\n'
        f'tls_client_ca = "{certs.ca}"\n',
    )
    server.url = f"https://{server.host}"
    try:
        spawn(server)
        anonymous = ssl.create_default_context(cafile=str(certs.ca))
        # With TLS 1.3 the refusal of a missing client certificate arrives after the
        # handshake, on the first read: both are inside the raises block.
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{server.url}/v2/", context=anonymous, timeout=10).read()
        with_cert = ssl.create_default_context(cafile=str(certs.ca))
        with_cert.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        with urllib.request.urlopen(f"{server.url}/v2/", context=with_cert, timeout=10) as resp:
            assert resp.status == 200

        layout = tmp_path / "layout"
        write_multi_platform_layout(layout, "v1")
        dest = f"docker://{server.host}/acme/mtls:1"
        ca_only = str(certs.skopeo_dir("ca-only"))
        refused = skopeo(
            "copy", "--all", "--dest-cert-dir", ca_only, f"oci:{layout}:v1", dest, check=False
        )
        assert refused.returncode != 0
        mtls = str(certs.skopeo_dir("mtls", client=True))
        skopeo("copy", "--all", "--dest-cert-dir", mtls, f"oci:{layout}:v1", dest)
        inspect = skopeo("inspect", "--raw", "--cert-dir", mtls, dest)
        assert '"schemaVersion"' in inspect.stdout
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_cert": "{cert}"}, "tls_cert and http.tls_key must be set together"),
        ({"tls_cert": "{cert}", "tls_key": "/nonexistent/key.pem"}, "no such file"),
        ({"tls_cert": "{cert}", "tls_key": "{cert}"}, "cannot load"),
        ({"tls_client_ca": "{cert}"}, "needs http.tls_cert"),
    ],
)
def test_bad_tls_settings_name_the_key(certs: Certs, settings: dict, message: str) -> None:
    http = HttpSettings(**{k: v.format(cert=certs.server_cert) for k, v in settings.items()})
    with pytest.raises(ConfigError, match=message):
        server_ssl_context(http)


def test_serve_refuses_to_start_with_a_bad_tls_setting(tmp_path: Path, certs: Certs) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[http]\ntls_cert = "{certs.server_cert}"\n')
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "dockyard",
            "serve",
            "--config",
            str(config),
            "--data",
            str(tmp_path / "data"),
            "--addr",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 2
    assert "http.tls_cert and http.tls_key must be set together" in res.stderr
