"""Figures from code: each one a small function writing PNG (and PDF) into a directory.
The simulation figures are here with the registry (:data:`FIGURES`); the theory figures
are in :mod:`comem.figures_theory`.

``comem figures [--quick] [--out DIR]`` (and ``make figures``) regenerates them; every
figure has axis labels with units and a caption line naming the scenario or profile
that produced it. ``--quick`` shrinks the simulations (fewer agents and steps) so the
test suite can run every figure function.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from comem.figure_common import _save  # noqa: E402
from comem.figures_theory import (  # noqa: E402
    fig_effectiveness_fit,
    fig_frontier,
    fig_kv_crossover,
    fig_stall_bounds,
    fig_theory_speedup,
)
from sim.scenario import (  # noqa: E402
    ArchitectureResult,
    ScenarioResult,
    check_cost,
    check_iterations,
    load_scenario,
    run_architecture,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

#: one simulated architecture a figure reads: a scenario file of ``scenarios/``, its
#: ``--set`` overrides, the architecture's index, and fields changed on it (``model_copy``)
SimSpec = tuple[str, tuple[str, ...], int, tuple[tuple[str, Any], ...]]

#: the architectures simulated so far in this process, or by :func:`make_figures`'
#: workers: every figure that reads one reads the same run
_SIMS: dict[SimSpec, ArchitectureResult] = {}


def _simulate(spec: SimSpec) -> ArchitectureResult:
    """One architecture of a scenario on the scenario's sampled tasks, as
    :func:`sim.scenario.run_scenario` simulates it (each architecture runs on its own)."""
    name, sets, index, update = spec
    scn = load_scenario(SCENARIOS / name, list(sets))
    check_cost(scn, scn.name)
    tasks = scn.workload.tasks(np.random.default_rng(scn.seed))
    check_iterations(scn, tasks)
    arch = scn.architectures[index]
    if update:
        arch = arch.model_copy(update=dict(update))
    return run_architecture(scn, arch, tasks)


def _sim(spec: SimSpec) -> ArchitectureResult:
    """:func:`_simulate`, once per spec."""
    res = _SIMS.get(spec)
    if res is None:
        res = _SIMS[spec] = _simulate(spec)
    return res


@cache
def _architectures(name: str) -> int:
    """How many architectures the scenario file ``name`` compares."""
    return len(tomllib.loads((SCENARIOS / name).read_text())["architectures"])


def _spec_cost(spec: SimSpec) -> int:
    """A rough relative cost of a spec (agents x steps; the longest go first)."""
    cost = 1
    for item in spec[1]:
        key, _, value = item.partition("=")
        if key in ("workload.agents", "workload.steps"):
            cost *= int(value)
    return cost


def fig_latency_vs_concurrency(out: Path, quick: bool) -> list[Path]:
    """Simulation: mean task latency of FC and KSO vs agents, with speedup labels."""
    agents, steps = _concurrency_points(quick)
    fc, kso = [], []
    for n in agents:
        s = _glm_run(n, steps).summary()["architectures"]
        fc.append(s["FC"]["mean_task_latency_s"])
        kso.append(s["KSO"]["mean_task_latency_s"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(agents, fc, "o-", label="FC (8 GPUs)")
    ax.plot(agents, kso, "s-", label="CoMem KSO (4 + 4 GPUs)")
    for n, f, k in zip(agents, fc, kso, strict=True):
        ax.annotate(f"{f / k:.2f}x", (n, k), textcoords="offset points", xytext=(0, -14),
                    ha="center", fontsize=8)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent agents")
    ax.set_ylabel("mean task latency (s)")
    ax.set_title("Task latency vs concurrency (labels: speedup of KSO over FC)")
    ax.legend()
    return _save(
        fig, out, "sim_latency_vs_concurrency",
        f"scenario paper_latency_glm47 ({steps} steps), GLM-4.7 fp8 on H200, profile vllm-0.19.0",
    )  # fmt: skip


def _concurrency_points(quick: bool) -> tuple[list[int], int]:
    """The agent counts and steps of :func:`fig_latency_vs_concurrency`."""
    return ([4, 16], 16) if quick else ([16, 32, 64, 128, 256], 64)


def _one_run_point(quick: bool) -> tuple[int, int]:
    """Agents and steps of the run the step-CDF and KV-over-time figures read."""
    return (8, 16) if quick else (64, 64)


GLM = "paper_latency_glm47.toml"


def _glm_specs(agents: int, steps: int) -> list[SimSpec]:
    sets = (f"workload.agents={agents}", f"workload.steps={steps}")
    return [(GLM, sets, i, ()) for i in range(_architectures(GLM))]


def _glm_run(agents: int, steps: int) -> ScenarioResult:
    """The GLM-4.7 paper scenario, simulated once for every figure that reads it."""
    specs = _glm_specs(agents, steps)
    scn = load_scenario(SCENARIOS / GLM, list(specs[0][1]))
    return ScenarioResult(scn, [_sim(spec) for spec in specs])


def fig_step_cdf_and_breakdown(out: Path, quick: bool) -> list[Path]:
    """Simulation: per-step latency CDFs, and where a step's time goes."""
    n, steps = _one_run_point(quick)
    result = _glm_run(n, steps)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    parts = ("queue_s", "prefill_s", "decode_s", "tool_s", "stall_s")
    means = {}
    for res in result.results:
        lat = np.sort(res.steps["step_latency_s"].to_numpy())
        ax1.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=res.config.name)
        means[res.config.name] = [float(res.steps[p].mean()) for p in parts]
    ax1.set_xlabel("step latency (s)")
    ax1.set_ylabel("fraction of steps")
    ax1.set_title("Per-step latency CDF")
    ax1.legend()
    bottom = np.zeros(len(means))
    for i, p in enumerate(parts):
        vals = np.array([v[i] for v in means.values()])
        ax2.bar(list(means), vals, bottom=bottom, label=p.removesuffix("_s"))
        bottom += vals
    ax2.set_ylabel("mean time per step (s)")
    ax2.set_title("Where the time goes")
    ax2.legend(fontsize=8)
    return _save(
        fig, out, "sim_step_cdf_breakdown",
        f"scenario paper_latency_glm47, {n} agents x {steps} steps, profile vllm-0.19.0",
    )  # fmt: skip


