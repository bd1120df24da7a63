"""``comem workload fit``: fit the 'fitted' workload to a steps CSV."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import _Parser
from comem.cli.common import _writable_file


def cmd_workload_fit(args: argparse.Namespace) -> int:
    from calibration.outputs import refuse_input_as_output
    from sim.workloads import default_steps_file, fit_workload, plot_fitted

    refuse_input_as_output(args.out, {"--steps": args.steps})
    from calibration.outputs import refuse_foreign_figure, refuse_foreign_file
    from sim.workloads import check_fitted

    # ours: what the fitted-workload reader accepts (it raises on anything else)
    def fitted(data: Any) -> bool:
        check_fitted(data, "--out")  # raises on what is no fitted workload
        return True

    refuse_foreign_file(args.out, fitted, "a fitted workload")
    refuse_input_as_output(args.figure, {"--steps": args.steps}, "--figure")
    _writable_file(args.out)
    refuse_foreign_figure(args.figure, "--figure")  # a user's own image is kept
    if args.note and re.search(r"[\x00-\x08\x0b-\x1f\x7f]", args.note):
        raise ComemInputError(
            f"--note: must not hold control characters other than newline and tab"
            f" (got {args.note[:60]!r})"
        )
    steps = args.steps or default_steps_file()
    if steps is None:
        raise ComemInputError("no steps CSV: pass --steps (shared/ is not beside the project)")
    variable_sources: dict[str, list[str]] = {}
    for item in args.variable_source or []:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise ComemInputError(
                f"--variable-source {item!r}: expected VARIABLE=SOURCE, e.g."
                " system=gemini3pro_mini1.15_verified"
            )
        variable_sources.setdefault(name, []).append(source)
    payload = fit_workload(
        steps, args.source or None, variable_sources or None, tuple(args.mixture or ())
    )
    if args.note:
        payload["note"] = args.note
    from calibration.outputs import write_text

    out = write_text(args.out, json.dumps(payload, indent=1) + "\n", "fitted workload")
    for name, spec in payload["variables"].items():
        shape = f"lognormal mu {spec['mu']:8.3f} sigma {spec['sigma']:6.3f}"
        if spec["dist"] == "lognormal-mixture":
            shape = "mixture " + " + ".join(
                f"{w:.2f} x (mu {m:.2f}, sigma {sd:.2f})"
                for w, m, sd in zip(spec["weights"], spec["mus"], spec["sigmas"], strict=True)
            )
        print(
            f"{name:14s} {shape}  zeros {spec['zero_fraction']:5.1%}  KS {spec['ks']:.3f}"
            f"  n {spec['n']}"
        )
    print(f"wrote {out}")
    if args.figure:
        print(f"wrote {plot_fitted(steps, payload, args.figure)}")
    return 0


def register(sub: Any) -> None:
    wl = sub.add_parser("workload", help="agent workloads (fit distributions to traces)")
    wl_sub = wl.add_subparsers(dest="workload_command", required=True, parser_class=_Parser)
    wf = wl_sub.add_parser("fit", help="fit the 'fitted' workload to a SWE-bench steps CSV")
    wf.add_argument("--steps", help="steps CSV (default: shared/data/workloads/...)")
    wf.add_argument("--source", action="append", help="trace source(s) to fit (default: Gemini)")
    wf.add_argument(
        "--variable-source",
        action="append",
        metavar="VARIABLE=SOURCE",
        help="take one variable from another source, e.g. system=gemini3pro_mini1.15_verified",
    )
    wf.add_argument(
        "--mixture",
        action="append",
        metavar="VARIABLE",
        help="fit this variable with two log-normal components (a bimodal one)",
    )
    wf.add_argument("--note", help="why this fit (stored in the file, with its provenance)")
    wf.add_argument("--out", default="sim/data/swebench_fitted.json")
    wf.add_argument("--figure", help="write a fit-vs-data figure (PNG) here")
    wf.set_defaults(func=cmd_workload_fit)
