"""Referrers: the subject field on push, OCI-Subject, and the referrers API (distribution 1.1).

A registry claiming the Content Discovery category MUST implement all of its APIs (Requirements),
so a referrers API that answers 404 is a failure here, not a skip.
"""

from __future__ import annotations

from typing import Any

from conformance import expect, fixtures
from conformance.client import Response
from conformance.context import Context
from conformance.fixtures import Manifest
from conformance.outcomes import NotSupported
from conformance.suite import check

LISTING = "Content Discovery › Listing Referrers (end-12a)"
FILTER = "Content Discovery › Listing Referrers (artifactType filter, end-12b)"
SUBJECT = "Push › Pushing Manifests with Subject"
PUSH = "Push (subject of a manifest that does not exist)"

SBOM = "application/vnd.conformance.sbom.v1"
SIGNATURE = "application/vnd.conformance.signature.v1"
BUNDLE = "application/vnd.conformance.bundle.v1"
CUSTOM_CONFIG = "application/vnd.conformance.config.v1+json"


def _referrers(ctx: Context, digest: str, params: list[tuple[str, str]] | None = None
               ) -> tuple[Response, list[dict[str, Any]]]:
    """GET the referrers list: 200, index Content-Type, an image index body."""
    resp = ctx.client.get(ctx.path(ctx.repo, "referrers", digest), params=params)
    expect.status(resp, 200, what="referrers API")
    expect.equal(expect.content_type(resp), fixtures.OCI_INDEX, "Content-Type", resp)
    doc = expect.json_body(resp)
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise expect.fail("referrers body is not an image index with a manifests array", resp)
    expect.equal(doc.get("schemaVersion"), 2, "schemaVersion", resp)
    expect.equal(doc.get("mediaType"), fixtures.OCI_INDEX, "mediaType", resp)
    return resp, doc["manifests"]


def _by_digest(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e.get("digest", ""): e for e in entries if isinstance(e, dict)}


def _expect_descriptor(resp: Response, entries: list[dict[str, Any]], manifest: Manifest,
                       artifact_type: str | None) -> None:
    """The entry for `manifest`: mediaType, size, artifactType (or none), its annotations."""
    entry = _by_digest(entries).get(manifest.digest)
    if entry is None:
        raise expect.fail(f"{manifest.digest[:19]}… is not in the referrers list", resp)
    expect.equal(entry.get("mediaType"), manifest.media_type, "descriptor mediaType", resp)
    expect.equal(entry.get("size"), manifest.size, "descriptor size", resp)
    if artifact_type is None:
        expect.true("artifactType" not in entry,
                    f"descriptor has artifactType {entry.get('artifactType')!r}; an index "
                    "without artifactType must have none", resp)
    else:
        expect.equal(entry.get("artifactType"), artifact_type, "descriptor artifactType", resp)
    want = manifest.doc().get("annotations") or {}
    got = entry.get("annotations") or {}
    expect.equal({k: got.get(k) for k in want}, want, "descriptor annotations", resp)


class _Graph:
    """A subject image and five referrers of different kinds, pushed once per run."""

    def __init__(self, ctx: Context) -> None:
        self.subject = fixtures.image(1)
        ctx.push_manifest(self.subject, ctx.tag("subject"))
        self.sbom = fixtures.artifact(SBOM, subject=self.subject,
                                      annotations={"org.example.kind": "sbom",
                                                   "org.opencontainers.image.created":
                                                       "2024-01-01T00:00:00Z"})
        self.signature = fixtures.artifact(SIGNATURE, subject=self.subject,
                                           annotations={"org.example.kind": "signature"})
        # No artifactType: the descriptor's artifactType comes from config.mediaType.
        cfg = fixtures.Blob(b'{"conformance": true}', CUSTOM_CONFIG)
        payload = fixtures.Blob(fixtures.random_blob(300).data, "application/vnd.conformance.x")
        self.configured = fixtures.image_of(cfg, [payload], subject=self.subject,
                                            annotations={"org.example.kind": "configured"})
        self.plain_index = fixtures.index([fixtures.image(1)], subject=self.subject,
                                          annotations={"org.example.kind": "index"})
        self.typed_index = fixtures.index([fixtures.image(1)], subject=self.subject,
                                          artifact_type=BUNDLE)
        self.all = [self.sbom, self.signature, self.configured, self.plain_index,
                    self.typed_index]
        for m in self.all:
            ctx.push_manifest(m)


def _graph(ctx: Context) -> _Graph:
    if "graph" not in ctx._memo:
        ctx._memo["graph"] = _Graph(ctx)
    return ctx._memo["graph"]


@check("referrers", SUBJECT)
def check_oci_subject_header(ctx: Context) -> str | None:
    """Pushing an image manifest with subject answers 201 with OCI-Subject: <subject digest>"""
    subject = fixtures.image(1)
    ctx.push_manifest(subject)
    referrer = fixtures.artifact(SBOM, subject=subject)
    ctx.push_references(referrer)
    resp = ctx.put_manifest(referrer)
    expect.status(resp, 201)
    expect.header(resp, "OCI-Subject", equals=subject.digest)
    return None


