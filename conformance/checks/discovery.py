"""Content discovery: tag listing with n/last/Link, and the catalog."""

from __future__ import annotations

import re
from typing import Any

from conformance import expect, fixtures
from conformance.client import Response
from conformance.context import Context
from conformance.outcomes import NotSupported
from conformance.suite import check

TAGS = "Content Discovery › Listing Tags (end-8a)"
TAGS_N = "Content Discovery › Listing Tags (n, last, Link; end-8b)"
CATALOG = "Docker Registry HTTP API V2 (apdx-1) › Listing Repositories (/v2/_catalog)"
MAX_PAGES = 200
# Mixed case and digits, so ASCIIbetical and case-insensitive order differ.
TAG_SUFFIXES = ("b", "A", "c", "10", "9", "a2")

_LINK_NEXT = re.compile(r'<([^>]*)>\s*;(?:[^,]*;)?\s*rel\s*=\s*"?next"?', re.IGNORECASE)


def next_link(resp: Response) -> str | None:
    """Target of a `Link: <…>; rel="next"` header (RFC 5988), or None."""
    for value in resp.header_all("Link"):
        m = _LINK_NEXT.search(value)
        if m:
            return m.group(1)
    return None


def _sorted_either_way(items: list[str]) -> bool:
    """Lexical (case-insensitive) or ASCIIbetical order — the spec allows both."""
    return items == sorted(items) or items == sorted(items, key=lambda s: (s.lower(), s))


def _tagged(ctx: Context) -> list[str]:
    """Tag one manifest with several tags of this run (once per run)."""
    if "tags" not in ctx._memo:
        manifest, _ = ctx.image()
        tags = [f"c{ctx.run}-list-{s}" for s in TAG_SUFFIXES]
        for tag in tags:
            ctx.push_manifest(manifest, tag)
        ctx._memo["tags"] = tags
    return ctx._memo["tags"]


def _tags_doc(ctx: Context, params: list[tuple[str, str]] | None = None,
              url: str | None = None) -> tuple[Response, list[str]]:
    resp = ctx.client.get(url or ctx.path(ctx.repo, "tags", "list"), params=params)
    expect.status(resp, 200)
    doc = expect.json_body(resp)
    if not isinstance(doc, dict) or not isinstance(doc.get("tags"), list):
        raise expect.fail('body is not {"name": …, "tags": [...]}', resp)
    expect.equal(doc.get("name"), ctx.repo, "name", resp)
    return resp, doc["tags"]


def _full_list(ctx: Context) -> list[str]:
    """The whole list: without n the spec returns all tags, but follow a Link if one comes."""
    resp, tags = _tags_doc(ctx)
    link = next_link(resp)
    for _ in range(MAX_PAGES):
        if link is None:
            break
        resp, page = _tags_doc(ctx, url=link)
        tags = tags + page
        link = next_link(resp)
    return tags


def _page_ok(resp: Response, page: list[str], full: list[str], start: int, n: int) -> None:
    """A page of at most n tags that continues the full list at `start` (end-8b)."""
    expect.true(len(page) <= n, f"asked for n={n}, got {len(page)} tags", resp)
    remaining = len(full) - start
    if len(page) < min(n, remaining) and next_link(resp) is None:
        raise expect.fail(f"got {len(page)} of n={n} tags with {remaining} remaining and no "
                          "Link header (fewer than n only at the end or with a Link)", resp)
    expect.equal(page, full[start : start + len(page)], "page content", resp)


@check("discovery", TAGS)
def check_tags_list(ctx: Context) -> str | None:
    """GET tags/list: 200, {"name","tags"}, every pushed tag once, in lexical/ASCII order"""
    tags = _tagged(ctx)
    resp, listed = _tags_doc(ctx)
    missing = set(tags) - set(listed)
    expect.true(not missing, f"pushed tags missing from the list: {sorted(missing)}", resp)
    expect.true(len(listed) == len(set(listed)), "the list has duplicates", resp)
    expect.true(_sorted_either_way(listed), "tags are not in lexical or ASCIIbetical order",
                resp)
    return None


@check("discovery", TAGS_N)
def check_tags_list_n(ctx: Context) -> str | None:
    """GET tags/list?n=2: the first 2 tags of the full list (fewer only with a Link header)"""
    _tagged(ctx)
    full = _full_list(ctx)
    resp, page = _tags_doc(ctx, [("n", "2")])
    _page_ok(resp, page, full, 0, 2)
    return None


@check("discovery", TAGS_N)
def check_tags_list_last(ctx: Context) -> str | None:
    """GET tags/list?n=2&last=<tag> and ?last=<tag>: the tags after <tag>, exclusive"""
    tags = _tagged(ctx)
    full = _full_list(ctx)
    pivot = tags[0]
    start = full.index(pivot) + 1
    resp, page = _tags_doc(ctx, [("n", "2"), ("last", pivot)])
    _page_ok(resp, page, full, start, 2)
    resp, page = _tags_doc(ctx, [("last", pivot)])
    expect.true(pivot not in page, "last=<tag> included <tag> itself", resp)
    _page_ok(resp, page, full, start, len(full))
    return None