def fig_kv_over_time(out: Path, quick: bool) -> list[Path]:
    """Simulation: agent-engine KV utilisation over time, FC vs KSO.

    An ``engine_steps`` row holds the KV state at the END of its step (``start_s`` +
    ``duration_s``), after the step freed what finished. So each state is drawn from
    its step's end until the next step's end: across the next step, whose running
    requests hold at least those blocks. (Drawn from the step's start, a step that ends
    with every request finishing showed an empty cache during its whole run.)"""
    n, steps = _one_run_point(quick)
    fig, ax = plt.subplots(figsize=(7, 4))
    for res in _glm_run(n, steps).results:
        es = res.engine_steps[res.engine_steps["engine"].str.contains("/agent", regex=False)]
        end = (es["start_s"] + es["duration_s"]).to_numpy()
        used = (es["kv_used_blocks"] / es["kv_total_blocks"]).to_numpy()
        # empty until the first step ends
        x = np.concatenate([[0.0], end])
        y = np.concatenate([[0.0], used])
        ax.step(x, y, where="post", label=res.config.name)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("agent KV cache in use (fraction)")
    ax.set_title("KV utilisation of the agent engine")
    ax.legend()
    return _save(
        fig, out, "sim_kv_over_time",
        f"scenario paper_latency_glm47, {n} agents x {steps} steps, profile vllm-0.19.0;"
        " the state after each engine step, held until the next one ends",
    )  # fmt: skip


def fig_closed_network(out: Path, quick: bool) -> list[Path]:
    """Theory + simulation: steps/s vs agents against the optimistic bound N / (R1 + Z)."""
    from theory.network import throughput_upper

    agents, tool = _network_points(quick)
    xs, solo_cycle = [], None
    for spec in _network_specs(quick):
        fc = _sim(spec)
        makespan = fc.tasks["end_s"].max()
        xs.append(len(fc.steps) / makespan)
        if solo_cycle is None:
            solo_cycle = float(fc.steps["step_latency_s"].mean())
    assert solo_cycle is not None
    fig, ax = plt.subplots(figsize=(6, 4))
    counts = np.asarray(agents)
    ax.plot(counts, throughput_upper(counts, solo_cycle - tool, tool), "--", label="N / (R1 + Z)")
    ax.plot(counts, xs, "ko", label="simulated FC")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("agents (closed loop)")
    ax.set_ylabel("throughput (steps/s)")
    ax.set_title("Closed network: throughput vs the optimistic bound")
    ax.legend()
    return _save(
        fig, out, "theory_closed_network",
        f"scenario paper_latency_deepswe (FC, 8 steps, tool {tool} s); R1 = solo step time",
    )  # fmt: skip


def _network_points(quick: bool) -> tuple[list[int], float]:
    """Agent counts and tool time of :func:`fig_closed_network`."""
    return ([1, 2, 4, 8] if quick else [1, 2, 4, 8, 16, 32, 64]), 2.0


