"""Closed-network checks on the simulator's own outputs: Little's law, the optimistic
throughput bound, response time never below the solo step; the batch-aware
pessimistic bounds; memory-server sizing."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.surrogate import LinearSurrogate, SurrogateLatency
from sim.scenario import Scenario, load_scenario, run_architecture, run_scenario
from theory.network import (
    StepDemand,
    bounds_apply,
    closed_network_bounds,
    fc_step_demand,
    little_population,
    memory_server_agents,
    response_bounds,
    throughput_upper,
)
from theory.single_agent import lockstep_parts, request_latency


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
    c = np.array([5e-3, 2e-5, 1e-9, 5e-5, 3e-8])
    # lockstep summaries of a 30k-token history, 2048 tokens out; the agent's step is
    # fixed here (its per-agent part 0) to isolate the period
    fixed, per_agent = lockstep_parts(np.array(30000.0), np.array(0.0), np.array(2048.0), c)

    def lockstep(n: int) -> float:
        coeffs = np.array([c[0], n * c[1], n * c[2], n * c[3], n * c[4]])
        return float(request_latency(np.array(30000.0), np.array(0.0), np.array(2048.0), coeffs))

    assert lockstep(7) == pytest.approx(fixed + 7 * per_agent, rel=1e-12)
    short = int(memory_server_agents(1, 20.0, 0.0, fixed, per_agent))
    long = int(memory_server_agents(1, 80.0, 0.0, fixed, per_agent))
    assert 0 < short < long
    assert lockstep(short) <= 20.0 < lockstep(short + 1)
    assert memory_server_agents(1, 0.001, 0.0, fixed, per_agent) == 0
    # k steps per period: the same as one step k times as long
    assert memory_server_agents(4, 5.0, 0.0, fixed, per_agent) == short


# --- the batch-aware bounds ------------------------------------------------------------------

COEFFS = (5e-3, 2e-5, 1e-9, 5e-5, 3e-8)
BIG = {"max_num_batched_tokens": 1 << 20, "max_num_seqs": 256, "max_model_len": 1 << 20}
#: (system, observation, action): prefill-heavy and decode-heavy steps
SHAPES = {"prefill-heavy": (512, 256, 64), "decode-heavy": (256, 64, 256)}
#: (agents, mean think time): light load .. heavy load
LOADS = [(1, 5.0), (4, 2.0), (16, 1.0), (64, 0.1)]
STEPS, TASKS, REPLICATIONS = 4, 2, 3


def _closed_loop(agents: int, think: float, shape: tuple[int, int, int], seed: int):
    system, obs, action = shape
    scenario = Scenario.model_validate(
        {
            "seed": seed,
            "workload": {
                "agents": agents, "steps": STEPS, "tasks_per_agent": TASKS,
                "system_tokens": system, "observation_tokens": obs, "action_tokens": action,
                "tool_s": think, "tool_s_dist": "exponential",
            },
            "architectures": [{"name": "FC", "kind": "fc", "agent": {"name": "agent", **BIG}}],
        }
    )  # fmt: skip
    # the engine priced by the surrogate itself: the bounds' model is the simulator's
    latency = {"agent": SurrogateLatency(LinearSurrogate(*COEFFS, 0.0, 0.0, 0.0))}
    tasks = scenario.workload.tasks(np.random.default_rng(seed))
    return run_architecture(scenario, scenario.architectures[0], tasks, latency)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_simulator_inside_the_batch_aware_bounds(shape):
    """Closed loops of N agents (exponential think times, several N, replications):
    every request between alone and the worst case; the mean response time and
    throughput between the optimistic and pessimistic bounds; light load on the
    optimistic bound, heavy load on the pessimistic one."""
    system, obs, action = SHAPES[shape]
    demand = fc_step_demand(system, obs, action, STEPS)
    coeffs = np.array(COEFFS)
    position = {}
    for agents, think in LOADS:
        assert bounds_apply(agents, demand, BIG["max_num_seqs"], 1 << 20, 1 << 30) == []
        worst = response_bounds(agents, demand, coeffs)
        for seed in range(REPLICATIONS):
            run = _closed_loop(agents, think, SHAPES[shape], seed)
            steps = run.steps
            r = steps["llm_exec_time_s"].to_numpy()  # submit -> last token
            row = steps["step"].to_numpy() - 1
            assert (r >= worst.optimistic[row, 0] * (1 - 1e-9)).all()
            assert (r <= worst.pessimistic[row, 0] * (1 + 1e-9)).all()
            z = float(steps["tool_s"].mean())
            b = closed_network_bounds(agents, demand, coeffs, z)
            mean_r = float(r.mean())
            assert b.response_low[0] * (1 - 1e-9) <= mean_r <= b.response_high[0] * (1 + 1e-9)
            x = agents / (mean_r + z)  # Little's law over the run
            assert b.throughput_low[0] * (1 - 1e-9) <= x <= b.throughput_high[0] * (1 + 1e-9)
            # the batch-aware heavy-load bound holds for the makespan throughput too
            makespan_x = len(steps) / float(run.tasks["end_s"].max())
            assert makespan_x <= b.throughput_engine[0] * (1 + 1e-9)
            position.setdefault(agents, []).append(
                (mean_r / b.response_low[0], mean_r / b.response_high[0])
            )
    # both regimes: alone-like at light load, on the pessimistic bound at heavy load,
    # where the two bounds are far apart
    light, heavy = np.mean(position[1], axis=0), np.mean(position[64], axis=0)
    assert light[0] < 1.02, position
    assert heavy[1] > 0.9 and heavy[0] / heavy[1] > 2, position  # high / low > 2
    # and the per-request worst case is never tighter than the mean bound
    mean_bound = closed_network_bounds(64, demand, coeffs, 0.0).response_high[0]
    assert response_bounds(64, demand, coeffs).pessimistic.mean() >= mean_bound


def test_bounds_apply_names_what_breaks():
    demand = fc_step_demand(512, 256, 64, 4)
    broken = bounds_apply(64, demand, max_num_seqs=32, max_num_batched_tokens=8192,
                          kv_capacity_tokens=10_000)  # fmt: skip
    assert len(broken) == 3 and "max_num_seqs" in broken[0]
    assert "token budget" in broken[1] and "KV" in broken[2]


def test_bound_formulas_meet_at_heavy_load():
    """The pessimistic throughput bound and the batch-aware optimistic one close in on
    each other at heavy load (both tend to 1 / W), where the non-batching pair
    N / (N D + Z) <= X <= 1 / D would charge c0 once per agent: 1 / D stays below."""
    full = fc_step_demand(256, 64, 256, 4)
    demand = StepDemand(full.prompt, full.cached_low, full.cached_low, full.output)
    n = np.array([1, 10, 100, 1000, 10000])
    c = np.array(COEFFS)
    b = closed_network_bounds(n, demand, c, 1.0)
    ratio = b.throughput_low / b.throughput_high
    assert (b.throughput_low <= b.throughput_high).all()
    assert ratio[0] > 0.99 and ratio[-1] > 0.99 and ratio.min() < 0.9
    a = demand.output
    work = float(b.response_low[0]) - a * c[0]  # W (the same every step here)
    assert b.throughput_high[-1] == pytest.approx(n[-1] / (a * c[0] + n[-1] * work))
    assert b.throughput_high[-1] > 1.0 / (a * c[0] + work) * 10  # far past 1 / D
