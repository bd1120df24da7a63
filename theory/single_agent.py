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
``max(0, M - sum of the overlapped steps)``. With ``lag >= k`` summaries queue (each is
swapped in lag steps after its launch), as in :mod:`sim.policy`; the forms are exact
while an agent's memory jobs do not overlap, which :func:`step_timeline` reports.

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


@dataclass(frozen=True)
class StepTimeline:
    """Per-step latency and stall (steps x configs), and per configuration whether it is
    in the regime where they are exact (``exact``; see :func:`step_timeline`)."""

    latency: np.ndarray
    stall: np.ndarray
    exact: np.ndarray


def step_timeline(
    kind: str,
    p: AgentParams,
    agent: np.ndarray,
    memory: np.ndarray | None = None,
) -> StepTimeline:
    """Per-step latency and stall as the simulator records them, for every configuration.

    ``agent``/``memory``: surrogate coefficients (c0..c4) of the two engines.

    KSO with ``lag >= k``: summaries queue, as in :mod:`sim.policy` (each one is swapped
    in ``lag`` steps after its launch; none replaces another). Each memory job is priced
    alone on the memory engine, which is exact while an agent's jobs do not overlap (each
    ends before the next is launched); ``exact`` is False for the configurations where
    they do, and there the forms ignore that the memory engine batches them together.
    With ``lag < k`` (the agent waits at the swap, before the next launch) they never do.
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
    clock = np.zeros(n)  # the agent's time since the task started
    # KSO, per launch step (row t, 1-based; row 0 unused): launched, when its summary is
    # ready, the context it brings; and when the previous launch's job was ready
    launched = np.zeros((p.steps + 1, *n), dtype=bool)
    ready_at = np.zeros((p.steps + 1, *n))
    brings = np.zeros((p.steps + 1, *n))
    last_ready = np.full(n, -np.inf)
    exact = np.ones(n, dtype=bool)
    for t in range(1, p.steps + 1):
        if kind == "kso":
            src = t - lag - 1  # the launch step whose summary is due now
            row = np.clip(src, 0, p.steps)[None]
            swap = (src >= 1) & np.take_along_axis(launched, row, 0)[0]
            wait = np.where(
                swap, np.maximum(0.0, np.take_along_axis(ready_at, row, 0)[0] - clock), 0.0
            )
            stall[t - 1] += wait
            clock += wait
            ctx = np.where(swap, np.take_along_axis(brings, row, 0)[0], ctx)
            hit = np.where(swap, fresh_hit, hit)
        prompt = ctx + o
        # vLLM recomputes at least the last prompt token: whole blocks below it
        req = request_latency(prompt, np.minimum(hit, b * np.floor((prompt - 1) / b)), a, agent)
        lat[t - 1] += req + e
        clock += req + e
        hit = b * np.floor((prompt + a - 1) / b)
        ctx = prompt + a
        if kind == "fc" or t == p.steps:
            continue
        launch = (t % k) == 0
        history = s0 + t * raw
        kept = s0 + s + np.minimum(retain, t) * raw
        if kind == "cp":
            q = ctx + p.instruction
            m = request_latency(q, hit, s, agent)
            stall[t - 1] += np.where(launch, m, 0.0)
            clock += np.where(launch, m, 0.0)
            ctx = np.where(launch, kept, ctx)
            hit = np.where(launch, fresh_hit, hit)
        else:
            assert memory is not None
            q = history + p.instruction
            m = request_latency(q, mem_cached, s, memory)
            mem_cached = np.where(launch, b * np.floor(history / b), mem_cached)
            if kind == "sm":
                stall[t - 1] += np.where(launch, m, 0.0)
                clock += np.where(launch, m, 0.0)
                ctx = np.where(launch, kept, ctx)
                hit = np.where(launch, fresh_hit, hit)
            else:  # kso
                exact &= ~(launch & (last_ready > clock))
                launched[t] = launch
                ready_at[t] = clock + m
                brings[t] = kept + lag * raw
                last_ready = np.where(launch, clock + m, last_ready)
    return StepTimeline(lat + stall, stall, exact)


def step_latencies(
    kind: str,
    p: AgentParams,
    agent: np.ndarray,
    memory: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step latency (steps x configs) and stall, as the simulator records them
    (:func:`step_timeline`, which also says where they are exact)."""
    tl = step_timeline(kind, p, agent, memory)
    return tl.latency, tl.stall


def task_latency(
    kind: str, p: AgentParams, agent: np.ndarray, memory: np.ndarray | None = None
) -> np.ndarray:
    """Task latency (per configuration): the sum of its step latencies, in closed form
    (:func:`theory.whole_task.task_latencies`, equal to summing :func:`step_timeline`)."""
    from theory.whole_task import task_latencies

    return task_latencies(kind, p, agent, memory).latency


def lockstep_parts(
    prompt: np.ndarray, cached: np.ndarray, out: np.ndarray, coeffs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """N identical requests in lockstep take ``fixed + N * per_agent`` seconds (exactly:
    see :func:`lockstep_coefficients`); returns (fixed, per_agent). ``fixed`` is the
    per-iteration cost ``out * c0``, ``per_agent`` what one request adds to them."""
    c = np.asarray(coeffs, dtype=float)
    marginal = np.concatenate([np.zeros((1, *c.shape[1:])), c[1:]])
    fixed = np.asarray(out, dtype=float) * c[0]
    return fixed, request_latency(prompt, cached, out, marginal)


def lockstep_coefficients(coeffs: np.ndarray, agents: np.ndarray | int) -> np.ndarray:
    """Surrogate coefficients that price N identical agents in lockstep as one.

    N identical requests share every iteration (batch = N): the iteration costs
    ``c0 + N * (c1 tokens + c2 pairs + c3 decodes + c4 KV)`` of one of them, so the
    single-agent forms hold with (c0, N c1, N c2, N c3, N c4). ``coeffs``: shape (5,), or
    (5, ...) broadcasting with ``agents`` (per configuration). Valid while the N prompts
    fit one iteration's token budget, N <= max_num_seqs, and the KV cache holds them.
    """
    c = np.asarray(coeffs, dtype=float)
    n = np.asarray(agents, dtype=float)
    scale = np.stack([np.ones_like(n), n, n, n, n])
    if c.ndim == 1:  # one set of coefficients for every N
        c = c.reshape(5, *([1] * n.ndim))
    return c * scale
