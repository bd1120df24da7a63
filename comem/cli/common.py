"""Helpers every ``comem`` command shares: workers, output checks, JSON, progress."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _workers(requested: int | None, jobs: int) -> int:
    """Worker processes for ``jobs`` jobs: ``--workers`` (at most 4 per CPU: a process
    pool forks them all at once) or the CPU count, never more than there are jobs."""
    import os

    from calibration import limits

    cpus = os.cpu_count() or 1
    if requested is not None:
        limits.check(
            limits.Budget(4 * cpus, f"worker processes (4 per CPU; this machine has {cpus})"),
            requested,
            f"--workers {requested}",
        )
    return max(1, min(requested or cpus, jobs))


def _writable_dir(path: str | None, flag: str = "--out", kind: str | None = None) -> None:
    """Fail before a run, not after it, if its output directory cannot be written (or,
    for a ``kind`` of result, holds something else: :func:`check_result_dir`)."""
    if path is not None:
        from calibration.outputs import check_result_dir, writable_dir

        writable_dir(path, flag)
        if kind is not None:
            check_result_dir(path, kind)


def _writable_file(path: str | None, flag: str = "--out") -> None:
    """Fail before a run, not after it, if its output file cannot be written."""
    if path is not None:
        from calibration.outputs import writable_file

        writable_file(path, flag)


def _outputs_not_inputs(
    out: str | Path | None, names: Sequence[str], inputs: dict[str, Any], flag: str = "--out"
) -> None:
    """Refuse an ``--out`` directory where a file the command writes (``names``) is one of
    its inputs: a model's config.json, a profile, the scenario itself. ``inputs``: paths
    by name, and settings (``model_dump()``) whose strings may name files."""
    if out is None:
        return
    from calibration.input_files import input_paths
    from calibration.outputs import refuse_outputs_over_inputs

    found: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, dict | list):  # named by their field: agent.model
            found.update(input_paths(value))
        else:
            found[name] = value
    refuse_outputs_over_inputs([Path(out) / n for n in names], found, flag)


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers); numpy scalars (a pandas
    summary's) their Python values."""
    import numpy as np

    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _with_progress(
    show: bool, label: str, unit: str, total: int | None, work: Callable[[Any], Any]
) -> Any:
    """Run ``work(advance)`` with progress on stderr (``advance()`` per item done, None
    when ``show`` is false): a bar on a terminal, plain lines in a log
    (:mod:`sim.progress`)."""
    from sim.progress import progress

    with progress(label, unit, total, show) as counter:
        return work(counter)


def _print_json(obj: Any) -> None:
    print(json.dumps(_json_safe(obj), indent=1, sort_keys=True, allow_nan=False))


def _weight_dtype(args: argparse.Namespace) -> str:
    """``--dtype``, with ``auto`` resolved as vLLM does: the checkpoint's quantization."""
    if args.dtype != "auto":
        return str(args.dtype)
    from calibration.registry import checkpoint_dtype

    return checkpoint_dtype(args.model)


def _workload_sets(args: argparse.Namespace, scenario: str) -> tuple[list[str], str]:
    """The workload flags (``--context-tokens`` ...) as ``--set`` overrides of the
    scenario's workload, and the line saying how they were mapped."""
    from sim.scenario import read_scenario_data
    from sim.workload_flags import as_sets, from_args, workload_fields

    flags = from_args(args)
    if not flags.given():
        return [], ""
    base = read_scenario_data(scenario).get("workload", {})
    fields, note = workload_fields(base if isinstance(base, dict) else {}, flags)
    return as_sets(fields), note
