"""What ``comem plan`` tells the user: the ranked table, what it assumed, the verdict
against full context, the edges of its search, and the chosen deployment as a scenario
file ``comem run`` takes."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comem.plan.rank import PlanRow
from comem.plan.run import MAX_SLO_ROUNDS, SloRounds
from comem.plan.scenario import _workload, _workload_model, scenario_dict
from comem.plan.space import AGENT_UTIL_COLOCATED, MEMORY_UTIL_COLOCATED, Candidate, PlanSpec


def table_markdown(rows: list[PlanRow], limit: int = 15) -> str:
    head = (
        "| rank | deployment | GPUs | mean step s (sim) | p99 step s (sim) | steps/s/GPU"
        " (sim) | mean step s (estimate) | KV bound (agents/replica) | resolve % [95%] |"
        " resolve pp vs uncapped FC [95%] | notes |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows[:limit]:
        notes = []
        if r.estimate_optimistic:
            notes.append("estimate omits preemption or turn-taking")
        if not r.summarizes:
            why = (
                "memory engine refused them"
                if r.summaries_refused
                else "none was due and back in time: tasks shorter than k, or late"
            )
            notes.append(f"made no summary ({why}): ran as full context")
        elif r.summaries_made < 1:
            notes.append(f"made {r.summaries_made:.0%} of its summaries")
        if r.moe_dp_pessimistic:
            notes.append("MoE DP pessimistic")
        if r.simulated and not r.meets_slo:
            notes.append("misses SLO" if r.tasks_ended_early == 0 else "tasks ended early")
        if r.error:
            notes.append("cannot run (see the warnings)")
        elif not r.simulated:
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


def band_caveats(spec: PlanSpec, rows: list[PlanRow]) -> list[str]:
    """'caveat: ...' where the chosen deployment's agent lies outside the serving rows the
    error bands come from (another GPU, a new attention family): its simulated numbers
    carry a wider error than the calibration's (:func:`calibration.uncertainty.band_caveat`)."""
    from calibration.errors import ComemInputError
    from sim.config import validate
    from sim.engine_latency import engine_latency
    from sim.scenario import UNION_TAGS, Scenario

    best = Candidate(**rows[0].candidate)
    try:
        scenario = validate(Scenario, scenario_dict(spec, best), "plan", UNION_TAGS)
        # the engine's own latency model, as run's caveat reads it (sim.compare)
        caveat = getattr(engine_latency(scenario.architectures[-1].agent), "band_caveat", "")
    except ComemInputError:
        return []
    return [f"caveat: {caveat}"] if caveat else []


def plan_markdown(spec: PlanSpec, rows: list[PlanRow], payload: dict[str, Any]) -> str:
    """plan.md: what the command printed (search, assumptions, every row, the choice, the
    verdict, warnings and caveats), so the file answers the question on its own."""
    notes = [f"- warning: {w}" for w in payload.get("warnings", [])]
    notes += [f"- {c}" for c in payload.get("caveats", [])]
    text = text_report(spec, rows, payload, len(rows), markdown=True)
    return text + ("\n" + "\n".join(notes) + "\n" if notes else "")


