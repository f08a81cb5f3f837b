"""The OCI grammars every part checks: repository names, tags, digests, media types, and the
customer that owns a repository.

spec: oci-distribution-spec.md "Pulling manifests" (name and tag grammars),
oci-image-descriptor.md "Digests" (algorithm and encoded-part rules), docker-auth-scope.md
(resource names), and the media types of oci-image-manifest.md / docker-manifest-v2-2.md.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import DigestInvalid, ManifestInvalid, NameInvalid

NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
COMPONENT_RE = re.compile(NAME_COMPONENT)
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
HEX_RE = re.compile(r"[a-f0-9]+")
MAX_NAME_LENGTH = 255
MAX_CUSTOMER_LENGTH = 64

# Registered algorithms and the exact hex length of their encoded part.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES | {OCI_ARTIFACT}


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_digest(value: str) -> Digest:
    """Parse a digest string; unknown algorithms and malformed encodings are DIGEST_INVALID."""
    m = DIGEST_RE.fullmatch(value or "")
    if not m:
        raise DigestInvalid(f"invalid digest {value[:200]!r}")
    algorithm, encoded = m.group(1), m.group(2)
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise DigestInvalid(f"unsupported digest algorithm {algorithm[:32]!r}")
    if len(encoded) != length or not HEX_RE.fullmatch(encoded):
        raise DigestInvalid(f"invalid {algorithm} digest {value[:200]!r}")
    return Digest(algorithm, encoded)


def is_digest_valid(value: str) -> bool:
    try:
        parse_digest(value)
    except DigestInvalid:
        return False
    return True


def is_digest(reference: str) -> bool:
    """A manifest reference is a digest when it holds a colon (tags cannot)."""
    return ":" in reference


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


def is_repository_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def check_name(name: str) -> str:
    if not is_repository_name(name):
        raise NameInvalid(f"invalid repository name {name[:300]!r}", detail={"name": name[:300]})
    return name


def is_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None


def check_tag(tag: str) -> str:
    if not is_tag(tag):
        raise ManifestInvalid(f"invalid tag {tag[:200]!r}")
    return tag


def is_customer_name(name: str) -> bool:
    """A customer is one repository-name component (the first of its repositories' names)."""
    return len(name) <= MAX_CUSTOMER_LENGTH and COMPONENT_RE.fullmatch(name) is not None


def check_customer(name: str) -> str:
    if not is_customer_name(name):
        raise NameInvalid(
            f"invalid customer name {name[:100]!r}: lowercase letters and digits, separated by "
            ". _ - (at most 64)"
        )
    return name


def customer_of(name: str, default_customer: str) -> str:
    """The customer owning a repository: its first component, or the default for one-part names."""
    head, sep, _ = name.partition("/")
    return head if sep else default_customer


def name_within_customer(repository: str, customer: str) -> str:
    """`acme/web` -> `web` for customer acme; a default-customer name is returned as is."""
    prefix = customer + "/"
    return repository[len(prefix) :] if repository.startswith(prefix) else repository
