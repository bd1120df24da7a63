"""Agents as a closed network: N agents cycle between the engine (a step's LLM call)
and the tool (think time Z). Bounds that hold for a batching engine, and sizing.

- Little's law for the closed system: ``N = X (R + Z)`` with X steps/s, R the mean
  step's LLM + stall time, Z the mean tool time.
- Optimistic (Denning-Buzen) bound: no agent cycles faster than alone,
  ``X(N) <= N / (R1 + Z)`` and ``R(N) >= R1``.

**Batch-aware bounds.** The classic pessimistic bound ``R <= N D`` (wait behind every
other job's whole demand D) and the heavy-load asymptote ``X <= 1 / D_max`` assume a
server that serves one job at a time. An engine iteration serves the whole batch, and
under the linear surrogate its time splits into a fixed ``c0`` and what each request
in it adds (``c1`` per token, ``c2`` per prefill pair, ``c3`` per decode, ``c4`` per
KV token read): so each request has a *marginal work* ``W`` (its
:data:`~theory.single_agent.REQUEST_LATENCY` less ``a c0``) that does not depend on the
batch, while ``c0`` is shared by everyone in the iteration. A request with ``a`` output
tokens is served in ``a`` iterations (one prefill, ``a - 1`` decodes), after waiting for
at most the iteration in flight when it arrives. Then:

- optimistic: every iteration lasts at least ``c0`` plus its own share, so
  ``R >= R1 = a c0 + W`` (alone). The engine's busy time bounds throughput: S steps
  need ``S a`` request-iterations, an iteration holds at most N, so the makespan is
  ``T >= S (a c0 / N + W_mean)`` and ``X <= N / (a c0 + N W_mean)``: the batch-aware
  ``1 / D_max``, which tends to ``1 / W_mean`` (not ``1 / (a c0 + W)``).
- pessimistic (mean): the time requests spend in the engine is the integral of how
  many are there. Over an iteration at most N are, each request is there for at most
  ``a + 1`` iterations (its own and the one in flight), and the iterations' marginal
  work adds up to ``S W_mean``; so ``sum R <= S (a + 1) c0 + N S W_mean``:

      R_mean <= (a + 1) c0 + N W_mean,     X >= N / ((a + 1) c0 + N W_mean + Z)

  (by Little's law). It is the classic ``R <= N D`` with D the marginal work and the
  fixed cost paid once per iteration, not once per agent. At heavy load it meets the
  optimistic asymptote: ``R_mean`` lies between ``a c0 + N W_mean - Z`` and it.
- pessimistic (every request): in any ``a`` consecutive iterations another agent has
  at most one prefill (its next one comes ``a`` iterations later at the earliest) and
  at most ``a`` iterations in all, so it adds at most ``(a - 1) d + max(p, d)`` (``p``
  its largest prefill work, ``d`` its largest decode work ``c1 + c3 + c4 (P_max + a -
  1)``), and ``max(p, d)`` to the iteration in flight:

      R <= (a + 1) c0 + W + (N - 1) ((a - 1) d + 2 max(p, d)).

  A worst case (the others prefill in the iteration in flight and again in the
  window): up to ~2x the mean bound where prefill dominates, close to it where
  decoding does.

Assumptions (those of the engine the bounds describe; :func:`bounds_apply` checks
them): every request generates the same ``a`` tokens; every iteration schedules every
request that is there (``N <= max_num_seqs``; all prompts fit one iteration's token
budget, ``N max(u_max, 1) <= max_num_batched_tokens``); the KV cache holds every
context and cached prefix (no preemption, no eviction); no per-request overhead outside
the iterations; one request per agent step (FC); the engine is priced by the linear
surrogate (``calibration.surrogate.SurrogateLatency``), which is what makes the work
additive. Cached prefixes enter as a range (``cached_low`` .. ``cached_high``: the
system prompt is cached once some agent has computed it): upper bounds take the least
cache, lower bounds the most. Little's law is exact for means over a long run; for a
finite run the mean-response bounds hold exactly, with X = N / (R_mean + Z_mean).

- Memory-server sizing: a memory engine keeps up with N agents if the summaries of N
  agents launched together (lockstep) finish within one summary period (k lockstep
  steps), ``M(N) <= k T(N)``: the masking condition of :mod:`theory.bounds` with lag k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from theory.single_agent import request_latency

N, X, R, Z, R1 = sp.symbols("N X R Z R_1", positive=True)
A_OUT, C0, W, P_MAX, D_MAX, W_MEAN = sp.symbols("a c_0 W p d W_mean", positive=True)
LITTLE = sp.Eq(N, X * (R + Z))
THROUGHPUT_UPPER = N / (R1 + Z)
#: the batch-aware heavy-load bound on throughput (engine busy time, shared c0)
BATCH_THROUGHPUT_UPPER = N / (A_OUT * C0 + N * W_MEAN)
#: the batch-aware pessimistic bound on the mean response time, and on throughput
MEAN_RESPONSE_UPPER = (A_OUT + 1) * C0 + N * W_MEAN
THROUGHPUT_LOWER = N / (MEAN_RESPONSE_UPPER + Z)
#: the batch-aware bound on every request's response time (a worst case)
PESSIMISTIC_RESPONSE = (
    (A_OUT + 1) * C0 + W + (N - 1) * ((A_OUT - 1) * D_MAX + 2 * sp.Max(P_MAX, D_MAX))
)

_pessimistic = sp.lambdify((N, A_OUT, C0, W, P_MAX, D_MAX), PESSIMISTIC_RESPONSE, "numpy")
_batch_upper = sp.lambdify((N, A_OUT, C0, W_MEAN), BATCH_THROUGHPUT_UPPER, "numpy")
_mean_upper = sp.lambdify((N, A_OUT, C0, W_MEAN), MEAN_RESPONSE_UPPER, "numpy")


def throughput_upper(agents: np.ndarray, solo_step_s: float, think_s: float) -> np.ndarray:
    """Steps/s N agents can at most complete (each at best as fast as alone)."""
    return np.asarray(agents, dtype=float) / (solo_step_s + think_s)


def little_population(throughput: float, response_s: float, think_s: float) -> float:
    """The population Little's law implies: ``X (R + Z)``."""
    return throughput * (response_s + think_s)


