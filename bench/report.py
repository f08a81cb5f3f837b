"""Turn samples into the markdown tables and the JSON document."""

from __future__ import annotations

from typing import Any

from .core import Bench, Row, Scenario, summary
from .servers import DOCKYARD, REFERENCE


def fmt(x: float) -> str:
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "—"
    if s["n"] == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} [{fmt(s['min'])}–{fmt(s['max'])}]"


def row_result(bench: Bench, row: Row) -> dict[str, Any]:
    samples = bench.samples.get((row.phase, row.key))
    right_samples = bench.samples.get((row.right_phase or row.phase, row.key))
    dy = summary(samples.values.get(row.left, [])) if samples else None
    ref = summary(right_samples.values.get(row.right, [])) if right_samples else None
    ratio = dy["median"] / ref["median"] if dy and ref and ref["median"] else None
    meets = None
    if row.check is not None and dy is not None:
        meets = row.check(dy["median"], ref["median"] if ref else None)
    return {
        "phase": row.phase, "metric": row.label, "key": row.key,
        "higher_is_better": row.higher_is_better, "target": row.target,
        "dockyard": dy, "reference": ref, "ratio": ratio, "meets_target": meets,
        "samples": samples.values if samples else {},
        # Which samples fill the "dockyard" and "reference" columns of this row.
        "left": row.left, "right": row.right, "right_phase": row.right_phase or row.phase,
        "sides": "" if row.default_sides else row.sides_label,
    }


def results(bench: Bench, scenarios: list[Scenario]) -> list[dict[str, Any]]:
    out = []
    for sc in scenarios:
        for row in sc.rows:
            r = row_result(bench, row)
            if r["dockyard"] is None and r["reference"] is None:
                continue
            out.append({"scenario": sc.name, **r})
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | metric | dockyard median [min–max] | reference median [min–max] "
        "| dockyard/reference | better | target | meets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "—"
        meets = {True: "yes", False: "**NO**", None: ""}[r["meets_target"]]
        metric = r["metric"] + (f" [columns: {r['sides']}]" if r.get("sides") else "")
        lines.append(
            f"| {r['phase']} | {metric} | {cell(r['dockyard'])} | {cell(r['reference'])} "
            f"| {ratio} | {'higher' if r['higher_is_better'] else 'lower'} | {r['target']} "
            f"| {meets} |"
        )
    return "\n".join(lines)


def cpu_table(bench: Bench) -> str:
    lines = [
        "| phase | dockyard: server CPU s | client CPU s | wall s "
        "| reference: server CPU s | client CPU s | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase, by_target in bench.cpu.items():
        cells = []
        for name in (DOCKYARD, REFERENCE):
            d = by_target.get(name, {})
            for key in ("server_s", "client_s", "wall_s"):
                cells.append(cell(summary(d.get(key, []))))
        if DOCKYARD in by_target or REFERENCE in by_target:
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
        # Other sides (the raw object store, a second dockyard configuration): one line each,
        # in the left-hand columns.
        for name, d in by_target.items():
            if name in (DOCKYARD, REFERENCE):
                continue
            own = [cell(summary(d.get(key, []))) for key in ("server_s", "client_s", "wall_s")]
            lines.append(f"| {phase} [{name}] | " + " | ".join(own) + " | — | — | — |")
    return "\n".join(lines)
