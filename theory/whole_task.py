"""Whole-task latency of FC, CP, SM and KSO for arrays of configurations, in closed form.

The same quantity as ``step_timeline(kind, ...).latency.sum(0)`` (:mod:`theory.single_agent`,
the step-by-step reference), without walking the steps, for planners that evaluate
millions of configurations (``benchmarks/bench_theory.py``: configurations per second).

Why it is closed form:

- **A run of steps on one context** (FC's whole task; every stretch between two summary
  swaps) has prompts ``P_j = c + o + (j-1) r`` (``r = o + a``, the raw tokens a step
  adds) and, from its second step on, cached prefix ``b floor((P_j - o - 1)/b)``: so
  the uncached part is ``u_j = o + 1 + m_j`` with ``m_j = (c - 1 + (j-1) r) mod b``, a
  sequence periodic in j that depends only on ``(c - 1) mod b`` and ``r mod b``. The
  request latency is a quadratic in (P, u), so the run's sum needs only the sums of
  ``m_j``, ``j m_j`` and ``m_j^2``, read from a ``b x b x steps`` table
  (:func:`_residue_tables`).
- **Summaries come every k steps**: the contexts a summary leaves are the same every
  time once ``k i >= retain``, so the runs between swaps repeat (periodic in k); only
  the memory model's jobs (over the growing history) differ, one term per summary
  (vectorized over summaries). KSO's stall at each swap, ``max(0, M_i - overlapped
  agent time)``, is a recurrence over summaries (one vector operation each) because
  with ``lag >= k`` the stalls of earlier swaps lie inside a later summary's overlap.

Configurations are grouped by ``(k, lag)`` (the static shape of a task); within a group
everything else (tokens, tool time, retain, coefficients, agents) is a numpy array.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from theory.single_agent import AgentParams, lockstep_coefficients

__all__ = ["TaskLatency", "task_latencies"]

#: configurations evaluated at once (arrays this size stay in the CPU caches)
CHUNK = 16_384


@dataclass(frozen=True)
class TaskLatency:
    """Per configuration: task latency (s), total stall (s), and whether the forms are
    exact there (KSO: False where an agent's memory jobs overlap; see
    :func:`theory.single_agent.step_timeline`)."""

    latency: np.ndarray
    stall: np.ndarray
    exact: np.ndarray


@lru_cache(maxsize=32)
def _residue_tables(
    block: int, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For ``m_j = (beta + j rho) mod b``, rows ``beta * b + rho``, columns n = 0 .. steps:
    the prefix sums ``sum_{j=1..n}`` of ``m_j``, ``j m_j`` and ``m_j^2``, and (last,
    transposed: n x rows) ``m_n`` itself."""
    b = block
    beta = np.arange(b).reshape(b, 1, 1)
    rho = np.arange(b).reshape(1, b, 1)
    j = np.arange(1, steps + 1).reshape(1, 1, steps)
    m = (beta + j * rho) % b
    zero = np.zeros((b, b, 1), dtype=np.int64)
    residues = np.concatenate([np.broadcast_to(beta, (b, b, 1)), m], axis=2)  # m_0 = beta
    s0 = np.concatenate([zero, np.cumsum(m, axis=2)], axis=2)
    s1 = np.concatenate([zero, np.cumsum(j * m, axis=2)], axis=2)
    s2 = np.concatenate([zero, np.cumsum(m * m, axis=2)], axis=2)
    return (
        s0.reshape(b * b, steps + 1).astype(float),
        s1.reshape(b * b, steps + 1).astype(float),
        s2.reshape(b * b, steps + 1).astype(float),
        np.ascontiguousarray(residues.reshape(b * b, steps + 1).T).astype(float),
    )


