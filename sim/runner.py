"""Run an engine under a closed-loop client load and summarize it (the CLI's engine job)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simpy
from pydantic import ConfigDict, Field, PositiveInt

from calibration import limits
from calibration.inputs import InputModel, Seconds, Tokens, TokensOrZero
from sim.clients import start_closed_loop
from sim.config import EngineConfig
from sim.deployment import AnyEngine, build_engines, simulation_gc
from sim.kv_geometry import check_engine
from sim.metrics import MetricsRecorder


class ClosedLoopLoad(InputModel):
    """Closed-loop clients: each sends ``requests`` requests back to back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: PositiveInt = 64
    requests: PositiveInt = 16
    first_prompt: Tokens = 512
    extend: TokensOrZero = 512
    output: Tokens = 1024
    think_s: Seconds = 0.0
    carry_output: bool = False


class EngineRun(InputModel):
    """One engine job: the engine and its load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineConfig = Field(default_factory=EngineConfig)
    load: ClosedLoopLoad = Field(default_factory=ClosedLoopLoad)


@dataclass
class EngineRunResult:
    config: EngineRun
    recorder: MetricsRecorder
    engine: AnyEngine
    wall_s: float

    def summary(self) -> dict[str, Any]:
        return summarize(self.recorder, self.engine, self.wall_s)

    def write(self, directory: str | Path) -> list[Path]:
        """The tables, then ``config.json`` (the mark of a whole result: a killed write
        leaves none, and no old one beside new tables)."""
        from calibration.outputs import write_result

        config = self.config.model_dump_json(indent=1) + "\n"
        writers = self.recorder.parquet_writers()
        writers["config.json"] = lambda p: p.write_text(config)
        return write_result(directory, writers, "config.json", "engine-sim")


def check_run(run: EngineRun) -> None:
    """Refuse a run above the budgets (:mod:`calibration.limits`) or with an engine that
    cannot exist, before anything is simulated."""
    load, eng = run.load, run.engine
    limits.check(limits.REQUESTS, load.clients * load.requests, "load.clients x load.requests")
    if eng.stepping == "iteration":
        limits.check(
            limits.ITERATION_TOKENS,
            load.clients * load.requests * load.output,
            "engine.stepping = 'iteration': load.clients x load.requests x load.output",
        )
    check_engine(eng)


def run_engine_load(run: EngineRun, progress: bool = False) -> EngineRunResult:
    """Simulate ``run`` to completion (optionally with a progress bar on stderr)."""
    check_run(run)
    env = simpy.Environment()
    recorder = MetricsRecorder()
    # as a scenario builds it: data_parallel_size replicas behind a router (a MoE model's
    # in lockstep; with expert parallelism, the experts over TP x DP GPUs)
    engine = build_engines(env, {"engine": run.engine}, None, recorder)["engine"]
    load = run.load
    start_closed_loop(
        env,
        engine,
        load.clients,
        load.requests,
        load.first_prompt,
        load.extend,
        load.output,
        load.think_s,
        load.carry_output,
    )
    total = load.clients * load.requests
    t0 = time.perf_counter()
    from sim.progress import progress as shown

    with shown("simulating", "requests", total, progress) as counter:
        if counter is not None:
            recorder.on_request = lambda row: counter()
        with simulation_gc():
            env.run()
    recorder.on_request = None
    return EngineRunResult(run, recorder, engine, time.perf_counter() - t0)


def _stats(values: np.ndarray) -> dict[str, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan")}
    return {
        "mean": float(v.mean()),
        "p50": float(np.percentile(v, 50)),
        "p99": float(np.percentile(v, 99)),
    }


def summarize(recorder: MetricsRecorder, engine: AnyEngine, wall_s: float = 0.0) -> dict[str, Any]:
    """Headline numbers of one run, JSON-ready. Deterministic: the simulator's own wall
    time (``wall_s``, kept on :class:`EngineRunResult`) is not in it, so identical runs
    give identical summaries."""
    req = recorder.requests_frame()
    done = req[req["status"] == "finished"]
    steps = recorder.iterations_frame()
    horizon = float(done["finished_s"].max()) if len(done) else 0.0
    prompt = float(done["prompt_tokens"].sum())
    kv_peak = (
        float((steps["kv_used_blocks"] / steps["kv_total_blocks"]).max()) if len(steps) else 0.0
    )
    return {
        "requests_finished": int(len(done)),
        "requests_rejected": int((req["status"] == "rejected").sum()),
        "simulated_s": horizon,
        "iterations": engine.iterations,
        "engine_steps": int(len(steps)),
        "ttft_s": _stats(done["ttft_s"].to_numpy(float)),
        "tpot_s": _stats(done["tpot_s"].to_numpy(float)),
        "e2e_s": _stats(done["e2e_s"].to_numpy(float)),
        "queue_s": _stats(done["queue_s"].to_numpy(float)),
        "output_tokens_per_s": float(done["output_tokens"].sum() / horizon) if horizon else 0.0,
        "requests_per_s": float(len(done) / horizon) if horizon else 0.0,
        "preemptions": engine.preemptions,
        "prefix_cache_hit_fraction": float(done["cached_tokens"].sum() / prompt) if prompt else 0.0,
        "kv_peak_fraction": kv_peak,
        "kv_total_blocks": engine.total_blocks,
    }
