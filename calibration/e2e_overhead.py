"""The framework overhead of a 2024 vLLM, fitted on static-batch end-to-end runs.

LLM-Inference-Bench's static batches (``shared/data/e2e``) ran vLLM's offline engine: a
batch's schedule does not depend on time, so its latency is the kernel time plus each
overhead term (:data:`E2E_TERMS`) times its count, and the terms are a non-negative least
squares fit, cross-validated by leaving each model out. The result is the profiles'
``vllm-2024`` overhead entry (what ``comem calibrate report`` checks against those runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from calibration.profile import FrameworkOverhead, Profile
from calibration.registry import get_model

E2E_COLUMNS = ("Num of Hardware", "Model", "Input Output Length", "Batch Size", "Latency")


def load_e2e(path: str | Path) -> pd.DataFrame:
    """Read the static-batch end-to-end CSV (LLM-Inference-Bench schema)."""
    from calibration.inputs import (
        MAX_SECONDS,
        MAX_TOKENS,
        numeric_column,
        read_csv,
        require_columns,
    )

    p = Path(path)
    raw = read_csv(p, "end-to-end")
    require_columns(raw, E2E_COLUMNS, p)
    where = str(p)
    rows = pd.DataFrame(
        {
            "model": [get_model(str(m)).alias for m in raw["Model"]],
            "tp": numeric_column(raw, "Num of Hardware", where, low=1, high=64, whole=True),
            "length": numeric_column(
                raw, "Input Output Length", where, low=1, high=MAX_TOKENS, whole=True
            ),
            "batch": numeric_column(raw, "Batch Size", where, low=1, high=MAX_TOKENS, whole=True),
            "latency_s": numeric_column(raw, "Latency", where, low=1e-6, high=MAX_SECONDS),
        }
    )
    return rows.astype({"tp": int, "length": int, "batch": int, "latency_s": float})


#: The framework name of the overhead fitted on the LLM-Inference-Bench static batches (a
#: 2024 vLLM: V0 engine, block tables rebuilt every step, Ray/multiprocessing workers).
E2E_FRAMEWORK = "vllm-2024"
E2E_SOURCE = (
    "argonne-lcf/LLM-Inference-Bench commit 4211f5d4, vLLM (2024) static batches, "
    "Llama-2-7B and Llama-3-8B, TP 1/2/4, H100 (BSD-3-Clause)"
)
#: The overhead terms a static batch identifies (no request overhead: no HTTP server) and
#: the column of :func:`e2e_costs` each multiplies.
E2E_TERMS = {
    "per_iteration_s": "iterations",
    "per_collective_s": "collective_iterations",
    "per_sequence_s": "sequence_iterations",
    "per_kv_token_s": "kv_token_iterations",
}


@dataclass(frozen=True)
class OverheadFit:
    """A fitted framework overhead and its error on the rows (in-sample and, per model
    left out, cross-validated: fitted on the other models)."""

    overhead: FrameworkOverhead
    mape: float
    worst: float
    cv_mape: float
    cv_worst: float
    cv_by_model: dict[str, dict[str, float]]
    #: every row's signed relative error when its model was left out of the fit
    cv_errors: tuple[float, ...] = ()

    @property
    def per_iteration_s(self) -> float:
        return self.overhead.per_iteration_s

    @property
    def per_sequence_s(self) -> float:
        return self.overhead.per_sequence_s


def e2e_costs(profile: Profile, e2e: pd.DataFrame, gpu: str = "h100_sxm") -> pd.DataFrame:
    """Price every static-batch row with the profile's kernels (no overhead yet).

    The schedule of a static batch does not depend on time, so a row's latency is the
    kernel time plus each overhead term times its count (:data:`E2E_TERMS`): linear in
    the overhead. ``collective_iterations`` counts the TP all-reduces (two a layer) of
    every iteration on more than one GPU. ``benchmark_latency`` runs vLLM's offline
    engine: budget 16384.
    """
    from calibration.latency import LatencyModel
    from calibration.static import DEFAULT_STATIC_BUDGET, static_cost

    costs = []
    for model, tp, length, batch in zip(
        e2e["model"], e2e["tp"], e2e["length"], e2e["batch"], strict=True
    ):
        lm = LatencyModel(
            str(model), gpu, int(tp), "bf16", profile=profile,
            max_num_batched_tokens=DEFAULT_STATIC_BUDGET,
        )  # fmt: skip
        costs.append(static_cost(lm, int(batch), int(length), int(length)))
    multi_gpu = (e2e["tp"] > 1).to_numpy()
    return e2e.assign(
        kernel_s=[c.kernel_s for c in costs],
        iterations=[c.iterations for c in costs],
        collective_iterations=[
            c.iterations * 2 * get_model(str(model)).layers * int(m)
            for c, model, m in zip(costs, e2e["model"], multi_gpu, strict=True)
        ],
        sequence_iterations=[c.sequence_iterations for c in costs],
        kv_token_iterations=[c.kv_token_iterations for c in costs],
        preemptions=[c.preemptions for c in costs],
    )


def e2e_errors(costs: pd.DataFrame, overhead: FrameworkOverhead) -> pd.DataFrame:
    """Add predicted latency and relative error for a given overhead."""
    pred = costs["kernel_s"].copy()
    for term, column in E2E_TERMS.items():
        pred = pred + getattr(overhead, term) * costs[column]
    return costs.assign(predicted_s=pred, rel_error=pred / costs["latency_s"] - 1.0)


def nnls_overhead(costs: pd.DataFrame) -> FrameworkOverhead:
    """Non-negative least squares on relative error: every term is a cost, none a saving."""
    y = costs["latency_s"].to_numpy(float)
    a = costs[list(E2E_TERMS.values())].to_numpy(float) / y[:, None]
    coef = nnls(a, 1.0 - costs["kernel_s"].to_numpy(float) / y)[0]
    return FrameworkOverhead(**dict(zip(E2E_TERMS, map(float, coef), strict=True)))


def fit_overhead(
    profile: Profile, e2e: pd.DataFrame, gpu: str = "h100_sxm"
) -> tuple[OverheadFit, pd.DataFrame]:
    """Fit the 2024 vLLM's framework overhead on static-batch runs, and cross-validate it.

    The kernel time is the vLLM 0.19.0 kernels' as measured (not scaled). What the 2024
    runs spent beyond it is fitted as :data:`E2E_TERMS`: per iteration, per TP collective
    on several GPUs (V0 launched each all-reduce from Python, through its workers: a
    cost per call, so it grows with the layers, which a per-iteration term fitted on two
    32-layer models would not carry to an 80-layer one), per
    scheduled sequence, and per KV token the scheduled sequences hold. That last term is
    the physical cause of the old predictor's shortfall that grew with context and batch
    (-2% at 128 tokens, -15% at 2048): V0 rebuilt every sequence's block table on the
    CPU every step, O(KV blocks). A slower decode-attention kernel, the other candidate,
    scales with attention bytes (4x larger per token for the MHA Llama-2-7B than for the
    GQA Llama-3-8B); fitted that way, leave-one-model-out error gets worse, not better.
    """
    costs = e2e_costs(profile, e2e, gpu)
    overhead = nnls_overhead(costs)
    table = e2e_errors(costs, overhead)
    rel = np.abs(table["rel_error"].to_numpy())
    held_out = []
    by_model: dict[str, dict[str, float]] = {}
    for model in sorted(costs["model"].unique()):
        train = costs[costs["model"] != model]
        if train.empty:
            continue
        test = e2e_errors(costs[costs["model"] == model], nnls_overhead(train))
        err = test["rel_error"].to_numpy()
        held_out.append(err)
        by_model[str(model)] = {
            "mape": round(float(np.abs(err).mean()), 4),
            "signed": round(float(err.mean()), 4),
            "worst": round(float(np.abs(err).max()), 4),
        }
    cv = np.abs(np.concatenate(held_out)) if held_out else rel
    fit = OverheadFit(
        overhead, float(rel.mean()), float(rel.max()), float(cv.mean()), float(cv.max()), by_model,
        tuple(float(e) for e in np.concatenate(held_out)) if held_out else (),
    )  # fmt: skip
    return fit, table


def e2e_overhead_entry(fit: OverheadFit, rows: int) -> dict[str, Any]:
    """The profile's record of a static-batch overhead fit (terms and provenance)."""
    entry: dict[str, Any] = {
        k: float(f"{v:.6g}") for k, v in fit.overhead.terms().items() if k in E2E_TERMS
    }
    entry.update(
        {
            "framework": E2E_FRAMEWORK,
            "fitted_on": E2E_SOURCE,
            # the 2024 vLLM (V0) had no asynchronous scheduling: CPU and GPU add up
            "async_scheduling": False,
            "e2e_mape": round(fit.mape, 4),
            "e2e_worst": round(fit.worst, 4),
            "e2e_rows": rows,
            "cv_leave_one_model_out": {
                "mape": round(fit.cv_mape, 4),
                "worst": round(fit.cv_worst, 4),
                "by_model": fit.cv_by_model,
            },
        }
    )
    return entry