class _Group:
    """One chunk of configurations that share (k, lag): arrays of shape (n,)."""

    def __init__(
        self, p: AgentParams, fields: dict[str, np.ndarray], agent: np.ndarray, memory: np.ndarray
    ) -> None:
        self.steps = p.steps
        self.b = p.block
        self.instr = float(p.instruction)
        f = fields
        self.s0, self.o, self.a = f["system"], f["observation"], f["action"]
        self.s, self.e, self.retain = f["summary"], f["tool_s"], f["retain"]
        self.r = self.o + self.a
        self.agent = agent
        self.memory = memory
        self.fresh = self.b * np.floor(self.s0 / self.b)
        self.rho = np.mod(self.r, self.b).astype(np.intp)
        self.tables = _residue_tables(self.b, self.steps)
        c0, c1, c2, c3, c4 = agent
        a = self.a
        # per-request terms that do not depend on the prompt
        self.fixed = a * c0 + (a - 1) * (c1 + c3) + c4 * a * (a - 1) / 2
        self.kv_per_prompt = c4 * (a - 1)
        self._terms: dict[int, tuple[np.ndarray, ...]] = {}

    def request(self, prompt: np.ndarray, cached: np.ndarray, out: np.ndarray, c: np.ndarray):
        """:data:`theory.single_agent.REQUEST_LATENCY`, expanded (u = P - h)."""
        c0, c1, c2, c3, c4 = c
        u = prompt - cached
        return (
            out * c0
            + (out - 1) * (c1 + c3)
            + c4 * ((out - 1) * prompt + out * (out - 1) / 2)
            + c1 * u
            + c2 * u * (cached + (u + 1) / 2)
        )

    def run(self, start: np.ndarray, hit: np.ndarray, length: int) -> np.ndarray:
        """Agent seconds of ``length`` steps on one context: the context holds ``start``
        tokens before the first observation, ``hit`` of them cached."""
        if length <= 0:
            return np.zeros_like(start)
        b, o, a, r = self.b, self.o, self.a, self.r
        c0, c1, c2, c3, c4 = self.agent
        p1 = start + o
        h1 = np.minimum(hit, b * np.floor((p1 - 1) / b))
        total = self.request(p1, h1, a, self.agent)
        n = length - 1
        if n == 0:
            return total
        beta = np.mod(start - 1, b).astype(np.intp)
        row = beta * b + self.rho
        t0, t1, t2, _ = self.tables
        m0, m1, m2 = t0[row, n], t1[row, n], t2[row, n]
        big_u = o + 1
        first = start + o
        tri = n * (n + 1) / 2
        sum_p = n * first + r * tri
        sum_u = n * big_u + m0
        sum_u2 = n * big_u * big_u + 2 * big_u * m0 + m2
        sum_up = big_u * sum_p + first * m0 + r * m1
        return (
            total
            + n * self.fixed
            + self.kv_per_prompt * sum_p
            + c1 * sum_u
            + c2 * (sum_up - sum_u2 / 2 + sum_u / 2)
        )

    def _memory_terms(self, k: int) -> tuple[np.ndarray, ...]:
        """The memory job launched after step ``i k`` (i >= 2) costs
        ``K0 + K1 i + m (K2 + K3 i) + K4 m^2`` with ``m = (s0 + (i-1) k r) mod b`` (its
        prompt grows by ``k r`` per job, its cached prefix is the previous job's history
        in whole blocks); the first job, with nothing cached, is priced directly."""
        c0, c1, c2, c3, c4 = self.memory
        s = self.s
        step = k * self.r  # the history grows by k raw steps per job
        p_base = self.s0 + self.instr
        big_u = step + self.instr
        k0 = (
            s * c0
            + (s - 1) * (c1 + c3)
            + c4 * s * (s - 1) / 2
            + c4 * (s - 1) * p_base
            + c1 * big_u
            + c2 * big_u * (p_base - big_u / 2 + 0.5)
        )
        k1 = (c4 * (s - 1) + c2 * big_u) * step
        k2 = c1 + c2 * (p_base - big_u + 0.5)
        k3 = c2 * step
        k4 = -c2 / 2
        first = self.request(p_base + step, np.zeros_like(s), s, self.memory)
        beta = np.mod(self.s0, self.b).astype(np.intp)
        rho = np.mod(step, self.b).astype(np.intp)
        return first, k0, k1, k2, k3, k4, beta, rho

    def memory_job(self, k: int, i: int) -> np.ndarray:
        """Seconds of the memory model's job launched after step ``i k`` (i >= 1; alone
        on its engine): the history so far plus the instruction, cached up to the
        previous job's history."""
        terms = self._terms.get(k)
        if terms is None:
            terms = self._terms[k] = self._memory_terms(k)
        first, k0, k1, k2, k3, k4, beta, rho = terms
        if i == 1:
            return first
        m = self.tables[3][i - 1][beta * self.b + rho]
        return k0 + k1 * i + m * (k2 + k3 * i + k4 * m)

    def memory_total(self, k: int, count: int) -> np.ndarray:
        """The sum of :meth:`memory_job` over jobs 1 .. count (from the residue tables:
        no per-job work)."""
        first, k0, k1, k2, k3, k4, beta, rho = self._memory_terms(k)
        n = count - 1
        if n <= 0:
            return first
        t0, t1, t2, _ = self.tables
        row = beta * self.b + rho
        m0, m1, m2 = t0[row, n], t1[row, n], t2[row, n]
        # jobs i = j + 1 for j = 1 .. n
        sum_i = n * (n + 1) / 2 + n
        return first + n * k0 + k1 * sum_i + (k2 + k3) * m0 + k3 * m1 + k4 * m2

    def kept(self, launch: int) -> np.ndarray:
        """Context after a summary launched after step ``launch``: system + summary +
        the last ``retain`` raw steps."""
        return self.s0 + self.s + np.minimum(self.retain, launch) * self.r


