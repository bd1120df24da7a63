"""The whole sim-vs-real loop on this machine, with no GPU and no downloads.

1. make the tiny Llama (:mod:`live.tiny_model`) and start two ``transformers serve``
   instances on loopback, one per CPU core (agent and memory model);
2. ``comem profile`` the agent server and fit a measured profile from it;
3. ``comem replay`` the scenario (FC and KSO) on the live servers;
4. simulate the same scenario with the fitted profile and compare per step and task.

Everything it measured is written to ``out`` (profile CSV, profile JSON, replay CSVs,
comparison CSV, server logs) as it goes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from live.profiler import ProfileGrid, run_profile
from live.replay import LiveTarget, compare_with_simulation, replay_scenario, simulate_live
from live.server import ServerSettings, serving

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "live" / "tiny_cpu.toml"


@dataclass
class LoopResult:
    out: Path
    profile_summary: dict[str, Any]
    fit_error: dict[str, Any]
    comparison: pd.DataFrame
    timings_s: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "profile_requests": self.profile_summary["requests"],
            "profile_statuses": self.profile_summary["statuses"],
            "fit_error": self.fit_error,
            "comparison": self.comparison.to_dict(orient="records"),
            "timings_s": self.timings_s,
        }


def run_live_loop(
    out: str | Path,
    scenario: Any = None,
    grid: ProfileGrid | None = None,
    settings: ServerSettings | None = None,
    progress: bool = False,
) -> LoopResult:
    """Run steps 1-4 of the module docstring; ``scenario`` is a
    :class:`sim.scenario.Scenario` (default: ``scenarios/live/tiny_cpu.toml``)."""
    from calibration.measured import fit_measurements_file
    from live.tiny_model import make_tiny_llama
    from sim.scenario import load_scenario

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    model_dir = out / "tiny-llama"
    if not (model_dir / "config.json").is_file():
        make_tiny_llama(model_dir)
    timings["make_model"] = time.perf_counter() - t
    scenario = scenario if scenario is not None else load_scenario(DEFAULT_SCENARIO)
    grid = grid or ProfileGrid()
    settings = settings or ServerSettings(str(model_dir))
    model = settings.model_dir
    t = time.perf_counter()
    with serving(settings, out, ("agent", "memory")) as (agent, memory):
        timings["start_servers"] = time.perf_counter() - t
        t = time.perf_counter()
        summary = run_profile(agent.endpoint, model, grid, out / "profile.csv")
        timings["profile"] = time.perf_counter() - t
        prof = fit_measurements_file(
            out / "profile.csv",
            settings.max_batch_tokens,
            settings.num_blocks * settings.block_size,
            settings.block_size,
            server={
                "software": "transformers serve (continuous batching, CPU)",
                "model": "tiny random-weight Llama (live/tiny_model.py)",
                "cpus_per_server": 1,
            },
        )
        prof.save(out / "profile.json")
        t = time.perf_counter()
        live = replay_scenario(
            scenario, LiveTarget(agent.endpoint, model, memory.endpoint, model), progress
        )
        timings["replay"] = time.perf_counter() - t
    live.write(str(out))
    t = time.perf_counter()
    simulated = simulate_live(scenario, str(out / "profile.json"))
    timings["simulate"] = time.perf_counter() - t
    simulated.write(out / "simulated")
    comparison = compare_with_simulation(live, simulated)
    comparison.to_csv(out / "comparison.csv", index=False)
    result = LoopResult(out, summary, prof.fit_error, comparison, timings)
    (out / "loop.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    return result
