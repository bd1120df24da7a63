"""Event stepping: the V1 policy (:mod:`engine.scheduler`) advanced many iterations at a
time, with exactly the iterations it would schedule one by one (no SimPy, no time).

:class:`EventStepper` is a layer over :class:`~engine.scheduler.Scheduler` with two
devices:

- *The decode group.* A running request that only decodes, whose blocks exactly
  cover its tokens and whose new blocks only extend its own stream's cached run, joins
  a group whose members are advanced implicitly: member i has computed
  ``c0_i + (t - t0_i)`` tokens before iteration t, so the group's decode count, KV
  total and block allocations per iteration are aggregates (the member allocates at
  iteration t iff ``t = t0_i - c0_i (mod block size)``) and its finishes come from a
  heap. A member's own fields are brought up to date ("materialized") only when it
  leaves: it finishes, a request on a related stream is admitted (its prefix hit must
  see the member's blocks), or the reference is needed (a preemption).
  An iteration then costs O(requests that are not plain decodes), not O(running).
- *Runs.* :meth:`EventStepper.next` returns a :class:`~engine.request.Run` of
  identical-shape iterations when it can prove them (:mod:`engine.runs`): they are
  priced in one vectorized call and applied in one :meth:`EventStepper.apply_run`.

``tests/sim/test_engine.py`` checks that both steppings agree exactly on random loads that
fill the cache and preempt.
"""

from __future__ import annotations

import heapq

from engine.kv_cache import KVCache, Stream
from engine.offload import OffloadTier
from engine.request import Event, Run, Sequence, Step
from engine.runs import MAX_RUN_ITERATIONS, plan_run, run_allocations
from engine.scheduler import Scheduler, SchedulerConfig


