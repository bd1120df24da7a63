"""Loader for kernel-timing tables in NVIDIA aiconfigurator's parquet schema.

A kernel directory holds one parquet file per op class (``gemm_perf.parquet``, ...),
each row one measured configuration with ``latency`` in milliseconds for ONE layer's
op. We validate columns and values on load so a malformed file fails with a message
naming the file and the problem, never later inside a fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from calibration.errors import KernelDataError

#: op class -> (file name, columns the loader needs)
KERNEL_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gemm": ("gemm_perf.parquet", ("gemm_dtype", "m", "n", "k", "latency")),
    "context_attention": (
        "context_attention_perf.parquet",
        (
            "batch_size",
            "isl",
            "num_heads",
            "num_key_value_heads",
            "head_dim",
            "kv_cache_dtype",
            "step",
            "window_size",
            "latency",
        ),
    ),
    "generation_attention": (
        "generation_attention_perf.parquet",
        (
            "batch_size",
            "num_heads",
            "num_key_value_heads",
            "head_dim",
            "kv_cache_dtype",
            "step",
            "window_size",
            "latency",
        ),
    ),
    "moe": (
        "moe_perf.parquet",
        (
            "moe_dtype",
            "num_tokens",
            "hidden_size",
            "inter_size",
            "topk",
            "num_experts",
            "moe_tp_size",
            "moe_ep_size",
            "distribution",
            "kernel_source",
            "latency",
        ),
    ),
    "allreduce": (
        "custom_allreduce_perf.parquet",
        ("allreduce_dtype", "num_gpus", "message_size", "backend", "latency"),
    ),
}


@dataclass(frozen=True)
class KernelTables:
    """The five op tables of one (GPU, framework version) directory; latency in ms."""

    directory: Path
    gemm: pd.DataFrame
    context_attention: pd.DataFrame
    generation_attention: pd.DataFrame
    moe: pd.DataFrame
    allreduce: pd.DataFrame
    device: str

    def table(self, op: str) -> pd.DataFrame:
        frame: pd.DataFrame = getattr(self, op)
        return frame


#: Ops whose table may hold no row: one GPU measures no all-reduce (calibrate microbench).
MAY_BE_EMPTY = frozenset({"allreduce"})


def _read_one(path: Path, columns: tuple[str, ...], may_be_empty: bool = False) -> pd.DataFrame:
    if not path.is_file():
        raise KernelDataError(f"{path}: kernel file is missing")
    from calibration.inputs import input_file, require_columns

    input_file(path, "kernel table")  # its size limit
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for corrupt files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KernelDataError(f"{path}: not a readable parquet file ({first})") from None
    if "window_size" in columns and "window_size" not in frame.columns:
        # B300 / GB200 attention tables have no window column: every row is full attention
        frame = frame.assign(window_size=0)
    require_columns(frame, columns, path, error=KernelDataError)
    frame = frame.loc[:, [*columns, *(["device"] if "device" in frame.columns else [])]]
    latency = pd.to_numeric(frame["latency"], errors="coerce")
    frame = frame.assign(latency=latency)
    # Holes (out-of-memory configurations) are NaN in the source: drop them, but a
    # table with no usable row at all is an error.
    frame = frame[latency.notna() & (latency > 0)]
    if frame.empty and not may_be_empty:
        raise KernelDataError(f"{path}: no row with a positive latency")
    return frame.reset_index(drop=True)


def load_kernel_tables(
    directory: str | Path, replace: dict[str, Path] | None = None
) -> KernelTables:
    """Read and validate every op table under ``directory`` (``replace``: an op's table
    read from another file instead, e.g. a newer vLLM's where this one's is a gap fill).

    Raises :class:`KernelDataError` naming the file and the problem.
    """
    root = Path(directory)
    if not root.is_dir():
        raise KernelDataError(f"{root}: kernel directory does not exist")
    paths = {op: root / fname for op, (fname, _) in KERNEL_FILES.items()} | (replace or {})
    tables = {
        op: _read_one(paths[op], cols, op in MAY_BE_EMPTY) for op, (_, cols) in KERNEL_FILES.items()
    }
    gemm = tables["gemm"]
    device = str(gemm["device"].iloc[0]) if "device" in gemm.columns else "unknown"
    return KernelTables(directory=root, device=device, **tables)
