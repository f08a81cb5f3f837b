"""Property-based fuzzing of a running `dockyard serve` (issue 22): names, digests, ranges,
pagination, Content-Range, manifests (JSON structure and media types) and token requests.

Any 5xx answer, an answer that is not the spec's JSON error shape on a 4xx, or a traceback in the
server's log fails. Two servers run for the module: one without auth (the API itself) and one
with auth (the token endpoint and the challenge). Each property draws FUZZ_EXAMPLES cases (CI:
the default keeps this file under two minutes on two cores); `scripts/fuzz.sh` runs the same
properties with many more. The number of cases each run generated is printed at the end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.server import DockyardServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a request's time is not a property
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=os.environ.get("FUZZ_RANDOM") is None,  # CI: the same cases every run
)
CASES: Counter[str] = Counter()
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPES = [
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.artifact.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "text/plain",
    "",
]


class Fuzzed:
    def __init__(self, server: DockyardServer) -> None:
        self.server = server
        self.config_digest = ""
        self.manifest_digest = ""

    def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One raw HTTP/1.1 request on its own connection: status and body."""
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.server.host}", "Connection: close"]
        for key, value in (headers or {}).items():
            # Header values keep visible characters only: control characters are refused by
            # aiohttp's parser before dockyard sees the request (its own plain-text 400).
            head.append(f"{key}: {''.join(c for c in value if c.isprintable())}")
        if body or method in ("PUT", "POST", "PATCH"):
            head.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=30) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), data[:200]
        return int(status_line.split(b" ")[1]), rest.partition(b"\r\n\r\n")[2]

    def check(self, kind: str, status: int, body: bytes, method: str = "GET") -> None:
        CASES[kind] += 1
        assert status < 500, (status, body[:500])
        if 400 <= status and method != "HEAD" and body:
            doc = json.loads(body)
            assert isinstance(doc.get("errors"), list) and doc["errors"][0]["code"], doc


def _start(root: Path, config: str) -> DockyardServer:
    return DockyardServer(root, config).start()


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    server = _start(tmp_path_factory.mktemp("fuzz") / "data", "")
    fuzzed = Fuzzed(server)
    # Something to find: a config blob and a manifest in acme/app.
    config = b'{"os": "linux"}'
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    status, _ = fuzzed.request("POST", f"/v2/acme/app/blobs/uploads/?digest={digest}", config)
    assert status == 201
    doc = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest,
                   "size": len(config)},
        "layers": [],
    }).encode()
    status, _ = fuzzed.request(
        "PUT", "/v2/acme/app/manifests/v1", doc, {"Content-Type": OCI_MANIFEST}
    )
    assert status == 201
    fuzzed.config_digest = digest
    fuzzed.manifest_digest = "sha256:" + hashlib.sha256(doc).hexdigest()
    try:
        yield fuzzed
    finally:
        server.stop()
        _assert_clean_log(server)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    # A high failure budget: this fuzzes inputs, not the throttle (tests/test_hardening_auth).
    server = _start(
        tmp_path_factory.mktemp("fuzz-auth") / "data",
        "[auth]\nenabled = true\nfailed_login_source_limit = 1000000\n"
        "failed_login_limit = 1000000\nfailed_login_tarpit = 0\n",
    )
    try:
        yield Fuzzed(server)
    finally:
        server.stop()
        _assert_clean_log(server)


def _assert_clean_log(server: DockyardServer) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    assert '"level": "error"' not in log, log[-4000:]
    print(f"\nfuzz cases: {dict(CASES)} (total {sum(CASES.values())})")


# --- strategies --------------------------------------------------------------------------------

