"""The ``comem`` parser (every command's ``register``) and ``main``.

Every user error (bad name, bad number, missing file) ends as one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from calibration.errors import ComemInputError
from comem.cli import (
    bench_serve,
    calibrate,
    effectiveness,
    engine_sim,
    explain,
    families,
    figures,
    listing,
    live,
    paper,
    plan,
    predict_static,
    run,
    sweep,
    theory,
    validate,
    workload,
)
from comem.cli.args import _check_paths, _Parser

#: the commands, in the order ``comem --help`` lists them
COMMANDS = (
    calibrate,
    predict_static,
    engine_sim,
    bench_serve,
    paper,
    plan,
    explain,
    run,
    live,
    workload,
    sweep,
    effectiveness,
    figures,
    validate,
    theory,
    families,
    listing,
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="comem",
        description="Systems model of decoupled context memory (CoMem) for LLM agents.",
    )
    parser.add_argument("--version", action="version", version=f"comem-sim {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    _check_paths(parser)
    _name_commands(sub)
    return parser


def _version() -> str:
    """The installed package's version (``pyproject.toml``), or 'unknown' from a bare tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("comem-sim")
    except PackageNotFoundError:
        return "unknown"


def _name_commands(sub: Any) -> None:
    """Each (sub)command's full name (``comem calibrate fit``), for its errors."""
    for command in sub.choices.values():
        command.set_defaults(command_prog=command.prog)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _name_commands(action)


def _one_line(text: str) -> str:
    """An error message as one printable line: a newline or other control character
    quoted from the user's input (a name, a parser's message) is shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.strip())


def main(argv: Sequence[str] | None = None) -> int:
    from calibration.limits import allowing_large

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with allowing_large(getattr(args, "allow_large", False)):
            return int(args.func(args))
    except ComemInputError as exc:
        print(f"comem: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's files, disks or network: one line as well
        # a full disk raises from a write, which names no file: name the output then
        out = getattr(args, "out", None)
        where = f"{exc.filename}: " if exc.filename else (f"writing --out {out}: " if out else "")
        print(f"comem: error: {_one_line(f'{where}{exc.strerror or exc}')}", file=sys.stderr)
        return 2
    except MemoryError:  # past a budget with --allow-large, or a small machine
        print(
            "comem: error: out of memory: the run is too large for this machine (a smaller"
            " run, or fewer --workers)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("comem: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `comem ... --json | head`
        sys.stderr.close()
        return 0
