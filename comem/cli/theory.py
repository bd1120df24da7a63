"""``comem theory``: the closed forms and bounds as LaTeX; with a scenario, evaluated on it
(for which k and from which load each summarizing architecture beats full context)."""

from __future__ import annotations

import argparse
from typing import Any

from comem.cli.args import _positive_int
from comem.cli.common import _print_json


def cmd_theory(args: argparse.Namespace) -> int:
    if args.scenario is None:
        if args.set or args.k:
            from calibration.errors import ComemInputError

            raise ComemInputError("--set and --k need a scenario: comem theory SCENARIO --k 4 8")
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

    result = evaluate(load_scenario(args.scenario, args.set or []), args.k)
    if args.json:
        _print_json(result)
    else:
        print("\n".join(text_report(result)))
    return 0


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
    th.add_argument("--json", action="store_true")
    th.set_defaults(func=cmd_theory)
