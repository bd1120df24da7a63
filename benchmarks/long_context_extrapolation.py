"""Do the attention fits transfer to longer contexts than they were fitted on? (needs
../shared; ~1 min)

    PYTHONPATH=. .venv/bin/python benchmarks/long_context_extrapolation.py [--shared ../shared]

Agent prompts are long: tens of thousands of tokens. The kernel tables measure prefill
attention up to 16k-token sequences (and never on a cached prefix) and decode attention up
to 128k tokens of KV. This fits each attention op as the profiles do (roofline form and
lattice, :func:`calibration.opmodels.fit_form`) on the short rows only and scores it on the
long rows it never saw: prefill fitted on sequences <= 4096 tokens, scored on 8192-16384;
decode fitted on KV <= 16384 tokens, scored on 32768 and more. The error on the long rows
is what a prediction past the table's end can be expected to carry (the same form
extrapolates from 16k to an agent's 64k).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from calibration import opmodels as om
from calibration.kernels import load_kernel_tables
from calibration.registry import get_gpu

GPUS = ("h100_sxm", "h200_sxm", "b200_sxm")
PREFILL_SPLIT = 4096
DECODE_SPLIT = 16384


def _score(form: om.OpForm, f: om.Features, y: np.ndarray, hw: dict[str, float], long: np.ndarray):
    train = {k: v[~long] for k, v in f.items()}
    test = {k: v[long] for k, v in f.items()}
    fit = om.fit_form(form, train, y[~long], hw)
    pred = om.predict(form, fit, test)
    rel = pred / y[long] - 1.0
    return len(rel), float(np.abs(rel).mean()), float(rel.mean()), float(np.abs(rel).max())


def _row(gpu: str, op: str, kv: str, n: int, mape: float, signed: float, worst: float) -> str:
    return f"{gpu} | {op} | {kv} | {n} | {mape:.1%} | {signed:+.1%} | {worst:.0%}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="../shared")
    args = ap.parse_args(argv)
    print("gpu | op | KV | long rows | MAPE | signed | worst")
    for gpu in GPUS:
        tables = load_kernel_tables(Path(args.shared) / "data" / "kernels" / gpu / "vllm-0.19.0")
        spec = get_gpu(gpu)
        hw = {"peak_flops": spec.peak_flops["bf16"], "hbm_Bps": spec.hbm_bandwidth_Bps}
        hw_ctx = hw | {"sm_count": float(spec.sm_count)}
        for kv in ("bf16", "fp8"):
            f, y = om.context_rows(tables.context_attention, kv)
            long = f["q"] > PREFILL_SPLIT
            n, mape, signed, worst = _score(om.CONTEXT_ATTENTION, f, y, hw_ctx, long)
            print(_row(gpu, f"prefill, fitted <= {PREFILL_SPLIT}", kv, n, mape, signed, worst))
            f, y = om.generation_rows(tables.generation_attention, kv)
            kv_len = f["kv_total"] / f["batch"]
            long = kv_len > DECODE_SPLIT
            n, mape, signed, worst = _score(om.GENERATION_ATTENTION, f, y, hw, long)
            print(_row(gpu, f"decode, fitted <= {DECODE_SPLIT}", kv, n, mape, signed, worst))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
