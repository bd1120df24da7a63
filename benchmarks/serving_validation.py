"""Serving and static-batch validation of the latency model against real vLLM (needs ../shared).

    PYTHONPATH=. .venv/bin/python benchmarks/serving_validation.py [--shared ../shared]
        [--figure figures/calibration/serving_h100.png] [--quick]

Prints, for ``shared/data/serving/vllm_serving_h100.csv`` (138 ``vllm bench serve`` points on
H100) replayed through ``comem bench-serve`` under the stated assumptions
(``calibration.serving.SHARED_H100_ASSUMPTIONS``):

- the rows left out (measured TPOT below the roofline bound) and the fitted overheads
  (pooled, per vLLM version);
- TTFT and TPOT MAPE and signed error per model, dtype and TP: in-sample (pooled fit) and
  leave-one-model-out (overhead fitted on the other model's rows only);
- the KV-full knee: rows whose TTFT jumps >= 5x from the next lower concurrency;
- sensitivity to the assumptions (the pooled overhead, not refitted): the closed loop
  started staggered instead of in a burst, identical lengths for Llama, budget 8192;
- the static batches (``shared/data/e2e``): the 2024 vLLM's overhead, in-sample and
  leave-one-model-out.

and draws predicted vs measured TTFT and TPOT (cross-validated) into ``--figure``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calibration.e2e_overhead import fit_overhead, load_e2e
from calibration.profile import FrameworkOverhead, default_profile
from calibration.serving import SHARED_H100_ASSUMPTIONS, load_serving_csv, setup_for
from calibration.serving_fit import error_summary
from sim.serving import calibrate_serving, evaluate_rows

GOALS = {"serving_tpot_mape": 0.08, "serving_ttft_mape": 0.15, "static_mape": 0.07}


def _pct(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    for col in shown.columns:
        if col.endswith("_mape"):
            shown[col] = [f"{v:.1%}" for v in shown[col]]
        elif col.endswith("_signed"):
            shown[col] = [f"{v:+.1%}" for v in shown[col]]
    return shown.to_string(index=False)


def knee_rows(table: pd.DataFrame, jump: float = 5.0) -> pd.DataFrame:
    """Rows whose measured TTFT is >= ``jump`` x the same setup's at the next lower
    concurrency (the KV cache is full, requests queue), with the simulated jump."""
    out = []
    keys = ["model", "dtype", "tp", "isl", "osl"]
    for _, g in table.groupby(keys):
        g = g.sort_values("concurrency")
        for prev, cur in zip(g.iloc[:-1].itertuples(), g.iloc[1:].itertuples(), strict=True):
            if cur.ttft_ms >= jump * prev.ttft_ms:
                out.append(
                    {
                        "row": f"{cur.model} {cur.dtype} TP{cur.tp} {cur.isl}x{cur.osl}"
                        f" c{prev.concurrency}->c{cur.concurrency}",
                        "measured_jump": cur.ttft_ms / prev.ttft_ms,
                        "simulated_jump": cur.pred_ttft_ms / prev.pred_ttft_ms,
                        "ttft_ms": cur.ttft_ms,
                        "pred_ttft_ms": cur.pred_ttft_ms,
                        "preemptions": cur.preemptions,
                    }
                )
    return pd.DataFrame(out)


def sensitivity(rows: list[Any], overhead: FrameworkOverhead) -> pd.DataFrame:
    """The pooled overhead under other assumptions (no refit): MAPE per model."""
    variants = {
        "stated": SHARED_H100_ASSUMPTIONS,
        "staggered start (steady state)": {
            m: v | {"closed_loop_start": "staggered"} for m, v in SHARED_H100_ASSUMPTIONS.items()
        },
        "Llama identical lengths (rr 0)": SHARED_H100_ASSUMPTIONS
        | {"llama-3.1-70b": {"max_num_batched_tokens": 32768}},
        "budget 8192 everywhere": {
            m: v | {"max_num_batched_tokens": 8192} for m, v in SHARED_H100_ASSUMPTIONS.items()
        },
        "budget 32768 everywhere": {
            m: v | {"max_num_batched_tokens": 32768} for m, v in SHARED_H100_ASSUMPTIONS.items()
        },
    }
    parts = []
    for name, assumptions in variants.items():
        table = evaluate_rows(rows, [setup_for(r, assumptions) for r in rows], overhead)
        summary = error_summary(table, by=("model",))
        summary.insert(0, "assumptions", name)
        parts.append(summary)
    return pd.concat(parts, ignore_index=True)


def draw(cv: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.serving_transfer import scatter_panel

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, what in zip(axes, ("ttft", "tpot"), strict=True):
        scatter_panel(ax, cv, what, ["model", "dtype"], (0.5, 2.0), "leave one model out")
    fig.suptitle(
        "comem bench-serve vs real vLLM serving on H100, overhead fitted on the other model"
        " (leave one model out)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--figure", default="figures/calibration/serving_h100.png")
    ap.add_argument("--quick", action="store_true", help="skip the sensitivity table")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    csv = Path(args.shared) / "data" / "serving" / "vllm_serving_h100.csv"
    rows = load_serving_csv(csv)
    print("assumptions (what the rows do not state; calibration.serving.SHARED_H100_ASSUMPTIONS):")
    for r in sorted({(r.model, r.dtype): r for r in rows}.values(), key=lambda r: r.label):
        print(f"  {r.model} {r.dtype}: {setup_for(r, SHARED_H100_ASSUMPTIONS).describe()}")
    result = calibrate_serving(rows, SHARED_H100_ASSUMPTIONS)
    for r, bound in result.excluded:
        print(
            f"left out: {r.label}: TPOT {r.tpot_s * 1e3:.2f} ms measured < {bound * 1e3:.2f} ms"
            " roofline bound"
        )
    for name, fit in [(result.framework, result.fit), *result.per_version.items()]:
        print(f"overhead {name}: {fit.overhead.describe()} ({len(fit.rows)} rows)")
    print("\nin-sample (pooled fit):")
    print(_pct(error_summary(result.fit.table())))
    cv = result.cv_table()
    print("\nleave one model out (overhead fitted on the other model's rows only):")
    for model, (o, _) in result.cross_validation.items():
        print(f"  {model} held out: fitted {o.describe()}")
    print(_pct(error_summary(cv)))
    ttft = float(np.abs(cv["ttft_error"]).mean())
    tpot = float(np.abs(cv["tpot_error"]).mean())
    print(
        f"\nGOAL serving rows cross-validated: TPOT MAPE {tpot:.1%}"
        f" (goal <= {GOALS['serving_tpot_mape']:.0%}: {'met' if tpot <= 0.08 else 'MISSED'}),"
        f" TTFT MAPE {ttft:.1%} (goal <= {GOALS['serving_ttft_mape']:.0%}:"
        f" {'met' if ttft <= 0.15 else 'MISSED'})"
    )
    knees = knee_rows(cv)
    print(
        "\nKV-full knee rows (measured TTFT >= 5x the next lower concurrency's), cross-validated:"
    )
    print(knees.round(2).to_string(index=False) if not knees.empty else "  none")

    if not args.quick:
        print("\nsensitivity (pooled overhead, not refitted):")
        print(_pct(sensitivity(result.rows, result.fit.overhead)))

    e2e_csv = Path(args.shared) / "data" / "e2e" / "vllm_static_batch_h100.csv"
    fit, table = fit_overhead(default_profile("h100_sxm", "bf16"), load_e2e(e2e_csv))
    o = fit.overhead
    print(
        f"\nstatic batches (2024 vLLM, {len(table)} rows):"
        f" {o.per_iteration_s * 1e3:.3f} ms/iteration"
        f" + {o.per_iteration_tp_s * 1e3:.3f} ms/iteration on >1 GPU"
        f" + {o.per_sequence_s * 1e6:.1f} us/sequence + {o.per_kv_token_s * 1e9:.2f} ns/KV token"
    )
    print(
        f"GOAL static batches: MAPE {fit.mape:.1%} (goal <= 7%), worst {fit.worst:.1%}"
        f" (goal <= 20%); leave one model out: MAPE {fit.cv_mape:.1%}, worst {fit.cv_worst:.1%}"
    )
    for model, s in fit.cv_by_model.items():
        print(
            f"  {model} held out: MAPE {s['mape']:.1%}, signed {s['signed']:+.1%},"
            f" worst {s['worst']:.1%}"
        )
    by_length = table.groupby("length")["rel_error"].mean()
    by_batch = table.groupby("batch")["rel_error"].mean()
    print("  signed error by context:", ", ".join(f"{k}: {v:+.1%}" for k, v in by_length.items()))
    print("  signed error by batch:", ", ".join(f"{k}: {v:+.1%}" for k, v in by_batch.items()))
    if args.figure:
        print(f"\nfigure: {draw(cv, Path(args.figure))}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
