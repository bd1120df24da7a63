"""The Pareto figure of a plan: mean step latency against GPUs used, and against the
resolve rate of the fitted effectiveness model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from comem.plan.rank import PlanRow, pareto


def pareto_effectiveness(rows: list[PlanRow]) -> list[PlanRow]:
    """Simulated rows no other beats in both mean step latency and resolve rate."""
    sim = [r for r in rows if r.simulated and r.tasks_ended_early == 0]
    return sorted(
        (
            r
            for r in sim
            if not any(
                (o.mean_step_s <= r.mean_step_s and o.resolve_rate > r.resolve_rate)
                or (o.mean_step_s < r.mean_step_s and o.resolve_rate >= r.resolve_rate)
                for o in sim
            )
        ),
        key=lambda r: r.mean_step_s,
    )


def _effectiveness_panel(ax: Any, rows: list[PlanRow]) -> None:
    """Mean step latency against resolve rate with 95% intervals, and its Pareto front."""
    sim = [r for r in rows if r.simulated]
    for kind, marker in (("fc", "o"), ("cp", "s"), ("sm", "^"), ("kso", "D")):
        pts = [r for r in sim if r.candidate["kind"] == kind]
        if pts:
            rate = np.array([100 * r.resolve_rate for r in pts])
            err = np.array(
                [
                    [100 * (r.resolve_rate - r.resolve_rate_low) for r in pts],
                    [100 * (r.resolve_rate_high - r.resolve_rate) for r in pts],
                ]
            )
            ax.errorbar(
                [r.mean_step_s for r in pts],
                rate,
                yerr=err,
                fmt=marker,
                alpha=0.7,
                capsize=2,
                label=kind.upper(),
            )
    front = pareto_effectiveness(rows)
    if front:
        ax.plot(
            [r.mean_step_s for r in front],
            [100 * r.resolve_rate for r in front],
            "k--",
            lw=1,
            label="Pareto front",
        )
    ax.set_xlabel("mean step latency (s, simulated)")
    ax.set_ylabel("resolve rate (%, fitted model, 95%)")
    ax.legend(fontsize=7)


def _gpu_panel(ax: Any, rows: list[PlanRow]) -> None:
    """Mean step latency against GPUs used, with its Pareto front; where every candidate
    uses the same GPUs (a GPU axis of one point), each candidate's latency as a bar."""
    from matplotlib.ticker import MaxNLocator

    sim = [r for r in rows if r.simulated]
    gpus = {r.gpus for r in sim}
    if len(gpus) <= 1:
        ordered = sorted(sim, key=lambda r: r.mean_step_s)
        colors = {"fc": "C0", "cp": "C1", "sm": "C2", "kso": "C3"}
        ax.barh(range(len(ordered)), [r.mean_step_s for r in ordered],
                color=[colors[r.candidate["kind"]] for r in ordered])  # fmt: skip
        ax.set_yticks(range(len(ordered)), [r.label for r in ordered], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("mean step latency (s, simulated)")
        n = next(iter(gpus)) if gpus else 0
        ax.set_title(f"every candidate uses {n} GPUs: latency per candidate", fontsize=8)
        return
    front = pareto(rows)
    for kind, marker in (("fc", "o"), ("cp", "s"), ("sm", "^"), ("kso", "D")):
        pts = [r for r in sim if r.candidate["kind"] == kind]
        if pts:
            ax.scatter([r.gpus for r in pts], [r.mean_step_s for r in pts], marker=marker,
                       label=kind.upper(), alpha=0.7)  # fmt: skip
    if front:
        ax.plot([r.gpus for r in front], [r.mean_step_s for r in front], "k--", lw=1,
                label="Pareto front")  # fmt: skip
        for r in front:
            ax.annotate(r.label, (r.gpus, r.mean_step_s), fontsize=6, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # GPUs come whole
    ax.set_xlabel("GPUs used")
    ax.set_ylabel("mean step latency (s, simulated)")
    ax.legend(fontsize=8)


def pareto_figure(rows: list[PlanRow], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_eff) = plt.subplots(1, 2, figsize=(13, 5.5))
    _gpu_panel(ax, rows)
    _effectiveness_panel(ax_eff, rows)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
