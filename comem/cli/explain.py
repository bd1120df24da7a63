"""``comem explain``: why two answers differ."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from comem.cli.args import _add_allow_large, _positive_int
from comem.cli.common import _print_json, _with_progress, _workers, _writable_file


def cmd_explain(args: argparse.Namespace) -> int:
    from sim.explain import explain, load_side, table_markdown

    a = load_side(args.a, args.set_a or [])
    b = load_side(args.b, args.set_b or [])
    if args.out:
        _explain_out_is_safe(args.out, [args.a, args.b], [a, b])
        _writable_file(args.out)
    workers = _workers(args.workers, 10**6)
    result = _with_progress(
        not args.json, "comem explain: runs", "runs", None,
        lambda advance: explain(a, b, args.metric, workers, advance),
    )  # fmt: skip
    text = table_markdown(result)
    if args.out:
        from calibration.outputs import write_text

        write_text(args.out, text, "explanation")  # a killed write leaves the old one whole
    if args.json:
        _print_json(result)
    else:
        print(text, end="")
    return 0


def _explain_out_is_safe(out: str, sides: list[str], loaded: list[Any]) -> None:
    """Refuse an ``--out`` that is one of the answers compared, a file inside a compared
    run's or plan's directory, or a file the scenarios read; and an existing file that is
    not an earlier explanation (a user's file is not overwritten)."""
    from calibration.errors import ComemInputError
    from calibration.input_files import input_paths
    from calibration.outputs import refuse_input_as_output
    from sim.explain import EXPLANATION_HEAD

    inputs: dict[str, Any] = {}
    for name, side, side_loaded in zip(("A", "B"), sides, loaded, strict=True):
        path = Path(side)
        inputs[name] = path
        if path.is_dir():
            inputs.update({f"{name}/{p.name}": p for p in path.iterdir() if p.is_file()})
        inputs.update(input_paths(side_loaded.data, name))
    refuse_input_as_output(Path(out), inputs, "--out")
    target = Path(out)
    if target.is_file():
        try:
            head = target.read_text(errors="replace")[: len(EXPLANATION_HEAD)]
        except OSError:
            head = ""
        if head != EXPLANATION_HEAD:
            raise ComemInputError(
                f"--out {out}: the file exists and is not an earlier explanation: it is not"
                " overwritten (write elsewhere, or remove it first)"
            )


def register(sub: Any) -> None:
    ex = sub.add_parser(
        "explain",
        help="why two answers differ: which inputs differ, how much each moves the verdict",
        description="A and B: scenario files, 'comem run --out' or 'comem plan --out'"
        " directories. Lists the inputs that differ (workload fields, full context's engine,"
        " CoMem's policy and engines) and re-runs A with each one taken from B alone.",
    )
    ex.add_argument("a", help="the first answer (scenario file, run or plan --out directory)")
    ex.add_argument("b", help="the second answer")
    ex.add_argument("--set-a", action="append", metavar="KEY=VALUE", help="override A's field")
    ex.add_argument("--set-b", action="append", metavar="KEY=VALUE", help="override B's field")
    ex.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    from sim.compare import DEFAULT_METRIC as _METRIC
    from sim.compare import METRICS as _METRICS

    ex.add_argument(
        "--metric", choices=list(_METRICS), default=_METRIC,
        help=f"the verdict's metric (default: {_METRIC}; see comem run --help)",
    )  # fmt: skip
    ex.add_argument("--out", help="also write the table (Markdown) to this file")
    ex.add_argument("--json", action="store_true")
    _add_allow_large(ex)
    ex.set_defaults(func=cmd_explain)
