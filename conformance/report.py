"""Render results: a markdown report and JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from conformance.runner import FAIL, PASS, SKIP, Results
from conformance.suite import CATEGORIES


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: Results) -> str:
    lines = [
        "# OCI Distribution conformance report",
        "",
        f"- Registry: `{results.registry}`",
        f"- Repositories: `{results.repo}`, `{results.repo2}`",
        f"- Run: {results.started.isoformat(timespec='seconds')}",
        f"- Result: **{results.summary()}**",
        "",
        "| Category | Passed | Failed | Skipped |",
        "| --- | --- | --- | --- |",
    ]
    for cat in CATEGORIES:
        rows = [r for r in results.results if r.category == cat]
        if rows:
            counts = [sum(r.outcome == o for r in rows) for o in (PASS, FAIL, SKIP)]
            lines.append(f"| {cat} | {counts[0]} | {counts[1]} | {counts[2]} |")
    for cat in CATEGORIES:
        rows = [r for r in results.results if r.category == cat]
        if not rows:
            continue
        lines += ["", f"## {cat}", "", "| Result | Check | What | Spec section | Detail |",
                  "| --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(f"| {r.outcome} | `{r.id}` | {_cell(r.title)} | {_cell(r.section)} "
                         f"| {_cell(r.detail)} |")
    return "\n".join(lines) + "\n"


def junit(results: Results) -> str:
    suites = ET.Element("testsuites", name="oci-conformance", tests=str(len(results.results)),
                        failures=str(results.failed), skipped=str(results.skipped))
    for cat in CATEGORIES:
        rows = [r for r in results.results if r.category == cat]
        if not rows:
            continue
        suite = ET.SubElement(
            suites, "testsuite", name=cat, tests=str(len(rows)),
            failures=str(sum(r.outcome == FAIL for r in rows)), errors="0",
            skipped=str(sum(r.outcome == SKIP for r in rows)),
            time=f"{sum(r.seconds for r in rows):.3f}",
            timestamp=results.started.isoformat(timespec="seconds"),
        )
        for r in rows:
            case = ET.SubElement(suite, "testcase", classname=f"conformance.{cat}", name=r.name,
                                 time=f"{r.seconds:.3f}")
            # JUnit's schema wants failure/skipped before system-out.
            if r.outcome == FAIL:
                ET.SubElement(case, "failure", message=r.detail[:500]).text = r.detail
            elif r.outcome == SKIP:
                ET.SubElement(case, "skipped", message=r.detail[:500])
            ET.SubElement(case, "system-out").text = f"{r.title}\nspec: {r.section}"
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write(results: Results, *, markdown_path: Path | None = None,
          junit_path: Path | None = None) -> None:
    if markdown_path:
        markdown_path.write_text(markdown(results))
    if junit_path:
        junit_path.write_text(junit(results))
