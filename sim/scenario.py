"""Scenarios: engines, architectures to compare, workload, concurrency, seed.

A scenario is a TOML file validated by pydantic (every field has a default; unknown
keys are rejected); ``--set a.b=value`` overrides any field. ``run_scenario`` runs every
architecture on the same sampled tasks (common random numbers), each in its own
simulation with its own engines, and returns tidy tables plus a summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import simpy
from pydantic import (
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    model_validator,
)

from calibration import limits
from calibration.errors import ComemInputError
from calibration.inputs import InputModel, Name, Seconds, Tokens, TokensOrZero
from engine.kv_cache import StreamSpace
from sim.actions import Step, Task
from sim.agents import Agent, AgentRecorder
from sim.compare import architecture_summary, compare, summaries_made
from sim.config import EngineConfig, Stepping, apply_overrides, read_toml, validate
from sim.deployment import build_engines, check_gpu_groups, simulation_gc
from sim.effectiveness import EffectivenessParams, architecture_effectiveness
from sim.engine_latency import IterationLatency
from sim.kv_geometry import check_engine
from sim.metrics import MetricsRecorder
from sim.policy import PolicyParams, uses_memory
from sim.rows import agent_request_columns
from sim.workloads import AgentLoad, FittedWorkload, TraceWorkload


class _Strict(InputModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineDefaults(_Strict):
    """Settings applied to every engine of the scenario."""

    #: 'event' jumps over runs of identical iterations (results equal 'iteration', the
    #: one-SimPy-step-per-iteration reference, to rounding); 'fast' is an old name of 'event'
    stepping: Stepping = "event"


class SyntheticWorkload(AgentLoad):
    """Fixed per-step tokens, as in the CoMem authors' latency benchmark.

    Their benchmark exactly (AUTHORS_SETUP.md, "Their synthetic latency benchmark"):
    ``system_tokens = 500`` (the problem statement), ``first_observation_tokens = 0``,
    ``observation_tokens = 200``, ``input_target_tokens = 512``, ``action_tokens =
    1024``, ``summary_tokens = 2048``, 64 steps, tool time 0 (``scenarios/
    authors_synthetic.toml``).
    """

    kind: Literal["synthetic"] = "synthetic"
    #: steps per task
    steps: PositiveInt = 64
    #: system and task prompt, read before the first step
    system_tokens: Tokens = 512
    #: tokens each step's observation (tool output) adds to the prompt
    observation_tokens: Tokens = 512
    #: the first step's observation (None: ``observation_tokens``); 0 when the first
    #: request reads the system and task prompt alone
    first_observation_tokens: TokensOrZero | None = None
    #: tokens each step's action decodes (and keeps in the context)
    action_tokens: Tokens = 1024
    #: agent requests with shorter prompts are padded up to it, in the request only
    #: (not kept in the history); 0: none
    input_target_tokens: TokensOrZero = 0
    #: tool time per step
    tool_s: Seconds = 0.0
    #: ``fixed``: every tool call takes ``tool_s``; ``exponential``: its mean
    tool_s_dist: Literal["fixed", "exponential"] = "fixed"

    def _task(self, tools: list[float]) -> Task:
        first = self.first_observation_tokens
        steps = tuple(
            Step(
                first if (i == 0 and first is not None) else self.observation_tokens,
                self.action_tokens,
                tool,
            )
            for i, tool in enumerate(tools)
        )
        return Task(self.system_tokens, steps, self.summary_tokens, self.input_target_tokens)

    def tasks(self, rng: np.random.Generator) -> list[list[Task]]:
        if self.tool_s_dist == "fixed":
            task = self._task([self.tool_s] * self.steps)
            return [[task] * self.tasks_per_agent for _ in range(self.agents)]
        out = []
        for _ in range(self.agents):
            own = []
            for _ in range(self.tasks_per_agent):
                tools = (
                    rng.exponential(self.tool_s, self.steps)
                    if self.tool_s > 0
                    else np.zeros(self.steps)
                )
                own.append(self._task([float(e) for e in tools]))
            out.append(own)
        return out


class ArchitectureConfig(PolicyParams):
    """One architecture: a context policy (``kind`` and its parameters, see
    :mod:`sim.policy`) and the engines it runs on."""

    #: the architecture's name in tables (unique within the scenario)
    name: Name
    #: the engine the agent runs on
    agent: EngineConfig = Field(default_factory=lambda: EngineConfig(name="agent"))
    #: the engine that writes summaries (kinds sm, kso, kso-authors need one; others none)
    memory: EngineConfig | None = None

    @model_validator(mode="after")
    def _memory_engine(self) -> ArchitectureConfig:
        if uses_memory(self.kind) and self.memory is None:
            raise ValueError(f"architecture '{self.name}' ({self.kind}) needs a memory engine")
        if not uses_memory(self.kind) and self.memory is not None:
            raise ValueError(f"architecture '{self.name}' ({self.kind}) has no memory engine")
        try:
            self.check()
        except ValueError as exc:
            raise ValueError(f"architecture '{self.name}': {exc}") from None
        return self


class PaperInfo(_Strict):
    """What a ``scenarios/paper/`` file reproduces (``comem paper`` reads it)."""

    #: the documented experiment (AUTHORS_SETUP.md)
    experiment: str
    #: this file's choice where the authors' code is silent ("documented" if none)
    variant: str = "documented"
    #: the assumption, in words
    assumption: str = ""


class Scenario(_Strict):
    #: the scenario's name in tables and messages
    name: Name = "scenario"
    #: free text
    description: str = ""
    #: what a scenarios/paper/ file reproduces (comem paper reads it)
    paper: PaperInfo | None = None
    #: fixes every random draw (tasks, tool times, arrivals)
    seed: NonNegativeInt = 0
    #: settings for every engine
    engine: EngineDefaults = Field(default_factory=EngineDefaults)
    #: what the agents do
    workload: Annotated[
        SyntheticWorkload | TraceWorkload | FittedWorkload, Field(discriminator="kind")
    ] = Field(default_factory=SyntheticWorkload)
    #: what the fitted effectiveness model needs to know (:mod:`sim.effectiveness`)
    effectiveness: EffectivenessParams = Field(default_factory=EffectivenessParams)
    #: the architectures compared, each on the same sampled tasks (the first fc one is
    #: the reference of every speedup)
    architectures: list[ArchitectureConfig] = Field(
        default_factory=lambda: [ArchitectureConfig(name="FC", kind="fc")], min_length=1
    )

    @model_validator(mode="before")
    @classmethod
    def _default_workload_kind(cls, data: Any) -> Any:
        workload = data.get("workload") if isinstance(data, dict) else None
        if isinstance(workload, dict) and "kind" not in workload:
            return {**data, "workload": {**workload, "kind": "synthetic"}}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> Scenario:
        names = [a.name for a in self.architectures]
        if len(set(names)) != len(names):
            raise ValueError(f"architecture names must be unique, got {names}")
        return self


def load_scenario(
    path: str | Path | None, sets: list[str] | None = None, cost: bool = True
) -> Scenario:
    """Read a TOML scenario, or the ``config.json`` a ``comem run --out`` wrote (or the
    defaults), apply ``--set`` overrides, validate, and check what simulating it would
    cost (:func:`check_cost`; ``cost=False``: a command that simulates none of it)."""
    data: dict[str, Any] = {}
    where = "scenario"
    if path is not None:
        where = Path(path).name
        data = read_scenario_data(path)
    return scenario_from(data, sets or [], where, cost)


def read_scenario_data(path: str | Path) -> dict[str, Any]:
    """A scenario file's table: TOML, or a run's ``config.json``, which lists every field,
    defaults included; its architectures are taken without their policy fields at the
    defaults (a policy refuses fields it does not have even at their defaults, e.g. ``k``
    for ``kso-authors``), so that the file runs again as it ran."""
    from calibration.inputs import read_json

    if Path(path).suffix.lower() != ".json":
        return read_toml(path, "scenario")
    raw = read_json(path, "scenario")
    if not isinstance(raw, dict):
        raise ComemInputError(f"{path}: not a scenario (a table of settings)")
    archs = raw.get("architectures")
    if isinstance(archs, list):
        lean = [lean_architecture(a) if isinstance(a, dict) else a for a in archs]
        raw = {**raw, "architectures": lean}
    return raw


def policy_default(key: str) -> Any:
    """A policy field's default (None for a key that is no policy field)."""
    from sim.policy import PolicyParams

    f = PolicyParams.model_fields.get(key)
    return None if f is None else f.default


