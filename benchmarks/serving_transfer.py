"""Does the serving model transfer? All real serving rows, one joint fit, cross-validated
by model and by GPU (needs ../shared).

    PYTHONPATH=. .venv/bin/python benchmarks/serving_transfer.py [--shared ../shared]
        [--variants async,sync] [--out benchmarks/results/serving_transfer]

Rows: ``shared/data/serving/vllm_serving_h100.csv`` (Qwen3-32B, vLLM 0.12; Llama-3.1-70B,
unstated 2025-10) and ``vllm_serving_silicon_more.csv`` (MiniMax-M2.5 H100 0.18 TP4+EP,
H200 0.16 TP4 and 0.18 TP8; gpt-oss-120b H100/H200 TP1-8; Kimi-K2.5 H200 TP8; rows the
simulator cannot price are listed as skipped with the reason, runs with rows below the
TPOT bound are left out, named), each replayed through ``comem bench-serve`` under its
stated assumptions (printed). For each variant of the overhead
model (below) it fits the overhead terms on all rows (joint), then leaves each model out
(LOMO: fitted on the other models' rows) and each GPU out (LOGO: H100 <-> H200), and
prints TTFT / TPOT MAPE and signed error per held-out model and GPU.

Variants (a term stays only if it lowers the cross-validated error):

- ``sync``: the previous model: CPU work added to every iteration (no asynchronous
  scheduling), fitted per iteration and per sequence, plus a per-request term;
- ``async``: vLLM's asynchronous scheduling where the row's version has it by default
  (>= 0.14): an iteration costs max(GPU, CPU) + serial; fitted CPU per iteration, per
  sequence, the serial part per iteration and per sequence, and the per-request term;
- ``async-noserial``: the same without the per-iteration serial term;
- ``async-noserialseq``: the same without the per-sequence serial term (the form before
  2026-12-07);
- ``async-jitter3ms``: ``async`` with every client waiting an exponential 3 ms before its
  next request (not in the default ``--variants``; rejected: HYPOTHESES.md);
- ``async-unstated-on``: ``async``, reading the rows whose vLLM version is unstated
  (Llama-3.1-70B, 2025-10; some gpt-oss-120b, 2025-11) as asynchronous (a test of that
  assumption; not in the default ``--variants``).

Writes ``<out>/<variant>.csv`` (every held-out prediction: what the error bars of
``bench-serve`` are built from) and ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calibration.profile import FrameworkOverhead
from calibration.serving import (
    SHARED_H100_ASSUMPTIONS,
    SILICON_ASSUMPTIONS,
    ServingRow,
    ServingSetup,
    load_serving_csv,
    load_silicon_csv,
    setup_for,
    version_schedules_async,
)
from calibration.serving_fit import SERVING_FIT_TERMS, error_summary
from sim.serving import evaluate_rows, fit_rows, physical_rows

#: processes simulating rows (results do not depend on it)
WORKERS = 2

VARIANTS: dict[str, dict[str, Any]] = {
    "sync": {
        "async": False,
        "terms": ("per_iteration_s", "per_sequence_s", "request_overhead_s"),
    },
    "async": {"async": None, "terms": SERVING_FIT_TERMS},
    "async-noserial": {
        "async": None,
        "terms": tuple(t for t in SERVING_FIT_TERMS if t != "per_iteration_serial_s"),
    },
    "async-unstated-on": {"async": "unstated-on", "terms": SERVING_FIT_TERMS},
    # every client waits an exponential 3 ms before its next request (aiperf's re-send
    # gap, estimated from its source at 1-5 ms, not measured): does desynchronizing the
    # burst transfer better once the overhead is refitted with it?
    "async-jitter3ms": {"async": None, "terms": SERVING_FIT_TERMS, "client_delay_s": 3e-3},
    # without the per-sequence work asynchronous scheduling cannot hide (the form before
    # 2026-12-07)
    "async-noserialseq": {
        "async": None,
        "terms": tuple(t for t in SERVING_FIT_TERMS if t != "per_sequence_serial_s"),
    },
}


def short(model: str) -> str:
    """A model's display name: its alias, or the config file's model part."""
    name = Path(model).name
    return name.removesuffix("_config.json").split("--")[-1].lower() if "/" in model else name


def load_rows(shared: Path) -> tuple[list[ServingRow], list[ServingSetup], list[str]]:
    """Every serving row with its setup, and the skipped ones (one line each)."""
    data = shared / "data" / "serving"
    h100 = load_serving_csv(data / "vllm_serving_h100.csv")
    setups = [setup_for(r, SHARED_H100_ASSUMPTIONS) for r in h100]
    silicon, skipped = load_silicon_csv(
        data / "vllm_serving_silicon_more.csv", shared / "data" / "model_configs"
    )
    setups += [setup_for(r, SILICON_ASSUMPTIONS) for r in silicon]
    notes = [f"{s.label}: {s.reason}" for s in skipped]
    return [*h100, *silicon], setups, notes


#: the committed fits of this benchmark (``--write-defaults`` stores the first variant's)
SUMMARY = Path("benchmarks/results/serving_transfer/summary.json")


def committed_overhead(summary: Path = SUMMARY) -> FrameworkOverhead:
    """The ``async`` variant's joint overhead fit in a ``summary.json`` this benchmark wrote:
    what the TTFT studies beside it simulate with."""
    return FrameworkOverhead.from_dict(json.loads(Path(summary).read_text())["async"]["joint"])


def keep_physical(
    rows: list[ServingRow], setups: list[ServingSetup]
) -> tuple[list[ServingRow], list[ServingSetup], list[str]]:
    """The rows a fit may use (:func:`sim.serving.physical_rows`), and a line per other."""
    kept_r, kept_s, out = physical_rows(rows, setups)
    return kept_r, kept_s, [f"{short(x.row.model)} {x.row.label}: {x.why()}" for x in out]


def _with_async(
    rows: list[ServingRow], setups: list[ServingSetup], value: bool | str | None
) -> list[ServingSetup]:
    """``setups`` with ``async_scheduling`` set to ``value`` (None: by each row's version;
    ``"unstated-on"``: by version, and on where the version is unstated)."""
    if value == "unstated-on":
        unstated = [version_schedules_async(r.vllm_version) is None for r in rows]
        return [
            replace(s, async_scheduling=True) if u else s
            for u, s in zip(unstated, setups, strict=True)
        ]
    return [replace(s, async_scheduling=value) for s in setups]


def _fold(
    rows: list[ServingRow],
    setups: list[ServingSetup],
    train: np.ndarray,
    terms: tuple[str, ...],
    start: FrameworkOverhead | None,
) -> tuple[FrameworkOverhead, pd.DataFrame]:
    """Fit on ``train``, predict the rest: (fitted overhead, held-out table)."""
    fit = fit_rows(
        [rows[i] for i in np.flatnonzero(train)],
        [setups[i] for i in np.flatnonzero(train)],
        start,
        terms,
        workers=WORKERS,
    )
    test = np.flatnonzero(~train)
    table = evaluate_rows(
        [rows[i] for i in test], [setups[i] for i in test], fit.overhead, workers=WORKERS
    )
    return fit.overhead, table.assign(row=test)


def run_variant(
    name: str, rows: list[ServingRow], setups: list[ServingSetup]
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Joint fit, LOMO and LOGO of one variant: its summary and held-out predictions."""
    spec = VARIANTS[name]
    setups = _with_async(rows, setups, spec["async"])
    if "client_delay_s" in spec:
        setups = [replace(s, client_issue_delay_s=spec["client_delay_s"]) for s in setups]
    terms = spec["terms"]
    t0 = time.perf_counter()
    joint = fit_rows(rows, setups, None, terms, workers=WORKERS)
    summary: dict[str, Any] = {"joint": joint.overhead.terms(), "folds": {}}
    models = np.array([r.model for r in rows])
    gpus = np.array([r.gpu for r in rows])
    held: list[pd.DataFrame] = []
    for kind, labels in (("model", models), ("gpu", gpus)):
        for label in sorted(set(labels)):
            train = labels != label
            if not train.any():
                continue
            # from zero, not from the joint fit: a term the training rows cannot
            # identify (the CPU terms on async, GPU-bound rows alone) must not carry
            # what the held-out rows taught the joint fit
            overhead, table = _fold(rows, setups, train, terms, None)
            table = table.assign(fold=kind, held_out=short(label), gpu=gpus[~train])
            summary["folds"][f"{kind}:{short(label)}"] = overhead.terms()
            held.append(table)
    out = pd.concat(held, ignore_index=True)
    out["model"] = [short(m) for m in out["model"]]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["joint_in_sample"] = _errors(joint.table())
    for kind in ("model", "gpu"):
        summary[f"cv_{kind}"] = _errors(out[out["fold"] == kind])
    return summary, out


