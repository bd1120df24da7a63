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


def _warnings(summary: dict[str, Any], metric: str) -> list[str]:
    """The run's warnings, and a line per architecture with nothing to compare by
    ``metric``."""
    comparison = summary["comparison"]
    notes = list(summary["warnings"])
    if comparison["reference"] is not None:
        chosen = comparison["metrics"][metric]
        for name, value in chosen["speedup"].items():
            if value is None:
                notes.append(
                    f"{name}: no speedup by {chosen['label']}: nothing to compare"
                    f" ({chosen['compared_on']}: none)"
                )
    return notes


def cmd_run(args: argparse.Namespace) -> int:
    from sim.describe import context_limit_notes, scenario_description
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
    if args.seeds > 1:
        from sim.scenario import check_seeds

        check_seeds(scenario, args.seeds)
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
    _writable_dir(args.out, kind="run")
    result = run_scenario(scenario, progress=not args.json)
    summary = result.summary()
    written = result.write(args.out) if args.out else []
    over_seeds = None
    if args.seeds > 1:
        from sim.scenario import speedups_over_seeds

        over_seeds = speedups_over_seeds(
            scenario, summary, args.seeds, args.metric, progress=not args.json
        )
        summary["comparison"]["metrics"][args.metric]["speedup_over_seeds"] = over_seeds
    context = context_limit_notes(scenario)  # after the run: its budgets held
    for note in context:
        print(f"comem run: note: {note}", file=sys.stderr)
    for note in _warnings(summary, args.metric):
        print(f"comem run: warning: {note}", file=sys.stderr)
    described = scenario_description(scenario)
    if args.json:
        _print_json(
            {**summary, "described": described, "notes": context,
             "files": [str(p) for p in written]}
        )  # fmt: skip
        return 0
    _print_run(args, scenario, summary, over_seeds)
    for path in written:
        print(f"wrote {path}")
    return 0


def _print_run(
    args: argparse.Namespace, scenario: Any, summary: dict[str, Any], over_seeds: Any
) -> None:
    """The run's text output: its table and legend, the scenario, the verdicts."""
    from sim.compare import METRICS
    from sim.describe import interval_caveats, scenario_lines, verdict_lines

    ref = summary["comparison"]["reference"]
    from rich.console import Console

    from sim.run_table import run_table

    console = Console()
    w = scenario.workload
    title = (
        f"{scenario.name}: {w.agents} agents x {w.tasks_per_agent} tasks,"
        f" {w.kind} workload ({scenario.engine.stepping} stepping)"
    )
    metric = METRICS[args.metric]
    table, legend = run_table(summary, args.metric, console.width, title)
    console.print(table)
    for line in legend:
        console.print(line, highlight=False, markup=False)
    for line in (
        scenario_lines(scenario)
        + verdict_lines(summary, args.metric, scenario, over_seeds)
        + interval_caveats(summary)
    ):
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
    rn.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="run the scenario with this many seeds (seed, seed + 1, ...) and give the"
        " speedup's range over them: how much the verdict owes to the tasks drawn; the"
        " table and --out are the first seed's [1]",
    )
    _add_allow_large(rn)
    rn.set_defaults(func=cmd_run)
