"""``comem paper``: the CoMem authors' experiments as they ran them, one table.

Every scenario file in ``scenarios/paper/`` is one documented experiment, or one
candidate assumption where the authors' code is silent (each file's ``[paper]`` table
names the experiment, the variant and the assumption, and its header cites
``AUTHORS_SETUP.md``). :func:`run_paper` runs them all (in parallel processes; the
result does not depend on how many) and collects, per experiment x variant x CoMem
architecture, its speedup over full context under each metric of :mod:`sim.compare`
(the authors report several and do not say which their figures show), with the KV
saturation and preemptions that explain it.

:func:`sensitivity` varies one assumption at a time around one experiment and reports
how far each moves the speedup.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from sim.workers import process_pool

PAPER_DIR = Path(__file__).resolve().parent.parent / "scenarios" / "paper"
#: the default experiment, the one story `make run`, `comem run` without a file, `comem
#: plan` without a workload and `comem paper` (its first row) all tell: the CoMem
#: authors' synthetic latency benchmark for GLM-4.7 as AUTHORS_SETUP.md documents it
#: (16 agents, 64 steps, FC TP8+EP bf16 on 8 H200s vs CoMem with the agent TP4+EP fp8
#: on GPUs 0-3 and the memory model Qwen3-4B TP4 on GPUs 4-7)
DEFAULT_SCENARIO = PAPER_DIR / "glm47_synthetic_benchmark__agent_dedicated_tp4.toml"
#: the metrics of the table, in its column order (sim.compare.METRICS names)
PAPER_METRICS = ("step", "llm", "total", "llm-index-peak", "task", "makespan")


#: the effectiveness fields a row copies from its architecture's summary
RESOLVE_KEYS = (
    "resolve_rate",
    "resolve_rate_low",
    "resolve_rate_high",
    "resolve_rate_delta_pp",
    "resolve_rate_delta_pp_low",
    "resolve_rate_delta_pp_high",
)


@dataclass
class PaperRow:
    """One CoMem architecture of one experiment variant against its full-context run."""

    experiment: str
    variant: str
    assumption: str
    file: str
    architecture: str
    reference: str
    speedup: dict[str, float | None]
    kv_peak_reference: float
    kv_peak: float
    preemptions_reference: int
    preemptions: int
    tasks: int
    ended_early: dict[str, int] = field(default_factory=dict)
    ended_early_reference: dict[str, int] = field(default_factory=dict)
    #: the fitted effectiveness model's resolve rates (sim.effectiveness), with 95%
    #: intervals, and the change against the reference in percentage points
    resolve_rate_reference: float = math.nan
    resolve_rate: float = math.nan
    resolve_rate_low: float = math.nan
    resolve_rate_high: float = math.nan
    resolve_rate_delta_pp: float = math.nan
    resolve_rate_delta_pp_low: float = math.nan
    resolve_rate_delta_pp_high: float = math.nan
    #: what the row ran (sim.describe): full context's deployment, CoMem's (policy and
    #: deployment), the workload
    deployment_reference: str = ""
    deployment: str = ""
    workload: str = ""
    #: the default experiment (DEFAULT_SCENARIO)
    default: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paper_files(directory: str | Path | None = None) -> list[Path]:
    d = Path(directory) if directory is not None else PAPER_DIR
    if not d.is_dir():
        raise ComemInputError(f"{d}: no such directory of paper scenarios")
    files = sorted(d.glob("*.toml"))
    if not files:
        raise ComemInputError(f"{d}: no scenario (*.toml) files")
    # the default experiment first: the table's first row is the default story
    return sorted(files, key=lambda f: f.resolve() != DEFAULT_SCENARIO.resolve())


#: one scenario run: its file and its --set overrides
Job = tuple[str, tuple[str, ...]]


def _architecture_key(path: str, scenario: Any, index: int) -> str:
    """What one architecture's simulation depends on: equal keys, equal results (the
    workload and its seed, the engine defaults, the architecture, the file's folder for
    relative trace paths), so a run shared by several scenarios is simulated once."""
    data = {
        "dir": str(Path(path).resolve().parent),
        "seed": scenario.seed,
        "engine": scenario.engine.model_dump(mode="json"),
        "workload": scenario.workload.model_dump(mode="json"),
        "architecture": scenario.architectures[index].model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _cost(scenario: Any, index: int) -> int:
    """A rough relative cost of one architecture's simulation (the longest go first)."""
    from sim.scenario import agent_steps

    steps = agent_steps(scenario)[0] // len(scenario.architectures)
    return steps * (2 if scenario.architectures[index].memory is not None else 1)


