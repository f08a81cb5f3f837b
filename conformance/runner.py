"""Run the selected checks against a registry and collect their outcomes."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from conformance.client import RegistryClient, TransportError
from conformance.context import Context
from conformance.outcomes import CheckFailed, NotSupported
from conformance.suite import CATEGORIES, Check, all_checks

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass(frozen=True)
class CheckResult:
    id: str
    category: str
    name: str
    title: str
    section: str
    outcome: str  # PASS, FAIL or SKIP
    detail: str
    seconds: float

    def line(self) -> str:
        """`PASS category name — spec section — detail`"""
        text = f"{self.outcome} {self.category} {self.name} — {self.section}"
        return f"{text} — {self.detail}" if self.detail else text


@dataclass
class Results:
    registry: str
    repo: str
    repo2: str
    started: datetime
    results: list[CheckResult] = field(default_factory=list)

    def _ids(self, outcome: str) -> set[str]:
        return {r.id for r in self.results if r.outcome == outcome}

    @property
    def passed(self) -> int:
        return len(self._ids(PASS))

    @property
    def failed(self) -> int:
        return len(self._ids(FAIL))

    @property
    def skipped(self) -> int:
        return len(self._ids(SKIP))

    def failed_ids(self) -> set[str]:
        return self._ids(FAIL)

    def skipped_ids(self) -> set[str]:
        return self._ids(SKIP)

    def summary(self) -> str:
        """The last line of the output: `N passed, M failed[, K skipped]`."""
        text = f"{self.passed} passed, {self.failed} failed"
        return f"{text}, {self.skipped} skipped" if self.skipped else text


def select(only: Iterable[str] | None = None) -> list[Check]:
    checks = all_checks()
    if not only:
        return checks
    wanted = set(only)
    unknown = wanted - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
    return [c for c in checks if c.category in wanted]


def run(
    registry_url: str,
    repo: str,
    *,
    repo2: str | None = None,
    username: str | None = None,
    password: str | None = None,
    only: Iterable[str] | None = None,
    insecure: bool = False,
    on_result: Callable[[CheckResult], None] | None = None,
) -> Results:
    """Run the conformance checks against `registry_url` (e.g. http://127.0.0.1:5000).

    `repo` is the repository checks push to; `repo2` (default `<repo>-mount`) receives
    cross-repository mounts. `only` restricts to categories (pull, push, discovery, referrers,
    management, errors). Raises TransportError when the registry cannot be reached at all.
    """
    checks = select(only)
    client = RegistryClient(registry_url, username, password, insecure=insecure)
    client.get("/v2/")  # fail fast (TransportError) on a wrong URL rather than N failures
    ctx = Context(client, repo, repo2 or f"{repo}-mount")
    results = Results(registry_url, ctx.repo, ctx.repo2, datetime.now(UTC))
    for c in checks:
        result = run_one(c, ctx)
        results.results.append(result)
        if on_result:
            on_result(result)
    return results


def run_one(c: Check, ctx: Context) -> CheckResult:
    start = time.monotonic()
    try:
        detail = c.func(ctx) or ""
        outcome = PASS
    except NotSupported as exc:
        outcome, detail = SKIP, f"skipped (not supported): {exc}"
    except CheckFailed as exc:
        outcome, detail = FAIL, str(exc)
    except TransportError as exc:
        outcome, detail = FAIL, f"connection error: {exc}"
    except Exception as exc:  # a bug in the check or a wildly wrong answer: still a result
        last = traceback.extract_tb(exc.__traceback__)[-1]
        outcome = FAIL
        detail = f"error: {type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})"
    return CheckResult(c.id, c.category, c.name, c.title, c.section, outcome, detail,
                       time.monotonic() - start)
