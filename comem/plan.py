"""``comem plan``: which deployment a user with G GPUs should run for N agents.

The question none of the peers answers: given an agent model, a memory model, G GPUs of
one type and N agents (a workload), which architecture (FC, CP, SM, CoMem k-step-off),
which split of the GPUs between agent and memory model (dedicated or co-located), which
TP / expert-parallel / data-parallel layout, which k, and CPU KV offload or not?

1. **Enumerate** every candidate that fits: weights in GPU memory (``fits_in_memory``),
   GPUs used <= G (and <= ``max_gpus``).
2. **Prune with theory** (``theory/``): each candidate's mean step latency from the exact
   lockstep closed form under its engines' linear surrogates (N / DP identical agents per
   replica), and the KV-capacity bound on agents (contexts that fit the cache at once).
   Past that bound the closed form is optimistic (it prices no preemption), and
   co-location's turn-taking is not in it: both are flagged.
3. **Confirm with the simulator** the ``top`` candidates by estimate, plus the best of
   every architecture kind, in parallel processes; results are kept in ``out/points/``
   so an interrupted plan resumes.
4. **Rank** by the objective (mean or p99 step latency, or steps per second per GPU)
   among those meeting the SLO and, with ``max_resolve_loss_pp``, losing at most that
   many points of resolve rate against the full-context agent at the pessimistic end of
   the fitted effectiveness model's 95% interval (:mod:`sim.effectiveness`); write the
   table (both columns), the Pareto fronts (latency vs GPUs, latency vs resolve rate)
   and the chosen deployment as a ready scenario file.

This module uses both ``sim`` and ``theory``, which may not import each other, so it
lives with the command line.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, PositiveInt, model_validator

from calibration.errors import ComemInputError
from calibration.inputs import MAX_SECONDS, MAX_TOKENS, InputModel, PathText

#: the most GPUs a plan enumerates deployments for (a larger count is a typo: the
#: enumeration grows with every divisor of it)
MAX_PLAN_GPUS = 4096

Objective = Literal["mean-step", "p99-step", "steps-per-gpu"]
Kind = Literal["fc", "cp", "sm", "kso"]
Dtype = Literal["bf16", "fp8"]
ALL_KINDS: tuple[Kind, ...] = ("fc", "cp", "sm", "kso")
ALL_DTYPES: tuple[Dtype, ...] = ("bf16", "fp8")

#: the authors' synthetic benchmark (AUTHORS_SETUP.md): how a trace or fitted workload's
#: mean step is priced by the closed form (the default workload itself is the default
#: experiment's, :data:`sim.paper.DEFAULT_SCENARIO`)
DEFAULT_WORKLOAD: dict[str, Any] = {
    "kind": "synthetic",
    "steps": 64,
    "system_tokens": 500,
    "observation_tokens": 200,
    "action_tokens": 1024,
    "summary_tokens": 2048,
    "tool_s": 0.0,
}


class PlanSpec(InputModel):
    """What the user has and wants (a TOML file's ``[plan]`` table, or CLI flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: left out: the default experiment's agent model (GLM-4.7)
    agent_model: PathText
    memory_model: PathText = "qwen3-4b"
    gpu: PathText = "h200_sxm"
    gpus: int = Field(default=8, ge=1, le=MAX_PLAN_GPUS)
    #: left out: the workload scenario's agent count (the default experiment's: 16)
    agents: PositiveInt
    #: a scenario file whose ``workload`` the agents run (default: the default
    #: experiment's, the authors' synthetic benchmark); ``agents`` replaces its agent count
    workload_scenario: PathText | None = None
    #: workload fields set on top of the workload scenario's (``--context-tokens`` and
    #: the other workload flags, mapped by :func:`sim.workload_flags.workload_fields`)
    workload_set: dict[str, Any] = Field(default_factory=dict)
    steps: PositiveInt | None = None
    objective: Objective = "mean-step"
    #: p99 step latency every chosen deployment must meet, seconds
    slo_step_s: Annotated[float, Field(gt=0.0, le=MAX_SECONDS, allow_inf_nan=False)] | None = None
    max_gpus: PositiveInt | None = None
    kinds: list[Kind] = Field(default_factory=lambda: list(ALL_KINDS), min_length=1)
    dtypes: list[Dtype] = Field(default_factory=lambda: list(ALL_DTYPES), min_length=1)
    k_values: list[Annotated[int, Field(ge=1, le=MAX_TOKENS)]] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32], min_length=1
    )
    retain: PositiveInt = 3
    offload: list[bool] = Field(default_factory=lambda: [False, True])
    offload_gib: float = Field(default=500.0, gt=0.0, le=1e6, allow_inf_nan=False)
    max_model_len: PositiveInt = 65536
    memory_max_model_len: PositiveInt = 131072
    #: candidates the simulator confirms (besides the best of each kind)
    top: PositiveInt = 6
    #: the full-context agent's resolve rate on these tasks (effectiveness baseline)
    baseline_resolve_rate: float = Field(default=0.5, gt=0.0, lt=1.0, allow_inf_nan=False)
    #: the memory model's summaries' loss scale against a generic LLM summarizer
    memory_loss_scale: float = Field(default=1.0, ge=0.0, le=10.0, allow_inf_nan=False)
    #: most resolve-rate points a chosen deployment may lose against full context, at the
    #: pessimistic end of the 95% interval (None: no constraint)
    max_resolve_loss_pp: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _from_the_default_experiment(cls, data: Any) -> Any:
        """What the user left out comes from the default experiment (or, for the agent
        count, from the workload scenario given), so a bare ``comem plan`` plans the
        experiment ``comem run`` runs."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("agent_model") is None:
            data["agent_model"] = _default_agent()["model"]
        if data.get("agents") is None:
            data["agents"] = scenario_workload(data.get("workload_scenario")).get("agents", 16)
        return data


@dataclass(frozen=True)
class Candidate:
    kind: str
    agent_tp: int
    agent_dp: int
    agent_dtype: str
    agent_ep: bool
    memory_tp: int  # 0: no memory engine
    memory_placement: str  # "dedicated", "co-located" or "none"
    k: int
    offload: bool

    @property
    def gpus_used(self) -> int:
        own = self.agent_tp * self.agent_dp
        return own + (self.memory_tp if self.memory_placement == "dedicated" else 0)

    @property
    def label(self) -> str:
        parts = [self.kind.upper()]
        if self.kind != "fc":
            parts.append(f"k={self.k}")
        lay = f"agent TP{self.agent_tp}"
        if self.agent_dp > 1:
            lay += f"xDP{self.agent_dp}"
        if self.agent_ep:
            lay += "+EP"
        parts.append(f"{lay} {self.agent_dtype}")
        if self.memory_placement != "none":
            parts.append(f"memory TP{self.memory_tp} {self.memory_placement}")
        if self.offload:
            parts.append("CPU offload")
        return ", ".join(parts)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _supports_ep() -> bool:
    from calibration.latency import LatencyModel

    return "expert_parallel" in inspect.signature(LatencyModel.__init__).parameters


@lru_cache(maxsize=256)
def _latency_model(model: str, gpu: str, tp: int, dtype: str, ep: bool, util: float) -> Any:
    from calibration.latency import LatencyModel

    kwargs: dict[str, Any] = {"expert_parallel": True} if ep else {}
    return LatencyModel(model, gpu, tp, dtype, **kwargs)


def _fits(model: str, gpu: str, tp: int, dtype: str, util: float) -> bool:
    from calibration.registry import fits_in_memory, get_gpu, get_model

    try:
        fits_in_memory(get_model(model), get_gpu(gpu), tp, dtype, util)
    except ComemInputError:
        return False
    return True


AGENT_UTIL_COLOCATED = 0.75
MEMORY_UTIL_COLOCATED = 0.15


def enumerate_candidates(spec: PlanSpec) -> list[Candidate]:
    """Every deployment of ``spec`` that fits its GPUs (step 1)."""
    from calibration.registry import get_gpu, get_model

    model = get_model(spec.agent_model)
    get_gpu(spec.gpu)  # an unknown GPU is that, not "no deployment fits"
    if {"sm", "kso"} & set(spec.kinds):
        get_model(spec.memory_model)  # a broken config is its own error, not "fits nowhere"
    limit = min(spec.gpus, spec.max_gpus or spec.gpus)
    tps = [t for t in (1, 2, 4, 8) if t <= limit]
    dps = [d for d in (1, 2, 4, 8) if d <= limit]
    eps = [False, True] if model.is_moe and _supports_ep() else [False]
    out: list[Candidate] = []
    for kind in spec.kinds:
        ks = [1] if kind == "fc" else list(spec.k_values)
        for tp in tps:
            for dp in dps:
                for dtype in spec.dtypes:
                    for ep in eps:
                        if ep and (tp == 1 or dp > 1):  # EP across DP ranks: not modelled
                            continue
                        if not _fits(spec.agent_model, spec.gpu, tp, dtype, 0.9):
                            continue
                        placements: list[tuple[str, int]] = [("none", 0)]
                        if kind in ("sm", "kso"):  # only where the memory model fits too
                            placements = [
                                ("dedicated", m)
                                for m in (1, 2, 4)
                                if m <= limit and _fits(spec.memory_model, spec.gpu, m, "bf16", 0.9)
                            ]
                            if (
                                dp == 1
                                and _fits(
                                    spec.agent_model, spec.gpu, tp, dtype, AGENT_UTIL_COLOCATED
                                )
                                and _fits(
                                    spec.memory_model, spec.gpu, tp, "bf16", MEMORY_UTIL_COLOCATED
                                )
                            ):
                                placements.append(("co-located", tp))
                        for place, mtp in placements:
                            for k in ks:
                                for off in spec.offload:
                                    c = Candidate(kind, tp, dp, dtype, ep, mtp, place, k, off)
                                    if c.gpus_used <= limit:
                                        out.append(c)
    if not out:
        memory = (
            f" (SM and KSO also need the memory model {spec.memory_model} to fit)"
            if set(spec.kinds) & {"sm", "kso"}
            else ""
        )
        raise ComemInputError(
            f"plan: no deployment of {spec.agent_model} fits {limit} x {spec.gpu}"
            f" in {', '.join(spec.dtypes)}{memory}"
        )
    return out


def left_out_kinds(spec: PlanSpec, candidates: list[Candidate]) -> list[str]:
    """A warning per asked architecture kind that no candidate has (SM and KSO where the
    memory model fits no GPU layout): the plan goes on with the others, and says so."""
    have = {c.kind for c in candidates}
    return [
        f"{kind.upper()}: no deployment fits (the memory model {spec.memory_model} fits no"
        f" layout of {spec.gpu} beside the agent model); left out of the plan"
        for kind in spec.kinds
        if kind not in have
    ]


def scenario_workload(path: Any) -> dict[str, Any]:
    """The ``[workload]`` table of a scenario file (None: the default experiment's)."""
    from sim.config import read_toml
    from sim.paper import DEFAULT_SCENARIO

    where = str(path if path is not None else DEFAULT_SCENARIO)
    data = read_toml(where, "scenario")
    raw = data.get("workload")
    if not isinstance(raw, dict) or not raw:
        got = "" if raw is None else f" (workload is {type(raw).__name__}, not a table)"
        raise ComemInputError(f"{where}: no [workload] table{got}")
    return dict(raw)


@lru_cache(maxsize=1)
def _default_agent() -> dict[str, Any]:
    """The default experiment's CoMem agent engine (its model is plan's default)."""
    from sim.config import read_toml
    from sim.paper import DEFAULT_SCENARIO

    archs = read_toml(str(DEFAULT_SCENARIO), "scenario")["architectures"]
    return dict(next(a for a in archs if a["kind"] != "fc")["agent"])


def _workload(spec: PlanSpec) -> dict[str, Any]:
    """The workload table the candidates run, checked by the scenario's own model (a
    field left at its default, a misspelt one or a ``workload`` that is no table is one
    line naming the file, not a KeyError later)."""
    from sim.paper import DEFAULT_SCENARIO

    where = str(spec.workload_scenario or DEFAULT_SCENARIO)
    workload = scenario_workload(spec.workload_scenario)
    workload.update(spec.workload_set)
    workload["agents"] = spec.agents
    if spec.steps is not None:
        # a trace or fitted workload cuts its tasks at max_steps
        kind = workload.get("kind", "synthetic")
        workload["steps" if kind == "synthetic" else "max_steps"] = spec.steps
    _workload_model(workload, where)
    return workload


def _workload_model(workload: dict[str, Any], where: str) -> Any:
    from sim.config import validate
    from sim.scenario import UNION_TAGS, Scenario

    return validate(Scenario, {"workload": workload}, where, UNION_TAGS).workload


def scenario_dict(spec: PlanSpec, c: Candidate) -> dict[str, Any]:
    """The scenario that runs candidate ``c`` (also the file written for the chosen one)."""
    agent: dict[str, Any] = {
        "name": "agent",
        "model": spec.agent_model,
        "gpu": spec.gpu,
        "tp": c.agent_tp,
        "dtype": c.agent_dtype,
        "max_model_len": spec.max_model_len,
    }
    if c.agent_dp > 1:
        agent["data_parallel_size"] = c.agent_dp
    if c.agent_ep:
        agent["enable_expert_parallel"] = True
    arch: dict[str, Any] = {"name": c.kind.upper(), "kind": c.kind}
    if c.kind != "fc":
        arch.update({"k": c.k, "lag": 1, "retain": spec.retain})
    if c.offload:
        agent["kv_offloading_size"] = spec.offload_gib
    if c.memory_placement != "none":
        memory: dict[str, Any] = {
            "name": "memory",
            "model": spec.memory_model,
            "gpu": spec.gpu,
            "tp": c.memory_tp,
            "dtype": "bf16",
            "max_model_len": spec.memory_max_model_len,
        }
        if c.memory_placement == "co-located":
            agent["gpu_group"] = memory["gpu_group"] = "agent-gpus"
            agent["gpu_memory_utilization"] = AGENT_UTIL_COLOCATED
            memory["gpu_memory_utilization"] = MEMORY_UTIL_COLOCATED
        arch["memory"] = memory
    arch["agent"] = agent
    return {
        "name": f"plan: {c.label}",
        "description": f"comem plan candidate for {spec.agents} agents on {spec.gpus} x {spec.gpu}",
        "seed": 0,
        "engine": {"stepping": "event"},
        "workload": _workload(spec),
        "effectiveness": {
            "baseline_resolve_rate": spec.baseline_resolve_rate,
            "memory_loss_scale": spec.memory_loss_scale,
        },
        "architectures": [arch],
    }


@dataclass
class Estimate:
    candidate: Candidate
    mean_step_s: float  # the closed form's, per replica of N / DP agents in lockstep
    kv_bound_agents: int  # agents per replica whose contexts fit the KV cache at once
    optimistic: bool  # past the KV bound, or co-located (the closed form is a bound)
    #: what pruning ranks by: the closed form plus the recomputation the KV cache forces
    #: past its bound (the share of contexts that do not fit, re-prefilled every step)
    prune_step_s: float = math.nan


def estimate(spec: PlanSpec, candidates: list[Candidate]) -> list[Estimate]:
    """Step 2: the closed form and the KV bound for every candidate."""
    import numpy as np

    from calibration.surrogate import fit_surrogate
    from sim.scenario import SyntheticWorkload
    from theory.bounds import fc_peak_context, kso_peak_context, max_agents
    from theory.single_agent import AgentParams, lockstep_coefficients, step_latencies

    raw = _workload(spec)
    model = _workload_model(raw, str(spec.workload_scenario or "plan"))
    if not isinstance(model, SyntheticWorkload):
        # a trace or fitted workload: price its mean step as the synthetic one
        base = {**DEFAULT_WORKLOAD, "agents": spec.agents, "summary_tokens": model.summary_tokens}
        model = _workload_model(base, "plan")
    steps = int(spec.steps or model.steps)
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
            k=np.array(c.k), retain=np.array(spec.retain), lag=np.array(1),
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


def _simulate(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """Run one candidate's scenario (in a worker process)."""
    from sim.compare import architecture_summary
    from sim.config import validate
    from sim.scenario import Scenario, run_scenario

    data, key = job
    scenario = validate(Scenario, data, "plan", frozenset({"synthetic", "trace", "fitted"}))
    res = run_scenario(scenario).results[0]
    s = architecture_summary(res)
    return {
        "key": key,
        "mean_step_s": s["mean_step_latency_s"],
        "p99_step_s": s["p99_step_latency_s"],
        "steps_per_s": s["throughput_steps_per_s"],
        "tasks_ended_early": s["tasks_ended_early"],
        "tasks": s["tasks"],
        "preemptions": s["preemptions"],
        "kv_peak": s["kv_peak_fraction"],
    }


#: what a point file holds, checked when a plan resumes from it
POINT_FIELDS = ("mean_step_s", "p99_step_s", "steps_per_s", "tasks_ended_early", "preemptions")


def point_key(spec: PlanSpec, c: Candidate) -> str:
    """The name of candidate ``c``'s point file: a hash of everything its simulation
    depends on, the whole scenario it runs (agents, models, GPU, workload, limits) and
    the bytes of the files that scenario reads (a trace, a model's config.json), so a plan
    re-run with other ``--agents`` (or model, or workload) in the same ``--out`` never
    reads another question's results: both sets of points coexist."""
    from calibration.inputs import files_digest

    scenario = scenario_dict(spec, c)
    digest = hashlib.sha256(json.dumps(scenario, sort_keys=True, default=str).encode())
    digest.update(files_digest(scenario).encode())
    return digest.hexdigest()[:24]


def _read_point(f: Path, key: str) -> dict[str, Any] | None:
    """A point file's result, or None when it is damaged (truncated, empty, another
    shape): the candidate is then simulated again, the file replaced."""
    from calibration.inputs import read_json

    if not f.exists():
        return None
    try:
        value = read_json(f, "plan point")  # its size limit; any defect: simulate again
    except ComemInputError:
        return None
    if not isinstance(value, dict) or value.get("point") != key:
        return None
    for name in POINT_FIELDS:
        v = value.get(name)
        if isinstance(v, bool) or not isinstance(v, int | float):  # NaN: no step finished
            return None
        if v < 0 or v == math.inf:  # no simulation writes a negative or infinite figure
            return None
    tasks = value.get("tasks")
    if isinstance(tasks, int) and not 0 <= value["tasks_ended_early"] <= tasks:
        return None
    return value


def _cost(spec: PlanSpec, c: Candidate) -> tuple[int, int]:
    """Rough relative cost of simulating ``c``, for starting the longest first: a memory
    engine on the agent's GPUs, then one of its own, then none; more agents per replica."""
    placement = {"co-located": 2, "dedicated": 1}.get(c.memory_placement, 0)
    return placement, math.ceil(spec.agents / c.agent_dp)


def confirm(
    spec: PlanSpec,
    candidates: list[Candidate],
    workers: int = 1,
    points: Path | None = None,
    on_done: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Step 3: simulate candidates, the costliest first (resuming from ``points``: one JSON
    file per candidate, named by :func:`point_key`). Returns results by
    ``Candidate.key()``; the result does not depend on the number of workers."""
    done: dict[str, dict[str, Any]] = {}
    todo = []
    files: dict[str, str] = {}  # candidate key -> point key
    for c in sorted(candidates, key=lambda c: _cost(spec, c), reverse=True):
        pk = files[c.key()] = point_key(spec, c)
        kept = _read_point(points / f"{pk}.json", pk) if points is not None else None
        if kept is not None:
            done[c.key()] = {**kept, "key": c.key()}
            if on_done is not None:
                on_done()
        else:
            todo.append((scenario_dict(spec, c), c.key()))

    def keep(result: dict[str, Any]) -> None:
        done[result["key"]] = result
        if points is not None:
            pk = files[result["key"]]
            points.mkdir(parents=True, exist_ok=True)
            tmp = points / f".{pk}.tmp"
            tmp.write_text(json.dumps({**result, "point": pk}, sort_keys=True))
            tmp.replace(points / f"{pk}.json")
        if on_done is not None:
            on_done()

    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            keep(_simulate(job))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            for fut in as_completed([pool.submit(_simulate, job) for job in todo]):
                keep(fut.result())
    return done


@dataclass
class PlanRow:
    rank: int
    label: str
    gpus: int
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


def objective_value(spec: PlanSpec, row: PlanRow) -> float:
    """Smaller is better (steps per GPU is negated)."""
    if spec.objective == "mean-step":
        return row.mean_step_s
    if spec.objective == "p99-step":
        return row.p99_step_s
    return -row.steps_per_s_per_gpu


def estimated_objective(spec: PlanSpec, e: Estimate) -> float:
    """The objective as the closed form sees it (smaller is better): the step latency, or
    for steps per GPU minus ``agents / step latency / GPUs`` (each of the N agents in a
    closed loop completes a step per step latency)."""
    step = e.prune_step_s if math.isfinite(e.prune_step_s) else e.mean_step_s
    if spec.objective == "steps-per-gpu":
        return -spec.agents / step / e.candidate.gpus_used
    return step


def select(spec: PlanSpec, estimates: list[Estimate]) -> list[Candidate]:
    """The candidates worth simulating: the ``top`` by estimate, and each kind's two best.

    CPU offload only changes anything once the contexts outgrow the GPU cache (the closed
    form prices no offload), so an offload variant is simulated only past the KV bound."""
    n = spec.agents
    useful = [
        e
        for e in estimates
        if not e.candidate.offload or math.ceil(n / e.candidate.agent_dp) > e.kv_bound_agents
    ]
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
    return chosen


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
            0, c.label, c.gpus_used, e.mean_step_s, e.kv_bound_agents, e.optimistic,
            simulated=c.key() in simulated, candidate=asdict(c),
            moe_dp_pessimistic=moe and c.agent_dp > 1 and not c.agent_ep,
        )  # fmt: skip
        sim = simulated.get(c.key())
        if sim is not None:
            row.mean_step_s = sim["mean_step_s"]
            row.p99_step_s = sim["p99_step_s"]
            row.steps_per_s_per_gpu = sim["steps_per_s"] / c.gpus_used
            row.tasks_ended_early = sim["tasks_ended_early"]
            row.preemptions = sim["preemptions"]
            row.meets_slo = (
                spec.slo_step_s is None or row.p99_step_s <= spec.slo_step_s
            ) and row.tasks_ended_early == 0
        ended = sim["tasks_ended_early"] / max(sim.get("tasks", spec.agents), 1) if sim else 0.0
        _effectiveness(spec, c, ended, row)
        rows.append(row)

    def order(r: PlanRow) -> tuple[Any, ...]:
        if r.simulated:
            return (0, not (r.meets_slo and r.meets_resolve), objective_value(spec, r), r.gpus)
        return (1, True, r.estimate_mean_step_s, r.gpus)

    rows.sort(key=order)
    for i, r in enumerate(rows, 1):
        r.rank = i
    return rows


def _effectiveness(spec: PlanSpec, c: Candidate, ended_early: float, row: PlanRow) -> None:
    """Fill ``row``'s resolve-rate fields (against the full-context agent that finishes
    its tasks) and whether it meets ``max_resolve_loss_pp``."""
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
    policy = PolicyParams(kind=c.kind, k=c.k, lag=1, retain=spec.retain)
    rate = resolve_rate(policy_features(policy), params, ended_early=ended_early)
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


def check_cost(spec: PlanSpec, candidates: list[Candidate]) -> None:
    """Refuse a plan whose candidates would cost more than the budgets
    (:mod:`calibration.limits`): each one as a run, all of them as a sweep."""
    from calibration import limits
    from sim.config import validate
    from sim.scenario import UNION_TAGS, Scenario, agent_steps
    from sim.scenario import check_cost as check_scenario

    total = 0
    for c in candidates:
        scenario = validate(Scenario, scenario_dict(spec, c), "plan", UNION_TAGS)
        check_scenario(scenario, f"plan: {c.label}")
        total += agent_steps(scenario)[0]
    limits.check(
        limits.SWEEP_AGENT_STEPS, total, f"plan: {len(candidates)} candidates to simulate (--top)"
    )


def table_markdown(rows: list[PlanRow], limit: int = 15) -> str:
    head = (
        "| rank | deployment | GPUs | mean step s (sim) | p99 step s (sim) | steps/s/GPU"
        " (sim) | mean step s (theory) | KV bound (agents/replica) | resolve % [95%] |"
        " resolve pp vs FC [95%] | notes |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows[:limit]:
        notes = []
        if r.estimate_optimistic:
            notes.append("theory optimistic")
        if r.moe_dp_pessimistic:
            notes.append("MoE DP pessimistic")
        if r.simulated and not r.meets_slo:
            notes.append("misses SLO" if r.tasks_ended_early == 0 else "tasks ended early")
        if not r.simulated:
            notes.append("not simulated")
        if not r.meets_resolve:
            notes.append("loses too many resolved tasks")
        if r.resolve_rate_extrapolated:
            notes.append("resolve rate extrapolated")
        fmt = (lambda v: f"{v:.2f}") if True else str
        sim = [fmt(r.mean_step_s), fmt(r.p99_step_s), f"{r.steps_per_s_per_gpu:.3f}"]
        if not r.simulated:
            sim = ["-", "-", "-"]
        lines.append(
            f"| {r.rank} | {r.label} | {r.gpus} | " + " | ".join(sim)
            + f" | {r.estimate_mean_step_s:.2f} | {r.kv_bound_agents} | {_resolve_cells(r)}"
            + f" | {', '.join(notes)} |"
        )  # fmt: skip
    return head + "\n".join(lines) + "\n"


def _resolve_cells(r: PlanRow) -> str:
    """The two effectiveness cells of a table row."""
    return (
        f"{100 * r.resolve_rate:.1f} [{100 * r.resolve_rate_low:.1f},"
        f" {100 * r.resolve_rate_high:.1f}]"
        f" | {r.resolve_rate_delta_pp:+.1f} [{r.resolve_rate_delta_pp_low:+.1f},"
        f" {r.resolve_rate_delta_pp_high:+.1f}]"
    )


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


def write_scenario(spec: PlanSpec, rows: list[PlanRow], path: Path) -> Path:
    """The chosen deployment as a scenario file ``comem run`` takes, with the best
    full-context deployment the plan simulated first as its baseline (so ``comem run``
    of the file prints the speedup the plan ranked by)."""
    c = Candidate(**rows[0].candidate)
    data = scenario_dict(spec, c)
    lines = [
        f"# Chosen by comem plan: {c.label}",
        f"# for {spec.agents} agents on {spec.gpus} x {spec.gpu}, objective {spec.objective}",
    ]
    fc = next(
        (Candidate(**r.candidate) for r in rows if r.simulated and r.candidate["kind"] == "fc"),
        None,
    )
    if c.kind != "fc" and fc is not None:
        lines.append(f"# baseline: the best full-context deployment simulated, {fc.label}")
        data["architectures"] = scenario_dict(spec, fc)["architectures"] + data["architectures"]
        data["name"] = f"plan: {c.label} vs {fc.label}"
    elif c.kind != "fc":
        lines.append("# no full-context deployment was simulated (--kinds): no baseline")
    lines.append(_toml(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def assumptions(spec: PlanSpec) -> list[str]:
    """What the plan assumed, one line each (printed before its table)."""
    from sim.describe import workload
    from sim.paper import DEFAULT_SCENARIO

    source = spec.workload_scenario or f"the default experiment's ({DEFAULT_SCENARIO.name})"
    model = _workload_model(_workload(spec), str(source))
    set_text = ", with " + ", ".join(f"{k} = {v}" for k, v in spec.workload_set.items())
    set_text = set_text if spec.workload_set else ""
    offload = {(False,): "off", (True,): "on", (False, True): "both", (True, False): "both"}
    return [
        f"workload (from {source}{set_text}): {workload(model)}",
        f"agent {spec.agent_model} on at most {min(spec.gpus, spec.max_gpus or spec.gpus)}"
        f" x {spec.gpu}, dtypes {' '.join(spec.dtypes)}, max_model_len {spec.max_model_len};"
        " TP and DP of 1, 2, 4 or 8 within those GPUs, EP where MoE",
        f"memory model {spec.memory_model} bf16 (TP 1-4 dedicated, or co-located sharing the"
        f" agent's GPUs: memory split {AGENT_UTIL_COLOCATED} / {MEMORY_UTIL_COLOCATED}),"
        f" max_model_len {spec.memory_max_model_len}",
        f"kinds {' '.join(spec.kinds)}; k tried {' '.join(map(str, spec.k_values))}; retain"
        f" {spec.retain}, lag 1; CPU KV offload {offload[tuple(spec.offload)]}"
        f" ({spec.offload_gib:g} GiB)",
        f"resolve rates: full context {spec.baseline_resolve_rate:.0%} on these tasks"
        f" (assumed), memory-model loss scale {spec.memory_loss_scale:g}",
    ]


def verdict(rows: list[PlanRow]) -> str:
    """The chosen deployment against the best full-context one simulated, by mean step
    latency (what ``comem run`` of chosen_scenario.toml prints as its verdict)."""
    best = rows[0]
    fc = next((r for r in rows if r.simulated and r.candidate["kind"] == "fc"), None)
    if best.candidate["kind"] == "fc" or fc is None or not best.mean_step_s > 0:
        return f"verdict: {best.label} (no full-context deployment to compare with)"
    x = fc.mean_step_s / best.mean_step_s
    word = "faster" if x >= 1 else "slower"
    return (
        f"verdict: {best.label} is {max(x, 1 / x):.2f}x {word} than the best full context"
        f" ({fc.label}) by mean step latency over its own steps (speedup {x:.2f}x);"
        " chosen_scenario.toml holds both: comem run it for every metric on the same steps"
    )


def edge_warnings(spec: PlanSpec, rows: list[PlanRow]) -> list[str]:
    """The chosen deployment on the edge of what the plan searched: a better one may lie
    beyond it."""
    c = Candidate(**rows[0].candidate)
    out = []
    ks = sorted(set(spec.k_values))
    if c.kind != "fc" and len(ks) > 1 and c.k in (ks[0], ks[-1]):
        hint = _k_hint(c.k, c.k == ks[-1], spec.steps)
        if hint:
            side = "largest" if c.k == ks[-1] else "smallest"
            out.append(
                f"the best k ({c.k}) is the {side} tried (--k {' '.join(map(str, ks))}):"
                f" a better one may lie beyond; {hint}"
            )
    # the agent TP at the user's own GPU budget (--gpus / --max-gpus) is their choice,
    # not an edge of the search; at the largest TP the plan tries it is
    limit = min(spec.gpus, spec.max_gpus or spec.gpus)
    tps = [t for t in (1, 2, 4, 8) if t <= limit]
    if len(tps) > 1 and c.agent_tp == tps[-1] and tps[-1] < limit:
        out.append(
            f"the best agent TP ({c.agent_tp}) is the largest the plan tries, with"
            f" {limit} GPUs allowed: a larger deployment may be better"
        )
    return out


def _k_hint(k: int, largest: bool, steps: int | None) -> str:
    """Which k to try next: the neighbours beyond the edge (never 0, and never a k of a
    task's whole length or more, which would never summarize); '' when there are none."""
    if largest:
        beyond = [k + k // 2, 2 * k]
        beyond = [x for x in beyond if steps is None or x < steps]
    else:
        beyond = [x for x in (k // 2, (3 * k) // 4) if x >= 1]
    beyond = sorted(set(beyond) - {k})
    if not beyond:
        return ""
    return f"try --k {' '.join(map(str, sorted({*beyond, k})))}"


def _toml(data: dict[str, Any]) -> str:
    """A small TOML writer for scenario dicts (tables, arrays of tables, inline tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    out = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    for k, v in scalars.items():
        out.append(f"{k} = {value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(f"\n[{k}]")
            out.extend(f"{kk} = {value(vv)}" for kk, vv in v.items())
    for k, v in data.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                out.append(f"\n[[{k}]]")
                out.extend(f"{kk} = {value(vv)}" for kk, vv in item.items())
    return "\n".join(out) + "\n"
