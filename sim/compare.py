"""Comparing architectures on comparable work: per-architecture figures and speedups.

A task that ended early (its prompt passed ``max_model_len``) did less work, quickly;
counting it would make the architecture that fails look fast. So every speedup here
compares only work both architectures did: per-step metrics over the steps both ran
(same agent, task and step index, the request finished in both), task metrics over the
tasks both finished, and the batch metric per completed task. Each metric says so in
``compared_on``; an architecture with tasks that ended early gets a warning.

Metrics (``METRICS``; the reference is the scenario's first ``fc`` architecture, the
speedup its value over the other's, so > 1 means faster than the reference):

- ``task``: mean task latency;
- ``step``: mean per-step latency, the project's (queue + prefill + decode + tool +
  stall); the verdict's metric (:data:`DEFAULT_METRIC`);
- ``llm``: mean per-step ``llm_exec_time`` (the authors' "mean LLM time per step");
- ``total``: mean per-step ``total_step_time`` (the authors' formula);
- ``llm-index`` / ``llm-index-peak``: per step index, the reference's mean
  ``llm_exec_time`` over the other's (the authors' "per-step speedup"): its mean over
  step indices, and its peak;
- ``makespan``: batch wall time per completed task (the authors' ``_latency.txt``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pandas costs 0.25 s to import; `comem --help` reads this module
    import pandas as pd

STEP_KEYS = ["agent", "task", "step"]
TASK_KEYS = ["agent", "task"]


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # what is compared, for headers and legends
    compared_on: str  # which work, in words
    over: Literal["steps", "tasks", "batch"]
    ratio: Callable[[Any, Any], tuple[float | None, int]]


def finished_steps(steps: pd.DataFrame) -> pd.DataFrame:
    return steps[steps["status"] == "finished"]


def finished_tasks(tasks: pd.DataFrame) -> pd.DataFrame:
    return tasks[tasks["status"] == "finished"]


def _mean_ratio(
    ref: pd.DataFrame, other: pd.DataFrame, keys: list[str], column: str
) -> tuple[float | None, int]:
    both = ref[[*keys, column]].merge(other[[*keys, column]], on=keys, suffixes=("_r", "_o"))
    if both.empty:
        return None, 0
    den = float(both[f"{column}_o"].mean())
    num = float(both[f"{column}_r"].mean())
    return (num / den if den > 0 else None), len(both)


def _step_ratio(column: str) -> Callable[[Any, Any], tuple[float | None, int]]:
    def ratio(ref: Any, other: Any) -> tuple[float | None, int]:
        return _mean_ratio(
            finished_steps(ref.steps), finished_steps(other.steps), STEP_KEYS, column
        )

    return ratio


def _task_ratio(ref: Any, other: Any) -> tuple[float | None, int]:
    return _mean_ratio(
        finished_tasks(ref.tasks), finished_tasks(other.tasks), TASK_KEYS, "latency_s"
    )


def per_index_ratios(ref: Any, other: Any, column: str = "llm_exec_time_s") -> pd.Series:
    """Per step index: the reference's mean ``column`` over the other's, on the steps
    both ran (the authors' per-step speedup curve)."""
    a, b = finished_steps(ref.steps), finished_steps(other.steps)
    both = a[[*STEP_KEYS, column]].merge(
        b[[*STEP_KEYS, column]], on=STEP_KEYS, suffixes=("_r", "_o")
    )
    g = both.groupby("step")[[f"{column}_r", f"{column}_o"]].mean()
    g = g[g[f"{column}_o"] > 0]
    return g[f"{column}_r"] / g[f"{column}_o"]


def _index_mean(ref: Any, other: Any) -> tuple[float | None, int]:
    r = per_index_ratios(ref, other)
    return (float(r.mean()) if len(r) else None), len(r)


def _index_peak(ref: Any, other: Any) -> tuple[float | None, int]:
    r = per_index_ratios(ref, other)
    return (float(r.max()) if len(r) else None), len(r)


def makespan_per_task(tasks: pd.DataFrame) -> float:
    """Batch wall time (first start to last end) over the tasks that finished."""
    done = int((tasks["status"] == "finished").sum())
    if not done:
        return math.nan
    return float(tasks["end_s"].max() - tasks["start_s"].min()) / done


def _makespan(ref: Any, other: Any) -> tuple[float | None, int]:
    a, b = makespan_per_task(ref.tasks), makespan_per_task(other.tasks)
    n = int((other.tasks["status"] == "finished").sum())
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None, n
    return a / b, n


STEPS_BOTH = "steps both ran (same agent, task, step; request finished in both)"
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("task", "mean task latency", "tasks both finished", "tasks", _task_ratio),
        Metric(
            "step",
            "mean step latency (queue + prefill + decode + tool + stall)",
            STEPS_BOTH,
            "steps",
            _step_ratio("step_latency_s"),
        ),
        Metric(
            "llm",
            "mean llm_exec_time per step",
            STEPS_BOTH,
            "steps",
            _step_ratio("llm_exec_time_s"),
        ),
        Metric(
            "total",
            "mean total_step_time per step (authors' formula)",
            STEPS_BOTH,
            "steps",
            _step_ratio("total_step_time_s"),
        ),
        Metric(
            "llm-index",
            "per-step-index llm_exec_time ratio, mean over step indices",
            STEPS_BOTH + ", grouped by step index",
            "steps",
            _index_mean,
        ),
        Metric(
            "llm-index-peak",
            "per-step-index llm_exec_time ratio, peak over step indices",
            STEPS_BOTH + ", grouped by step index",
            "steps",
            _index_peak,
        ),
        Metric(
            "makespan",
            "makespan per completed task",
            "each architecture's batch wall time over its own finished tasks",
            "batch",
            _makespan,
        ),
    )
}
#: the verdict's metric wherever one is printed (`comem run`, `explain`, `paper`'s first
#: column): what an agent waits per step, tools and summary stalls included, as `comem
#: plan` ranks (its mean-step objective)
DEFAULT_METRIC = "step"
#: the metrics in one sentence (``comem run --help``)
METRICS_HELP = (
    "task = mean task latency, over the tasks both finished; over the steps both ran:"
    " step = mean step latency (queue + prefill + decode + tool + stall), llm = mean"
    " llm_exec_time, total = mean total_step_time (the authors' formula), llm-index and"
    " llm-index-peak = the per-step-index llm_exec_time ratio, its mean and peak over step"
    " indices; makespan = makespan per completed task"
)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _stat(values: np.ndarray, what: str) -> float:
    v = _finite(values)
    if not v.size:
        return math.nan
    return float(v.mean()) if what == "mean" else float(np.percentile(v, float(what[1:])))


