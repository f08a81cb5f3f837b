"""Resource scopes (`repository:acme/web:pull,push`) and the `access` entries of a token.

Grammar: docker-auth-scope.md "Resource Scope Grammar". The resource name may itself hold one
`:` (a hostname port), so a scope is split at its first and its last colon, never naively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_SCOPES = 64  # per request; a client needs a handful (a mount needs two)
MAX_SCOPE_LENGTH = 512
MAX_NAME_LENGTH = 255

_TYPE = re.compile(r"([a-z0-9]+)(?:\(([a-z0-9]+)\))?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOSTCOMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOSTNAME = rf"{_HOSTCOMPONENT}(?:\.{_HOSTCOMPONENT})*(?::[0-9]+)?"
_NAME = re.compile(rf"(?:{_HOSTNAME}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_REPOSITORY_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_ACTION = re.compile(r"[a-z]*|\*")


class ScopeError(ValueError):
    """A scope string that does not follow the grammar."""


@dataclass(frozen=True)
class Resource:
    """One resource scope, or one entry of a token's `access` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def to_claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def is_repository_name(name: str) -> bool:
    """True when `name` is a repository name per the distribution grammar (no hostname)."""
    return len(name) <= MAX_NAME_LENGTH and _REPOSITORY_NAME.fullmatch(name) is not None


def parse_scope(text: str) -> Resource:
    """Parse one resource scope. The resource class (`repository(plugin)`) is dropped: it is
    deprecated and equal to its type when authorizing (docker-auth-scope.md, Resource Class)."""
    if len(text) > MAX_SCOPE_LENGTH:
        raise ScopeError("scope too long")
    first, last = text.find(":"), text.rfind(":")
    if first <= 0 or last == first:
        raise ScopeError(f"malformed scope {text[:80]!r}")
    rtype, name, actions_text = text[:first], text[first + 1 : last], text[last + 1 :]
    type_match = _TYPE.fullmatch(rtype)
    if type_match is None:
        raise ScopeError(f"malformed resource type in scope {text[:80]!r}")
    if len(name) > MAX_NAME_LENGTH or _NAME.fullmatch(name) is None:
        raise ScopeError(f"malformed resource name in scope {text[:80]!r}")
    actions: list[str] = []
    for action in actions_text.split(","):
        if _ACTION.fullmatch(action) is None:
            raise ScopeError(f"malformed action in scope {text[:80]!r}")
        if action and action not in actions:
            actions.append(action)
    return Resource(type_match.group(1), name, tuple(actions))


def parse_scopes(values: Iterable[str]) -> list[Resource]:
    """Parse scope parameters (each may hold several space-separated scopes, as the OAuth2 POST
    form does) and merge the actions of repeated resources."""
    merged: dict[tuple[str, str], list[str]] = {}
    count = 0
    for value in values:
        for text in value.split(" "):
            if not text:
                continue
            count += 1
            if count > MAX_SCOPES:
                raise ScopeError("too many scopes")
            resource = parse_scope(text)
            actions = merged.setdefault((resource.type, resource.name), [])
            actions.extend(a for a in resource.actions if a not in actions)
    return [Resource(t, n, tuple(a)) for (t, n), a in merged.items()]


def parse_access_claim(value: Any) -> tuple[Resource, ...]:
    """Validate a token's `access` claim. Anything that is not a list of well-formed entries
    makes the whole token invalid: a signed-but-odd claim is not guessed at."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_SCOPES:
        raise ScopeError("access claim must be a list")
    entries = []
    for item in value:
        if not isinstance(item, dict):
            raise ScopeError("access entry must be an object")
        rtype, name, actions = item.get("type"), item.get("name"), item.get("actions")
        if not isinstance(rtype, str) or not isinstance(name, str):
            raise ScopeError("access entry needs type and name strings")
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ScopeError("access entry actions must be a list of strings")
        type_match = _TYPE.fullmatch(rtype)
        if type_match is None:
            raise ScopeError("malformed access entry type")
        entries.append(Resource(type_match.group(1), name, tuple(actions)))
    return tuple(entries)


def format_scopes(resources: Iterable[Resource]) -> str:
    """Space-separated scope list, as in a challenge's `scope` or an OAuth2 `scope` field."""
    return " ".join(str(r) for r in resources)
