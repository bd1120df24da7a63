"""Efficiency-effectiveness frontier: Pareto front, fitted resolve rate (and the former
proxy), KSO vs CP dominance, and simulated points against the closed-form frontier."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import effectiveness as ef
from theory import frontier
from theory.frontier import (
    LogitEffect,
    kso_dominates_cp,
    pareto_front,
    proxy_effectiveness,
    quality_bound,
    resolve_rate,
)
from theory.single_agent import AgentParams, step_latencies


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 1)), min_size=1, max_size=40))
def test_pareto_front_is_exactly_the_undominated_points(points):
    lat = np.array([p[0] for p in points])
    eff = np.array([p[1] for p in points])
    front = set(pareto_front(lat, eff).tolist())

    def dominated(i):
        return any(
            lat[j] <= lat[i] and eff[j] >= eff[i] and (lat[j] < lat[i] or eff[j] > eff[i])
            for j in range(len(points))
        )

    for i in range(len(points)):
        if i in front:
            assert not dominated(i)
        elif not any(lat[j] == lat[i] and eff[j] == eff[i] for j in front):
            assert dominated(i)


FIT = ef.load_fit()
EFFECT = LogitEffect(FIT.b_0, FIT.b_m, FIT.instance_sd)


def test_former_proxy_saturates_and_is_monotone():
    s = np.array([0, 512, 1024, 4096, 8192])
    e = proxy_effectiveness(s, np.zeros(5))
    assert e[0] == 0 and np.all(np.diff(e) > 0) and e[-1] < 1
    assert proxy_effectiveness(np.array(1024), np.array(2)) == 0.75


@settings(max_examples=50, deadline=None)
@given(p0=st.floats(0.05, 0.95), k=st.integers(1, 64), m=st.integers(0, 20), q=st.floats(0, 3))
@pytest.mark.slow
def test_closed_form_equals_the_symbolic_form_and_the_simulator_model(p0, k, m, q):
    """theory's numpy form, its sympy form and sim.effectiveness agree (one model)."""
    sym = float(
        frontier.RESOLVE_RATE.subs(
            {
                frontier.P0: p0,
                frontier.K: k,
                frontier.M: m,
                frontier.Q: q,
                frontier.B0: EFFECT.b_0,
                frontier.BM: EFFECT.b_m,
                frontier.SD: EFFECT.instance_sd,
            }
        ).evalf()
    )
    num = float(resolve_rate(p0, k, m, EFFECT, q))
    params = ef.EffectivenessParams(baseline_resolve_rate=p0, memory_loss_scale=q)
    sim = ef.resolve_rate(ef.PolicyFeatures(k, m, 0.0, "memory"), params, FIT).rate
    assert num == pytest.approx(sym, rel=1e-12)
    assert sim == pytest.approx(num, rel=1e-12)


def test_quality_bound_is_where_kso_stops_being_as_effective():
    bound = float(quality_bound(2, 1, EFFECT))
    assert bound >= 1.0
    sym = frontier.QUALITY_BOUND.subs(
        {frontier.B0: EFFECT.b_0, frontier.BM: EFFECT.b_m, frontier.RETAIN: 2, frontier.LAG: 1}
    )
    assert float(sp.N(sym)) == pytest.approx(bound)
    for k in (2, 8, 32):  # whatever k
        at = resolve_rate(0.4, k, 3, EFFECT, bound * 0.999)
        past = resolve_rate(0.4, k, 3, EFFECT, bound * 1.001)
        cp = resolve_rate(0.4, k, 2, EFFECT, 1.0)
        assert at >= cp > past


def test_kso_dominates_cp_when_the_summary_is_masked():
    """Long tool calls hide the summary: KSO pays only its swap prefill, CP blocks."""
    coeffs = np.array([5e-3, 2e-5, 1e-9, 5e-5, 3e-8])
    tools = np.array([0.0, 1.0, 30.0, 120.0])
    p = AgentParams(
        system=np.full(4, 512), observation=np.full(4, 512), action=np.full(4, 256),
        summary=np.full(4, 2048), tool_s=tools, steps=32, k=np.full(4, 4),
        retain=np.full(4, 2), lag=np.full(4, 1),
    )  # fmt: skip
    kso, kso_stall = step_latencies("kso", p, coeffs, coeffs)
    cp, _ = step_latencies("cp", p, coeffs, coeffs)
    dom = kso_dominates_cp(kso.sum(0), cp.sum(0), p.k, p.retain, p.lag, EFFECT)
    assert dom[-1]  # masked (no stall): KSO is faster and keeps more
    assert kso_stall[:, -1].sum() == 0


