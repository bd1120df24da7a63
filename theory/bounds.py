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


def crossover_concurrency(
    params: dict[str, float],
    fc_coeffs: np.ndarray,
    kso_coeffs: np.ndarray,
    memory_coeffs: np.ndarray,
    fc_kv_capacity: float,
    max_agents_scan: int = 512,
) -> dict[str, int | None]:
    """Where KSO starts to beat FC as concurrency grows (N identical agents in lockstep).

    ``params``: system, observation, action, summary, tool_s, steps, k, retain, lag. The
    lockstep forms price both while the KV cache holds every context; past FC's
    KV limit FC preempts and recomputes (which they do not price), so the crossover is
    at most one past that limit. Returns the lockstep crossover, FC's KV limit, and
    the crossover with the limit applied.
    """
    from theory.single_agent import AgentParams, lockstep_coefficients, task_latency

    n = np.arange(1, max_agents_scan + 1)

    def full(key: str) -> np.ndarray:
        return np.full(n.size, params[key])

    p = AgentParams(
        system=full("system"),
        observation=full("observation"),
        action=full("action"),
        summary=full("summary"),
        tool_s=full("tool_s"),
        steps=int(params["steps"]),
        k=full("k").astype(int),
        retain=full("retain").astype(int),
        lag=full("lag").astype(int),
    )
    fc = task_latency("fc", p, lockstep_coefficients(fc_coeffs, n))
    kso = task_latency(
        "kso", p, lockstep_coefficients(kso_coeffs, n), lockstep_coefficients(memory_coeffs, n)
    )
    lockstep = crossover_agents(fc, kso, n)
    peak = fc_peak_context(
        params["system"], params["observation"], params["action"], int(params["steps"])
    )
    limit = max_agents(fc_kv_capacity, peak)
    candidates = [c for c in (lockstep, limit + 1) if c is not None]
    return {"lockstep": lockstep, "fc_kv_limit": limit, "crossover": min(candidates)}
