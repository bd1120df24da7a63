"""Step 2 of ``comem plan``: prune with theory. Each candidate's mean step latency from
the exact lockstep closed form under its engines' linear surrogates, its KV-capacity
bound on agents, and which candidates are worth simulating (:func:`select`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from comem.plan.scenario import _workload, _workload_model
from comem.plan.space import (
    AGENT_UTIL_COLOCATED,
    DEFAULT_WORKLOAD,
    Candidate,
    PlanSpec,
)


@lru_cache(maxsize=256)
def _latency_model(model: str, gpu: str, tp: int, dtype: str, ep: bool, util: float) -> Any:
    from calibration.latency import LatencyModel

    kwargs: dict[str, Any] = {"expert_parallel": True} if ep else {}
    return LatencyModel(model, gpu, tp, dtype, **kwargs)


@dataclass
class Estimate:
    candidate: Candidate
    mean_step_s: float  # the closed form's, per replica of N / DP agents in lockstep
    kv_bound_agents: int  # agents per replica whose contexts fit the KV cache at once
    optimistic: bool  # past the KV bound, or co-located (the closed form is a bound)
    #: what pruning ranks by: the closed form plus the recomputation the KV cache forces
    #: past its bound (the share of contexts that do not fit, re-prefilled every step)
    prune_step_s: float = math.nan


def mean_shape(model: Any, agents: int) -> dict[str, Any]:
    """The synthetic workload of a trace or fitted workload's means
    (:func:`sim.describe.mean_task_shape`: steps per task, the system prompt, each
    step's observation, decoded action, reasoning included since it is decoded, and tool
    time). The closed form prices a workload of identical tasks; with the means it
    estimates the one being simulated, not the default experiment's."""
    from sim.describe import mean_task_shape

    m = mean_task_shape(model)
    return {
        **DEFAULT_WORKLOAD,
        "agents": agents,
        "steps": max(1, round(m.steps)),
        "system_tokens": max(1, round(m.system_tokens)),
        "observation_tokens": round(m.observation_tokens),
        "action_tokens": max(1, round(m.action_tokens)),
        "summary_tokens": model.summary_tokens,
        "tool_s": m.tool_s,
    }


def priced_workload(spec: PlanSpec) -> Any:
    """The synthetic workload the closed form prices: the user's own, or for a trace or
    fitted workload the synthetic workload of its tasks' means (:func:`mean_shape`)."""
    from sim.scenario import SyntheticWorkload

    model = _workload_model(_workload(spec), str(spec.workload_scenario or "plan"))
    if not isinstance(model, SyntheticWorkload):
        model = _workload_model(mean_shape(model, spec.agents), "plan")
    return model


def task_steps(spec: PlanSpec) -> int:
    """Steps per task of the workload planned (a trace or fitted workload's mean,
    rounded): a summarizing architecture with a k at or above it makes no summary on a
    typical task (none is due before the task ends)."""
    return int(priced_workload(spec).steps)


def worth_simulating(spec: PlanSpec, e: Estimate) -> bool:
    """CPU offload only changes anything once the contexts outgrow the GPU cache (the
    closed form prices no offload): an offload variant is worth simulating only past the
    KV bound."""
    return not e.candidate.offload or math.ceil(spec.agents / e.candidate.agent_dp) > (
        e.kv_bound_agents
    )