COMPONENT = st.from_regex(r"[a-z0-9]+([._-][a-z0-9]+)*", fullmatch=True).filter(
    lambda s: len(s) <= 40
)
NASTY = st.lists(
    st.sampled_from([*string.printable, "²", "é", "\u202e", "..", "%00", "/"]), max_size=60
).map("".join)
NAMES = st.one_of(
    st.lists(COMPONENT, min_size=1, max_size=4).map("/".join),
    NASTY,
    st.builds(lambda a, b: f"{a}/{b}", st.sampled_from(["acme", "globex", "..", ".", ""]), NASTY),
    st.integers(250, 300).map(lambda n: "a" * n),
)
HEX = st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=140)
DIGESTS = st.one_of(
    st.builds(lambda h: f"sha256:{h}", HEX),
    st.builds(lambda h: f"sha512:{h}", HEX),
    st.builds(lambda a, h: f"{a}:{h}", st.text(string.ascii_letters + "+._-", max_size=20), HEX),
    NASTY,
)
NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["²", "٣", "1e3", "0x10", " 1", "", "-0", "9" * 5000, "1_000"]),
    NASTY,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def target(path: str, **query: str) -> str:
    quoted = quote(path, safe="/:@")
    return f"{quoted}?{urlencode(query)}" if query else quoted


# --- the API -----------------------------------------------------------------------------------


@FUZZ
@given(name=NAMES, method=st.sampled_from(["GET", "HEAD", "DELETE"]), n=NUMBERS, last=NASTY)
def test_names_and_pagination(open_api: Fuzzed, name: str, method: str, n: str, last: str) -> None:
    for path, query in (
        (f"/v2/{name}/tags/list", {"n": n, "last": last}),
        ("/v2/_catalog", {"n": n, "last": last}),
        (f"/v2/{name}/manifests/v1", {}),
        (f"/v2/{name}/referrers/{open_api.manifest_digest}", {"artifactType": last}),
    ):
        status, body = open_api.request(method, target(path, **query))
        open_api.check("names+pagination", status, body, method)


@FUZZ
@given(digest=DIGESTS, name=st.sampled_from(["acme/app", "globex/app", "library/x"]),
       method=st.sampled_from(["GET", "HEAD", "DELETE"]))
def test_digests(open_api: Fuzzed, digest: str, name: str, method: str) -> None:
    for path in (f"/v2/{name}/blobs/{digest}", f"/v2/{name}/manifests/{digest}",
                 f"/v2/{name}/referrers/{digest}"):
        status, body = open_api.request(method, target(path))
        open_api.check("digests", status, body, method)
    status, body = open_api.request(
        "POST", target(f"/v2/{name}/blobs/uploads/", mount=digest, **{"from": "acme/app"})
    )
    open_api.check("digests", status, body, "POST")


RANGES = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", NUMBERS, NUMBERS),
    st.builds(lambda a: f"bytes=-{a}", NUMBERS),
    st.builds(lambda a, b: f"bytes={a}-{b},0-1", st.integers(-5, 50), st.integers(-5, 50)),
    NASTY.map(lambda s: s.replace("\r", "").replace("\n", "")),
)


@FUZZ
@given(header=RANGES)
def test_blob_ranges(open_api: Fuzzed, header: str) -> None:
    status, body = open_api.request(
        "GET", f"/v2/acme/app/blobs/{open_api.config_digest}", headers={"Range": header}
    )
    open_api.check("ranges", status, body)


CONTENT_RANGES = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", NUMBERS, NUMBERS),
    st.builds(lambda a, b: f"bytes {a}-{b}/*", st.integers(-2, 20), st.integers(-2, 20)),
    NASTY.map(lambda s: s.replace("\r", "").replace("\n", "")),
)


@FUZZ
@given(content_range=CONTENT_RANGES, chunk=st.binary(max_size=64),
       finish=st.one_of(st.none(), DIGESTS))
