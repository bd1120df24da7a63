"""The calibration report: per-op fit error, surrogate error, end-to-end error, plots.

Per-op errors are stored in the profile at fit time, so the report works on a fresh
clone; with kernel tables or the end-to-end CSV at hand (``--kernels``/``--e2e``, or a
``shared/`` checkout found beside the project) it recomputes them and draws the
predicted-vs-measured plots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calibration import opmodels as om
from calibration.errors import ComemInputError, KernelDataError
from calibration.kernels import load_kernel_tables
from calibration.latency import LatencyModel
from calibration.profile import FP8_KV_SUFFIX, Profile, default_profile, op_form
from calibration.registry import get_gpu, get_model
from calibration.surrogate import fit_surrogate

REPO_ROOT = Path(__file__).resolve().parent.parent

#: (model, tp) whose linear surrogate the report scores, per dtype.
SURROGATE_SETUPS = {
    "bf16": (("qwen3-4b", 1), ("llama-3-8b", 1), ("qwen3-32b", 2), ("llama-3-70b", 4)),
    "fp8": (
        ("qwen3-4b", 1),
        ("qwen3-32b", 1),
        ("glm-4.7", 4),
        ("glm-4.7", 8),
        ("qwen3-coder-480b", 8),
    ),
}


def find_shared() -> Path | None:
    """``$COMEM_SHARED`` if set, else a ``shared/`` directory beside the project checkout."""
    env = os.environ.get("COMEM_SHARED")
    # An explicit $COMEM_SHARED wins, also when it points nowhere (that means: none).
    candidate = Path(env) if env is not None else REPO_ROOT.parent / "shared"
    return candidate if (candidate / "data").is_dir() else None


@dataclass
class CalibrationReport:
    gpu: str
    dtype: str
    ops: list[dict[str, Any]] = field(default_factory=list)
    surrogates: list[dict[str, Any]] = field(default_factory=list)
    e2e: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "dtype": self.dtype,
            "ops": self.ops,
            "surrogates": self.surrogates,
            "e2e": self.e2e,
            "figures": self.figures,
            "notes": self.notes,
        }


def _op_rows(profile: Profile) -> list[dict[str, Any]]:
    rows = []
    for key, fit in sorted(profile.ops.items()):
        stats = fit.stats
        final = stats.get("with_lattice", stats.get("roofline_only", {}))
        rows.append(
            {
                "op": key,
                "rows": final.get("rows"),
                "roofline_mape": stats.get("roofline_only", {}).get("mape"),
                "mape": final.get("mape"),
                "p90": final.get("p90"),
                "max": final.get("max"),
                "fitted_on": stats.get("fitted_on", "own table"),
            }
        )
        # the MoE's expert-parallel rows apart: one row per moe_ep_size (1: TP or one GPU)
        for ep, ep_stats in sorted(stats.get("with_lattice_by_ep", {}).items()):
            rows.append(
                {
                    "op": f"{key} ep={ep}",
                    "rows": ep_stats.get("rows"),
                    "roofline_mape": None,
                    "mape": ep_stats.get("mape"),
                    "p90": ep_stats.get("p90"),
                    "max": ep_stats.get("max"),
                    "fitted_on": stats.get("fitted_on", "own table"),
                }
            )
    return rows


def _form(key: str) -> om.OpForm:
    return op_form(key)


def _kernel_selections(
    profile: Profile, kernel_dir: Path
) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """The measured rows each of the profile's ops was fitted on, from ``kernel_dir``."""
    tables = load_kernel_tables(kernel_dir)
    selections = {
        "gemm": om.gemm_rows(tables.gemm, profile.dtype),
        "gemm_bf16": om.gemm_rows(tables.gemm, "bf16"),
        "moe": om.moe_rows(tables.moe, profile.dtype),
        "context_attention": om.context_rows(tables.context_attention),
        "generation_attention": om.generation_rows(tables.generation_attention),
        "context_attention" + FP8_KV_SUFFIX: om.context_rows(tables.context_attention, "fp8"),
        "generation_attention" + FP8_KV_SUFFIX: om.generation_rows(
            tables.generation_attention, "fp8"
        ),
    }
    if profile.dtype == "fp8":
        selections["gemm_fp8_tensor"] = om.gemm_rows(
            tables.gemm, "fp8", kernel=om.FP8_TENSOR_KERNEL
        )
    for n in (2, 4, 8):
        selections[f"allreduce_{n}"] = om.allreduce_rows(tables.allreduce, n)
    return selections


def _kernel_scatter(
    profile: Profile,
    selections: dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
    out: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("gemm", "moe", "context_attention", "generation_attention", "allreduce_8")
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4))
    for ax, key in zip(axes, shown, strict=True):
        feats, measured = selections[key]
        pred = om.predict(_form(key), profile.op(key), feats)
        small = len(measured) < 200
        ax.loglog(
            measured * 1e6,
            pred * 1e6,
            "o" if small else ".",
            ms=4 if small else 2,
            alpha=0.8 if small else 0.4,
        )
        lo, hi = measured.min() * 1e6, measured.max() * 1e6
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        title = f"{key}\nMAPE {om.mape(pred, measured):.1%} (n={len(measured)})"
        if "fitted_on" in profile.op(key).stats:
            title += "\nmodel fitted on another GPU's table"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("measured latency (µs)")
        ax.set_ylabel("predicted latency (µs)")
    fig.suptitle(
        f"Per-op fit vs vLLM 0.19.0 kernel tables, {profile.gpu} {profile.dtype} "
        f"(profile {profile.framework})",
        fontsize=10,
    )
    fig.tight_layout()
    return _save_figure(fig, out / f"ops_{profile.gpu}_{profile.dtype}.png")


