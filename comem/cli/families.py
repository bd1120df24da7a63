"""``comem families``: per attention family, where CoMem beats full context."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import _add_allow_large
from comem.cli.common import _writable_dir


def cmd_families(args: argparse.Namespace) -> int:
    from calibration.registry import get_gpu
    from comem.families import run_families

    for gpu in args.gpus or []:
        if not str(gpu).strip():
            raise ComemInputError("--gpus: an empty GPU name")
        get_gpu(gpu)  # an unknown GPU is one line, not a table of refusals
    _writable_dir(args.out, kind="families")  # a user's families.csv is not replaced
    from comem.families import CAVEATS

    for path in run_families(args.gpus, Path(args.out), show_progress=True):
        print(f"wrote {path}")
    for caveat in CAVEATS:
        print(f"note: {caveat}")
    return 0


def register(sub: Any) -> None:
    fam = sub.add_parser(
        "families",
        help="per attention family: KV bytes per token and the concurrency where CoMem beats FC",
        description="One model per attention family (GQA dense, GQA MoE, MLA, DSA, hybrid GDN,"
        " sliding) on each GPU: KV bytes per token, and the authors' synthetic benchmark run at"
        " 1, 2, 4, ... agents until CoMem's llm_exec_time beats FC's, then at 4x that.",
    )
    fam.add_argument("--gpus", nargs="+", default=["h200_sxm", "b200_sxm"])
    fam.add_argument(
        "--out",
        default="out/families",
        help="directory [out/families] (the committed figure: --out figures/families)",
    )
    _add_allow_large(fam)
    fam.set_defaults(func=cmd_families)