def text_report(
    spec: PlanSpec, rows: list[PlanRow], payload: dict[str, Any], show: int, markdown: bool = False
) -> str:
    """What ``comem plan`` prints: the search, what it assumed (``payload``: what
    plan.json holds), the ``show`` best rows, the chosen deployment and the verdict."""
    best = rows[0]
    rounds = rounds_text(SloRounds(**payload["slo_rounds"])) if "slo_rounds" in payload else ""
    head = (
        f"{payload['candidates']} candidates, {payload['simulated']} simulated (the rest"
        f" pruned by the closed form and the KV bound{rounds}); objective {spec.objective}"
        + (f", SLO p99 step <= {spec.slo_step_s} s" if spec.slo_step_s else "")
        + (
            f", resolve loss <= {spec.max_resolve_loss_pp} pp (pessimistic)"
            if spec.max_resolve_loss_pp is not None
            else ""
        )
    )
    missed = unmet(spec, rows)
    chosen = (
        f"chosen: {best.label}; resolve rate {100 * best.resolve_rate:.1f}%"
        f" [{100 * best.resolve_rate_low:.1f}, {100 * best.resolve_rate_high:.1f}],"
        f" {best.resolve_rate_delta_pp:+.1f} pp vs full context without a cap"
        f" [{best.resolve_rate_delta_pp_low:+.1f}, {best.resolve_rate_delta_pp_high:+.1f}]"
        + (f" ({missed})" if missed else "")
    )
    lines = [head, "assumptions:", *(f"- {line}" for line in payload["assumptions"])]
    spread = estimate_spread(rows)
    if spread:
        lines.append(f"- {spread}")
    gap = "\n" if markdown else ""  # Markdown: blank lines around the table and lines
    return (
        "\n".join(lines) + "\n" + gap + table_markdown(rows, limit=show) + gap
        + chosen + "\n" + gap + payload["verdict"] + "\n"
    )  # fmt: skip


def estimate_spread(rows: list[PlanRow]) -> str:
    """'the estimate ran 0.55-1.20x the simulated step (median 0.90x) over 8 simulated
    candidates': how far the closed form that prunes can be off on this plan ('' with
    fewer than two simulated)."""
    ratios = sorted(
        r.estimate_mean_step_s / r.mean_step_s
        for r in rows
        if r.simulated and r.mean_step_s > 0 and math.isfinite(r.mean_step_s)
    )
    if len(ratios) < 2:
        return ""
    median = statistics.median(ratios)
    return (
        f"the estimate that prunes ran {ratios[0]:.2f}-{ratios[-1]:.2f}x the simulated mean step"
        f" (median {median:.2f}x) over the {len(ratios)} simulated candidates: a pruned"
        " candidate's estimate is that uncertain"
    )


def rounds_text(r: SloRounds) -> str:
    """'; 6 of them in 1 extra round because none of the first 14 met the SLO' (how
    many :func:`~comem.plan.run.run_plan` simulated toward an unmet SLO, and why it
    stopped); '' when no round was needed."""
    if not r.stopped:
        return ""
    plural = "s" if r.rounds != 1 else ""
    did = (
        f"; {r.extra} of them in {r.rounds} extra round{plural} of the candidates likeliest"
        f" to meet the SLO, because none of the first {r.first} met it"
        if r.rounds
        else "; none of them met the SLO"
    )
    why = {
        "met": "",
        "rounds": f", {MAX_SLO_ROUNDS} rounds being the most a plan runs",
        "space": ", and no candidate is left that could (all simulated, or ruled out)",
        "budget": ", and the simulation budget allows no more (--allow-large lifts it)",
    }[r.stopped]
    return did + why


def unmet(spec: PlanSpec, rows: list[PlanRow]) -> str:
    """'NO simulated candidate meets the SLO (p99 step <= 15 s); the lowest p99 simulated
    is ...' after what was asked (the SLO, the resolve-loss limit) and what every
    deployment needs (finished tasks, its summaries made); '' when the chosen one meets
    all of it."""
    if not rows or rows[0].eligible:
        return ""
    sim = [r for r in rows if r.simulated]
    slo, loss = spec.slo_step_s, spec.max_resolve_loss_pp
    # (asked by the user, what it says, whether a row meets it)
    needs: list[tuple[bool, str, Callable[[PlanRow], bool]]] = []
    if slo is not None:
        text = f"meets the SLO (p99 step <= {slo:g} s)"
        needs.append((True, text, lambda r: r.p99_step_s <= slo))
    if loss is not None:
        text = f"loses at most {loss:g} pp of resolve rate (pessimistic)"
        needs.append((True, text, lambda r: r.meets_resolve))
    needs.append((False, "finishes its tasks", lambda r: r.tasks_ended_early == 0))
    needs.append((False, "makes its summaries", lambda r: r.summarizes))
    # what no simulated candidate meets at all; else what was asked, and what bites
    alone = [text for _, text, ok in needs if not any(ok(r) for r in sim)]
    named = alone or [text for asked, text, ok in needs if asked or not all(ok(r) for r in sim)]
    out = "NO simulated candidate " + " and ".join(named)
    finished = [r for r in sim if r.tasks_ended_early == 0 and r.summarizes]
    if slo is not None and finished:
        fastest = min(finished, key=lambda r: r.p99_step_s)
        out += f"; the lowest p99 simulated is {fastest.p99_step_s:.2f} s ({fastest.label})"
    return out


