"""Repository names, tags and digests: the grammars of the OCI Distribution spec.

spec: oci-distribution-spec.md "Pulling manifests" (name and tag grammars) and
oci-image-descriptor.md "Digests" (algorithm and encoded-part rules).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import DigestInvalid, ManifestInvalid, NameInvalid

NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{NAME_COMPONENT}(?:/{NAME_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
MAX_NAME_LENGTH = 255

# Registered algorithms and the exact hex length of their encoded part.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_digest(value: str) -> Digest:
    """Parse a digest string; unknown algorithms and malformed encodings are DIGEST_INVALID."""
    m = DIGEST_RE.match(value or "")
    if not m:
        raise DigestInvalid(f"invalid digest {value[:200]!r}")
    algorithm, encoded = m.group(1), m.group(2)
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise DigestInvalid(f"unsupported digest algorithm {algorithm[:32]!r}", status=400)
    if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise DigestInvalid(f"invalid {algorithm} digest {value[:200]!r}")
    return Digest(algorithm, encoded)


def is_digest(reference: str) -> bool:
    return ":" in reference


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise NameInvalid(f"invalid repository name {name[:300]!r}", detail={"name": name[:300]})
    return name


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise ManifestInvalid(f"invalid tag {tag[:200]!r}")
    return tag


def customer_of(name: str, default_customer: str) -> str:
    """The customer owning a repository: its first component, or the default for one-part names."""
    head, sep, _ = name.partition("/")
    return head if sep else default_customer
