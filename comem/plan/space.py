"""Step 1 of ``comem plan``: what the user has and wants (:class:`PlanSpec`) and every
deployment of it that fits the GPUs (:class:`Candidate`, :func:`enumerate_candidates`).

What the user leaves out comes from the default experiment (its agent model, its
workload's agent count)."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from calibration.errors import ComemInputError
from calibration.inputs import MAX_SECONDS, MAX_TOKENS, InputModel, PathText

#: the most GPUs a plan enumerates deployments for (a larger count is a typo: the
#: enumeration grows with every divisor of it)
MAX_PLAN_GPUS = 4096


Objective = Literal["mean-step", "p99-step", "steps-per-gpu"]


Kind = Literal["fc", "cp", "sm", "kso"]


Dtype = Literal["bf16", "fp8", "fp4", "int4", "mxfp4"]


ALL_KINDS: tuple[Kind, ...] = ("fc", "cp", "sm", "kso")


#: the weight dtypes tried by default, besides the checkpoint's own (:func:`default_dtypes`)
ALL_DTYPES: tuple[Dtype, ...] = ("bf16", "fp8")


def default_dtypes(agent_model: Any) -> list[str]:
    """bf16, fp8 and the dtype the checkpoint ships in (gpt-oss's MXFP4, an int4 or NVFP4
    checkpoint), as vLLM loads it; a model name that cannot be read is left to the
    model's own error later."""
    from calibration.registry import checkpoint_dtype

    out: list[str] = list(ALL_DTYPES)
    try:
        own = checkpoint_dtype(str(agent_model))
    except (ComemInputError, OSError, ValueError, TypeError):  # its own error comes later
        return out
    return out if own in out else [*out, own]


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
    agent_model: PathText = Field(description="agent model (alias, HF id or config.json)")
    memory_model: PathText = Field(default="qwen3-4b", description="memory model [{default}]")
    gpu: PathText = Field(default="h200_sxm", description="GPU type [{default}]")
    gpus: int = Field(default=8, ge=1, le=MAX_PLAN_GPUS, description="GPUs available [{default}]")
    #: left out: the workload scenario's agent count (the default experiment's: 16)
    agents: PositiveInt
    #: a scenario file whose ``workload`` the agents run (default: the default
    #: experiment's, the authors' synthetic benchmark); ``agents`` replaces its agent count
    workload_scenario: PathText | None = Field(
        default=None,
        description="scenario file whose [workload] the agents run [the default experiment's]",
        json_schema_extra={"flags": ["--workload"]},
    )
    #: workload fields set on top of the workload scenario's (``--context-tokens`` and
    #: the other workload flags, mapped by :func:`sim.workload_flags.workload_fields`)
    workload_set: dict[str, Any] = Field(default_factory=dict)
    steps: PositiveInt | None = None
    objective: Objective = "mean-step"
    #: p99 step latency every chosen deployment must meet, seconds
    slo_step_s: Annotated[float, Field(gt=0.0, le=MAX_SECONDS, allow_inf_nan=False)] | None = Field(
        default=None,
        description="p99 step latency to meet, seconds",
        json_schema_extra={"flags": ["--slo"]},
    )
    max_gpus: PositiveInt | None = None
    kinds: list[Kind] = Field(default_factory=lambda: list(ALL_KINDS), min_length=1)
    #: left out: bf16, fp8 and the checkpoint's own dtype (:func:`default_dtypes`)
    dtypes: list[Dtype] = Field(
        default_factory=lambda: list(ALL_DTYPES),
        min_length=1,
        description="weight dtypes to try [bf16 fp8 and the checkpoint's own]",
    )
    k_values: list[Annotated[int, Field(ge=1, le=MAX_TOKENS)]] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32],
        min_length=1,
        description="k values to try [{default}]",
        json_schema_extra={"flags": ["--k"]},
    )
    retain: PositiveInt = 3
    #: steps from a summary's launch to its swap, for every summarizing candidate (not
    #: searched: a longer lag hides more of a slow summary, and 1 is the authors')
    lag: NonNegativeInt = Field(
        default=1,
        le=MAX_TOKENS,
        description="steps from a summary's launch to its swap [{default}; not searched:"
        " try a few, a longer lag hides more of a slow summary]",
    )
    offload: list[bool] = Field(default_factory=lambda: [False, True])
    offload_gib: float = Field(default=500.0, gt=0.0, le=1e6, allow_inf_nan=False)
    max_model_len: PositiveInt = Field(
        default=65536,
        le=MAX_TOKENS,
        description="the agent engine's max_model_len [{default}, the default experiment's]:"
        " a full-context task whose prompt outgrows it ends early and resolves nothing",
    )
    memory_max_model_len: PositiveInt = Field(
        default=131072, le=MAX_TOKENS, description="the memory engine's max_model_len [{default}]"
    )
    #: candidates the simulator confirms (besides the best of each kind)
    top: PositiveInt = Field(
        default=6, description="candidates to simulate [{default} + best per kind]"
    )
    #: the full-context agent's resolve rate on these tasks (effectiveness baseline)
    baseline_resolve_rate: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="the full-context agent's resolve rate on these tasks, in (0, 1) [{default}]",
    )
    #: the memory model's summaries' loss scale against a generic LLM summarizer
    memory_loss_scale: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="memory-model summaries' loss against a generic LLM summarizer"
        " (0: lossless) [1]",
    )
    #: most resolve-rate points a chosen deployment may lose against full context, at the
    #: pessimistic end of the 95% interval (None: no constraint)
    max_resolve_loss_pp: float | None = Field(
        default=None,
        ge=0.0,
        le=100.0,
        allow_inf_nan=False,
        description="most resolve-rate points a deployment may lose against full context (the"
        " fitted model's pessimistic 95% end; it holds one run's spread, so even a lossless"
        " summarizer reaches about -3 pp at a 50% baseline, -2.4 at 74%) [no limit]",
        json_schema_extra={"flags": ["--max-resolve-loss"], "metavar": "PP"},
    )

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
        if data.get("max_model_len") is None and data.get("workload_scenario") is not None:
            # the context limit the scenario's agent runs with: its tasks were sized for it
            data["max_model_len"] = scenario_max_model_len(data["workload_scenario"])
        if data.get("dtypes") is None:
            data["dtypes"] = default_dtypes(data["agent_model"])
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