def _network_specs(quick: bool) -> list[SimSpec]:
    """The full-context architecture (the first) of the DeepSWE scenario per agent count."""
    agents, tool = _network_points(quick)
    return [
        (
            "paper_latency_deepswe.toml",
            (f"workload.agents={n}", "workload.steps=8", f"workload.tool_s={tool}"),
            0,
            (),
        )
        for n in agents
    ]


class AdaptiveKRow(NamedTuple):
    """One simulated point of :func:`fig_adaptive_k`: ``policy`` is ``fixed`` (k, lag as
    given) or ``adaptive`` (k, lag: its home)."""

    agents: int
    policy: str
    k: int
    lag: int
    mean_task_latency_s: float


def adaptive_k_table(
    agents: list[int], steps: int, ks: list[int], lags: list[int], home: tuple[int, int] = (4, 1)
) -> list[AdaptiveKRow]:
    """Mean task latency of KSO at every fixed (k, lag) and of ``kso-adaptive`` (home k,
    lag; default rule), on the GLM-4.7 synthetic benchmark at each agent count."""
    rows = []
    for n in agents:
        for spec in _adaptive_specs([n], steps, ks, lags, home):
            cfg = (res := _sim(spec)).config
            rows.append(
                AdaptiveKRow(
                    n,
                    "adaptive" if cfg.kind == "kso-adaptive" else "fixed",
                    cfg.k,
                    cfg.lag,
                    float(res.tasks["latency_s"].mean()),
                )
            )
    return rows


def _adaptive_specs(
    agents: list[int], steps: int, ks: list[int], lags: list[int], home: tuple[int, int]
) -> list[SimSpec]:
    """Per agent count: KSO at every fixed (k, lag), then kso-adaptive at its home."""
    specs: list[SimSpec] = []
    for n in agents:
        sets = (f"workload.agents={n}", f"workload.steps={steps}")
        scn = load_scenario(SCENARIOS / GLM, list(sets))
        kso = next(i for i, a in enumerate(scn.architectures) if a.kind == "kso")
        base = scn.architectures[kso]
        # the scenario's own KSO where it has that (k, lag): the run the other figures
        # read (an architecture's name only labels its rows)
        specs += [
            (GLM, sets, kso, ())
            if (k, lag) == (base.k, base.lag)
            else (GLM, sets, kso, (("name", f"k{k}-lag{lag}"), ("k", k), ("lag", lag)))
            for k in ks
            for lag in lags
        ]
        adaptive = (
            ("name", "adaptive"),
            ("kind", "kso-adaptive"),
            ("k", home[0]),
            ("lag", home[1]),
        )
        specs.append((GLM, sets, kso, adaptive))
    return specs


def _adaptive_points(quick: bool) -> tuple[list[int], int, list[int], list[int]]:
    """Agent counts, steps, fixed k and lags of :func:`fig_adaptive_k`."""
    if quick:
        return [4, 16], 12, [1, 4], [0, 1]
    return [8, 16, 32, 64, 128, 256], 64, [1, 2, 4, 8], [0, 1]


def fig_adaptive_k(out: Path, quick: bool) -> list[Path]:
    """Simulation: kso-adaptive's task latency across load against fixed k (lag 1) and
    the best fixed (k, lag) at each load."""
    agents, steps, ks, lags = _adaptive_points(quick)
    rows = adaptive_k_table(agents, steps, ks, lags)
    fixed = [r for r in rows if r.policy == "fixed"]
    adaptive = np.array([r.mean_task_latency_s for r in rows if r.policy == "adaptive"])

    def best(n: int, lag: int | None) -> AdaptiveKRow:
        pool = [r for r in fixed if r.agents == n and (lag is None or r.lag == lag)]
        return min(pool, key=lambda r: r.mean_task_latency_s)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k in ks:
        lat = [r.mean_task_latency_s for r in fixed if r.k == k and r.lag == 1]
        ax1.plot(agents, lat, "-", lw=1, alpha=0.7, label=f"fixed k = {k}, lag 1")
    best_any = [best(n, None) for n in agents]
    ax1.plot(agents, [r.mean_task_latency_s for r in best_any], "k--", lw=1,
             label="best fixed (k, lag) at each load")  # fmt: skip
    ax1.plot(agents, adaptive, "o-", color="crimson", lw=2, label="kso-adaptive (home k 4, lag 1)")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("concurrent agents")
    ax1.set_ylabel("mean task latency (s)")
    ax1.set_title("KSO: adaptive k against fixed k")
    ax1.legend(fontsize=7)
    for lag, style, name in (
        (1, "s-", "best fixed k (lag 1)"),
        (None, "o--", "best fixed (k, lag)"),
    ):
        ref = np.array([best(n, lag).mean_task_latency_s for n in agents])
        ax2.plot(agents, adaptive / ref, style, label=f"adaptive / {name}")
        for n, r, v in zip(agents, (best(n, lag) for n in agents), adaptive / ref, strict=True):
            ax2.annotate(f"k{r.k} lag{r.lag}", (n, v), textcoords="offset points",
                         xytext=(0, 6 if lag == 1 else -12), ha="center", fontsize=6)  # fmt: skip
    ax2.axhline(1.0, color="0.6", lw=0.8)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("concurrent agents")
    ax2.set_ylabel("latency ratio (< 1: adaptive is faster)")
    ax2.set_title("Adaptive over the best fixed choice (labels: that choice)")
    ax2.legend(fontsize=7)
    return _save(
        fig, out, "adaptive_k",
        f"scenario paper_latency_glm47 (KSO arm, {steps} steps, retain 4), GLM-4.7 fp8 on H200,"
        f" profile vllm-0.19.0; fixed k in {ks}, lag in {lags}",
    )  # fmt: skip


