"""Exact latency of one agent under FC, CP, SM and KSO(k, lag), in the linear surrogate.

Regime (the one the simulator must reproduce exactly): one agent, deterministic tokens
per step (system S0, observation o, action a, summary s, summary instruction q) and tool
time e; every prompt fits one prefill iteration (token budget >= prompt); KV never
runs out; block size b for prefix caching.

Per request (sympy, below): one prefill iteration of ``u = P - h`` new tokens over ``h``
cached tokens, which yields the first token, then ``a - 1`` decode iterations, the j-th
over ``P + j`` tokens of KV. Per step, the cached prefix is whole blocks of what the
previous request on the same context computed, ``h = b * floor((P_prev + a - 1) / b)``;
a fresh context (after a summary) hits only the shared system prompt,
``b * floor(S0 / b)``. The memory model's prompt is the history, cached up to the
history of its previous job. KSO: a summary launched after step t overlaps steps
t+1 .. t+lag and is swapped in before step t+lag+1; the agent stalls for
``max(0, M - sum of the overlapped steps)``.

The step recurrences are evaluated vectorized over configurations (numpy), so sweeps
cost microseconds per configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

# --- the per-request closed form ---------------------------------------------------------

c0, c1, c2, c3, c4 = sp.symbols("c_0 c_1 c_2 c_3 c_4", nonnegative=True)
P, h, A = sp.symbols("P h a", positive=True)
_j = sp.symbols("j", integer=True, positive=True)

_u = P - h
PREFILL = c0 + c1 * _u + c2 * _u * (h + (_u + 1) / 2)
DECODE = sp.summation(c0 + c1 + c3 + c4 * (P + _j), (_j, 1, A - 1))
#: seconds for a request with prompt P (h cached) generating a tokens, alone on its engine
REQUEST_LATENCY = sp.simplify(PREFILL + DECODE)

_request = sp.lambdify((P, h, A, c0, c1, c2, c3, c4), REQUEST_LATENCY, "numpy")


def request_latency(
    prompt: np.ndarray, cached: np.ndarray, out: np.ndarray, coeffs: np.ndarray
) -> np.ndarray:
    """Vectorized :data:`REQUEST_LATENCY`; ``coeffs`` is (c0..c4), shape (5,) or (5, n)."""
    return np.asarray(_request(prompt, cached, out, *coeffs), dtype=float)


def latex() -> str:
    """The per-request closed form as LaTeX."""
    return sp.latex(REQUEST_LATENCY)


# --- step recurrences -----------------------------------------------------------------------


@dataclass(frozen=True)
class AgentParams:
    """Arrays (or scalars) broadcast over configurations."""

    system: np.ndarray
    observation: np.ndarray
    action: np.ndarray
    summary: np.ndarray
    tool_s: np.ndarray
    steps: int
    k: np.ndarray
    retain: np.ndarray
    lag: np.ndarray
    instruction: int = 64
    block: int = 16


def step_latencies(
    kind: str,
    p: AgentParams,
    agent: np.ndarray,
    memory: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step latency (steps x configs) and stall, as the simulator records them.

    ``agent``/``memory``: surrogate coefficients (c0..c4) of the two engines.
    """
    shape = np.broadcast(p.system, p.observation, p.action, p.summary, p.tool_s, p.k).shape
    n = shape if shape else (1,)
    b = p.block
    s0 = np.broadcast_to(p.system, n).astype(float)
    o = np.broadcast_to(p.observation, n).astype(float)
    a = np.broadcast_to(p.action, n).astype(float)
    s = np.broadcast_to(p.summary, n).astype(float)
    e = np.broadcast_to(p.tool_s, n).astype(float)
    k = np.broadcast_to(p.k, n)
    retain = np.broadcast_to(p.retain, n)
    lag = np.broadcast_to(p.lag, n)
    raw = o + a  # tokens one finished step adds to the history
    fresh_hit = b * np.floor(s0 / b)

    lat = np.zeros((p.steps, *n))
    stall = np.zeros((p.steps, *n))
    ctx = s0.copy()  # context before the observation
    hit = np.zeros(n)  # cached tokens for the next prompt
    mem_cached = np.zeros(n)  # memory model: history cached from its previous job
    pending_m = np.zeros(n)  # KSO: duration of the job in flight
    pending_at = np.zeros(n, dtype=int)  # step before which it is swapped (0: none)
    pending_ctx = np.zeros(n)  # the context it brings
    overlapped = np.zeros(n)  # time the agent spent since the launch
    for t in range(1, p.steps + 1):
        if kind == "kso":
            swap = pending_at == t
            wait = np.where(swap, np.maximum(0.0, pending_m - overlapped), 0.0)
            stall[t - 1] += wait
            ctx = np.where(swap, pending_ctx, ctx)
            hit = np.where(swap, fresh_hit, hit)
            pending_at = np.where(swap, 0, pending_at)
        prompt = ctx + o
        # vLLM recomputes at least the last prompt token: whole blocks below it
        req = request_latency(prompt, np.minimum(hit, b * np.floor((prompt - 1) / b)), a, agent)
        lat[t - 1] += req + e
        hit = b * np.floor((prompt + a - 1) / b)
        ctx = prompt + a
        overlapped += req + e
        if kind == "fc" or t == p.steps:
            continue
        launch = (t % k) == 0
        history = s0 + t * raw
        kept = s0 + s + np.minimum(retain, t) * raw
        if kind == "cp":
            q = ctx + p.instruction
            m = request_latency(q, hit, s, agent)
            stall[t - 1] += np.where(launch, m, 0.0)
            ctx = np.where(launch, kept, ctx)
            hit = np.where(launch, fresh_hit, hit)
        else:
            assert memory is not None
            q = history + p.instruction
            m = request_latency(q, mem_cached, s, memory)
            mem_cached = np.where(launch, b * np.floor(history / b), mem_cached)
            if kind == "sm":
                stall[t - 1] += np.where(launch, m, 0.0)
                ctx = np.where(launch, kept, ctx)
                hit = np.where(launch, fresh_hit, hit)
            else:  # kso
                pending_m = np.where(launch, m, pending_m)
                pending_at = np.where(launch, t + lag + 1, pending_at)
                pending_ctx = np.where(launch, kept + lag * raw, pending_ctx)
                overlapped = np.where(launch, 0.0, overlapped)
    return lat + stall, stall


def task_latency(
    kind: str, p: AgentParams, agent: np.ndarray, memory: np.ndarray | None = None
) -> np.ndarray:
    """Task latency (per configuration): the sum of its step latencies."""
    lat, _ = step_latencies(kind, p, agent, memory)
    return lat.sum(axis=0)


def lockstep_coefficients(coeffs: np.ndarray, agents: np.ndarray | int) -> np.ndarray:
    """Surrogate coefficients that price N identical agents in lockstep as one.

    N identical requests share every iteration (batch = N): the iteration costs
    ``c0 + N * (c1 tokens + c2 pairs + c3 decodes + c4 KV)`` of one of them, so the
    single-agent forms hold with (c0, N c1, N c2, N c3, N c4). Valid while the N prompts
    fit one iteration's token budget, N <= max_num_seqs, and the KV cache holds them.
    """
    c = np.asarray(coeffs, dtype=float)
    n = np.asarray(agents, dtype=float)
    scale = np.stack([np.ones_like(n), n, n, n, n])
    return c.reshape(5, *([1] * n.ndim)) * scale
