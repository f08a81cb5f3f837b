"""Deploy policy: which pushed tags a service deploys, and in what order.

`order = "any"` (the default) deploys every push whose tag matches the service's globs, newest
push wins. `order = "semver"` deploys only a version newer than what runs or is on its way: a
push of `v0.9` while `v4` runs is recorded as a service event and ignored (unless forced), so a
late or mistaken push never downgrades production. Versions are Semantic Versioning 2.0.0
(a leading `v` allowed, missing minor/patch read as 0); a tag that is not a version is ignored
under this order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ORDERS = ("any", "semver")

_SEMVER = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)(?:\.(?P<minor>0|[1-9]\d*))?(?:\.(?P<patch>0|[1-9]\d*))?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


@dataclass(frozen=True, order=False)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...]

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        # semver.org §11: a pre-release sorts before its release; numeric identifiers sort
        # numerically and before alphanumeric ones.
        pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, pre)

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __le__(self, other: Version) -> bool:
        return self._key() <= other._key()


def parse_version(tag: str | None) -> Version | None:
    if not tag:
        return None
    m = _SEMVER.match(tag)
    if not m:
        return None
    return Version(int(m["major"]), int(m["minor"] or 0), int(m["patch"] or 0),
                   tuple(m["pre"].split(".")) if m["pre"] else ())


def refuse_reason(order: str, tag: str | None, running: list[str | None]) -> str | None:
    """Why a push of `tag` must not deploy under `order`, given the tags running or on their
    way; None when it may."""
    if order != "semver":
        return None
    version = parse_version(tag)
    if version is None:
        return f"tag {tag!r} is not a semantic version (the service deploys in semver order)"
    newest = max((v for v in map(parse_version, running) if v is not None), default=None,
                 key=lambda v: v._key())
    if newest is not None and version <= newest:
        current = next(t for t in running if parse_version(t) == newest)
        return f"{tag} is not newer than {current}, which runs or is being deployed"
    return None
