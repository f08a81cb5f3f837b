"""A minimal blocking Distribution API client for seeding and for the upload benchmarks.

http.client on one keep-alive connection: bodies are sent from bytes or streamed from
iterables, never assembled in memory here.
"""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Iterable, Iterator
from urllib.parse import urljoin, urlsplit

from .images import MANIFEST_TYPE, Blob


class RegistryError(RuntimeError):
    pass


class Client:
    def __init__(self, base_url: str, timeout: float = 300.0) -> None:
        self.base = base_url.rstrip("/")
        parts = urlsplit(self.base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> http.client.HTTPResponse:
        url = urlsplit(urljoin(self.base + "/", path))
        target = url.path + (f"?{url.query}" if url.query else "")
        headers = dict(headers or {})
        if body is None and method in ("POST", "PUT", "PATCH"):
            headers.setdefault("Content-Length", "0")
        try:
            self.conn.request(method, target, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            raise
        if resp.status not in expect:
            raise RegistryError(f"{method} {target} -> {resp.status}: {data[:500]!r}")
        return resp

    def start_upload(self, repo: str) -> str:
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        return resp.headers["Location"]

    def push_blob(self, repo: str, b: Blob) -> None:
        location = self.start_upload(repo)
        sep = "&" if "?" in location else "?"
        self.request(
            "PUT", f"{location}{sep}digest={b.digest}", body=b.data,
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(b.size)},
            expect=(201,),
        )

    def mount_blob(self, repo: str, digest: str, source: str) -> bool:
        resp = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}", expect=(201, 202)
        )
        return resp.status == 201

    def put_manifest(self, repo: str, ref: str, m: Blob, media_type: str = MANIFEST_TYPE) -> None:
        self.request(
            "PUT", f"/v2/{repo}/manifests/{ref}", body=m.data,
            headers={"Content-Type": media_type, "Content-Length": str(m.size)}, expect=(201,),
        )

    def chunked_upload(self, repo: str, chunks: list[bytes], digest: str) -> None:
        """POST, one PATCH per chunk with Content-Range, then an empty closing PUT."""
        location = self.start_upload(repo)
        offset = 0
        for chunk in chunks:
            resp = self.request(
                "PATCH", location, body=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(chunk)),
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                },
                expect=(202,),
            )
            offset += len(chunk)
            location = resp.headers["Location"]
        sep = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{sep}digest={digest}", expect=(201,))

    def streamed_upload(self, repo: str, blocks: Iterable[bytes], size: int) -> str:
        """What `docker push` does: one streamed PATCH, then PUT ?digest=. Returns the digest."""
        location = self.start_upload(repo)
        hasher = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for block in blocks:
                hasher.update(block)
                yield block

        resp = self.request(
            "PATCH", location, body=hashed(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            expect=(202,),
        )
        digest = "sha256:" + hasher.hexdigest()
        location = resp.headers["Location"]
        sep = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{sep}digest={digest}", expect=(201,))
        return digest
