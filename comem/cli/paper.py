"""``comem paper``: the CoMem authors' experiments as one table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import _add_allow_large, _positive_int
from comem.cli.common import _print_json, _with_progress, _workers, _writable_dir


def cmd_paper(args: argparse.Namespace) -> int:
    from calibration.outputs import write_result
    from sim.paper import (
        PAPER_METRICS,
        figure,
        paper_files,
        run_paper,
        sensitivity,
        sensitivity_figure,
        table_writers,
    )

    files = paper_files(args.dir) if not args.only else [Path(f) for f in args.only]
    for f in files:
        if not f.is_file():
            what = "is not a regular file" if f.exists() else "does not exist"
            raise ComemInputError(f"{f}: scenario file {what}")
    out = Path(args.out)
    # a user's file under a name the result writes, or another command's result: refused
    # before any work (calibration.outputs.write_result)
    _writable_dir(str(out), "--out", kind="paper")
    workers = _workers(args.workers, len(files))
    show = not args.json
    if args.set and show:
        keys = ", ".join(dict.fromkeys(item.split("=", 1)[0].strip() for item in args.set))
        print(
            f"comem paper: note: --set changes every scenario ({keys}); the rows keep their"
            " papers' labels and published numbers, which are for the setups as documented",
            file=sys.stderr,
        )
    rows = _with_progress(
        show, "comem paper", "scenarios", len(files),
        lambda cb: run_paper(files, args.set, workers, cb),
    )  # fmt: skip
    writers = table_writers(rows)
    writers["paper_speedups.png"] = lambda p: figure(rows, p)
    result: dict[str, Any] = {"rows": [r.to_dict() for r in rows], "metrics": PAPER_METRICS}
    if args.sensitivity:
        from sim.paper import SENSITIVITY_AXES, SENSITIVITY_BASE

        n = 1 + sum(len(v) for v in SENSITIVITY_AXES.values())
        sens = _with_progress(
            show, "sensitivity", "runs", n,
            lambda cb: sensitivity(SENSITIVITY_BASE, SENSITIVITY_AXES, args.metric, workers, cb),
        )  # fmt: skip
        text = json.dumps(sens, indent=1, sort_keys=True) + "\n"
        writers["sensitivity.json"] = lambda p: p.write_text(text)
        writers["sensitivity.png"] = lambda p: sensitivity_figure(sens, p)
        result["sensitivity"] = sens
    # the table's CSV last: a killed write leaves no table, never an old one beside new
    # figures, and a run without --sensitivity removes an earlier run's sensitivity files
    written = write_result(out, writers, "paper_table.csv", "paper")
    result["files"] = [str(p) for p in written]
    if args.json:
        _print_json(result)
        return 0
    _print_paper(rows, result, written)
    return 0


def _print_paper(rows: list[Any], result: dict[str, Any], written: list[Path]) -> None:
    """The table, the default experiment's verdict, the sensitivity, the files written."""
    from sim.paper import table_markdown

    print(table_markdown(rows), end="")
    default = next((r for r in rows if r.default), None)
    if default is not None:
        step = default.speedup.get("step")
        shown = "-" if step is None else f"{step:.2f}x"
        print(
            "verdict of the default experiment (row 1, what `comem run` runs):"
            f" {default.architecture} {shown} over {default.reference} by mean step latency"
        )
    if "sensitivity" in result:
        sens = result["sensitivity"]
        print(
            f"\nsensitivity of {sens['architecture']}'s speedup ({sens['metric']}) around"
            f" {Path(sens['base']).name}: documented setup {sens['base_speedup']:.2f}x"
        )
        for axis, vals in sens["variations"].items():
            shown = ", ".join(
                f"{v['variation']} {v['speedup']:.2f}x" if v["speedup"] is not None
                else f"{v['variation']} -"
                for v in vals
            )  # fmt: skip
            print(f"  {axis}: {shown}")
    for p in written:
        print(f"wrote {p}")


def register(sub: Any) -> None:
    pp = sub.add_parser(
        "paper",
        help="run the CoMem authors' experiments as they ran them (scenarios/paper/): one table",
        description="Every scenarios/paper/*.toml (a documented experiment, or one candidate"
        " assumption where the authors' code is silent): the speedup of CoMem over full"
        " context under each metric (llm, total, llm-index-peak, task, makespan), with KV"
        " saturation and preemptions. Writes paper_table.{csv,md} and paper_speedups.png.",
    )
    pp.add_argument("--dir", help="directory of paper scenarios (default: scenarios/paper)")
    pp.add_argument("--only", nargs="+", help="just these scenario files")
    pp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override every file")
    pp.add_argument("--sensitivity", action="store_true", help="also the one-at-a-time figure")
    from sim.compare import METRICS as COMPARE_METRICS

    pp.add_argument(
        "--metric",
        default="llm",
        choices=list(COMPARE_METRICS),
        help="metric of the sensitivity figure [llm]",
    )
    pp.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    pp.add_argument("--out", default="out/paper", help="output directory [out/paper]")
    pp.add_argument("--json", action="store_true")
    _add_allow_large(pp)
    pp.set_defaults(func=cmd_paper)
