"""Attribute expressions for `memberOf` placement constraints.

A subset of the ECS cluster query language, enough for the usual constraints:

    attribute:zone == a
    attribute:zone in [a, b] and instanceType != small
    attribute:gpu exists or attribute:disk =~ ssd*

Terms are `SUBJECT OP VALUE`; `and` binds tighter than `or`; there are no parentheses. SUBJECT
is `attribute:NAME`, `instanceType` or `instanceId`. OP is `==`, `!=`, `in`, `not in`, `=~`
(glob), `exists`, `!exists`. An expression is compiled once, when the service is created, so a
typo is rejected at the API instead of silently never matching.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from launcher.errors import InvalidRequest

Subject = Mapping[str, str]  # attributes plus "instanceType" and "instanceId"

_TERM = re.compile(
    r"""\s*(?P<subject>attribute:[A-Za-z0-9_.\-/]+|instanceType|instanceId)\s*
        (?:
            (?P<exists>!?exists)
          | (?P<op>==|!=|=~|not\s+in|in)\s*
            (?:\[(?P<list1>[^\]]*)\]|\((?P<list2>[^)]*)\)|(?P<value>[^\s]+))
        )\s*$""",
    re.VERBOSE,
)
_OR = re.compile(r"\s+(?:or|\|\|)\s+")
_AND = re.compile(r"\s+(?:and|&&)\s+")


@dataclass(frozen=True)
class Expression:
    source: str
    _match: Callable[[Subject], bool]

    def matches(self, subject: Subject) -> bool:
        return self._match(subject)


def compile_expression(source: str) -> Expression:
    if not isinstance(source, str) or not source.strip():
        raise InvalidRequest("constraint expression must be a non-empty string")
    alternatives = []
    for alternative in _OR.split(source.strip()):
        alternatives.append([_compile_term(t) for t in _AND.split(alternative)])

    def match(subject: Subject) -> bool:
        return any(all(term(subject) for term in terms) for terms in alternatives)

    return Expression(source, match)


def _compile_term(text: str) -> Callable[[Subject], bool]:
    m = _TERM.match(text)
    if not m:
        raise InvalidRequest(f"cannot parse constraint term {text.strip()!r}")
    subject = m["subject"]
    key = subject.removeprefix("attribute:") if subject.startswith("attribute:") else subject
    if m["exists"]:
        wanted = m["exists"] == "exists"
        return lambda s: (key in s) == wanted
    op = " ".join(m["op"].split())
    raw_list = m["list1"] if m["list1"] is not None else m["list2"]
    if op in ("in", "not in"):
        if raw_list is None:
            raise InvalidRequest(f"{op!r} needs a list such as [a, b] in {text.strip()!r}")
        values = frozenset(v.strip() for v in raw_list.split(",") if v.strip())
        if op == "in":
            return lambda s: s.get(key) in values
        return lambda s: s.get(key) not in values
    value = m["value"]
    if value is None:
        raise InvalidRequest(f"{op!r} needs a single value in {text.strip()!r}")
    if op == "==":
        return lambda s: s.get(key) == value
    if op == "!=":
        return lambda s: s.get(key) != value
    return lambda s: key in s and fnmatch.fnmatchcase(s[key], value)