def _resolve_cells(r: PlanRow) -> str:
    """The two effectiveness cells of a table row."""
    return (
        f"{100 * r.resolve_rate:.1f} [{100 * r.resolve_rate_low:.1f},"
        f" {100 * r.resolve_rate_high:.1f}]"
        f" | {r.resolve_rate_delta_pp:+.1f} [{r.resolve_rate_delta_pp_low:+.1f},"
        f" {r.resolve_rate_delta_pp_high:+.1f}]"
    )


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
    runner_up = best_summarizing(rows)
    if c.kind == "fc" and runner_up is not None:
        # full context won: the best summarizing deployment beside it, so `comem run` and
        # `comem explain` of the file compare the two
        other = Candidate(**runner_up.candidate)
        lines.append(f"# full context won; beside it, the best summarizing one: {other.label}")
        data["architectures"] += scenario_dict(spec, other)["architectures"]
        data["name"] = f"plan: {c.label} vs {other.label}"
    elif c.kind != "fc" and fc is not None:
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
    from comem.plan.space import offload_not_modelled

    offload = {(False,): "off", (True,): "on", (False, True): "both", (True, False): "both"}
    no_offload = offload_not_modelled(spec)
    offload_text = (
        f"off ({no_offload})"
        if no_offload
        else f"{offload[tuple(spec.offload)]} ({spec.offload_gib:g} GiB)"
    )
    return [
        f"workload (from {source}{set_text}): {workload(model)}",
        f"agent {spec.agent_model} on at most {min(spec.gpus, spec.max_gpus or spec.gpus)}"
        f" x {spec.gpu}, dtypes {_dtypes_text(spec)}, max_model_len {spec.max_model_len};"
        " TP and DP of 1, 2, 4 or 8 within those GPUs, EP where MoE",
        f"memory model {spec.memory_model} bf16 (TP 1-4 dedicated, or co-located sharing the"
        f" agent's GPUs: memory split {AGENT_UTIL_COLOCATED} / {MEMORY_UTIL_COLOCATED}),"
        f" max_model_len {spec.memory_max_model_len}",
        f"kinds {' '.join(spec.kinds)}; k tried {' '.join(map(str, spec.k_values))}; retain"
        f" {spec.retain}, lag {spec.lag} (--lag; not searched); CPU KV offload {offload_text}",
        f"resolve rates: full context {spec.baseline_resolve_rate:.0%} on these tasks"
        f" (assumed), memory-model loss scale {spec.memory_loss_scale:g}",
    ]


def best_summarizing(rows: list[PlanRow]) -> PlanRow | None:
    """The best simulated deployment that summarizes and made its summaries (rows are
    ranked), None when there is none."""
    return next(
        (
            r for r in rows
            if r.simulated and r.candidate["kind"] != "fc" and r.summarizes and r.mean_step_s > 0
        ),
        None,
    )  # fmt: skip


