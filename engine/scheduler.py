"""vLLM V1's scheduling policy, the one implementation of the project (no SimPy, no time).

Read it against vLLM's ``vllm/v1/core/sched/scheduler.py``: :meth:`Scheduler.schedule`
is its ``schedule()``, :meth:`Scheduler.apply` its ``update_from_output()``. The
simulated engine (:mod:`sim.engine`), the static-batch predictor
(:mod:`calibration.static`) and the measured-profile fit (:mod:`calibration.measured`)
all schedule through it; only what they do with an iteration differs (advance a clock,
sum kernel time, sum fit features).

One iteration, :meth:`Scheduler.schedule` (``VLLM_FACTS.md`` section 1, vLLM 0.12 /
0.19 ``scheduler.py``):

1. The RUNNING list, in admission order: each request gets ``min(remaining, budget)``
   tokens (one for a decode, the next chunk of a partial prefill). If its blocks cannot
   be allocated, the **last** running request is preempted (FCFS policy), repeatedly,
   until the allocation fits or the victim is the request itself, which ends the loop.
   A victim's blocks are freed (they stay prefix-cache hits until evicted), its
   computed tokens reset to 0, and it goes to the **front** of WAITING.
2. Unless something was preempted in this iteration, WAITING requests are admitted
   FCFS while budget is left and fewer than ``max_num_seqs`` run. The head's prefix hit
   is looked up (capped at its length - 1); it is admitted only if the free queue
   (minus the hit blocks it would take out of it) covers its first chunk, or, with
   ``reserve_full_prompt`` (vLLM 0.19's ``scheduler_reserve_full_isl``), its whole
   current length. If the head cannot be admitted nothing behind it is tried.
3. Blocks that become full in this iteration are entered in the prefix cache when
   they are allocated (at scheduling time, as vLLM does), output blocks included.
4. After the forward pass (:meth:`Scheduler.apply`) a request whose computed tokens
   reach its length samples a token; a request with all its output tokens is
   finished and its blocks freed, in running order.

That is the reference, used as it stands by iteration stepping. Event stepping
(:class:`engine.stepping.EventStepper`) is a layer over it that gives exactly the same
iterations, much faster; the hooks it overrides here (:meth:`Scheduler.materialize_all`,
``_before_lookup``, ``_apply_group``, ``_after_apply``, ``_referenced_blocks``) do
nothing in the reference.

``tests/engine/test_scheduler.py`` checks hand-worked schedules; ``tests/sim/test_engine.py``
checks that both steppings agree exactly on random loads that fill the cache and
preempt.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from calibration.errors import ComemInputError
from engine.kv_cache import KVCache, StreamSpace
from engine.offload import OffloadTier, StoreBuffer
from engine.request import Event, Run, Sequence, Step
from engine.runs import MAX_RUN_ITERATIONS


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's limits (vLLM's flag names)."""

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    enable_prefix_caching: bool = True
    #: vLLM 0.19 ``scheduler_reserve_full_isl``: admit a waiting request only if the
    #: free blocks cover its whole current length (vLLM 0.12: its first chunk)
    reserve_full_prompt: bool = True
    #: blocks every admitted request holds whatever its length, taken at admission and
    #: freed with its other blocks (vLLM's hybrid KV-cache manager: one block per
    #: linear-attention group for the request's state, the window's blocks per sliding
    #: group; :meth:`calibration.kv_layout.KVLayout.request_state_blocks`)
    request_blocks: int = 0
    #: speculative decoding (vLLM ``--speculative-config``, MTP): draft tokens a decoding
    #: request is scheduled per step besides its last token (0: off), and the probability
    #: that each draft is accepted (:mod:`calibration.spec_decode`)
    num_speculative_tokens: int = 0
    spec_acceptance_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ComemInputError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.request_blocks, int) or self.request_blocks < 0:
            raise ComemInputError(
                f"request_blocks must be an integer >= 0, got {self.request_blocks!r}"
            )


class Admission(NamedTuple):
    """What admitting the waiting head means now: its GPU prefix hit, the tokens it is
    scheduled, the blocks it allocates, and (CPU offloading) blocks it first loads."""

    hit: int
    tokens: int
    blocks: int
    load: int = 0


