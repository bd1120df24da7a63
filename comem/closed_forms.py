"""``comem theory SCENARIO``: the closed forms evaluated on a user's scenario, in a second.

For which k, and from which load, does each summarizing architecture beat full context,
and what does it cost in solved tasks? The simulation answers it for the scenario's one
load; the closed forms (:mod:`theory.whole_task`, :mod:`theory.bounds`) answer it for every
k and every number of agents at once, with stated simplifications:

- **Identical agents in lockstep.** N agents per replica (``agents`` over the engine's
  ``data_parallel_size``; a memory engine's replicas share all agents' summaries) share
  every iteration (:func:`theory.single_agent.
  lockstep_coefficients`), each engine priced by its linear surrogate
  (:func:`calibration.surrogate.fit_surrogate` of the engine's latency model).
- **The KV cache is not simulated.** Past FC's KV limit (its agents' peak contexts no
  longer fit) FC preempts and recomputes, which the forms do not price; so the
  crossover is at most one past that limit (:func:`theory.bounds.
  crossover_concurrencies`), and none is given past the architecture's own KV limit
  (there it preempts too). FC tasks longer than ``max_model_len`` are priced whole,
  where the simulation ends them.
- **Policies as the forms have them.** ``kso-authors`` is priced as KSO(k = R, lag = 1,
  retain = 0) (:class:`sim.kso.KSOAuthors` says how it differs), ``kso-adaptive`` at its
  starting k and lag, and a KSO whose memory model shares the agent's GPUs
  (``gpu_group``) as the blocking SM: its summaries cannot overlap the agent's work.
- **Mean task shape.** A trace or fitted workload is priced by its drawn tasks' means
  (:func:`sim.describe.mean_task_shape`); a synthetic one exactly as written, except its
  first observation and prompt padding.

Resolve rates are the fitted effectiveness model's (:mod:`sim.effectiveness`), as
``comem run`` reports them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from calibration.errors import ComemInputError

#: agents scanned for a crossover (in all, over the replicas)
MAX_AGENTS_SCAN = 512
#: a surrogate's mean relative error above which the output warns that the forms' step
#: latencies (and so their speedups and crossovers) can be off by about that much
SURROGATE_WARN_MAPE = 0.10
#: summarizing kinds the closed forms price, and the form each is priced as
PRICED_AS = {"cp": "cp", "sm": "sm", "kso": "kso", "kso-authors": "kso", "kso-adaptive": "kso"}


@dataclass(frozen=True)
class Shape:
    """One task as the closed forms see it (means for a trace or fitted workload)."""

    steps: int
    system: float
    observation: float
    action: float
    summary: float
    tool_s: float
    agents: int


@dataclass(frozen=True)
class FormRow:
    """One architecture at one k: the closed forms' answer."""

    architecture: str
    kind: str  # the scenario's kind
    priced_as: str  # the closed form it is priced by
    k: int | None
    agents_per_replica: int
    step_s: float  # mean step latency, N agents in lockstep (tool time included)
    speedup: float | None  # FC's step latency over this one's (> 1: faster than FC)
    kv_bound_agents: int  # agents in all whose peak contexts fit its agent's KV caches
    crossover_agents: int | None  # fewest agents in all at which it beats FC
    #: "lockstep" (its latency alone), "fc-kv" (FC's KV limit), "own-kv" (none priced: its
    #: own contexts no longer fit its KV cache where it would beat FC), "" (none in the scan)
    crossover_why: str
    resolve_pp: float | None  # resolve rate change against FC, percentage points
    #: its 95% interval (paired by bootstrap draw, as `comem run`'s resolve pp)
    resolve_pp_low: float | None = None
    resolve_pp_high: float | None = None
    #: k or the raw tail outside the range the effectiveness model was fitted on
    resolve_extrapolated: bool = False
    notes: list[str] = field(default_factory=list)
    #: the speedup at 1, 2, ... agents (filled for a figure: ``evaluate(curves=True)``)
    speedup_by_agents: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Priced:
    """An engine pair as the forms need it."""

    agent: np.ndarray
    memory: np.ndarray | None
    kv_tokens: int
    replicas: int
    memory_replicas: int = 1
    #: each engine's ("agent", "memory") surrogate error against its latency model:
    #: (mean, 90th percentile) of |surrogate / model - 1| over held-out batches
    fit: dict[str, tuple[float, float]] = field(default_factory=dict)


