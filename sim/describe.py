"""One line each for what a result depends on: the deployment behind an architecture
(GPUs, TP / EP / DP, dtype, where the memory model runs, CPU offload) and the workload
(tokens per step, context cap, k, retain). Every command that prints a verdict prints
these, so two answers can be told apart at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def engine_layout(engine: Any) -> str:
    """``glm-4.7 fp8 TP4+EP`` (``xDP2`` with data parallelism)."""
    lay = f"TP{engine.tp}"
    if engine.data_parallel_size > 1:
        lay += f"xDP{engine.data_parallel_size}"
    if engine.enable_expert_parallel:
        lay += "+EP"
    return f"{engine.model} {engine.dtype} {lay}"


def engine_gpus(engine: Any) -> int:
    return int(engine.tp * engine.data_parallel_size)


def architecture_gpus(arch: Any) -> int:
    """GPUs an architecture uses: the agent's, plus the memory model's unless it shares
    the agent's GPUs (the same ``gpu_group``)."""
    n = engine_gpus(arch.agent)
    memory = arch.memory
    if memory is not None and not _shared(arch):
        n += engine_gpus(memory)
    return n


def _shared(arch: Any) -> bool:
    memory = arch.memory
    return bool(
        memory is not None and memory.gpu_group and memory.gpu_group == arch.agent.gpu_group
    )


def _offload(engine: Any) -> str:
    size = engine.kv_offloading_size
    return f", CPU KV offload {size:g} GiB" if size else ""


def deployment(arch: Any) -> str:
    """Where an architecture runs, in one line."""
    agent = arch.agent
    text = (
        f"{architecture_gpus(arch)} x {agent.gpu}: agent {engine_layout(agent)}"
        f" (max_model_len {agent.max_model_len}{_offload(agent)})"
    )
    memory = arch.memory
    if memory is not None:
        where = (
            "sharing the agent's GPUs"
            if _shared(arch)
            else f"on {engine_gpus(memory)} own GPU{'s' if engine_gpus(memory) > 1 else ''}"
        )
        text += (
            f"; memory {engine_layout(memory)} {where}"
            f" (max_model_len {memory.max_model_len}{_offload(memory)})"
        )
    return text


def policy(arch: Any) -> str:
    """The context policy's parameters that matter for its kind."""
    kind = arch.kind
    if kind == "fc":
        return "fc: the whole history"
    if kind == "kso-authors":
        return f"kso-authors: retain {arch.retain} (the authors' R; summary every R steps)"
    if kind in ("kso", "kso-adaptive"):
        return f"{kind}: k {arch.k}, lag {arch.lag}, retain {arch.retain}"
    return f"{kind}: k {arch.k}, retain {arch.retain}"


def workload(w: Any) -> str:
    """The workload in the terms a user thinks in (tokens per step, steps, tools)."""
    head = f"{w.agents} agents x {w.tasks_per_agent} task(s), {w.arrivals}"
    if w.kind != "synthetic":
        return f"{head}; {w.kind} workload{_shape_text(w)}; summaries {w.summary_tokens} tokens"
    first = w.first_observation_tokens
    first_text = "" if first is None else f" (first {first})"
    pad = f"; prompts padded to {w.input_target_tokens}" if w.input_target_tokens else ""
    return (
        f"{head}; {w.steps} steps; system {w.system_tokens} tokens, per step"
        f" observation {w.observation_tokens}{first_text} + decoded {w.action_tokens} tokens,"
        f" tool {w.tool_s:g} s ({w.tool_s_dist}); mean full-context prompt"
        f" {mean_context_tokens(w):,.0f} tokens; summaries {w.summary_tokens} tokens{pad}"
    )


#: tasks drawn (with a fixed seed) to state a trace or fitted workload's means
MEAN_SHAPE_TASKS = 256


@dataclass(frozen=True)
class TaskShape:
    """A trace or fitted workload's means over :data:`MEAN_SHAPE_TASKS` tasks: steps,
    system prompt, and per step the observation, the action decoded (reasoning included),
    the part of it kept in the context, and tool time: what its answers turn on."""

    steps: float
    system_tokens: float
    observation_tokens: float
    action_tokens: float
    kept_tokens: float
    tool_s: float