def _dtypes_text(spec: PlanSpec) -> str:
    """The dtypes the plan tried, and those asked for that it could not."""
    from comem.plan.space import usable_dtypes

    used = usable_dtypes(spec)
    dropped = [d for d in spec.dtypes if d not in used]
    left = (
        f" ({' '.join(dropped)} left out: not calibrated on {spec.gpu}, or an expert-only"
        " format for a dense model)"
        if dropped
        else ""
    )
    return " ".join(used) + left


def verdict(rows: list[PlanRow], spec: PlanSpec) -> str:
    """The chosen deployment against the best full-context one simulated, by mean step
    latency (what ``comem run`` of chosen_scenario.toml prints as its verdict); when full
    context is chosen, the best summarizing deployment against it. Where no candidate
    simulated meets what was asked (:func:`unmet`), it says so first."""
    missed = unmet(spec, rows)
    line = _verdict(rows)
    if not missed:
        return line
    return (
        f"verdict: {missed}, so the choice is the best by {spec.objective} of those that"
        f" miss; {line.removeprefix('verdict: ')}"
    )


def _fails(r: PlanRow) -> str:
    """' (misses the SLO)', or what else keeps a simulated deployment from being chosen;
    '' where nothing does."""
    if r.eligible:
        return ""
    if r.tasks_ended_early:
        return " (ends tasks early)"
    if not r.meets_slo:
        return " (misses the SLO)"
    return (
        f" (loses too many resolved tasks: {r.resolve_rate_delta_pp_low:+.1f} pp at the"
        f" pessimistic 95% end, {r.resolve_rate_delta_pp:+.1f} pp expected)"
    )


def _verdict(rows: list[PlanRow]) -> str:
    best = rows[0]
    fc = next((r for r in rows if r.simulated and r.candidate["kind"] == "fc"), None)
    if best.candidate["kind"] == "fc":
        other = best_summarizing(rows)
        if other is None:
            return (
                f"verdict: full context wins: {best.label} (no summarizing deployment"
                " simulated made its summaries)"
            )
        if not best.mean_step_s > 0:
            return f"verdict: {best.label}: nothing to compare by (no step of it finished)"
        x = best.mean_step_s / other.mean_step_s  # the summarizing one's speedup
        word = "slower" if x <= 1 else "faster"
        return (
            f"verdict: full context wins: {best.label}; the best summarizing deployment,"
            f" {other.label}{_fails(other)}, is {max(x, 1 / x):.2f}x {word} by mean step latency"
            f" (speedup {x:.2f}x); chosen_scenario.toml holds both: comem run it for every"
            " metric on the same steps"
        )
    if fc is None:
        return f"verdict: {best.label} (no full-context deployment was simulated to compare with)"
    if not (best.mean_step_s > 0 and fc.mean_step_s > 0):
        return (
            f"verdict: {best.label}: nothing to compare by (no step finished in it or in the"
            f" best full context, {fc.label}{_ended_early(fc)})"
        )
    x = fc.mean_step_s / best.mean_step_s
    word = "faster" if x >= 1 else "slower"
    return (
        f"verdict: {best.label} is {max(x, 1 / x):.2f}x {word} than the best full context"
        f" ({fc.label}{_ended_early(fc)}) by mean step latency over its own steps (speedup"
        f" {x:.2f}x){_tail_worse(best, fc)}; chosen_scenario.toml holds both: comem run it"
        " for every metric on the same steps"
    )


def _tail_worse(best: PlanRow, fc: PlanRow) -> str:
    """The chosen deployment's p99 step, where it is worse than full context's: ranked by
    the mean, a summarizing deployment can trade its tail (a late summary stalls a step)."""
    if not (best.p99_step_s > fc.p99_step_s > 0):
        return ""
    return (
        f", but its p99 step is {best.p99_step_s / fc.p99_step_s:.2f}x full context's"
        f" ({best.p99_step_s:.2f} s against {fc.p99_step_s:.2f} s; --objective p99-step"
        " ranks by it)"
    )


