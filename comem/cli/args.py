"""Argument types of the ``comem`` parsers: each turns a bad value into one line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what and where) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """An unknown flag names the command it was given to and that command's help
        (``comem bench-serve --help``), not the top-level one."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            prog = getattr(ns, "command_prog", self.prog)
            near = _closest_flag(self, prog, extras[0])
            if near:
                hint = f" (did you mean {near}?)"
            elif prog.endswith("bench-serve") and extras[0].startswith("--"):
                hint = " (a `vllm bench serve` flag comem neither prices nor accepts)"
            else:
                hint = ""
            self.exit(
                2,
                f"{prog}: error: unrecognized arguments: {' '.join(extras)}{hint}"
                f" (see '{prog} --help')\n",
            )
        return ns


def _closest_flag(parser: argparse.ArgumentParser, prog: str, given: str) -> str | None:
    """The flag of the (sub)command ``prog`` that ``given`` most likely misspells."""
    import difflib

    if not given.startswith("--"):
        return None
    flags: list[str] = []

    def collect(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    collect(child)
            elif p.prog == prog:
                flags.extend(o for o in action.option_strings if o.startswith("--"))

    collect(parser)
    found = difflib.get_close_matches(given.split("=", 1)[0], flags, n=1, cutoff=0.8)
    return found[0] if found else None


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low`` (and <= ``high``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number, got {_shown(text)}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)


_non_negative_int = _int_at_least(0)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_shown(text)}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not 0.0 < value <= 1e6:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 1e6], got {text}")
    return value


def _seconds(text: str) -> float:
    """Seconds, 0 allowed (a tool that returns at once)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not 0.0 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in [0, 1e6], got {text}")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_shown(text)}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _token_count(text: str) -> int:
    """A count of tokens (a budget, a cache size, a block size): 1 to 10^9, the bound of
    every token field of the input files."""
    from calibration.inputs import MAX_TOKENS

    value = _positive_int(text)
    if value > MAX_TOKENS:
        raise argparse.ArgumentTypeError(f"must be a token count <= {MAX_TOKENS:.0e}, got {text}")
    return value


def _name(text: str) -> str:
    """A name (a framework, a served model): not empty, no control characters."""
    if not text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"expected a name of printable characters, got {_shown(text)}"
        )
    return text


def _path(text: str) -> str:
    """A file or directory argument: an empty one names nothing (it would be skipped, or
    mean the current directory, without a word)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if not text.isprintable():  # a newline or NUL makes no usable file name
        raise argparse.ArgumentTypeError(
            f"expected a path of printable characters, got {_shown(text)}"
        )
    return text


#: the arguments that name files or directories (every command's): checked by :func:`_path`
_PATH_ARGS = frozenset(
    {"out", "profile", "grid", "spec", "workload", "kernels", "measurements", "e2e",
     "fallback_kernels", "overhead_from", "figures", "csv", "dir", "only", "steps", "figure",
     "scenario", "sweep", "shared", "result_dir", "result_filename", "data",
     "workload_scenario"}
)  # fmt: skip


def _check_paths(parser: argparse.ArgumentParser) -> None:
    """Give every path argument of ``parser`` and its subcommands the :func:`_path` type."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _check_paths(sub)
        elif action.dest in _PATH_ARGS and action.type is None and action.nargs != 0:
            action.type = _path


_DTYPE_HELP = (
    "weights: bf16, fp8, fp4 (NVFP4), int4 or mxfp4 (weight-only routed experts) [auto: the"
    " checkpoint's, as vLLM loads it: from its config.json's quantization_config (fp8, ModelOpt"
    " or compressed-tensors NVFP4, compressed-tensors / AWQ / GPTQ int4, mxfp4; others are"
    " refused) or, without a config, an FP8 / NVFP4 part of its name; else bf16]"
)


#: vLLM's ``--dtype`` spellings. fp16 is priced as bf16: the same 16-bit tensor-core rate and
#: bytes on the GPUs modelled (H100/H200 datasheets list one dense FP16/BF16 peak).
_DTYPE_NAMES = {
    "auto": "auto",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "bf16",
    "float16": "bf16",
    "half": "bf16",
    "fp8": "fp8",
    "fp4": "fp4",
    "nvfp4": "fp4",
    "int4": "int4",
    "mxfp4": "mxfp4",
}


def _dtype_arg(text: str) -> str:
    key = text.strip().lower()
    if key not in _DTYPE_NAMES:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a weight dtype; use auto, bf16 (bfloat16, float16, half), fp8,"
            " fp4 (nvfp4), int4 or mxfp4"
        )
    return _DTYPE_NAMES[key]


#: ``--dtype`` over the engine's ``dtype`` field (:func:`comem.cli.fields.add_model_flags`):
#: vLLM's spellings, and ``auto``, the checkpoint's own (resolved by ``_weight_dtype``)
_DTYPE_FLAG: dict[str, Any] = {
    "type": _dtype_arg,
    "default": "auto",
    "choices": None,
    "help": _DTYPE_HELP,
}


def _add_allow_large(parser: argparse.ArgumentParser) -> None:
    from calibration.limits import ALLOW_LARGE_ENV

    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="run even above the work budgets that catch typos (docs/reference/inputs.md,"
        f" 'Budgets'; also {ALLOW_LARGE_ENV}=1)",
    )
