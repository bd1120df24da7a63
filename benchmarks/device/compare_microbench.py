"""Compare a device's microbenchmark tables with the committed vLLM kernel tables.

    python -m benchmarks.device.compare_microbench DIR [--gpu h100_sxm] [--reference REFDIR]
        [--out OUTDIR]

DIR is what ``comem calibrate microbench`` wrote (tables plus ``device.json``); REFDIR
defaults to ``shared/data/kernels/<gpu>/vllm-0.19.0``. Rows are matched on their full shape
(GEMM: dtype, m, n, k; attention: batch, tokens or KV length, heads, head_dim, bf16 KV, no
window; MoE: bf16, tokens, hidden, expert width, experts, top-k, no TP/EP, balanced), and
each op class gets the distribution of ``device / reference`` latency ratios. Writes
``comparison.csv`` (one row per matched shape) and ``comparison.md`` (summary with the
provenance of both sides) to OUTDIR (default: DIR/comparison).

A ratio above 1 means torch's kernel on this device is slower than vLLM 0.19.0's kernel on the
reference GPU: for the same GPU model that is the kernel gap (cuBLAS vs vLLM's GEMM choice,
SDPA vs FlashAttention-3, a loop over experts vs the fused MoE kernel), not the hardware.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from calibration.errors import ComemInputError
from calibration.kernels import KERNEL_FILES

AICONFIGURATOR = (
    "NVIDIA ai-dynamo/aiconfigurator commit 095f58a51c4ca8e61b66ec108d86f223f8d559ce,"
    " vLLM 0.19.0 kernels (Apache-2.0)"
)

#: op class -> (columns that identify a shape, filters both sides must pass)
MATCH: dict[str, list[str]] = {
    "gemm": ["gemm_dtype", "m", "n", "k"],
    "context_attention": ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"],
    "generation_attention": [
        "batch_size",
        "step",
        "num_heads",
        "num_key_value_heads",
        "head_dim",
    ],
    "moe": ["num_tokens", "hidden_size", "inter_size", "topk", "num_experts"],
}


def _select(op: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The comparable rows of one table, one median latency per shape."""
    rows = frame[pd.to_numeric(frame["latency"], errors="coerce") > 0]
    if op in ("context_attention", "generation_attention"):
        rows = rows[(rows["kv_cache_dtype"] == "bfloat16") & (rows["window_size"] == 0)]
        if op == "context_attention":
            rows = rows[rows["step"] == 0]  # the reference has no cached-prefix rows
    if op == "moe":
        rows = rows[
            (rows["moe_dtype"] == "bfloat16")
            & (rows["moe_tp_size"] == 1)
            & (rows["moe_ep_size"] == 1)
            & (rows["distribution"] == "balanced")
            & (rows["kernel_source"] != "vllm_marlin_int4_moe")
        ]
    if op == "gemm":
        rows = rows[rows["gemm_dtype"].isin(["bfloat16", "fp8"])]
    return rows.groupby(MATCH[op], as_index=False).agg(latency=("latency", "median"))


