"""A sweep's summary (:func:`sim.sweep.summary`) as the Markdown tables ``comem sweep``
prints: every point's speedup and resolve-rate change, the best k per point of the other
axes, and the winner."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:g}"
    return str(value)


def summary_markdown(result: dict[str, Any]) -> str:
    """The summary as short Markdown tables (a ``*`` marks a best k on its grid's edge)."""
    axes = result.get("axes", [])
    names = [a[len("grid.") :] for a in axes]
    lines = [
        f"speedup = full context's mean over CoMem's by {result['metric']} (> 1: CoMem"
        " faster), the mean over seeds with [lowest, highest] where there are several;"
        " resolve pp = resolve-rate change against full context, percentage points"
        " (^ = k or the raw tail outside the range the effectiveness model was fitted on:"
        " extrapolated); ! = some of its tasks"
        " ended early, (FC!) = some of full context's did (the speedup is over the steps"
        " both ran; results.parquet's ended_early says why)",
        "",
        "| point | " + " | ".join(names) + " | architecture | speedup | resolve pp |",
        "|---" * (len(names) + 4) + "|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['point']} | " + " | ".join(_fmt(r[a]) for a in axes)
            + f" | {_arch_cell(r)} | {_speedup_cell(r)} | {_pp_cell(r)} |"
        )  # fmt: skip
    if result["best_k"]:
        k_axis = next(a for a in axes if a.endswith(".k"))
        others = [a for a in axes if a != k_axis]
        lines += [
            "",
            "best k per point of the other axes (* = on the edge of the k grid: a better k"
            " may lie beyond it)",
            "",
            "| " + "".join(a[len("grid.") :] + " | " for a in others) + "architecture | best k"
            " | speedup | resolve pp |",
            "|---" * (len(others) + 4) + "|",
        ]
        for r in result["best_k"]:
            lines.append(
                "| " + "".join(_fmt(r[a]) + " | " for a in others)
                + f"{_arch_cell(r)} | {_fmt(r[k_axis])}{'*' if r['edge'] else ''}"
                + (f" (seeds overlap k={', '.join(_fmt(t) for t in r['ties'])})"
                   if r.get("ties") else "")
                + f" | {_speedup_cell(r)} | {_pp_cell(r)} |"
            )  # fmt: skip
    w = result["winner"]
    if w is not None:
        located = ", ".join(f"{a[len('grid.') :]}={_fmt(w[a])}" for a in w.get("axes", axes))
        at = located or "every point of the grid (its own settings)"
        edge = (
            f"; on the edge of the grid in {', '.join(w['edge'])}: widen it to see past it"
            if w["edge"]
            else ""
        )
        if w["speedup"] < 1.0:  # every architecture is slower than full context
            lines += [
                "",
                f"winner: full context at every point (the fastest other: {w['architecture']}"
                f" at {at}, {_x(w['speedup'])})",
            ]
        else:
            lines += ["", f"winner: {w['architecture']} at {at}, {_x(w['speedup'])}{edge}"]
    return "\n".join(lines) + "\n"


def _arch_cell(row: dict[str, Any]) -> str:
    """The architecture's name, with ``!`` where some of its tasks ended early (as in
    ``comem run``'s table) and `` (FC!)`` where some of full context's did."""

    def ended(key: str) -> bool:
        n = row.get(key, 0)
        return n == n and n is not None and n > 0

    return (
        row["architecture"]
        + ("!" if ended("tasks_ended_early") else "")
        + (" (FC!)" if ended("fc_tasks_ended_early") else "")
    )


def _pp_cell(row: dict[str, Any]) -> str:
    """'-3.8^': the resolve-rate change, ``^`` where the effectiveness model extrapolates
    (as ``comem theory`` marks it; ``comem run``'s table uses ``*``)."""
    mark = "^" if row.get("resolve_rate_extrapolated") else ""
    return f"{row['resolve_rate_delta_pp']:+.1f}{mark}"


def _x(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.2f}x"


def _speedup_cell(row: dict[str, Any]) -> str:
    """'1.20x [1.05, 1.31]': the mean over seeds and its range, where there are several."""
    if row.get("seeds", 1) > 1 and row["speedup"] == row["speedup"]:
        return f"{_x(row['speedup'])} [{row['speedup_min']:.2f}, {row['speedup_max']:.2f}]"
    return _x(row["speedup"])
