"""``comem sweep``: a grid of scenarios."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from comem.cli.args import _add_allow_large, _positive_int, _seconds, _token_count
from comem.cli.common import (
    _outputs_not_inputs,
    _print_json,
    _with_progress,
    _workers,
    _workload_sets,
    _writable_dir,
)


def cmd_sweep(args: argparse.Namespace) -> int:

    from sim.sweep import (
        base_path,
        failed_points,
        load_sweep,
        run_sweep,
        summary,
    )
    from sim.sweep_table import summary_markdown

    extra, note = _workload_sets(args, str(base_path(args.sweep)))
    sweep = load_sweep(args.sweep, extra)
    if note and not args.json:
        print(f"comem sweep: {note}", file=sys.stderr)
    out = args.out or str(Path("out") / Path(args.sweep).stem)
    _outputs_not_inputs(
        out, ("results.parquet", "results.csv", "sweep.json"), {"sweep": args.sweep}
    )
    workers = _workers(args.workers, len(sweep.points))
    _writable_dir(out, kind="sweep")  # a user's results.parquet, or another result: refused

    def work(advance: Any) -> Any:
        def on_point(done: int, total: int) -> None:
            while advance is not None and advance.done < done:
                advance()

        return run_sweep(sweep, out, workers, args.scheduler, on_point=on_point)

    table = _with_progress(not args.json, Path(args.sweep).stem, "points", len(sweep.points), work)
    results = Path(out) / "results.parquet"
    if results.is_file():
        from calibration.outputs import mark_result

        mark_result(out, "sweep", [results.name])
    failed = failed_points(table)
    if args.json:
        _print_json(
            {
                "points": len(sweep.points),
                "rows": len(table),
                "failed_points": len(failed),
                "out": out,
                "results": str(results),
                "summary": summary(table),
            }
        )
    else:
        from sim.describe import scenario_lines

        print(f"base scenario {sweep.points[0].scenario.name}, as point 0 ran it:")
        for line in scenario_lines(sweep.points[0].scenario):
            print(f"  {line}")
        print(summary_markdown(summary(table)), end="")
        print(f"{len(sweep.points)} points, {len(table)} rows -> {results}")
    if len(failed):
        first = failed.iloc[0]
        grid = ", ".join(
            f"{c[len('grid.') :]}={first[c]!r}" for c in failed.columns if c.startswith("grid.")
        )
        print(
            f"comem sweep: {len(failed)} of {len(sweep.points)} points failed; their rows in"
            f" {results} carry the error; first: point {first['point']} ({grid}):"
            f" {first['error']}",
            file=sys.stderr,
        )
        return 1
    return 0


def register(sub: Any) -> None:
    sw = sub.add_parser("sweep", help="run a grid of scenarios (parallel, resumable)")
    sw.add_argument("sweep", help="sweep TOML file (see sweeps/)")
    sw.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    sw.add_argument("--scheduler", help="'local' (a Dask LocalCluster) or a Dask scheduler address")
    from sim.workload_flags import add_flags as _add_workload_flags

    _add_workload_flags(sw, _token_count, _positive_int, _seconds)
    sw.add_argument("--out", help="output directory (default: out/<sweep name>)")
    sw.add_argument("--json", action="store_true")
    _add_allow_large(sw)
    sw.set_defaults(func=cmd_sweep)