def _run_architecture(path: str, sets: tuple[str, ...], index: int) -> Any:
    """Simulate architecture ``index`` of one scenario (in a worker process) on the
    scenario's sampled tasks, as :func:`sim.scenario.run_scenario` does."""
    import numpy as np

    from sim.scenario import check_iterations, load_scenario, run_architecture

    scenario = load_scenario(path, list(sets))
    tasks = scenario.workload.tasks(np.random.default_rng(scenario.seed))
    check_iterations(scenario, tasks)
    return run_architecture(scenario, scenario.architectures[index], tasks)


def _rows(path: str, scenario: Any, results: list[Any]) -> list[dict[str, Any]]:
    """The table rows of one scenario from its architectures' results."""
    from sim.describe import deployment, policy, workload
    from sim.scenario import ScenarioResult

    # the scenario's summary: each architecture's figures and its resolve rate, and
    # the speedups (sim.compare.compare, computed once)
    summary = ScenarioResult(scenario, results).summary()
    comparison = summary["comparison"]
    summaries = summary["architectures"]
    ref = comparison["reference"]
    info = scenario.paper
    rows = []
    ref_config = next((r.config for r in results if r.config.name == ref), None)
    for r in results:
        if r.config.kind == "fc" or ref is None or ref_config is None:
            continue
        own, base = summaries[r.config.name], summaries[ref]
        rows.append(
            PaperRow(
                experiment=info.experiment if info else scenario.name,
                variant=info.variant if info else "",
                assumption=info.assumption if info else "",
                file=Path(path).name,
                architecture=r.config.name,
                reference=ref,
                speedup={
                    m: comparison["metrics"][m]["speedup"].get(r.config.name) for m in PAPER_METRICS
                },
                kv_peak_reference=base["kv_peak_fraction"],
                kv_peak=own["kv_peak_fraction"],
                preemptions_reference=base["preemptions"],
                preemptions=own["preemptions"],
                tasks=own["tasks"],
                ended_early=own["ended_early"],
                ended_early_reference=base["ended_early"],
                resolve_rate_reference=base["resolve_rate"],
                **{k: own[k] for k in RESOLVE_KEYS},
                deployment_reference=deployment(ref_config),
                deployment=f"{policy(r.config)}; {deployment(r.config)}",
                workload=workload(scenario.workload),
                default=Path(path).resolve() == DEFAULT_SCENARIO.resolve(),
            ).to_dict()
        )
    return rows


def run_jobs(
    jobs: list[Job],
    workers: int = 1,
    on_done: Callable[[], None] | None = None,
) -> list[list[dict[str, Any]]]:
    """Run scenario jobs and return each one's rows, in order of ``jobs``, equal whatever
    the number of workers. Each architecture is one task (the costliest first), and an
    architecture that several jobs run alike (the full-context reference of variants
    that change only CoMem) is simulated once. ``on_done``: once per finished job."""
    from sim.scenario import load_scenario

    scenarios = [load_scenario(path, list(sets)) for path, sets in jobs]
    keys = [
        [_architecture_key(path, sc, i) for i in range(len(sc.architectures))]
        for (path, _), sc in zip(jobs, scenarios, strict=True)
    ]
    tasks: dict[str, tuple[int, str, tuple[str, ...], int]] = {}
    for (path, sets), sc, ks in zip(jobs, scenarios, keys, strict=True):
        for i, k in enumerate(ks):
            tasks.setdefault(k, (-_cost(sc, i), path, sets, i))
    order = sorted(tasks, key=lambda k: tasks[k][0])  # stable: ties keep job order
    results: dict[str, Any] = {}
    left = [len(set(ks)) for ks in keys]
    out: list[list[dict[str, Any]] | None] = [None] * len(jobs)

    def finish(key: str, result: Any) -> None:
        results[key] = result
        for j, ks in enumerate(keys):
            if key in ks:
                left[j] -= 1
                if left[j] == 0:
                    path = jobs[j][0]
                    out[j] = _rows(path, scenarios[j], [results[k] for k in ks])
                    if on_done is not None:
                        on_done()

    if workers <= 1 or len(order) <= 1:
        for k in order:
            finish(k, _run_architecture(*tasks[k][1:]))
    else:
        from concurrent.futures import as_completed

        with process_pool(min(workers, len(order))) as pool:
            futures = {pool.submit(_run_architecture, *tasks[k][1:]): k for k in order}
            for fut in as_completed(futures):
                finish(futures[fut], fut.result())
    return [r or [] for r in out]