def _e2e_plot(table: pd.DataFrame, out: Path, gpu: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for (model, tp), group in table.groupby(["model", "tp"]):
        ax.loglog(group["latency_s"], group["predicted_s"], "o", ms=4, label=f"{model} TP{tp}")
    lo, hi = table["latency_s"].min(), table["latency_s"].max()
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("measured static-batch latency (s)")
    ax.set_ylabel("predicted latency (s)")
    mape = float(np.abs(table["rel_error"]).mean())
    ax.set_title(
        f"End-to-end: predicted vs vLLM (2024) on H100, MAPE {mape:.1%}\n"
        f"profile {gpu}/bf16 vllm-0.19.0 kernels + fitted overhead",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, out / "e2e_static_batch_h100.png")


def _save_figure(fig: Any, path: Path) -> Path:
    """Write a report figure whole, over no file of the user's (only one this tool drew)."""
    import matplotlib.pyplot as plt

    from calibration.outputs import refuse_foreign_figure, write_atomic

    try:
        refuse_foreign_figure(path, "--figures")
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110), "report figure")
    finally:
        plt.close(fig)
    return path


def build_report(
    gpu: str = "h100_sxm",
    dtype: str = "bf16",
    kernels: str | Path | None = None,
    e2e_csv: str | Path | None = None,
    figures_dir: str | Path | None = None,
    profile: Profile | None = None,
) -> CalibrationReport:
    """Assemble the report; recompute and plot what the available data allows."""
    prof = _report_profile(profile, gpu, dtype)
    if kernels is not None:  # fail on a missing or bad table before the slow parts
        _check_kernel_dir(kernels)
    report = CalibrationReport(prof.gpu, prof.dtype)
    report.ops = _op_rows(prof)
    report.notes.extend(prof.provenance.get("notes", []))
    shared = find_shared()
    if kernels is None and shared is not None:
        candidate = shared / "data" / "kernels" / prof.gpu / "vllm-0.19.0"
        kernels = candidate if candidate.is_dir() else None
    if e2e_csv is None and shared is not None and prof.gpu == "h100_sxm":
        candidate = shared / "data" / "e2e" / "vllm_static_batch_h100.csv"
        e2e_csv = candidate if candidate.is_file() else None
    out = Path(figures_dir) if figures_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    _add_surrogates(report, prof)
    _add_e2e(report, prof, e2e_csv, out)
    if kernels is not None:
        _recompute_op_errors(report, prof, kernels, out)
    return report


def _report_profile(profile: Profile | None, gpu: str, dtype: str) -> Profile:
    """The profile to report on (``profile``, else the embedded one of ``gpu``/``dtype``),
    refused when its GPU is unknown: the report prices models on it."""
    prof = profile if profile is not None else default_profile(gpu, dtype)
    try:
        get_gpu(prof.gpu)
    except ComemInputError:
        where = f"{prof.source}: " if prof.source else ""
        raise ComemInputError(
            f"{where}the profile is for gpu '{prof.gpu}', which is neither a known GPU"
            " ('comem list gpus') nor a device JSON file; the report needs its specs"
        ) from None
    return prof


def _check_kernel_dir(kernels: str | Path) -> None:
    """One line when ``kernels`` is no directory or lacks a kernel table."""
    if not Path(kernels).is_dir():
        raise KernelDataError(f"{kernels}: kernel directory does not exist")
    from calibration.kernels import KERNEL_FILES

    for fname, _ in KERNEL_FILES.values():
        if not (Path(kernels) / fname).is_file():
            raise KernelDataError(f"{Path(kernels) / fname}: kernel file is missing")


def _add_surrogates(report: CalibrationReport, prof: Profile) -> None:
    """The linear surrogate's fit on each of the dtype's reference setups."""
    for model, tp in SURROGATE_SETUPS[prof.dtype]:
        try:
            lm = LatencyModel(get_model(model), prof.gpu, tp, prof.dtype, profile=prof)
        except ComemInputError as exc:
            report.notes.append(f"surrogate {model} TP{tp}: skipped ({exc})")
            continue
        s = fit_surrogate(lm)
        report.surrogates.append(
            {
                "model": model,
                "tp": tp,
                "mape": round(s.mape, 4),
                "p90": round(s.p90_rel_error, 4),
                "max": round(s.max_rel_error, 4),
                "coefficients": [float(f"{c:.4g}") for c in s.coefficients],
            }
        )


