"""The conformance suite, run against the reference registry and against dockyard.

The reference registry (CNCF distribution 2.8.2) is the proof that the suite checks the spec
rather than dockyard's behaviour: it must fail exactly the checks documented, with reasons, in
conformance/reference-expected.toml, and skip exactly the optional features listed there.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import socket
import subprocess
import sys
import threading
import tomllib
import urllib.parse
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import conformance
from conformance.client import parse_challenges
from conformance.suite import CATEGORIES, all_checks
from tests.support.drivers import DRIVERS, driver_config
from tests.support.reference import ReferenceRegistry, free_port, reference_registry
from tests.support.require import missing
from tests.support.server import DockyardServer

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = tomllib.loads((ROOT / "conformance" / "reference-expected.toml").read_text())
# Without an allow-list 2.8.2 answers 500 to every manifest with `urls` on a layer.
REFERENCE_CONFIG: dict[str, Any] = {
    "validation": {"manifests": {"urls": {"allow": ["^https?://"]}}},
}


def _explain(results: conformance.Results, ids: set[str]) -> str:
    return "\n".join(r.line() for r in results.results if r.id in ids)


@pytest.fixture(scope="module")
def reference() -> Iterator[ReferenceRegistry]:
    with reference_registry(REFERENCE_CONFIG) as registry:
        yield registry


@pytest.fixture(scope="module")
def reference_results(reference: ReferenceRegistry) -> conformance.Results:
    return conformance.run(reference.url, "conformance/reference")


# -- the suite itself --------------------------------------------------------------------------


def test_every_check_has_an_id_title_and_spec_section() -> None:
    checks = all_checks()
    ids = [c.id for c in checks]
    assert len(ids) == len(set(ids))
    assert {c.category for c in checks} == set(CATEGORIES)
    for c in checks:
        assert re.fullmatch(r"[a-z]+\.[a-z0-9-]+", c.id), c.id
        assert c.title and c.section, c.id
    documented = set(EXPECTED["failures"]) | set(EXPECTED["skips"])
    assert documented <= set(ids), f"unknown ids in the expected file: {documented - set(ids)}"


def test_cli_lists_checks(capsys: pytest.CaptureFixture[str]) -> None:
    from conformance.__main__ import main

    assert main(["--list", "--only", "referrers,management"]) == 0
    listed = capsys.readouterr().out.splitlines()
    wanted = [c for c in all_checks() if c.category in ("referrers", "management")]
    assert [line.split(" — ")[0] for line in listed] == [c.id for c in wanted]
    assert main(["--list", "--only", "nonsense"]) == 2


def test_parse_bearer_and_basic_challenges() -> None:
    # spec: docker-auth-token.md "How to authenticate" (RFC 6750 §3 challenge syntax)
    [bearer] = parse_challenges([
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:samalba/my-app:pull,push"'
    ])
    assert bearer.scheme == "bearer"
    assert bearer.params == {"realm": "https://auth.example/token",
                             "service": "registry.example",
                             "scope": "repository:samalba/my-app:pull,push"}
    basic, second = parse_challenges(['Basic realm="x y", Bearer realm=https://a/t,service=s'])
    assert (basic.scheme, basic.params) == ("basic", {"realm": "x y"})
    assert (second.scheme, second.params) == ("bearer", {"realm": "https://a/t", "service": "s"})


# -- the reference registry --------------------------------------------------------------------


def test_reference_registry_fails_only_documented_checks(
    reference_results: conformance.Results,
) -> None:
    failed = reference_results.failed_ids()
    expected = set(EXPECTED["failures"])
    assert failed == expected, (
        f"unexpected failures:\n{_explain(reference_results, failed - expected)}\n"
        f"expected but passed or skipped: {sorted(expected - failed)}"
    )


def test_reference_registry_skips_only_documented_checks(
    reference_results: conformance.Results,
) -> None:
    skipped = reference_results.skipped_ids()
    expected = set(EXPECTED["skips"])
    assert skipped == expected, (
        f"unexpected skips:\n{_explain(reference_results, skipped - expected)}\n"
        f"expected but not skipped: {sorted(expected - skipped)}"
    )
    assert reference_results.passed == len(all_checks()) - len(EXPECTED["failures"]) - len(
        expected)


def test_cli_writes_reports_and_summary(reference: ReferenceRegistry, tmp_path: Path) -> None:
    junit, report = tmp_path / "junit.xml", tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "-m", "conformance", "--registry", reference.url,
         "--repo", "conformance/cli", "--only", "pull", "--junit", str(junit),
         "--report", str(report)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    pull = [c for c in all_checks() if c.category == "pull"]
    failing = [c.id for c in pull if c.id in EXPECTED["failures"]]
    assert lines[-1] == f"{len(pull) - len(failing)} passed, {len(failing)} failed", proc.stdout
    assert proc.returncode == (1 if failing else 0), proc.stderr
    for c in pull:
        outcome = "FAIL" if c.id in failing else "PASS"
        assert f"{outcome} pull {c.name} — {c.section}" in proc.stdout

    suites = ET.parse(junit).getroot()
    [suite] = suites.findall("testsuite")
    assert suite.get("name") == "pull"
    assert len(suite.findall("testcase")) == len(pull)
    failed_cases = [tc.get("name") for tc in suite.findall("testcase")
                    if tc.find("failure") is not None]
    assert sorted(f"pull.{n}" for n in failed_cases) == sorted(failing)
    text = report.read_text()
    assert f"**{lines[-1]}**" in text
    assert all(f"`{c.id}`" in text for c in pull)


def test_cli_reports_an_unreachable_registry(tmp_path: Path) -> None:
    # A port bound but never listening refuses connections; a merely free one could be taken
    # by another server meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "conformance", "--registry", f"http://127.0.0.1:{port}",
             "--repo", "conformance/none"],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
    assert proc.returncode == 2
    assert "cannot reach the registry" in proc.stderr


# -- authentication against the reference ------------------------------------------------------


class TokenServer:
    """A Docker token-spec endpoint (docker-auth-token.md, docker-auth-jwt.md) for the
    reference registry's `auth.token` mode: Basic credentials in, a JWT with x5c out."""

    SERVICE = "conformance-reference"
    ISSUER = "conformance-test-issuer"

    def __init__(self, workdir: Path, username: str, password: str) -> None:
        self.username, self.password = username, password
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conformance token issuer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = workdir / "token-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.requests: list[tuple[str | None, list[str]]] = []  # (user, scopes)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    def registry_config(self) -> dict[str, Any]:
        return {"auth": {"token": {"realm": self.realm, "service": self.SERVICE,
                                   "issuer": self.ISSUER,
                                   "rootcertbundle": str(self.bundle)}}}

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.path).query)
        scopes = query.get("scope", [])
        user = None
        auth = req.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if (user, password) != (self.username, self.password):
                self.requests.append((user, scopes))
                return self._send(req, 401, {"errors": [{"code": "UNAUTHORIZED"}]})
        self.requests.append((user, scopes))
        access = []
        for scope in scopes if user else []:  # anonymous callers get no access
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims = {"iss": self.ISSUER, "sub": user or "", "aud": self.SERVICE, "iat": now,
                  "nbf": now - 5, "exp": now + 300, "jti": uuid.uuid4().hex, "access": access}
        x5c = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        token = jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": [x5c]})
        self._send(req, 200, {"token": token, "expires_in": 300})

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def __enter__(self) -> TokenServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_bearer_token_auth_gives_the_same_results(
    tmp_path: Path, reference_results: conformance.Results,
) -> None:
    with TokenServer(tmp_path, "alice", "s3cret") as tokens, \
            reference_registry({**REFERENCE_CONFIG, **tokens.registry_config()}) as registry:
        denied = conformance.run(registry.url, "conformance/auth", username="alice",
                                 password="wrong", only=["pull"])
        assert denied.passed == 0, _explain(denied, {r.id for r in denied.results})
        results = conformance.run(registry.url, "conformance/auth", username="alice",
                                  password="s3cret")
    assert results.failed_ids() == reference_results.failed_ids(), _explain(
        results, results.failed_ids() ^ reference_results.failed_ids())
    assert results.skipped_ids() == reference_results.skipped_ids()
    granted = {s for user, scopes in tokens.requests if user == "alice" for s in scopes}
    # The mount check asks for pull on the source repository in the same token.
    assert {"repository:conformance/auth:pull,push", "repository:conformance/auth:pull",
            "registry:catalog:*"} <= granted, granted


