"""Pull: manifests and blobs by tag and digest, HEAD, ranges, missing objects."""

from __future__ import annotations

from conformance import expect, fixtures
from conformance.context import Context
from conformance.outcomes import NotSupported
from conformance.suite import check

PULL_MANIFESTS = "Pull › Pulling manifests (end-3)"
PULL_BLOBS = "Pull › Pulling blobs (end-2)"
EXISTS = "Pull › Checking if content exists in the registry (end-2, end-3)"


@check("pull", "API › Determining Support (end-1)")
def check_api_version(ctx: Context) -> str | None:
    """GET /v2/ answers 200"""
    resp = ctx.client.get("/v2/")
    expect.status(resp, 200)
    return None


def _pulled_manifest(ctx: Context, ref: str) -> None:
    manifest, _ = ctx.image()
    resp = ctx.get_manifest(ref)
    expect.status(resp, 200)
    expect.equal(resp.body, manifest.body, "manifest bytes", resp)
    expect.equal(expect.content_type(resp), manifest.media_type, "Content-Type", resp)
    expect.content_digest(resp, manifest.body)


@check("pull", PULL_MANIFESTS)
def check_manifest_by_tag(ctx: Context) -> str | None:
    """GET a manifest by tag: 200, exact bytes, Content-Type, Docker-Content-Digest"""
    _, tag = ctx.image()
    _pulled_manifest(ctx, tag)
    return None


@check("pull", PULL_MANIFESTS)
def check_manifest_by_digest(ctx: Context) -> str | None:
    """GET a manifest by digest: 200, exact bytes, Content-Type, Docker-Content-Digest"""
    manifest, _ = ctx.image()
    _pulled_manifest(ctx, manifest.digest)
    return None


@check("pull", PULL_MANIFESTS + "; content negotiation")
def check_manifest_accept_negotiation(ctx: Context) -> str | None:
    """Each Accept list naming the stored type (in any order, with q-values) gets it unchanged"""
    manifest, tag = ctx.image()
    accepts = [
        fixtures.OCI_MANIFEST,
        f"{fixtures.DOCKER_MANIFEST}, {fixtures.OCI_INDEX}, {fixtures.OCI_MANIFEST}",
        f"{fixtures.DOCKER_MANIFEST};q=1.0, {fixtures.OCI_MANIFEST};q=0.5",
    ]
    for accept in accepts:
        resp = ctx.get_manifest(tag, accept=accept)
        expect.status(resp, 200, what=f"Accept: {accept}")
        expect.equal(resp.body, manifest.body, f"bytes for Accept: {accept}", resp)
        expect.equal(expect.content_type(resp), fixtures.OCI_MANIFEST,
                     f"Content-Type for Accept: {accept}", resp)
    return None


def _head_manifest(ctx: Context, ref: str) -> None:
    manifest, _ = ctx.image()
    resp = ctx.get_manifest(ref, method="HEAD")
    expect.status(resp, 200)
    expect.content_digest(resp, manifest.body)
    expect.header(resp, "Content-Length", equals=str(manifest.size))


@check("pull", EXISTS)
def check_manifest_head_by_tag(ctx: Context) -> str | None:
    """HEAD a manifest by tag: 200, Content-Length, Docker-Content-Digest"""
    _, tag = ctx.image()
    _head_manifest(ctx, tag)
    return None


@check("pull", EXISTS)
def check_manifest_head_by_digest(ctx: Context) -> str | None:
    """HEAD a manifest by digest: 200, Content-Length, Docker-Content-Digest"""
    manifest, _ = ctx.image()
    _head_manifest(ctx, manifest.digest)
    return None


@check("pull", PULL_BLOBS)
def check_blob_get(ctx: Context) -> str | None:
    """GET a blob: 200, the exact bytes, Docker-Content-Digest matching them"""
    manifest, _ = ctx.image()
    for blob in manifest.blobs:
        resp = ctx.client.get(ctx.blob_url(blob.digest))
        expect.status(resp, 200)
        expect.true(resp.body == blob.data, f"body of {blob.digest} differs from what was pushed",
                    resp)
        expect.content_digest(resp, blob.data)
    return None


@check("pull", EXISTS)
def check_blob_head(ctx: Context) -> str | None:
    """HEAD a blob: 200, Content-Length, Docker-Content-Digest"""
    manifest, _ = ctx.image()
    blob = manifest.blobs[-1]
    resp = ctx.client.head(ctx.blob_url(blob.digest))
    expect.status(resp, 200)
    expect.header(resp, "Content-Length", equals=str(blob.size))
    expect.content_digest(resp, blob.data)
    return None


def _range(ctx: Context, spec: str, start: int, end: int) -> None:
    manifest, _ = ctx.image()
    blob = manifest.blobs[-1]
    resp = ctx.client.get(ctx.blob_url(blob.digest), headers={"Range": f"bytes={spec}"})
    if resp.status == 200 and resp.body == blob.data:
        # RFC 9110 §14.2 lets a server ignore Range; the spec only says SHOULD support it.
        raise NotSupported("registry ignores Range (answers 200 with the whole blob)")
    expect.status(resp, 206, what=f"Range: bytes={spec}")
    expect.header(resp, "Content-Range", equals=f"bytes {start}-{end}/{blob.size}")
    expect.equal(resp.body, blob.data[start : end + 1], f"bytes {spec}", resp)


