"""Push: blob uploads (monolithic, streamed, chunked, mounts) and manifests of every type."""

from __future__ import annotations

import os

from conformance import expect, fixtures
from conformance.client import Response
from conformance.context import Context
from conformance.fixtures import Blob, Manifest
from conformance.outcomes import NotSupported
from conformance.suite import check

POST_PUT = "Push › Pushing a blob monolithically › POST then PUT (end-4a, end-6)"
SINGLE_POST = "Push › Pushing a blob monolithically › Single POST (end-4b)"
CHUNKED = "Push › Pushing a blob in chunks (end-5, end-6)"
CANCEL = "Push › Cancel a blob upload (end-14)"
MOUNT = "Push › Mounting a blob from another repository (end-11)"
MANIFESTS = "Push › Pushing Manifests (end-7a)"
OCTET = {"Content-Type": "application/octet-stream"}
DEFAULT_CHUNK = 4096


def _blob_present(ctx: Context, blob: Blob, repo: str | None = None) -> None:
    """GET the blob back by digest: 200 and the same bytes (Pull › Pulling blobs)."""
    resp = ctx.client.get(ctx.blob_url(blob.digest, repo))
    expect.status(resp, 200, what="GET of the pushed blob")
    expect.true(resp.body == blob.data, "pulled blob differs from what was pushed", resp)


def _blob_absent(ctx: Context, digest: str, repo: str | None = None) -> None:
    resp = ctx.client.head(ctx.blob_url(digest, repo))
    expect.status(resp, 404, what=f"HEAD {digest[:19]}… must not exist")


def _created_blob(ctx: Context, resp: Response, blob: Blob, repo: str | None = None) -> None:
    """201 Created with a Location that is a pullable blob URL."""
    expect.status(resp, 201)
    location = expect.header(resp, "Location")
    pulled = ctx.client.get(location)
    expect.status(pulled, 200, what="GET of the blob Location")
    expect.true(pulled.body == blob.data, "blob at Location differs from what was pushed", pulled)
    _blob_present(ctx, blob, repo)


def _open(ctx: Context, params: list[tuple[str, str]] | None = None) -> tuple[str, int]:
    """POST with Content-Length: 0 → (Location, chunk size honouring OCI-Chunk-Min-Length)."""
    resp = ctx.client.post(ctx.uploads_url(), params=params, headers={"Content-Length": "0"})
    expect.status(resp, 202, what="POST to open an upload session")
    location = expect.header(resp, "Location")
    minimum = resp.header("OCI-Chunk-Min-Length")
    chunk = DEFAULT_CHUNK
    if minimum is not None and minimum.strip().isdigit():
        chunk = max(chunk, int(minimum))
    return location, chunk


def _patch(ctx: Context, location: str, data: bytes, start: int) -> Response:
    end = start + len(data) - 1
    return ctx.client.patch(location, body=data,
                            headers={**OCTET, "Content-Range": f"{start}-{end}"})


def _accepted_chunk(resp: Response, end: int) -> str:
    """A successful chunk: 202, Location, Range: 0-<end>. Returns the next Location."""
    expect.status(resp, 202, what="PATCH of a chunk")
    expect.header(resp, "Range", equals=f"0-{end}")
    return expect.header(resp, "Location")


# -- monolithic --------------------------------------------------------------------------------


@check("push", POST_PUT)
def check_blob_post_put(ctx: Context) -> str | None:
    """POST (202 + Location) then PUT ?digest= with the bytes: 201 + pullable Location"""
    blob = fixtures.random_blob(3000)
    resp = ctx.client.post(ctx.uploads_url())
    expect.status(resp, 202)
    location = expect.header(resp, "Location")
    resp = ctx.client.put(location, params=[("digest", blob.digest)], body=blob.data,
                          headers=OCTET)
    _created_blob(ctx, resp, blob)
    return None


@check("push", POST_PUT + " (Location MUST contain a unique session ID)")
def check_blob_upload_sessions_unique(ctx: Context) -> str | None:
    """Two POSTs to blobs/uploads/ open two sessions with different Locations"""
    first, second = ctx.start_upload(), ctx.start_upload()
    expect.true(first != second, f"both sessions got Location {first}")
    for location in (first, second):
        ctx.client.delete(location)
    return None