def architecture_summary(res: Any) -> dict[str, Any]:
    """One architecture's own figures (``res``: a :class:`sim.scenario.ArchitectureResult`).

    Latencies are over its finished steps and finished tasks; ``ended_early`` counts the
    tasks that did not finish, by status."""
    steps, tasks = res.steps, res.tasks
    ok_steps = finished_steps(steps)
    ok_tasks = finished_tasks(tasks)
    lat = ok_steps["step_latency_s"].to_numpy(float)
    task_lat = ok_tasks["latency_s"].to_numpy(float)
    makespan = float(tasks["end_s"].max() - tasks["start_s"].min()) if len(tasks) else 0.0
    agent_steps = res.engine_steps[res.engine_steps["engine"].str.contains("/agent", regex=False)]
    kv_peak = (
        float((agent_steps["kv_used_blocks"] / agent_steps["kv_total_blocks"]).max())
        if len(agent_steps)
        else 0.0
    )
    early = tasks[tasks["status"] != "finished"]["status"].value_counts()
    out: dict[str, Any] = {
        "kind": res.config.kind,
        "tasks": int(len(tasks)),
        "tasks_finished": int(len(ok_tasks)),
        "tasks_ended_early": int(len(tasks) - len(ok_tasks)),
        "ended_early": {str(k): int(v) for k, v in sorted(early.items())},
        "context_exceeded": int((tasks["status"] == "context_exceeded").sum()),
        "steps": int(len(ok_steps)),
        "mean_task_latency_s": _stat(task_lat, "mean"),
        "p50_task_latency_s": _stat(task_lat, "p50"),
        "p99_task_latency_s": _stat(task_lat, "p99"),
        "mean_step_latency_s": _stat(lat, "mean"),
        "p50_step_latency_s": _stat(lat, "p50"),
        "p99_step_latency_s": _stat(lat, "p99"),
        "throughput_steps_per_s": float(len(ok_steps) / makespan) if makespan else 0.0,
        "makespan_s": makespan,
        "makespan_per_completed_task_s": makespan_per_task(tasks) if len(tasks) else math.nan,
        "mean_stall_s": float(ok_steps["stall_s"].mean()) if len(ok_steps) else 0.0,
        "mean_uncached_prefill_tokens": float(ok_steps["uncached_prefill_tokens"].mean())
        if len(ok_steps)
        else 0.0,
        "preemptions": res.preemptions,
        "kv_peak_fraction": kv_peak,
    }
    out |= summary_counts(res)
    for col in (
        "llm_exec_time_s",
        "summary_exec_time_s",
        "prefill_exec_time_s",
        "env_exec_time_s",
        "total_step_time_s",
    ):
        out[f"mean_{col}"] = _stat(ok_steps[col].to_numpy(float), "mean")
    parts = {
        "first_token": ok_steps["queue_s"] + ok_steps["prefill_s"],
        "after_first": ok_steps["decode_s"] + ok_steps["stall_s"],
    }
    add_latency_intervals(
        out, res.config.agent, **{k: _stat(v.to_numpy(float), "mean") for k, v in parts.items()}
    )
    return out