@check("pull", PULL_BLOBS + "; RFC 9110 §14")
def check_blob_range(ctx: Context) -> str | None:
    """GET a blob with Range: bytes=10-99: 206, Content-Range, exactly those bytes"""
    _range(ctx, "10-99", 10, 99)
    return None


@check("pull", PULL_BLOBS + "; RFC 9110 §14")
def check_blob_range_open_and_suffix(ctx: Context) -> str | None:
    """GET a blob with Range: bytes=N- and bytes=-N: 206 with the tail of the blob"""
    manifest, _ = ctx.image()
    size = manifest.blobs[-1].size
    _range(ctx, f"{size - 100}-", size - 100, size - 1)
    _range(ctx, "-50", size - 50, size - 1)
    return None


@check("pull", PULL_BLOBS + "; RFC 9110 §15.5.17")
def check_blob_range_unsatisfiable(ctx: Context) -> str | None:
    """GET a blob with a Range past its end: 416 (Content-Range: bytes */size if given)"""
    manifest, _ = ctx.image()
    blob = manifest.blobs[-1]
    resp = ctx.client.get(ctx.blob_url(blob.digest),
                          headers={"Range": f"bytes={blob.size + 10}-{blob.size + 20}"})
    if resp.status == 200 and resp.body == blob.data:
        raise NotSupported("registry ignores Range (answers 200 with the whole blob)")
    expect.status(resp, 416)
    if resp.header("Content-Range") is not None:
        expect.header(resp, "Content-Range", equals=f"bytes */{blob.size}")
    return None


@check("pull", PULL_MANIFESTS + "; Error Codes (code-7)")
def check_manifest_unknown_tag(ctx: Context) -> str | None:
    """GET a tag that does not exist in an existing repository: 404 MANIFEST_UNKNOWN"""
    ctx.image()
    resp = ctx.get_manifest(ctx.tag("missing"))
    expect.error(resp, [404], ["MANIFEST_UNKNOWN"])
    return None


@check("pull", PULL_MANIFESTS + "; Error Codes (code-7)")
def check_manifest_unknown_digest(ctx: Context) -> str | None:
    """GET and HEAD a manifest digest that does not exist: 404 (MANIFEST_UNKNOWN)"""
    ctx.image()
    missing = fixtures.random_digest()
    expect.error(ctx.get_manifest(missing), [404], ["MANIFEST_UNKNOWN"])
    expect.status(ctx.get_manifest(missing, method="HEAD"), 404, what="HEAD")
    return None


@check("pull", "Push › Pushing Manifests (nonexistent repository); Error Codes")
def check_repository_unknown(ctx: Context) -> str | None:
    """GET a manifest from a repository that does not exist: 404 (NAME_UNKNOWN/MANIFEST_UNKNOWN)"""
    repo = f"{ctx.repo}-missing-{ctx.run}"
    resp = ctx.get_manifest("latest", repo=repo)
    expect.error(resp, [404], ["NAME_UNKNOWN", "MANIFEST_UNKNOWN"])
    return None


@check("pull", PULL_BLOBS + "; Error Codes (code-1)")
def check_blob_unknown(ctx: Context) -> str | None:
    """GET and HEAD a blob that does not exist: 404 (BLOB_UNKNOWN)"""
    ctx.image()
    missing = fixtures.random_digest()
    expect.error(ctx.client.get(ctx.blob_url(missing)), [404], ["BLOB_UNKNOWN"])
    expect.status(ctx.client.head(ctx.blob_url(missing)), 404, what="HEAD")
    return None


@check("pull", PULL_MANIFESTS + " (<tag-or-digest> format); API endpoints table")
def check_manifest_malformed_reference(ctx: Context) -> str | None:
    """GET a manifest by a malformed digest: a client error (400/404), never a server error"""
    ctx.image()
    for ref in ("sha256:not-a-hex-digest", "sha256:" + "0" * 10):
        resp = ctx.get_manifest(ref)
        expect.status(resp, 400, 404, what=ref)
        expect.optional_error(resp, ["DIGEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_INVALID",
                                     "NAME_UNKNOWN", "TAG_INVALID"])
    return None


@check("pull", PULL_BLOBS + "; API endpoints table")
def check_blob_malformed_digest(ctx: Context) -> str | None:
    """GET a blob by a malformed digest: a client error (400/404), never a server error"""
    ctx.image()
    for ref in ("sha256:not-a-hex-digest", "sha256:" + "0" * 10):
        resp = ctx.client.get(ctx.blob_url(ref))
        expect.status(resp, 400, 404, what=ref)
        expect.optional_error(resp, ["DIGEST_INVALID", "BLOB_UNKNOWN", "NAME_UNKNOWN"])
    return None
