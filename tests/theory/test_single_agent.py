"""Rung 1 of the validation ladder: in the deterministic single-agent regime the
simulator equals the closed forms of ``theory.single_agent`` to 1e-9 relative."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from calibration.surrogate import LinearSurrogate, SurrogateLatency
from sim.scenario import Scenario, run_architecture
from theory.single_agent import (
    REQUEST_LATENCY,
    AgentParams,
    latex,
    step_latencies,
    step_timeline,
)

BIG = {"max_num_batched_tokens": 1 << 20, "max_num_seqs": 64, "max_model_len": 1 << 20}


def _surrogate(c):
    return LinearSurrogate(*c, mape=0.0, max_rel_error=0.0, p90_rel_error=0.0)


def simulate(kind, stepping, params, agent_c, memory_c, agents=1):
    memory = {"name": "memory", **BIG} if kind in ("sm", "kso") else None
    scenario = Scenario.model_validate(
        {
            "engine": {"stepping": stepping},
            "workload": {
                "agents": agents,
                "steps": params["steps"],
                "system_tokens": params["system"],
                "observation_tokens": params["observation"],
                "action_tokens": params["action"],
                "summary_tokens": params["summary"],
                "tool_s": params["tool"],
            },
            "architectures": [
                {
                    "name": kind,
                    "kind": kind,
                    "k": params["k"],
                    "lag": params["lag"],
                    "retain": params["retain"],
                    "summary_prompt_tokens": params["instruction"],
                    "agent": {"name": "agent", **BIG},
                    "memory": memory,
                }
            ],
        }
    )
    latency = {
        "agent": SurrogateLatency(_surrogate(agent_c)),
        "memory": SurrogateLatency(_surrogate(memory_c)),
    }
    res = run_architecture(
        scenario, scenario.architectures[0], scenario.workload.tasks(None), latency
    )
    return res.steps.sort_values(["step", "agent"])


def theory(kind, params, agent_c, memory_c):
    """Closed-form step latencies and stalls, and whether the forms are exact here."""
    p = AgentParams(
        system=np.array(params["system"]),
        observation=np.array(params["observation"]),
        action=np.array(params["action"]),
        summary=np.array(params["summary"]),
        tool_s=np.array(params["tool"]),
        steps=params["steps"],
        k=np.array(params["k"]),
        retain=np.array(params["retain"]),
        lag=np.array(params["lag"]),
        instruction=params["instruction"],
    )
    tl = step_timeline(kind, p, np.array(agent_c), np.array(memory_c))
    return tl.latency[:, 0], tl.stall[:, 0], bool(tl.exact[0])


COEFFS = st.tuples(
    st.floats(1e-4, 2e-2),
    st.floats(1e-7, 1e-4),
    st.floats(0.0, 1e-8),
    st.floats(0.0, 1e-4),
    st.floats(0.0, 1e-7),
)
PARAMS = st.fixed_dictionaries(
    {
        "steps": st.integers(1, 14),
        "system": st.integers(1, 3000),
        "observation": st.integers(1, 900),
        "action": st.integers(1, 120),
        "summary": st.integers(1, 300),
        "tool": st.sampled_from([0.0, 0.05, 0.7, 3.0]),
        "k": st.integers(1, 5),
        "retain": st.integers(0, 4),
        "lag": st.integers(0, 3),
        "instruction": st.integers(1, 100),
    }
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    kind=st.sampled_from(["fc", "cp", "sm", "kso"]),
    params=PARAMS,
    agent_c=COEFFS,
    memory_c=COEFFS,
    stepping=st.sampled_from(["event", "iteration"]),
)
def test_simulator_equals_closed_form(kind, params, agent_c, memory_c, stepping):
    lat, stall, exact = theory(kind, params, agent_c, memory_c)
    # the regime: lag < k always; lag >= k (summaries queue) while memory jobs of the
    # agent do not overlap on the memory engine
    assume(exact)
    steps = simulate(kind, stepping, params, agent_c, memory_c)
    np.testing.assert_allclose(steps["step_latency_s"], lat, rtol=1e-9, atol=0)
    np.testing.assert_allclose(steps["stall_s"], stall, rtol=1e-9, atol=1e-12)


def test_closed_form_is_exportable_and_vectorized():
    assert "c_{4}" in latex()
    assert REQUEST_LATENCY.free_symbols  # a real sympy expression
    n = 1000
    p = AgentParams(
        system=np.full(n, 512),
        observation=np.full(n, 512),
        action=np.full(n, 1024),
        summary=np.full(n, 2048),
        tool_s=np.linspace(0, 5, n),
        steps=16,
        k=np.full(n, 4),
        retain=np.full(n, 4),
        lag=np.full(n, 1),
    )
    coeffs = np.array([5e-3, 2e-5, 1e-9, 5e-5, 3e-8])
    lat, stall = step_latencies("kso", p, coeffs, coeffs)
    assert lat.shape == (16, n) and (stall >= 0).all()
    # more tool time masks more of the summary: stall is non-increasing in it
    assert (np.diff(stall.sum(axis=0)) <= 1e-12).all()


@pytest.mark.parametrize("kind", ["cp", "sm", "kso"])
def test_summaries_bound_the_context_fc_does_not(kind):
    p = AgentParams(
        system=np.array(512), observation=np.array(512), action=np.array(1024),
        summary=np.array(2048), tool_s=np.array(0.0), steps=64, k=np.array(4),
        retain=np.array(4), lag=np.array(1),
    )  # fmt: skip
    coeffs = np.array([5e-3, 2e-5, 1e-9, 5e-5, 3e-8])
    fc, _ = step_latencies("fc", p, coeffs, coeffs)
    other, _ = step_latencies(kind, p, coeffs, coeffs)
    # FC's step latency grows with the context; the others' late steps stay bounded
    assert fc[-1, 0] > fc[0, 0]
    assert other[-1, 0] < fc[-1, 0]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    kind=st.sampled_from(["fc", "cp", "sm", "kso"]),
    params=PARAMS,
    agent_c=COEFFS,
    memory_c=COEFFS,
    agents=st.integers(2, 9),
)
def test_lockstep_agents_equal_the_scaled_closed_form(kind, params, agent_c, memory_c, agents):
    from theory.single_agent import lockstep_coefficients

    lat, _, exact = theory(
        kind,
        params,
        tuple(lockstep_coefficients(np.array(agent_c), agents)),
        tuple(lockstep_coefficients(np.array(memory_c), agents)),
    )
    assume(exact)
    steps = simulate(kind, "event", params, agent_c, memory_c, agents)
    for agent in range(agents):
        mine = steps[steps["agent"] == agent]["step_latency_s"].to_numpy()
        np.testing.assert_allclose(mine, lat, rtol=1e-9)


@pytest.mark.parametrize("k,lag", [(1, 1), (1, 2), (2, 2), (2, 3)])
def test_queued_summaries_equal_the_closed_form(k, lag):
    """lag >= k: every summary is swapped in lag steps after its launch, in the simulator
    and in the closed forms alike (exact while the memory jobs do not overlap)."""
    params = {
        "steps": 12, "system": 700, "observation": 300, "action": 60, "summary": 40,
        "tool": 0.7, "k": k, "retain": 2, "lag": lag, "instruction": 30,
    }  # fmt: skip
    coeffs = (5e-3, 2e-5, 1e-9, 5e-5, 3e-8)
    lat, stall, exact = theory("kso", params, coeffs, coeffs)
    assert exact
    steps = simulate("kso", "event", params, coeffs, coeffs)
    launches = [t for t in range(1, 12) if t % k == 0]
    swaps = [t + lag + 1 for t in launches if t + lag + 1 <= 12]
    assert steps.index[steps["summary_swapped"]].tolist() == [s - 1 for s in swaps]
    np.testing.assert_allclose(steps["step_latency_s"], lat, rtol=1e-9)


def test_overlapping_memory_jobs_are_outside_the_exact_regime():
    params = {
        "steps": 8, "system": 700, "observation": 300, "action": 20, "summary": 400,
        "tool": 0.0, "k": 1, "retain": 2, "lag": 1, "instruction": 30,
    }  # fmt: skip
    coeffs = (5e-3, 2e-5, 1e-9, 5e-5, 3e-8)
    _, stall, exact = theory("kso", params, coeffs, coeffs)
    assert not exact and stall.sum() > 0  # each summary outlasts the next launch
    _, _, exact_k2 = theory("kso", {**params, "k": 2}, coeffs, coeffs)
    assert exact_k2  # lag < k: the agent waits before it launches again
