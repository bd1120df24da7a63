"""vLLM V1's scheduler, the one implementation of the project (no SimPy, no time).

The simulated engine (:mod:`sim.engine`), the static-batch predictor
(:mod:`calibration.static`) and the measured-profile fit (:mod:`calibration.measured`)
all schedule through :class:`Scheduler`; only what they do with an iteration differs
(advance a clock, sum kernel time, sum fit features).

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

That is the reference, used as it stands by iteration stepping. **Event stepping**
(:meth:`Scheduler.next`) must give exactly the same iterations, much faster, and
does so with two devices:

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
- *Runs.* :meth:`Scheduler.next` returns a :class:`Run` of identical-shape iterations
  when it can prove them (see :meth:`Scheduler._plan_run`): they are priced in one
  vectorized call and applied in one :meth:`Scheduler.apply_run`.

``tests/test_scheduler.py`` checks hand-worked schedules; ``tests/test_engine.py``
checks that both steppings agree exactly on random loads that fill the cache and
preempt.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from calibration.errors import ComemInputError
from calibration.kv_cache import KVCache, OffloadTier, Stream, StreamSpace

#: the longest run planned at once, in iterations (bounds the arrays priced at once)
MAX_RUN_ITERATIONS = 1 << 16

SequenceStatus = Literal["waiting", "loading", "running", "preempted", "finished", "rejected"]


class Sequence:
    """One request's scheduling state: tokens, KV blocks, status.

    ``length`` is prompt + tokens sampled so far; ``computed`` the tokens whose KV is
    computed. The request references blocks ``[0, held_end)`` of its stream (cached,
    possibly shared) plus ``own_blocks`` of its own. While it is a member of the decode
    group these fields are stale (see the module docstring). The simulated engine's
    :class:`sim.engine.Request` extends this with times and SimPy events.
    """

    __slots__ = (
        "cached_tokens",
        "computed",
        "has_first_token",
        "held_end",
        "id",
        "lazy",
        "lazy_c0",
        "lazy_t0",
        "length",
        "output_tokens",
        "own_blocks",
        "preemptions",
        "prompt_tokens",
        "resumed",
        "run_seq",
        "spec_carry",
        "state_blocks",
        "status",
        "stored_upto",
        "stream",
    )

    def __init__(
        self, sid: int, prompt_tokens: int, output_tokens: int, stream: Stream | None = None
    ) -> None:
        self.id = sid
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.stream = stream
        self.computed = 0
        self.length = prompt_tokens
        self.held_end = 0
        self.own_blocks = 0
        #: blocks held whatever the length (hybrid models' linear states and sliding
        #: windows, :attr:`SchedulerConfig.request_blocks`), while admitted
        self.state_blocks = 0
        #: speculative decoding: the fraction of a token its verify steps owe it
        #: (:func:`calibration.spec_decode.emitted_tokens`)
        self.spec_carry = 0.0
        self.status: SequenceStatus = "waiting"
        self.preemptions = 0
        self.cached_tokens = 0
        self.has_first_token = False
        self.run_seq = -1  # position in admission order while running
        self.lazy = False
        self.lazy_c0 = 0
        self.lazy_t0 = 0
        self.resumed = False  # readmitted after a preemption, no token sampled since
        self.stored_upto = 0  # blocks handed to the CPU offload tier (members' stores)

    @property
    def generated(self) -> int:
        return self.length - self.prompt_tokens

    @property
    def blocks(self) -> int:
        return self.held_end + self.own_blocks


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


@dataclass
class Step:
    """One scheduled iteration: who gets how many tokens, and its pricing aggregates.

    A *decode* is one new token over a computed prefix whose length is then complete
    (the last single token of a chunked prompt has the same shape and is priced so);
    everything else is a prefill chunk of ``prefill_new`` tokens over
    ``prefill_cached`` computed ones. ``entries`` lists the requests scheduled
    explicitly; the decode group's members (event stepping) are in the aggregates only.
    """

    entries: list[tuple[Sequence, int]] = field(default_factory=list)
    num_decode: int = 0
    decode_kv_total: int = 0
    prefill_new: list[int] = field(default_factory=list)
    prefill_cached: list[int] = field(default_factory=list)
    #: requests admitted for the first time in this iteration
    admitted: list[Sequence] = field(default_factory=list)
    #: requests admitted again after a preemption
    readmitted: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    #: decode-group members in this iteration
    group_decodes: int = 0
    #: set by :meth:`Scheduler.apply`: tokens sampled, and of those a request's first
    #: or its first after being preempted (a gap that spans the preemption)
    sampled: int = 0
    first_samples: int = 0
    resumed_samples: int = 0
    #: the requests of ``resumed_samples``
    resumed: list[Sequence] = field(default_factory=list)
    #: speculative decoding: decodes that verify drafts, the drafts in all, and the tokens
    #: sampled beyond one per request (``sampled`` counts requests that sampled)
    spec_seqs: int = 0
    spec_tokens: int = 0
    extra_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_decode + sum(self.prefill_new)

    @property
    def num_seqs(self) -> int:
        return self.num_decode + len(self.prefill_new)


@dataclass
class Run:
    """``iterations`` identical-shape iterations (see :meth:`Scheduler.next`).

    Iteration j (0-based) decodes ``num_decode`` sequences over a KV total of
    ``decode_kv_total0 + num_decode * j`` and, if ``chunk``, computes a prefill chunk of
    ``chunk`` tokens over ``prefill_cached0 + chunk * j`` computed ones.
    """

    iterations: int
    num_decode: int
    decode_kv_total0: int
    prefiller: Sequence | None
    chunk: int
    prefill_cached0: int
    #: blocks the run allocates in its first j + 1 iterations, j = 0.. (see _plan_run)
    allocations: list[int] | None = None
    #: what bounded the run: finish, prompt, kv, admission or limit
    bound: str = "limit"


#: (sequence, "first_token" | "finished"), in the order the events happen
Event = tuple[Sequence, str]


class Admission(NamedTuple):
    """What admitting the waiting head means now: its GPU prefix hit, the tokens it is
    scheduled, the blocks it allocates, and (CPU offloading) blocks it first loads."""

    hit: int
    tokens: int
    blocks: int
    load: int = 0


class Scheduler:
    """vLLM V1 scheduling over one :class:`~calibration.kv_cache.KVCache`.

    ``lazy=False`` (iteration stepping, the static fit's features): :meth:`next` is
    :meth:`schedule`, every iteration on its own. ``lazy=True`` (event stepping):
    :meth:`next` returns runs and uses the decode group.
    """

    def __init__(
        self,
        kv: KVCache,
        config: SchedulerConfig | None = None,
        lazy: bool = False,
        offload: OffloadTier | None = None,
    ) -> None:
        self.kv = kv
        #: vLLM's native CPU offloading tier, if the server has one
        self.offload = offload
        #: the simulated time, set by the caller before each schedule (only CPU loads,
        #: which finish at a time, need it)
        self.now = 0.0
        #: stores issued to the CPU tier but not visible yet: (key, stream, lo, hi)
        self._store_buffer: list[tuple[tuple[Any, ...], int, Stream, int, int]] = []
        self._store_ids = itertools.count()
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
        self.lazy = lazy and not self.drafts
        #: with prefix caching: give a request without a stream a private one when it is
        #: preempted, keying the blocks it computed, so that re-admitted it finds those
        #: not evicted meanwhile. Equivalent to a private stream from the start when no
        #: other request shares its content (vLLM hashes every block; only the request
        #: itself can hit them), without keying blocks of requests never preempted.
        self.private_streams: StreamSpace | None = None
        self.waiting: deque[Sequence] = deque()
        #: running requests outside the decode group, in admission order
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.iterations = 0
        self._run_counter = 0
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

    # -- queue ------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """A new request joins WAITING (its blocks must fit the cache: the caller checks)."""
        self.waiting.append(seq)

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting and not self.group

    @property
    def num_running(self) -> int:
        return len(self.running) + len(self.group)

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
        t = self.iterations
        b = lo
        while b < hi:
            x = t if completed is None else completed(b)
            e = b + 1
            if completed is not None:
                while e < hi and completed(e) == x:
                    e += 1
            else:
                e = hi
            key = (x + 1, 1, seq.run_seq, b)
            heapq.heappush(self._store_buffer, (key, next(self._store_ids), seq.stream, b, e))
            b = e

    def _issue_stores(self) -> None:
        """Stores issued at the start of an earlier iteration are visible from now on."""
        buf = self._store_buffer
        t = self.iterations
        tier = self.offload
        while buf and buf[0][0][0] <= t - 1:
            key, _, stream, lo, hi = heapq.heappop(buf)
            tier.store(stream, lo, hi, key)  # type: ignore[union-attr]

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

    def settle(self) -> None:
        """Bring the CPU tier to where one-by-one scheduling would have it now (the engine
        calls this when it goes idle, so both steppings end in the same state)."""
        if self.offload is not None:
            self._issue_stores()

    def next_load_ready(self) -> float | None:
        """When the first CPU load in flight completes (None: none in flight)."""
        return min((v[0] for v in self._loads.values()), default=None)

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
                if self.group and seq.stream is not None and self.caching:
                    self._detach_related(seq.stream)
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
        finishing: list[Sequence] = []
        if step.group_decodes:
            heap = self._g_heap
            while heap and heap[0][0] <= t:
                _, _, t0, seq = heapq.heappop(heap)
                if seq.lazy and seq.lazy_t0 == t0:
                    finishing.append(seq)
        entries = step.entries
        if finishing:  # members finishing now: their last token was scheduled with the group
            for seq in finishing:
                self._materialize(seq, scheduled=True)
            entries = sorted([*entries, *((s, 1) for s in finishing)], key=lambda e: e[0].run_seq)
        self.iterations = t + 1
        self._group_scheduled = False
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
        if self.lazy:
            self._promote()
            if self.offload is not None and self.group:
                self._flush_group_stores()
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
        run = self._plan_run(max_iterations)
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

    def _plan_run(self, max_iterations: int) -> Run | None:
        """The run of identical-shape iterations starting now, or None if the next
        iteration must be scheduled on its own (a run shorter than 2 iterations).

        Why the run's iterations are exactly what :meth:`schedule` would do, one by one:

        - *Shape.* Only decode-group members and at most one explicit request, the
          prefiller, run; the prefiller is newer than every member and has more prompt
          left than the budget the members leave. So each iteration the members take
          a token each and the prefiller the rest of the budget. The run stops before
          the prefiller's prompt completes and at the iteration in which the first
          member finishes.
        - *Blocks.* Members allocate at known iterations (the group's phase counts), so
          the blocks allocated by iteration j, A(j), are known in closed form. Nothing
          is freed inside a run, so an allocation fails first at the smallest j with
          A(j) > free blocks now; the run stops before it. Allocations pop the free
          queue's front, so the blocks evicted by the run are its first A(m - 1).
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
        cfg = self.config
        bs = self.block_size
        kv = self.kv
        running = self.running
        d = len(self.group)
        if max_iterations < 2 or len(running) > 1 or (not d and not running):
            return None
        budget = cfg.max_num_batched_tokens - d
        if budget < 0:
            return None
        t = self.iterations
        m = max_iterations
        bound = "limit"
        if d:
            heap = self._g_heap
            while heap and not (heap[0][3].lazy and heap[0][3].lazy_t0 == heap[0][2]):
                heapq.heappop(heap)
            if heap:
                m_fin = heap[0][0] - t + 1
                if m_fin < m:
                    m, bound = m_fin, "finish"
        prefiller: Sequence | None = None
        chunk = 0
        pre_c = pre_blocks = 0
        if running:
            p = running[0]
            left = p.length - p.computed
            if budget == 0 or left <= budget or p.run_seq < self._g_max_seq:
                return None
            else:
                if (
                    self.caching
                    and p.stream is not None
                    and not kv.keys_alone(p.stream, p.held_end)
                ):
                    return None
                prefiller, chunk, pre_c, pre_blocks = p, budget, p.computed, p.blocks
                full_chunks = -(-left // chunk) - 1  # chunks that leave the prompt unfinished
                if full_chunks < m:
                    m, bound = full_chunks, "prompt"
                budget = 0
        if m < 2:
            return None
        # blocks allocated by iteration j (inclusive): the members' by their phase
        # (rotated to start at iteration t), the prefiller's by its chunks
        phase = self._g_phase
        rot = [0] * (bs + 1)
        acc = 0
        for k in range(bs):
            acc += phase[(t + k) % bs]
            rot[k + 1] = acc

        def allocated(j: int) -> int:
            q, r = divmod(j + 1, bs)
            total = d * q + rot[r]
            if prefiller is not None:
                total += max(0, -(-(pre_c + (j + 1) * chunk) // bs) - pre_blocks)
            return total

        def first_reaching(limit: int, end: int) -> int:
            """Smallest j < end with allocated(j) >= limit, else end."""
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

        j_fail = first_reaching(kv.queue_blocks + 1, m)
        if j_fail < m:
            m, bound = j_fail, "kv"
        if m < 2:
            return None
        waiting = self.waiting
        loads = self._loads
        if loads:
            if min(v[0] for v in loads.values()) <= self.now:
                return None  # a CPU load is done: it is admitted in the next iteration
            # loading requests are skipped: the head is the first one not loading
            first = next((w for w in waiting if w not in loads), None)
            waiting = deque([first]) if first is not None else deque()
        if waiting and budget > 0 and self.num_running < cfg.max_num_seqs:
            head = waiting[0]
            if self._admission(head, budget) is not None:
                return None
            stream = head.stream
            if self.caching and stream is not None:
                lineage = kv.lineage_states(stream)
                if any(st.runners for st in lineage):
                    # members are materialized (next()); the prefiller may key blocks
                    # the head would hit
                    if prefiller is not None and prefiller.stream is not None:
                        uids = {st.stream.uid for st in lineage}
                        if not uids.isdisjoint(s.uid for s in prefiller.stream.lineage()):
                            target = bs * (prefiller.held_end + 1) - pre_c
                            j = max(0, -(-target // chunk) - 1)
                            if j < m:
                                m, bound = j, "admission"
                    if m < 2:
                        return None
                if self._store_buffer:
                    # a store of the head's lineage that becomes visible may give it a
                    # CPU hit: stop before it does
                    uids = {x.uid for x in stream.lineage()}
                    for key, _, s, _, _ in self._store_buffer:
                        if s.uid in uids or not uids.isdisjoint(x.uid for x in s.lineage()):
                            j = key[0] + 1 - t
                            if j < m:
                                m, bound = max(j, 0), "admission"
                    if m < 2:
                        return None
                hit = kv.hit(stream, (head.length - 1) // bs)
                pop = kv.first_disruptive_pop(stream, hit, allocated(m - 1))
                if pop is not None:
                    j = first_reaching(pop + 1, m)
                    if j < m:
                        m, bound = j, "admission"
                if m < 2:
                    return None
        self.run_bounds[bound] = self.run_bounds.get(bound, 0) + 1
        return Run(
            m,
            d,
            self._g_kv_base + d * t,
            prefiller,
            chunk,
            pre_c,
            [allocated(m - 1)],
            bound,
        )

    def run_allocations(self, run: Run, iterations: int) -> int:
        """Blocks the run allocates in its first ``iterations`` iterations."""
        if iterations == run.iterations and run.allocations:
            return run.allocations[0]
        bs = self.block_size
        t = self.iterations
        phase = self._g_phase
        q, r = divmod(iterations, bs)
        total = run.num_decode * q + sum(phase[(t + k) % bs] for k in range(r))
        p = run.prefiller
        if p is not None:
            total += max(0, -(-(p.computed + iterations * run.chunk) // bs) - p.blocks)
        return total

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

    # -- checks ---------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Assert the block accounting is consistent (tests call this at any time; it
        changes nothing)."""
        bs = self.block_size
        t = self.iterations
        state = sum(s.state_blocks for s in self.running) + sum(s.state_blocks for s in self.group)
        own = sum(s.own_blocks for s in self.running) + state
        held = sum(s.blocks for s in self.running) + state
        if self.group:
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