@check("push", POST_PUT + " (zero-length blob)")
def check_blob_empty(ctx: Context) -> str | None:
    """The zero-length blob (sha256:e3b0c442…) uploads with 201 and pulls back empty"""
    _roundtrip_blob(ctx, Blob(b""))
    return None


@check("push", POST_PUT + " (blob that already exists)")
def check_blob_reupload(ctx: Context) -> str | None:
    """Uploading a blob the repository already holds succeeds again with 201"""
    blob = fixtures.random_blob(900)
    _roundtrip_blob(ctx, blob)
    _roundtrip_blob(ctx, blob)
    return None


def _roundtrip_blob(ctx: Context, blob: Blob) -> None:
    location = ctx.start_upload()
    resp = ctx.client.put(location, params=[("digest", blob.digest)], body=blob.data,
                          headers=OCTET)
    _created_blob(ctx, resp, blob)


@check("push", SINGLE_POST)
def check_blob_single_post(ctx: Context) -> str | None:
    """POST ?digest= with the bytes: 201 + pullable Location (202 = not supported)"""
    blob = fixtures.random_blob(2000)
    resp = ctx.client.post(ctx.uploads_url(), params=[("digest", blob.digest)], body=blob.data,
                           headers=OCTET)
    if resp.status == 202:
        # "Registries that do not support single request monolithic uploads SHOULD return a
        # 202 Accepted status code and Location header": finish as POST-then-PUT, then skip.
        location = expect.header(resp, "Location")
        done = ctx.client.put(location, params=[("digest", blob.digest)], body=blob.data,
                              headers=OCTET)
        _created_blob(ctx, done, blob)
        raise NotSupported("single-POST upload answered 202 (falls back to POST then PUT)")
    _created_blob(ctx, resp, blob)
    return None


@check("push", "Push › Pushing a blob in chunks (digest-algorithm, end-4c); image descriptor "
       "§Digests (sha512)")
def check_blob_sha512(ctx: Context) -> str | None:
    """POST ?digest-algorithm=sha512 then PUT ?digest=sha512:…: 201, pullable by sha512 digest"""
    blob = fixtures.random_blob(2500, "sha512")
    resp = ctx.client.post(ctx.uploads_url(), params=[("digest-algorithm", "sha512")],
                           headers={"Content-Length": "0"})
    expect.status(resp, 202)
    location = expect.header(resp, "Location")
    resp = ctx.client.put(location, params=[("digest", blob.digest)], body=blob.data,
                          headers=OCTET)
    _created_blob(ctx, resp, blob)
    head = ctx.client.head(ctx.blob_url(blob.digest))
    expect.status(head, 200, what="HEAD by sha512 digest")
    expect.content_digest(head, blob.data)
    return None


# -- streamed and chunked ----------------------------------------------------------------------


@check("push", CHUNKED + "; streamed PATCH without Content-Range")
def check_blob_streamed_patch(ctx: Context) -> str | None:
    """PATCH with a chunked-encoded body and no Content-Range (202, Range), then empty PUT: 201"""
    blob = fixtures.random_blob(150_000)
    location, _ = _open(ctx)
    resp = ctx.client.patch(location, body=blob.data, stream=True, headers=OCTET)
    location = _accepted_chunk(resp, blob.size - 1)
    resp = ctx.client.put(location, params=[("digest", blob.digest)])
    _created_blob(ctx, resp, blob)
    return None


