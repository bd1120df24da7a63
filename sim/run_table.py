"""The ``comem run`` table: one row per architecture of a scenario result's summary
(:meth:`sim.scenario.ScenarioResult.summary`), as many columns as the terminal fits, most
important first, and the legend of the columns shown."""

from __future__ import annotations

from typing import Any

#: why tasks ended early, as the table abbreviates it
_EARLY = {
    "context_exceeded": "ctx",
    "memory_context_exceeded": "mem",
    "kv_cache_too_small": "kv",
    "memory_kv_cache_too_small": "mem-kv",
}


#: the ``comem run`` table's columns, most important first (narrow terminals drop the
#: last ones): header, legend, cell
_RUN_COLUMNS: list[tuple[str, str, Any]] = [
    ("arch", "architecture; ! = some of its tasks ended early", None),
    ("done", "tasks finished", lambda s: str(s["tasks_finished"])),
    (
        "early",
        "tasks that ended early, by reason: ctx = an agent prompt passed max_model_len,"
        " mem = a memory prompt passed the memory model's limit, kv / mem-kv = one the"
        " engine's whole KV cache cannot hold",
        lambda s: " ".join(f"{v} {_EARLY.get(k, k)}" for k, v in s["ended_early"].items()) or "0",
    ),
    ("speedup", "", None),
    (
        "step s",
        "mean step latency (queue + prefill + decode + tool + stall) over its finished"
        " steps, seconds",
        "mean_step_latency_s",
    ),
    (
        "step 80%",
        "interval of the mean step latency from the calibration's cross-validated errors"
        " (tool time exact, the wait for the first token by TTFT's band, the rest by"
        " TPOT's), seconds",
        lambda s: (
            f"{s['mean_step_latency_s_low']:.3g}-{s['mean_step_latency_s_high']:.3g}"
            if "mean_step_latency_s_low" in s
            else "-"
        ),
    ),
    (
        "resolve %",
        "resolve rate of the fitted effectiveness model (SWE-bench runs of The Complexity"
        " Trap, relative to [effectiveness] baseline_resolve_rate) [95% interval];"
        " * = outside the fitted range",
        lambda s: (
            f"{100 * s['resolve_rate']:.1f} [{100 * s['resolve_rate_low']:.1f},"
            f" {100 * s['resolve_rate_high']:.1f}]"
            + ("*" if s["resolve_rate_extrapolated"] else "")
        ),
    ),
    (
        "resolve pp",
        "resolve-rate change against the reference architecture, percentage points [95%]",
        lambda s: (
            "-"
            if "resolve_rate_delta_pp" not in s
            else f"{s['resolve_rate_delta_pp']:+.1f} [{s['resolve_rate_delta_pp_low']:+.1f},"
            f" {s['resolve_rate_delta_pp_high']:+.1f}]"
        ),
    ),
    ("task s", "mean task latency over its finished tasks, seconds", "mean_task_latency_s"),
    (
        "task 80%",
        "interval of the mean task latency: its steps' interval, scaled, seconds",
        lambda s: (
            f"{s['mean_task_latency_s_low']:.3g}-{s['mean_task_latency_s_high']:.3g}"
            if "mean_task_latency_s_low" in s
            else "-"
        ),
    ),
    ("stall s", "mean wait for a summary per step, seconds", "mean_stall_s"),
    (
        "uncached tok",
        "prompt tokens the agent engine prefilled (not from its prefix cache), mean per step",
        "mean_uncached_prefill_tokens",
    ),
    ("KV peak", "peak fraction of the agent engine's KV cache in use", "kv_peak_fraction"),
    ("preempt", "preemptions, agent and memory engines summed", "preemptions"),
    (
        "llm s",
        "mean llm_exec_time per step (the authors': the agent request at the client,"
        " queueing included), seconds",
        "mean_llm_exec_time_s",
    ),
    (
        "total s",
        "mean total_step_time per step (the authors' formula: llm + summary + env for"
        " FC, CP, SM; max(llm, summary + prefill) + env for KSO), seconds",
        "mean_total_step_time_s",
    ),
    ("step p99 s", "99th percentile of step latency, seconds", "p99_step_latency_s"),
    ("task p99 s", "99th percentile of task latency, seconds", "p99_task_latency_s"),
    ("steps/s", "finished steps per second of makespan", "throughput_steps_per_s"),
]


def _cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if key == "kv_peak_fraction":
        return f"{value:.0%}"
    if key in ("preemptions", "mean_uncached_prefill_tokens"):
        return f"{value:.0f}"
    if key == "throughput_steps_per_s":
        return f"{value:.3f}"
    if key.startswith(("mean_task", "p99_task")):
        return f"{value:.1f}"
    return f"{value:.2f}"


def run_table(
    summary: dict[str, Any], metric: str, width: int, title: str
) -> tuple[Any, list[str]]:
    """The ``comem run`` table, as many columns as fit ``width``, and its legend."""
    from rich.table import Table

    archs = summary["architectures"]
    speed = summary["comparison"]["metrics"].get(metric, {}).get("speedup", {})
    columns: list[tuple[str, str, list[str]]] = []
    for header, meaning, cell in _RUN_COLUMNS:
        if header == "arch":
            cells = [n + ("!" if s["tasks_ended_early"] else "") for n, s in archs.items()]
        elif header == "speedup":
            header = f"speedup {metric}"
            meaning = f"see below ({metric})"
            cells = ["-" if speed.get(n) is None else f"{speed[n]:.2f}x" for n in archs]
        elif callable(cell):
            cells = [cell(s) for s in archs.values()]
        else:
            cells = [_cell(s[cell], cell) for s in archs.values()]
        columns.append((header, meaning, cells))
    shown: list[tuple[str, str, list[str]]] = []
    used = 1
    for header, meaning, cells in columns:
        need = max(max(len(c) for c in cells), *(len(w) for w in header.split())) + 3
        if used + need <= width or len(shown) < 4:  # arch, done, early, speedup always
            shown.append((header, meaning, cells))
            used += need
    table = Table(title=title)
    for header, _, _ in shown:  # one word a line: the widths estimated above hold
        table.add_column(header.replace(" ", "\n"), justify="left" if header == "arch" else "right")
    for row in zip(*(cells for _, _, cells in shown), strict=True):
        table.add_row(*row)
    legend = [f"{h}: {m}" for h, m, _ in shown if not h.startswith("speedup")]
    dropped = [h for h, _, _ in columns if h not in {s[0] for s in shown}]
    if dropped:
        legend.append(f"left out for width ({width} columns): {', '.join(dropped)}")
    return table, legend
