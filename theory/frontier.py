"""Efficiency-effectiveness: task latency against retained information, CP vs KSO.

Effectiveness is a *proxy*, documented and replaceable (pass your own function):

    E(s, r) = 1 - 2^(-s / s_half) * 2^(-r / r_half)

the information the agent still has after summarizing, as two independent channels
that each saturate: a summary of ``s`` tokens (half the lost information recovered
per ``s_half`` tokens, default 1024) and ``r`` raw recent steps kept verbatim
(``r_half`` steps, default 2). Full context keeps everything (E = 1). Why this shape:
both channels have diminishing returns, neither alone reaches full recall, and it is
monotone in both, which is all the dominance results below use.

KSO keeps ``retain + lag`` raw steps after a swap (the lagged steps ran on the old
context and are appended verbatim) against CP's ``retain``, so at equal (k, s, retain)
its effectiveness is never lower; it dominates CP whenever its latency is not higher,
i.e. when its stalls plus its swap prefills cost no more than CP's blocking summaries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp

S, R, S_HALF, R_HALF = sp.symbols("s r s_{1/2} r_{1/2}", positive=True)
EFFECTIVENESS = 1 - 2 ** (-S / S_HALF) * 2 ** (-R / R_HALF)

Effectiveness = Callable[[np.ndarray, np.ndarray], np.ndarray]


def effectiveness(
    summary_tokens: np.ndarray, raw_steps: np.ndarray, s_half: float = 1024.0, r_half: float = 2.0
) -> np.ndarray:
    """The default proxy :data:`EFFECTIVENESS` (vectorized)."""
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
    summary_tokens: np.ndarray,
    retain: np.ndarray,
    lag: np.ndarray,
    effect: Effectiveness = effectiveness,
) -> np.ndarray:
    """Elementwise: does KSO(k, lag) dominate CP(k) at the same summary and retain?"""
    e_kso = effect(summary_tokens, np.asarray(retain) + np.asarray(lag))
    e_cp = effect(summary_tokens, np.asarray(retain))
    return (np.asarray(kso_latency) <= np.asarray(cp_latency)) & (e_kso >= e_cp)
