"""Runs: the iterations ahead that event stepping can prove identical in shape, planned
in one go (no SimPy, no time).

:func:`plan_run` is what :meth:`engine.stepping.EventStepper.next` asks first; a run is
priced in one vectorized call and applied in one
:meth:`~engine.stepping.EventStepper.apply_run`. Why its iterations are exactly what
:meth:`engine.scheduler.Scheduler.schedule` would do, one by one:

- *Shape.* Only decode-group members and at most one explicit request, the
  prefiller, run; the prefiller is newer than every member and has more prompt
  left than the budget the members leave. So each iteration the members take
  a token each and the prefiller the rest of the budget. The run stops before
  the prefiller's prompt completes and at the iteration in which the first
  member finishes.
- *Blocks.* Members allocate at known iterations (the group's phase counts), so
  the blocks allocated by iteration j, A(j), are known in closed form
  (:class:`RunBlocks`). Nothing is freed inside a run, so an allocation fails first at
  the smallest j with A(j) > free blocks now; the run stops before it. Allocations pop
  the free queue's front, so the blocks evicted by the run are its first A(m - 1).
- *Prefix cache.* Members and the prefiller only extend their own stream's
  cached run, alone, so keying the blocks once at the end equals keying them
  per iteration.
- *Admission.* The waiting head is checked after the running requests allocate.
  If it can be admitted now the next iteration is scheduled on its own. If not,
  the run only makes it harder (fewer free blocks; evicting the last block of
  its hit, or one beyond it, does not help), except when it evicts a block
  inside the head's hit, or a running request keys blocks the head would hit:
  the run stops before either.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from engine.request import Run, Sequence

if TYPE_CHECKING:
    from engine.stepping import EventStepper

#: the longest run planned at once, in iterations (bounds the arrays priced at once)
MAX_RUN_ITERATIONS = 1 << 16


class RunShape(NamedTuple):
    """Who a run schedules, and how long it may be before any block is counted."""

    #: iterations, and what bounds them (finish, prompt or limit)
    iterations: int
    bound: str
    #: decode-group members, each a token per iteration
    decodes: int
    #: the one explicit request, a prompt chunk of ``chunk`` tokens per iteration over
    #: ``prefill_cached0`` computed ones and ``prefiller_blocks`` blocks at the start
    prefiller: Sequence | None
    chunk: int
    prefill_cached0: int
    prefiller_blocks: int
    #: the token budget left to the waiting head
    budget: int


class RunBlocks:
    """Blocks a run allocates by iteration j (inclusive): the members' by their phase
    (rotated to start at iteration ``t``), the prefiller's by its chunks."""

    def __init__(self, phase: list[int], t: int, block_size: int, shape: RunShape) -> None:
        bs = block_size
        self.block_size = bs
        self.shape = shape
        self.rot = [0] * (bs + 1)
        acc = 0
        for k in range(bs):
            acc += phase[(t + k) % bs]
            self.rot[k + 1] = acc

    def allocated(self, j: int) -> int:
        shape = self.shape
        bs = self.block_size
        q, r = divmod(j + 1, bs)
        total = shape.decodes * q + self.rot[r]
        if shape.prefiller is not None:
            needed = -(-(shape.prefill_cached0 + (j + 1) * shape.chunk) // bs)
            total += max(0, needed - shape.prefiller_blocks)
        return total

    def first_reaching(self, limit: int, end: int) -> int:
        """Smallest j < end with allocated(j) >= limit, else end."""
        allocated = self.allocated
        if allocated(end - 1) < limit:
            return end
        lo, hi = 0, end - 1  # allocated(hi) >= limit
        while lo < hi:
            mid = (lo + hi) // 2
            if allocated(mid) >= limit:
                hi = mid
            else:
                lo = mid + 1
        return lo


def plan_run(s: EventStepper, max_iterations: int) -> Run | None:
    """The run of identical-shape iterations starting now, or None if the next
    iteration must be scheduled on its own (a run shorter than 2 iterations)."""
    shape = _shape(s, max_iterations)
    if shape is None:
        return None
    m, bound = shape.iterations, shape.bound
    blocks = RunBlocks(s._g_phase, s.iterations, s.block_size, shape)
    j_fail = blocks.first_reaching(s.kv.queue_blocks + 1, m)
    if j_fail < m:
        m, bound = j_fail, "kv"
    if m < 2:
        return None
    m, bound = _admission_bound(s, shape, blocks, m, bound)
    if m < 2:
        return None
    s.run_bounds[bound] = s.run_bounds.get(bound, 0) + 1
    d = shape.decodes
    return Run(
        m,
        d,
        s._g_kv_base + d * s.iterations,
        shape.prefiller,
        shape.chunk,
        shape.prefill_cached0,
        [blocks.allocated(m - 1)],
        bound,
    )


def _shape(s: EventStepper, max_iterations: int) -> RunShape | None:
    """The run's requests and its length before blocks and admission: to the first
    member's finish and before the prefiller's prompt completes (None: no run)."""
    running = s.running
    d = len(s.group)
    if max_iterations < 2 or len(running) > 1 or (not d and not running):
        return None
    budget = s.config.max_num_batched_tokens - d
    if budget < 0:
        return None
    m = max_iterations
    bound = "limit"
    if d:
        heap = s._g_heap
        while heap and not (heap[0][3].lazy and heap[0][3].lazy_t0 == heap[0][2]):
            heapq.heappop(heap)
        if heap:
            m_fin = heap[0][0] - s.iterations + 1
            if m_fin < m:
                m, bound = m_fin, "finish"
    prefiller: Sequence | None = None
    chunk = pre_c = pre_blocks = 0
    if running:
        p = running[0]
        left = p.length - p.computed
        if budget == 0 or left <= budget or p.run_seq < s._g_max_seq:
            return None
        if s.caching and p.stream is not None and not s.kv.keys_alone(p.stream, p.held_end):
            return None
        prefiller, chunk, pre_c, pre_blocks = p, budget, p.computed, p.blocks
        full_chunks = -(-left // chunk) - 1  # chunks that leave the prompt unfinished
        if full_chunks < m:
            m, bound = full_chunks, "prompt"
        budget = 0
    if m < 2:
        return None
    return RunShape(m, bound, d, prefiller, chunk, pre_c, pre_blocks, budget)


def _admission_bound(
    s: EventStepper, shape: RunShape, blocks: RunBlocks, m: int, bound: str
) -> tuple[int, str]:
    """The run cut where the waiting head might become admissible (iterations below 2:
    no run): at once if it is now, before a running request keys blocks it would hit,
    before a store of its lineage reaches the CPU tier, before an eviction inside its
    hit."""
    waiting = s.waiting
    loads = s._loads
    if loads:
        if min(v[0] for v in loads.values()) <= s.now:
            return 0, bound  # a CPU load is done: it is admitted in the next iteration
        # loading requests are skipped: the head is the first one not loading
        first = next((w for w in waiting if w not in loads), None)
        waiting = deque([first]) if first is not None else deque()
    budget = shape.budget
    if not (waiting and budget > 0 and s.num_running < s.config.max_num_seqs):
        return m, bound
    head = waiting[0]
    if s._admission(head, budget) is not None:
        return 0, bound
    stream = head.stream
    if not (s.caching and stream is not None):
        return m, bound
    kv = s.kv
    bs = s.block_size
    lineage = kv.lineage_states(stream)
    if any(st.runners for st in lineage):
        # members are materialized (next()); the prefiller may key blocks the head would hit
        prefiller = shape.prefiller
        if prefiller is not None and prefiller.stream is not None:
            uids = {st.stream.uid for st in lineage}
            if not uids.isdisjoint(x.uid for x in prefiller.stream.lineage()):
                target = bs * (prefiller.held_end + 1) - shape.prefill_cached0
                j = max(0, -(-target // shape.chunk) - 1)
                if j < m:
                    m, bound = j, "admission"
        if m < 2:
            return m, bound
    if s.stores:
        # a store of the head's lineage that becomes visible may give it a CPU hit:
        # stop before it does
        uids = {x.uid for x in stream.lineage()}
        for key, st_stream in s.stores.pending():
            if st_stream.uid in uids or not uids.isdisjoint(x.uid for x in st_stream.lineage()):
                j = key[0] + 1 - s.iterations
                if j < m:
                    m, bound = max(j, 0), "admission"
        if m < 2:
            return m, bound
    hit = kv.hit(stream, (head.length - 1) // bs)
    pop = kv.first_disruptive_pop(stream, hit, blocks.allocated(m - 1))
    if pop is not None:
        j = blocks.first_reaching(pop + 1, m)
        if j < m:
            m, bound = j, "admission"
    return m, bound


def run_allocations(s: EventStepper, run: Run, iterations: int) -> int:
    """Blocks ``run`` allocates in its first ``iterations`` iterations."""
    if iterations == run.iterations and run.allocations:
        return run.allocations[0]
    bs = s.block_size
    t = s.iterations
    phase = s._g_phase
    q, r = divmod(iterations, bs)
    total = run.num_decode * q + sum(phase[(t + k) % bs] for k in range(r))
    p = run.prefiller
    if p is not None:
        total += max(0, -(-(p.computed + iterations * run.chunk) // bs) - p.blocks)
    return total