def lean_architecture(arch: dict[str, Any]) -> dict[str, Any]:
    """An architecture without its policy fields at their defaults."""
    return {
        k: v
        for k, v in arch.items()
        if k in ("name", "kind", "agent", "memory") or v != policy_default(k)
    }


def scenario_from(data: dict[str, Any], sets: list[str], where: str, cost: bool = True) -> Scenario:
    """A scenario from a TOML file's table and ``--set`` overrides: validated, its cost
    (unless ``cost`` is false) and its engines checked; ``where`` names it in errors."""
    try:
        overridden = apply_overrides(data, sets)
    except ComemInputError as exc:
        raise ComemInputError(f"{where}: {exc}") from None
    scenario = validate(Scenario, overridden, where, UNION_TAGS)
    if cost:
        check_cost(scenario, where)
    check_engines(scenario, where)
    return scenario


def _engines(scenario: Scenario) -> Iterator[tuple[str, ArchitectureConfig, str, EngineConfig]]:
    """(field path, architecture, role, engine config) of every engine of the scenario."""
    for i, arch in enumerate(scenario.architectures):
        yield f"architectures.{i}.agent", arch, "agent", arch.agent
        if arch.memory is not None:
            yield f"architectures.{i}.memory", arch, "memory", arch.memory


def check_engines(scenario: Scenario, where: str = "scenario") -> None:
    """Build every engine's latency model and KV cache now (not when its architecture's
    turn comes): an engine that cannot exist (tp that does not divide the heads, weights
    that do not fit, a profile for another GPU) is one line naming the file, the
    architecture and the model."""
    for path, arch, _, cfg in _engines(scenario):
        try:
            check_engine(cfg)
        except ComemInputError as exc:
            raise ComemInputError(
                f"{where}: {path} (architecture '{arch.name}', {cfg.model}): {exc}"
            ) from None
    for arch in scenario.architectures:  # engines that share GPUs (gpu_group)
        try:
            roles = {"agent": arch.agent, "memory": arch.memory}
            check_gpu_groups({r: cfg for r, cfg in roles.items() if cfg is not None})
        except ComemInputError as exc:
            raise ComemInputError(f"{where}: architecture '{arch.name}': {exc}") from None
    check_summary_fits(scenario, where)