def estimate(spec: PlanSpec, candidates: list[Candidate]) -> list[Estimate]:
    """Step 2: the closed form and the KV bound for every candidate."""

    from calibration.surrogate import fit_surrogate
    from theory.bounds import fc_peak_context, kso_peak_context, max_agents
    from theory.single_agent import AgentParams, lockstep_coefficients, step_latencies

    model = priced_workload(spec)
    # the workload's own steps per task: --steps is already in it (a synthetic task's
    # length, a trace or fitted workload's max_steps, which its means are drawn under)
    steps = int(model.steps)
    system, obs = float(model.system_tokens), float(model.observation_tokens)
    action, summary = float(model.action_tokens), float(model.summary_tokens)
    tool = float(model.tool_s)
    coeffs: dict[tuple[Any, ...], Any] = {}

    def surrogate(model: str, tp: int, dtype: str, ep: bool) -> Any:
        key = (model, tp, dtype, ep)
        if key not in coeffs:
            s = fit_surrogate(
                _latency_model(model, spec.gpu, tp, dtype, ep, 0.9), samples=200, holdout=50
            )
            coeffs[key] = np.array([s.c0, s.c1, s.c2, s.c3, s.c4])
        return coeffs[key]

    out = []
    for c in candidates:
        n = math.ceil(spec.agents / c.agent_dp)
        agent_c = lockstep_coefficients(
            surrogate(spec.agent_model, c.agent_tp, c.agent_dtype, c.agent_ep), n
        )
        mem_c = None
        if c.memory_placement != "none":
            mem_c = lockstep_coefficients(
                surrogate(spec.memory_model, c.memory_tp, "bf16", False), n
            )
        params = AgentParams(
            system=np.array(system), observation=np.array(obs), action=np.array(action),
            summary=np.array(summary), tool_s=np.array(tool), steps=steps,
            k=np.array(c.k), retain=np.array(spec.retain), lag=np.array(spec.lag),
        )  # fmt: skip
        # co-located engines take turns on the GPUs: the summary cannot overlap the
        # agent's work, so price CoMem there as the blocking SM
        kind = "sm" if c.kind == "kso" and c.memory_placement == "co-located" else c.kind
        lat, _ = step_latencies(
            kind, params, agent_c.reshape(5, 1), None if mem_c is None else mem_c.reshape(5, 1)
        )
        util = AGENT_UTIL_COLOCATED if c.memory_placement == "co-located" else 0.9
        kv = _latency_model(
            spec.agent_model, spec.gpu, c.agent_tp, c.agent_dtype, c.agent_ep, util
        ).kv_capacity_tokens(util)
        if c.kind == "fc":
            ctx = fc_peak_context(system, obs, action, steps)
        else:
            ctx = kso_peak_context(system, obs, action, summary, c.k, spec.retain, 1)
        ctx = min(ctx, spec.max_model_len)
        bound = max_agents(kv, ctx)
        mean = float(np.mean(lat))
        # a pruning heuristic, not a bound: past the KV bound the contexts that do not
        # fit are evicted and re-prefilled each step, n * (1 - bound / n) of them, priced
        # as prefills of half a peak context by the engine's surrogate
        miss = max(0, n - bound)
        half = ctx / 2.0
        c_one = surrogate(spec.agent_model, c.agent_tp, c.agent_dtype, c.agent_ep)
        refill = miss * (c_one[1] * half + c_one[2] * half * (half + 1) / 2.0)
        out.append(
            Estimate(
                c, mean, bound,
                optimistic=n > bound or c.memory_placement == "co-located",
                prune_step_s=mean + float(refill),
            )
        )  # fmt: skip
    return out


def estimated_objective(spec: PlanSpec, e: Estimate) -> float:
    """The objective as the closed form sees it (smaller is better): the step latency, or
    for steps per GPU minus ``agents / step latency / GPUs`` (each of the N agents in a
    closed loop completes a step per step latency)."""
    step = e.prune_step_s if math.isfinite(e.prune_step_s) else e.mean_step_s
    if spec.objective == "steps-per-gpu":
        return -spec.agents / step / e.candidate.gpus_used
    return step


#: k values simulated for each summarizing kind's best layout (the estimate's best few)
K_PER_KIND = 3


def select(spec: PlanSpec, estimates: list[Estimate]) -> list[Candidate]:
    """The candidates worth simulating: the ``top`` by estimate, each kind's two best
    layouts, full context's best in every weight dtype with and without offload (the
    verdict's baseline), and each summarizing kind's best layout at its
    :data:`K_PER_KIND` best k; an offload variant only past the KV bound
    (:func:`worth_simulating`)."""
    useful = [e for e in estimates if worth_simulating(spec, e)]
    by_estimate = sorted(
        useful, key=lambda e: (estimated_objective(spec, e), e.candidate.gpus_used)
    )
    chosen = [e.candidate for e in by_estimate[: spec.top]]
    for kind in spec.kinds:  # and the best two GPU layouts of every architecture
        layouts: set[tuple[Any, ...]] = set()
        for e in by_estimate:
            c = e.candidate
            layout = (c.agent_tp, c.agent_dp, c.agent_dtype, c.agent_ep, c.memory_placement)
            if c.kind != kind or layout in layouts:
                continue
            layouts.add(layout)
            if c not in chosen:
                chosen.append(c)
            if len(layouts) == 2:
                break
    # the verdict's baseline is the best full context simulated: every weight dtype's best
    # full-context layout is simulated, with and without CPU offload where offload is
    # worth simulating, since past the KV bound the closed form misranks them (a cheaper
    # dtype leaves more room for contexts, offload keeps the rest: the estimate prices
    # neither)
    best_fc: dict[tuple[str, bool], Candidate] = {}
    # one whose KV cache cannot hold a single task's peak context ends every task early
    # (a prompt must fit on the GPU whole, offload or not): a baseline only if none can
    for e in sorted(by_estimate, key=lambda e: e.kv_bound_agents < 1):
        if e.candidate.kind == "fc":
            best_fc.setdefault((e.candidate.agent_dtype, e.candidate.offload), e.candidate)
    chosen += [c for c in best_fc.values() if c not in chosen]
    # and each summarizing kind's best layout at its few best k (the estimate's k ranking
    # is the least sure of its choices: it prices summaries in lockstep)
    for kind in spec.kinds:
        if kind == "fc":
            continue
        mine = [e.candidate for e in by_estimate if e.candidate.kind == kind]
        if not mine:
            continue
        top = mine[0]
        same = [c for c in mine if replace(c, k=top.k) == top]  # its layout, any k
        chosen += [c for c in same[:K_PER_KIND] if c not in chosen]
    return chosen