def run_paper(
    files: Iterable[str | Path],
    sets: list[str] | None = None,
    workers: int = 1,
    on_done: Callable[[], None] | None = None,
) -> list[PaperRow]:
    """Run every paper scenario; one row per CoMem architecture per file."""
    jobs: list[Job] = [(str(f), tuple(sets or [])) for f in files]
    rows = [PaperRow(**row) for chunk in run_jobs(jobs, workers, on_done) for row in chunk]
    return rows


def _x(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f}x"


def table_markdown(rows: list[PaperRow]) -> str:
    """The table, experiment x variant, as Markdown, then what each row ran."""
    head = (
        "| # | experiment | variant | CoMem | "
        + " | ".join(f"speedup ({m})" for m in PAPER_METRICS)
        + " | KV peak FC / CoMem | preemptions FC / CoMem | ended early FC / CoMem"
        + " | resolve rate FC / CoMem [95%] | resolve pp vs FC [95%] |"
    )
    sep = "|" + "---|" * (9 + len(PAPER_METRICS))
    lines = [head, sep]
    for i, r in enumerate(rows, 1):
        early = f"{sum(r.ended_early_reference.values())} / {sum(r.ended_early.values())}"
        lines.append(
            f"| {i}{'*' if r.default else ''} | {r.experiment} | {r.variant} | {r.architecture} | "
            + " | ".join(_x(r.speedup.get(m)) for m in PAPER_METRICS)
            + f" | {r.kv_peak_reference:.0%} / {r.kv_peak:.0%}"
            f" | {r.preemptions_reference} / {r.preemptions} | {early}"
            f" | {r.resolve_rate_reference:.1%} / {r.resolve_rate:.1%}"
            f" [{r.resolve_rate_low:.1%}, {r.resolve_rate_high:.1%}]"
            f" | {r.resolve_rate_delta_pp:+.1f} [{r.resolve_rate_delta_pp_low:+.1f},"
            f" {r.resolve_rate_delta_pp_high:+.1f}] |"
        )
    lines.append("")
    lines.append(
        "What each row ran (speedup = full context's time over CoMem's; > 1: CoMem faster):"
    )
    for i, r in enumerate(rows, 1):
        mark = (
            "* the default experiment (`make run`, `comem run`, `comem plan`)" if r.default else ""
        )
        lines.append(
            f"{i}. {r.experiment}, {r.variant}, {r.architecture} [{r.file}]"
            + (f" {mark}" if mark else "")
        )
        lines.append(f"   - workload: {r.workload}")
        lines.append(f"   - {r.reference}: {r.deployment_reference}")
        lines.append(f"   - {r.architecture}: {r.deployment}")
    return "\n".join(lines) + "\n"


