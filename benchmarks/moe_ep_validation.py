"""Validate the expert-parallel MoE op model against the kernel tables (needs ../shared).

    PYTHONPATH=. .venv/bin/python benchmarks/moe_ep_validation.py [--shared ../shared]

Per GPU and dtype it prints:

- in-sample MAPE of the embedded profile's MoE op on the rows it was fitted on, per
  ``moe_ep_size`` (1 = tensor-parallel or one GPU);
- hold-out MAPE: the op refitted without one MoE shape, scored on that shape's ep=1 and
  ep=8 rows (Qwen3-Coder's 6144/2560/160 and Qwen3-235B's 4096/1536/128: how well the
  form carries to a shape absent from the tables, as GLM-4.7's is);
- routing: the tables' balanced and more skewed (``power_law_1.2``) routing over the one the
  profile is fitted on (:data:`calibration.opmodels.MOE_ROUTING`) at ep=8 and at ep=1 per
  token band, same shapes: what the choice of routing moves;
- EP8 over TP8 time for the Qwen3-Coder shape, predicted and measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from calibration import opmodels as om
from calibration.profile import default_profile
from calibration.registry import get_gpu

HOLDOUT_SHAPES = ((6144, 2560, 160), (4096, 1536, 128))


def _subset(feats: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[keep] for k, v in feats.items()}


def _shape_mask(feats: dict[str, np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """Rows of one MoE shape (hidden and expert count identify every shape in the tables;
    the ep=1 rows carry inter / moe_tp_size, so inter is not compared)."""
    hidden, _, experts = shape
    return (feats["hidden"] == hidden) & (feats["experts"] == experts)


#: token-count bands of the load-imbalance summary: decode-sized to prefill-sized iterations
TOKEN_BANDS = ((1, 16), (17, 256), (257, 2048), (2049, 16384))


def imbalance(df: pd.DataFrame, kernel_dtype: str, ep: int, routing: str) -> list[float]:
    """Median time ratio ``routing`` / MOE_ROUTING per token band at ``moe_ep_size`` ep
    (moe_tp_size 1, experts >= 128)."""
    rows = df[
        (df["moe_dtype"] == kernel_dtype)
        & (df["kernel_source"] == "vllm_fused_moe")
        & (df["moe_tp_size"] == 1)
        & (df["moe_ep_size"] == ep)
        & (df["num_experts"] >= 128)
    ]
    key = ["num_tokens", "hidden_size", "inter_size", "num_experts", "topk"]
    piv = rows.pivot_table(index=key, columns="distribution", values="latency", aggfunc="median")
    ratio = (piv[routing] / piv[om.MOE_ROUTING]).reset_index()
    tokens = ratio["num_tokens"]
    return [float(ratio[0][tokens.between(lo, hi)].median()) for lo, hi in TOKEN_BANDS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    args = ap.parse_args()
    kernels = Path(args.shared) / "data" / "kernels"
    for gpu in ("h100_sxm", "h200_sxm"):
        df = pd.read_parquet(kernels / gpu / "vllm-0.19.0" / "moe_perf.parquet")
        spec = get_gpu(gpu)
        for dtype in ("bf16", "fp8"):
            prof = default_profile(gpu, dtype)
            fit = prof.op("moe")
            feats, y = om.moe_rows(df, dtype)
            pred = om.predict(om.MOE, fit, feats)
            rel = np.abs(pred / y - 1.0)
            in_sample = {
                int(e): f"{rel[feats['ep'] == e].mean():.1%}" for e in np.unique(feats["ep"])
            }
            print(f"{gpu} {dtype}: nonlocal_slot {fit.params['nonlocal_slot']:.2f}")
            print(f"  in-sample MAPE by moe_ep_size: {in_sample}")
            hw = {"peak_flops": spec.peak_flops[dtype], "hbm_Bps": spec.hbm_bandwidth_Bps}
            for shape in HOLDOUT_SHAPES:
                held = _shape_mask(feats, shape)
                refit = om.fit_form(om.MOE, _subset(feats, ~held), y[~held], hw)
                f_h = _subset(feats, held)
                r_h = np.abs(om.predict(om.MOE, refit, f_h) / y[held] - 1.0)
                per_ep = {int(e): f"{r_h[f_h['ep'] == e].mean():.1%}" for e in (1, 8)}
                print(f"  held-out shape {shape}: MAPE {per_ep}")
            kd = om.kernel_dtype(df["moe_dtype"], dtype)
            bands = ", ".join(f"{lo}-{hi}" for lo, hi in TOKEN_BANDS)
            for routing in ("balanced", "power_law_1.2"):
                print(f"  {routing} / {om.MOE_ROUTING} time, median per token band ({bands}):")
                for ep in (1, 8):
                    ratios = imbalance(df, kd, ep, routing)
                    print(f"    ep={ep}: {[round(r, 2) for r in ratios]}")
            if dtype == "bf16":
                tokens = np.array([1, 8, 64, 512, 4096, 8192])
                shape = (
                    (df["moe_dtype"] == "bfloat16")
                    & (df["hidden_size"] == 6144)
                    & (df["num_experts"] == 160)
                    & (df["distribution"] == om.MOE_ROUTING)
                    & (df["kernel_source"] == "vllm_fused_moe")
                )
                meas = {}
                for ep, tp in ((8, 1), (1, 8)):
                    sel = df[shape & (df["moe_ep_size"] == ep) & (df["moe_tp_size"] == tp)]
                    meas[ep] = sel.groupby("num_tokens")["latency"].median().loc[tokens].to_numpy()
                ones = np.ones(tokens.size)
                base = {
                    "tokens": tokens.astype(float),
                    "hidden": 6144 * ones,
                    "experts": 160 * ones,
                    "top_k": 8 * ones,
                    "w_bytes": 2 * ones,
                }
                p_ep = om.predict(om.MOE, fit, base | {"inter": 2560 * ones, "ep": 8 * ones})
                p_tp = om.predict(om.MOE, fit, base | {"inter": 320 * ones, "ep": ones})
                print(f"  EP8/TP8, Qwen3-Coder MoE shape, tokens {tokens.tolist()}:")
                print(f"    predicted {np.round(p_ep / p_tp, 2).tolist()}")
                print(f"    measured  {np.round(meas[8] / meas[1], 2).tolist()}")


if __name__ == "__main__":
    main()
