"""Rung 2: under randomness the simulated stall lies between the Jensen and Scarf bounds
(and, for exponential tool times, on the exact value), over replications."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from calibration.latency import ConstantLatency
from sim.scenario import Scenario, run_architecture
from theory.bounds import (
    NONE,
    cantelli_stall_probability,
    crossover_agents,
    crossover_concurrencies,
    crossover_concurrency,
    fc_peak_context,
    jensen_lower,
    kso_peak_context,
    masking_lag,
    masking_lags,
    max_agents,
    scarf_upper,
)

TAU, A, S = 0.01, 20, 60  # iteration time, action and summary tokens


def _kso_stalls(mean_tool: float, seed: int, steps: int = 201) -> np.ndarray:
    scenario = Scenario.model_validate(
        {
            "seed": seed,
            "workload": {
                "agents": 1,
                "steps": steps,
                "system_tokens": 64,
                "observation_tokens": 32,
                "action_tokens": A,
                "summary_tokens": S,
                "tool_s": mean_tool,
                "tool_s_dist": "exponential",
            },
            "architectures": [
                {"name": "KSO", "kind": "kso", "k": 2, "lag": 1, "retain": 1,
                 "agent": {"name": "agent"}, "memory": {"name": "memory"}}
            ],
        }
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    lat = {"agent": ConstantLatency(TAU), "memory": ConstantLatency(TAU)}
    res = run_architecture(scenario, scenario.architectures[0], scenario.workload.tasks(rng), lat)
    swaps = res.steps[res.steps["summary_swapped"]]
    return swaps["stall_s"].to_numpy()


@pytest.mark.parametrize("mean_tool", [0.1, 0.4, 1.0])
def test_mean_stall_between_jensen_and_scarf_and_on_the_exact_value(mean_tool):
    # summary S*tau runs while the next step does A*tau + tool, tool ~ Exp(mean_tool)
    d = (S - A) * TAU
    mu, sigma2 = d - mean_tool, mean_tool**2
    lower = float(jensen_lower(S * TAU, A * TAU + mean_tool))
    upper = float(scarf_upper(mu, sigma2))
    exact = d - mean_tool * (1 - math.exp(-d / mean_tool))  # E[(d - e)^+], e ~ Exp
    means = np.array([_kso_stalls(mean_tool, seed).mean() for seed in range(20)])
    half = stats.t.ppf(0.995, means.size - 1) * means.std(ddof=1) / math.sqrt(means.size)
    assert lower - half <= means.mean() <= upper + half
    assert abs(means.mean() - exact) <= half, (means.mean(), exact, half)
    assert lower <= exact <= upper  # the bounds bracket the truth


def test_masking_lag_and_cantelli():
    # steps of 1 s, a summary of 2.5 s: lag 3 hides it in expectation
    assert masking_lag(1.0, 2.5) == 3
    # with noisy steps, probability 0.95 needs more lag
    lag95 = masking_lag(1.0, 2.5, var_step=0.25, var_summary=0.25, eps=0.05)
    assert lag95 is not None and lag95 > 3
    mu = 2.5 - lag95
    assert cantelli_stall_probability(mu, 0.25 + lag95 * 0.25) <= 0.05
    assert cantelli_stall_probability(0.5, 1.0) == 1.0
    assert masking_lag(0.0, 1.0, max_lag=50) is None


def test_kv_capacity_and_crossover():
    fc = fc_peak_context(512, 512, 1024, 64)
    kso = kso_peak_context(512, 512, 1024, 2048, k=4, retain=4, lag=1)
    assert fc == 512 + 64 * 1536 and kso < fc
    # GLM-4.7 fp8 TP4 on H200 holds ~494k tokens: 5 full contexts, 26 KSO contexts
    assert max_agents(494_620, fc) == 5
    assert max_agents(494_620, kso) > 4 * max_agents(494_620, fc)
    agents = np.array([1, 2, 4, 8, 16])
    assert crossover_agents(np.array([1, 2, 4, 8, 16.0]), np.array([2, 3, 4, 5, 6.0]), agents) == 8
    assert crossover_agents(np.ones(5), np.full(5, 2.0), agents) is None


# --- properties (simulator) -----------------------------------------------------------------


def _kso_stall_total(lag: int, tool: float = 0.0) -> float:
    scenario = Scenario.model_validate(
        {
            "workload": {"agents": 1, "steps": 24, "system_tokens": 64, "observation_tokens": 32,
                         "action_tokens": A, "summary_tokens": S, "tool_s": tool},
            "architectures": [
                {"name": "KSO", "kind": "kso", "k": 4, "lag": lag, "retain": 1,
                 "agent": {"name": "agent"}, "memory": {"name": "memory"}}
            ],
        }
    )  # fmt: skip
    lat = {"agent": ConstantLatency(TAU), "memory": ConstantLatency(TAU)}
    res = run_architecture(scenario, scenario.architectures[0], scenario.workload.tasks(None), lat)
    return float(res.steps["stall_s"].sum())


def test_stall_is_non_increasing_in_lag_and_zero_once_masked():
    stalls = [_kso_stall_total(lag) for lag in range(4)]
    assert all(b <= a + 1e-12 for a, b in zip(stalls, stalls[1:], strict=False))
    assert stalls[0] > 0
    # the masking condition: lag steps of A * tau cover a summary of S * tau
    lag = masking_lag(A * TAU, S * TAU)
    assert lag == 3 and _kso_stall_total(lag) <= 1e-12  # exactly masked (up to rounding)
    assert _kso_stall_total(lag - 1) > 0.0


@pytest.mark.slow
def test_full_context_latency_non_decreasing_in_agents():
    from sim.scenario import load_scenario, run_scenario

    means = []
    for n in (1, 2, 4, 8, 16):
        scenario = load_scenario(
            "scenarios/paper_latency_deepswe.toml",
            [f"workload.agents={n}", "workload.steps=8"],
        )
        fc = run_scenario(scenario).results[0]
        means.append(fc.tasks["latency_s"].mean())
    assert all(b >= a * (1 - 1e-12) for a, b in zip(means, means[1:], strict=False))


@pytest.mark.slow
def test_crossover_concurrency_agrees_with_the_simulator():
    """Theory (lockstep forms + FC's KV limit) puts DeepSWE's crossover near 22 agents;
    the simulator has FC ahead well below it and KSO ahead well above it."""
    from calibration import LatencyModel
    from calibration.surrogate import fit_surrogate
    from sim.scenario import load_scenario, run_scenario
    from theory.bounds import crossover_concurrency

    def coeffs(model, tp):
        lm = LatencyModel(model, "h100_sxm", tp, "bf16")
        return fit_surrogate(lm).coefficients, lm.kv_capacity_tokens()

    fc, cap = coeffs("deepswe", 8)
    kso, _ = coeffs("deepswe", 4)
    mem, _ = coeffs("qwen3-4b", 4)
    params = dict(system=512, observation=512, action=1024, summary=2048, tool_s=0.0,
                  steps=64, k=4, retain=4, lag=1)  # fmt: skip
    n_star = crossover_concurrency(params, fc, kso, mem, cap)["crossover"]
    assert n_star is not None and 8 < n_star < 48
    for agents, kso_wins in ((n_star // 2, False), (2 * n_star, True)):
        scenario = load_scenario(
            "scenarios/paper_latency_deepswe.toml", [f"workload.agents={agents}"]
        )
        speedup = run_scenario(scenario).summary()["speedup_vs_fc"]["KSO"]
        assert (speedup > 1.0) == kso_wins, (agents, speedup)


# --- the planner's helpers: vectorized over candidates, consistent with each other -------


def _masking_lag_loop(m, s, vx, vs, eps, max_lag):
    """The definition, lag by lag (the reference for the closed form)."""
    for lag in range(max_lag + 1):
        mu = s - lag * m
        if eps is None:
            if mu <= 0:
                return lag
        elif cantelli_stall_probability(mu, vs + lag * vx) <= eps:
            return lag
    return NONE


@pytest.mark.parametrize("eps", [None, 0.3, 0.05, 0.001])
def test_masking_lags_closed_form_equals_the_definition(eps):
    rng = np.random.default_rng(0 if eps is None else int(1 / eps))
    n = 400
    m = np.where(rng.random(n) < 0.05, 0.0, rng.uniform(0.01, 5.0, n))
    s = np.where(rng.random(n) < 0.05, 0.0, rng.uniform(0.0, 40.0, n))
    m[:5], s[:5] = 1.0, np.array([0.0, 1.0, 2.0, 3.0, 2.5])  # exact multiples
    vx = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0, 4, n))
    vs = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0, 9, n))
    got = masking_lags(m, s, vx, vs, eps, max_lag=300)
    want = [_masking_lag_loop(*x, eps, 300) for x in zip(m, s, vx, vs, strict=True)]
    np.testing.assert_array_equal(got, want)
    assert (got == NONE).any() and (got > 0).any()
    assert masking_lag(float(m[7]), float(s[7]), float(vx[7]), float(vs[7]), eps, 300) == (
        None if want[7] == NONE else want[7]
    )


def test_max_agents_is_vectorized():
    caps = np.array([494_620, 1_000_000, 10])
    ctx = np.array([98_816, 11_776, 11])
    np.testing.assert_array_equal(max_agents(caps, ctx), [5, 84, 0])
    assert max_agents(494_620, 98_816) == 5 and isinstance(max_agents(494_620, 98_816), int)


def test_crossover_concurrencies_vectorized_and_below_the_kv_limit():
    from theory.single_agent import AgentParams, lockstep_coefficients, step_timeline

    fc_c = np.array([4e-3, 1.5e-5, 1e-9, 3e-5, 2e-8])
    kso_c = np.array([5e-3, 2.5e-5, 1.2e-9, 5e-5, 3e-8])
    mem_c = np.array([2e-3, 5e-6, 3e-10, 1e-5, 5e-9])
    params = {
        "system": np.array([512, 512, 2048, 256]),
        "observation": np.array([512, 128, 512, 1024]),
        "action": np.array([1024, 256, 512, 64]), "summary": 2048,
        "tool_s": np.array([0.0, 1.0, 5.0, 0.5]),
        "steps": 24, "k": np.array([4, 2, 8, 3]), "retain": 4, "lag": np.array([1, 2, 1, 0]),
    }  # fmt: skip
    capacity = np.array([200_000, 60_000, 2_000_000, 30_000])
    c = crossover_concurrencies(params, fc_c, kso_c, mem_c, capacity, max_agents_scan=64)
    assert (c.crossover <= c.fc_kv_limit + 1).all()
    np.testing.assert_array_equal(
        c.fc_kv_limit,
        max_agents(capacity, fc_peak_context(params["system"], params["observation"],
                                             params["action"], 24)),
    )  # fmt: skip
    for j in range(4):  # each candidate against the step-by-step forms
        one = {k: (v[j] if isinstance(v, np.ndarray) else v) for k, v in params.items()}
        n = np.arange(1, 65)
        p = AgentParams(
            system=np.full(64, one["system"]), observation=np.full(64, one["observation"]),
            action=np.full(64, one["action"]), summary=np.full(64, one["summary"]),
            tool_s=np.full(64, one["tool_s"]), steps=24, k=np.full(64, one["k"]),
            retain=np.full(64, one["retain"]), lag=np.full(64, one["lag"]),
        )  # fmt: skip
        fc = step_timeline("fc", p, lockstep_coefficients(fc_c, n)).latency.sum(0)
        kso = step_timeline(
            "kso", p, lockstep_coefficients(kso_c, n), lockstep_coefficients(mem_c, n)
        ).latency.sum(0)
        want = crossover_agents(fc, kso, n)
        assert c.lockstep[j] == (NONE if want is None else want)
        scalar = crossover_concurrency(one, fc_c, kso_c, mem_c, capacity[j], 64)
        assert scalar["lockstep"] == want and scalar["crossover"] == c.crossover[j]
    assert (c.lockstep == NONE).any() or (c.lockstep > 1).any()


def test_memory_server_sizing_is_the_masking_condition_at_lag_k():
    """A memory engine keeps up with n lockstep agents exactly when the lag that masks
    their summaries (in expectation) is at most k; the sizing is the largest such
    prefix of n. Random candidates, against the brute force."""
    from theory.network import memory_server_agents
    from theory.single_agent import lockstep_parts

    rng = np.random.default_rng(3)
    n_cand = 60
    k = rng.integers(1, 9, n_cand)
    agent_c = np.array([5e-3, 2e-5, 1e-9, 5e-5, 3e-8]).reshape(5, 1) * rng.uniform(
        0.3, 3, (5, n_cand)
    )
    mem_c = np.array([2e-3, 5e-6, 3e-10, 1e-5, 5e-9]).reshape(5, 1) * rng.uniform(
        0.3, 30, (5, n_cand)
    )
    tool = rng.uniform(0, 3, n_cand)
    step_fixed, step_per = lockstep_parts(rng.integers(2000, 20000, n_cand),
                                          rng.integers(0, 1500, n_cand), 512, agent_c)  # fmt: skip
    step_fixed = step_fixed + tool
    sum_fixed, sum_per = lockstep_parts(rng.integers(5000, 60000, n_cand),
                                        rng.integers(0, 4000, n_cand), 1024, mem_c)  # fmt: skip
    cap = 400
    got = memory_server_agents(k, step_fixed, step_per, sum_fixed, sum_per, max_agents=cap)
    n = np.arange(1, cap + 1).reshape(-1, 1)
    lags = masking_lags(step_fixed + n * step_per, sum_fixed + n * sum_per)  # (n, cand)
    keeps = (lags != NONE) & (lags <= k)
    want = np.where(keeps.all(axis=0), cap, np.argmin(keeps, axis=0))
    np.testing.assert_array_equal(got, want)
    assert (got == 0).any() and (got == cap).any() and ((got > 0) & (got < cap)).any()