def compare_tables(device_dir: Path, reference_dir: Path) -> pd.DataFrame:
    """One row per matched shape: op, dtype, shape, device and reference ms, ratio."""
    parts = []
    for op, keys in MATCH.items():
        fname = KERNEL_FILES[op][0]
        for d in (device_dir, reference_dir):
            if not (d / fname).is_file():
                raise ComemInputError(f"{d / fname}: kernel table is missing")
        mine = _select(op, pd.read_parquet(device_dir / fname))
        ref = _select(op, pd.read_parquet(reference_dir / fname))
        both = mine.merge(ref, on=keys, suffixes=("_device", "_reference"))
        if both.empty:
            continue
        both.insert(0, "op", op)
        if "gemm_dtype" not in both:
            both.insert(1, "gemm_dtype", "bfloat16")
        both = both.rename(
            columns={
                "gemm_dtype": "dtype",
                "latency_device": "device_ms",
                "latency_reference": "reference_ms",
            }
        )
        both["ratio"] = both["device_ms"] / both["reference_ms"]
        parts.append(both)
    if not parts:
        raise ComemInputError(f"{device_dir}: no shape matches a row of {reference_dir}")
    return pd.concat(parts, ignore_index=True)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per op class and dtype: matched shapes and the spread of the ratios."""
    out = []
    for (op, dtype), g in rows.groupby(["op", "dtype"], sort=False):
        r = g["ratio"].to_numpy(float)
        out.append(
            {
                "op": op,
                "dtype": dtype,
                "shapes": len(r),
                "median_ratio": float(np.median(r)),
                "geomean_ratio": float(np.exp(np.mean(np.log(r)))),
                "p10": float(np.quantile(r, 0.1)),
                "p90": float(np.quantile(r, 0.9)),
                "min": float(r.min()),
                "max": float(r.max()),
            }
        )
    return pd.DataFrame(out)


def _md_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, row in frame.iterrows():
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _reference_source(reference_dir: Path) -> str:
    described = reference_dir / "device.json"
    if described.is_file():  # another microbenchmark run
        return str(json.loads(described.read_text()).get("source", described))
    return AICONFIGURATOR


def write_comparison(
    device_dir: Path, reference_dir: Path, out_dir: Path, gpu: str
) -> tuple[Path, Path]:
    rows = compare_tables(device_dir, reference_dir)
    summary = summarize(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "comparison.csv"
    rows.to_csv(csv, index=False, float_format="%.6g")
    info_path = device_dir / "device.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    first = pd.read_parquet(device_dir / KERNEL_FILES["gemm"][0]).iloc[0]
    peaks = ", ".join(f"{k} {v / 1e12:.4g} TFLOP/s" for k, v in info.get("peak_flops", {}).items())
    lines = [
        f"# Microbenchmark on {info.get('device', first['device'])} vs committed {gpu} tables",
        "",
        f"- Device side: `comem calibrate microbench` tables in `{device_dir}`;"
        f" {info.get('source', 'no device.json')}.",
        f"- Device: {first['device']}, {first['framework']} {first['version']};"
        f" fastest GEMM {peaks or 'n/a'}; device copy"
        f" {info.get('hbm_bandwidth_Bps', float('nan')) / 1e12:.3g} TB/s (read + write).",
        f"- Reference side: `{reference_dir}` ({_reference_source(reference_dir)}).",
        f"- Compared on {_dt.date.today().isoformat()} by"
        " `python -m benchmarks.device.compare_microbench`;"
        " matched shapes only; ratio = device latency / reference latency.",
        "",
        _md_table(summary),
        "",
        "Kernels differ by side: the device runs torch's (`F.linear`, `torch._scaled_mm` with"
        " per-tensor scales, `F.scaled_dot_product_attention`, a grouped-matmul decode, a loop"
        " over experts), the reference vLLM 0.19.0's (its GEMM selection, FlashAttention,"
        " fused MoE). On the same GPU model a ratio is that kernel gap.",
    ]
    if info.get("skipped"):
        lines += ["", "Skipped on the device: " + "; ".join(info["skipped"])]
    md = out_dir / "comparison.md"
    md.write_text("\n".join(lines) + "\n")
    return csv, md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("device_dir", help="directory written by comem calibrate microbench")
    parser.add_argument("--gpu", help="h100_sxm or h200_sxm (default: device.json's name)")
    parser.add_argument("--reference", help="reference tables (default: shared/data/kernels)")
    parser.add_argument("--out", help="output directory (default: DEVICE_DIR/comparison)")
    args = parser.parse_args(argv)
    try:
        device_dir = Path(args.device_dir)
        gpu = args.gpu
        if gpu is None and (device_dir / "device.json").is_file():
            gpu = json.loads((device_dir / "device.json").read_text()).get("name")
        if args.reference:
            reference = Path(args.reference)
        else:
            from calibration.report import find_shared

            shared = find_shared()
            if shared is None or gpu is None:
                raise ComemInputError("pass --reference (no shared/ checkout found, or no --gpu)")
            reference = shared / "data" / "kernels" / str(gpu) / "vllm-0.19.0"
        out = Path(args.out) if args.out else device_dir / "comparison"
        csv, md = write_comparison(device_dir, reference, out, str(gpu or reference.parent.name))
    except (ComemInputError, OSError, ValueError) as exc:
        print(f"compare_microbench: error: {exc}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"wrote {csv} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
