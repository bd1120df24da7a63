"""What ``comem plan`` tells the user: the ranked table, what it assumed, the verdict
against full context, the edges of its search, and the chosen deployment as a scenario
file ``comem run`` takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comem.plan.rank import PlanRow
from comem.plan.scenario import _workload, _workload_model, scenario_dict
from comem.plan.space import AGENT_UTIL_COLOCATED, MEMORY_UTIL_COLOCATED, Candidate, PlanSpec


def table_markdown(rows: list[PlanRow], limit: int = 15) -> str:
    head = (
        "| rank | deployment | GPUs | mean step s (sim) | p99 step s (sim) | steps/s/GPU"
        " (sim) | mean step s (estimate) | KV bound (agents/replica) | resolve % [95%] |"
        " resolve pp vs FC [95%] | notes |\n"
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


def text_report(spec: PlanSpec, rows: list[PlanRow], payload: dict[str, Any], show: int) -> str:
    """What ``comem plan`` prints: the search, what it assumed (``payload``: what
    plan.json holds), the ``show`` best rows, the chosen deployment and the verdict."""
    best = rows[0]
    head = (
        f"{payload['candidates']} candidates, {payload['simulated']} simulated (the rest"
        f" pruned by the closed form and the KV bound); objective {spec.objective}"
        + (f", SLO p99 step <= {spec.slo_step_s} s" if spec.slo_step_s else "")
        + (
            f", resolve loss <= {spec.max_resolve_loss_pp} pp (pessimistic)"
            if spec.max_resolve_loss_pp is not None
            else ""
        )
    )
    met = best.meets_slo and best.meets_resolve and best.summarizes
    chosen = (
        f"chosen: {best.label}; resolve rate {100 * best.resolve_rate:.1f}%"
        f" [{100 * best.resolve_rate_low:.1f}, {100 * best.resolve_rate_high:.1f}],"
        f" {best.resolve_rate_delta_pp:+.1f} pp vs full context"
        f" [{best.resolve_rate_delta_pp_low:+.1f}, {best.resolve_rate_delta_pp_high:+.1f}]"
        + (
            ""
            if met
            else " (NO candidate meets the SLO and the resolve-loss limit, or makes its summaries)"
        )
    )
    lines = [head, "assumptions:", *(f"- {line}" for line in payload["assumptions"])]
    return (
        "\n".join(lines) + "\n" + table_markdown(rows, limit=show)
        + chosen + "\n" + payload["verdict"] + "\n"
    )  # fmt: skip


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
        f" {spec.retain}, lag 1; CPU KV offload {offload_text}",
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


def verdict(rows: list[PlanRow]) -> str:
    """The chosen deployment against the best full-context one simulated, by mean step
    latency (what ``comem run`` of chosen_scenario.toml prints as its verdict); when full
    context is chosen, the best summarizing deployment against it."""
    best = rows[0]
    fc = next((r for r in rows if r.simulated and r.candidate["kind"] == "fc"), None)
    if best.candidate["kind"] == "fc":
        other = best_summarizing(rows)
        if other is None or not best.mean_step_s > 0:
            return (
                f"verdict: full context wins: {best.label} (no summarizing deployment"
                " simulated made its summaries)"
            )
        x = best.mean_step_s / other.mean_step_s  # the summarizing one's speedup
        word = "slower" if x <= 1 else "faster"
        return (
            f"verdict: full context wins: {best.label}; the best summarizing deployment,"
            f" {other.label}, is {max(x, 1 / x):.2f}x {word} by mean step latency"
            f" (speedup {x:.2f}x); chosen_scenario.toml holds both: comem run it for every"
            " metric on the same steps"
        )
    if fc is None or not best.mean_step_s > 0:
        return f"verdict: {best.label} (no full-context deployment was simulated to compare with)"
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
    # the chosen deployment's k, or when full context won, the best summarizing one's
    runner = best_summarizing(rows) if c.kind == "fc" else None
    with_k = Candidate(**runner.candidate) if runner is not None else c
    if with_k.kind != "fc" and len(ks) > 1 and with_k.k in (ks[0], ks[-1]):
        hint = _k_hint(with_k.k, with_k.k == ks[-1], spec.steps)
        if hint:
            side = "largest" if with_k.k == ks[-1] else "smallest"
            whose = "the best k" if runner is None else "the best summarizing deployment's k"
            out.append(
                f"{whose} ({with_k.k}) is the {side} tried (--k {' '.join(map(str, ks))}):"
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