def task_shape(scenario: Any) -> tuple[Shape, list[str]]:
    """The scenario's task shape and what the forms leave out of it."""
    w = scenario.workload
    notes: list[str] = []
    if w.kind == "synthetic":
        shape = Shape(w.steps, w.system_tokens, w.observation_tokens, w.action_tokens,
                      w.summary_tokens, w.tool_s, w.agents)  # fmt: skip
        if w.first_observation_tokens is not None or w.input_target_tokens:
            notes.append("the first observation and prompt padding are priced as any step's")
        return shape, notes
    from sim.describe import MEAN_SHAPE_TASKS, mean_task_shape

    m = mean_task_shape(w)
    notes.append(f"a {w.kind} workload, priced by the means of {MEAN_SHAPE_TASKS} drawn tasks")
    shape = Shape(max(1, round(m.steps)), m.system_tokens, m.observation_tokens,
                  m.action_tokens, float(w.summary_tokens), m.tool_s, w.agents)  # fmt: skip
    return shape, notes


def _coefficients(cfg: Any, where: str) -> tuple[np.ndarray, int, tuple[float, float]]:
    """An engine's surrogate coefficients (c0..c4), its KV cache in tokens, and the
    surrogate's (mean, p90) relative error on held-out batches; ``where`` names the
    engine in errors (``architecture 'KSO' memory``)."""
    from calibration.latency import LatencyModel
    from calibration.surrogate import fit_surrogate
    from sim.engine_latency import engine_latency
    from sim.kv_geometry import kv_geometry

    latency = engine_latency(cfg)
    if not isinstance(latency, LatencyModel):
        raise ComemInputError(
            f"{where} ({cfg.profile}): a measured profile has no closed form here (the forms"
            " price the kernel-fitted latency model); run the scenario instead"
        )
    s = fit_surrogate(latency, samples=200, holdout=50)
    geo = kv_geometry(cfg, latency)
    coef = np.array([s.c0, s.c1, s.c2, s.c3, s.c4])
    return coef, geo.total_blocks * geo.block_size, (s.mape, s.p90_rel_error)


def _priced(arch: Any) -> _Priced:
    agent, kv, fit = _coefficients(arch.agent, f"architecture '{arch.name}' agent")
    fits = {"agent": fit}
    memory = None
    if arch.memory is not None:
        memory, _, fits["memory"] = _coefficients(arch.memory, f"architecture '{arch.name}' memory")
    memory_dp = 1 if arch.memory is None else arch.memory.data_parallel_size
    return _Priced(
        agent, memory, kv, max(1, arch.agent.data_parallel_size), max(1, memory_dp), fits
    )