def _fc(g: _Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat = g.run(g.s0, np.zeros_like(g.s0), g.steps) + g.steps * g.e
    return lat, np.zeros_like(lat), np.ones(lat.shape, dtype=bool)


def _blocking(g: _Group, kind: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CP and SM: the agent waits for every summary; the context restarts after it."""
    steps, b = g.steps, g.b
    n_sum = (steps - 1) // k
    # a restart's context depends on min(retain, launch): the same once launch >= retain
    regular = next((i for i in range(1, n_sum + 1) if i * k >= g.retain.max()), n_sum + 1)
    starts: dict[int, np.ndarray] = {0: g.s0}
    runs: dict[tuple[int, int], np.ndarray] = {}

    def start(i: int) -> np.ndarray:
        i = min(i, regular)
        if i not in starts:
            starts[i] = g.kept(i * k)
        return starts[i]

    def run(i: int, length: int) -> np.ndarray:
        key = (min(i, regular), length)
        if key not in runs:
            runs[key] = g.run(start(i), np.zeros_like(g.s0) if i == 0 else g.fresh, length)
        return runs[key]

    lat = steps * g.e
    for i in range(n_sum + 1):
        length = k if i < n_sum else steps - n_sum * k
        lat = lat + run(i, length)
    stall = np.zeros_like(g.s0)
    if n_sum:
        if kind == "cp":
            # over the context so far, cached up to it; on the agent model
            cp_cost: dict[int, np.ndarray] = {}
            for i in range(1, n_sum + 1):
                key = min(i - 1, regular)
                if key not in cp_cost:
                    ctx = start(i - 1) + k * g.r
                    cp_cost[key] = g.request(
                        ctx + g.instr, b * np.floor((ctx - 1) / b), g.s, g.agent
                    )
                stall = stall + cp_cost[key]
        else:
            stall = g.memory_total(k, n_sum)
    return lat + stall, stall, np.ones(lat.shape, dtype=bool)


def _kso(g: _Group, k: int, lag: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KSO: summary i launched after step ``i k``, swapped in before step ``i k + lag + 1``;
    the agent stalls for what of its job the steps in between did not cover."""
    steps = g.steps
    n_sum = (steps - 1) // k
    launch = [i * k for i in range(n_sum + 1)]  # launch[0] unused
    swap = [0] + [launch[i] + lag + 1 for i in range(1, n_sum + 1)]
    swapped = [i for i in range(1, n_sum + 1) if swap[i] <= steps]
    regular = next((i for i in range(1, n_sum + 1) if i * k >= g.retain.max()), n_sum + 1)
    # runs of steps on one context: run 0 from step 1, run i from swap i
    run_start = [1] + [swap[i] for i in swapped]
    run_end = [*[s - 1 for s in run_start[1:]], steps]
    starts: dict[int, np.ndarray] = {}
    partial: dict[tuple[int, int], np.ndarray] = {}

    def run_sum(j: int, length: int) -> np.ndarray:
        """Agent seconds of the first ``length`` steps of run j."""
        key = (0 if j == 0 else min(j, regular), length)
        if key not in partial:
            if j == 0:
                partial[key] = g.run(g.s0, np.zeros_like(g.s0), length)
            else:
                i = key[0]
                if i not in starts:
                    starts[i] = g.kept(launch[i]) + lag * g.r
                partial[key] = g.run(starts[i], g.fresh, length)
        return partial[key]

    # cumulative agent time (requests + tools) at the end of each run
    ends = []
    acc = np.zeros_like(g.s0)
    for j in range(len(run_start)):
        acc = acc + run_sum(j, run_end[j] - run_start[j] + 1)
        ends.append(acc)

    def base(t: int) -> np.ndarray:
        """Agent seconds of steps 1 .. t (no stalls)."""
        if t <= 0:
            return np.zeros_like(g.s0)
        j = max(x for x in range(len(run_start)) if run_start[x] <= t)
        before = ends[j - 1] if j > 0 else 0.0
        return before + run_sum(j, t - run_start[j] + 1) + t * g.e

    total = ends[-1] + steps * g.e
    exact = np.ones(g.s0.shape, dtype=bool)
    if not n_sum:
        return total, np.zeros_like(g.s0), exact

    def swaps_through(t: int) -> int:
        """How many swaps happen at or before step t (swaps are in launch order)."""
        return min(max((t - lag - 1) // k, 0), n_sum)

    # cum[x]: the stalls of swaps 1 .. x (the swaps in a window are consecutive)
    cum = [np.zeros_like(g.s0)]
    at_launch = [np.zeros_like(g.s0)] + [base(launch[i]) for i in range(1, n_sum + 1)]
    previous = np.zeros_like(g.s0)
    for i in range(1, n_sum + 1):
        job = g.memory_job(k, i)
        if i > 1:
            # the previous job must end before this launch (else they overlap)
            lo, hi = swaps_through(launch[i - 1]), swaps_through(launch[i])
            clock = at_launch[i] - at_launch[i - 1] + (cum[hi] - cum[lo])
            exact &= previous <= clock
        previous = job
        if swap[i] > steps:
            cum.append(cum[-1])
            continue
        lo = swaps_through(launch[i])
        covered = base(swap[i] - 1) - at_launch[i] + (cum[i - 1] - cum[lo])
        cum.append(cum[-1] + np.maximum(0.0, job - covered))
    stall = cum[-1]
    return total + stall, stall, exact


def task_latencies(
    kind: str,
    p: AgentParams,
    agent: np.ndarray,
    memory: np.ndarray | None = None,
    agents: np.ndarray | int = 1,
) -> TaskLatency:
    """Task latency of every configuration of ``p`` (arrays broadcast together).

    ``agent`` / ``memory``: surrogate coefficients (c0..c4), shape (5,) or (5, ...)
    broadcasting with the configurations; ``agents``: N identical agents in lockstep
    (:func:`theory.single_agent.lockstep_coefficients`), per configuration or one for
    all. Equals ``step_timeline(kind, p, ...).latency.sum(0)`` (tested to 1e-12).
    """
    if kind not in ("fc", "cp", "sm", "kso"):
        raise ValueError(f"unknown kind '{kind}'")
    if kind in ("sm", "kso") and memory is None:
        raise ValueError(f"kind '{kind}' needs memory-model coefficients")
    names = ("system", "observation", "action", "summary", "tool_s", "k", "retain", "lag")
    arrays = [np.asarray(getattr(p, f), dtype=float) for f in names]
    agents_arr = np.asarray(agents, dtype=float)
    agent_c = np.asarray(agent, dtype=float)
    memory_c = np.asarray(memory if memory is not None else agent, dtype=float)
    shape = np.broadcast_shapes(
        *(x.shape for x in arrays), agents_arr.shape, agent_c.shape[1:], memory_c.shape[1:]
    )
    n = int(np.prod(shape))
    flat = {f: np.broadcast_to(x, shape).reshape(n) for f, x in zip(names, arrays, strict=True)}
    agents_flat = np.broadcast_to(agents_arr, shape).reshape(n)

    def per_config(c: np.ndarray) -> np.ndarray:
        lead = (1,) * (len(shape) - (c.ndim - 1))
        return np.broadcast_to(c.reshape(5, *lead, *c.shape[1:]), (5, *shape)).reshape(5, n)

    a_c = lockstep_coefficients(per_config(agent_c), agents_flat)
    m_c = lockstep_coefficients(per_config(memory_c), agents_flat)
    lat = np.empty(n)
    stall = np.empty(n)
    exact = np.empty(n, dtype=bool)
    if kind == "fc":
        keys = np.zeros(n, dtype=np.int64)
    else:
        k_int = flat["k"].astype(np.int64)
        lag_int = flat["lag"].astype(np.int64) if kind == "kso" else np.zeros(n, np.int64)
        keys = k_int * (int(lag_int.max(initial=0)) + 1) + lag_int
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
    for group in np.split(order, bounds):
        if group.size == 0:
            continue
        first = group[0]
        k = int(flat["k"][first])
        lag = int(flat["lag"][first])
        for lo in range(0, group.size, CHUNK):
            idx = group[lo : lo + CHUNK]
            g = _Group(p, {f: x[idx] for f, x in flat.items()}, a_c[:, idx], m_c[:, idx])
            if kind == "fc":
                res = _fc(g)
            elif kind == "kso":
                res = _kso(g, k, lag)
            else:
                res = _blocking(g, kind, k)
            lat[idx], stall[idx], exact[idx] = res
    return TaskLatency(lat.reshape(shape), stall.reshape(shape), exact.reshape(shape))
