"""Stall bounds, masking, KV capacity and the FC/KSO crossover (DESIGN.md "Theory").

A KSO summary launched after step t runs for S while the agent does X (the ``lag``
overlapped steps, tool time included); the agent then stalls ``W = (S - X)^+``.

- Jensen: ``E[W] >= (E[S] - E[X])^+`` (``x -> x^+`` is convex).
- Scarf / Lo: for any distribution of ``Y = S - X`` with mean mu and variance sigma^2,
  ``E[Y^+] <= (mu + sqrt(mu^2 + sigma^2)) / 2``.
- Masking: in expectation, the smallest lag with ``E[X] >= E[S]``; with probability
  ``1 - eps``, Cantelli's ``P(Y > 0) <= sigma^2 / (sigma^2 + mu^2)`` for mu < 0.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

ES, EX = sp.symbols("E_S E_X", nonnegative=True)
MU, SIGMA2, EPS = sp.symbols("mu sigma^2 epsilon", real=True)
JENSEN_LOWER = sp.Max(0, ES - EX)
SCARF_UPPER = (MU + sp.sqrt(MU**2 + SIGMA2)) / 2
CANTELLI = SIGMA2 / (SIGMA2 + MU**2)

jensen_lower = sp.lambdify((ES, EX), JENSEN_LOWER, "numpy")
scarf_upper = sp.lambdify((MU, SIGMA2), SCARF_UPPER, "numpy")


def cantelli_stall_probability(mu: float, sigma2: float) -> float:
    """Upper bound on P(stall > 0) when the summary is expected to finish first (mu < 0)."""
    if mu >= 0:
        return 1.0
    return float(sigma2 / (sigma2 + mu * mu)) if sigma2 > 0 else 0.0


def masking_lag(
    mean_step: float,
    mean_summary: float,
    var_step: float = 0.0,
    var_summary: float = 0.0,
    eps: float | None = None,
    max_lag: int = 10_000,
) -> int | None:
    """Smallest lag whose overlapped steps hide the summary: in expectation (``eps`` None),
    or with probability >= 1 - eps by Cantelli (independent steps). None if none does."""
    for lag in range(max_lag + 1):
        mu = mean_summary - lag * mean_step
        if eps is None:
            if mu <= 0:
                return lag
        elif cantelli_stall_probability(mu, var_summary + lag * var_step) <= eps:
            return lag
    return None


def fc_peak_context(system: float, obs: float, action: float, steps: int) -> float:
    """KV tokens one full-context agent holds at its last step."""
    return system + steps * (obs + action)


def kso_peak_context(
    system: float, obs: float, action: float, summary: float, k: int, retain: int, lag: int
) -> float:
    """KV tokens a KSO agent holds at most: summary plus retained, lagged and new steps."""
    return system + summary + (retain + lag + k) * (obs + action)


def max_agents(kv_capacity_tokens: float, context_tokens: float) -> int:
    """Concurrent agents whose contexts all fit the KV cache at once."""
    return int(math.floor(kv_capacity_tokens / context_tokens))


def crossover_agents(
    fc_latency: np.ndarray, kso_latency: np.ndarray, agents: np.ndarray
) -> int | None:
    """Smallest concurrency at which KSO's task latency is below FC's (None if never)."""
    better = np.asarray(kso_latency) < np.asarray(fc_latency)
    idx = np.flatnonzero(better)
    return int(np.asarray(agents)[idx[0]]) if idx.size else None