@check("discovery", TAGS_N + " (Link rel=\"next\", RFC 5988)")
def check_tags_list_link(ctx: Context) -> str | None:
    """Following Link rel="next" from tags/list?n=2 walks the whole list exactly once"""
    _tagged(ctx)
    full = _full_list(ctx)
    resp, page = _tags_doc(ctx, [("n", "2")])
    _page_ok(resp, page, full, 0, 2)
    walked = list(page)
    link = next_link(resp)
    if link is None:
        if len(full) <= 2:
            raise expect.fail("repository has too few tags to exercise pagination", resp)
        raise NotSupported("no Link header on a partial tag list (Link is MAY)")
    for _ in range(MAX_PAGES):
        resp, page = _tags_doc(ctx, url=link)
        _page_ok(resp, page, full, len(walked), 2)
        walked += page
        link = next_link(resp)
        if link is None:
            break
    expect.equal(walked, full, "tags walked through Link pages", resp)
    return None


@check("discovery", TAGS_N + " (n=0)")
def check_tags_list_n_zero(ctx: Context) -> str | None:
    """GET tags/list?n=0: 200 with an empty list and no Link header"""
    _tagged(ctx)
    resp, page = _tags_doc(ctx, [("n", "0")])
    expect.equal(page, [], "tags for n=0", resp)
    expect.true(not resp.header_all("Link"), "n=0 answer has a Link header", resp)
    return None


@check("discovery", TAGS + "; Error Codes (code-9)")
def check_tags_list_unknown_repository(ctx: Context) -> str | None:
    """GET tags/list of a repository that does not exist: 404 NAME_UNKNOWN"""
    resp = ctx.client.get(ctx.path(f"{ctx.repo}-missing-{ctx.run}", "tags", "list"))
    expect.error(resp, [404], ["NAME_UNKNOWN"])
    return None


# -- catalog -----------------------------------------------------------------------------------


def _catalog(ctx: Context, params: list[tuple[str, str]] | None = None,
             url: str | None = None) -> tuple[Response, list[str]]:
    resp = ctx.client.get(url or "/v2/_catalog", params=params)
    # The catalog is not in the OCI spec: absent (404/405), refused as unsupported, or closed to
    # these credentials (401/403) all mean "not offered", not a conformance failure.
    if resp.status in (401, 403, 404, 405) or (resp.status == 400 and "UNSUPPORTED" in
                                               (expect.error_codes(resp) or [])):
        raise NotSupported(f"no catalog for this client ({resp.status}); it is not in the OCI "
                           "spec")
    expect.status(resp, 200)
    doc: Any = expect.json_body(resp)
    if not isinstance(doc, dict) or not isinstance(doc.get("repositories"), list):
        raise expect.fail('body is not {"repositories": [...]}', resp)
    return resp, doc["repositories"]


def _walk_catalog(ctx: Context, n: int | None) -> tuple[list[str], int]:
    """All repositories by following Link pages; returns them and the number of pages."""
    resp, names = _catalog(ctx, [("n", str(n))] if n else None)
    if n:
        expect.true(len(names) <= n, f"asked for n={n}, got {len(names)}", resp)
    pages = 1
    link = next_link(resp)
    while link and pages < MAX_PAGES:
        resp, page = _catalog(ctx, url=link)
        if n:
            expect.true(len(page) <= n, f"asked for n={n}, got {len(page)}", resp)
        names += page
        pages += 1
        link = next_link(resp)
    return names, pages


@check("discovery", CATALOG)
def check_catalog(ctx: Context) -> str | None:
    """GET /v2/_catalog: 200, {"repositories": [...]} sorted, including the pushed repository"""
    ctx.image()
    names, _ = _walk_catalog(ctx, None)
    expect.true(ctx.repo in names, f"{ctx.repo} is not in the catalog")
    expect.true(len(names) == len(set(names)), "the catalog has duplicates")
    expect.true(names == sorted(names), "the catalog is not in lexical order")
    return None


@check("discovery", CATALOG + " (n, last, Link)")
def check_catalog_pagination(ctx: Context) -> str | None:
    """GET /v2/_catalog?n=1 pages with Link rel="next" through every repository exactly once"""
    ctx.image()
    ctx.push_manifest(fixtures.image(0), ctx.tag("catalog"), ctx.repo2)  # two repositories
    full, _ = _walk_catalog(ctx, None)
    walked, _ = _walk_catalog(ctx, 1)
    expect.equal(walked, full, "repositories walked through n=1 pages")
    resp, page = _catalog(ctx, [("n", "1"), ("last", full[0])])
    expect.equal(page, full[1:2], "page after last=<first repository>", resp)
    return None