def _fits(model: str, gpu: str, tp: int, dtype: str, util: float) -> bool:
    """Whether the weights and vLLM's profiling run (the reserve the engine itself
    checks, :meth:`calibration.latency.LatencyModel.reserve_bytes`, at vLLM's default
    batch limits) fit ``util`` of each of ``tp`` GPUs: a flat 1 GiB reserve let a
    70B fp8 model onto one H100 here, and the engine then refused it, ending the plan."""
    from calibration.registry import fits_in_memory, get_gpu, get_model, profile_run_bytes

    try:
        spec = get_model(model)
        fits_in_memory(spec, get_gpu(gpu), tp, dtype, util, profile_run_bytes(spec, tp))
    except ComemInputError:
        return False
    return True


#: the GPU memory shares of an agent and a memory engine co-located on the same GPUs
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
    offloads = offload_choices(spec)
    dtypes = usable_dtypes(spec)
    out: list[Candidate] = []
    for kind in spec.kinds:
        ks = [1] if kind == "fc" else list(spec.k_values)
        for tp in tps:
            for dp in dps:
                for dtype in dtypes:
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
                                for off in offloads:
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
            f" in {', '.join(dtypes)}{memory}"
        )
    return out


def usable_dtypes(spec: PlanSpec) -> list[str]:
    """``spec.dtypes`` the GPU has a calibration for and the model can take (int4 and
    MXFP4 are weight-only expert formats: MoE models only); refused when none is left."""
    from calibration.dtypes import EXPERT_ONLY_DTYPES
    from calibration.profile import available_profiles
    from calibration.registry import get_model

    calibrated = {d for g, _, d in available_profiles() if g == spec.gpu}
    moe = get_model(spec.agent_model).is_moe
    out: list[str] = [
        d for d in spec.dtypes if d in calibrated and (moe or d not in EXPERT_ONLY_DTYPES)
    ]
    if not out:
        raise ComemInputError(
            f"plan: --dtypes {' '.join(spec.dtypes)}: none is calibrated on {spec.gpu}"
            f" for {spec.agent_model} (calibrated: {', '.join(sorted(calibrated)) or 'none'};"
            " int4 and mxfp4 are expert formats, for MoE models)"
        )
    return out


def offload_not_modelled(spec: PlanSpec) -> str:
    """Why CPU KV offload is not planned for the agent model ('' where it is): vLLM's
    offloading connector turns the hybrid KV-cache manager off, which the simulator does
    not model, for models with sliding-window or linear-attention layers."""
    from calibration.registry import get_model

    model = get_model(spec.agent_model)
    if not (model.sliding_layers or model.linear_layers):
        return ""
    return (
        f"{spec.agent_model} has sliding-window or linear-attention layers: vLLM's KV"
        " offloading turns its hybrid KV-cache manager off, which is not modelled"
    )


def offload_choices(spec: PlanSpec) -> list[bool]:
    """``spec.offload`` without offload where it is not modelled; refused when nothing
    is left."""
    why = offload_not_modelled(spec)
    if not why:
        return list(spec.offload)
    if False not in spec.offload:
        raise ComemInputError(f"plan: --offload on: {why}; use --offload off")
    return [False]


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


def scenario_max_model_len(path: Any) -> int:
    """The agent ``max_model_len`` of a scenario file: its full-context architecture's (else
    its first architecture's), or the engine default where the file sets none; a value
    the scenario itself would refuse is refused here, naming the file and the field."""
    from sim.config import EngineConfig, read_toml, validate

    archs = read_toml(str(path), "scenario").get("architectures")
    archs = [a for a in archs if isinstance(a, dict)] if isinstance(archs, list) else []
    fc: dict[str, Any] = next(
        (a for a in archs if a.get("kind") == "fc"), archs[0] if archs else {}
    )
    agent = fc.get("agent")
    value = agent.get("max_model_len") if isinstance(agent, dict) else None
    if value is None:
        return int(EngineConfig.model_fields["max_model_len"].default)
    where = f"{path}: architectures.{archs.index(fc)}.agent"
    return validate(EngineConfig, {"max_model_len": value}, where).max_model_len


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
