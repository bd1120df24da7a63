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

import numpy as np
import pandas as pd

from live.agent import LiveTarget
from live.profiler import ProfileGrid, run_profile, speed_probe
from live.replay import compare_with_simulation, replay_scenario, simulate_live
from live.server import ServerSettings, serving

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "live" / "tiny_cpu.toml"


@dataclass
class LoopResult:
    out: Path
    profile_summary: dict[str, Any]
    fit_error: dict[str, Any]
    comparison: pd.DataFrame
    timings_s: dict[str, float]
    #: how much the agent server's speed moved during the run: the spread (max / min - 1)
    #: of a speed probe taken before the profile, between the profile and the replay,
    #: and after the replay
    drift: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "profile_requests": self.profile_summary["requests"],
            "profile_statuses": self.profile_summary["statuses"],
            "fit_error": self.fit_error,
            "comparison": self.comparison.to_dict(orient="records"),
            "timings_s": self.timings_s,
            "drift": self.drift,
        }


def run_live_loop(
    out: str | Path,
    scenario: Any = None,
    grid: ProfileGrid | None = None,
    settings: ServerSettings | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> LoopResult:
    """Run steps 1-4 of the module docstring; ``scenario`` is a
    :class:`sim.scenario.Scenario` (default: ``scenarios/live/tiny_cpu.toml``). The
    measurements of an earlier run in ``out`` are replaced only if ``overwrite``."""
    from calibration.measured import fit_measurements_file
    from calibration.outputs import refuse_overwrite
    from live.tiny_model import make_tiny_llama
    from sim.scenario import load_scenario

    out = Path(out)
    refuse_overwrite([out / "profile.csv", out / "live_steps.csv"], overwrite)
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
        probe_before = speed_probe(agent.endpoint, model, seed=1)
        t = time.perf_counter()
        summary = run_profile(
            agent.endpoint, model, grid, out / "profile.csv", progress=progress, overwrite=overwrite
        )
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
        probe_mid = speed_probe(agent.endpoint, model, seed=2)
        t = time.perf_counter()
        live = replay_scenario(
            scenario,
            LiveTarget(agent.endpoint, model, memory.endpoint, model),
            progress,
            out=str(out),
        )
        timings["replay"] = time.perf_counter() - t
        probe_after = speed_probe(agent.endpoint, model, seed=3)
    live.write(str(out))
    t = time.perf_counter()
    simulated = simulate_live(scenario, str(out / "profile.json"))
    timings["simulate"] = time.perf_counter() - t
    simulated.write(out / "simulated")
    comparison = compare_with_simulation(live, simulated)
    comparison.to_csv(out / "comparison.csv", index=False)
    sim_steps = pd.concat([r.steps for r in simulated.results], ignore_index=True)
    plot_live_vs_simulated(live.steps, sim_steps, out)
    probes = (probe_before, probe_mid, probe_after)
    result = LoopResult(
        out, summary, prof.fit_error, comparison, timings, max(probes) / min(probes) - 1.0
    )
    (out / "loop.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    return result


def plot_live_vs_simulated(live_steps: pd.DataFrame, sim_steps: pd.DataFrame, out: Path) -> Path:
    """Per architecture: mean step latency by step index, live (points with the range
    over agents) against simulated (line); where the time goes beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(live_steps["architecture"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    for i, name in enumerate(archs):
        color = f"C{i}"
        lv = live_steps[(live_steps["architecture"] == name) & (live_steps["status"] == "ok")]
        g = lv.groupby("step")["step_latency_s"]
        ax.errorbar(
            g.mean().index,
            g.mean().to_numpy() * 1e3,
            yerr=[(g.mean() - g.min()) * 1e3, (g.max() - g.mean()) * 1e3],
            fmt="o",
            color=color,
            ms=4,
            capsize=2,
            label=f"{name} live",
        )
        sv = sim_steps[sim_steps["architecture"] == name].groupby("step")["step_latency_s"]
        ax.plot(sv.mean().index, sv.mean().to_numpy() * 1e3, "-", color=color, label=f"{name} sim")
    ax.set_xlabel("step")
    ax.set_ylabel("step latency (ms), mean over agents")
    ax.legend(fontsize=8)
    ax = axes[1]
    parts = ("prefill_s", "decode_s", "tool_s", "stall_s")
    labels = ("TTFT", "decode", "tool", "stall")
    x = np.arange(len(archs))
    bottom_l = np.zeros(len(archs))
    bottom_s = np.zeros(len(archs))
    for j, (col, lab) in enumerate(zip(parts, labels, strict=True)):
        live_v, sim_v = [], []
        for name in archs:
            lv = live_steps[(live_steps["architecture"] == name) & (live_steps["status"] == "ok")]
            sv = sim_steps[sim_steps["architecture"] == name]
            live_v.append(lv[col].mean() * 1e3)
            sim_col = sv["queue_s"] + sv["prefill_s"] if col == "prefill_s" else sv[col]
            sim_v.append(sim_col.mean() * 1e3)
        ax.bar(x - 0.2, live_v, 0.38, bottom=bottom_l, color=f"C{j + 2}", label=lab)
        ax.bar(x + 0.2, sim_v, 0.38, bottom=bottom_s, color=f"C{j + 2}", hatch="//", alpha=0.7)
        bottom_l = bottom_l + np.array(live_v)
        bottom_s = bottom_s + np.array(sim_v)
    ax.set_xticks(x, [f"{a}\nlive | sim" for a in archs])
    ax.set_ylabel("mean per step (ms)")
    ax.legend(fontsize=8)
    fig.text(
        0.01,
        0.005,
        "comem live-loop: tiny Llama on transformers serve (CPU), scenarios/live/tiny_cpu.toml;"
        " sim priced by the profile fitted on the same server",
        fontsize=7,
        color="0.35",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "live_vs_sim.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
