"""How far the latency predictions can be trusted, as tables a reader of the README sees:
the default serving fit's held-out errors per model and GPU (leave one model out, leave
one GPU out), its fitted overhead terms with what vLLM does in each, and the static-batch
fit's held-out error.

Everything is read from the embedded calibration: the held-out predictions
(``calibration/profiles/serving_cv.json``) and the profiles' overhead entries, both
written by ``benchmarks/serving_transfer.py --write-defaults``. No ``../shared`` is needed,
so a fresh clone renders the same tables (``python -m comem.docs_gen`` puts them in the
README; ``tests/docs`` checks the README is current).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from calibration.profile import PROFILE_DIR, Profile, profile_path

#: the held-out predictions of the default serving fit
SERVING_CV_PATH = PROFILE_DIR / "serving_cv.json"

#: the profile whose overhead entries the tables quote (every embedded profile carries the
#: same serving fit; the static-batch fit was made on H100 bf16)
REFERENCE_PROFILE = ("h100_sxm", "bf16")

#: What vLLM does in each overhead term: one place for the README and the reports.
OVERHEAD_TERM_MEANING: dict[str, str] = {
    "per_iteration_s": "CPU per engine step: schedule, prepare inputs, launch, process the"
    " output (with asynchronous scheduling it overlaps the GPU's previous step)",
    "per_iteration_tp_s": "CPU per step more when the model spans several GPUs",
    "per_collective_s": "per tensor-parallel collective a step launches (2024 vLLM)",
    "per_sequence_s": "CPU per scheduled sequence: its block table, input rows and sampled"
    "-token update",
    "per_kv_token_s": "per token of KV the scheduled sequences hold (2024 vLLM rebuilt block"
    " tables every step)",
    "per_iteration_serial_s": "per step, the hand-off between steps that never overlaps",
    "per_sequence_serial_s": "per scheduled sequence, critical-path work asynchronous"
    " scheduling does not hide (candidates: the sampler and per-request GPU-side bookkeeping,"
    " which no kernel table times; which one is not known)",
    "request_overhead_s": "HTTP and tokenization before the scheduler sees a request (TTFT only)",
}

#: display names of the GPUs in the tables
_GPU_NAMES = {"h100_sxm": "H100", "h200_sxm": "H200"}


def load_serving_cv(path: Path = SERVING_CV_PATH) -> pd.DataFrame:
    """The held-out rows: one per row and fold kind (``fold`` = model or gpu)."""
    return pd.DataFrame(json.loads(path.read_text())["rows"])


def _cell(errors: pd.Series) -> str:
    """``MAPE (signed mean)`` of relative errors."""
    return f"{errors.abs().mean():.1%} ({errors.mean():+.1%})"


def _error_row(label: str, gpu: str, part: pd.DataFrame) -> dict[str, Any]:
    by_model = part[part["fold"] == "model"]
    by_gpu = part[part["fold"] == "gpu"]
    row = {"model": label, "GPU": gpu, "rows": len(by_model)}
    row["TPOT, model held out"] = _cell(by_model["tpot_error"])
    row["TPOT, GPU held out"] = _cell(by_gpu["tpot_error"])
    row["TTFT, model held out"] = _cell(by_model["ttft_error"])
    row["TTFT, GPU held out"] = _cell(by_gpu["ttft_error"])
    if "preemptions" in part:
        calm = by_model[by_model["preemptions"] == 0]
        row["TTFT off the KV knee"] = _cell(calm["ttft_error"]) if len(calm) else "-"
    return row


def serving_error_table(cv: pd.DataFrame) -> str:
    """Markdown: per model and GPU, the held-out TPOT and TTFT MAPE (signed mean)."""
    out = [
        _error_row(str(model), _GPU_NAMES.get(str(gpu), str(gpu)), part)
        for (model, gpu), part in cv.groupby(["model", "gpu"], sort=True)
    ]
    out.append(_error_row("**all**", "", cv))
    return markdown_table(pd.DataFrame(out))


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table of ``frame`` (pandas' own needs the optional ``tabulate``)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(lines)


def _seconds(value: float) -> str:
    if value == 0:
        return "0 (fitted to nothing)"
    return f"{value * 1e3:.2f} ms" if value >= 1e-4 else f"{value * 1e6:.0f} us"


def overhead_terms_table(entry: dict[str, Any]) -> str:
    """Markdown: every term the serving fit uses, what vLLM does in it, its fitted value."""
    rows = [
        {"term": f"`{name}`", "what vLLM does": meaning, "fitted": _seconds(float(entry[name]))}
        for name, meaning in OVERHEAD_TERM_MEANING.items()
        if name in entry and (entry[name] or name == "request_overhead_s")
    ]
    return markdown_table(pd.DataFrame(rows))


def _band(entry: dict[str, Any], metric: str) -> str:
    band = entry["error_bands"][metric]
    return f"[{band['ratio_low']:.2f}, {band['ratio_high']:.2f}]"


def reference_serving_entry(profile: Profile | None = None) -> dict[str, Any]:
    """The serving overhead entry of ``profile`` (default: the reference profile)."""
    prof = profile if profile is not None else Profile.load(profile_path(*REFERENCE_PROFILE))
    return dict(prof.overheads["vllm-serving"])


def trust_section(profile: Profile | None = None, cv: pd.DataFrame | None = None) -> str:
    """The README's calibration section body (tables and the lines around them)."""
    prof = profile if profile is not None else Profile.load(profile_path(*REFERENCE_PROFILE))
    cv = cv if cv is not None else load_serving_cv()
    serving = reference_serving_entry(prof)
    static = prof.overheads.get("vllm-2024", {})
    knee = cv[(cv["fold"] == "model") & (cv.get("preemptions", 0) > 0)]
    models = ", ".join(sorted(cv["model"].unique()))
    gpus = " and ".join(_GPU_NAMES.get(g, g) for g in sorted(cv["gpu"].unique()))
    lines = [
        f"The serving overhead is fitted once on {serving['rows']} real vLLM serving runs"
        f" ({models}; {gpus}). Every number below is **held out**: each model's rows"
        " predicted by a fit on the other models, each GPU's by a fit on the other GPU."
        " MAPE, and in brackets the mean signed error (predicted / measured - 1: negative"
        " is predicted too low).",
        "",
        serving_error_table(cv),
        "",
    ]
    if len(knee):
        lines.append(
            f"TTFT is the weak spot: the {len(knee)} rows whose simulation fills the KV cache"
            f" (the knee, where 25% of capacity moves TTFT 10x) miss by"
            f" {knee['ttft_error'].abs().mean():.0%}; what is known about the rest is in"
            " [the latency model](docs/explanation/latency-model.md)."
        )
        lines.append("")
    lines += [
        f"80% of held-out rows have predicted / measured within {_band(serving, 'tpot')} for"
        f" TPOT and {_band(serving, 'ttft')} for TTFT: the `*_low` / `*_high` columns of"
        " `--json` outputs. What vLLM adds to the kernels (`comem calibrate fit-serving`"
        " refits it):",
        "",
        overhead_terms_table(serving),
    ]
    cv_static = static.get("cv_leave_one_model_out")
    if cv_static:
        per = ", ".join(
            f"{m} {v['mape']:.1%} ({v['signed']:+.1%})" for m, v in cv_static["by_model"].items()
        )
        lines += [
            "",
            f"Static batches (`predict-static`, {static['e2e_rows']} runs of 2024 vLLM on H100):"
            f" {static['e2e_mape']:.1%} fitted, {cv_static['mape']:.1%} with each model held"
            f" out ({per}).",
        ]
    return "\n".join(lines)