def mean_task_shape(load: Any) -> TaskShape:
    """The :class:`TaskShape` of ``load``, a trace or fitted workload (a trace workload
    needs its steps CSV)."""
    import numpy as np

    sample = load.model_copy(update={"agents": MEAN_SHAPE_TASKS, "tasks_per_agent": 1})
    tasks = [t for own in sample.tasks(np.random.default_rng(0)) for t in own]
    steps = [s for t in tasks for s in t.steps]
    return TaskShape(
        steps=float(np.mean([len(t.steps) for t in tasks])),
        system_tokens=float(np.mean([t.system_tokens for t in tasks])),
        observation_tokens=float(np.mean([s.observation for s in steps])),
        action_tokens=float(np.mean([s.action for s in steps])),
        kept_tokens=float(np.mean([s.action if s.kept is None else s.kept for s in steps])),
        tool_s=float(np.mean([s.tool_s for s in steps])),
    )


def _shape_text(w: Any) -> str:
    """' (means of 256 drawn tasks: 34 steps, system 1,780 tokens, ...)' of a trace or
    fitted workload; '' where its tasks cannot be drawn here (a trace without its CSV:
    the run says why)."""
    from calibration.errors import ComemInputError

    try:
        m = mean_task_shape(w)
    except ComemInputError:
        return ""
    kept = "" if round(m.kept_tokens) == round(m.action_tokens) else f" ({m.kept_tokens:,.0f} kept)"
    return (
        f" (means of {MEAN_SHAPE_TASKS} drawn tasks: {m.steps:.0f} steps, system"
        f" {m.system_tokens:,.0f} tokens, per step observation {m.observation_tokens:,.0f} +"
        f" decoded {m.action_tokens:,.0f} tokens{kept}, tool {m.tool_s:.2g} s)"
    )


def mean_context_tokens(w: Any) -> float:
    """The mean prompt a full-context agent reads over a synthetic task (uncapped):
    system + the first observation, then each step adds an action and an observation."""
    return _context_tokens(w, (w.steps - 1) / 2)


def last_context_tokens(w: Any) -> int:
    """The last (longest) prompt a full-context agent reads over a synthetic task."""
    return int(_context_tokens(w, w.steps - 1))


def _context_tokens(w: Any, steps_before: float) -> float:
    first = (
        w.observation_tokens if w.first_observation_tokens is None else w.first_observation_tokens
    )
    return float(w.system_tokens + first + steps_before * (w.observation_tokens + w.action_tokens))


def trained_context_note(model: str, max_model_len: int | None) -> str | None:
    """'max_model_len N is above M's max_position_embeddings T: ...' where it is (vLLM
    refuses that unless told to allow it), else None (also for an unknown trained
    context or a model the engine's own checks will refuse)."""
    from calibration.errors import ComemInputError
    from calibration.registry import get_model

    try:
        trained = get_model(model).max_position_embeddings
    except ComemInputError:
        return None
    if not trained or max_model_len is None or max_model_len <= trained:
        return None
    return (
        f"max_model_len {max_model_len:,} is above {model}'s max_position_embeddings"
        f" {trained:,}: vLLM refuses that unless rope scaling extends it (or"
        " VLLM_ALLOW_LONG_MAX_MODEL_LEN=1); priced as asked"
    )


def context_limit_notes(scenario: Any) -> list[str]:
    """What a user must know about context lengths before a run: an engine whose
    ``max_model_len`` is above its model's trained context (vLLM refuses that unless told
    to allow it; priced as asked), and a full-context agent whose synthetic task outgrows
    its ``max_model_len`` (its tasks end at the cap and count as unresolved:
    ``effectiveness.capped_resolve_factor``)."""
    notes = []
    w = scenario.workload
    for i, arch in enumerate(scenario.architectures):
        for role, engine in (("agent", arch.agent), ("memory", arch.memory)):
            note = (
                None if engine is None else trained_context_note(engine.model, engine.max_model_len)
            )
            if note:
                notes.append(f"{arch.name} {role}: {note}")
        if arch.kind == "fc" and w.kind == "synthetic":
            last = max(last_context_tokens(w), w.input_target_tokens or 0)
            if last + 1 > arch.agent.max_model_len:  # the engine's own refusal
                notes.append(
                    f"{arch.name}: a task's last prompt (~{last:,} tokens) is past its agent's"
                    f" max_model_len {arch.agent.max_model_len:,}: its tasks end at the cap and"
                    f" count as resolved at {scenario.effectiveness.capped_resolve_factor:g} x"
                    " its rate (effectiveness.capped_resolve_factor); raise max_model_len"
                    f" (--set architectures.{i}.agent.max_model_len=...) to time the whole task"
                )
    return notes


