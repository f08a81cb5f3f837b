"""The layering rule of DESIGN.md, enforced: which part may import which, and no import cycles
inside a part. Every import counts — module level, inside functions and under TYPE_CHECKING —
because a cycle hidden behind a late import is still a cycle in the design.

    dockyard (composition root: CLI, app, ops, admin, ui)
      └─ registry ──> auth ──> dockyard.core (leaf: plumbing shared by every part)
    launcher ──> dockyard.core
    conformance (a client of any registry: imports none of the product)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("dockyard", "registry", "auth", "launcher", "conformance")
LEAF = "dockyard.core"

# Which of our parts each part may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    LEAF: set(),
    "auth": {LEAF},
    "registry": {"auth", LEAF},
    "launcher": {LEAF},
    "conformance": set(),
    "dockyard": {"registry", "auth", "launcher", LEAF},
}


def part_of(module: str) -> str | None:
    if module == LEAF or module.startswith(LEAF + "."):
        return LEAF
    head = module.split(".")[0]
    return head if head in PARTS else None


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for part in PARTS:
        for path in (ROOT / part).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        for target in targets:
            # The most specific of our modules the import names (a name imported from a
            # package may be a submodule or an attribute).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def test_parts_import_only_what_the_layering_allows() -> None:
    bad = []
    for module, targets in graph().items():
        source = part_of(module)
        assert source is not None
        for target in targets:
            dest = part_of(target)
            if dest is None or dest == source:
                continue
            if dest not in ALLOWED[source]:
                bad.append(f"{module} imports {target} ({source} may not import {dest})")
    assert not bad, "layering violations:\n" + "\n".join(sorted(bad))


# Cycles being broken by work in progress; this list only shrinks.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def test_no_import_cycles_inside_a_part() -> None:
    edges = graph()
    cycles: set[tuple[str, ...]] = set()

    def visit(node: str, stack: list[str], on_stack: set[str], done: set[str]) -> None:
        on_stack.add(node)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if part_of(nxt) != part_of(node):
                continue
            if nxt in on_stack:
                cycle = stack[stack.index(nxt) :]
                i = cycle.index(min(cycle))
                cycles.add(tuple(cycle[i:] + cycle[:i]))
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set[str] = set()
    for node in sorted(edges):
        if node not in done:
            visit(node, [], set(), done)
    # A package importing its own submodules (re-exports in __init__) is not a cycle of design.
    real = [
        c for c in cycles
        if not any(c[(i + 1) % len(c)].startswith(m + ".") for i, m in enumerate(c))
        and c not in KNOWN_CYCLES
    ]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c + c[:1]) for c in sorted(real))
