"""Agents as a closed network: N agents cycle between the engine (a step's LLM call)
and the tool (think time Z). Bounds that hold for a batching engine, and sizing.

- Little's law for the closed system: ``N = X (R + Z)`` with X steps/s, R the mean
  step's LLM + stall time, Z the mean tool time.
- Optimistic (Denning-Buzen) bound: no agent cycles faster than alone,
  ``X(N) <= N / (R1 + Z)`` and ``R(N) >= R1``. The pessimistic classic bound
  ``X <= 1 / D_max`` assumes a non-batching server and does not apply to an engine
  whose iteration serves a whole batch; the batch-aware one is future work.
- Memory-server sizing: a memory engine keeps up with N agents if the summaries of N
  agents launched together (lockstep) finish within one summary period, ``M(N) <= k T``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp

N, X, R, Z, R1 = sp.symbols("N X R Z R_1", positive=True)
LITTLE = sp.Eq(N, X * (R + Z))
THROUGHPUT_UPPER = N / (R1 + Z)


def throughput_upper(agents: np.ndarray, solo_step_s: float, think_s: float) -> np.ndarray:
    """Steps/s N agents can at most complete (each at best as fast as alone)."""
    return np.asarray(agents, dtype=float) / (solo_step_s + think_s)


def little_population(throughput: float, response_s: float, think_s: float) -> float:
    """The population Little's law implies: ``X (R + Z)``."""
    return throughput * (response_s + think_s)


def memory_server_agents(
    summary_period_s: float, lockstep_summary_s: Callable[[int], float], max_agents: int = 4096
) -> int:
    """Largest N whose lockstep summaries (``lockstep_summary_s(N)`` seconds) finish
    within one summary period (k steps); 0 if not even one agent's does."""
    best = 0
    for n in range(1, max_agents + 1):
        if lockstep_summary_s(n) <= summary_period_s:
            best = n
        else:
            break
    return best
