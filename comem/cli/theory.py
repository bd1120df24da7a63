"""``comem theory``: the closed forms and bounds as LaTeX; with a scenario, evaluated on it
(for which k and from which load each summarizing architecture beats full context)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from comem.cli.args import _add_allow_large, _positive_int
from comem.cli.common import _print_json


def cmd_theory(args: argparse.Namespace) -> int:
    if args.scenario is None:
        if args.set or args.k or args.figure or args.curves:
            from calibration.errors import ComemInputError

            raise ComemInputError(
                "--set, --k, --figure and --curves need a scenario: comem theory SCENARIO --k 4 8"
            )
        from theory import latex_results

        results = latex_results()
        if args.json:
            _print_json(results)
        else:
            for name, tex in results.items():
                print(f"{name}:\n  {tex}")
        return 0
    from comem.closed_forms import evaluate, text_report
    from sim.scenario import load_scenario

    # the forms simulate nothing: their own budget counts steps, not agents (evaluate)
    scenario = load_scenario(args.scenario, args.set or [], cost=False)
    figure = Path(args.figure) if args.figure else None
    if figure is not None:
        _figure_path(figure, args.scenario)
    result = evaluate(scenario, args.k, curves=figure is not None or args.curves)
    if figure is not None:
        from calibration.outputs import write_atomic
        from comem.closed_forms_figure import speedup_figure

        write_atomic(figure, lambda p: speedup_figure(result, p), "figure")
    if args.json:
        _print_json(result)
    else:
        print("\n".join(text_report(result)))
        if figure is not None:
            print(f"wrote {figure}")
    return 0


def _figure_path(figure: Path, scenario: str) -> None:
    """``--figure`` can be written and replaces no input and no user's file."""
    from calibration.outputs import refuse_foreign_figure, refuse_input_as_output

    refuse_input_as_output(figure, {"scenario": scenario}, "--figure")
    refuse_foreign_figure(figure, "--figure")


def register(sub: Any) -> None:
    th = sub.add_parser(
        "theory",
        help="the closed forms and bounds (LaTeX); with a scenario, evaluated on it: for which"
        " k and from how many agents each summarizing architecture beats full context",
    )
    th.add_argument(
        "scenario", nargs="?",
        help="scenario TOML file: evaluate the closed forms on its workload and engines"
        " (left out: print the forms as LaTeX)",
    )  # fmt: skip
    th.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a field: workload.agents=64"
    )
    th.add_argument(
        "--k", type=_positive_int, nargs="+", metavar="K",
        help="k values scanned (R for kso-authors; default: powers of two below the task's steps)",
    )  # fmt: skip
    th.add_argument(
        "--figure", metavar="PNG",
        help="also draw each summarizing architecture's speedup against agents, a curve per k",
    )  # fmt: skip
    th.add_argument(
        "--curves", action="store_true",
        help="--json: each k's speedup at 1, 2, ... agents too (speedup_by_agents)",
    )  # fmt: skip
    th.add_argument("--json", action="store_true")
    _add_allow_large(th)
    th.set_defaults(func=cmd_theory)