def surrogate_fit(engines: dict[str, _Priced]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Each engine's surrogate error ("FC agent": {"mape", "p90"}), and a note when one
    misses its latency model by more than :data:`SURROGATE_WARN_MAPE` on average."""
    errors = {
        f"{name} {role}": {"mape": mape, "p90": p90}
        for name, eng in engines.items()
        for role, (mape, p90) in eng.fit.items()
    }
    bad = {k: v for k, v in errors.items() if v["mape"] > SURROGATE_WARN_MAPE}
    if not bad:
        return errors, []
    worst = ", ".join(f"{k} {v['mape']:.0%} (p90 {v['p90']:.0%})" for k, v in bad.items())
    return errors, [
        f"the linear surrogate misses the latency model, on average, by {worst}: the"
        " forms' step latencies, speedups and crossovers can be off by about as much"
        " (seen with MoE agents, whose iteration time is not linear in the batch);"
        " `comem run` or `comem sweep` prices the latency model itself"
    ]


def _params(shape: Shape, k: float, retain: float, lag: float) -> Any:
    from theory.single_agent import AgentParams

    def a(x: float) -> np.ndarray:
        return np.array(float(x))

    return AgentParams(system=a(shape.system), observation=a(shape.observation),
                       action=a(shape.action), summary=a(shape.summary), tool_s=a(shape.tool_s),
                       steps=shape.steps, k=a(k), retain=a(retain), lag=a(lag))  # fmt: skip


def _policy(arch: Any) -> tuple[str, int, int, int, list[str]]:
    """(form, k, retain, lag, notes) of a summarizing architecture."""
    kind, notes = arch.kind, []
    k, retain, lag = arch.k, arch.retain, arch.lag
    if kind == "kso-authors":
        notes.append("kso-authors priced with k = R, lag = 1, retain = 0")
        k, retain, lag = arch.retain, 0, 1
    if kind == "kso-adaptive":
        notes.append("kso-adaptive priced at its starting k and lag")
    form = PRICED_AS[kind]
    group = arch.memory.gpu_group if arch.memory is not None else None
    if form == "kso" and group is not None and group == arch.agent.gpu_group:
        notes.append("its memory model shares the agent's GPUs: priced as the blocking SM")
        form = "sm"
    return form, k, retain, lag if form == "kso" else 0, notes


def _step_s(form: str, shape: Shape, eng: _Priced, policy: tuple[int, int, int], n: Any) -> Any:
    """Mean step latency at ``n`` agents in all (an array), each replica taking its share."""
    from theory.whole_task import task_latencies

    k, retain, lag = policy
    agents = np.asarray(n, dtype=float)
    per_replica = np.ceil(agents / eng.replicas)
    memory = None
    if form in ("sm", "kso") and eng.memory is not None:
        # the forms batch ``per_replica`` agents on each engine; the memory engine's
        # replicas serve the summaries of all agents, their own share each
        ratio = np.ceil(agents / eng.memory_replicas) / per_replica
        scale = np.stack([np.ones_like(ratio), ratio, ratio, ratio, ratio])
        memory = eng.memory.reshape(5, *([1] * ratio.ndim)) * scale
    p = _params(shape, k, retain, lag)
    return task_latencies(form, p, eng.agent, memory, agents=per_replica).latency / shape.steps


def _peak(shape: Shape, form: str, policy: tuple[int, int, int]) -> float:
    """Tokens one agent's context holds at most over a task."""
    from theory.bounds import fc_peak_context, kso_peak_context

    k, retain, lag = policy
    peak = fc_peak_context(shape.system, shape.observation, shape.action, shape.steps)
    if form != "fc" and k < shape.steps:
        # a context holds at most the task's steps, whatever retain + lag + k say
        peak = min(peak + shape.summary, kso_peak_context(shape.system, shape.observation,
                   shape.action, shape.summary, k, retain, lag))  # fmt: skip
    return float(peak)


def _kv_bound(shape: Shape, eng: _Priced, form: str, policy: tuple[int, int, int], cap: int) -> int:
    """Agents in all whose peak contexts fit their replicas' KV caches at once."""
    from theory.bounds import max_agents

    peak = _peak(shape, form, policy)
    return int(max_agents(eng.kv_tokens, min(peak, cap))) * eng.replicas


@dataclass(frozen=True)
class _Reference:
    """Full context across the scan: its step latency at 1..MAX_AGENTS_SCAN agents, and
    how many agents its KV cache holds."""

    step_s: np.ndarray
    #: its step latency at the scenario's agents (which may lie past the scan)
    at_agents: float
    kv_bound: int
    resolve: Any
    engine: _Priced


def _reference(scenario: Any, shape: Shape) -> tuple[Any, _Reference]:
    from sim.effectiveness import policy_features, resolve_rate

    fc = next((a for a in scenario.architectures if a.kind == "fc"), None)
    if fc is None:
        raise ComemInputError(
            f"{scenario.name}: no fc architecture: the closed forms compare against full"
            ' context (add one, e.g. `[[architectures]] name = "FC" kind = "fc"`)'
        )
    eng = _priced(fc)
    scan = np.arange(1, MAX_AGENTS_SCAN + 1)
    step = _step_s("fc", shape, eng, (1, 0, 0), scan)
    bound = _kv_bound(shape, eng, "fc", (1, 0, 0), fc.agent.max_model_len)
    # tasks past max_model_len end early, and resolve at the capped factor (as in a run)
    early = 1.0 if _peak(shape, "fc", (1, 0, 0)) > fc.agent.max_model_len else 0.0
    rate = resolve_rate(policy_features(fc), scenario.effectiveness, ended_early=early)
    at = float(_step_s("fc", shape, eng, (1, 0, 0), np.array([shape.agents]))[0])
    return fc, _Reference(step, at, bound, rate, eng)


def _crossover(lockstep: int | None, fc_kv: int, own_kv: int) -> tuple[int | None, str]:
    """(agents, why) from which a summarizing architecture beats FC: where its lockstep
    latency does, up to FC's KV limit ("lockstep"); else one past that limit ("fc-kv": FC
    preempts there, which the forms do not price); None with "own-kv" where that point is
    past the architecture's own KV limit (it preempts too: the forms cannot tell), and
    with "" where nothing in the scan wins."""
    limit = fc_kv + 1
    crossover: int | None = None
    why = ""
    if lockstep is not None and lockstep <= limit:
        crossover, why = lockstep, "lockstep"
    elif limit <= MAX_AGENTS_SCAN:
        crossover, why = limit, "fc-kv"
    if crossover is not None and crossover > own_kv:
        return None, "own-kv"
    return crossover, why


def _row(scenario: Any, shape: Shape, ref: _Reference, arch: Any, eng: _Priced, k: int,
         notes: list[str], curve: int = 0) -> FormRow:  # fmt: skip
    """One summarizing architecture at one k (``k`` is R for kso-authors)."""
    from sim.effectiveness import policy_features, resolve_delta, resolve_rate

    varied = arch.model_copy(update={"retain" if arch.kind == "kso-authors" else "k": k})
    form, k_f, retain, lag, _ = _policy(varied)
    policy = (k_f, retain, lag)
    scan = np.arange(1, MAX_AGENTS_SCAN + 1)
    step = _step_s(form, shape, eng, policy, scan)
    better = np.flatnonzero(step < ref.step_s)
    lockstep = int(better[0]) + 1 if better.size else None
    own_bound = _kv_bound(shape, eng, form, policy, arch.agent.max_model_len)
    crossover, why = _crossover(lockstep, ref.kv_bound, own_bound)
    at = float(_step_s(form, shape, eng, policy, np.array([shape.agents]))[0])
    # a context past max_model_len ends its task early (as FC's, in _reference); a k the
    # task never reaches makes no summary, and so loses nothing
    early = 1.0 if _peak(shape, form, policy) > arch.agent.max_model_len else 0.0
    made = 1.0 if k_f < shape.steps else 0.0
    rate = resolve_rate(policy_features(varied), scenario.effectiveness, ended_early=early,
                        summaries_made=made)  # fmt: skip
    delta = resolve_delta(rate, ref.resolve)
    return FormRow(
        architecture=arch.name, kind=arch.kind, priced_as=form, k=k,
        agents_per_replica=math.ceil(shape.agents / eng.replicas), step_s=at,
        speedup=ref.at_agents / at, kv_bound_agents=own_bound,
        crossover_agents=crossover, crossover_why=why,
        resolve_pp=delta.pp, resolve_pp_low=delta.low, resolve_pp_high=delta.high,
        resolve_extrapolated=rate.extrapolated, notes=notes,
        speedup_by_agents=[float(x) for x in (ref.step_s / step)[:curve]],
    )  # fmt: skip


def k_values(arch: Any, steps: int, ks: list[int] | None) -> list[int]:
    """The k (R for kso-authors) scanned: ``ks``, or powers of two, with the scenario's
    own; only those that make a summary within a task (k < steps)."""
    own = arch.retain if arch.kind == "kso-authors" else arch.k
    chosen = ks if ks else [2**i for i in range(1, 12)]
    return sorted({k for k in [*chosen, own] if 1 <= k < steps})


def check_cost(scenario: Any, shape: Shape, ks: list[int] | None) -> None:
    """Refuse pricing more task steps than :data:`calibration.limits.FORM_STEPS` (each
    row prices every step at every agent count of the scan); the agents do not count."""
    from calibration import limits

    rows = 1 + sum(
        1 + len(k_values(a, shape.steps, ks)) for a in scenario.architectures if a.kind in PRICED_AS
    )
    limits.check(
        limits.FORM_STEPS, shape.steps * rows,
        f"{scenario.name}: {shape.steps} steps x {rows} rows (architectures and k scanned)",
    )  # fmt: skip


def curve_agents(agents: int, fc_kv_bound: int) -> int:
    """How many agents a figure's curves span: past the scenario's load and FC's KV limit."""
    return min(MAX_AGENTS_SCAN, max(32, 4 * agents, 2 * (fc_kv_bound + 1)))


def evaluate(scenario: Any, ks: list[int] | None = None, curves: bool = False) -> dict[str, Any]:
    """The closed forms' answer for every summarizing architecture of ``scenario``, at its
    own k and across ``ks``, against its full-context architecture; ``curves``: each
    scanned k's speedup at every number of agents too (for the figure)."""
    shape, notes = task_shape(scenario)
    check_cost(scenario, shape, ks)
    fc, ref = _reference(scenario, shape)
    others = [a.name for a in scenario.architectures if a.kind == "fc" and a is not fc]
    if others:
        notes.append(f"compared against the first full-context architecture, {fc.name};"
                     f" {', '.join(others)} not priced")  # fmt: skip
    fc_eng_len = fc.agent.max_model_len
    peak = _peak(shape, "fc", (1, 0, 0))
    if peak > fc_eng_len:
        step = math.ceil((fc_eng_len - shape.system) / (shape.observation + shape.action))
        near = f"near step {step}" if step > 1 else "at its first step"
        notes.append(
            f"FC's context ({peak:,.0f} tokens at the last step) passes its max_model_len"
            f" ({fc_eng_len:,}) {near}: the forms price its tasks whole, where the"
            " simulation ends them (`comem run` reports the partial work), and its"
            " resolve rate is the capped one of tasks that end early"
        )
    if shape.agents > ref.kv_bound:
        notes.append(
            f"at {shape.agents} agents FC's peak contexts do not all fit its KV cache (it holds"
            f" {ref.kv_bound}): FC preempts and recomputes, which the forms do not price: its"
            " step latency here is a lower bound, so each 'vs FC' is a lower bound too"
        )
    dropped = sorted(k for k in ks or [] if k >= shape.steps)
    if dropped:
        notes.append(f"k {', '.join(map(str, dropped))}: no summary in a {shape.steps}-step"
                     " task, left out")  # fmt: skip
    rows, scans, engines = [], {}, {fc.name: ref.engine}
    for arch in scenario.architectures:
        if arch.kind not in PRICED_AS:
            continue
        eng = engines[arch.name] = _priced(arch)
        own = arch.retain if arch.kind == "kso-authors" else arch.k
        form, k_f, retain, lag, arch_notes = _policy(arch)
        if _peak(shape, form, (k_f, retain, lag)) > arch.agent.max_model_len:
            arch_notes.append(
                f"its context passes its agent's max_model_len ({arch.agent.max_model_len:,}):"
                " the simulation ends its tasks there; its resolve rate is the capped one"
            )
        if own >= shape.steps:
            letter = "R" if arch.kind == "kso-authors" else "k"
            arch_notes.append(f"{letter} = {own} makes no summary in a {shape.steps}-step task")
        rows.append(_row(scenario, shape, ref, arch, eng, own, arch_notes))
        span = curve_agents(shape.agents, ref.kv_bound) if curves else 0
        scans[arch.name] = [_row(scenario, shape, ref, arch, eng, k, [], span)
                            for k in k_values(arch, shape.steps, ks)]  # fmt: skip
    if not rows:
        raise ComemInputError(
            f"{scenario.name}: no summarizing architecture (cp, sm, kso, kso-authors or"
            " kso-adaptive) to compare with full context"
        )
    fit, fit_notes = surrogate_fit(engines)
    return {
        "scenario": scenario.name,
        "shape": asdict(shape),
        "surrogate_error": fit,
        "fc": {
            "architecture": fc.name,
            "step_s": ref.at_agents,
            "kv_bound_agents": ref.kv_bound,
            # its resolve rate: the scenario's baseline, 0 where a cap ends its tasks
            "resolve_rate": ref.resolve.rate,
        },  # fmt: skip
        "baseline_resolve_rate": scenario.effectiveness.baseline_resolve_rate,
        "rows": [asdict(r) for r in rows],
        "k_scan": {name: [asdict(r) for r in scan] for name, scan in scans.items()},
        "notes": fit_notes + notes,
    }


def _cross_text(r: dict[str, Any]) -> str:
    n = r["crossover_agents"]
    if r["crossover_why"] == "own-kv":
        return f"? (own KV {r['kv_bound_agents']})"
    if n is None:
        return f"never (<= {MAX_AGENTS_SCAN})"
    return f"{n}" + (" (FC's KV)" if r["crossover_why"] == "fc-kv" else "")


def _pp_text(r: dict[str, Any]) -> str:
    """'-1.9 [-9.0, +4.1]', with '^' where the effectiveness model extrapolates."""
    if r["resolve_pp"] is None:
        return "-"
    interval = (
        f" [{r['resolve_pp_low']:+.1f}, {r['resolve_pp_high']:+.1f}]"
        if r.get("resolve_pp_low") is not None
        else ""
    )
    return f"{r['resolve_pp']:+.1f}{interval}{'^' if r.get('resolve_extrapolated') else ' '}"


def _best_line(name: str, scan: list[dict[str, Any]], agents: int) -> str:
    if not scan:
        return f"{name}: no k below the task's steps makes a summary"
    fastest = max(scan, key=lambda r: r["speedup"])
    verdict = "faster than" if fastest["speedup"] > 1 else "no faster than"
    return (
        f"{name}: at {agents} agents its fastest k is {fastest['k']}, {fastest['speedup']:.2f}x"
        f" FC's step latency ({verdict} FC), resolve rate {fastest['resolve_pp']:+.1f} pp"
    )


def text_report(result: dict[str, Any]) -> list[str]:
    """What ``comem theory SCENARIO`` prints."""
    s, fc = result["shape"], result["fc"]
    lines = [
        f"closed forms on {result['scenario']}: N identical agents in lockstep per replica,"
        " each engine by its linear surrogate, the KV cache not simulated",
        f"task: {s['steps']} steps; system {s['system']:,.0f} tokens, per step observation"
        f" {s['observation']:,.0f} + action {s['action']:,.0f}, tool {s['tool_s']:g} s;"
        f" summaries {s['summary']:,.0f} tokens; {s['agents']} agents",
        f"{fc['architecture']} (fc): mean step {fc['step_s']:.3g} s at {s['agents']} agents; its"
        f" KV cache holds {fc['kv_bound_agents']} agents' peak contexts",
    ]
    if result.get("surrogate_error"):
        fits = ", ".join(f"{k} {v['mape']:.0%}" for k, v in result["surrogate_error"].items())
        lines.append(f"surrogate error (mean, against each engine's latency model): {fits}")
    for row in result["rows"]:
        name, scan = row["architecture"], result["k_scan"][row["architecture"]]
        k_name = "R" if row["kind"] == "kso-authors" else "k"
        lines += ["", f"{name} ({row['kind']}, priced as {row['priced_as']}):",
                  f"  {k_name:>4} {'step s':>8} {'vs FC':>7} {'beats FC from':>16}"
                  f" {'KV holds':>9} {'resolve pp [95%]':>22}"]  # fmt: skip
        for r in scan:
            mark = "*" if r["k"] == row["k"] else " "
            lines.append(
                f"{mark} {r['k']:>4} {r['step_s']:>8.3g} {r['speedup']:>6.2f}x"
                f" {_cross_text(r):>16} {r['kv_bound_agents']:>9} {_pp_text(r):>22}"
            )
        lines += [f"  note: {n}" for n in row["notes"]]
        lines.append(_best_line(name, scan, s["agents"]))
    lines += [
        "",
        "* the scenario's own k. vs FC: FC's mean step latency over this one's at the"
        " scenario's agents (> 1: faster). beats FC from: the fewest agents (in all) at"
        " which it is faster; (FC's KV): only because FC's contexts no longer fit its KV"
        " cache there, which the forms do not price past; ? (own KV N): not faster up to"
        " FC's KV limit, and its own KV cache fills first (past N agents), so the forms"
        " cannot tell: simulate. KV holds: agents whose peak"
        " contexts fit. resolve pp: the fitted effectiveness model's resolve-rate change"
        f" against FC's {fc['resolve_rate']:.1%} (the scenario's [effectiveness]"
        f" baseline_resolve_rate, {result['baseline_resolve_rate']:.1%}, times the share"
        " of FC's tasks no cap ends), percentage points, 95% interval;"
        " ^ = k or the raw tail outside the range it was fitted on (extrapolated).",
        "The simulation (`comem run`) is the answer at the scenario's load, with queueing,"
        " preemption and the KV cache; these forms show how it moves with k and agents.",
    ]
    return lines + [f"note: {n}" for n in result["notes"]]