# --- batch-aware bounds --------------------------------------------------------------------


@dataclass(frozen=True)
class StepDemand:
    """What each step of an agent's task asks of the engine (arrays over the steps):
    prompt tokens, cached tokens at least and at most, and the output tokens (one
    number: every request generates them)."""

    prompt: np.ndarray
    cached_low: np.ndarray
    cached_high: np.ndarray
    output: int


def fc_step_demand(
    system: int, observation: int, action: int, steps: int, block: int = 16
) -> StepDemand:
    """A full-context task of the synthetic workload: step t's prompt is the whole
    history; its cached prefix is what the previous step computed (whole blocks,
    vLLM recomputing at least the last prompt token). Step 1 finds the system prompt
    cached if another agent (or an earlier task) computed it, or nothing."""
    t = np.arange(1, steps + 1)
    prompt = system + t * observation + (t - 1) * action
    below = block * ((prompt - 1) // block)
    previous = block * ((prompt - observation - 1) // block)
    low = np.where(t == 1, 0, np.minimum(previous, below))
    high = np.where(t == 1, np.minimum(block * (system // block), below), low)
    return StepDemand(prompt.astype(float), low.astype(float), high.astype(float), action)


@dataclass(frozen=True)
class ResponseBounds:
    """Per step of the task (rows) and agent count (columns): the response time of the
    step's request at least (alone) and at most (:data:`PESSIMISTIC_RESPONSE`, a worst
    case)."""

    optimistic: np.ndarray
    pessimistic: np.ndarray


@dataclass(frozen=True)
class ClosedNetworkBounds:
    """Per agent count N: the mean response time of a step's request at least
    (``R1_mean``, alone) and at most (:data:`MEAN_RESPONSE_UPPER`), and throughput
    (steps/s) at least (:data:`THROUGHPUT_LOWER`) and at most (the smaller of
    ``N / (R1_mean + Z)`` and ``throughput_engine``, :data:`BATCH_THROUGHPUT_UPPER`,
    which also bounds steps / makespan of any finite run)."""

    response_low: np.ndarray
    response_high: np.ndarray
    throughput_low: np.ndarray
    throughput_high: np.ndarray
    throughput_engine: np.ndarray


def _work(demand: StepDemand, coeffs: np.ndarray, cached: np.ndarray) -> np.ndarray:
    """Marginal work of each step's request (its latency alone, less ``a c0``)."""
    c = np.asarray(coeffs, dtype=float)
    marginal = np.array([0.0, *c[1:]])
    return request_latency(demand.prompt, cached, np.asarray(float(demand.output)), marginal)


def response_bounds(
    agents: np.ndarray | int, demand: StepDemand, coeffs: np.ndarray
) -> ResponseBounds:
    """Bounds on the response time of every step's request with N agents running the
    same task (any phase, any think times): alone, and :data:`PESSIMISTIC_RESPONSE`."""
    c = np.asarray(coeffs, dtype=float)
    n = np.atleast_1d(np.asarray(agents, dtype=float)).reshape(1, -1)
    a = float(demand.output)
    alone = a * c[0] + _work(demand, c, demand.cached_high)
    own = _work(demand, c, demand.cached_low).reshape(-1, 1)
    u = demand.prompt - demand.cached_low
    prefill = c[1] * u + c[2] * u * (demand.cached_low + (u + 1) / 2)
    decode = c[1] + c[3] + c[4] * (demand.prompt.max() + a - 1)
    pess = _pessimistic(n, a, c[0], own, prefill.max(), decode)
    return ResponseBounds(np.broadcast_to(alone.reshape(-1, 1), pess.shape).copy(), pess)


def closed_network_bounds(
    agents: np.ndarray | int, demand: StepDemand, coeffs: np.ndarray, think_s: float
) -> ClosedNetworkBounds:
    """Mean response time and throughput of N agents running the task (every agent the
    same steps) with mean think time ``think_s`` per step, vectorized over N: see the
    module docstring."""
    c = np.asarray(coeffs, dtype=float)
    n = np.atleast_1d(np.asarray(agents, dtype=float))
    a = float(demand.output)
    least = _work(demand, c, demand.cached_high).mean()
    most = _work(demand, c, demand.cached_low).mean()
    r_low = np.full(n.shape, a * c[0] + least)
    r_high = _mean_upper(n, a, c[0], most)
    engine = _batch_upper(n, a, c[0], least)
    x_high = np.minimum(n / (r_low + think_s), engine)
    return ClosedNetworkBounds(r_low, r_high, n / (r_high + think_s), x_high, engine)


def bounds_apply(
    agents: int,
    demand: StepDemand,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    kv_capacity_tokens: int,
) -> list[str]:
    """The assumptions of the batch-aware bounds that an engine breaks (empty: none).
    KV: every agent's largest context plus one shared system prompt must fit."""
    broken = []
    if agents > max_num_seqs:
        broken.append(f"{agents} agents > max_num_seqs {max_num_seqs}")
    u_max = float(np.max(demand.prompt - demand.cached_low))
    if agents * max(u_max, 1.0) > max_num_batched_tokens:
        broken.append(
            f"{agents} prompts of up to {u_max:.0f} uncached tokens exceed the token budget"
            f" {max_num_batched_tokens}"
        )
    need = agents * (float(demand.prompt.max()) + demand.output)
    if need > kv_capacity_tokens:
        broken.append(f"{need:.0f} KV tokens needed > capacity {kv_capacity_tokens}")
    return broken


# --- memory-server sizing ------------------------------------------------------------------


def memory_server_agents(
    k: np.ndarray | int,
    step_fixed_s: np.ndarray | float,
    step_per_agent_s: np.ndarray | float,
    summary_fixed_s: np.ndarray | float,
    summary_per_agent_s: np.ndarray | float,
    max_agents: int = 4096,
) -> np.ndarray:
    """Largest N (at most ``max_agents``) such that for every n <= N, the summaries of n
    lockstep agents, ``M(n) = summary_fixed + n summary_per_agent``, finish within one
    summary period of k lockstep steps, ``k T(n) = k (step_fixed + n step_per_agent)``;
    0 if not even one agent's does. Vectorized over candidates.

    Both times are linear in n under the surrogate
    (:func:`theory.single_agent.lockstep_parts` gives the two parts of a request; add
    the tool time to ``step_fixed``), so ``M(n) <= k T(n)`` is ``A n <= B`` with
    ``A = summary_per_agent - k step_per_agent``, ``B = k step_fixed - summary_fixed``:
    all n if ``A <= 0`` (and n = 1 passes), else ``floor(B / A)``. That is exactly the
    masking condition with lag k (:func:`theory.bounds.masking_lags` of the lockstep step
    and summary times is at most k).
    """
    kk, p0, p1, m0, m1 = np.broadcast_arrays(
        *(np.asarray(x, dtype=float) for x in (k, step_fixed_s, step_per_agent_s,
                                               summary_fixed_s, summary_per_agent_s))
    )  # fmt: skip

    def keeps_up(n: np.ndarray) -> np.ndarray:
        return m0 + n * m1 <= kk * (p0 + n * p1)

    slope = m1 - kk * p1
    room = kk * p0 - m0
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = np.where(slope > 0, np.floor(room / slope), max_agents)
    n = np.clip(np.nan_to_num(guess, nan=0.0, posinf=max_agents), 0, max_agents)
    # rounding: one step either way, against the condition itself
    n = np.where((n > 0) & ~keeps_up(n), n - 1, n)
    n = np.where((n < max_agents) & keeps_up(n + 1) & (slope > 0), n + 1, n)
    n = np.where(keeps_up(np.ones_like(n)), n, 0)
    return n.astype(np.int64)