def check_summary_fits(scenario: Scenario, where: str = "scenario") -> None:
    """Refuse a memory model whose context cannot hold the summary instruction and the
    summary: the history is cut to fit, and the instruction would be cut with it (a
    summary of nothing, reported as made)."""
    out = scenario.workload.summary_tokens
    for i, arch in enumerate(scenario.architectures):
        if arch.memory is None:
            continue
        asked = arch.summary_prompt_tokens
        if asked + out >= arch.memory.max_model_len:
            raise ComemInputError(
                f"{where}: architectures.{i} ('{arch.name}'): summary_prompt_tokens ({asked})"
                f" + workload.summary_tokens ({out}) do not fit the memory model's"
                f" max_model_len ({arch.memory.max_model_len})"
            )


#: the workload kinds (pydantic puts the chosen one in error paths)
UNION_TAGS = frozenset({"synthetic", "trace", "fitted"})


def agent_steps(scenario: Scenario) -> tuple[int, str]:
    """Agent steps the scenario simulates at most (over every architecture), and the
    fields the count comes from."""
    w = scenario.workload
    per_task, name = (
        (w.steps, "steps") if isinstance(w, SyntheticWorkload) else (w.max_steps, "max_steps")
    )
    archs = len(scenario.architectures)
    fields = (
        f"workload.agents x workload.tasks_per_agent x workload.{name} x {archs} architecture(s)"
    )
    return w.agents * w.tasks_per_agent * per_task * archs, fields


def check_cost(scenario: Scenario, where: str = "scenario") -> None:
    """Refuse a scenario above the agent-step budget, or whose agents would keep the
    scheduler busier than its budget (:mod:`calibration.limits`)."""
    steps, fields = agent_steps(scenario)
    limits.check(limits.AGENT_STEPS, steps, f"{where}: {fields}")
    w = scenario.workload
    in_flight = w.agents if w.arrival_rate_per_s is None else w.agents * w.tasks_per_agent
    per_arch = steps // len(scenario.architectures)
    work = sum(per_arch * min(in_flight, a.agent.max_num_seqs) for a in scenario.architectures)
    limits.check(
        limits.SCHEDULED,
        work,
        f"{where}: {per_arch:,} agent steps per architecture among up to"
        f" {min(in_flight, max(a.agent.max_num_seqs for a in scenario.architectures)):,}"
        " running requests (workload.agents, engine max_num_seqs)",
    )


