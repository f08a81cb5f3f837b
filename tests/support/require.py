"""Skip a test that needs a real part which is missing — or fail it when CI requires every part."""

import os
import shutil

import pytest

REQUIRE_E2E = os.environ.get("REQUIRE_E2E") == "1"


def missing(reason: str) -> None:
    """Skip the calling test, or fail it when REQUIRE_E2E=1 turns skips into failures."""
    if REQUIRE_E2E:
        pytest.fail(f"REQUIRE_E2E=1 but {reason}")
    pytest.skip(reason)


def require_binary(name: str, path: str | None = None) -> str:
    """Return the path of a real binary the test needs, or skip/fail when it is absent."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if not found:
        missing(f"{name} is not installed")
    return found  # type: ignore[return-value]


def require_root() -> None:
    if os.geteuid() != 0:
        missing("this test needs root (it starts its own dockerd)")