def scenario_lines(scenario: Any) -> list[str]:
    """The workload, then one line per architecture: policy and deployment."""
    lines = [f"workload: {workload(scenario.workload)}"]
    for arch in scenario.architectures:
        lines.append(f"{arch.name}: {policy(arch)}; {deployment(arch)}")
    return lines


def scenario_description(scenario: Any) -> dict[str, Any]:
    """The same, as JSON fields."""
    return {
        "workload": workload(scenario.workload),
        "architectures": {
            a.name: {"policy": policy(a), "deployment": deployment(a), "gpus": architecture_gpus(a)}
            for a in scenario.architectures
        },
    }


def unfinished(summary: dict[str, Any], name: str) -> str | None:
    """'FC finished 0 of 16 tasks (context_exceeded 16)' when some of an architecture's
    tasks ended early (its steps then cover part of the work), else None."""
    arch = summary["architectures"].get(name, {})
    total, done = arch.get("tasks"), arch.get("tasks_finished")
    if not total or done is None or done >= total:
        return None
    why = ", ".join(f"{k} {v}" for k, v in sorted((arch.get("ended_early") or {}).items()))
    return f"{name} finished {done} of {total} tasks" + (f" ({why})" if why else "")


def summaries_note(summary: dict[str, Any], name: str) -> str | None:
    """'KSO8 swapped in 96 of 304 summaries (208 refused by an engine)' where a
    summarizing architecture's summaries did not all happen (its speed and resolve rate
    are then partly a full-context agent's), else None."""
    arch = summary["architectures"].get(name, {})
    if arch.get("kind", "fc") == "fc" or "summaries_launched" not in arch:
        return None
    swapped = arch["summaries_swapped"]
    refused = arch.get("summary_requests_refused", 0)
    if arch["summaries_launched"] == 0:
        return f"{name} made no summary (its tasks are shorter than k): it ran as full context"
    if swapped + refused == 0:
        return (
            f"{name} swapped in none of its {arch['summaries_launched']} summaries (none was"
            " back in time: still running at its swap step under late_policy 'skip', or when"
            " its task ended): it ran as full context"
        )
    if not refused:
        return None
    return (
        f"{name} swapped in {swapped} of {swapped + refused} summaries ({refused} refused by"
        " an engine: see the warnings)"
    )


def unlike_agents_note(scenario: Any, ref: str, name: str) -> str | None:
    """'the agents differ: FC bf16 on 8 GPUs, CoMem fp8 on 4' where the two sides' agent
    engines differ in weight dtype or GPU type, or 'the GPUs differ: FC on 4 x h200_sxm,
    CoMem on 6 (agent 4, memory model 2)' where the two sides use different numbers of
    GPUs (the speedup then mixes the architecture with the deployment), else None."""
    if scenario is None:
        return None
    archs = {a.name: a for a in scenario.architectures}
    a, b = archs.get(ref), archs.get(name)
    if a is None or b is None:
        return None

    def agent(arch: Any) -> tuple[str, str, int]:
        e = arch.agent
        return str(e.dtype), str(e.gpu), engine_gpus(e)

    (da, ga, na), (db, gb, nb) = agent(a), agent(b)
    tail = " (the speedup is the deployment's as well as the architecture's)"
    if (da, ga) != (db, gb):
        return f"the agents differ: {ref} {da} on {na} x {ga}, {name} {db} on {nb} x {gb}{tail}"
    if (architecture_gpus(a), _memory_gpu(a)) == (architecture_gpus(b), _memory_gpu(b)):
        return None
    if architecture_gpus(a) == architecture_gpus(b) and {_memory_gpu(a), _memory_gpu(b)} <= {
        None,
        ga,
    }:  # the same GPUs, another split: say the split, not that the GPUs differ
        n = architecture_gpus(a)

        def split(who: str, arch: Any, agent_gpus: int) -> str:
            if agent_gpus >= n:
                return f"{who}'s agent on all {n}"
            return f"{who}'s agent on {agent_gpus} and its memory model on {n - agent_gpus}"

        return (
            f"the same {n} x {ga}, split differently: {split(ref, a, na)},"
            f" {split(name, b, nb)}{tail}"
        )
    return f"the GPUs differ: {ref} on {_gpus_said(a)}, {name} on {_gpus_said(b)}{tail}"