def check_iterations(scenario: Scenario, tasks: list[list[Task]]) -> None:
    """With ``stepping = "iteration"`` every decoded token is part of a SimPy step that
    walks the running batch: refuse a run that would decode more tokens that way than
    the budget (the agents' decoded tokens, once per architecture)."""
    if scenario.engine.stepping != "iteration" or not tasks:
        return
    decoded = sum(s.action for own in tasks for t in own for s in t.steps)
    limits.check(
        limits.ITERATION_TOKENS,
        decoded * len(scenario.architectures),
        f"{scenario.name}: engine.stepping = 'iteration' with these agents' decoded tokens"
        " (workload.agents, steps, action tokens)",
    )


@dataclass
class ArchitectureResult:
    config: ArchitectureConfig
    steps: pd.DataFrame
    tasks: pd.DataFrame
    requests: pd.DataFrame
    engine_steps: pd.DataFrame
    preemptions: int
    wall_s: float


def run_architecture(
    scenario: Scenario,
    arch: ArchitectureConfig,
    tasks: list[list[Task]],
    latency: dict[str, IterationLatency] | None = None,
    on_task: Callable[[], None] | None = None,
) -> ArchitectureResult:
    """Simulate one architecture; ``latency`` may replace the engines' latency models
    by role (``"agent"``, ``"memory"``), e.g. with a constant one for exact checks."""
    env = simpy.Environment()
    metrics = MetricsRecorder()
    stepping = scenario.engine.stepping
    latency = latency or {}
    configs = {
        "agent": arch.agent.model_copy(update={"stepping": stepping, "name": f"{arch.name}/agent"})
    }
    if arch.memory is not None:
        configs["memory"] = arch.memory.model_copy(
            update={"stepping": stepping, "name": f"{arch.name}/memory"}
        )
    try:
        engines = build_engines(env, configs, latency, metrics)
    except ComemInputError as exc:
        raise ComemInputError(f"{scenario.name}: architecture '{arch.name}': {exc}") from None
    engine = engines["agent"]
    memory = engines.get("memory")
    recorder = AgentRecorder(on_task=on_task)
    streams = StreamSpace()

    def agent_loop(agent: Agent, own: list[Task]):
        for i, task in enumerate(own):
            yield from agent.run_task(i, task)

    arrival_mode = scenario.workload.arrivals
    rate = scenario.workload.arrival_rate_per_s
    if arrival_mode == "closed-loop":
        for a, own in enumerate(tasks):
            agent = Agent(env, a, arch.name, arch, engine, memory, streams, recorder)
            env.process(agent_loop(agent, own))
    elif arrival_mode == "closed-batch":
        # every task starts now, each on its own worker; none is replaced
        for a, task in enumerate(t for own in tasks for t in own):
            agent = Agent(env, a, arch.name, arch, engine, memory, streams, recorder)
            env.process(agent_loop(agent, [task]))
    else:
        assert rate is not None  # the workload's validation
        # open loop: the same tasks, arriving at the same (seeded) Poisson times
        gaps = np.random.default_rng([scenario.seed, 1]).exponential(
            1.0 / rate, sum(len(own) for own in tasks)
        )

        def arrivals():
            for a, task in enumerate(t for own in tasks for t in own):
                yield env.timeout(float(gaps[a]))
                agent = Agent(env, a, arch.name, arch, engine, memory, streams, recorder)
                env.process(agent_loop(agent, [task]))

        env.process(arrivals())
    t0 = time.perf_counter()
    with simulation_gc():
        env.run()
    wall = time.perf_counter() - t0
    preempt = engine.preemptions + (memory.preemptions if memory is not None else 0)
    return ArchitectureResult(
        arch,
        recorder.steps_frame(),
        recorder.tasks_frame(),
        metrics.requests_frame(),
        metrics.iterations_frame(),
        preempt,
        wall,
    )