FIGURES: dict[str, Callable[[Path, bool], list[Path]]] = {
    "sim_latency_vs_concurrency": fig_latency_vs_concurrency,
    "sim_step_cdf_breakdown": fig_step_cdf_and_breakdown,
    "sim_kv_over_time": fig_kv_over_time,
    "theory_speedup": fig_theory_speedup,
    "theory_stall_bounds": fig_stall_bounds,
    "theory_frontier": fig_frontier,
    "effectiveness_fit": fig_effectiveness_fit,
    "theory_kv_crossover": fig_kv_crossover,
    "theory_closed_network": fig_closed_network,
    "adaptive_k": fig_adaptive_k,
}


#: the simulated architectures each simulation figure reads (quick or full size)
SIMULATIONS: dict[str, Callable[[bool], list[SimSpec]]] = {
    "sim_latency_vs_concurrency": lambda quick: [
        spec
        for n in _concurrency_points(quick)[0]
        for spec in _glm_specs(n, _concurrency_points(quick)[1])
    ],
    "sim_step_cdf_breakdown": lambda quick: _glm_specs(*_one_run_point(quick)),
    "sim_kv_over_time": lambda quick: _glm_specs(*_one_run_point(quick)),
    "theory_closed_network": _network_specs,
    "adaptive_k": lambda quick: _adaptive_specs(*_adaptive_points(quick), (4, 1)),
}


def _draw(name: str, out: Path, quick: bool) -> list[Path]:
    """One figure (in a worker process)."""
    return FIGURES[name](out, quick)


def _prefetch(names: list[str], out: Path, quick: bool, workers: int) -> dict[str, list[Path]]:
    """Simulate what the figures ``names`` read, and draw those that simulate nothing, in
    ``workers`` processes (the costliest simulations first). Each simulation and figure is
    computed on its own, so the results do not depend on the number of workers. Returns
    the figures drawn."""
    from concurrent.futures import Future, as_completed

    from sim.workers import process_pool

    specs = list(dict.fromkeys(s for n in names if n in SIMULATIONS for s in SIMULATIONS[n](quick)))
    specs = sorted((s for s in specs if s not in _SIMS), key=_spec_cost, reverse=True)
    drawn: dict[str, list[Path]] = {}
    with process_pool(workers) as pool:
        sims: dict[Future[Any], SimSpec] = {pool.submit(_simulate, s): s for s in specs}
        figs: dict[Future[Any], str] = {
            pool.submit(_draw, n, out, quick): n for n in names if n not in SIMULATIONS
        }
        for fut in as_completed([*sims, *figs]):
            if fut in sims:
                _SIMS[sims[fut]] = fut.result()
            else:
                drawn[figs[fut]] = fut.result()
    return drawn


def make_figures(
    out: str | Path = "figures",
    quick: bool = False,
    only: list[str] | None = None,
    workers: int = 1,
) -> list[Path]:
    """Write every figure (or those named in ``only``) into ``out``; with ``workers`` > 1
    the simulations and the figures that need none run in that many processes first
    (the same figures whatever the number)."""
    from calibration.errors import ComemInputError

    unknown = sorted(set(only or []) - set(FIGURES))
    if unknown:
        raise ComemInputError(
            f"--only: no figure named {', '.join(unknown)}; known: {', '.join(FIGURES)}"
        )
    from calibration.outputs import refuse_foreign_figure

    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    names = [name for name in FIGURES if only is None or name in only]
    for name in names:  # a user's file under a figure's name: refused before any work
        for ext in (".png", ".pdf"):
            refuse_foreign_figure(directory / f"{name}{ext}", "--out")
    drawn = _prefetch(names, directory, quick, workers) if workers > 1 else {}
    paths: list[Path] = []
    for name in names:
        paths.extend(drawn[name] if name in drawn else FIGURES[name](directory, quick))
    return paths