def summary_counts(res: Any) -> dict[str, int]:
    """Summaries an architecture's policy launched, swapped into the agent's context, and
    summary requests an engine refused (a refused summary is never swapped in: the agent
    goes on with its full context)."""
    steps, req = res.steps, res.requests
    refused = 0
    if req is not None and len(req) and "status" in req.columns:
        if "purpose" in req.columns:  # as written to requests.parquet
            summary = req["purpose"] == "summary"
        else:  # in memory: the purpose is the tag's fourth member
            summary = req["tag"].map(lambda t: isinstance(t, tuple) and t[3:4] == ("summary",))
        refused = int((summary & (req["status"] == "rejected")).sum())
    return {
        "summaries_launched": int(steps["summary_launched"].sum()) if len(steps) else 0,
        "summaries_swapped": int(steps["summary_swapped"].sum()) if len(steps) else 0,
        "summary_requests_refused": refused,
    }


def summaries_made(arch: dict[str, Any]) -> float:
    """The share of the summaries that came back which were swapped in, not refused by an
    engine (0 where none came back: tasks shorter than k). A summary still in flight when
    its task ended counts neither way: the policy's rate is nominal, as in the fit."""
    swapped = arch.get("summaries_swapped", 0)
    settled = swapped + arch.get("summary_requests_refused", 0)
    return swapped / settled if settled else 0.0


