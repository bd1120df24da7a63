"""Efficiency-effectiveness frontier: Pareto front, proxy, and KSO vs CP dominance."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.frontier import effectiveness, kso_dominates_cp, pareto_front
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


def test_proxy_saturates_and_is_monotone():
    s = np.array([0, 512, 1024, 4096, 8192])
    e = effectiveness(s, np.zeros(5))
    assert e[0] == 0 and np.all(np.diff(e) > 0) and e[-1] < 1
    assert effectiveness(np.array(1024), np.array(2)) == 0.75


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
    dom = kso_dominates_cp(kso.sum(0), cp.sum(0), p.summary, p.retain, p.lag)
    assert dom[-1]  # masked (no stall): KSO is faster and keeps more
    assert kso_stall[:, -1].sum() == 0