def _errors(table: pd.DataFrame) -> dict[str, float]:
    return {
        "rows": int(len(table)),
        "ttft_mape": round(float(np.abs(table["ttft_error"]).mean()), 4),
        "ttft_signed": round(float(table["ttft_error"].mean()), 4),
        "tpot_mape": round(float(np.abs(table["tpot_error"]).mean()), 4),
        "tpot_signed": round(float(table["tpot_error"].mean()), 4),
    }


def _pct(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    for col in shown.columns:
        if col.endswith(("_mape", "_ape")):
            shown[col] = [f"{v:.1%}" for v in shown[col]]
        elif col.endswith("_signed"):
            shown[col] = [f"{v:+.1%}" for v in shown[col]]
    return shown.to_string(index=False)


def saturation_split(held: pd.DataFrame) -> pd.DataFrame:
    """Per fold kind, the held-out error on the rows the simulation runs with a full KV
    cache (any preemption: the knee, where TTFT moves 10x for 25% of capacity) and on
    the others, with the median absolute TTFT error beside the mean: a few knee rows
    dominate the mean (``benchmarks/results/ttft_envelopes/HYPOTHESES.md``)."""
    out = []
    for kind, part in held.groupby("fold", sort=False):
        knee = part["preemptions"] > 0
        for label, rows in (("KV full (preempting)", part[knee]), ("others", part[~knee])):
            if len(rows):
                out.append(
                    {
                        "fold": f"by {kind}", "rows": label, "n": len(rows),
                        "ttft_mape": float(rows["ttft_error"].abs().mean()),
                        "ttft_median_ape": float(rows["ttft_error"].abs().median()),
                        "tpot_mape": float(rows["tpot_error"].abs().mean()),
                    }
                )  # fmt: skip
    return pd.DataFrame(out)


def report(name: str, summary: dict[str, Any], held: pd.DataFrame) -> None:
    j = summary["joint"]
    print(f"\n== {name} ({summary['seconds']:.0f} s) ==")
    print(
        "joint fit: "
        + ", ".join(f"{k} {v * 1e3:.4g} ms" for k, v in j.items() if v)
        + f"; in-sample {summary['joint_in_sample']}"
    )
    for kind in ("model", "gpu"):
        part = held[held["fold"] == kind]
        print(f"leave one {kind} out, per held-out model and GPU:")
        print(_pct(error_summary(part, by=("held_out", "model", "gpu"))))


#: row families whose TTFT the figure draws against concurrency: (model, gpu, tp, isl, osl)
TTFT_FAMILIES = (
    ("qwen3-32b", "h100_sxm", 2, 1024, 128),
    ("qwen3-32b", "h100_sxm", 8, 4096, 1024),
    ("llama-3.1-70b", "h100_sxm", 4, 1024, 1024),
    ("minimax-m2.5", "h200_sxm", 8, 8192, 1024),
)


def scatter_panel(
    ax: Any, table: pd.DataFrame, what: str, by: list[str], bands: tuple[float, float], how: str
) -> None:
    """Simulated against measured ``what`` (``ttft`` / ``tpot``, ms) on log axes, one
    series per ``by`` group, the diagonal and the ``bands`` factors dotted, the MAPE and
    signed error in the title (shared by this script and ``serving_validation.py``)."""
    markers = "os^vD<>"
    for i, (key, g) in enumerate(table.groupby(by)):
        label = " ".join(map(str, key if isinstance(key, tuple) else (key,)))
        ax.loglog(
            g[f"{what}_ms"], g[f"pred_{what}_ms"], markers[i % len(markers)], ms=3.5, alpha=0.7,
            label=label,
        )  # fmt: skip
    lo = min(table[f"{what}_ms"].min(), table[f"pred_{what}_ms"].min())
    hi = max(table[f"{what}_ms"].max(), table[f"pred_{what}_ms"].max())
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    for f in bands:
        ax.plot([lo, hi], [lo * f, hi * f], "k:", lw=0.5)
    err = table[f"{what}_error"]
    ax.set_title(
        f"{what.upper()} {how}: MAPE {np.abs(err).mean():.1%}, signed {err.mean():+.1%}"
        f" (n={len(table)})",
        fontsize=9,
    )
    ax.set_xlabel(f"measured {what.upper()} (ms)")
    ax.set_ylabel(f"simulated {what.upper()} (ms)")
    ax.legend(fontsize=7)


def draw(held: pd.DataFrame, path: Path) -> Path:
    """Left: held-out TPOT and TTFT against measured, by model (leave one model out).
    Right: TTFT against concurrency for a few row families, simulated (held out) and
    measured: where clients are and are not reproduced."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lomo = held[held["fold"] == "model"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    for ax, what in zip(axes[:2], ("tpot", "ttft"), strict=True):
        scatter_panel(ax, lomo, what, ["model"], (0.8, 1.25), "held out by model")
    ax = axes[2]
    for i, (model, gpu, tp, isl, osl) in enumerate(TTFT_FAMILIES):
        g = lomo[
            (lomo["model"] == model) & (lomo["gpu"] == gpu) & (lomo["tp"] == tp)
            & (lomo["isl"] == isl) & (lomo["osl"] == osl)
        ].sort_values("concurrency")  # fmt: skip
        if g.empty:
            continue
        color = f"C{i}"
        label = f"{model} {gpu.split('_')[0]} TP{tp} {isl}x{osl}"
        ax.loglog(g["concurrency"], g["ttft_ms"], "o-", color=color, ms=4, label=label)
        ax.loglog(g["concurrency"], g["pred_ttft_ms"], "x--", color=color, ms=5)
    ax.set_xlabel("concurrency (clients)")
    ax.set_ylabel("mean TTFT (ms)")
    ax.set_title("TTFT vs clients: measured (o) and simulated held out (x)", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(
        "comem bench-serve vs real vLLM serving (H100, H200; vLLM 0.12-0.18), each model's rows"
        " predicted by a fit on the other models",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cv_record(held: pd.DataFrame, kind: str) -> dict[str, Any]:
    """Per held-out model (or GPU): rows, MAPE and signed error of TTFT and TPOT."""
    part = held[held["fold"] == kind]
    return {str(k): _errors(g) for k, g in part.groupby("held_out")}


def static_overhead_entry(shared: Path) -> dict[str, Any]:
    """The 2024 static batches' overhead entry (per TP collective) with its own band: the
    leave-one-model-out residuals :func:`calibration.fit.fit_overhead` computes."""
    from calibration.e2e_overhead import e2e_overhead_entry, fit_overhead, load_e2e
    from calibration.profile import Profile, profile_path
    from calibration.uncertainty import band_from_errors

    e2e = load_e2e(shared / "data" / "e2e" / "vllm_static_batch_h100.csv")
    fit, _ = fit_overhead(Profile.load(profile_path("h100_sxm", "bf16")), e2e)
    band = band_from_errors("static", fit.cv_errors, source="LOMO static batches (2024 vLLM)")
    return e2e_overhead_entry(fit, len(e2e)) | {"error_bands": {"static": band.to_dict()}}


def write_defaults(
    name: str, summary: dict[str, Any], held: pd.DataFrame, rows: list[ServingRow], shared: Path
) -> list[Path]:
    """The variant's joint fit as every embedded profile's default serving overhead, with
    its cross-validation and 80% error bands (pooled LOMO and LOGO residuals); the
    held-out predictions as ``calibration/profiles/serving_cv.json`` (``comem validate``
    checks the bands' coverage on them); the 2024 static fit's own band."""
    import datetime

    from calibration.profile import Profile, available_profiles, profile_path
    from calibration.serving_errors import SERVING_CV_PATH
    from calibration.uncertainty import band_from_errors
    from sim.serving import SERVING_FRAMEWORK

    source = (
        f"shared/data/serving/vllm_serving_h100.csv + vllm_serving_silicon_more.csv:"
        f" {len(rows)} rows ({', '.join(sorted({short(r.model) for r in rows}))})"
    )
    bands = {
        m: band_from_errors(m, held[f"{m}_error"], source=f"LOMO+LOGO held-out rows, {source}")
        for m in ("ttft", "tpot")
    }
    entry: dict[str, Any] = {k: float(f"{v:.6g}") for k, v in summary["joint"].items()}
    entry |= {
        "framework": SERVING_FRAMEWORK,
        "form": f"{name}: iteration = max(GPU, CPU) + serial with async scheduling,"
        " GPU + CPU + serial without (by each row's vLLM version); CPU and serial each per"
        " iteration and per scheduled sequence",
        "async_scheduling": True,
        "fitted_on": source,
        "assumptions": "calibration.serving.SHARED_H100_ASSUMPTIONS (H100 csv),"
        " SILICON_ASSUMPTIONS (silicon rows)",
        "command": "PYTHONPATH=. python benchmarks/serving_transfer.py --write-defaults",
        "date": datetime.date.today().isoformat(),
        "rows": len(rows),
        "ttft_mape": summary["joint_in_sample"]["ttft_mape"],
        "tpot_mape": summary["joint_in_sample"]["tpot_mape"],
        "cv_leave_one_model_out": cv_record(held, "model"),
        "cv_leave_one_gpu_out": cv_record(held, "gpu"),
        "error_bands": {m: b.to_dict() for m, b in bands.items()},
    }
    static_entry = static_overhead_entry(shared)
    written = []
    fitted_on = {(r.gpu, r.dtype) for r in rows}
    for gpu, framework, dtype in available_profiles():
        path = profile_path(gpu, dtype, framework)
        prof = Profile.load(path)
        own = dict(entry)
        if (gpu, dtype) not in fitted_on:
            # no serving rows were measured on this GPU and weight dtype: the same fit,
            # said to be borrowed (the H200's of the same kind)
            donor = "fp8" if dtype in ("fp8", "fp4") else "bf16"
            own["copied_from"] = f"h200_sxm/{donor}"
        prof.overheads[SERVING_FRAMEWORK] = own
        prof.overhead = dict(own)
        for key, old in prof.overheads.items():
            if key.startswith("vllm-0.") or key.startswith("vllm-unstated"):
                old["async_scheduling"] = False  # fitted in the sync form, per version
        if "vllm-2024" in prof.overheads:  # the 2024 static fit, per TP collective
            prof.overheads["vllm-2024"] = static_entry
        written.append(prof.save(path))
    cols = ["fold", "held_out", "model", "gpu", "tp", "concurrency", "isl", "osl"]
    cols += ["ttft_ms", "pred_ttft_ms", "tpot_ms", "pred_tpot_ms", "ttft_error", "tpot_error"]
    cols += ["preemptions"]  # the simulated run reached the KV knee
    cv_path = SERVING_CV_PATH
    payload = {
        "what": "held-out predictions of the default serving fit (benchmarks/serving_transfer.py)",
        "variant": name,
        "fitted_on": source,
        "date": entry["date"],
        "rows": held[cols].round(6).to_dict(orient="records"),
    }
    cv_path.write_text(json.dumps(payload, indent=0) + "\n")
    return [*written, cv_path]


def main(argv: list[str] | None = None) -> int:
    global WORKERS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--variants", default="async,sync,async-noserial,async-noserialseq")
    ap.add_argument("--out", default="benchmarks/results/serving_transfer")
    ap.add_argument("--workers", type=int, default=WORKERS)
    ap.add_argument("--figure", default="figures/calibration/serving_transfer.png")
    ap.add_argument(
        "--from-results",
        action="store_true",
        help="do not fit: read <out>/summary.json and <out>/<variant>.csv of an earlier run",
    )
    ap.add_argument(
        "--write-defaults", action="store_true",
        help="write the first variant's fit into the embedded profiles (and serving_cv.json)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    WORKERS = max(1, args.workers)
    rows, setups, skipped = load_rows(Path(args.shared))
    rows, setups, unphysical = keep_physical(rows, setups)
    print(
        f"{len(rows)} rows; skipped {len(skipped)} (unpriceable),"
        f" {len(unphysical)} (below the roofline, or in a run with such a row)"
    )
    reasons = pd.Series([s.split(": ", 1)[1] for s in skipped]).value_counts()
    for reason, n in reasons.items():
        print(f"  skipped {n}: {reason}")
    for line in unphysical:
        print(f"  left out: {line}")
    print("assumptions per source: H100 csv: SHARED_H100_ASSUMPTIONS; silicon: SILICON_ASSUMPTIONS")
    for r, s in sorted(
        {
            (short(r.model), r.gpu, r.vllm_version): (r, s)
            for r, s in zip(rows, setups, strict=True)
        }.items()
    ):
        print(f"  {r[0]} {r[1]} vllm {r[2] or 'unstated'}: {s[1].describe()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    if args.from_results:
        summaries = json.loads((out / "summary.json").read_text())
    else:
        for name in args.variants.split(","):
            summary, held = run_variant(name, rows, setups)
            report(name, summary, held)
            held.to_csv(out / f"{name}.csv", index=False)
            summaries[name] = summary
        (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    first = args.variants.split(",")[0]
    if args.figure:
        print(f"figure: {draw(pd.read_csv(out / f'{first}.csv'), Path(args.figure))}")
    if args.write_defaults:
        held = pd.read_csv(out / f"{first}.csv")
        for path in write_defaults(first, summaries[first], held, rows, Path(args.shared)):
            print(f"wrote {path}")
    print("\nsummary (cross-validated):")
    for name, s in summaries.items():
        print(f"  {name}: LOMO {s['cv_model']}  LOGO {s['cv_gpu']}")
    print(f"\n{first}: rows at the KV knee and the others, held out:")
    print(_pct(saturation_split(pd.read_csv(out / f"{first}.csv"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
