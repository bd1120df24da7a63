"""``comem families``: does decoupled memory still pay when the context is cheap to keep?

Per attention family (one representative model each, as vLLM serves it) and GPU, the KV bytes
one more token of context costs, and the concurrency at which CoMem (the authors'
k-step-off, R = 3) starts to beat full context on the authors' synthetic benchmark
(``scenarios/authors_synthetic.toml``: 64 steps, 500-token problem, 200-token observations,
1024 forced output tokens, 2048-token summaries, 65536-token context), and CoMem's speedup
at 4x that concurrency. The speedup is the ratio of the authors' per-step
``total_step_time`` (FC's over CoMem's ``max(llm, summary + prefill) + env``, over the steps
both ran: :mod:`sim.compare` ``total``): CoMem pays for waiting on its summaries there; the
``llm`` ratio (agent request time alone) is recorded beside it. The memory model is
Qwen3-4B bf16 on two extra GPUs of the same kind (TP2), as in the DeepSWE deployment.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError

#: family -> (registry model, TP, weight dtype as its checkpoint ships where priced)
FAMILY_MODELS: dict[str, tuple[str, int, str]] = {
    "GQA dense": ("qwen3-32b", 2, "bf16"),
    "GQA MoE": ("qwen3-235b-a22b", 4, "fp8"),
    "MLA": ("deepseek-v3", 8, "fp8"),
    "DSA": ("deepseek-v3.2", 8, "fp8"),
    "hybrid GDN": ("qwen3.5-397b-a17b", 8, "bf16"),
    "sliding": ("gpt-oss-120b", 1, "mxfp4"),
}
#: concurrent agents tried, each 4x the last (so "4x the crossover" is the next point)
AGENTS = (1, 4, 16, 64, 256)
#: a speedup that counts as CoMem paying (the crossover proper is 1.0)
PAYS = 1.25
SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "authors_synthetic.toml"


@dataclass
class FamilyRow:
    family: str
    gpu: str
    model: str
    tp: int
    dtype: str
    kv_bytes_per_token: int
    kv_bytes_per_token_per_gpu: int
    kv_capacity_tokens: int
    crossover_agents: int | None
    speedup_at_crossover: float | None
    speedup_at_4x: float | None
    llm_speedup_at_4x: float | None
    pays_agents: int | None = None
    speedups: str = ""
    #: full-context tasks finished / run, by agents: the benchmark's 64 steps pass FC's
    #: 65536-token context, so its tasks end early and the speedups compare the steps
    #: both architectures ran
    fc_finished: str = ""
    refused: str = ""


def _speedup(model: str, gpu: str, tp: int, dtype: str, agents: int) -> dict[str, Any]:
    """CoMem's ``total`` and ``llm`` speedups over FC at ``agents`` concurrent agents, and
    how many of FC's tasks finished (``fc_finished``)."""
    from calibration.inputs import read_toml
    from sim.scenario import run_scenario, scenario_from

    data = read_toml(SCENARIO, "scenario")
    data["workload"]["agents"] = agents
    agent = {"name": "agent", "model": model, "gpu": gpu, "tp": tp, "dtype": dtype}
    agent["max_model_len"] = 65536
    memory = {"name": "memory", "model": "qwen3-4b", "gpu": gpu, "tp": 2}
    memory["max_model_len"] = 131072
    for arch in data["architectures"]:
        arch["agent"] = dict(agent)
        if "memory" in arch:
            arch["memory"] = memory
    summary = run_scenario(scenario_from(data, [], SCENARIO.name)).summary()
    metrics = summary["comparison"]["metrics"]
    out: dict[str, Any] = {}
    for metric in ("total", "llm"):
        value = metrics[metric]["speedup"].get("CoMem")
        out[metric] = None if value is None else round(float(value), 3)
    fc = summary["architectures"]["FC"]
    out["fc_finished"] = f"{fc['tasks_finished']}/{fc.get('tasks', agents)}"
    return out


