"""The official OCI Distribution conformance program (opencontainers/distribution-spec
`conformance/`), run against a registry on loopback, and its JUnit report read back.

scripts/test.sh builds the program once from ../shared/oci-conformance/ into
.venv/oci-conformance/oci-conformance (OCI_CONFORMANCE_BIN names another binary). Settings as in
that directory's README: every API and every data set on, OCI_DATA_SPARSE chosen per run.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .require import missing

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = ROOT / ".venv" / "oci-conformance" / "oci-conformance"
SUITE = "OCI Conformance Test/"  # the program's prefix on every test name
RUN_TIMEOUT = 300.0


def program_binary() -> str:
    """The built program; skips the test (fails it under REQUIRE_E2E=1) when it is missing."""
    path = Path(os.environ.get("OCI_CONFORMANCE_BIN") or DEFAULT_BINARY)
    if not os.access(path, os.X_OK):
        missing(f"the official OCI conformance program is not built at {path} "
                "(scripts/test.sh builds it from ../shared/oci-conformance)")
    return str(path)


def program_env(host: str, results_dir: Path, *, sparse: bool) -> dict[str, str]:
    """The program's environment: the caller's, minus any OCI_* of its own, plus the settings
    that switch every API and data set on (README of ../shared/oci-conformance)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_")}
    env.update({
        "OCI_REGISTRY": host,
        "OCI_TLS": "disabled",
        "OCI_REPO1": "conformance/repo1",
        "OCI_REPO2": "conformance/repo2",
        "OCI_VERSION": "1.1",
        "OCI_RESULTS_DIR": str(results_dir),
        "OCI_API_BLOBS_UPLOAD_CANCEL": "true",
        "OCI_API_MANIFESTS_TAG_PARAM": "true",
        "OCI_API_BLOBS_DIGEST_HEADER": "true",
        "OCI_API_MANIFESTS_DIGEST_HEADER": "true",
        "OCI_DATA_SPARSE": "true" if sparse else "false",
    })
    return env


@dataclass(frozen=True)
class Case:
    name: str  # without the "OCI Conformance Test/" prefix
    status: str  # passed, failure, error or skipped (the program's JUnit statuses)
    message: str  # the program's reason for a failure or skip (first line)


@dataclass
class Report:
    """One run: every leaf test of the program, as its junit.xml lists them."""

    cases: list[Case]
    config: dict[str, dict[str, str]]  # "apis"/"data" -> setting -> value, as the program read them
    exit_status: int
    output: str = field(repr=False)

    def named(self, status: str) -> list[Case]:
        return [c for c in self.cases if c.status == status]

    @property
    def passed(self) -> int:
        return len(self.named("passed"))

    @property
    def skipped(self) -> int:
        return len(self.named("skipped"))

    @property
    def failed(self) -> int:
        """Failures and errors: every case that neither passed nor was skipped."""
        return len(self.cases) - self.passed - self.skipped

    @property
    def total(self) -> int:
        return len(self.cases)

    def totals(self) -> str:
        return (f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped "
                f"of {self.total}")

    def not_passed(self) -> list[Case]:
        return [c for c in self.cases if c.status != "passed"]

    def explain(self) -> str:
        """The totals and one line per test that did not pass."""
        lines = [self.totals()]
        lines += [f"  {c.status.upper():8} {c.name}: {c.message}" for c in self.not_passed()]
        return "\n".join(lines)


def _settings(config_text: str) -> dict[str, dict[str, str]]:
    """The `apis:` and `data:` blocks of the YAML config the program echoes in junit.xml,
    flattened to dotted names ("blobs.delete": "true"). A few lines of YAML, parsed by
    indentation: nothing else is needed from it."""
    out: dict[str, dict[str, str]] = {}
    section: str | None = None
    parents: list[tuple[int, str]] = []
    for line in config_text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if indent == 0:
            section = key if key in ("apis", "data") else None
            parents = []
            if section:
                out[section] = {}
            continue
        if section is None:
            continue
        parents = [(i, k) for i, k in parents if i < indent]
        if value:
            out[section][".".join([k for _, k in parents] + [key])] = value
        else:
            parents.append((indent, key))
    return out


def parse_junit(path: Path, exit_status: int = 0, output: str = "") -> Report:
    root = ET.parse(path).getroot()
    cases: list[Case] = []
    config = ""
    for prop in root.iter("property"):
        if prop.get("name") == "Config":
            config = prop.get("value", "")
    for tc in root.iter("testcase"):
        status = tc.get("status") or ""
        # Older JUnit writers mark the outcome with a child element instead of the attribute.
        for tag in ("failure", "error", "skipped"):
            if tc.find(tag) is not None:
                status = tag
        if not status:
            status = "passed"
        out = tc.findtext("system-out") or ""
        message = next((line for line in out.splitlines() if line.strip()), "")
        name = tc.get("name", "")
        cases.append(Case(name.removeprefix(SUITE), status, message[:300]))
    return Report(cases, _settings(config), exit_status, output)


def run_program(host: str, results_dir: Path, *, sparse: bool) -> Report:
    """Run the program against the registry at `host` (127.0.0.1:PORT, plain HTTP)."""
    binary = program_binary()
    results_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [binary], env=program_env(host, results_dir, sparse=sparse), cwd=results_dir,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT,
    )
    junit = results_dir / "junit.xml"
    if not junit.exists():
        raise AssertionError(f"the program wrote no junit.xml (exit {proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}")
    return parse_junit(junit, proc.returncode, proc.stdout)
