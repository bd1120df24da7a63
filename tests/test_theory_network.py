"""Closed-network checks on the simulator's own outputs: Little's law, the optimistic
throughput bound, response time never below the solo step; memory-server sizing."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.surrogate import LinearSurrogate
from sim.scenario import load_scenario, run_scenario
from theory.network import little_population, memory_server_agents, throughput_upper
from theory.single_agent import request_latency


def _run(agents: int):
    scenario = load_scenario(
        "scenarios/paper_latency_deepswe.toml",
        [f"workload.agents={agents}", "workload.steps=12", "workload.tasks_per_agent=3",
         "workload.tool_s=2.0"],
    )  # fmt: skip
    return {r.config.name: r for r in run_scenario(scenario).results}


@pytest.mark.parametrize("agents", [1, 4, 16])
def test_little_law_and_optimistic_bounds_on_simulated_runs(agents):
    solo = _run(1)
    for name, res in _run(agents).items():
        steps, tasks = res.steps, res.tasks
        makespan = tasks["end_s"].max()
        x = len(steps) / makespan
        r = (steps["step_latency_s"] - steps["tool_s"]).mean()
        z = steps["tool_s"].mean()
        # Little: every agent is in the system (engine, stall or tool) until its last task
        busy = (tasks.groupby("agent")["end_s"].max()).mean()
        assert little_population(x, r, z) == pytest.approx(agents * busy / makespan, rel=1e-9)
        # optimistic bound: no agent completes its tasks faster than it would alone
        alone = solo[name].tasks["latency_s"].mean()
        cycle = alone / solo[name].tasks["steps"].mean()  # solo seconds per step
        assert x <= throughput_upper(np.array(agents), cycle - z, z) * (1 + 1e-9)
        if name == "FC":  # each step at least as long as the same step alone
            merged = steps.merge(solo[name].steps, on=["task", "step"], suffixes=("", "_solo"))
            assert (merged["step_latency_s"] >= merged["step_latency_s_solo"] * (1 - 1e-9)).all()


def test_memory_server_sizing_is_monotone_in_the_period():
    c = LinearSurrogate(5e-3, 2e-5, 1e-9, 5e-5, 3e-8, 0, 0, 0)

    def lockstep(n: int) -> float:
        coeffs = np.array([c.c0, n * c.c1, n * c.c2, n * c.c3, n * c.c4])
        return float(request_latency(np.array(30000.0), np.array(0.0), np.array(2048.0), coeffs))

    short = memory_server_agents(20.0, lockstep)
    long = memory_server_agents(80.0, lockstep)
    assert 0 < short < long
    assert lockstep(short) <= 20.0 < lockstep(short + 1)
    assert memory_server_agents(0.001, lockstep) == 0
