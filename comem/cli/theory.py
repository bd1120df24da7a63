"""``comem theory``: the closed forms and bounds as LaTeX."""

from __future__ import annotations

import argparse
from typing import Any

from comem.cli.common import _print_json


def cmd_theory(args: argparse.Namespace) -> int:
    from theory import latex_results

    results = latex_results()
    if args.json:
        _print_json(results)
    else:
        for name, tex in results.items():
            print(f"{name}:\n  {tex}")
    return 0


def register(sub: Any) -> None:
    th = sub.add_parser("theory", help="print the closed forms and bounds as LaTeX")
    th.add_argument("--json", action="store_true")
    th.set_defaults(func=cmd_theory)
