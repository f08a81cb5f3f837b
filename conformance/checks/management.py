"""Content management: deleting tags, manifests and blobs.

Registries MAY disable deletion; they signal it with 400 or 405, which is reported as skipped.
"""

from __future__ import annotations

from conformance import expect, fixtures
from conformance.client import Response
from conformance.context import Context
from conformance.outcomes import NotSupported
from conformance.suite import check

TAGS = "Content Management › Deleting tags (end-9)"
MANIFESTS = "Content Management › Deleting Manifests (end-9)"
BLOBS = "Content Management › Deleting Blobs (end-10)"


def _skip_if_disabled(resp: Response, what: str) -> None:
    """"If … deletion is disabled, the registry MUST respond with either a 400 Bad Request or
    a 405 Method Not Allowed": a skip."""
    if resp.status == 405:
        raise NotSupported(f"{what} deletion disabled (405)")
    if resp.status == 400:
        # The request is well formed (a real tag or digest), so a 400 can only be the signal;
        # a registry that deletes by digest only may phrase it as DIGEST_INVALID.
        raise NotSupported(f"{what} deletion disabled (400 {expect.error_codes(resp)})")


def _deleted(resp: Response, what: str) -> None:
    """202, or a skip when the registry says deletion is disabled."""
    _skip_if_disabled(resp, what)
    expect.status(resp, 202, what=f"DELETE of a {what}")


@check("management", TAGS)
def check_delete_tag(ctx: Context) -> str | None:
    """DELETE /manifests/<tag>: 202; the tag then answers 404, another tag stays"""
    manifest = fixtures.image(1)
    doomed, kept = ctx.tag("del"), ctx.tag("keep")
    ctx.push_manifest(manifest, doomed)
    ctx.push_manifest(manifest, kept)
    _deleted(ctx.client.delete(ctx.manifest_url(doomed)), "tag")
    expect.error(ctx.get_manifest(doomed), [404], ["MANIFEST_UNKNOWN"],
                 what="GET of the deleted tag")
    expect.status(ctx.get_manifest(kept, method="HEAD"), 200, what="HEAD of the other tag")
    return None


@check("management", MANIFESTS)
def check_delete_manifest(ctx: Context) -> str | None:
    """DELETE /manifests/<digest>: 202; the digest and every tag on it then answer 404"""
    manifest = fixtures.image(1)
    tags = [ctx.tag("gone"), ctx.tag("gone")]
    for tag in tags:
        ctx.push_manifest(manifest, tag)
    _deleted(ctx.client.delete(ctx.manifest_url(manifest.digest)), "manifest")
    expect.error(ctx.get_manifest(manifest.digest), [404], ["MANIFEST_UNKNOWN"],
                 what="GET of the deleted digest")
    expect.status(ctx.get_manifest(manifest.digest, method="HEAD"), 404,
                  what="HEAD of the deleted digest")
    for tag in tags:
        expect.error(ctx.get_manifest(tag), [404], ["MANIFEST_UNKNOWN"],
                     what=f"GET of tag {tag} of the deleted manifest")
    return None


@check("management", MANIFESTS + " (unknown manifest → 404)")
def check_delete_manifest_unknown(ctx: Context) -> str | None:
    """DELETE of a manifest digest that does not exist: 404 (MANIFEST_UNKNOWN)"""
    ctx.image()
    resp = ctx.client.delete(ctx.manifest_url(fixtures.random_digest()))
    _skip_if_disabled(resp, "manifest")
    expect.error(resp, [404], ["MANIFEST_UNKNOWN"])
    return None


@check("management", MANIFESTS + " (repository does not exist → 404)")
def check_delete_manifest_unknown_repository(ctx: Context) -> str | None:
    """DELETE of a manifest in a repository that does not exist: 404"""
    resp = ctx.client.delete(ctx.manifest_url(fixtures.random_digest(),
                                              f"{ctx.repo}-missing-{ctx.run}"))
    _skip_if_disabled(resp, "manifest")
    expect.error(resp, [404], ["NAME_UNKNOWN", "MANIFEST_UNKNOWN"])
    return None


@check("management", BLOBS)
def check_delete_blob(ctx: Context) -> str | None:
    """DELETE /blobs/<digest>: 202; GET and HEAD then answer 404 (BLOB_UNKNOWN)"""
    blob = fixtures.random_blob(700)
    ctx.upload_blob(blob)
    _deleted(ctx.client.delete(ctx.blob_url(blob.digest)), "blob")
    expect.error(ctx.client.get(ctx.blob_url(blob.digest)), [404], ["BLOB_UNKNOWN"],
                 what="GET of the deleted blob")
    expect.status(ctx.client.head(ctx.blob_url(blob.digest)), 404,
                  what="HEAD of the deleted blob")
    return None


@check("management", BLOBS + " (not found → 404)")
def check_delete_blob_unknown(ctx: Context) -> str | None:
    """DELETE of a blob that does not exist: 404 (BLOB_UNKNOWN)"""
    ctx.image()
    resp = ctx.client.delete(ctx.blob_url(fixtures.random_digest()))
    _skip_if_disabled(resp, "blob")
    expect.error(resp, [404], ["BLOB_UNKNOWN"])
    return None
