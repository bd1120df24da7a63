"""Do the kernel fits transfer past the tables they were fitted on? (needs ../shared; ~1 min)

    PYTHONPATH=. .venv/bin/python benchmarks/op_extrapolation.py [--shared ../shared]

A new model or deployment asks for shapes the tables lack: agent prompts of tens of
thousands of tokens (the tables measure prefill attention up to 16k-token sequences, never
on a cached prefix), experts sliced more ways than measured (gpt-oss's MXFP4 table has MoE
TP 1 and 2; it is served at TP 4-8), more tokens per GEMM. Each op is fitted as the
profiles fit it (roofline and lattice, :func:`calibration.opmodels.fit_form`) on part of its
table and scored on the rest:

- prefill attention: fitted on sequences <= 4096 tokens, scored on 8192-16384;
- decode attention: fitted on KV <= 16384 tokens, scored on 32768-131072;
- fused MoE: fitted on experts sliced 1-2 ways, scored on 4-8 ways;
- GEMM: fitted on <= 1024 tokens, scored on 2048-16384.

Under two rules for the lattice (the empirical correction) past its data: ``hold`` (the
value at the data's edge, :attr:`calibration.lattice.Lattice.data_range`, what the profiles
do) and ``decay`` (to no correction at the next knot, the bare roofline: the profiles
before 2026-12-07).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from calibration import opmodels as om
from calibration.kernels import KernelTables, load_kernel_tables
from calibration.registry import get_gpu

GPUS = ("h100_sxm", "h200_sxm", "b200_sxm")
RULES = ("hold", "decay")


def _score(
    form: om.OpForm, f: om.Features, y: np.ndarray, hw: dict[str, float], held: np.ndarray
) -> dict[str, str]:
    """MAPE (signed) on the ``held`` rows of a fit on the others, under each rule."""
    fit = om.fit_form(form, {k: v[~held] for k, v in f.items()}, y[~held], hw)
    test = {k: v[held] for k, v in f.items()}
    out = {}
    kept = fit.lattice.data_range if fit.lattice is not None else None
    for rule in RULES:
        if fit.lattice is not None:
            fit.lattice.data_range = kept if rule == "hold" else None
            fit.lattice._py = None  # the scalar path's cache holds the edges
        rel = om.predict(form, fit, test) / y[held] - 1.0
        out[rule] = f"{np.abs(rel).mean():.1%} ({rel.mean():+.1%})"
    return out


def _sliced(f: om.Features) -> np.ndarray:
    """Tensor-parallel MoE rows whose experts are sliced 4 ways or more (per-GPU width at
    most a quarter of the widest width measured for that MoE shape)."""
    shape = list(zip(f["hidden"], f["experts"], f["top_k"], strict=True))
    widest: dict[tuple[float, float, float], float] = {}
    for s, inter in zip(shape, f["inter"], strict=True):
        widest[s] = max(widest.get(s, 0.0), inter)
    quarter = np.array(
        [inter <= widest[s] / 4.0 for s, inter in zip(shape, f["inter"], strict=True)]
    )
    return quarter & (f["ep"] == 1)


Case = tuple[str, om.OpForm, om.Features, np.ndarray, dict[str, float], np.ndarray]


def cases(tables: KernelTables, hw: dict[str, float], hw_ctx: dict[str, float]) -> Iterator[Case]:
    """(label, form, features, measured, hardware, held-out rows) of each study."""
    for kv in ("bf16", "fp8"):
        f, y = om.context_rows(tables.context_attention, kv)
        yield (
            f"prefill <= 4096 -> 8k-16k, {kv} KV",
            om.CONTEXT_ATTENTION,
            f,
            y,
            hw_ctx,
            f["q"] > 4096,
        )
        f, y = om.generation_rows(tables.generation_attention, kv)
        held = f["kv_total"] / f["batch"] > 16384
        yield f"decode KV <= 16k -> 32k-128k, {kv} KV", om.GENERATION_ATTENTION, f, y, hw, held
    for dtype in ("bf16", "fp8"):
        f, y = om.moe_rows(tables.moe, dtype)
        yield f"MoE sliced 1-2 -> 4-8 ways, {dtype}", om.MOE, f, y, hw, _sliced(f)
        f, y = om.gemm_rows(tables.gemm, dtype)
        yield f"GEMM <= 1024 -> 2048-16384 tokens, {dtype}", om.GEMM, f, y, hw, f["m"] > 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="../shared")
    args = ap.parse_args(argv)
    print("| gpu | fitted -> scored | rows | hold: MAPE (signed) | decay: MAPE (signed) |")
    print("|---|---|---|---|---|")
    better = total = 0
    for gpu in GPUS:
        tables = load_kernel_tables(Path(args.shared) / "data" / "kernels" / gpu / "vllm-0.19.0")
        spec = get_gpu(gpu)
        hw = {"peak_flops": spec.peak_flops["bf16"], "hbm_Bps": spec.hbm_bandwidth_Bps}
        hw_ctx = hw | {"sm_count": float(spec.sm_count)}
        for label, form, f, y, op_hw, held in cases(tables, hw, hw_ctx):
            s = _score(form, f, y, op_hw, held)
            total += 1
            better += float(s["hold"].split("%")[0]) < float(s["decay"].split("%")[0])
            print(f"| {gpu} | {label} | {int(held.sum())} | {s['hold']} | {s['decay']} |")
    print(f"\nhold beats decay in {better} of {total} cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
