"""Efficiency-effectiveness: task latency against solved tasks, CP vs KSO.

Effectiveness is the resolve rate of the fitted model (:mod:`sim.effectiveness`, fitted on
"The Complexity Trap" SWE-bench runs; its coefficients come in as numbers, a
:class:`LogitEffect`, so this package imports nothing outside itself):

    p(k, M) = sigmoid(logit(p0) + q (b_0 + b_m / (1 + M)) / (k c)),  c = sqrt(1 + pi s^2 / 8)

``p0`` the raw (full-context) agent's rate, ``k`` steps per summary, ``M`` raw steps kept
after a summary, ``q`` the summarizer's loss scale, ``s`` the instances' log-odds SD.
With ``b_0 + b_m / (1 + M) < 0`` (fitted: both negative) it rises with ``k`` and ``M``.

KSO(k, lag, retain) keeps ``retain + lag`` raw steps after a swap (the lagged steps ran
on the old context), CP(k, retain) keeps ``retain``; at equal ``k`` KSO is at least as
effective iff its memory model's loss scale satisfies (:data:`QUALITY_BOUND`)

    q_memory / q_agent <= (b_0 + b_m / (1 + retain)) / (b_0 + b_m / (1 + retain + lag))

whatever ``k`` (both losses scale with 1/k). KSO dominates CP in both when, besides, its
task latency is not higher: its stalls plus its swap prefills cost no more than CP's
blocking summaries (the latency closed forms, :mod:`theory.single_agent`).

The frontier across k and throughput (:func:`frontier_points`): for N agents in
lockstep, task latency from the closed forms with lockstep coefficients, resolve rate
from ``p(k, M)``. The former proxy ``E(s, r) = 1 - 2^(-s/1024) 2^(-r/2)`` (information
kept, in [0, 1]) remains as a named alternative, :func:`proxy_effectiveness`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp

S, R, S_HALF, R_HALF = sp.symbols("s r s_{1/2} r_{1/2}", positive=True)
#: the former proxy (information kept), a named alternative to the fitted model
EFFECTIVENESS_PROXY = 1 - 2 ** (-S / S_HALF) * 2 ** (-R / R_HALF)

P0, K, M, SD = sp.symbols("p_0 k M s", positive=True)
B0, BM, Q, Q_MEM, Q_AGENT, LAG, RETAIN = sp.symbols("b_0 b_M q q_{mem} q_{agent} ell r", real=True)
#: the per-instance log-odds a policy loses (k steps per summary, M raw steps kept)
LOSS = Q * (B0 + BM / (1 + M)) / K
#: the resolve rate over instances (probit approximation of the logistic-normal mean)
RESOLVE_RATE = 1 / (1 + sp.exp(-(sp.log(P0 / (1 - P0)) + LOSS / sp.sqrt(1 + sp.pi * SD**2 / 8))))
#: KSO(k, lag, retain) at least as effective as CP(k, retain) iff q_mem / q_agent <= this
QUALITY_BOUND = (B0 + BM / (1 + RETAIN)) / (B0 + BM / (1 + RETAIN + LAG))

Effectiveness = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LogitEffect:
    """The fitted model's numbers (``sim/data/effectiveness_fit.json``'s estimate)."""

    b_0: float
    b_m: float
    instance_sd: float


def resolve_rate(
    baseline: float | np.ndarray,
    k: np.ndarray,
    raw_tail: np.ndarray,
    effect: LogitEffect,
    scale: float | np.ndarray = 1.0,
) -> np.ndarray:
    """:data:`RESOLVE_RATE` (vectorized); ``k = inf``: no summaries, the baseline."""
    k = np.asarray(k, dtype=float)
    m = np.asarray(raw_tail, dtype=float)
    loss = np.asarray(scale, dtype=float) * (effect.b_0 + effect.b_m / (1.0 + m)) / k
    c = math.sqrt(1.0 + math.pi * effect.instance_sd**2 / 8.0)
    p0 = np.asarray(baseline, dtype=float)
    return 1.0 / (1.0 + np.exp(-(np.log(p0 / (1.0 - p0)) + loss / c)))


def quality_bound(retain: np.ndarray, lag: np.ndarray, effect: LogitEffect) -> np.ndarray:
    """:data:`QUALITY_BOUND`: the largest memory/agent loss-scale ratio at which KSO is
    still at least as effective as CP at the same k (>= 1 when both terms lose)."""
    r = np.asarray(retain, dtype=float)
    lag_ = np.asarray(lag, dtype=float)
    return (effect.b_0 + effect.b_m / (1.0 + r)) / (effect.b_0 + effect.b_m / (1.0 + r + lag_))


def proxy_effectiveness(
    summary_tokens: np.ndarray, raw_steps: np.ndarray, s_half: float = 1024.0, r_half: float = 2.0
) -> np.ndarray:
    """The former proxy :data:`EFFECTIVENESS_PROXY` (vectorized), a named alternative."""
    s = np.asarray(summary_tokens, dtype=float)
    r = np.asarray(raw_steps, dtype=float)
    return 1.0 - np.exp2(-s / s_half) * np.exp2(-r / r_half)


def pareto_front(latency: np.ndarray, effect: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (lower-or-equal latency and
    higher-or-equal effectiveness, one strictly), sorted by latency."""
    lat = np.asarray(latency, dtype=float)
    eff = np.asarray(effect, dtype=float)
    order = np.lexsort((-eff, lat))  # by latency, best effectiveness first on ties
    front = []
    best = -np.inf
    for i in order:
        if eff[i] > best:
            front.append(i)
            best = eff[i]
    return np.asarray(front, dtype=int)