def table_writers(rows: list[PaperRow]) -> dict[str, Callable[[Path], object]]:
    """The table's files, ``paper_table.csv`` and ``paper_table.md``, as
    :func:`calibration.outputs.write_result` writers (file name -> a function writing it)."""
    import pandas as pd

    flat = []
    for r in rows:
        d = r.to_dict()
        for m in PAPER_METRICS:
            d[f"speedup_{m}"] = r.speedup.get(m)
        del d["speedup"]
        d["ended_early"] = json.dumps(r.ended_early, sort_keys=True)
        d["ended_early_reference"] = json.dumps(r.ended_early_reference, sort_keys=True)
        flat.append(d)
    text = table_markdown(rows)
    return {
        "paper_table.csv": lambda p: pd.DataFrame(flat).to_csv(p, index=False),
        "paper_table.md": lambda p: p.write_text(text),
    }


def figure(rows: list[PaperRow], path: str | Path) -> Path:
    """Speedup per metric for every experiment x variant (one group of bars each), on a
    log axis (a 5x peak does not flatten a 1.1x mean); a metric with nothing to compare
    is marked n/a at its place, the reason in the caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [
        f"{i}{'*' if r.default else ''}. {r.experiment}\n{r.variant}" for i, r in enumerate(rows, 1)
    ]
    x = np.arange(len(rows))
    width = 0.8 / len(PAPER_METRICS)
    fig, ax = plt.subplots(figsize=(max(9.0, 1.1 * len(rows) + 4), 6.5))
    missing = False
    for i, m in enumerate(PAPER_METRICS):
        at = x + (i - (len(PAPER_METRICS) - 1) / 2) * width
        vals = [r.speedup.get(m) for r in rows]
        ok = [v is not None and math.isfinite(v) and v > 0 for v in vals]
        heights = [float(v) for v, good in zip(vals, ok, strict=True) if good and v is not None]
        ax.bar(at[ok], heights, width, label=m)
        for xi, good in zip(at, ok, strict=True):
            if not good:
                missing = True
                ax.text(xi, 1.0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("speedup of CoMem over full context (x, log scale; > 1: CoMem faster)")
    ax.set_title("The CoMem authors' experiments as they ran them (predicted; * = default)")
    ax.legend(title="metric", fontsize=8, ncols=2)
    if missing:
        fig.text(
            0.01, 0.01,
            "n/a: nothing to compare by that metric (e.g. task and makespan where every"
            " full-context task ended early at max_model_len)",
            fontsize=7,
        )  # fmt: skip
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=130)
    plt.close(fig)
    return p


#: one assumption at a time around a base experiment: name -> (label, --set overrides)
SensitivityAxis = dict[str, list[tuple[str, list[str]]]]


def sensitivity(
    base: str | Path,
    axes: SensitivityAxis,
    metric: str = "llm",
    workers: int = 1,
    on_done: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The base experiment's speedup, and what each variation of one assumption makes of
    it (``metric``: a :mod:`sim.compare` metric; the 'metric' axis may vary it too)."""
    jobs: list[Job] = [(str(base), ())]
    keys: list[tuple[str, str]] = []
    for axis, options in axes.items():
        for label, sets in options:
            jobs.append((str(base), tuple(sets)))
            keys.append((axis, label))
    results = run_jobs(jobs, workers, on_done)
    base_rows = [PaperRow(**r) for r in results[0]]
    if not base_rows:
        raise ComemInputError(f"{base}: no CoMem architecture to compare with full context")
    arch = base_rows[0].architecture
    base_value = base_rows[0].speedup.get(metric)
    out: dict[str, Any] = {"base": str(base), "architecture": arch, "metric": metric}
    out["base_speedup"] = base_value
    out["base_all_metrics"] = base_rows[0].speedup
    variations: dict[str, list[dict[str, Any]]] = {}
    for (axis, label), rows in zip(keys, results[1:], strict=True):
        row = next((PaperRow(**r) for r in rows if r["architecture"] == arch), None)
        value = row.speedup.get(metric) if row is not None else None
        variations.setdefault(axis, []).append({"variation": label, "speedup": value})
    # the metric itself as an axis: same base run, other metrics
    variations["metric"] = [
        {"variation": m, "speedup": v} for m, v in base_rows[0].speedup.items() if m != metric
    ]
    out["variations"] = variations
    return out


