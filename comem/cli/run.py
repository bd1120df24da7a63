"""``comem run``: every architecture of a scenario, compared (the main job)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import _add_allow_large, _positive_int, _seconds, _token_count
from comem.cli.common import _outputs_not_inputs, _print_json, _workload_sets, _writable_dir


class _HelpFields(argparse.Action):
    """``--help-fields``: print every scenario field (generated from the models) and exit."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from sim.reference import render_text

        print(render_text(), end="")
        parser.exit(0)


def _default_name() -> str:
    from sim.paper import DEFAULT_SCENARIO

    return (
        "the CoMem authors' documented setup"
        f" ({DEFAULT_SCENARIO.relative_to(DEFAULT_SCENARIO.parents[2])})"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from sim.compare import METRICS
    from sim.describe import scenario_description, scenario_lines, verdict_lines
    from sim.paper import DEFAULT_SCENARIO
    from sim.scenario import load_scenario, run_scenario

    notes = []
    if args.scenario is None:
        args.scenario = str(DEFAULT_SCENARIO)
        notes.append(f"comem run: the default experiment, {_default_name()}")
    extra, note = _workload_sets(args, args.scenario)
    try:
        scenario = load_scenario(args.scenario, (args.set or []) + extra)
    except ComemInputError as exc:
        # a budget names the scenario's fields; say which of them the flags set
        raise ComemInputError(f"{exc} ({note})" if note else str(exc)) from None
    if note:
        notes.append(f"comem run: {note}")
    for line in notes if not args.json else []:  # once the input is known to be good
        print(line, file=sys.stderr)
    _outputs_not_inputs(
        args.out,
        ("steps.parquet", "tasks.parquet", "requests.parquet", "engine_steps.parquet",
         "config.json"),
        {"scenario": args.scenario, "settings": scenario.model_dump()},
    )  # fmt: skip
    _writable_dir(args.out)
    result = run_scenario(scenario, progress=not args.json)
    summary = result.summary()
    written = result.write(args.out) if args.out else []
    comparison = summary["comparison"]
    ref = comparison["reference"]
    notes = list(summary["warnings"])
    if ref is not None:
        chosen = comparison["metrics"][args.metric]
        for name, value in chosen["speedup"].items():
            if value is None:
                notes.append(
                    f"{name}: no speedup by {chosen['label']}: nothing to compare"
                    f" ({chosen['compared_on']}: none)"
                )
    for note in notes:
        print(f"comem run: warning: {note}", file=sys.stderr)
    described = scenario_description(scenario)
    if args.json:
        _print_json({**summary, "described": described, "files": [str(p) for p in written]})
        return 0
    from rich.console import Console

    console = Console()
    w = scenario.workload
    title = (
        f"{scenario.name}: {w.agents} agents x {w.tasks_per_agent} tasks,"
        f" {w.kind} workload ({scenario.engine.stepping} stepping)"
    )
    metric = METRICS[args.metric]
    table, legend = _run_table(summary, args.metric, console.width, title)
    console.print(table)
    for line in legend:
        console.print(line, highlight=False, markup=False)
    for line in scenario_lines(scenario) + verdict_lines(summary, args.metric):
        console.print(line, highlight=False, markup=False)
    if ref is None:
        console.print("no full-context (fc) architecture: no speedups", highlight=False)
    else:
        console.print(
            f"speedup ({metric.name}): {ref}'s {metric.label} over this architecture's, on"
            f" {metric.compared_on}; > 1 is faster than {ref}. Other metrics: --metric"
            f" {'|'.join(METRICS)}; --json has all of them.",
            highlight=False,
            markup=False,
        )
    for path in written:
        print(f"wrote {path}")
    return 0


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
        "interval of the mean task latency from the calibration's cross-validated errors"
        " (tool time exact, GPU time scaled), seconds",
        lambda s: (
            f"{s['mean_task_latency_s_low']:.3g}-{s['mean_task_latency_s_high']:.3g}"
            if "mean_task_latency_s_low" in s
            else "-"
        ),
    ),
    (
        "step s",
        "mean step latency (queue + prefill + decode + tool + stall) over its finished"
        " steps, seconds",
        "mean_step_latency_s",
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


def _run_table(
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


def register(sub: Any) -> None:
    rn = sub.add_parser(
        "run", help="run every architecture of a scenario and compare them (the main job)"
    )
    rn.add_argument(
        "scenario",
        nargs="?",
        help="scenario TOML file (see scenarios/ and --help-fields); left out: the default"
        " experiment, the authors' documented setup (scenarios/paper/"
        "glm47_synthetic_benchmark__agent_dedicated_tp4.toml)",
    )
    rn.add_argument(
        "--help-fields",
        action=_HelpFields,
        help="print every scenario field (type, default, unit, meaning) and exit",
    )
    rn.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a field: workload.agents=128"
    )
    from sim.workload_flags import add_flags as _add_workload_flags

    _add_workload_flags(rn, _token_count, _positive_int, _seconds)
    rn.add_argument("--out", help="directory for the Parquet tables and the resolved config")
    rn.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    from sim.compare import DEFAULT_METRIC, METRICS, METRICS_HELP

    rn.add_argument(
        "--metric",
        choices=list(METRICS),
        default=DEFAULT_METRIC,
        help=f"what the table's speedup column compares (default: {DEFAULT_METRIC}):"
        f" {METRICS_HELP}. The speedup is the reference's (first fc architecture) over"
        " the other's; --json has every metric",
    )
    _add_allow_large(rn)
    rn.set_defaults(func=cmd_run)
