"""``comem replay``: real agents driving real servers, measured as the simulator measures.

Every architecture of a scenario (FC, CP, SM, KSO, ...) runs its sampled tasks (the
same ones the simulator runs: same seed, same sampler) against live OpenAI-compatible
servers: the agent model at ``agent_endpoint``, the memory model at
``memory_endpoint``. Each agent is a thread (:class:`live.agent.LiveAgent`) running the
same context policy and the same loop over its actions as the simulated agent
(:mod:`sim.executor`).

Per-step rows (:class:`live.agent.ReplayStepRow`) use :class:`sim.rows.StepRow`
semantics where the client can observe them:
``step_latency_s = finished - submit + tool_s + stall_s``, with the summarization
wait of CP/SM and the swap wait of KSO in ``stall_s``, and the authors' per-step
metrics (``llm_exec_time_s`` ... ``total_step_time_s``). ``queue_s`` and
``cached_tokens`` are inside the server, so they are not recorded.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calibration.outputs import write_atomic
from live.agent import (
    REPLAY_STEP_COLUMNS,
    LiveAgent,
    LiveRows,
    LiveTarget,
    ReplayStepRow,
    ReplaySummaryRow,
    Words,
)
from live.openai_stream import stream_completion
from live.profiler import _RowWriter
from sim.actions import Task
from sim.policy import uses_memory
from sim.rows import TaskRow, frame
from sim.scenario import ArchitectureConfig, Scenario


@dataclass
class ReplayResult:
    scenario: Scenario
    steps: pd.DataFrame
    tasks: pd.DataFrame
    wall_s: dict[str, float]
    summaries: pd.DataFrame = field(default_factory=lambda: frame([], ReplaySummaryRow._fields))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, g in self.steps.groupby("architecture", sort=False):
            t = self.tasks[self.tasks["architecture"] == name]
            ok = g[g["status"] == "ok"]
            out[str(name)] = {
                "steps": int(len(g)),
                "steps_failed": int(len(g) - len(ok)),
                "tasks": int(len(t)),
                "tasks_finished": int((t["status"] == "finished").sum()),
                "tasks_ended_early": int((t["status"] != "finished").sum()),
                "mean_step_latency_s": float(ok["step_latency_s"].mean()),
                "mean_llm_exec_time_s": float(ok["llm_exec_time_s"].mean()),
                "mean_total_step_time_s": float(ok["total_step_time_s"].mean()),
                "p50_step_latency_s": float(ok["step_latency_s"].median()),
                "mean_task_latency_s": float(t["latency_s"].mean()),
                "mean_stall_s": float(ok["stall_s"].mean()),
                "wall_s": self.wall_s.get(str(name), float("nan")),
            }
        return {"scenario": self.scenario.name, "architectures": out}

    def write(self, directory: str) -> list[str]:
        """Every table (sorted) and the scenario; each file replaced whole (a file
        streamed during the run is swapped for the sorted one, never left half)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for key, table in (
            ("steps", self.steps),
            ("tasks", self.tasks),
            ("summaries", self.summaries),
        ):
            p = out / REPLAY_FILES[key][0]
            write_atomic(p, functools.partial(_write_csv, table), f"replay {key}")
            paths.append(str(p))
        return [*paths, str(_write_config(self.scenario, out))]


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    table.to_csv(path, index=False)


def _write_config(scenario: Scenario, out: Path) -> Path:
    from calibration.outputs import write_text

    return write_text(out / "config.json", scenario.model_dump_json(indent=1) + "\n", "config")


class _StreamedRows(list[Any]):
    """Rows kept in memory and, with a writer, appended to its CSV (flushed and synced)
    the moment they are taken: a replay killed half-way keeps every measured row."""

    def __init__(
        self, writer: _RowWriter | None = None, cells: Callable[[Any], list[Any]] = list
    ) -> None:
        super().__init__()
        self.writer = writer
        self.cells = cells  # a row's values in the CSV's columns

    def append(self, row: Any) -> None:
        super().append(row)
        if self.writer is not None:
            self.writer.write(self.cells(row))


