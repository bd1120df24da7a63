"""``comem validate``: the validation ladder."""

from __future__ import annotations

import argparse
from typing import Any

from comem.cli.args import _non_negative_int
from comem.cli.common import _print_json


def cmd_validate(args: argparse.Namespace) -> int:
    from comem.validation import as_json, run_ladder

    rungs = run_ladder(quick=args.quick, seed=args.seed)
    if args.json:
        _print_json(as_json(rungs))
    else:
        for r in rungs:
            mark = "PASS" if r.ok else "FAIL"
            line = f"{mark}  {r.name}: {r.metric} = {r.value:.3g} (threshold {r.threshold:.3g})"
            if r.source == "stored":
                line += "; stored in the embedded profile at fit time, not re-measured here"
            print(line)
        if any(r.source == "stored" for r in rungs):
            print(
                "note: 'stored' rungs re-read numbers the calibration fit recorded;"
                " 'comem calibrate report' recomputes them from ../shared's measurements"
            )
    return 0 if all(r.ok for r in rungs) else 1


def register(sub: Any) -> None:
    va = sub.add_parser("validate", help="run the validation ladder (sim vs theory vs data)")
    va.add_argument("--quick", action="store_true", help="fewer cases (about 15 s)")
    va.add_argument("--seed", type=_non_negative_int, default=0)
    va.add_argument("--json", action="store_true")
    va.set_defaults(func=cmd_validate)
