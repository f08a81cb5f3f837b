"""The list of checks: each registered with a decorator naming its category and spec section."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conformance.context import Context

CATEGORIES = ("pull", "push", "discovery", "referrers", "management", "errors")
_MODULES = tuple(f"conformance.checks.{c}" for c in CATEGORIES)


@dataclass(frozen=True)
class Check:
    category: str
    name: str
    section: str  # spec section(s) the check tests, e.g. "Push › Pushing a blob in chunks"
    title: str  # one line: what is checked
    func: Callable[[Context], str | None]
    last: bool = False  # runs after every other selected check (audits the whole run)

    @property
    def id(self) -> str:
        return f"{self.category}.{self.name}"


_CHECKS: dict[str, Check] = {}


def check(category: str, section: str, *, last: bool = False
          ) -> Callable[[Callable[[Context], str | None]], Callable[[Context], str | None]]:
    """Register a check. Its name is the function's name with dashes; its title the docstring.

    A check returns normally (optionally a detail string) to pass, raises CheckFailed (or any
    other exception) to fail, and raises NotSupported to be skipped.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}")

    def register(func: Callable[[Context], str | None]) -> Callable[[Context], str | None]:
        name = func.__name__.removeprefix("check_").replace("_", "-")
        title = " ".join((func.__doc__ or name).strip().split("\n\n")[0].split())
        c = Check(category, name, section, title, func, last)
        if c.id in _CHECKS:
            raise ValueError(f"duplicate check {c.id}")
        _CHECKS[c.id] = c
        return func

    return register


def all_checks() -> list[Check]:
    for module in _MODULES:
        importlib.import_module(module)
    by_category = sorted(_CHECKS.values(), key=lambda c: (c.last, CATEGORIES.index(c.category)))
    return by_category