class EventStepper(Scheduler):
    """vLLM V1 scheduling with the decode group and runs (see the module docstring).

    With ``event_stepping=False`` (the simulated engine's iteration stepping), or with
    speculative decoding (drafts: the decode group and runs assume one token per
    decode), :meth:`next` is :meth:`schedule`, every iteration on its own.
    """

    def __init__(
        self,
        kv: KVCache,
        config: SchedulerConfig | None = None,
        offload: OffloadTier | None = None,
        event_stepping: bool = True,
    ) -> None:
        super().__init__(kv, config, offload)
        #: False: every iteration is scheduled on its own, as the reference does
        #: (iteration stepping)
        self.lazy = event_stepping and not self.drafts
        # the decode group (see the module docstring)
        self.group: dict[Sequence, None] = {}
        self._g_kv_base = 0  # sum of c0 - t0 + 1: KV total at iteration t = base + D * t
        self._g_phase = [0] * self.block_size
        self._g_heap: list[tuple[int, int, int, Sequence]] = []  # (finish t, run_seq, t0, seq)
        self._g_max_seq = -1
        #: stream uid -> members whose stream lineage includes it
        self._g_by_state: dict[int, dict[Sequence, None]] = {}
        #: members taken out of the group while their iteration is being scheduled
        self._detached: list[tuple[Sequence, int]] = []
        #: the group's next iteration is scheduled (its blocks taken), not yet applied
        self._group_scheduled = False
        #: how many runs each bound ended (diagnostics; tests check the regimes reached)
        self.run_bounds: dict[str, int] = {}

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting and not self.group

    @property
    def num_running(self) -> int:
        return len(self.running) + len(self.group)

    def running_in_order(self) -> list[Sequence]:
        """Every running request in admission order (a snapshot; the token counts of
        decode-group members are brought up to date only when they leave it)."""
        return sorted([*self.running, *self.group], key=lambda s: s.run_seq)

    # -- event stepping ----------------------------------------------------------------
    def next(self, max_iterations: int = MAX_RUN_ITERATIONS) -> Step | Run:
        """What runs next: one iteration (a :class:`Step`, to be given to :meth:`apply`) or
        a :class:`Run` of identical iterations (to :meth:`apply_run`)."""
        if not self.lazy:
            return self.schedule()
        if self.offload is not None:
            self._issue_stores()
        if self.waiting and self.caching and self.group:
            head = self.waiting[0].stream
            if head is not None:
                self._materialize_related(head)
        run = plan_run(self, max_iterations)
        if run is not None:
            return run
        return self._schedule_lazy()

    def _explicit_needs(self, budget: int) -> tuple[int, int] | None:
        """(blocks, budget left) the explicit running requests take this iteration, or None
        if the reference must schedule it (the decode group's budget is not guaranteed)."""
        bs = self.block_size
        total = 0
        max_seq = self._g_max_seq
        for seq in self.running:  # in admission order
            if budget == 0:
                if seq.run_seq < max_seq:
                    return None  # the budget would run out before a member's turn
                break
            c = seq.computed
            n = seq.length - c
            if n > budget:
                n = budget
            if (n != 1 or seq.length - c != 1) and seq.run_seq < max_seq:
                return None  # a prefill ahead of a group member could starve it
            total += max(0, (c + n + bs - 1) // bs - seq.held_end - seq.own_blocks)
            budget -= n
        return total, budget

    def _schedule_lazy(self) -> Step:
        """One iteration with the decode group, or the reference when it must decide."""
        cfg = self.config
        kv = self.kv
        t = self.iterations
        d = len(self.group)
        budget = cfg.max_num_batched_tokens - d
        group_blocks = self._g_phase[t % self.block_size] if d else 0
        needs = self._explicit_needs(budget) if budget >= 0 else None
        if needs is None:
            return self.schedule()  # budget contention: the reference
        if needs[0] + group_blocks > kv.queue_blocks:
            if self.offload is not None:
                return self.schedule()
            step, left = self._schedule_short()  # an allocation may fail: a preemption
            if step.preempted:  # nothing is admitted in the iteration
                return self._finish_lazy(step)
            return self._admit_lazy(step, left)
        step = Step(group_decodes=d)
        kv.pop_free(group_blocks)
        self._group_scheduled = d > 0
        entries = step.entries
        bs = self.block_size
        for seq in self.running:
            if budget == 0:
                break
            c = seq.computed
            n = seq.length - c
            if n > budget:
                n = budget
            self._allocate(seq, (c + n + bs - 1) // bs - seq.held_end - seq.own_blocks)
            self._register(seq, c + n)
            entries.append((seq, n))
            budget -= n
        return self._admit_lazy(step, budget)

    def _admit_lazy(self, step: Step, budget: int) -> Step:
        """Admit waiting requests into a lazily scheduled iteration, then aggregate it."""
        self._admit_waiting(budget, step)
        if self._detached:  # members that left while this iteration was scheduled
            step.entries.extend(self._detached)
            self._detached = []
            step.entries.sort(key=lambda e: e[0].run_seq)
        return self._finish_lazy(step)

    def _finish_lazy(self, step: Step) -> Step:
        """Aggregate a lazily scheduled iteration: its explicit entries and the group."""
        self._aggregate(step)
        d = len(self.group)
        step.group_decodes = d
        step.num_decode += d
        step.decode_kv_total += self._g_kv_base + d * self.iterations
        return step

    def _schedule_short(self) -> tuple[Step, int]:
        """The running requests' part of :meth:`schedule` when the free blocks may not
        cover every allocation, without bringing the decode group up to date: the walk
        in admission order is the reference's (a member takes one token and, at its
        phase, one block), and only the victims of a preemption, the newest running
        requests, are materialized. Members that survive stay in the group: their
        blocks are taken in the walk, their keying stays lazy (they extend their own
        streams alone, which no free-queue operation touches). Returns the step with
        its explicit entries (not aggregated) and its victims in ``preempted``, and the
        budget left."""
        kv = self.kv
        bs = self.block_size
        t = self.iterations
        step = Step()
        entries = step.entries
        order = sorted([*self.running, *self.group], key=lambda s: s.run_seq)
        budget = self.config.max_num_batched_tokens
        i = 0
        while i < len(order) and budget > 0:
            seq = order[i]
            lazy = seq.lazy
            if lazy:
                n = 1
                need = 1 if (seq.lazy_c0 + t - seq.lazy_t0) % bs == 0 else 0
            else:
                c = seq.computed
                n = min(seq.length - c, budget)
                need = (c + n + bs - 1) // bs - seq.held_end - seq.own_blocks
            if need > 0:
                while need > kv.queue_blocks:
                    victim = order.pop()
                    if victim.lazy:
                        self._materialize(victim)
                    else:
                        self.running.remove(victim)
                    self._preempt(victim)
                    step.preempted.append(victim)
                    if victim is seq:
                        break
                if i >= len(order):  # the request itself was preempted
                    break
                if lazy:
                    kv.pop_free(need)
                else:
                    self._allocate(seq, need)
            if not lazy:
                self._register(seq, c + n)
                entries.append((seq, n))
            budget -= n
            i += 1
        # requests left when the budget ran out (newer than every member: the lazy path
        # checked it) are not scheduled, as in the reference
        self._group_scheduled = bool(self.group)
        return step, budget

    def run_allocations(self, run: Run, iterations: int) -> int:
        """Blocks the run allocates in its first ``iterations`` iterations."""
        return run_allocations(self, run, iterations)

    def apply_run(self, run: Run, iterations: int) -> list[Event]:
        """The first ``iterations`` of ``run`` ran: advance its requests in bulk."""
        bs = self.block_size
        self.kv.pop_free(self.run_allocations(run, iterations))
        p = run.prefiller
        if p is not None:
            c0, t0, chunk = p.computed, self.iterations, run.chunk
            c = c0 + iterations * chunk
            p.own_blocks += max(0, -(-c // bs) - p.held_end - p.own_blocks)
            p.computed = c
            self._register(p, c, lambda b: t0 + -(-((b + 1) * bs - c0) // chunk) - 1)
        last = self.iterations + iterations - 1
        self.iterations = last
        events = self.apply(Step(group_decodes=run.num_decode)) if run.num_decode else []
        if not run.num_decode:
            self.iterations = last + 1
        return events

    # -- the decode group --------------------------------------------------------------
    def _eligible(self, seq: Sequence) -> bool:
        c = seq.computed
        if seq.length - c != 1 or not seq.has_first_token:
            return False
        if seq.held_end + seq.own_blocks != -(-c // self.block_size):
            return False
        stream = seq.stream
        return not (self.caching and stream is not None) or self.kv.keys_alone(stream, seq.held_end)

    def _promote(self) -> None:
        """Move plain decoders from the explicit list into the decode group."""
        running = self.running
        joining = [s for s in running if self._eligible(s)]
        if not joining:
            return
        t = self.iterations
        bs = self.block_size
        for seq in joining:
            seq.lazy = True
            seq.lazy_c0 = c0 = seq.computed
            seq.lazy_t0 = t
            seq.stored_upto = max(seq.stored_upto, seq.held_end)
            self.group[seq] = None
            self._g_kv_base += c0 + 1 - t
            self._g_phase[(t - c0) % bs] += 1
            finish = t + seq.output_tokens - (seq.length - seq.prompt_tokens) - 1
            heapq.heappush(self._g_heap, (finish, seq.run_seq, t, seq))
            if seq.run_seq > self._g_max_seq:
                self._g_max_seq = seq.run_seq
            if seq.stream is not None:
                for s in seq.stream.lineage():
                    self._g_by_state.setdefault(s.uid, {})[seq] = None
        self.running = [s for s in running if not s.lazy]

    def _materialize(self, seq: Sequence, scheduled: bool = False) -> None:
        """Bring a member's fields up to date and take it out of the group.

        ``scheduled``: the current iteration has been scheduled (its token budgeted and
        its block allocated, :meth:`_schedule_lazy`), so the member's state is that of
        a request scheduled for one decode token.
        """
        t = self.iterations
        bs = self.block_size
        c = seq.lazy_c0 + (t - seq.lazy_t0)
        seq.computed = c
        seq.length = c + 1
        upto = c + 1 if scheduled else c
        seq.own_blocks = -(-upto // bs) - seq.held_end
        seq.lazy = False
        del self.group[seq]
        self._g_kv_base -= seq.lazy_c0 + 1 - seq.lazy_t0
        self._g_phase[(seq.lazy_t0 - seq.lazy_c0) % bs] -= 1
        if seq.stream is not None:
            for s in seq.stream.lineage():
                members = self._g_by_state.get(s.uid)
                if members is not None:
                    members.pop(seq, None)
                    if not members:
                        del self._g_by_state[s.uid]
        c0, t0 = seq.lazy_c0, seq.lazy_t0
        self._register(seq, upto, lambda b: t0 + (b + 1) * bs - c0 - 1)

    def _materialize_related(self, stream: Stream) -> None:
        """Members whose stream shares a lineage state with ``stream`` become explicit
        (between iterations), so a prefix lookup on ``stream`` sees their blocks."""
        members = self._related(stream)
        if not members:
            return
        for seq in members:
            self._materialize(seq)
        self.running = sorted([*self.running, *members], key=lambda s: s.run_seq)

    def _detach_related(self, stream: Stream) -> None:
        """As :meth:`_materialize_related`, during the scheduling of an iteration."""
        members = self._related(stream)
        for seq in members:
            self._materialize(seq, scheduled=True)
            self._detached.append((seq, 1))
            # it joins the explicit list at its place for the iterations after this one
        if members:
            self.running = sorted([*self.running, *members], key=lambda s: s.run_seq)

    def _related(self, stream: Stream) -> list[Sequence]:
        by_state = self._g_by_state
        found: dict[Sequence, None] = {}
        for s in stream.lineage():
            members = by_state.get(s.uid)
            if members:
                found.update(members)
        return sorted(found, key=lambda x: x.run_seq)

    def materialize_all(self) -> None:
        """Every member becomes an explicit running request (between iterations)."""
        if not self.group:
            return
        members = list(self.group)
        for seq in members:
            self._materialize(seq)
        self.running = sorted([*self.running, *members], key=lambda s: s.run_seq)
        self._g_heap.clear()
        self._g_max_seq = -1

    def _flush_group_stores(self) -> None:
        """Hand the decode group's newly full blocks to the CPU tier (their keying in the
        GPU cache stays lazy; the tier's recency must not)."""
        t = self.iterations
        bs = self.block_size
        for seq in self.group:
            c0, t0 = seq.lazy_c0, seq.lazy_t0
            full = (c0 + t - t0) // bs
            if full > seq.stored_upto:

                def completed(b: int, c0: int = c0, t0: int = t0) -> int:
                    return t0 + (b + 1) * bs - c0 - 1

                self._buffer_stores(seq, seq.stored_upto, full, completed)

    # -- the policy's hooks ------------------------------------------------------------------
    def _before_lookup(self, seq: Sequence) -> None:
        """Members on a stream related to the waiting ``seq``'s leave the group, so its
        prefix lookup sees their blocks."""
        if self.group and seq.stream is not None and self.caching:
            self._detach_related(seq.stream)

    def _apply_group(self, step: Step) -> list[Sequence]:
        """Members whose last token ``step`` scheduled: they leave the group to finish."""
        finishing: list[Sequence] = []
        if step.group_decodes:
            t = self.iterations
            heap = self._g_heap
            while heap and heap[0][0] <= t:
                _, _, t0, seq = heapq.heappop(heap)
                if seq.lazy and seq.lazy_t0 == t0:
                    finishing.append(seq)
        for seq in finishing:
            self._materialize(seq, scheduled=True)
        self._group_scheduled = False
        return finishing

    def _after_apply(self) -> None:
        """Plain decoders join the group; its newly full blocks go to the CPU tier."""
        if self.lazy:
            self._promote()
            if self.offload is not None and self.group:
                self._flush_group_stores()

    def _referenced_blocks(self) -> tuple[int, int]:
        own, held = super()._referenced_blocks()
        if not self.group:
            return own, held
        bs = self.block_size
        t = self.iterations
        state = sum(s.state_blocks for s in self.group)
        own += state
        held += state
        kv_total = sum(s.lazy_c0 + (t - s.lazy_t0) + 1 for s in self.group)
        assert kv_total == self._g_kv_base + len(self.group) * t
        phase = [0] * bs
        for s in self.group:
            phase[(s.lazy_t0 - s.lazy_c0) % bs] += 1
        assert phase == self._g_phase, (phase, self._g_phase)
        extra = 1 if self._group_scheduled else 0
        for s in self.group:
            # blocks not keyed yet are the member's own
            blocks = -(-(s.lazy_c0 + (t - s.lazy_t0) + extra) // bs)
            own += blocks - s.held_end
            held += blocks
        return own, held