def sensitivity_figure(result: dict[str, Any], path: str | Path) -> Path:
    """A tornado chart: per assumption, the range of speedups its variations give."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = result["base_speedup"] or 1.0
    axes = []
    for axis, vals in result["variations"].items():
        ys = [v["speedup"] for v in vals if v["speedup"] is not None]
        if ys:
            axes.append((axis, min(ys), max(ys), vals))
    axes.sort(key=lambda a: max(abs(a[1] - base), abs(a[2] - base)))
    fig, ax = plt.subplots(figsize=(10, 1.0 * len(axes) + 1.8))
    ax.set_xscale("log")
    for i, (_, lo, hi, vals) in enumerate(axes):
        ax.barh(i, max(hi - lo, 0.02), left=lo, height=0.5, color="tab:blue", alpha=0.5)
        shown = sorted((v for v in vals if v["speedup"] is not None), key=lambda v: v["speedup"])
        for n, v in enumerate(shown):
            up = n % 2 == 0  # alternate above / below so neighbours do not overlap
            ax.annotate(
                f"{v['variation']}: {v['speedup']:.2f}x", (v["speedup"], i), fontsize=7,
                ha="center", va="bottom" if up else "top",
                xytext=(0, 9 if up else -9), textcoords="offset points",
            )  # fmt: skip
            ax.plot([v["speedup"]], [i], "k|", ms=14)
    ax.axvline(base, color="k", lw=1, label=f"documented setup: {base:.2f}x")
    ax.axvline(1.0, color="r", lw=0.8, ls="--", label="no speedup")
    ax.set_yticks(range(len(axes)), [a[0] for a in axes])
    ax.set_xlabel(f"speedup of {result['architecture']} over full context ({result['metric']})")
    ax.set_title("Which assumption moves the predicted speedup most")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=130)
    plt.close(fig)
    return p


#: the sensitivity figure's base: the experiment whose deployment is fully documented
SENSITIVITY_BASE = PAPER_DIR / "deepswe_synthetic_benchmark__h100.toml"
#: one assumption at a time (architecture 0 is FC, 1 CoMem; --set paths of the base)
SENSITIVITY_AXES: SensitivityAxis = {
    "GPU allocation": [
        ("memory TP4 on 4 extra GPUs", ["architectures.1.memory.tp=4"]),
        (
            "memory co-located on the agent's 4 GPUs",
            [
                "architectures.1.agent.gpu_group=gpus0-3",
                "architectures.1.agent.gpu_memory_utilization=0.75",
                "architectures.1.memory.gpu_group=gpus0-3",
                "architectures.1.memory.tp=4",
                "architectures.1.memory.gpu_memory_utilization=0.15",
            ],
        ),
    ],
    "KV capacity": [
        (
            "gpu_memory_utilization 0.6",
            [
                "architectures.0.agent.gpu_memory_utilization=0.6",
                "architectures.1.agent.gpu_memory_utilization=0.6",
            ],
        ),
        (
            "gpu_memory_utilization 0.95",
            [
                "architectures.0.agent.gpu_memory_utilization=0.95",
                "architectures.1.agent.gpu_memory_utilization=0.95",
            ],
        ),
    ],
    "decode length per step": [
        ("256 tokens", ["workload.action_tokens=256"]),
        ("4096 tokens", ["workload.action_tokens=4096"]),
    ],
    "context cap": [
        (
            "32k",
            [
                "architectures.0.agent.max_model_len=32768",
                "architectures.1.agent.max_model_len=32768",
            ],
        ),
        (
            "128k",
            [
                "architectures.0.agent.max_model_len=131072",
                "architectures.1.agent.max_model_len=131072",
            ],
        ),
    ],
    "CPU KV offload": [
        (
            "500 GiB (FC agent, CoMem memory)",
            [
                "architectures.0.agent.kv_offloading_size=500",
                "architectures.1.memory.kv_offloading_size=500",
            ],
        ),
    ],
    "concurrency": [
        ("64 agents", ["workload.agents=64"]),
        ("128 agents", ["workload.agents=128"]),
    ],
}
