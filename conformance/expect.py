"""Assertions on registry responses; each failure names what the spec wanted and what came."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from conformance.client import Response, shorten
from conformance.outcomes import CheckFailed

# Error Codes table (code-1 … code-14).
ERROR_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
})
# "Legacy Docker support error codes": a client MAY encounter these schema1-era codes.
LEGACY_ERROR_CODES = frozenset({"TAG_INVALID", "MANIFEST_UNVERIFIED"})


def fail(message: str, resp: Response | None = None) -> CheckFailed:
    if resp is not None:
        message = f"{message} [{resp.describe()}{_body_hint(resp)}]"
    return CheckFailed(message)


def _body_hint(resp: Response) -> str:
    if not resp.body or resp.method == "HEAD" or resp.status < 300:
        return ""
    text = resp.body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
    return f": {shorten(text, 120)}"


def status(resp: Response, *expected: int, what: str = "") -> Response:
    if resp.status not in expected:
        want = (f"{min(expected)}–{max(expected)}" if len(expected) > 4
                else " or ".join(str(s) for s in expected))
        raise fail(f"{what + ': ' if what else ''}expected {want}, got {resp.status}", resp)
    return resp


def header(resp: Response, name: str, *, equals: str | None = None,
           pattern: str | None = None) -> str:
    value = resp.header(name)
    if value is None:
        raise fail(f"missing {name} header", resp)
    if equals is not None and value.strip() != equals:
        raise fail(f"{name} is {value!r}, expected {equals!r}", resp)
    if pattern is not None and not re.fullmatch(pattern, value.strip()):
        raise fail(f"{name} is {value!r}, expected to match {pattern!r}", resp)
    return value.strip()


def content_digest(resp: Response, data: bytes, *, equals: str | None = None) -> str:
    """Docker-Content-Digest is present and is a digest of `data`.

    Its algorithm MAY differ from the one the client used (Pull › Pulling manifests: "it MAY be
    the case that the hashing algorithms used do not match"), so it is verified by hashing
    `data` with the header's own algorithm; `equals` pins it where the spec does (a manifest
    PUT by digest: "MUST be equal to the client provided digest").
    """
    value = header(resp, "Docker-Content-Digest")
    if equals is not None and value != equals:
        raise fail(f"Docker-Content-Digest is {value}, expected {equals}", resp)
    algorithm, _, encoded = value.partition(":")
    try:
        actual = hashlib.new(algorithm, data).hexdigest()
    except ValueError as exc:
        raise fail(f"Docker-Content-Digest {value} uses an unknown algorithm", resp) from exc
    if encoded != actual:
        raise fail(f"Docker-Content-Digest {value} does not match the content "
                   f"({algorithm}:{actual})", resp)
    return value


def content_type(resp: Response) -> str:
    """Content-Type without parameters (the client SHOULD ignore them)."""
    return (resp.header("Content-Type") or "").split(";")[0].strip()


def json_body(resp: Response) -> Any:
    try:
        return json.loads(resp.body)
    except ValueError as exc:
        raise fail(f"body is not JSON ({exc})", resp) from exc


def error_codes(resp: Response) -> list[str] | None:
    """Codes of a spec error body; None when the body is not JSON at all.

    Raises when the body is JSON but not the spec's `{"errors":[{"code":…}]}` shape, or a code
    is not one the spec defines (Error Codes: "The code field MUST be one of the following").
    """
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list) or not errors:
        raise fail('JSON error body lacks a non-empty "errors" array', resp)
    codes = []
    for err in errors:
        code = err.get("code") if isinstance(err, dict) else None
        if not isinstance(code, str) or not re.fullmatch(r"[A-Z_]+", code):
            raise fail(f"error entry {err!r} has no valid code", resp)
        if code not in ERROR_CODES and code not in LEGACY_ERROR_CODES:
            raise fail(f"error code {code} is not in the spec's table", resp)
        if "message" in err and not isinstance(err["message"], str):
            raise fail(f"error message {err['message']!r} is not a string", resp)
        codes.append(code)
    return codes


def error(resp: Response, statuses: Iterable[int], codes: Iterable[str], *,
          what: str = "") -> list[str]:
    """A failure response: one of `statuses`, a spec JSON error body, one of `codes` in it.

    The spec lets a 4XX body be in any format, but a registry that answers with JSON must use
    the error shape, and the code names the condition; these checks ask for the code the
    table defines for the condition they provoke.
    """
    status(resp, *statuses, what=what)
    if resp.method == "HEAD":
        return []
    found = error_codes(resp)
    want = set(codes)
    if found is None:
        raise fail(f"{what + ': ' if what else ''}expected a JSON error body with "
                   f"{' or '.join(sorted(want))}", resp)
    if want and not want.intersection(found):
        raise fail(f"{what + ': ' if what else ''}error codes {found}, expected "
                   f"{' or '.join(sorted(want))}", resp)
    return found


def optional_error(resp: Response, codes: Iterable[str]) -> None:
    """For failures where the spec fixes only the status: a JSON body, if any, must be valid
    and carry one of `codes`."""
    if resp.method == "HEAD":
        return
    found = error_codes(resp)
    if found is not None and codes and not set(codes).intersection(found):
        raise fail(f"error codes {found}, expected {' or '.join(sorted(codes))}", resp)


def equal(actual: Any, expected: Any, what: str, resp: Response | None = None) -> None:
    if actual != expected:
        raise fail(f"{what}: got {shorten(repr(actual), 200)}, expected "
                   f"{shorten(repr(expected), 200)}", resp)


def true(cond: bool, message: str, resp: Response | None = None) -> None:
    if not cond:
        raise fail(message, resp)
