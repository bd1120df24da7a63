"""``comem plan`` from end to end: enumerate, estimate, select, simulate, rank; with a
p99 SLO that nothing simulated meets, simulate further candidates in bounded rounds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from calibration.errors import ComemInputError
from comem.plan.confirm import check_cost, confirm
from comem.plan.estimate import (
    Estimate,
    estimate,
    estimated_objective,
    select,
    task_steps,
    worth_simulating,
)
from comem.plan.rank import PlanRow, rank
from comem.plan.space import Candidate, PlanSpec, enumerate_candidates

#: extra rounds of ``top`` candidates a plan with an SLO simulates while none simulated
#: meets it (the pruning ranks by the closed form's mean step, which says little of p99)
MAX_SLO_ROUNDS = 4


@dataclass(frozen=True)
class SloRounds:
    """The rounds simulated past the first selection because none met the SLO."""

    first: int  # candidates simulated before them
    extra: int = 0  # candidates they simulated
    rounds: int = 0
    #: why they stopped: "met" (one meets the SLO), "rounds" (MAX_SLO_ROUNDS),
    #: "space" (no candidate left that could), "budget" (the simulation budget); "" none ran
    stopped: str = ""


def run_plan(
    spec: PlanSpec,
    workers: int = 1,
    out: Path | None = None,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[PlanRow], int, SloRounds]:
    """The whole plan; returns the ranked rows, how many candidates were enumerated and
    the extra rounds an unmet SLO took (each decided on simulated results only, so the
    answer does not depend on ``workers``)."""
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
    rows = rank(spec, estimates, simulated)
    first, rounds, stopped = len(chosen), 0, ""
    while spec.slo_step_s is not None and not any(r.eligible for r in rows):
        if rounds == MAX_SLO_ROUNDS:
            stopped = "rounds"
            break
        more = next_round(spec, estimates, rows)
        if not more:
            stopped = "space"
            break
        try:
            check_cost(spec, chosen + more)
        except ComemInputError:  # past the budget: stop here, say so
            stopped = "budget"
            break
        chosen += more
        rounds += 1
        if set_total is not None:
            set_total(len(chosen))
        simulated.update(confirm(spec, more, workers, points, on_done))
        rows = rank(spec, estimates, simulated)
    if rounds and not stopped:
        stopped = "met"
    return rows, len(candidates), SloRounds(first, len(chosen) - first, rounds, stopped)


def next_round(spec: PlanSpec, estimates: list[Estimate], rows: list[PlanRow]) -> list[Candidate]:
    """The next ``top`` candidates to simulate toward the SLO, none simulated yet: first
    those whose estimated step meets the SLO and lies below that of every simulated
    candidate of their kind that missed it, by the objective's estimate (the cheapest
    that could meet it); then the rest, fastest first. Left out: a candidate whose estimate
    times the lowest p99 / estimate simulated so far misses the SLO, what the resolve-loss
    limit rules out already, offload where it changes nothing, and a summarizing kind
    with k at or above the tasks' length (it would make no summary)."""
    slo = spec.slo_step_s if spec.slo_step_s is not None else math.inf
    length = task_steps(spec)
    row_of = {Candidate(**r.candidate): r for r in rows}
    missed: dict[str, float] = {}  # per kind: the fastest estimate simulated that missed
    for r in rows:
        if r.simulated and r.summarizes and r.tasks_ended_early == 0 and not r.meets_slo:
            kind = r.candidate["kind"]
            missed[kind] = min(missed.get(kind, math.inf), r.estimate_mean_step_s)
    # the lowest p99 / estimate the simulation has shown: a candidate whose estimate times
    # it still misses the SLO is not worth a simulation (an SLO nothing can meet stops here)
    reach = min(
        (r.p99_step_s / r.estimate_mean_step_s for r in rows
         if r.simulated and r.estimate_mean_step_s > 0 and math.isfinite(r.p99_step_s)),
        default=0.0,
    )  # fmt: skip
    pool: list[tuple[tuple[bool, float, int], Candidate]] = []
    for e in estimates:
        c, r = e.candidate, row_of[e.candidate]
        if r.simulated or r.error or not r.meets_resolve or not worth_simulating(spec, e):
            continue
        if c.kind != "fc" and c.k >= length:
            continue
        step = r.estimate_mean_step_s
        if step * reach > slo:
            continue
        likely = step <= slo and step < missed.get(c.kind, math.inf)
        key = estimated_objective(spec, e) if likely else step
        pool.append(((not likely, key, c.gpus_used), c))
    pool.sort(key=lambda p: p[0])  # stable: ties keep the enumeration's order
    return [c for _, c in pool[: spec.top]]