def _add_e2e(
    report: CalibrationReport, prof: Profile, e2e_csv: str | Path | None, out: Path | None
) -> None:
    """The static-batch end-to-end error: recomputed from ``e2e_csv`` (bf16 profiles),
    else as the profile stored it."""
    from calibration.e2e_overhead import E2E_FRAMEWORK, e2e_costs, e2e_errors, load_e2e

    # the static batches are a 2024 vLLM: priced with that framework's fitted overhead
    stored = prof.overheads.get(E2E_FRAMEWORK, prof.overhead)
    framework = E2E_FRAMEWORK if E2E_FRAMEWORK in prof.overheads else None
    if e2e_csv is not None and prof.dtype == "bf16":
        costs = e2e_costs(prof, load_e2e(e2e_csv), prof.gpu)
        table = e2e_errors(costs, prof.framework_overhead(framework))
        rel = np.abs(table["rel_error"].to_numpy())
        report.e2e = {
            "source": str(e2e_csv),
            "framework": framework or "default",
            "rows": int(len(table)),
            "mape": round(float(rel.mean()), 4),
            "worst": round(float(rel.max()), 4),
            "recomputed": True,
        }
        if "cv_leave_one_model_out" in stored:
            report.e2e["cv_leave_one_model_out"] = stored["cv_leave_one_model_out"]
        if out is not None:
            report.figures.append(str(_e2e_plot(table, out, prof.gpu)))
    elif "e2e_mape" in stored:
        report.e2e = {
            "source": stored.get("fitted_on", ""),
            "framework": framework or "default",
            "mape": stored["e2e_mape"],
            "worst": stored.get("e2e_worst"),
            "rows": stored.get("e2e_rows"),
            "recomputed": False,
        }
        if "cv_leave_one_model_out" in stored:
            report.e2e["cv_leave_one_model_out"] = stored["cv_leave_one_model_out"]


def _recompute_op_errors(
    report: CalibrationReport, prof: Profile, kernels: str | Path, out: Path | None
) -> None:
    """Each op fitted on its own table: its error recomputed on ``kernels``' rows."""
    selections = _kernel_selections(prof, Path(kernels))
    for row in report.ops:
        op, _, ep = row["op"].partition(" ep=")
        if op in selections and row["fitted_on"] == "own table":
            feats, measured = selections[op]
            if ep:
                keep = feats["ep"] == float(ep)
                feats = {k: v[keep] for k, v in feats.items()}
                measured = measured[keep]
            pred = om.predict(_form(op), prof.op(op), feats)
            row.update(om.error_stats(pred, measured))
            row["recomputed_on"] = str(kernels)
    if out is not None:
        report.figures.append(str(_kernel_scatter(prof, selections, out)))


def render_text(report: CalibrationReport) -> str:
    """Plain-text tables (rich renders them in the terminal)."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    buf = StringIO()
    console = Console(file=buf, width=110, force_terminal=False)
    t = Table(title=f"Per-op fit vs kernel tables: {report.gpu} {report.dtype} (vLLM 0.19.0)")
    for col in ("op", "rows", "roofline MAPE", "MAPE", "p90", "max", "fitted on"):
        t.add_column(col, justify="right" if col not in ("op", "fitted on") else "left")
    for r in report.ops:
        t.add_row(
            r["op"],
            str(r["rows"]),
            "-" if r["roofline_mape"] is None else f"{r['roofline_mape']:.1%}",
            f"{r['mape']:.1%}",
            f"{r['p90']:.1%}",
            f"{r['max']:.0%}",
            Path(str(r["fitted_on"])).parts[-2] if "/" in str(r["fitted_on"]) else r["fitted_on"],
        )
    console.print(t)
    s = Table(title="Linear surrogate vs composed model (held-out batches)")
    for col in (
        "model",
        "TP",
        "MAPE",
        "p90",
        "max",
        "c0 [s]",
        "c1 [s/tok]",
        "c2 [s/pair]",
        "c3 [s/seq]",
        "c4 [s/KV]",
    ):
        s.add_column(col)
    for r in report.surrogates:
        s.add_row(
            r["model"],
            str(r["tp"]),
            f"{r['mape']:.1%}",
            f"{r['p90']:.1%}",
            f"{r['max']:.0%}",
            *(f"{c:.3g}" for c in r["coefficients"]),
        )
    console.print(s)
    if report.e2e:
        e = report.e2e
        how = "recomputed" if e.get("recomputed") else "stored in profile"
        console.print(
            f"End-to-end static batch vs vLLM (2024) on H100: MAPE {e['mape']:.1%}, "
            f"worst {e['worst']:.1%} ({how}; {e.get('rows')} rows)"
        )
        cv = e.get("cv_leave_one_model_out")
        if cv:
            per = ", ".join(
                f"{m} {v['mape']:.1%} (signed {v['signed']:+.1%}, worst {v['worst']:.1%})"
                for m, v in cv["by_model"].items()
            )
            console.print(
                f"  leave-one-model-out (overhead fitted on the other model): MAPE"
                f" {cv['mape']:.1%}, worst {cv['worst']:.1%}; {per}"
            )
    for note in report.notes:
        console.print(f"note: {note}")
    for fig in report.figures:
        console.print(f"figure: {fig}")
    return buf.getvalue()
