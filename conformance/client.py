"""A small synchronous HTTP client for registries: exact requests, Bearer/Basic auth, redirects.

The conformance checks need to see exactly what the registry answered (status, every header,
body bytes), so this wraps `http.client` directly instead of a client library that would
retry, decode or rewrite on its own. One connection per request keeps a registry that closes
a connection after an error (413, 416, …) from poisoning the next request.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

USER_AGENT = "dockyard-conformance/0.1"
REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
# Streamed (chunked transfer-encoding) bodies are sent in pieces of this size.
STREAM_PIECE = 64 * 1024

Params = Sequence[tuple[str, str]] | Mapping[str, str] | None


class TransportError(Exception):
    """The registry could not be reached or broke the connection."""


@dataclass
class Response:
    method: str
    url: str  # the URL that produced this response (after redirects)
    status: int
    reason: str
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def header_all(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        path = urllib.parse.urlsplit(self.url)
        target = path.path + (f"?{path.query}" if path.query else "")
        return f"{self.method} {shorten(target)} → {self.status}"


def shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Challenge:
    scheme: str  # lower-case: "bearer" or "basic"
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse `WWW-Authenticate` values (RFC 9110 §11.6.1) into scheme + auth-params."""
    out: list[Challenge] = []
    for value in values:
        rest = value.strip()
        while rest:
            m = re.match(r"([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)\s*", rest)
            if not m:
                break
            scheme = m.group(1).lower()
            rest = rest[m.end() :]
            params: dict[str, str] = {}
            while True:
                pm = _PARAM.match(rest)
                # A bare token followed by a space starts the next challenge, not a param.
                if not pm or (pm.group(3) is None and pm.group(2) is None):
                    break
                raw = pm.group(2) if pm.group(2) is not None else pm.group(3)
                params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw)
                rest = rest[pm.end() :]
            out.append(Challenge(scheme, params))
            rest = rest.lstrip(", ")
    return out