@check("referrers", LISTING)
def check_referrers_list(ctx: Context) -> str | None:
    """GET referrers/<digest>: 200 image index listing exactly the manifests with that subject,
    with artifactType and annotations"""
    g = _graph(ctx)
    resp, entries = _referrers(ctx, g.subject.digest)
    expect.equal(sorted(_by_digest(entries)), sorted(m.digest for m in g.all),
                 "referrer digests", resp)
    _expect_descriptor(resp, entries, g.sbom, SBOM)
    _expect_descriptor(resp, entries, g.signature, SIGNATURE)
    return None


@check("referrers", LISTING + " (artifactType from config.mediaType)")
def check_referrers_artifact_type_from_config(ctx: Context) -> str | None:
    """A referrer image manifest without artifactType is listed with config.mediaType"""
    g = _graph(ctx)
    resp, entries = _referrers(ctx, g.subject.digest)
    _expect_descriptor(resp, entries, g.configured, CUSTOM_CONFIG)
    return None


@check("referrers", LISTING + " (index referrers)")
def check_referrers_index(ctx: Context) -> str | None:
    """Index referrers are listed; artifactType omitted when the index has none"""
    g = _graph(ctx)
    resp, entries = _referrers(ctx, g.subject.digest)
    _expect_descriptor(resp, entries, g.plain_index, None)
    _expect_descriptor(resp, entries, g.typed_index, BUNDLE)
    return None


@check("referrers", FILTER)
def check_referrers_filter(ctx: Context) -> str | None:
    """GET referrers/<digest>?artifactType=…: only matching entries, OCI-Filters-Applied"""
    g = _graph(ctx)
    resp, entries = _referrers(ctx, g.subject.digest, [("artifactType", SBOM)])
    applied = [f.strip() for v in resp.header_all("OCI-Filters-Applied") for f in v.split(",")]
    digests = sorted(_by_digest(entries))
    if "artifactType" not in applied:
        if digests == sorted(m.digest for m in g.all):
            raise NotSupported("artifactType filter not applied (filtering is SHOULD)")
        raise expect.fail("list was filtered but OCI-Filters-Applied: artifactType is missing",
                          resp)
    expect.equal(digests, [g.sbom.digest], "filtered referrers", resp)
    _expect_descriptor(resp, entries, g.sbom, SBOM)
    return None


@check("referrers", LISTING + " (no matching referrers → empty list)")
def check_referrers_unknown_digest(ctx: Context) -> str | None:
    """GET referrers of a digest nothing refers to: 200 with an empty image index"""
    ctx.image()
    resp, entries = _referrers(ctx, fixtures.random_digest())
    expect.equal(entries, [], "manifests", resp)
    return None


@check("referrers", LISTING + " (invalid digest → 400)")
def check_referrers_malformed_digest(ctx: Context) -> str | None:
    """GET referrers/<malformed digest>: 400"""
    ctx.image()
    resp = ctx.client.get(ctx.path(ctx.repo, "referrers", "sha256:not-a-digest"))
    expect.status(resp, 400)
    expect.optional_error(resp, ["DIGEST_INVALID", "MANIFEST_INVALID", "BLOB_UNKNOWN",
                                 "UNSUPPORTED"])
    return None


def _dangling(ctx: Context) -> tuple[Manifest, Manifest]:
    """A referrer pushed before its subject exists (once per run)."""
    if "dangling" not in ctx._memo:
        subject = fixtures.image(1)  # never pushed
        referrer = fixtures.artifact(SIGNATURE, subject=subject,
                                     annotations={"org.example.kind": "early"})
        ctx.push_references(referrer)
        resp = ctx.put_manifest(referrer)
        ctx._memo["dangling"] = (subject, referrer, resp)
    subject, referrer, resp = ctx._memo["dangling"]
    expect.status(resp, 201, what="push of a manifest whose subject does not exist")
    return subject, referrer


@check("referrers", PUSH)
def check_subject_missing_accepted(ctx: Context) -> str | None:
    """A manifest whose subject does not exist (yet) is accepted: 201"""
    _dangling(ctx)
    return None


@check("referrers", LISTING + "; Upgrade Procedures (newly pushed manifests MUST be listed)")
def check_subject_missing_listed(ctx: Context) -> str | None:
    """A referrer pushed before its subject is listed by the referrers API"""
    subject, referrer = _dangling(ctx)
    resp, entries = _referrers(ctx, subject.digest)
    _expect_descriptor(resp, entries, referrer, SIGNATURE)
    return None


@check("referrers", LISTING + "; Content Management › Deleting Manifests")
def check_deleted_referrer_unlisted(ctx: Context) -> str | None:
    """A deleted referrer disappears from its subject's referrers list"""
    subject = fixtures.image(1)
    ctx.push_manifest(subject)
    keep = fixtures.artifact(SBOM, subject=subject)
    gone = fixtures.artifact(SIGNATURE, subject=subject)
    ctx.push_manifest(keep)
    ctx.push_manifest(gone)
    resp, entries = _referrers(ctx, subject.digest)
    expect.equal(sorted(_by_digest(entries)), sorted([keep.digest, gone.digest]),
                 "referrers before delete", resp)
    resp = ctx.client.delete(ctx.manifest_url(gone.digest))
    if resp.status in (400, 405):
        raise NotSupported(f"manifest deletion disabled ({resp.status})")
    expect.status(resp, 202, what="DELETE of the referrer")
    resp, entries = _referrers(ctx, subject.digest)
    expect.equal(sorted(_by_digest(entries)), [keep.digest], "referrers after delete", resp)
    return None
