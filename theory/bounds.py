"""Stall bounds, masking, KV capacity and the FC/KSO crossover (DESIGN.md "Theory").

A KSO summary launched after step t runs for S while the agent does X (the ``lag``
overlapped steps, tool time included); the agent then stalls ``W = (S - X)^+``.

- Jensen: ``E[W] >= (E[S] - E[X])^+`` (``x -> x^+`` is convex).
- Scarf / Lo: for any distribution of ``Y = S - X`` with mean mu and variance sigma^2,
  ``E[Y^+] <= (mu + sqrt(mu^2 + sigma^2)) / 2``.
- Masking: in expectation, the smallest lag with ``E[X] >= E[S]``; with probability
  ``1 - eps``, Cantelli's ``P(Y > 0) <= sigma^2 / (sigma^2 + mu^2)`` for mu < 0.

The helpers a planner prunes with (masking lag, KV limit on agents, crossover
concurrency; memory-server sizing is in :mod:`theory.network`) take arrays of
candidates and return arrays (:data:`NONE` where no value exists); the scalar forms
are thin wrappers. They agree with each other (``tests/theory/test_bounds.py``): the
crossover is at most one past FC's KV limit, and a memory server keeps up with N
lockstep agents exactly when the lag that masks their summaries is at most k.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


#: what the vectorized helpers return where no value exists (no lag masks the summary,
#: no crossover within the scan)
NONE = -1


def _masked(
    lag: np.ndarray,
    mean_step: np.ndarray,
    mean_summary: np.ndarray,
    var_step: np.ndarray,
    var_summary: np.ndarray,
    eps: float | None,
) -> np.ndarray:
    """Does ``lag`` hide the summary (in expectation, or with probability >= 1 - eps)?"""
    mu = mean_summary - lag * mean_step
    if eps is None:
        return mu <= 0
    s2 = var_summary + lag * var_step
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(mu >= 0, 1.0, np.where(s2 > 0, s2 / (s2 + mu * mu), 0.0))
    return p <= eps


def masking_lags(
    mean_step: np.ndarray | float,
    mean_summary: np.ndarray | float,
    var_step: np.ndarray | float = 0.0,
    var_summary: np.ndarray | float = 0.0,
    eps: float | None = None,
    max_lag: int = 10_000,
) -> np.ndarray:
    """Smallest lag whose overlapped steps hide the summary, for arrays of candidates:
    in expectation (``eps`` None: ``E[S] - lag E[X] <= 0``), or with probability
    >= 1 - eps by Cantelli (independent steps); :data:`NONE` where no lag up to
    ``max_lag`` does.

    Closed form: ``ceil(E[S] / E[X])``; with eps, the larger root of
    ``(lag m - S)^2 = k (v_S + lag v_X)``, ``k = (1 - eps) / eps`` (past ``S / m``
    Cantelli's bound falls as the lag grows, so the condition holds from there on).
    Both are checked against the condition itself one lag either side (rounding).
    """
    m, s, vx, vs = np.broadcast_arrays(
        *(np.asarray(x, dtype=float) for x in (mean_step, mean_summary, var_step, var_summary))
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        if eps is None:
            guess = np.ceil(s / m)
        else:
            kappa = (1.0 - eps) / eps
            b = 2 * s * m + kappa * vx
            disc = np.maximum(b * b - 4 * m * m * (s * s - kappa * vs), 0.0)
            guess = np.ceil((b + np.sqrt(disc)) / (2 * m * m))
    guess = np.where(np.isfinite(guess) & (m > 0), guess, 0.0)
    lag = np.clip(guess, 0, max_lag + 1).astype(np.int64)
    for _ in range(2):  # rounding: step down while the lag below also masks, up if not
        down = (lag > 0) & _masked(lag - 1, m, s, vx, vs, eps)
        lag = np.where(down, lag - 1, lag)
    up = ~_masked(lag, m, s, vx, vs, eps) & (lag <= max_lag)
    lag = np.where(up, lag + 1, lag)
    ok = (lag <= max_lag) & _masked(lag, m, s, vx, vs, eps)
    return np.where(ok, lag, NONE)


def masking_lag(
    mean_step: float,
    mean_summary: float,
    var_step: float = 0.0,
    var_summary: float = 0.0,
    eps: float | None = None,
    max_lag: int = 10_000,
) -> int | None:
    """:func:`masking_lags` for one candidate; None if no lag up to ``max_lag`` masks it."""
    lag = int(masking_lags(mean_step, mean_summary, var_step, var_summary, eps, max_lag))
    return None if lag == NONE else lag


def fc_peak_context(system: Any, obs: Any, action: Any, steps: int) -> Any:
    """KV tokens one full-context agent holds at its last step (numbers or arrays)."""
    return system + steps * (obs + action)


def kso_peak_context(
    system: Any, obs: Any, action: Any, summary: Any, k: Any, retain: Any, lag: Any
) -> Any:
    """KV tokens a KSO agent holds at most: summary plus retained, lagged and new steps
    (numbers or arrays)."""
    return system + summary + (retain + lag + k) * (obs + action)


def max_agents(kv_capacity_tokens: np.ndarray | float, context_tokens: np.ndarray | float) -> Any:
    """Concurrent agents whose contexts all fit the KV cache at once (an int, or an int
    array for arrays of candidates)."""
    n = np.floor_divide(np.asarray(kv_capacity_tokens, float), np.asarray(context_tokens, float))
    return int(n) if n.ndim == 0 else n.astype(np.int64)


def crossover_agents(
    fc_latency: np.ndarray, kso_latency: np.ndarray, agents: np.ndarray
) -> int | None:
    """Smallest concurrency at which KSO's task latency is below FC's (None if never)."""
    better = np.asarray(kso_latency) < np.asarray(fc_latency)
    idx = np.flatnonzero(better)
    return int(np.asarray(agents)[idx[0]]) if idx.size else None


@dataclass(frozen=True)
class Crossover:
    """Per candidate: the lockstep crossover (:data:`NONE` if KSO never wins within the
    scan), FC's KV limit on agents, and the crossover with that limit applied."""

    lockstep: np.ndarray
    fc_kv_limit: np.ndarray
    crossover: np.ndarray


PARAM_KEYS = (
    "system", "observation", "action", "summary", "tool_s", "steps", "k", "retain", "lag",
)  # fmt: skip


def crossover_concurrencies(
    params: Mapping[str, Any],
    fc_coeffs: np.ndarray,
    kso_coeffs: np.ndarray,
    memory_coeffs: np.ndarray,
    fc_kv_capacity: np.ndarray | float,
    max_agents_scan: int = 512,
) -> Crossover:
    """Where KSO starts to beat FC as concurrency grows (N identical agents in lockstep),
    for arrays of candidates (every value of ``params`` but ``steps``, and the KV
    capacity, broadcast together; ``steps`` is one number).

    ``params``: system, observation, action, summary, tool_s, steps, k, retain, lag. The
    lockstep forms price both while the KV cache holds every context; past FC's KV
    limit FC preempts and recomputes (which they do not price), so the crossover is at
    most one past that limit. Each candidate's latencies at N = 1 .. ``max_agents_scan``
    come from :func:`theory.whole_task.task_latencies` (one call for all).
    """
    from theory.single_agent import AgentParams
    from theory.whole_task import task_latencies

    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"crossover parameters lack {', '.join(missing)}")
    steps = int(params["steps"])
    values = np.broadcast_arrays(
        *(np.asarray(params[k], dtype=float) for k in PARAM_KEYS if k != "steps"),
        np.asarray(fc_kv_capacity, dtype=float),
    )
    names = [k for k in PARAM_KEYS if k != "steps"]
    cand = {k: v.reshape(1, -1) for k, v in zip(names, values[:-1], strict=True)}
    capacity = values[-1].reshape(-1)
    n = np.arange(1, max_agents_scan + 1).reshape(-1, 1)
    p = AgentParams(
        system=cand["system"],
        observation=cand["observation"],
        action=cand["action"],
        summary=cand["summary"],
        tool_s=cand["tool_s"],
        steps=steps,
        k=cand["k"],
        retain=cand["retain"],
        lag=cand["lag"],
    )
    fc = task_latencies("fc", p, fc_coeffs, agents=n).latency
    kso = task_latencies("kso", p, kso_coeffs, memory_coeffs, agents=n).latency
    better = kso < fc  # (agents, candidates)
    lockstep = np.where(better.any(axis=0), np.argmax(better, axis=0) + 1, NONE)
    peak = fc_peak_context(cand["system"], cand["observation"], cand["action"], steps)
    limit = np.asarray(max_agents(capacity, np.reshape(peak, -1)), dtype=np.int64)
    crossover = np.where(lockstep == NONE, limit + 1, np.minimum(lockstep, limit + 1))
    return Crossover(lockstep.astype(np.int64), limit, crossover.astype(np.int64))


def crossover_concurrency(
    params: dict[str, float],
    fc_coeffs: np.ndarray,
    kso_coeffs: np.ndarray,
    memory_coeffs: np.ndarray,
    fc_kv_capacity: float,
    max_agents_scan: int = 512,
) -> dict[str, int | None]:
    """:func:`crossover_concurrencies` for one candidate: the lockstep crossover (None
    if KSO never wins within the scan), FC's KV limit, and the crossover."""
    c = crossover_concurrencies(
        params, fc_coeffs, kso_coeffs, memory_coeffs, fc_kv_capacity, max_agents_scan
    )
    lockstep = int(c.lockstep[0])
    return {
        "lockstep": None if lockstep == NONE else lockstep,
        "fc_kv_limit": int(c.fc_kv_limit[0]),
        "crossover": int(c.crossover[0]),
    }
