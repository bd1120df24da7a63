"""``comem figures``: regenerate the figures."""

from __future__ import annotations

import argparse
from typing import Any

from comem.cli.args import _add_allow_large, _positive_int
from comem.cli.common import _workers, _writable_dir


def cmd_figures(args: argparse.Namespace) -> int:
    from comem.figures import FIGURES, make_figures

    # quick figures are smoke tests: they never replace the committed full-size ones
    out = args.out or (QUICK_FIGURES_DIR if args.quick else "figures")
    _writable_dir(out)
    workers = _workers(args.workers, len(args.only or FIGURES))
    for path in make_figures(out, quick=args.quick, only=args.only, workers=workers):
        print(f"wrote {path}")
    return 0


#: where ``comem figures --quick`` writes unless told otherwise
QUICK_FIGURES_DIR = "out/figures-quick"


def register(sub: Any) -> None:
    fg = sub.add_parser("figures", help="regenerate the figures (PNG and PDF)")
    fg.add_argument(
        "--quick",
        action="store_true",
        help=f"small simulations (seconds), into {QUICK_FIGURES_DIR}",
    )
    fg.add_argument(
        "--out", help=f"directory (default: figures, or {QUICK_FIGURES_DIR} with --quick)"
    )
    fg.add_argument("--only", action="append", metavar="NAME", help="only this figure (repeatable)")
    fg.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    _add_allow_large(fg)
    fg.set_defaults(func=cmd_figures)