def family_row(
    family: str, gpu: str, agents: tuple[int, ...] = AGENTS, done: Callable[[], None] | None = None
) -> FamilyRow:
    """One family on one GPU: KV bytes, capacity, crossover and the speedup at 4x it."""
    from calibration.kv_layout import kv_layout
    from calibration.latency import LatencyModel
    from calibration.registry import get_model

    model, tp, dtype = FAMILY_MODELS[family]
    row = FamilyRow(family, gpu, model, tp, dtype, 0, 0, 0, None, None, None, None)
    try:
        lm = LatencyModel(get_model(model), gpu, tp, dtype)
    except ComemInputError as exc:
        row.refused = str(exc)
        if done is not None:
            for _ in agents:
                done()
        return row
    cache_bytes = 1 if lm.kv_cache_dtype == "fp8" else 2
    row.kv_bytes_per_token = round(kv_layout(lm.model, 1, cache_bytes).bytes_per_token)
    row.kv_bytes_per_token_per_gpu = lm.kv_bytes_per_token
    row.kv_capacity_tokens = lm.kv_capacity_tokens()
    runs = {}
    for n in agents:
        runs[n] = _speedup(model, gpu, tp, dtype, n)
        if done is not None:
            done()
    row.speedups = "; ".join(f"{n}: {r['total']} ({r['llm']})" for n, r in runs.items())
    row.fc_finished = "; ".join(f"{n}: {r['fc_finished']}" for n, r in runs.items())
    beats = [n for n, r in runs.items() if (r["total"] or 0.0) > 1.0]
    pays = [n for n, r in runs.items() if (r["total"] or 0.0) >= PAYS]
    row.pays_agents = pays[0] if pays else None
    if beats:
        n = beats[0]
        row.crossover_agents, row.speedup_at_crossover = n, runs[n]["total"]
        if 4 * n in runs:
            row.speedup_at_4x, row.llm_speedup_at_4x = runs[4 * n]["total"], runs[4 * n]["llm"]
    return row


#: what every row of the table shares, said beside it (the docs say it too)
CAVEATS = (
    "the authors' synthetic benchmark: 64 steps of 1024 decoded + 200 observed tokens pass"
    " FC's 65,536-token max_model_len, so FC's tasks end early (fc_finished) and the speedups"
    " compare the steps both architectures ran",
    "CoMem has 2 more GPUs than FC (its memory model, Qwen3-4B TP2, on GPUs of its own)",
    "the speedup is the authors' total step time (max(llm, summary + prefill) + env), not"
    " the mean step latency that run, plan and sweep rank by: run one point with"
    " `comem run scenarios/authors_synthetic.toml --metric total` and --set to compare",
)


def run_families(
    gpus: list[str], out: Path, agents: tuple[int, ...] = AGENTS, show_progress: bool = False
) -> list[Path]:
    """Every family on every GPU of ``gpus``: ``families.csv`` and ``families.png``, written
    as one result (:func:`calibration.outputs.write_result`: a user's file is not replaced,
    a killed write leaves no table beside another run's figure)."""
    from calibration.outputs import write_result
    from sim.progress import progress

    total = len(gpus) * len(FAMILY_MODELS) * len(agents)
    with progress("families", "runs (family x GPU x agents)", total, show_progress) as done:
        rows = [family_row(f, g, agents, done) for g in gpus for f in FAMILY_MODELS]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0])))
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    text = buffer.getvalue()
    writers = {
        "families.csv": lambda p: p.write_text(text),  # written last all the same
        "families.png": lambda p: _plot(rows, p),
    }
    return write_result(out, writers, "families.csv", "families")


def _curve(row: FamilyRow) -> tuple[list[int], list[float]]:
    """(agents, total speedups) of a row's ``speedups`` text."""
    agents, speedups = [], []
    for item in row.speedups.split("; ") if row.speedups else []:
        n, rest = item.split(": ")
        value = rest.split(" ")[0]
        if value != "None":
            agents.append(int(n))
            speedups.append(float(value))
    return agents, speedups


def _plot(rows: list[FamilyRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpus = list(dict.fromkeys(r.gpu for r in rows))
    fig, axes = plt.subplots(1, len(gpus), figsize=(5.5 * len(gpus), 4.2), squeeze=False)
    for ax, gpu in zip(axes[0], gpus, strict=True):
        for r in rows:
            if r.gpu != gpu or r.refused:
                continue
            agents, speedups = _curve(r)
            label = f"{r.family}: {r.kv_bytes_per_token / 1024:.0f} KiB/token"
            ax.plot(agents, speedups, marker="o", label=label)
        ax.axhline(1.0, color="k", lw=0.7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent agents")
        ax.set_ylabel("CoMem speedup over FC (authors' total step time)")
        ax.set_title(f"{gpu}: authors' synthetic benchmark")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