def test_upload_chunks(
    open_api: Fuzzed, content_range: str, chunk: bytes, finish: str | None
) -> None:
    with socket.create_connection(("127.0.0.1", open_api.server.port), timeout=30) as sock:
        sock.sendall(b"POST /v2/acme/fuzz/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        data = b""
        while part := sock.recv(65536):
            data += part
    location = next(
        line.split(b": ", 1)[1].decode()
        for line in data.split(b"\r\n") if line.lower().startswith(b"location:")
    )
    status, body = open_api.request(
        "PATCH", location, chunk,
        {"Content-Range": content_range, "Content-Type": "application/octet-stream"},
    )
    open_api.check("content-range", status, body, "PATCH")
    if finish is not None:
        status, body = open_api.request("PUT", location + "?" + urlencode({"digest": finish}))
        open_api.check("content-range", status, body, "PUT")


def _descriptor(digest: str, size: object, media_type: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size}


MANIFESTS = st.one_of(
    JSON.map(lambda doc: json.dumps(doc).encode()),
    st.builds(
        lambda schema, media, cfg, layers, extra: json.dumps({
            "schemaVersion": schema, "mediaType": media, "config": cfg, "layers": layers, **extra,
        }).encode(),
        st.one_of(st.just(2), st.integers(-3, 5), st.text(max_size=3)),
        st.sampled_from(MEDIA_TYPES),
        st.one_of(JSON, st.builds(_descriptor, DIGESTS, st.integers(-1, 2**70), NASTY)),
        st.lists(st.builds(_descriptor, DIGESTS, st.integers(-1, 100), NASTY), max_size=3),
        st.dictionaries(st.sampled_from(["subject", "annotations", "artifactType", "manifests"]),
                        JSON, max_size=2),
    ),
    st.sampled_from([b"NaN", b'{"a": NaN}', b'{"a":1,"a":2}', b"[" * 3000, b"\xff\xfe", b""]),
    st.binary(max_size=200),
)


@FUZZ
@given(payload=MANIFESTS, media_type=st.sampled_from(MEDIA_TYPES),
       reference=st.one_of(st.just("fuzz"), DIGESTS, NASTY))
def test_manifests(open_api: Fuzzed, payload: bytes, media_type: str, reference: str) -> None:
    status, body = open_api.request(
        "PUT", target(f"/v2/acme/fuzz/manifests/{reference}"), payload,
        {"Content-Type": media_type} if media_type else {},
    )
    open_api.check("manifests", status, body, "PUT")


# --- token requests ----------------------------------------------------------------------------

SCOPES = st.one_of(
    st.builds(lambda t, n, a: f"{t}:{n}:{a}",
              st.sampled_from(["repository", "registry", "x", ""]), NAMES,
              st.sampled_from(["pull", "push", "pull,push", "*", "delete", "", "pull,,"])),
    NASTY,
)


@FUZZ
@given(scope=st.lists(SCOPES, max_size=3), service=st.one_of(st.just("dockyard"), NASTY),
       user=NASTY, password=NASTY, raw_auth=st.one_of(st.none(), NASTY),
       offline=st.sampled_from(["true", "false", "", "TRUE"]))
def test_token_get(
    secured: Fuzzed, scope: list[str], service: str, user: str, password: str,
    raw_auth: str | None, offline: str,
) -> None:
    query = [("service", service), ("offline_token", offline), ("account", user)]
    query += [("scope", s) for s in scope]
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    header = raw_auth.replace("\r", "").replace("\n", "") if raw_auth else f"Basic {credentials}"
    status, body = secured.request(
        "GET", "/auth/token?" + urlencode(query), headers={"Authorization": header}
    )
    secured.check("token", status, body)


@FUZZ
@given(fields=st.lists(st.tuples(
    st.sampled_from(["grant_type", "username", "password", "scope", "service", "refresh_token",
                     "access_type", "client_id", "x"]),
    st.one_of(st.sampled_from(["password", "refresh_token", "offline"]), NASTY)), max_size=8),
    raw=st.one_of(st.none(), st.binary(max_size=300)),
    content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json", ""]))
def test_token_post(
    secured: Fuzzed, fields: list[tuple[str, str]], raw: bytes | None, content_type: str
) -> None:
    body = raw if raw is not None else urlencode(fields).encode()
    status, answer = secured.request(
        "POST", "/auth/token", body, {"Content-Type": content_type} if content_type else {}
    )
    secured.check("token", status, answer, "POST")


@FUZZ
@given(name=NAMES, method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
       bearer=st.one_of(NASTY, st.just("a.b.c"), st.just("")))
@example(name="acme/app", method="GET", bearer="²")  # was a 500: non-ASCII bearer token
def test_challenges(secured: Fuzzed, name: str, method: str, bearer: str) -> None:
    bearer = bearer.replace("\r", "").replace("\n", "")
    status, body = secured.request(
        method, target(f"/v2/{name}/blobs/uploads/"), headers={"Authorization": f"Bearer {bearer}"}
    )
    secured.check("challenges", status, body, method)