@dataclass
class RegistryClient:
    """Talks to one registry. `base_url` is like http://host:port (any path prefix is kept)."""

    base_url: str
    username: str | None = None
    password: str | None = None
    insecure: bool = False
    timeout: float = 60.0
    # Every response seen (after auth and redirects), for checks that audit the whole run.
    observed: list[Response] = field(default_factory=list)
    _bearer: dict[str, str] = field(default_factory=dict)  # repository (or "") → token
    _basic: bool = False  # the registry asked for Basic auth

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._ssl = ssl.create_default_context()
        if self.insecure:
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE

    # -- public ------------------------------------------------------------------------------

    def url(self, path_or_url: str, params: Params = None) -> str:
        """Absolute URL for a path (`/v2/…`) or a Location value (absolute or relative)."""
        url = urllib.parse.urljoin(self.base_url + "/", path_or_url)
        if params:
            items = list(params.items()) if isinstance(params, Mapping) else list(params)
            query = urllib.parse.urlencode(items, safe=":/+")
            url += ("&" if urllib.parse.urlsplit(url).query else "?") + query
        return url

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        stream: bool = False,
        follow_redirects: bool = True,
    ) -> Response:
        """Send one request, answering an auth challenge (once) and following redirects.

        `stream=True` sends `body` with chunked transfer-encoding and no Content-Length, the
        way clients stream a blob of unknown length.
        """
        url = self.url(path_or_url, params)
        hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
        repo = _repository_of(url)
        resp = self._send(method, url, hdrs, body, stream, repo, follow_redirects)
        if resp.status == 401:
            if self._answer_challenge(resp, repo):
                resp = self._send(method, url, hdrs, body, stream, repo, follow_redirects)
        self.observed.append(resp)
        return resp

    def get(self, path_or_url: str, **kw: Any) -> Response:
        return self.request("GET", path_or_url, **kw)

    def head(self, path_or_url: str, **kw: Any) -> Response:
        return self.request("HEAD", path_or_url, **kw)

    def put(self, path_or_url: str, **kw: Any) -> Response:
        return self.request("PUT", path_or_url, **kw)

    def post(self, path_or_url: str, **kw: Any) -> Response:
        return self.request("POST", path_or_url, **kw)

    def patch(self, path_or_url: str, **kw: Any) -> Response:
        return self.request("PATCH", path_or_url, **kw)

    def delete(self, path_or_url: str, **kw: Any) -> Response:
        return self.request("DELETE", path_or_url, **kw)

    # -- auth --------------------------------------------------------------------------------

    def _auth_header(self, url: str, repo: str) -> str | None:
        if not self._same_origin(url):
            return None  # never forward credentials to another host (spec: API, redirects)
        if repo in self._bearer:
            return f"Bearer {self._bearer[repo]}"
        if self._basic and self.username is not None:
            return _basic(self.username, self.password or "")
        return None

    def _answer_challenge(self, resp: Response, repo: str) -> bool:
        """Obtain credentials for a 401's challenge; True when a retry makes sense."""
        for ch in parse_challenges(resp.header_all("WWW-Authenticate")):
            if ch.scheme == "bearer" and "realm" in ch.params:
                token = self._fetch_token(ch.params)
                if token:
                    self._bearer[repo] = token
                    return True
            elif ch.scheme == "basic" and self.username is not None and not self._basic:
                self._basic = True
                return True
        return False

    def _fetch_token(self, params: dict[str, str]) -> str | None:
        """Docker token spec: GET realm?service=…&scope=…, Basic credentials if we have them."""
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        for scope in params.get("scope", "").split():
            query.append(("scope", scope))
        realm = params["realm"]
        if query:
            realm += ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        hdrs = {"User-Agent": USER_AGENT}
        if self.username is not None:
            hdrs["Authorization"] = _basic(self.username, self.password or "")
        resp = self._raw(urllib.parse.urlsplit(realm), "GET", hdrs, None, False, realm)
        if resp.status != 200:
            return None
        try:
            doc = resp.json()
        except ValueError:
            return None
        token = doc.get("token") or doc.get("access_token")
        return token if isinstance(token, str) and token else None

    # -- transport ---------------------------------------------------------------------------

    def _same_origin(self, url: str) -> bool:
        a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(self.base_url)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        stream: bool,
        repo: str,
        follow_redirects: bool,
    ) -> Response:
        for _ in range(MAX_REDIRECTS + 1):
            hdrs = dict(headers)
            auth = self._auth_header(url, repo)
            if auth:
                hdrs["Authorization"] = auth
            resp = self._raw(urllib.parse.urlsplit(url), method, hdrs, body, stream, url)
            location = resp.header("Location")
            if not (follow_redirects and method in ("GET", "HEAD") and resp.status in REDIRECTS):
                return resp
            if not location:
                return resp
            url = urllib.parse.urljoin(url, location)
        return resp

    def _raw(
        self,
        parts: urllib.parse.SplitResult,
        method: str,
        headers: dict[str, str],
        body: bytes | None,
        stream: bool,
        url: str,
    ) -> Response:
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.netloc, timeout=self.timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            if stream:
                pieces = [
                    (body or b"")[i : i + STREAM_PIECE]
                    for i in range(0, len(body or b""), STREAM_PIECE)
                ]
                conn.request(method, target, body=iter(pieces), headers=headers,
                             encode_chunked=True)
            else:
                conn.request(method, target, body=body, headers=headers)
            raw = conn.getresponse()
            try:
                data = raw.read()
            except http.client.IncompleteRead as exc:
                # A body shorter than its Content-Length (seen on some error answers) is an
                # HTTP framing fault, not an OCI one: keep what came and let checks judge it.
                data = exc.partial
            return Response(method, url, raw.status, raw.reason, raw.msg, data)
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{method} {shorten(url)}: {exc!r}") from exc
        finally:
            conn.close()


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


_ENDPOINT = re.compile(r"/v2/(.+?)/(?:manifests|blobs|tags|referrers)/")


def _repository_of(url: str) -> str:
    """The repository a /v2/ URL addresses ("" for /v2/ and /v2/_catalog): tokens are per scope."""
    m = _ENDPOINT.search(urllib.parse.urlsplit(url).path)
    return m.group(1) if m else ""
