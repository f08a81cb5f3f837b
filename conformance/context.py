"""What a check gets: the client, the repositories under test, and set-up operations.

Set-up operations (push a blob, push a manifest) use the plainest flow the spec defines and
raise CheckFailed with a "set-up:" prefix when the registry refuses, so a check never passes
on top of a broken precondition.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from conformance import expect, fixtures
from conformance.client import RegistryClient, Response
from conformance.fixtures import Blob, Manifest
from conformance.outcomes import CheckFailed


@dataclass
class Context:
    client: RegistryClient
    repo: str  # the repository checks push to
    repo2: str  # a second repository, for cross-repository mounts
    run: str = field(default_factory=fixtures.run_id)
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _memo: dict[str, Any] = field(default_factory=dict)

    # -- names -------------------------------------------------------------------------------

    def tag(self, label: str = "t") -> str:
        """A tag unique to this run; matches [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}."""
        return f"c{self.run}-{label}-{next(self._counter)}"

    @staticmethod
    def path(repo: str, kind: str, ref: str = "") -> str:
        return f"/v2/{repo}/{kind}/{ref}"

    def manifest_url(self, ref: str, repo: str | None = None) -> str:
        return self.path(repo or self.repo, "manifests", ref)

    def blob_url(self, digest: str, repo: str | None = None) -> str:
        return self.path(repo or self.repo, "blobs", digest)

    def uploads_url(self, repo: str | None = None) -> str:
        return self.path(repo or self.repo, "blobs", "uploads/")

    # -- set-up operations -------------------------------------------------------------------

    def start_upload(self, repo: str | None = None,
                     params: list[tuple[str, str]] | None = None) -> str:
        """POST …/blobs/uploads/ → the session's Location (end-4a)."""
        resp = self.client.post(self.uploads_url(repo), params=params,
                                headers={"Content-Length": "0"})
        setup(resp, 202, "open an upload session")
        location = resp.header("Location")
        if not location:
            raise expect.fail("set-up: upload session answer has no Location", resp)
        return location

    def upload_blob(self, blob: Blob, repo: str | None = None) -> Response:
        """Monolithic POST then PUT (end-4a, end-6)."""
        params = [("digest-algorithm", blob.algorithm)] if blob.algorithm != "sha256" else None
        location = self.start_upload(repo, params)
        resp = self.client.put(location, params=[("digest", blob.digest)], body=blob.data,
                               headers={"Content-Type": "application/octet-stream"})
        return setup(resp, 201, f"upload blob {blob.digest[:19]}…")

    def put_manifest(self, manifest: Manifest, ref: str | None = None, repo: str | None = None,
                     params: list[tuple[str, str]] | None = None,
                     content_type: str | None = None) -> Response:
        """PUT …/manifests/<ref> with no expectations (end-7)."""
        return self.client.put(
            self.manifest_url(ref or manifest.digest, repo),
            params=params,
            body=manifest.body,
            headers={"Content-Type": content_type or manifest.media_type},
        )

    def push_manifest(self, manifest: Manifest, ref: str | None = None,
                      repo: str | None = None) -> Response:
        """Push what the manifest references (blobs, child manifests), then the manifest."""
        self.push_references(manifest, repo)
        resp = self.put_manifest(manifest, ref, repo)
        return setup(resp, 201, f"push {manifest.media_type.rsplit('.', 1)[-1]} manifest")

    def push_references(self, manifest: Manifest, repo: str | None = None) -> None:
        for blob in manifest.blobs:
            self.upload_blob(blob, repo)
        for child in manifest.children:
            self.push_manifest(child, None, repo)

    def image(self) -> tuple[Manifest, str]:
        """One OCI image pushed by tag, shared by read-only checks (pull, discovery)."""
        if "image" not in self._memo:
            manifest = fixtures.image(2)
            tag = self.tag("image")
            self.push_manifest(manifest, tag)
            self._memo["image"] = (manifest, tag)
        return self._memo["image"]

    def get_manifest(self, ref: str, repo: str | None = None,
                     accept: str = fixtures.ACCEPT_ALL, method: str = "GET") -> Response:
        return self.client.request(method, self.manifest_url(ref, repo),
                                   headers={"Accept": accept})


def setup(resp: Response, status: int, what: str) -> Response:
    if resp.status != status:
        raise expect.fail(f"set-up: {what}: expected {status}, got {resp.status}", resp)
    return resp


__all__ = ["CheckFailed", "Context"]
