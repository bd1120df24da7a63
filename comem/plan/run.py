"""``comem plan`` from end to end: enumerate, estimate, select, simulate, rank."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from comem.plan.confirm import check_cost, confirm
from comem.plan.estimate import estimate, select
from comem.plan.rank import PlanRow, rank
from comem.plan.space import PlanSpec, enumerate_candidates


def run_plan(
    spec: PlanSpec,
    workers: int = 1,
    out: Path | None = None,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[PlanRow], int]:
    """The whole plan; returns the ranked rows and how many candidates were enumerated."""
    candidates = enumerate_candidates(spec)
    check_cost(spec, candidates[:1])  # the closed forms price every step too
    estimates = estimate(spec, candidates)
    chosen = select(spec, estimates)
    check_cost(spec, chosen)
    set_total = getattr(on_done, "set_total", None)
    if set_total is not None:  # the progress bar's total, now known
        set_total(len(chosen))
    points = out / "points" if out is not None else None
    simulated = confirm(spec, chosen, workers, points, on_done)
    return rank(spec, estimates, simulated), len(candidates)
