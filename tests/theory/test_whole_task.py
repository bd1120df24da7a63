"""The whole-task closed form equals the step-by-step forms (``step_timeline``) to
1e-12 relative, for every kind, over random configurations that differ in everything."""

from __future__ import annotations

import numpy as np
import pytest

from theory.single_agent import AgentParams, lockstep_coefficients, step_timeline, task_latency
from theory.whole_task import task_latencies


def _coeffs(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack(
        [
            rng.uniform(1e-4, 2e-2, n),
            rng.uniform(1e-7, 1e-4, n),
            rng.uniform(0.0, 1e-8, n),
            rng.uniform(0.0, 1e-4, n),
            rng.uniform(0.0, 1e-7, n),
        ]
    )


def _params(rng: np.random.Generator, n: int, steps: int, block: int) -> AgentParams:
    return AgentParams(
        system=rng.integers(1, 3000, n),
        observation=rng.integers(1, 900, n),
        action=rng.integers(1, 300, n),
        summary=rng.integers(1, 3000, n),
        tool_s=rng.choice([0.0, 0.05, 0.7, 3.0], n),
        steps=steps,
        k=rng.integers(1, 9, n),
        retain=rng.integers(0, 7, n),
        lag=rng.integers(0, 6, n),  # lag >= k too: queued summaries
        instruction=int(rng.integers(1, 100)),
        block=block,
    )


@pytest.mark.parametrize("kind", ["fc", "cp", "sm", "kso"])
@pytest.mark.parametrize("steps,block", [(1, 16), (2, 1), (9, 16), (64, 16), (33, 32)])
def test_whole_task_equals_the_step_by_step_forms(kind, steps, block):
    rng = np.random.default_rng([steps, block, len(kind)])
    n = 1500
    p = _params(rng, n, steps, block)
    agent, memory = _coeffs(rng, n), _coeffs(rng, n)
    agents = rng.integers(1, 64, n)  # N in lockstep, per configuration
    ref = step_timeline(
        kind, p, lockstep_coefficients(agent, agents), lockstep_coefficients(memory, agents)
    )
    got = task_latencies(kind, p, agent, memory, agents)
    np.testing.assert_allclose(got.latency, ref.latency.sum(0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.stall, ref.stall.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.exact, ref.exact)
    if kind == "kso" and steps > 2:
        assert (~got.exact).any() and got.exact.any()  # both regimes were exercised
    if kind != "fc" and steps > 2:
        assert (got.stall > 0).any()


def test_shapes_scalars_and_shared_coefficients():
    rng = np.random.default_rng(7)
    coeffs = np.array([5e-3, 2e-5, 1e-9, 5e-5, 3e-8])
    p = AgentParams(
        system=np.array(512), observation=np.array([[256], [512]]), action=np.array([64, 1024, 7]),
        summary=np.array(2048), tool_s=np.array(1.0), steps=16, k=np.array(4),
        retain=np.array(4), lag=np.array(1),
    )  # fmt: skip
    got = task_latencies("kso", p, coeffs, coeffs, agents=np.array([1, 8, 64]))
    assert got.latency.shape == (2, 3)
    ref = step_timeline(
        "kso",
        p,
        lockstep_coefficients(coeffs, np.array([1, 8, 64])),
        lockstep_coefficients(coeffs, np.array([1, 8, 64])),
    )
    np.testing.assert_allclose(got.latency, ref.latency.sum(0), rtol=1e-12)
    # single_agent.task_latency is the same evaluator
    np.testing.assert_array_equal(
        task_latency("fc", p, coeffs), task_latencies("fc", p, coeffs).latency
    )
    # per-configuration coefficients broadcast like any other field
    c = coeffs.reshape(5, 1) * rng.uniform(0.5, 2, (5, 3))
    got = task_latencies("fc", p, c)
    for j in range(3):
        one = task_latencies("fc", p, c[:, j]).latency[:, j]
        np.testing.assert_allclose(got.latency[:, j], one, rtol=1e-15)


def test_bad_arguments():
    p = AgentParams(
        system=np.array(1), observation=np.array(1), action=np.array(1), summary=np.array(1),
        tool_s=np.array(0.0), steps=4, k=np.array(1), retain=np.array(0), lag=np.array(0),
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown kind"):
        task_latencies("nope", p, np.ones(5))
    with pytest.raises(ValueError, match="memory-model coefficients"):
        task_latencies("kso", p, np.ones(5))