@settings(max_examples=12, deadline=None)
@given(
    k=st.integers(1, 6),
    retain=st.integers(0, 3),
    tool=st.sampled_from([0.0, 0.5, 5.0]),
    agents=st.integers(1, 3),
)
def test_simulated_points_lie_on_the_closed_form_frontier_side(k, retain, tool, agents):
    """CP and KSO simulated in the deterministic lockstep regime: each point's (task
    latency, resolve rate) is a closed-form point, so no simulated point is beyond the
    closed-form frontier of the k grid (none dominates a frontier point)."""
    from calibration.surrogate import LinearSurrogate, SurrogateLatency
    from sim.scenario import Scenario, ScenarioResult, run_architecture

    big = {"max_num_batched_tokens": 1 << 20, "max_num_seqs": 64, "max_model_len": 1 << 20}

    def surrogate_latency(c):
        return SurrogateLatency(LinearSurrogate(*c, mape=0.0, max_rel_error=0.0, p90_rel_error=0.0))

    coeffs = np.array([4e-3, 3e-5, 2e-9, 6e-5, 2e-8])
    base = dict(system=256, observation=128, action=32, summary=64, tool_s=tool, steps=12)
    grid = np.arange(1, 7)
    p = AgentParams(
        system=np.full(6, 256),
        observation=np.full(6, 128),
        action=np.full(6, 32),
        summary=np.full(6, 64),
        tool_s=np.full(6, tool),
        steps=12,
        k=grid,
        retain=np.full(6, retain),
        lag=np.ones(6, dtype=int),
        instruction=64,
    )
    lat, rate = [], []
    for kind in ("cp", "kso"):
        for pt in frontier.frontier_points(
            kind, p, coeffs, coeffs, np.array([agents]), 0.4, EFFECT
        ):
            lat.append(pt.task_latency_s)
            rate.append(pt.resolve_rate)
    lat_a, rate_a = np.array(lat), np.array(rate)
    front = pareto_front(lat_a, rate_a)
    for kind in ("cp", "kso"):
        scenario = Scenario.model_validate(
            {
                "effectiveness": {"baseline_resolve_rate": 0.4},
                "workload": {
                    "agents": agents,
                    "steps": base["steps"],
                    "system_tokens": 256,
                    "observation_tokens": 128,
                    "action_tokens": 32,
                    "summary_tokens": 64,
                    "tool_s": tool,
                },
                "architectures": [
                    {
                        "name": kind,
                        "kind": kind,
                        "k": k,
                        "lag": 1,
                        "retain": retain,
                        "agent": {"name": "agent", **big},
                        "memory": {"name": "memory", **big} if kind == "kso" else None,
                    }
                ],
            }
        )
        arch = scenario.architectures[0]
        res = run_architecture(
            scenario,
            arch,
            scenario.workload.tasks(None),
            {"agent": surrogate_latency(coeffs), "memory": surrogate_latency(coeffs)},
        )
        summary = ScenarioResult(scenario, [res]).summary()["architectures"][kind]
        sim_lat = float(res.tasks["latency_s"].mean())
        sim_rate = summary["resolve_rate"]
        i = list(grid).index(k) + (0 if kind == "cp" else len(grid))
        assert sim_rate == pytest.approx(rate_a[i], rel=1e-12)
        for f in front:  # beyond the frontier = strictly better in one, no worse in the other
            better = (sim_lat < lat_a[f] * (1 - 1e-6) and sim_rate >= rate_a[f]) or (
                sim_lat <= lat_a[f] * (1 - 1e-6) and sim_rate > rate_a[f] + 1e-12
            )
            assert not better