#: the CSV files of a replay, by the rows they hold
REPLAY_FILES = {
    "steps": ("live_steps.csv", REPLAY_STEP_COLUMNS),
    "tasks": ("live_tasks.csv", TaskRow._fields),
    "summaries": ("live_summaries.csv", ReplaySummaryRow._fields),
}


def replay_architecture(
    scenario: Scenario,
    arch: ArchitectureConfig,
    tasks: list[list[Task]],
    target: LiveTarget,
    on_task: Callable[[], None] | None = None,
    writers: dict[str, _RowWriter] | None = None,
) -> tuple[LiveRows, float]:
    """Run every agent of one architecture as a thread; returns its rows and the wall
    time. Closed loop (each agent runs its tasks back to back) or closed batch (every
    task on its own thread, all started at once). ``writers`` (by :data:`REPLAY_FILES`
    key): rows also go to them as they are taken."""
    check_replayable(scenario, target)
    if scenario.workload.arrivals == "closed-batch":
        tasks = [[task] for own in tasks for task in own]
    sink = writers or {}
    rows = LiveRows(
        steps=_StreamedRows(sink.get("steps"), ReplayStepRow.cells),
        tasks=_StreamedRows(sink.get("tasks")),
        summaries=_StreamedRows(sink.get("summaries")),
    )
    stream = next(i for i, a in enumerate(scenario.architectures) if a.name == arch.name)
    words = Words(target, scenario.seed, stream)
    limit = arch.memory.max_model_len if arch.memory is not None else None
    t0 = time.perf_counter()
    agents = [
        LiveAgent(a, arch.name, arch, target, words, t0, rows, on_task, limit)
        for a in range(len(tasks))
    ]
    threads = [
        threading.Thread(target=ag.run, args=(own,), daemon=True)
        for ag, own in zip(agents, tasks, strict=True)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    nan = float("nan")
    for ag in agents:  # a crash ends the agent's tasks: a task row says so
        if ag.crashed is not None:
            crash = TaskRow(
                architecture=arch.name,
                agent=ag.id,
                task=-1,
                start_s=nan,
                end_s=nan,
                latency_s=nan,
                steps=0,
                status=f"crashed: {ag.crashed}",
                summaries=0,
                stall_s=nan,
            )
            rows.tasks.append(crash)
    return rows, time.perf_counter() - t0


def check_replayable(scenario: Scenario, target: LiveTarget) -> None:
    """One clear error before anything is sent, for what a live replay cannot do."""
    from calibration.errors import ComemInputError

    if scenario.workload.arrivals == "poisson":
        raise ComemInputError(
            "comem replay: Poisson (open-loop) arrivals are not supported; use arrivals ="
            " 'closed-loop' or 'closed-batch'"
        )
    for arch in scenario.architectures:
        if uses_memory(arch.kind) and target.memory is None:
            raise ComemInputError(
                f"architecture '{arch.name}' ({arch.kind}) needs a memory server: --memory-endpoint"
            )


def warm_up(target: LiveTarget, requests: int = 2) -> None:
    """A few short requests to every server first: the first request a server sees
    pays one-off costs (the tiny model's first takes ~2 s against ~10 ms after), which
    the simulator does not model and a profile does not contain."""
    words = Words(target, 12345)
    for endpoint, model in ((target.agent, target.model), (target.memory, target.memory_model)):
        if endpoint is None:
            continue
        for i in range(requests):
            stream_completion(
                endpoint,
                model or target.model,
                " ".join(words.make(16, i)),
                4,
                target.timeout_s,
                target.extra_body,
            )


def check_live_cost(scenario: Scenario) -> None:
    """Refuse a replay above the live budgets (:mod:`calibration.limits`): one thread
    per agent, one request per agent step (summaries come on top)."""
    from calibration import limits
    from sim.scenario import agent_steps, check_cost

    check_cost(scenario, scenario.name)
    w = scenario.workload
    threads = w.agents if w.arrival_rate_per_s is None else w.agents * w.tasks_per_agent
    limits.check(limits.LIVE_CONCURRENCY, threads, f"{scenario.name}: workload.agents")
    steps, fields = agent_steps(scenario)
    limits.check(limits.LIVE_REQUESTS, steps, f"{scenario.name}: {fields}")


def replay_scenario(
    scenario: Scenario, target: LiveTarget, progress: bool = False, out: str | None = None
) -> ReplayResult:
    """Replay every architecture of ``scenario`` (one after the other) on live servers.

    ``out``: a directory where ``config.json`` is written first and every row is
    appended to its CSV as it is measured (a run killed half-way keeps what it
    measured); :meth:`ReplayResult.write` then rewrites the files sorted."""
    check_live_cost(scenario)
    rng = np.random.default_rng(scenario.seed)
    tasks = scenario.workload.tasks(rng)
    check_replayable(scenario, target)
    writers: dict[str, _RowWriter] = {}
    if out is not None:
        _write_config(scenario, Path(out))
        for key, (name, columns) in REPLAY_FILES.items():
            writers[key] = _RowWriter(Path(out) / name, tuple(columns))
    warm_up(target)
    all_steps: list[ReplayStepRow] = []
    all_tasks: list[TaskRow] = []
    all_summaries: list[ReplaySummaryRow] = []
    wall: dict[str, float] = {}
    bar = None
    job = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} tasks"),
            TimeElapsedColumn(),
            transient=True,
        )
        bar.start()
        job = bar.add_task(
            scenario.name, total=sum(len(o) for o in tasks) * len(scenario.architectures)
        )
    try:
        for arch in scenario.architectures:
            if bar is not None and job is not None:
                bar.update(job, description=f"replay {arch.name}")
            advance = (lambda: bar.advance(job)) if bar is not None and job is not None else None
            rows, secs = replay_architecture(scenario, arch, tasks, target, advance, writers)
            all_steps += sorted(rows.steps, key=lambda r: (r.row.agent, r.row.task, r.row.step))
            all_tasks += sorted(rows.tasks, key=lambda r: (r.agent, r.task))
            all_summaries += sorted(rows.summaries, key=lambda r: (r.agent, r.task, r.step))
            wall[arch.name] = secs
    finally:
        if bar is not None:
            bar.stop()
        for w in writers.values():
            w.close()
    return ReplayResult(
        scenario,
        frame([r.cells() for r in all_steps], REPLAY_STEP_COLUMNS),
        frame(all_tasks, TaskRow._fields),
        wall,
        frame(all_summaries, ReplaySummaryRow._fields),
    )