@check("push", CHUNKED)
def check_blob_chunked(ctx: Context) -> str | None:
    """Three PATCH chunks with Content-Range (each 202 + Range: 0-<end>), empty PUT: 201"""
    location, chunk = _open(ctx)
    blob = fixtures.random_blob(chunk * 2 + chunk // 2)
    start = 0
    while start < blob.size:
        piece = blob.data[start : start + chunk]
        location = _accepted_chunk(_patch(ctx, location, piece, start), start + len(piece) - 1)
        start += len(piece)
    resp = ctx.client.put(location, params=[("digest", blob.digest)])
    _created_blob(ctx, resp, blob)
    return None


@check("push", CHUNKED + " (final chunk in the closing PUT)")
def check_blob_chunked_final_in_put(ctx: Context) -> str | None:
    """Two PATCH chunks, then the last chunk in the closing PUT with Content-Range: 201"""
    location, chunk = _open(ctx)
    blob = fixtures.random_blob(chunk * 2 + 123)
    location = _accepted_chunk(_patch(ctx, location, blob.data[:chunk], 0), chunk - 1)
    location = _accepted_chunk(_patch(ctx, location, blob.data[chunk : 2 * chunk], chunk),
                               2 * chunk - 1)
    rest = blob.data[2 * chunk :]
    resp = ctx.client.put(location, params=[("digest", blob.digest)], body=rest, headers={
        **OCTET, "Content-Range": f"{2 * chunk}-{blob.size - 1}"})
    _created_blob(ctx, resp, blob)
    return None


@check("push", CHUNKED + " (chunks MUST be uploaded in order)")
def check_blob_chunk_out_of_order(ctx: Context) -> str | None:
    """A chunk that skips bytes after the first one: 416"""
    location, chunk = _open(ctx)
    data = os.urandom(chunk * 3)
    location = _accepted_chunk(_patch(ctx, location, data[:chunk], 0), chunk - 1)
    gap = chunk + 50
    resp = _patch(ctx, location, data[gap : gap + chunk], gap)
    expect.status(resp, 416)
    expect.optional_error(resp, ["BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"])
    return None


@check("push", CHUNKED + " (chunks MUST be uploaded in order)")
def check_blob_chunk_repeated(ctx: Context) -> str | None:
    """The same first chunk sent twice: the second answer is 416"""
    location, chunk = _open(ctx)
    data = os.urandom(chunk)
    location = _accepted_chunk(_patch(ctx, location, data, 0), chunk - 1)
    resp = _patch(ctx, location, data, 0)
    expect.status(resp, 416)
    expect.optional_error(resp, ["BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"])
    return None


@check("push", CHUNKED + " (final chunk out of order)")
def check_blob_final_chunk_out_of_order(ctx: Context) -> str | None:
    """A closing PUT whose Content-Range does not start at the session's offset: 416"""
    location, chunk = _open(ctx)
    data = os.urandom(chunk * 2)
    location = _accepted_chunk(_patch(ctx, location, data[:chunk], 0), chunk - 1)
    tail = data[chunk + 10 :]
    resp = ctx.client.put(location, params=[("digest", fixtures.digest(data))], body=tail,
                          headers={**OCTET, "Content-Range": f"{chunk + 10}-{len(data) - 1}"})
    expect.status(resp, 416)
    expect.optional_error(resp, ["BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"])
    return None


@check("push", CHUNKED + " (upload status, end-13)")
def check_blob_upload_status(ctx: Context) -> str | None:
    """GET of an upload session after a chunk: 204 with Location and Range: 0-<end>"""
    location, chunk = _open(ctx)
    data = os.urandom(chunk)
    location = _accepted_chunk(_patch(ctx, location, data, 0), chunk - 1)
    resp = ctx.client.get(location)
    expect.status(resp, 204)
    expect.header(resp, "Range", equals=f"0-{chunk - 1}")
    expect.header(resp, "Location")
    return None


@check("push", CHUNKED + " (status after a 416, end-13)")
def check_blob_resume_after_416(ctx: Context) -> str | None:
    """After an out-of-order chunk (416), GET status shows the real offset and the upload
    resumes from there to a 201"""
    location, chunk = _open(ctx)
    blob = fixtures.random_blob(chunk * 2)
    location = _accepted_chunk(_patch(ctx, location, blob.data[:chunk], 0), chunk - 1)
    bad = _patch(ctx, location, blob.data[chunk + 7 :], chunk + 7)
    expect.status(bad, 416, what="out-of-order chunk")
    status = ctx.client.get(location)
    expect.status(status, 204, what="upload status after 416")
    expect.header(status, "Range", equals=f"0-{chunk - 1}")
    location = expect.header(status, "Location")
    location = _accepted_chunk(_patch(ctx, location, blob.data[chunk:], chunk), blob.size - 1)
    resp = ctx.client.put(location, params=[("digest", blob.digest)])
    _created_blob(ctx, resp, blob)
    return None


@check("push", CANCEL)
def check_blob_upload_cancel(ctx: Context) -> str | None:
    """DELETE of an upload session: 204; the session is then gone (404 BLOB_UPLOAD_UNKNOWN)"""
    location, chunk = _open(ctx)
    location = _accepted_chunk(_patch(ctx, location, os.urandom(chunk), 0), chunk - 1)
    resp = ctx.client.delete(location, headers={"Content-Length": "0"})
    expect.status(resp, 204)
    resp = ctx.client.get(location)
    expect.error(resp, [404], ["BLOB_UPLOAD_UNKNOWN"], what="status of a cancelled session")
    return None


# -- mounts ------------------------------------------------------------------------------------


@check("push", MOUNT)
def check_blob_mount_from(ctx: Context) -> str | None:
    """POST ?mount=<digest>&from=<repo> into a second repository: 201, Location, blob present"""
    blob = fixtures.random_blob(1500)
    ctx.upload_blob(blob)
    resp = ctx.client.post(ctx.uploads_url(ctx.repo2),
                           params=[("mount", blob.digest), ("from", ctx.repo)])
    if resp.status == 202:
        ctx.client.delete(expect.header(resp, "Location"))
        raise NotSupported("cross-repository mount answered 202 (mounting not supported)")
    _created_blob(ctx, resp, blob, ctx.repo2)
    return None


@check("push", MOUNT + " (from is optional)")
def check_blob_mount_without_from(ctx: Context) -> str | None:
    """POST ?mount=<digest> without from: 201 and the blob present (202 = not supported)"""
    blob = fixtures.random_blob(1500)
    ctx.upload_blob(blob)
    resp = ctx.client.post(ctx.uploads_url(ctx.repo2), params=[("mount", blob.digest)])
    if resp.status == 202:
        ctx.client.delete(expect.header(resp, "Location"))
        raise NotSupported("mount without from answered 202 (registry needs from)")
    _created_blob(ctx, resp, blob, ctx.repo2)
    return None


@check("push", MOUNT + " (unable to mount → 202)")
def check_blob_mount_unknown(ctx: Context) -> str | None:
    """Mounting a digest that exists nowhere: 202 (an upload session), the blob stays absent"""
    missing = fixtures.random_digest()
    resp = ctx.client.post(ctx.uploads_url(ctx.repo2),
                           params=[("mount", missing), ("from", ctx.repo)])
    expect.status(resp, 202)
    location = expect.header(resp, "Location")
    _blob_absent(ctx, missing, ctx.repo2)
    ctx.client.delete(location)
    return None


# -- blob errors -------------------------------------------------------------------------------


@check("push", POST_PUT + "; Error Codes (code-4)")
def check_blob_digest_mismatch(ctx: Context) -> str | None:
    """PUT ?digest= of other content: 400 DIGEST_INVALID, nothing stored under either digest"""
    blob = fixtures.random_blob(1000)
    wrong = fixtures.random_digest()
    location = ctx.start_upload()
    resp = ctx.client.put(location, params=[("digest", wrong)], body=blob.data, headers=OCTET)
    expect.error(resp, [400], ["DIGEST_INVALID"])
    _blob_absent(ctx, wrong)
    _blob_absent(ctx, blob.digest)
    return None


@check("push", "Push › Pushing blobs (invalid digest → 400); Error Codes (code-4)")
def check_blob_malformed_digest(ctx: Context) -> str | None:
    """PUT ?digest= with a malformed digest: 400 DIGEST_INVALID"""
    blob = fixtures.random_blob(500)
    for bad in ("sha256:xyz", "sha256:" + "A" * 64, "nocolon"):
        location = ctx.start_upload()
        resp = ctx.client.put(location, params=[("digest", bad)], body=blob.data, headers=OCTET)
        expect.error(resp, [400], ["DIGEST_INVALID"], what=f"digest={bad}")
    return None


@check("push", "Push › Pushing blobs (unsupported algorithm → 400)")
def check_blob_unsupported_algorithm(ctx: Context) -> str | None:
    """PUT ?digest= with an unregistered algorithm: 400 (DIGEST_INVALID or UNSUPPORTED)"""
    blob = fixtures.random_blob(500)
    location = ctx.start_upload()
    resp = ctx.client.put(location, params=[("digest", "md5:" + "0" * 32)], body=blob.data,
                          headers=OCTET)
    expect.error(resp, [400], ["DIGEST_INVALID", "UNSUPPORTED"])
    return None


@check("push", "Pull › Pulling manifests (<name> grammar); Error Codes (code-8)")
def check_invalid_name(ctx: Context) -> str | None:
    """Upload and manifest push to names outside the grammar: refused (400 NAME_INVALID or
    404), never created"""
    namespace = ctx.repo.split("/")[0]
    for name in (f"{namespace}/Upper", f"{namespace}/trailing-", f"{namespace}/a__-b",
                 f"{namespace}/.dot"):
        resp = ctx.client.post(ctx.uploads_url(name))
        expect.status(resp, 400, 404, what=f"POST upload to {name}")
        expect.optional_error(resp, ["NAME_INVALID"] if resp.status == 400
                              else ["NAME_INVALID", "NAME_UNKNOWN"])
        manifest = fixtures.image(0)
        resp = ctx.put_manifest(manifest, "latest", repo=name)
        expect.status(resp, 400, 404, what=f"PUT manifest to {name}")
        expect.optional_error(resp, ["NAME_INVALID"] if resp.status == 400
                              else ["NAME_INVALID", "NAME_UNKNOWN"])
    return None


# -- manifests ---------------------------------------------------------------------------------


def _roundtrip(ctx: Context, manifest: Manifest, ref: str | None = None,
               unsupported_if_blob_unknown: str | None = None) -> str:
    """Push (references first), check 201 + Location + digest, pull back exact bytes."""
    ref = ref or ctx.tag(manifest.media_type.rsplit(".", 1)[-1].split("+")[0])
    ctx.push_references(manifest)
    resp = ctx.put_manifest(manifest, ref)
    if (unsupported_if_blob_unknown and resp.status in (400, 404)
            and "MANIFEST_BLOB_UNKNOWN" in (expect.error_codes(resp) or [])):
        # "A registry MAY reject a manifest … that reference[s] a … blob that does not exist".
        raise NotSupported(unsupported_if_blob_unknown)
    expect.status(resp, 201)
    location = expect.header(resp, "Location")
    if resp.header("Docker-Content-Digest") is not None:
        pinned = ref if ref == manifest.digest else None
        expect.content_digest(resp, manifest.body, equals=pinned)
    for target in (location, ctx.manifest_url(ref), ctx.manifest_url(manifest.digest)):
        got = ctx.client.get(target, headers={"Accept": fixtures.ACCEPT_ALL})
        expect.status(got, 200, what="GET of the pushed manifest")
        expect.true(got.body == manifest.body, "pulled manifest bytes differ from pushed", got)
        expect.equal(expect.content_type(got), manifest.media_type, "Content-Type", got)
        expect.content_digest(got, manifest.body)
    return ref


@check("push", MANIFESTS + "; image-manifest.md")
def check_manifest_oci_image(ctx: Context) -> str | None:
    """OCI image manifest by tag: 201, Location, digest; pulled back byte for byte"""
    _roundtrip(ctx, fixtures.image(2, annotations={"org.example.run": ctx.run}))
    return None


@check("push", MANIFESTS + "; image-index.md")
def check_manifest_oci_index(ctx: Context) -> str | None:
    """OCI image index of two image manifests: 201 and pulled back byte for byte"""
    _roundtrip(ctx, fixtures.index([fixtures.image(1), fixtures.image(1)]))
    return None


@check("push", MANIFESTS + "; image-index.md (nested index)")
def check_manifest_index_of_index(ctx: Context) -> str | None:
    """OCI index whose entries include another index: 201 and pulled back byte for byte"""
    inner = fixtures.index([fixtures.image(1)])
    _roundtrip(ctx, fixtures.index([inner, fixtures.image(1)]))
    return None


@check("push", MANIFESTS + "; docker-manifest-v2-2.md (Image Manifest)")
def check_manifest_docker_v2(ctx: Context) -> str | None:
    """Docker schema 2 image manifest: 201 and pulled back byte for byte"""
    _roundtrip(ctx, fixtures.image(2, docker=True))
    return None


@check("push", MANIFESTS + "; docker-manifest-v2-2.md (Manifest List)")
def check_manifest_docker_list(ctx: Context) -> str | None:
    """Docker manifest list of two schema 2 manifests: 201 and pulled back byte for byte"""
    _roundtrip(ctx, fixtures.index([fixtures.image(1, docker=True),
                                    fixtures.image(1, docker=True)], docker=True))
    return None


@check("push", MANIFESTS + "; image-manifest.md (Guidelines for Artifact Usage)")
def check_manifest_artifact(ctx: Context) -> str | None:
    """Artifact manifest (artifactType, empty config application/vnd.oci.empty.v1+json): 201"""
    _roundtrip(ctx, fixtures.artifact("application/vnd.conformance.artifact.v1"))
    _roundtrip(ctx, fixtures.artifact("application/vnd.conformance.bare.v1", with_layer=False))
    return None


@check("push", MANIFESTS + " (the list of blobs MAY be empty)")
def check_manifest_empty_layers(ctx: Context) -> str | None:
    """Image manifest with an empty layers array: 201 and pulled back byte for byte"""
    _roundtrip(ctx, fixtures.image(0))
    return None


@check("push", MANIFESTS + "; layer.md (Non-Distributable Layers); descriptor.md (urls)")
def check_manifest_non_distributable(ctx: Context) -> str | None:
    """Image manifest with a non-distributable layer (urls, blob never uploaded): 201"""
    foreign = Blob(os.urandom(800), fixtures.OCI_LAYER_NONDIST_GZIP,
                   urls=(f"https://example.com/layers/{ctx.run}.tar.gz",))
    real, diff_id = fixtures.layer()
    cfg = fixtures.config([diff_id, fixtures.digest(b"foreign")])
    manifest = fixtures.image_of(cfg, [real, foreign], upload=[cfg, real])
    _roundtrip(ctx, manifest, unsupported_if_blob_unknown="registry requires "
               "non-distributable layers to be uploaded")
    return None


@check("push", MANIFESTS + "; docker-manifest-v2-2.md (foreign layers with urls)")
def check_manifest_docker_foreign_layer(ctx: Context) -> str | None:
    """Docker schema 2 manifest with a foreign layer (urls, blob never uploaded): 201"""
    foreign = Blob(os.urandom(800), fixtures.DOCKER_FOREIGN_LAYER,
                   urls=(f"https://example.com/layers/{ctx.run}.tar.gz",))
    real, diff_id = fixtures.layer(media_type=fixtures.DOCKER_LAYER)
    cfg = fixtures.config([diff_id, fixtures.digest(b"foreign")], fixtures.DOCKER_CONFIG)
    manifest = fixtures.image_of(cfg, [real, foreign], docker=True, upload=[cfg, real])
    _roundtrip(ctx, manifest, unsupported_if_blob_unknown="registry requires foreign layers "
               "to be uploaded")
    return None


@check("push", MANIFESTS + " (by digest)")
def check_manifest_by_digest(ctx: Context) -> str | None:
    """PUT /manifests/<digest>: 201, Docker-Content-Digest equals it, pullable by digest"""
    manifest = fixtures.image(1)
    _roundtrip(ctx, manifest, manifest.digest)
    return None


@check("push", MANIFESTS + " (tags move)")
def check_manifest_tag_update(ctx: Context) -> str | None:
    """Pushing a second manifest to an existing tag moves the tag; the first stays by digest"""
    first, second = fixtures.image(1), fixtures.image(1)
    tag = ctx.tag("moving")
    ctx.push_manifest(first, tag)
    ctx.push_manifest(second, tag)
    resp = ctx.get_manifest(tag)
    expect.status(resp, 200)
    expect.true(resp.body == second.body, "the tag still serves the first manifest", resp)
    expect.status(ctx.get_manifest(first.digest), 200, what="first manifest by digest")
    return None


def _oci_tags(resp: Response) -> list[str]:
    """OCI-Tag values; each header may hold a comma-separated list (RFC 9110 §5.3)."""
    return [t.strip() for v in resp.header_all("OCI-Tag") for t in v.split(",") if t.strip()]


@check("push", "Push › Pushing Manifests (?tag= query parameters, end-7b)")
def check_manifest_tags_query(ctx: Context) -> str | None:
    """PUT /manifests/<digest>?tag=a&tag=b&…: 201, an OCI-Tag for each tag, each tag pullable"""
    manifest = fixtures.image(1)
    tags = [ctx.tag(f"q{i}") for i in range(4)]
    ctx.push_references(manifest)
    resp = ctx.put_manifest(manifest, manifest.digest, params=[("tag", t) for t in tags])
    expect.status(resp, 201)
    echoed = _oci_tags(resp)
    if not echoed:
        if all(ctx.get_manifest(t, method="HEAD").status == 404 for t in tags):
            raise NotSupported("registry ignores ?tag= (no OCI-Tag header, no tags created)")
        raise expect.fail("tags were created but no OCI-Tag header was returned", resp)
    expect.equal(sorted(echoed), sorted(tags), "OCI-Tag values", resp)
    for tag in tags:
        got = ctx.get_manifest(tag)
        expect.status(got, 200, what=f"GET tag {tag}")
        expect.true(got.body == manifest.body, f"tag {tag} serves other content", got)
    return None


@check("push", "Push › Pushing Manifests (413 Payload Too Large)")
def check_manifest_too_large(ctx: Context) -> str | None:
    """A manifest over 4 MiB: 413 (a registry with no size limit is reported as skipped)"""
    manifest = fixtures.oversized_image(4 * 1024 * 1024 + 4096)
    ctx.push_references(manifest)
    tag = ctx.tag("huge")
    resp = ctx.put_manifest(manifest, tag)
    if resp.status == 201:
        # "A registry SHOULD enforce some limit": one whose limit is higher is still conformant.
        raise NotSupported(f"registry accepted a {manifest.size}-byte manifest (no limit ≤ it)")
    expect.status(resp, 413)
    expect.optional_error(resp, ["MANIFEST_INVALID", "SIZE_INVALID"])
    expect.status(ctx.get_manifest(tag, method="HEAD"), 404, what="rejected manifest's tag")
    return None


@check("push", MANIFESTS + " (by sha512 digest); image descriptor §Digests")
def check_manifest_sha512(ctx: Context) -> str | None:
    """PUT /manifests/sha512:…: 201 with Docker-Content-Digest equal to it; GET by it"""
    manifest = fixtures.image(1).with_algorithm("sha512")
    ctx.push_references(manifest)
    resp = ctx.put_manifest(manifest, manifest.digest)
    expect.status(resp, 201)
    expect.content_digest(resp, manifest.body, equals=manifest.digest)
    got = ctx.get_manifest(manifest.digest)
    expect.status(got, 200, what="GET by sha512 digest")
    expect.true(got.body == manifest.body, "pulled manifest bytes differ", got)
    return None


@check("push", "Push (manifest referencing unknown blobs); Error Codes (code-5)")
def check_manifest_blob_unknown(ctx: Context) -> str | None:
    """Manifest whose layer was never uploaded: MANIFEST_BLOB_UNKNOWN if rejected"""
    manifest = fixtures.image(2)
    ctx.upload_blob(manifest.blobs[0])  # config only; the layers are missing
    resp = ctx.put_manifest(manifest, ctx.tag("noblob"))
    if resp.status == 201:
        raise NotSupported("registry accepts manifests referencing unknown blobs (MAY)")
    expect.error(resp, range(400, 500), ["MANIFEST_BLOB_UNKNOWN"])
    return None


@check("push", "Push (index referencing unknown manifests); Error Codes (code-5)")
def check_index_manifest_unknown(ctx: Context) -> str | None:
    """Index whose child manifest was never pushed: MANIFEST_BLOB_UNKNOWN if rejected"""
    manifest = fixtures.index([fixtures.image(1)])
    resp = ctx.put_manifest(manifest, ctx.tag("nochild"))
    if resp.status == 201:
        raise NotSupported("registry accepts indexes referencing unknown manifests (MAY)")
    expect.error(resp, range(400, 500), ["MANIFEST_BLOB_UNKNOWN"])
    return None


@check("push", MANIFESTS + " (Docker-Content-Digest MUST equal the client's digest)")
def check_manifest_digest_mismatch(ctx: Context) -> str | None:
    """PUT /manifests/<digest> with a body of another digest: 400 DIGEST_INVALID"""
    manifest = fixtures.image(1)
    ctx.push_references(manifest)
    wrong = fixtures.random_digest()
    resp = ctx.put_manifest(manifest, wrong)
    expect.error(resp, [400], ["DIGEST_INVALID"])
    expect.status(ctx.get_manifest(wrong, method="HEAD"), 404, what="HEAD of the wrong digest")
    return None


@check("push", "Pull › Pulling manifests (tag grammar, at most 128 characters)")
def check_manifest_invalid_tag(ctx: Context) -> str | None:
    """PUT to a tag outside [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}: refused with a 4xx"""
    manifest = fixtures.image(0)
    ctx.push_references(manifest)
    for tag in ("x" * 129, "-leading-dash", ".leading-dot"):
        resp = ctx.put_manifest(manifest, tag)
        expect.true(400 <= resp.status < 500, f"tag {tag[:20]}…: expected a 4xx, got "
                    f"{resp.status}", resp)
        expect.optional_error(resp, ["TAG_INVALID", "MANIFEST_INVALID", "NAME_INVALID",
                                     "MANIFEST_UNKNOWN"])
    return None