def _ended_early(fc: PlanRow) -> str:
    """What a baseline that ended tasks early is worth: its speed is over the steps it ran
    and it resolves what the cap left (without this the verdict read as a fair race)."""
    if not fc.tasks_ended_early:
        return ""
    return (
        f", which ended {fc.tasks_ended_early} task(s) early: a prompt past max_model_len or"
        f" past its whole KV cache; resolve rate {100 * fc.resolve_rate:.1f}%"
    )


def run_errors(rows: list[PlanRow]) -> list[str]:
    """One warning per candidate whose simulation could not run (a deployment the engine
    cannot make progress on): it is left out of the choice, and the plan goes on."""
    return [f"{r.label} could not run, left out: {r.error}" for r in rows if r.error]


def edge_warnings(spec: PlanSpec, rows: list[PlanRow]) -> list[str]:
    """The chosen deployment on the edge of what the plan searched: a better one may lie
    beyond it."""
    c = Candidate(**rows[0].candidate)
    out = []
    # the chosen deployment's k, or when full context won, the best summarizing one's
    runner = best_summarizing(rows) if c.kind == "fc" else None
    with_k = Candidate(**runner.candidate) if runner is not None else c
    if with_k.kind != "fc":
        whose = "the best k" if runner is None else "the best summarizing deployment's k"
        note = _k_warning(spec, rows, with_k.k, whose)
        if note:
            out.append(note)
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


def _k_warning(spec: PlanSpec, rows: list[PlanRow], k: int, whose: str) -> str:
    """The best k on the edge of the k that make summaries: the smallest tried (try
    smaller), or the largest tried that makes summaries (try larger ones short of the
    tasks' length, at or above which none is due; where there is none, it says so rather
    than suggest k that summarize nothing); '' elsewhere."""
    from comem.plan.estimate import task_steps

    ks = sorted(set(spec.k_values))
    if len(ks) < 2:
        return ""
    length = task_steps(spec)
    made = _k_made(rows)
    useful = [x for x in ks if made.get(x, x < length)]
    dead = [x for x in ks if x > k and x not in useful]
    tried = f"(--k {' '.join(map(str, ks))})"
    dead_text = (
        f"; the larger k tried ({' '.join(map(str, dead))}) make no summary on these tasks"
        f" ({length} steps on average)"
        if dead
        else ""
    )
    if k == ks[0]:
        smaller = sorted({x for x in (k // 2, (3 * k) // 4) if x >= 1} - {k})
        if not smaller:
            return ""
        return (
            f"{whose} ({k}) is the smallest tried {tried}: a better one may lie beyond; try"
            f" --k {' '.join(map(str, [*smaller, k]))}{dead_text}"
        )
    if not useful or k != useful[-1]:
        return ""
    edge = "the largest tried that makes summaries" if dead else "the largest tried"
    cap = min([length, *dead])  # a k from which on none was, or would be, made
    larger = [x for x in (k + k // 2, 2 * k) if k < x < cap]
    if larger:
        return (
            f"{whose} ({k}) is {edge} {tried}: a better one may lie beyond; try --k"
            f" {' '.join(map(str, sorted({k, *larger})))}{dead_text}"
        )
    return (
        f"{whose} ({k}) is {edge} {tried}, and no larger k is worth trying: 1.5x or 2x it"
        f" reaches the tasks' length ({length} steps on average), where no summary is"
        f" due{dead_text}"
    )


def _k_made(rows: list[PlanRow]) -> dict[int, bool]:
    """Per k simulated: whether a summarizing deployment with it made summaries (False
    where none made any and no engine refused one: none was due, the tasks being
    shorter than k)."""
    made: dict[int, bool] = {}
    for r in rows:
        if not r.simulated or r.candidate["kind"] == "fc":
            continue
        k = int(r.candidate["k"])
        if r.summarizes:
            made[k] = True
        elif r.summaries_refused == 0:
            made.setdefault(k, False)
    return made


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