class Scheduler:
    """vLLM V1 scheduling over one :class:`~engine.kv_cache.KVCache`, every iteration on
    its own (iteration stepping, the static fit's features): :meth:`next` is
    :meth:`schedule`. :class:`engine.stepping.EventStepper` adds runs and the decode
    group.
    """

    def __init__(
        self,
        kv: KVCache,
        config: SchedulerConfig | None = None,
        offload: OffloadTier | None = None,
    ) -> None:
        self.kv = kv
        #: vLLM's native CPU offloading tier, if the server has one
        self.offload = offload
        #: the simulated time, set by the caller before each schedule (only CPU loads,
        #: which finish at a time, need it)
        self.now = 0.0
        #: stores issued to the CPU tier but not visible yet
        self.stores = StoreBuffer()
        #: requests loading blocks from the CPU tier: ready time, GPU hit, loaded blocks
        self._loads: dict[Sequence, tuple[float, int, int]] = {}
        self._h2d_free_s = 0.0
        self._touches = itertools.count()
        self.config = config if config is not None else SchedulerConfig()
        self.block_size = kv.block_size
        self.caching = kv.enable_prefix_caching and self.config.enable_prefix_caching
        #: speculative decoding: draft tokens per decode; the KV lookahead (vLLM's
        #: ``num_lookahead_tokens``) is as many. Event stepping's decode group and runs assume
        #: one token per decode, so with drafts every iteration is scheduled on its own.
        self.drafts = self.config.num_speculative_tokens
        #: with prefix caching: give a request without a stream a private one when it is
        #: preempted, keying the blocks it computed, so that re-admitted it finds those
        #: not evicted meanwhile. Equivalent to a private stream from the start when no
        #: other request shares its content (vLLM hashes every block; only the request
        #: itself can hit them), without keying blocks of requests never preempted.
        self.private_streams: StreamSpace | None = None
        self.waiting: deque[Sequence] = deque()
        #: running requests (in event stepping: outside the decode group), in admission order
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.iterations = 0
        self._run_counter = 0

    # -- queue ------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """A new request joins WAITING (its blocks must fit the cache: the caller checks)."""
        self.waiting.append(seq)

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    @property
    def num_running(self) -> int:
        return len(self.running)

    def running_in_order(self) -> list[Sequence]:
        """Every running request in admission order (a snapshot)."""
        return list(self.running)

    # -- blocks -----------------------------------------------------------------------
    def _allocate(self, seq: Sequence, n: int) -> None:
        if n > 0:
            self.kv.pop_free(n)
            seq.own_blocks += n

    def _register(
        self, seq: Sequence, tokens: int, completed: Callable[[int], int] | None = None
    ) -> None:
        """Enter the blocks full at ``tokens`` computed tokens in the prefix cache (and, with
        CPU offloading, hand them to the tier; ``completed`` maps a block to the iteration
        it became full in, default: this one).

        A block the cache already holds (a duplicate computed after a capped hit or a
        preemption) is adopted and the request's copy freed: memory use is that of
        vLLM, which keeps both copies, one of them unreferenced.
        """
        full = tokens // self.block_size
        if seq.stream is None or full <= seq.held_end or not self.caching:
            return
        before = seq.held_end
        adopted, keyed = self.kv.extend(seq.stream, before, full)
        if adopted or keyed:
            self.kv.hold(seq.stream, before, before + adopted + keyed)
            seq.held_end += adopted + keyed
            seq.own_blocks -= adopted + keyed
            self.kv.free_anonymous(adopted)
        if self.offload is not None:
            self._buffer_stores(seq, before, full, completed)

    def _buffer_stores(
        self, seq: Sequence, lo: int, hi: int, completed: Callable[[int], int] | None
    ) -> None:
        """Write-through: blocks ``[lo, hi)`` of ``seq``'s stream are stored to the CPU tier
        at the start of the iteration after the one they became full in."""
        lo = max(lo, seq.stored_upto)
        if lo >= hi or seq.stream is None:
            return
        seq.stored_upto = hi
        self.stores.add(seq.stream, seq.run_seq, lo, hi, self.iterations, completed)

    def _issue_stores(self) -> None:
        """Stores issued at the start of an earlier iteration are visible from now on."""
        self.stores.issue(self.iterations, self.offload)  # type: ignore[arg-type]

    def settle(self) -> None:
        """Bring the CPU tier to where one-by-one scheduling would have it now (the engine
        calls this when it goes idle, so both steppings end in the same state)."""
        if self.offload is not None:
            self._issue_stores()

    def next_load_ready(self) -> float | None:
        """When the first CPU load in flight completes (None: none in flight)."""
        return min((v[0] for v in self._loads.values()), default=None)

    def loads_held(self) -> int:
        """Requests whose CPU loads hold GPU blocks (in flight, or done and not yet
        admitted)."""
        return len(self._loads)

    def next_load_after_now(self) -> float | None:
        """When the first CPU load not yet done completes (None: none). What an engine
        that can schedule nothing waits for: a load already done waits for GPU blocks,
        not for the copy, and waiting 0 s for it again and again stopped the simulated
        clock (a hang with no output)."""
        return min((v[0] for v in self._loads.values() if v[0] > self.now), default=None)

    def _release(self, seq: Sequence) -> None:
        """Free a request's blocks, tail first: its own (uncached) ones, then its stream's."""
        self.kv.free_anonymous(seq.own_blocks + seq.state_blocks)
        seq.state_blocks = 0
        if seq.stream is not None:
            if seq.held_end:
                self.kv.hold(seq.stream, seq.held_end, 0)
            self.kv.leave(seq.stream)
        seq.held_end = 0
        seq.own_blocks = 0

    def _preempt(self, seq: Sequence) -> None:
        if seq.stream is None and self.private_streams is not None and self.caching:
            seq.stream = self.private_streams.new()
            self.kv.enter(seq.stream)
            self._register(seq, seq.computed)
        self._release(seq)
        seq.computed = 0
        seq.preemptions += 1
        seq.status = "preempted"
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def _finish(self, seq: Sequence) -> None:
        self._release(seq)
        seq.status = "finished"

    def _admission(self, seq: Sequence, budget: int) -> Admission | None:
        """How ``seq`` would start now, or None if it cannot (not enough free blocks)."""
        bs = self.block_size
        kv = self.kv
        hit = 0
        stream = seq.stream
        cap = (seq.length - 1) // bs  # vLLM recomputes at least the last token
        if stream is not None and self.caching:
            hit = kv.hit(stream, cap)
        unheld = kv.unheld_within(stream, hit) if hit else 0  # type: ignore[arg-type]
        full = -(-seq.length // bs) - hit + self.config.request_blocks
        if self.offload is not None and stream is not None and self.caching:
            load = self.offload.run_length(stream, hit, cap)
            if load:
                # the GPU prefix hit, then whole CPU blocks: allocate them and load
                check = full if self.config.reserve_full_prompt else load
                if check > kv.queue_blocks - unheld:
                    return None
                return Admission(hit, 0, load, load)
        start = hit * bs
        n = min(seq.length - start, budget)
        need = -(-(start + n + self.drafts) // bs) - hit
        check = full if self.config.reserve_full_prompt else need + self.config.request_blocks
        if check > kv.queue_blocks - unheld:
            return None
        return Admission(hit, n, need)

    def _start_load(self, seq: Sequence, plan: Admission) -> None:
        """The head's prefix continues on the CPU tier: allocate GPU blocks for it and copy
        them in; the request waits (not running, not counted) until the copy is done."""
        kv = self.kv
        tier = self.offload
        assert tier is not None and seq.stream is not None
        if plan.hit:
            kv.hold(seq.stream, 0, plan.hit)
        kv.enter(seq.stream)
        seq.held_end = plan.hit
        self._allocate(seq, plan.load)
        ready = max(self.now, self._h2d_free_s) + plan.load * tier.load_s_per_block
        self._h2d_free_s = ready
        tier.touch(
            seq.stream,
            plan.hit,
            plan.hit + plan.load,
            (self.iterations, 0, next(self._touches)),
        )
        self._loads[seq] = (ready, plan.hit, plan.load)
        seq.status = "loading"

    def _loaded_admission(self, seq: Sequence, budget: int) -> Admission | None:
        """A request whose CPU blocks arrived: it starts with them computed."""
        bs = self.block_size
        _, hit, load = self._loads[seq]
        have = hit + load
        start = have * bs
        n = min(seq.length - start, budget)
        need = -(-(start + n) // bs) - have
        check = -(-seq.length // bs) - have if self.config.reserve_full_prompt else need
        if check > self.kv.queue_blocks:
            return None
        return Admission(hit, n, need, load)

    def _admit(self, seq: Sequence, plan: Admission, step: Step) -> int:
        """Start ``seq`` with its admission plan; returns the tokens it was scheduled."""
        hit, n, need, load = plan
        kv = self.kv
        self.waiting.popleft()
        if seq in self._loads:  # its blocks came from the CPU tier
            del self._loads[seq]
            seq.computed = (hit + load) * self.block_size
        else:
            if seq.stream is not None:
                if hit:
                    kv.hold(seq.stream, 0, hit)
                kv.enter(seq.stream)
            seq.held_end = hit
            seq.computed = hit * self.block_size
        self._allocate(seq, need)
        if self.config.request_blocks:
            kv.pop_free(self.config.request_blocks)
            seq.state_blocks = self.config.request_blocks
        seq.run_seq = self._run_counter
        self._run_counter += 1
        self.running.append(seq)
        if not seq.has_first_token and seq.preemptions == 0:
            seq.cached_tokens = seq.computed
            step.admitted.append(seq)
        else:
            step.readmitted.append(seq)
            seq.resumed = True
        seq.status = "running"
        self._register(seq, seq.computed + n)
        step.entries.append((seq, n))
        return n

    # -- the reference: one iteration ------------------------------------------------------
    def schedule(self) -> Step:
        """Schedule the next iteration as vLLM does (blocks are allocated and keyed now)."""
        self.materialize_all()
        if self.offload is not None:
            self._issue_stores()
        budget = self.config.max_num_batched_tokens
        step = Step()
        entries = step.entries
        running = self.running
        kv = self.kv
        bs = self.block_size
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            c = seq.computed
            n = seq.length - c
            if n == 1 and self.drafts and seq.has_first_token:
                n += self.drafts  # verify the drafts (cut below if the budget runs out)
            if n > budget:
                n = budget
            need = (c + n + self.drafts + bs - 1) // bs - seq.held_end - seq.own_blocks
            if need > 0:
                while need > kv.queue_blocks:
                    victim = running.pop()
                    self._preempt(victim)
                    step.preempted.append(victim)
                    if victim is seq:
                        break
                if step.preempted and (i >= len(running) or running[i] is not seq):
                    break
                self._allocate(seq, need)
            self._register(seq, min(c + n, seq.length))  # drafts are not cached
            entries.append((seq, n))
            budget -= n
            i += 1
        if not step.preempted:
            self._admit_waiting(budget, step)
        self._aggregate(step)
        return step

    def _admit_waiting(self, budget: int, step: Step) -> None:
        waiting = self.waiting
        max_seqs = self.config.max_num_seqs
        skipped: list[Sequence] = []  # loading from the CPU tier: vLLM skips them
        while waiting and budget > 0 and self.num_running < max_seqs:
            seq = waiting[0]
            if seq in self._loads:
                if self._loads[seq][0] > self.now:
                    skipped.append(waiting.popleft())
                    continue
                plan = self._loaded_admission(seq, budget)
            else:
                self._before_lookup(seq)
                plan = self._admission(seq, budget)
            if plan is None:
                break
            if plan.tokens == 0:  # start loading its prefix from the CPU tier
                self._start_load(seq, plan)
                skipped.append(waiting.popleft())
                continue
            budget -= self._admit(seq, plan, step)
        waiting.extendleft(reversed(skipped))

    @staticmethod
    def _aggregate(step: Step) -> None:
        for seq, n in step.entries:
            c = seq.computed
            if n == 1 and c > 0 and seq.length - c == 1:
                step.num_decode += 1
                step.decode_kv_total += c + 1
            elif n > 1 and seq.length - c == 1:  # a verify pass: 1 + (n - 1) drafts
                step.num_decode += 1
                step.decode_kv_total += c + n
                step.spec_seqs += 1
                step.spec_tokens += n - 1
            else:
                step.prefill_new.append(n)
                step.prefill_cached.append(c)

    def apply(self, step: Step) -> list[Event]:
        """The iteration ran: advance its requests; returns first tokens and finishes in
        running order (and frees finished requests' blocks in that order)."""
        t = self.iterations
        finishing = self._apply_group(step)
        entries = step.entries
        if finishing:  # members finishing now: their last token was scheduled with the group
            entries = sorted([*entries, *((s, 1) for s in finishing)], key=lambda e: e[0].run_seq)
        self.iterations = t + 1
        events: list[Event] = []
        done: list[Sequence] = []
        sampled = step.group_decodes - len(finishing)
        for seq, n in entries:
            drafts = n - (seq.length - seq.computed)
            if drafts > 0:  # a verify pass: the accepted drafts and one more token
                self._verify(seq, drafts, step)
            else:
                seq.computed += n
            if seq.computed != seq.length:
                continue
            seq.length += 1  # a token is sampled
            sampled += 1
            if not seq.has_first_token:
                seq.has_first_token = True
                step.first_samples += 1
                events.append((seq, "first_token"))
            elif seq.resumed:
                seq.resumed = False
                step.resumed_samples += 1
                step.resumed.append(seq)
            if seq.length - seq.prompt_tokens >= seq.output_tokens:
                self._finish(seq)
                events.append((seq, "finished"))
                done.append(seq)
        step.sampled = sampled
        if done:
            self.running = [s for s in self.running if s.status == "running"]
        self._after_apply()
        return events

    def _verify(self, seq: Sequence, drafts: int, step: Step) -> None:
        """``seq`` verified ``drafts`` drafts: it emits the accepted ones and one more token
        (at most its output's rest); the rejected drafts' KV is dropped (computed falls back
        to the tokens kept), its blocks stay allocated as vLLM's do."""
        from calibration.spec_decode import emitted_tokens

        emitted, seq.spec_carry = emitted_tokens(
            drafts, self.config.spec_acceptance_rate, seq.spec_carry
        )
        emitted = min(emitted, seq.output_tokens - seq.generated)
        seq.computed += emitted  # its last token, then the accepted drafts
        seq.length += emitted - 1  # the accepted drafts; apply samples the last token
        step.extra_tokens += emitted - 1

    def next(self, max_iterations: int = MAX_RUN_ITERATIONS) -> Step | Run:
        """What runs next: in the reference always one iteration, a :class:`Step` to give
        to :meth:`apply` (event stepping may return a :class:`Run`)."""
        return self.schedule()

    # -- hooks for event stepping (the reference has no implicit members) ------------------
    def materialize_all(self) -> None:
        """Bring every running request's fields up to date (they always are here)."""

    def _before_lookup(self, seq: Sequence) -> None:
        """The waiting ``seq`` is about to look its prefix up."""

    def _apply_group(self, step: Step) -> list[Sequence]:
        """Requests ``step`` scheduled implicitly that finish with it (none here)."""
        return []

    def _after_apply(self) -> None:
        """An iteration was applied."""

    def _referenced_blocks(self) -> tuple[int, int]:
        """(own, held): the blocks the running requests hold uncached, and all they hold
        (shared prefixes counted once per holder), their constant parts included."""
        state = sum(s.state_blocks for s in self.running)
        own = sum(s.own_blocks for s in self.running) + state
        held = sum(s.blocks for s in self.running) + state
        return own, held

    # -- checks ---------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Assert the block accounting is consistent (tests call this at any time; it
        changes nothing)."""
        bs = self.block_size
        own, held = self._referenced_blocks()
        self.kv.check_invariants(own, held)
        for s in self.running:
            assert s.blocks * bs >= s.computed, (s.id, s.blocks, s.computed)
            assert s.status == "running"
            assert not s.lazy
        for s in self.running:
            assert s.state_blocks == self.config.request_blocks, (s.id, s.state_blocks)
        for s in self.waiting:
            assert s.blocks == 0 and s.computed == 0, s.id
            assert s.state_blocks == 0 or s in self._loads, s.id
