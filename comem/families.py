"""``comem families``: does decoupled memory still pay when the context is cheap to keep?

Per attention family (one representative model each, as vLLM serves it) and GPU, the KV bytes
one more token of context costs, and the concurrency at which CoMem (the authors'
k-step-off, R = 3) starts to beat full context on the authors' synthetic benchmark
(``scenarios/authors_synthetic.toml``: 64 steps, 500-token problem, 200-token observations,
1024 forced output tokens, 2048-token summaries, 65536-token context), and CoMem's speedup
at 4x that concurrency. The speedup is the authors' per-step ``llm_exec_time`` ratio (FC's
over CoMem's, over the steps both ran: :mod:`sim.compare` ``llm``). The memory model is
Qwen3-4B bf16 on two extra GPUs of the same kind (TP2), as in the DeepSWE deployment.
"""

from __future__ import annotations

import csv
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
#: concurrent agents tried, doubling
AGENTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "authors_synthetic.toml"


@dataclass
class FamilyRow:
    family: str
    gpu: str
    model: str
    tp: int
    dtype: str
    kv_bytes_per_token: int
    kv_capacity_tokens: int
    crossover_agents: int | None
    speedup_at_crossover: float | None
    speedup_at_4x: float | None
    refused: str = ""


def _speedup(model: str, gpu: str, tp: int, dtype: str, agents: int) -> float | None:
    """CoMem's ``llm`` speedup over FC at ``agents`` concurrent agents."""
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
    value = summary["comparison"]["metrics"]["llm"]["speedup"].get("CoMem")
    return None if value is None else float(value)


def family_row(family: str, gpu: str, agents: tuple[int, ...] = AGENTS) -> FamilyRow:
    """One family on one GPU: KV bytes, capacity, crossover and the speedup at 4x it."""
    from calibration.latency import LatencyModel
    from calibration.registry import get_model

    model, tp, dtype = FAMILY_MODELS[family]
    row = FamilyRow(family, gpu, model, tp, dtype, 0, 0, None, None, None)
    try:
        lm = LatencyModel(get_model(model), gpu, tp, dtype)
    except ComemInputError as exc:
        row.refused = str(exc)
        return row
    row.kv_bytes_per_token = lm.kv_bytes_per_token * tp
    row.kv_capacity_tokens = lm.kv_capacity_tokens()
    speedups: dict[int, float | None] = {}
    for n in agents:
        speedups[n] = _speedup(model, gpu, tp, dtype, n)
        if row.crossover_agents is None and (speedups[n] or 0.0) > 1.0:
            row.crossover_agents, row.speedup_at_crossover = n, speedups[n]
            four = 4 * n
            row.speedup_at_4x = _speedup(model, gpu, tp, dtype, four)
            break
    return row


def run_families(gpus: list[str], out: Path, agents: tuple[int, ...] = AGENTS) -> list[Path]:
    """Every family on every GPU of ``gpus``: ``families.csv`` and ``families.png``."""
    rows = [family_row(f, g, agents) for g in gpus for f in FAMILY_MODELS]
    out.mkdir(parents=True, exist_ok=True)
    table = out / "families.csv"
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
    return [table, _plot(rows, out / "families.png")]


def _plot(rows: list[FamilyRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"h200_sxm": "o", "b200_sxm": "s"}
    for r in rows:
        if r.refused or r.crossover_agents is None:
            continue
        ax.scatter(r.kv_bytes_per_token / 1024, r.crossover_agents, marker=markers.get(r.gpu, "x"))
        ax.annotate(f"{r.family} ({r.gpu.split('_')[0]})", (r.kv_bytes_per_token / 1024,
                    r.crossover_agents), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("KV bytes per token of context, whole model (KiB)")
    ax.set_ylabel("agents at which CoMem beats FC (llm time)")
    ax.set_title("Cheaper context, later crossover (authors' synthetic benchmark)")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table lines of ``families.csv`` rows."""
    lines = [
        "| family | GPU | model (TP, dtype) | KV B/token | crossover agents | speedup there"
        " | speedup at 4x |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["refused"]:
            lines.append(f"| {r['family']} | {r['gpu']} | {r['model']} | refused: {r['refused']} |")
            continue
        lines.append(
            f"| {r['family']} | {r['gpu']} | {r['model']} ({r['tp']}, {r['dtype']}) |"
            f" {r['kv_bytes_per_token']} | {r['crossover_agents'] or '-'} |"
            f" {r['speedup_at_crossover'] or '-'} | {r['speedup_at_4x'] or '-'} |"
        )
    return lines