def _memory_gpu(arch: Any) -> str | None:
    """The GPU type of an architecture's memory model on GPUs of its own (None: none)."""
    if arch.memory is None or _shared(arch):
        return None
    return str(arch.memory.gpu)


def _gpus_said(arch: Any) -> str:
    """'6 x h200_sxm (agent 4, memory model 2)', '4 x h200_sxm', or '4 x h200_sxm + 1 x
    h100_sxm for the memory model'."""
    total, agent = architecture_gpus(arch), engine_gpus(arch.agent)
    memory = _memory_gpu(arch)
    if memory is None or total == agent:
        return f"{total} x {arch.agent.gpu}"
    if memory == arch.agent.gpu:
        return f"{total} x {arch.agent.gpu} (agent {agent}, memory model {total - agent})"
    return f"{agent} x {arch.agent.gpu} + {total - agent} x {memory} for the memory model"


def interval_caveats(summary: dict[str, Any]) -> list[str]:
    """'caveat: FC's 80% intervals: b200_sxm: outside the serving rows ...' for every
    architecture whose agent engine lies outside what the error bands were measured on."""
    out: dict[str, list[str]] = {}
    for name, arch in summary["architectures"].items():
        if arch.get("interval_caveat"):
            out.setdefault(arch["interval_caveat"], []).append(name)
    return [f"caveat: {', '.join(names)}'s 80% intervals: {why}" for why, names in out.items()]


def verdict_lines(
    summary: dict[str, Any],
    metric: str,
    scenario: Any = None,
    over_seeds: dict[str, list[float]] | None = None,
) -> list[str]:
    """'CoMem is 1.29x faster than FC by mean step latency' for every architecture
    against the reference (a :meth:`sim.scenario.ScenarioResult.summary`), with the
    tasks either side did not finish: a side whose tasks ended early (a prompt past
    max_model_len) was timed over part of the work, which the verdict must say; given
    the ``scenario``, agents deployed in different dtypes or on different GPUs; given
    ``over_seeds`` (:func:`sim.scenario.speedups_over_seeds`), the speedup's range."""
    comparison = summary["comparison"]
    ref = comparison["reference"]
    if ref is None:
        return []
    chosen = comparison["metrics"][metric]
    lines = []
    for name, value in chosen["speedup"].items():
        if name == ref:
            continue
        if value is None:
            lines.append(f"verdict: {name} vs {ref}: no {chosen['label']} to compare")
            continue
        word = "faster" if value >= 1.0 else "slower"
        times = value if value >= 1.0 else 1.0 / value
        arch = summary["architectures"].get(name, {})
        pp = arch.get("resolve_rate_delta_pp")
        low, high = arch.get("resolve_rate_delta_pp_low"), arch.get("resolve_rate_delta_pp_high")
        band = f" [{low:+.1f}, {high:+.1f}] (95%)" if low is not None and high is not None else ""
        if arch.get("resolve_rate_extrapolated"):
            band += ", extrapolated: k or raw tail outside the effectiveness fit's range"
        resolve = "" if pp is None else f", resolve rate {pp:+.1f} pp{band}"
        partial = [u for u in (unfinished(summary, ref), unfinished(summary, name)) if u]
        caveat = f"; over partial work: {'; '.join(partial)}" if partial else ""
        for note in (summaries_note(summary, name), unlike_agents_note(scenario, ref, name)):
            caveat += f"; {note}" if note else ""
        seen = (over_seeds or {}).get(name, [])
        spread = (
            f", {min(seen):.2f}-{max(seen):.2f}x over {len(seen)} seeds (their range, not an"
            " interval)"
            if len(seen) > 1
            else ""
        )
        lines.append(
            f"verdict: {name} is {times:.2f}x {word} than {ref} by {chosen['label']}"
            f" (speedup {value:.2f}x{spread}{resolve}){caveat}"
        )
    return lines