def comparison_line(row: Mapping[Any, Any]) -> str:
    """One row of :func:`compare_with_simulation`, for a terminal."""
    line = (
        f"{row['architecture']:8s} simulated vs live: step mean {row['sim_mean_step_s']:.3f}"
        f" vs {row['live_mean_step_s']:.3f} s ({row['step_error']:+.1%}), task mean"
        f" {row['sim_mean_task_s']:.2f} vs {row['live_mean_task_s']:.2f} s"
        f" ({row['task_error']:+.1%}), TTFT {row['prefill_error']:+.0%},"
        f" decode {row['decode_error']:+.0%}, per-step MAPE {row['per_step_mape']:.1%}"
    )
    if row["summary_error"] == row["summary_error"]:  # not NaN: it summarized
        line += f", summary request {row['summary_error']:+.0%}"
    return line


def compare_with_simulation(live: ReplayResult, simulated: Any) -> pd.DataFrame:
    """Per architecture: measured vs simulated mean step latency, mean task latency and
    mean stall, with relative errors (simulated / measured - 1).

    ``simulated`` is a :class:`sim.scenario.ScenarioResult` of the same scenario."""
    rows = []
    sim_by_name = {r.config.name: r for r in simulated.results}
    for name, g in live.steps.groupby("architecture", sort=False):
        s = sim_by_name[str(name)]
        ok = g[g["status"] == "ok"]
        lt = live.tasks[live.tasks["architecture"] == name]
        pairs = ok.merge(
            s.steps[["agent", "task", "step", "step_latency_s"]],
            on=["agent", "task", "step"],
            suffixes=("_live", "_sim"),
        )
        per_step = (pairs["step_latency_s_sim"] / pairs["step_latency_s_live"] - 1.0).abs()
        row: dict[str, Any] = {
            "architecture": str(name),
            "live_mean_step_s": float(ok["step_latency_s"].mean()),
            "sim_mean_step_s": float(s.steps["step_latency_s"].mean()),
            "live_mean_task_s": float(lt["latency_s"].mean()),
            "sim_mean_task_s": float(s.tasks["latency_s"].mean()),
            "live_mean_prefill_s": float(ok["prefill_s"].mean()),
            "sim_mean_prefill_s": float((s.steps["queue_s"] + s.steps["prefill_s"]).mean()),
            "live_mean_decode_s": float(ok["decode_s"].mean()),
            "sim_mean_decode_s": float(s.steps["decode_s"].mean()),
            "live_mean_stall_s": float(ok["stall_s"].mean()),
            "sim_mean_stall_s": float(s.steps["stall_s"].mean()),
            "per_step_mape": float(per_step.mean()),
            "live_mean_summary_s": float("nan"),
            "sim_mean_summary_s": float("nan"),
        }
        ls = live.summaries[
            (live.summaries["architecture"] == name) & (live.summaries["status"] == "ok")
        ]
        if len(ls):
            row["live_mean_summary_s"] = float(ls["e2e_s"].mean())
            req = s.requests
            if s.config.memory is not None:  # SM, KSO: every memory request summarizes
                sreq = req[req["engine"].str.contains("/memory", regex=False)]
            else:  # CP: the agent engine's requests tagged as summaries
                sreq = req[req["tag"].map(lambda tg: isinstance(tg, tuple) and "summary" in tg)]
            row["sim_mean_summary_s"] = float(sreq["e2e_s"].mean())
        for what in ("step", "task", "prefill", "decode", "summary"):
            row[f"{what}_error"] = row[f"sim_mean_{what}_s"] / row[f"live_mean_{what}_s"] - 1.0
        rows.append(row)
    return pd.DataFrame(rows)