def kso_dominates_cp(
    kso_latency: np.ndarray,
    cp_latency: np.ndarray,
    k: np.ndarray,
    retain: np.ndarray,
    lag: np.ndarray,
    effect: LogitEffect,
    memory_scale: float = 1.0,
    agent_scale: float = 1.0,
) -> np.ndarray:
    """Elementwise: does KSO(k, lag, retain) dominate CP(k, retain) on both axes (task
    latency not higher, resolve rate not lower; the baseline cancels out)?"""
    r = np.asarray(retain, dtype=float)
    e_kso = resolve_rate(0.5, k, r + np.asarray(lag), effect, memory_scale)
    e_cp = resolve_rate(0.5, k, r, effect, agent_scale)
    return (np.asarray(kso_latency) <= np.asarray(cp_latency)) & (e_kso >= e_cp)


@dataclass(frozen=True)
class FrontierPoint:
    """One configuration on the efficiency-effectiveness plane."""

    kind: str
    k: float
    agents: int
    task_latency_s: float
    resolve_rate: float


def frontier_points(
    kind: str,
    params: object,
    agent_coeffs: np.ndarray,
    memory_coeffs: np.ndarray | None,
    agents: np.ndarray,
    baseline: float,
    effect: LogitEffect,
    scale: float = 1.0,
) -> list[FrontierPoint]:
    """Closed-form points for every k of ``params`` (a :class:`theory.single_agent.
    AgentParams` over configurations) and every agent count (lockstep): task latency
    and resolve rate. FC's resolve rate is the baseline."""
    from theory.single_agent import AgentParams, lockstep_coefficients, task_latency

    assert isinstance(params, AgentParams)
    out = []
    tail = params.retain + (params.lag if kind.startswith("kso") else 0)
    rate = (
        np.full(np.shape(params.k), baseline)
        if kind == "fc"
        else resolve_rate(baseline, params.k, tail, effect, scale)
    )
    for n in np.asarray(agents, dtype=int):
        mem = None if memory_coeffs is None else lockstep_coefficients(memory_coeffs, n)
        lat = task_latency(kind, params, lockstep_coefficients(agent_coeffs, n), mem)
        out += [
            FrontierPoint(kind, float(kk), int(n), float(t), float(e))
            for kk, t, e in zip(params.k, lat, rate, strict=True)
        ]
    return out
