"""Step 4 of ``comem plan``: rank the candidates by the objective among those meeting
the SLO and the resolve-rate constraint (the fitted effectiveness model), and their
Pareto front in GPUs and latency."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from comem.plan.estimate import Estimate
from comem.plan.space import Candidate, PlanSpec


@dataclass
class PlanRow:
    rank: int
    label: str
    gpus: int
    #: what pruning ranks by: the closed form, plus the re-prefill past the KV bound
    estimate_mean_step_s: float
    kv_bound_agents: int
    estimate_optimistic: bool
    simulated: bool
    mean_step_s: float = math.nan
    p99_step_s: float = math.nan
    steps_per_s_per_gpu: float = math.nan
    tasks_ended_early: int = 0
    preemptions: int = 0
    meets_slo: bool = True
    candidate: dict[str, Any] = field(default_factory=dict)
    #: a MoE agent as DP replicas without EP: vLLM shards its MoE layers over all TP x DP
    #: GPUs (``flatten_tp_across_dp``), the simulator over each replica's TP only, so its
    #: KV capacity and MoE weight reads are pessimistic
    moe_dp_pessimistic: bool = False
    #: the fitted effectiveness model (sim.effectiveness): resolve rate [95%], its change
    #: against the full-context agent in points [95%], and whether it meets the constraint
    resolve_rate: float = math.nan
    resolve_rate_low: float = math.nan
    resolve_rate_high: float = math.nan
    resolve_rate_delta_pp: float = math.nan
    resolve_rate_delta_pp_low: float = math.nan
    resolve_rate_delta_pp_high: float = math.nan
    resolve_rate_extrapolated: bool = False
    meets_resolve: bool = True
    #: the share of its summaries the simulation made (swapped in against refused: a
    #: memory engine that refuses every summary request leaves an agent running as
    #: full context under the architecture's name); 1 for full context and estimates
    summaries_made: float = 1.0
    #: summary requests an engine refused (0: where none was made, none was due in time)
    summaries_refused: int = 0
    #: why its simulation could not run ("" when it ran or was not tried); such a row
    #: counts as not simulated and is never chosen
    error: str = ""

    @property
    def summarizes(self) -> bool:
        """False for a simulated summarizing architecture that made none of its
        summaries: it is not the deployment its label names, so it is not chosen."""
        return not self.simulated or self.candidate.get("kind") == "fc" or self.summaries_made > 0

    @property
    def eligible(self) -> bool:
        """Simulated, and meeting everything a chosen deployment must: its tasks finish
        within the p99 SLO, within the resolve-loss limit, and it made its summaries."""
        return self.simulated and self.meets_slo and self.meets_resolve and self.summarizes


def objective_value(spec: PlanSpec, row: PlanRow) -> float:
    """Smaller is better (steps per GPU is negated)."""
    if spec.objective == "mean-step":
        return row.mean_step_s
    if spec.objective == "p99-step":
        return row.p99_step_s
    return -row.steps_per_s_per_gpu


def rank(
    spec: PlanSpec, estimates: list[Estimate], simulated: dict[str, dict[str, Any]]
) -> list[PlanRow]:
    """Step 4: simulated candidates first, by objective among those meeting the SLO (and
    finishing their tasks), then the rest by estimate."""
    from calibration.registry import get_model

    moe = get_model(spec.agent_model).is_moe
    rows = []
    for e in estimates:
        c = e.candidate
        row = PlanRow(
            0, c.label, c.gpus_used,
            e.prune_step_s if math.isfinite(e.prune_step_s) else e.mean_step_s,
            e.kv_bound_agents, e.optimistic,
            simulated=c.key() in simulated, candidate=asdict(c),
            moe_dp_pessimistic=moe and c.agent_dp > 1 and not c.agent_ep,
        )  # fmt: skip
        sim = simulated.get(c.key())
        if sim is not None and sim.get("error"):
            row.simulated, row.error, sim = False, str(sim["error"]), None
        if sim is not None:
            row.mean_step_s = sim["mean_step_s"]
            row.p99_step_s = sim["p99_step_s"]
            row.steps_per_s_per_gpu = sim["steps_per_s"] / c.gpus_used
            row.tasks_ended_early = sim["tasks_ended_early"]
            row.preemptions = sim["preemptions"]
            if c.kind != "fc":
                row.summaries_made = float(sim.get("summaries_made", 1.0))
                row.summaries_refused = int(sim.get("summary_requests_refused", 0))
            row.meets_slo = (
                spec.slo_step_s is None or row.p99_step_s <= spec.slo_step_s
            ) and row.tasks_ended_early == 0
        ended = sim["tasks_ended_early"] / max(sim.get("tasks", spec.agents), 1) if sim else 0.0
        _effectiveness(spec, c, ended, row, row.summaries_made)
        rows.append(row)

    def order(r: PlanRow) -> tuple[Any, ...]:
        if r.simulated:
            return (0, not r.eligible, objective_value(spec, r), r.gpus)
        return (1, True, r.estimate_mean_step_s, r.gpus)

    rows.sort(key=order)
    for i, r in enumerate(rows, 1):
        r.rank = i
    return rows


def _effectiveness(
    spec: PlanSpec, c: Candidate, ended_early: float, row: PlanRow, made: float = 1.0
) -> None:
    """Fill ``row``'s resolve-rate fields (against the full-context agent that finishes
    its tasks) and whether it meets ``max_resolve_loss_pp``; ``made``: the share of its
    summaries that happened in the simulation (1 for an estimate)."""
    from sim.effectiveness import (
        EffectivenessParams,
        PolicyFeatures,
        policy_features,
        resolve_delta,
        resolve_rate,
        summary_fields,
    )
    from sim.policy import PolicyParams

    params = EffectivenessParams(
        baseline_resolve_rate=spec.baseline_resolve_rate, memory_loss_scale=spec.memory_loss_scale
    )
    policy = PolicyParams(kind=c.kind, k=c.k, lag=spec.lag, retain=spec.retain)
    rate = resolve_rate(
        policy_features(policy), params, ended_early=ended_early, summaries_made=made
    )
    ref = resolve_rate(PolicyFeatures(math.inf, math.inf, 0.0, "none"), params)
    for key, value in summary_fields(rate, resolve_delta(rate, ref)).items():
        setattr(row, key, value)
    row.meets_resolve = (
        spec.max_resolve_loss_pp is None
        or row.resolve_rate_delta_pp_low >= -spec.max_resolve_loss_pp
    )


def pareto(rows: list[PlanRow]) -> list[PlanRow]:
    """Simulated rows no other beats in both GPUs used and mean step latency."""
    sim = [r for r in rows if r.simulated and r.tasks_ended_early == 0]
    front = []
    for r in sim:
        if not any(
            (o.gpus <= r.gpus and o.mean_step_s < r.mean_step_s)
            or (o.gpus < r.gpus and o.mean_step_s <= r.mean_step_s)
            for o in sim
        ):
            front.append(r)
    return sorted(front, key=lambda r: r.gpus)