def simulate_live(
    scenario: Scenario,
    profile: str,
    max_num_batched_tokens: int | None = None,
    block_size: int | None = None,
    kv_capacity_tokens: int | None = None,
) -> Any:
    """Simulate ``scenario`` with every engine priced by the measured ``profile`` and
    shaped like the live servers (token budget, block size, KV capacity: the profile's
    values unless given). Returns a :class:`sim.scenario.ScenarioResult`."""
    from calibration.measured import MeasuredProfile
    from sim.scenario import run_scenario

    prof = MeasuredProfile.load(profile)
    update: dict[str, Any] = {
        "profile": str(profile),
        "max_num_batched_tokens": max_num_batched_tokens or prof.max_num_batched_tokens,
        "enable_prefix_caching": True,
    }
    if block_size or prof.block_size:
        update["block_size"] = block_size or prof.block_size
    if kv_capacity_tokens or prof.kv_capacity_tokens:
        update["kv_capacity_tokens"] = kv_capacity_tokens or prof.kv_capacity_tokens
    archs = [
        a.model_copy(
            update={
                "agent": a.agent.model_copy(update=update),
                "memory": a.memory.model_copy(update=update) if a.memory is not None else None,
            }
        )
        for a in scenario.architectures
    ]
    return run_scenario(scenario.model_copy(update={"architectures": archs}))