def add_latency_intervals(
    out: dict[str, Any], agent: Any, first_token: float = math.nan, after_first: float = math.nan
) -> None:
    """``*_low`` / ``*_high`` beside the mean step and task latencies from the agent
    engine's cross-validated bands (:func:`sim.engine_latency.engine_error_bands`): a
    step's wait for its first token (queue and prefill, ``first_token`` seconds on
    average) scaled by the TTFT band, the rest of its time on GPUs (decode and summary
    stalls, ``after_first``) by the TPOT band, the tool time as it is (no error: the
    workload's). The two ends add (the two errors come from one latency model, so they
    are taken together, not as independent); a task's latency moves by its steps' factor.
    Without the split, or without a TTFT band, all GPU time takes the TPOT band. No band,
    no interval."""
    from calibration.errors import ComemInputError
    from sim.engine_latency import engine_error_bands, engine_latency

    bands = engine_error_bands(agent)
    tpot = bands.get("tpot")
    if tpot is None:
        return
    step = out.get("mean_step_latency_s")
    tool = out.get("mean_env_exec_time_s")
    if step is None or tool is None or not math.isfinite(step) or step <= 0:
        return
    ttft = bands.get("ttft")
    gpu = max(0.0, step - tool)
    if ttft is None or not (math.isfinite(first_token) and math.isfinite(after_first)):
        first_token, after_first = 0.0, gpu
    # what the split leaves unassigned (rounding, or a part the rows do not name) is
    # priced with the decode band
    rest = max(0.0, gpu - first_token - after_first)
    ends = []
    for side in (0, 1):
        t = (ttft.interval(first_token)[side] if ttft and first_token else 0.0) + tpot.interval(
            after_first + rest
        )[side]
        ends.append(tool + t)
    out["mean_step_latency_s_low"], out["mean_step_latency_s_high"] = ends
    task = out.get("mean_task_latency_s")
    if task is not None and math.isfinite(task):
        out["mean_task_latency_s_low"] = task * ends[0] / step
        out["mean_task_latency_s_high"] = task * ends[1] / step
    out["interval_level"] = tpot.level
    try:  # the engine's own latency model (built for the run; a run priced otherwise, by
        # an injected surrogate, may have an engine config no kernel model can build)
        caveat = getattr(engine_latency(agent), "band_caveat", "")
    except ComemInputError:
        caveat = ""
    if caveat:
        out["interval_caveat"] = caveat


def _rejected(r: Any) -> list[str]:
    """A warning per engine of ``r`` that refused requests (a prompt past max_model_len,
    or one its whole KV cache cannot hold): a summary the memory engine refuses is
    simply not swapped in, so a run would otherwise report a KSO that summarized
    nothing as an honest 1.00x."""
    req = r.requests
    if req is None or not len(req) or "status" not in req:
        return []
    out = []
    bad = req[req["status"] == "rejected"]
    for engine, g in bad.groupby("engine", sort=True):
        out.append(
            f"{r.config.name}: engine '{engine}' refused {len(g)} of"
            f" {int((req['engine'] == engine).sum())} requests (first: {g['reason'].iloc[0]});"
            " what they should have done (summaries, steps) did not happen"
        )
    return out


def compare(results: list[Any]) -> dict[str, Any]:
    """Speedups of every architecture over the reference (first ``fc`` one), for every
    metric, on comparable work; and the warnings a reader must see."""
    ref = next((r for r in results if r.config.kind == "fc"), None)
    warnings = []
    for r in results:
        tasks = r.tasks
        early = tasks[tasks["status"] != "finished"]["status"].value_counts()
        if len(early):
            why = ", ".join(f"{k} {v}" for k, v in sorted(early.items()))
            warnings.append(
                f"{r.config.name}: {int(early.sum())} of {len(tasks)} tasks ended early ({why});"
                " speedups compare only work both architectures did"
            )
        warnings.extend(_rejected(r))
    if ref is None:
        return {"reference": None, "metrics": {}, "warnings": warnings}
    metrics: dict[str, Any] = {}
    for m in METRICS.values():
        speedup: dict[str, float | None] = {}
        compared: dict[str, int] = {}
        for r in results:
            value, n = m.ratio(ref, r)
            speedup[r.config.name], compared[r.config.name] = value, n
        metrics[m.name] = {
            "label": m.label,
            "compared_on": m.compared_on,
            "speedup": speedup,
            "compared": compared,
        }
    return {"reference": ref.config.name, "metrics": metrics, "warnings": warnings}
