"""Errors: failures carry the spec's JSON error body with a code from its table."""

from __future__ import annotations

from conformance import expect, fixtures
from conformance.context import Context
from conformance.fixtures import Manifest
from conformance.outcomes import CheckFailed
from conformance.suite import check

OCTET = {"Content-Type": "application/octet-stream"}
MANIFESTS = "Push › Pushing Manifests (end-7a)"


@check("errors", "API › Error Codes (code-3); Push › Cancel a blob upload (end-5, end-6, end-13)")
def check_upload_unknown(ctx: Context) -> str | None:
    """Status GET, PATCH and PUT of a cancelled upload session: 404 BLOB_UPLOAD_UNKNOWN"""
    # A real Location, cancelled: the spec lets Locations carry critical query parameters, so
    # a session URL assembled by hand would test the client, not the registry.
    location = ctx.start_upload()
    expect.status(ctx.client.delete(location), 204, what="DELETE of the session")
    expect.error(ctx.client.get(location), [404], ["BLOB_UPLOAD_UNKNOWN"], what="GET")
    expect.error(ctx.client.patch(location, body=b"abc",
                                  headers={**OCTET, "Content-Range": "0-2"}),
                 [404], ["BLOB_UPLOAD_UNKNOWN"], what="PATCH")
    expect.error(ctx.client.put(location, params=[("digest", fixtures.digest(b"abc"))],
                                body=b"abc", headers=OCTET),
                 [404], ["BLOB_UPLOAD_UNKNOWN"], what="PUT")
    return None


@check("errors", MANIFESTS + "; Error Codes (code-6)")
def check_manifest_not_json(ctx: Context) -> str | None:
    """PUT of a manifest body that is not JSON: 400 MANIFEST_INVALID"""
    bogus = Manifest(b"this is not json {", fixtures.OCI_MANIFEST)
    resp = ctx.put_manifest(bogus, ctx.tag("invalid"))
    expect.error(resp, [400], ["MANIFEST_INVALID"])
    return None


@check("errors", MANIFESTS + "; image-manifest.md (config is REQUIRED); Error Codes")
def check_manifest_missing_config(ctx: Context) -> str | None:
    """PUT of an image manifest without its REQUIRED config: 400 (MANIFEST_INVALID, or a code
    naming the missing descriptor)"""
    body = ('{"schemaVersion": 2, "mediaType": "' + fixtures.OCI_MANIFEST + '", "layers": []}')
    bogus = Manifest(body.encode(), fixtures.OCI_MANIFEST)
    resp = ctx.put_manifest(bogus, ctx.tag("invalid"))
    # The spec fixes no code per defect; these three each describe a missing config.
    expect.error(resp, [400], ["MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID"])
    expect.status(ctx.get_manifest(bogus.digest, method="HEAD"), 404, what="HEAD of the "
                  "rejected manifest")
    return None


@check("errors", "API › Error Codes (format and code table)", last=True)
def check_every_error_body(ctx: Context) -> str | None:
    """Every 4xx answer seen during the run has a body that is either not JSON or the spec's
    {"errors":[{"code":…}]} with a code from the table"""
    audited = 0
    problems: list[str] = []
    for resp in ctx.client.observed:
        if not 400 <= resp.status < 500 or resp.method == "HEAD" or not resp.body:
            continue
        audited += 1
        try:
            codes = expect.error_codes(resp)
            if codes is None and expect.content_type(resp).endswith("json"):
                raise expect.fail("Content-Type says JSON but the body does not parse", resp)
        except CheckFailed as exc:
            problems.append(str(exc))
    if problems:
        raise CheckFailed(f"{len(problems)} of {audited} error bodies break the format; first: "
                          + problems[0])
    return f"{audited} error bodies audited"