def _htpasswd(path: Path, user: str, password: str) -> None:
    """A bcrypt htpasswd line (the only hash 2.8.2 accepts), via libxcrypt's crypt(3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt as crypt_module
        except ImportError:  # removed in Python 3.13
            missing("the crypt module is needed to write a bcrypt htpasswd file")
    # Cost 4 (the minimum): the registry verifies the hash on every request.
    salt = crypt_module.mksalt(crypt_module.METHOD_BLOWFISH, rounds=16)
    hashed = crypt_module.crypt(password, salt)
    path.write_text(f"{user}:{hashed}\n")


def test_basic_auth_challenge(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    _htpasswd(htpasswd, "bob", "hunter2")
    config = {**REFERENCE_CONFIG,
              "auth": {"htpasswd": {"realm": "conformance", "path": str(htpasswd)}}}
    with reference_registry(config) as registry:
        denied = conformance.run(registry.url, "conformance/basic", username="bob",
                                 password="nope", only=["pull"])
        results = conformance.run(registry.url, "conformance/basic", username="bob",
                                  password="hunter2", only=["pull"])
    assert denied.passed == 0
    expected = {i for i in EXPECTED["failures"] if i.startswith("pull.")}
    assert results.failed_ids() == expected, _explain(results, results.failed_ids() ^ expected)


# -- dockyard ----------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_dockyard_passes_everything(
    driver: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with DockyardServer(tmp_path / "data", driver_config(request, driver)) as server:
        results = conformance.run(server.url, "conformance/dockyard")
    not_passed = results.failed_ids() | results.skipped_ids()
    assert (results.failed, results.skipped) == (0, 0), _explain(results, not_passed)
    assert results.passed == len(all_checks())