@dataclass
class ScenarioResult:
    scenario: Scenario
    results: list[ArchitectureResult]

    def summary(self) -> dict[str, Any]:
        """Every architecture's own figures, and speedups on comparable work
        (:mod:`sim.compare`). ``speedup_vs_fc``: by mean task latency over the tasks
        both finished (None where none did). Deterministic: the simulator's own wall
        time is not in it (``ArchitectureResult.wall_s``)."""
        archs = {r.config.name: architecture_summary(r) for r in self.results}
        comparison = compare(self.results)
        effect = architecture_effectiveness(
            self.scenario.effectiveness,
            {r.config.name: r.config for r in self.results},
            {n: a["tasks_ended_early"] / max(a["tasks"], 1) for n, a in archs.items()},
            comparison["reference"],
            summaries_made={n: summaries_made(a) for n, a in archs.items()},
        )
        for name, fields in effect.items():
            archs[name].update(fields)
        metrics = comparison["metrics"]
        return {
            "scenario": self.scenario.name,
            "architectures": archs,
            "speedup_vs_fc": metrics["task"]["speedup"] if metrics else {},
            "comparison": {"reference": comparison["reference"], "metrics": metrics},
            "warnings": comparison["warnings"],
            "effectiveness": self.scenario.effectiveness.model_dump(),
        }

    def write(self, directory: str | Path) -> list[Path]:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tables = {
            "steps": pd.concat([r.steps for r in self.results], ignore_index=True),
            "tasks": pd.concat([r.tasks for r in self.results], ignore_index=True),
            "requests": agent_request_columns(
                pd.concat(
                    [r.requests.assign(architecture=r.config.name) for r in self.results],
                    ignore_index=True,
                )
            ),
            "engine_steps": pd.concat(
                [r.engine_steps.assign(architecture=r.config.name) for r in self.results],
                ignore_index=True,
            ),
        }
        # a complete result is its tables plus config.json, written last; a run killed
        # while writing leaves no config.json and no old table beside a new one
        from calibration.outputs import write_result

        config = self.scenario.model_dump_json(indent=1) + "\n"
        writers: dict[str, Any] = {
            f"{name}.parquet": (lambda f: lambda p: f.to_parquet(p, index=False))(frame)
            for name, frame in tables.items()
        }
        writers["config.json"] = lambda p: p.write_text(config)
        return write_result(out, writers, "config.json", "run")


def run_scenario(scenario: Scenario, progress: bool = False) -> ScenarioResult:
    """Run every architecture on the same sampled tasks (common random numbers)."""
    check_cost(scenario, scenario.name)
    rng = np.random.default_rng(scenario.seed)
    tasks = scenario.workload.tasks(rng)
    check_iterations(scenario, tasks)
    from sim.progress import progress as shown

    n = len(scenario.architectures)
    total = sum(len(own) for own in tasks) * n
    unit = "tasks" if n == 1 else f"tasks of the {n} architectures"
    results = []
    with shown(scenario.name, unit, total, progress) as counter:
        for i, arch in enumerate(scenario.architectures, 1):
            if counter is not None:  # the count is over every architecture's tasks
                counter.describe(f"{scenario.name}: {arch.name} ({i} of {n})")
            results.append(run_architecture(scenario, arch, tasks, on_task=counter))
    return ScenarioResult(scenario, results)


#: most seeds ``comem run --seeds`` replicates a scenario over
MAX_RUN_SEEDS = 20


def check_seeds(scenario: Scenario, seeds: int) -> None:
    """Refuse, before anything runs, more seeds than :data:`MAX_RUN_SEEDS` or more work
    over them than the agent-step budget."""
    if not 1 <= seeds <= MAX_RUN_SEEDS:
        raise ComemInputError(f"--seeds {seeds}: must be 1 to {MAX_RUN_SEEDS}")
    if seeds > 1 and not any(a.kind == "fc" for a in scenario.architectures):
        raise ComemInputError(
            f"--seeds {seeds}: the scenario has no full-context (fc) architecture, so no"
            " speedup to give the range of"
        )
    steps, fields = agent_steps(scenario)
    limits.check(limits.AGENT_STEPS, steps * seeds, f"--seeds {seeds} x {fields}")


def speedups_over_seeds(
    scenario: Scenario, first: dict[str, Any], seeds: int, metric: str, progress: bool = False
) -> dict[str, list[float]]:
    """``metric``'s speedup of every architecture over the reference in ``seeds`` runs:
    ``first`` (the summary of the scenario's own seed) and seeds ``seed + 1`` ... Each
    seed draws other tasks (lengths, tools, arrivals), so the spread says how much a
    verdict owes to the draw; the latency model's own error is not in it (it prices both
    sides and moves them together)."""
    check_seeds(scenario, seeds)
    out: dict[str, list[float]] = {}

    def add(summary: dict[str, Any]) -> None:
        for name, value in (
            summary["comparison"]["metrics"].get(metric, {}).get("speedup", {}).items()
        ):
            if value is not None:
                out.setdefault(name, []).append(float(value))

    add(first)
    for i in range(1, seeds):
        replica = scenario.model_copy(update={"seed": scenario.seed + i})
        add(run_scenario(replica, progress=progress).summary())
    return out
