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
swapped in lag steps after its launch), as in :mod:`sim.kso`; the forms are exact
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

    KSO with ``lag >= k``: summaries queue, as in :mod:`sim.kso` (each one is swapped
    in ``lag`` steps after its launch; none replaces another). Each memory job is priced
    alone on the memory engine, which is exact while an agent's jobs do not overlap (each
    ends before the next is launched); ``exact`` is False for the configurations where
    they do, and there the forms ignore that the memory engine batches them together.
    With ``lag < k`` (the agent waits at the swap, before the next launch) they never do.
    """
    run = _Recurrence(p)
    for t in range(1, p.steps + 1):
        if kind == "kso":
            run.swap_in_due_summary(t)
        run.agent_request(t, agent)
        if kind == "fc" or t == p.steps:
            continue
        launch = (t % run.k) == 0
        if kind == "cp":
            run.compress_in_place(t, launch, agent)
        else:
            assert memory is not None
            run.memory_job(t, launch, kind, memory)
    return StepTimeline(run.lat + run.stall, run.stall, run.exact)


class _Recurrence:
    """The per-configuration state :func:`step_timeline` steps through: the agent's
    context, its cached prefix and clock, the memory model's cached history, and KSO's
    launched summaries (per launch step t, 1-based; row 0 unused: launched, when its
    summary is ready, the context it brings)."""

    def __init__(self, p: AgentParams) -> None:
        shape = np.broadcast(p.system, p.observation, p.action, p.summary, p.tool_s, p.k).shape
        n = shape if shape else (1,)
        self.p = p
        self.b = p.block
        self.s0 = np.broadcast_to(p.system, n).astype(float)
        self.o = np.broadcast_to(p.observation, n).astype(float)
        self.a = np.broadcast_to(p.action, n).astype(float)
        self.s = np.broadcast_to(p.summary, n).astype(float)
        self.e = np.broadcast_to(p.tool_s, n).astype(float)
        self.k = np.broadcast_to(p.k, n)
        self.retain = np.broadcast_to(p.retain, n)
        self.lag = np.broadcast_to(p.lag, n)
        self.raw = self.o + self.a  # tokens one finished step adds to the history
        self.fresh_hit = self.b * np.floor(self.s0 / self.b)
        self.lat = np.zeros((p.steps, *n))
        self.stall = np.zeros((p.steps, *n))
        self.ctx = self.s0.copy()  # context before the observation
        self.hit = np.zeros(n)  # cached tokens for the next prompt
        self.mem_cached = np.zeros(n)  # memory model: history cached from its previous job
        self.clock = np.zeros(n)  # the agent's time since the task started
        self.launched = np.zeros((p.steps + 1, *n), dtype=bool)
        self.ready_at = np.zeros((p.steps + 1, *n))
        self.brings = np.zeros((p.steps + 1, *n))
        self.last_ready = np.full(n, -np.inf)  # when the previous launch's job was ready
        self.exact = np.ones(n, dtype=bool)

    def swap_in_due_summary(self, t: int) -> None:
        """KSO, before step t: swap in the summary launched ``lag + 1`` steps earlier,
        waiting for it if it is not ready."""
        src = t - self.lag - 1  # the launch step whose summary is due now
        row = np.clip(src, 0, self.p.steps)[None]
        swap = (src >= 1) & np.take_along_axis(self.launched, row, 0)[0]
        wait = np.where(
            swap, np.maximum(0.0, np.take_along_axis(self.ready_at, row, 0)[0] - self.clock), 0.0
        )
        self.stall[t - 1] += wait
        self.clock += wait
        self.ctx = np.where(swap, np.take_along_axis(self.brings, row, 0)[0], self.ctx)
        self.hit = np.where(swap, self.fresh_hit, self.hit)

    def agent_request(self, t: int, agent: np.ndarray) -> None:
        """Step t's request on the agent engine, then its tool call."""
        b = self.b
        prompt = self.ctx + self.o
        # vLLM recomputes at least the last prompt token: whole blocks below it
        cached = np.minimum(self.hit, b * np.floor((prompt - 1) / b))
        req = request_latency(prompt, cached, self.a, agent)
        self.lat[t - 1] += req + self.e
        self.clock += req + self.e
        self.hit = b * np.floor((prompt + self.a - 1) / b)
        self.ctx = prompt + self.a

    def _kept(self, t: int) -> np.ndarray:
        """The context after a summary at step t: system, summary, the retained steps."""
        return self.s0 + self.s + np.minimum(self.retain, t) * self.raw

    def compress_in_place(self, t: int, launch: np.ndarray, agent: np.ndarray) -> None:
        """CP: where ``launch``, the agent engine summarizes its own context, stalling."""
        m = request_latency(self.ctx + self.p.instruction, self.hit, self.s, agent)
        self.stall[t - 1] += np.where(launch, m, 0.0)
        self.clock += np.where(launch, m, 0.0)
        self.ctx = np.where(launch, self._kept(t), self.ctx)
        self.hit = np.where(launch, self.fresh_hit, self.hit)

    def memory_job(self, t: int, launch: np.ndarray, kind: str, memory: np.ndarray) -> None:
        """SM / KSO: where ``launch``, the memory engine summarizes the history; SM waits
        for it, KSO launches it and swaps it in ``lag`` steps later."""
        history = self.s0 + t * self.raw
        q = history + self.p.instruction
        m = request_latency(q, self.mem_cached, self.s, memory)
        self.mem_cached = np.where(launch, self.b * np.floor(history / self.b), self.mem_cached)
        if kind == "sm":
            self.stall[t - 1] += np.where(launch, m, 0.0)
            self.clock += np.where(launch, m, 0.0)
            self.ctx = np.where(launch, self._kept(t), self.ctx)
            self.hit = np.where(launch, self.fresh_hit, self.hit)
        else:  # kso
            self.exact &= ~(launch & (self.last_ready > self.clock))
            self.launched[t] = launch
            self.ready_at[t] = self.clock + m
            self.brings[t] = self._kept(t) + self.lag * self.raw
            self.last_ready = np.where(launch, self.clock + m, self.last_ready)


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
