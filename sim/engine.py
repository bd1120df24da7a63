"""A vLLM-like serving engine in SimPy: continuous batching, chunked prefill, paged KV
with a prefix cache, recompute preemption.

One :class:`Engine` is one model instance on ``tp`` GPUs. Each iteration it schedules,
vLLM V1 style, the running requests first (a decode token each, or the next chunk of
a prompt) and then waiting requests FCFS, under ``max_num_batched_tokens`` and
``max_num_seqs``. KV is paged in blocks; when a running request needs a block and
none is free the newest running request is preempted (its KV freed, recomputed when
it is scheduled again). The iteration's duration comes from the latency model.

Prefix caching. Token content is identified by :class:`Stream` objects: a request's
prompt is the first ``prompt_tokens`` tokens of its stream and its output the next
ones, so a later request on the same stream (an agent's next step) reuses every full
block still cached. A stream may start with the first ``shared_tokens`` tokens of a
parent stream (a shared system prompt, or a context rebuilt after a summary). Blocks
freed by finished or preempted requests stay cached until evicted, least recently
freed first, tail blocks of a request before its head (vLLM's order).

Per stream the cached blocks are kept as a contiguous run plus, for the part no one
holds, a list of release segments, so admission, release and eviction cost O(1)
amortized instead of O(blocks): agent prompts of 100k tokens are 6k blocks.

Fast stepping. When every running request is decoding and nothing can be admitted,
the next n iterations differ only in their KV lengths: they are priced in one
vectorized call and run as one SimPy timeout. A submission during such a step
interrupts it at the next iteration boundary, exactly where an iteration-stepped
engine would see it; recorded times agree with ``stepping = "iteration"`` to
floating-point rounding.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Generator, Sequence
from typing import Any, Protocol

import numpy as np
import simpy

from calibration.errors import ComemInputError
from calibration.latency import LatencyModel
from calibration.measured import MeasuredLatency, MeasuredProfile, load_profile
from sim.config import EngineConfig
from sim.metrics import MetricsRecorder

#: the longest fast step, in iterations (bounds the arrays priced at once)
MAX_FAST_STEP = 1 << 16
#: fast steps up to this many iterations are priced by a plain loop
SCALAR_STEP_LIMIT = 24


class IterationLatency(Protocol):
    """What the engine needs from a latency model."""

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int: ...

    def iteration_time_of(
        self,
        num_decode: int,
        decode_kv_total: int,
        prefill_new: Sequence[int] = (),
        prefill_cached: Sequence[int] = (),
    ) -> float: ...

    def steady_iteration_times(
        self, num_decode: int, kv_total0: int, chunk: int, cached0: int, steps: int
    ) -> np.ndarray: ...


class Stream:
    """The identity of a token sequence, for prefix caching.

    Its first ``shared_tokens`` tokens are those of ``parent`` (if any).
    """

    __slots__ = ("parent", "shared_tokens", "uid")

    def __init__(self, uid: int, parent: Stream | None = None, shared_tokens: int = 0) -> None:
        if shared_tokens < 0 or (parent is None and shared_tokens):
            raise ComemInputError("a stream shares tokens only with a parent, and >= 0 of them")
        self.uid = uid
        self.parent = parent
        self.shared_tokens = shared_tokens

    def __repr__(self) -> str:
        return f"Stream({self.uid})"


class StreamSpace:
    """Hands out stream identities; owned by one simulation (no global counter)."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def new(self, parent: Stream | None = None, shared_tokens: int = 0) -> Stream:
        return Stream(next(self._ids), parent, shared_tokens)


class _StreamState:
    """One stream's blocks in one engine's cache (indices in the stream's block space)."""

    __slots__ = ("cached_end", "holds", "own_start", "segments", "stream")

    def __init__(self, stream: Stream, own_start: int) -> None:
        self.stream = stream
        self.own_start = own_start  # blocks below are the parent's
        self.cached_end = own_start  # own blocks [own_start, cached_end) are cached
        self.holds: list[int] = []  # sorted hold ends (> own_start) of current holders
        # unheld cached blocks, as release segments [lo, hi, seq], ascending in index;
        # the tail segment is the least recently freed
        self.segments: list[list[int]] = []

    @property
    def max_hold(self) -> int:
        return self.holds[-1] if self.holds else self.own_start


class Request:
    """One generation request and what happened to it (times in simulated seconds)."""

    __slots__ = (
        "admitted",
        "admitted_s",
        "anon_blocks",
        "arrival_s",
        "cached_tokens",
        "computed",
        "done",
        "engine",
        "finished_s",
        "first_token",
        "first_token_s",
        "held_end",
        "id",
        "length",
        "output_tokens",
        "preemptions",
        "prompt_tokens",
        "reason",
        "status",
        "stream",
        "tag",
    )

    def __init__(
        self,
        engine: Engine,
        rid: int,
        prompt_tokens: int,
        output_tokens: int,
        stream: Stream | None,
        tag: Any,
    ) -> None:
        env = engine.env
        self.engine = engine
        self.id = rid
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.stream = stream
        self.tag = tag
        self.arrival_s = env.now
        self.admitted_s = math.nan
        self.first_token_s = math.nan
        self.finished_s = math.nan
        self.status = "waiting"
        self.reason = ""
        self.computed = 0  # tokens whose KV is computed
        self.length = prompt_tokens  # prompt + generated
        self.held_end = 0  # holds blocks [0, held_end) of its stream, cached/keyed
        self.anon_blocks = 0  # plus this many blocks of its own
        self.preemptions = 0
        self.cached_tokens = 0
        self.admitted = env.event()
        self.first_token = env.event()
        self.done = env.event()

    @property
    def generated(self) -> int:
        return self.length - self.prompt_tokens

    @property
    def blocks(self) -> int:
        return self.held_end + self.anon_blocks


class Engine:
    """A simulated serving engine. ``submit`` requests; SimPy events report progress."""

    def __init__(
        self,
        env: simpy.Environment,
        config: EngineConfig | None = None,
        latency: IterationLatency | None = None,
        recorder: MetricsRecorder | None = None,
    ) -> None:
        self.env = env
        self.config = config if config is not None else EngineConfig()
        cfg = self.config
        if latency is None:
            profile = load_profile(cfg.profile) if cfg.profile else None
            if isinstance(profile, MeasuredProfile):
                latency = MeasuredLatency(profile)
            else:
                latency = LatencyModel(cfg.model, cfg.gpu, cfg.tp, cfg.dtype, profile=profile)
        self.latency = latency
        overhead = cfg.request_overhead_s
        if overhead is None:
            overhead = float(getattr(latency, "request_overhead_s", 0.0))
        self.request_overhead_s = overhead
        #: server time per newly admitted request, charged to the admitting iteration
        #: (HTTP parsing and tokenization that share the engine's core; measured
        #: profiles fit it, GPU profiles have none)
        self.admission_s = float(getattr(latency, "admission_s", 0.0))
        self._first_admissions = 0
        self.recorder = recorder if recorder is not None else MetricsRecorder()
        capacity = cfg.kv_capacity_tokens or latency.kv_capacity_tokens(cfg.gpu_memory_utilization)
        self.block_size = cfg.block_size
        self.total_blocks = capacity // cfg.block_size
        if self.total_blocks < 1:
            raise ComemInputError(f"engine {cfg.name}: KV cache holds no block")
        self.stepping = cfg.stepping
        self.free_blocks = self.total_blocks  # blocks in no stream's cache
        self.evictable_blocks = 0  # cached blocks nobody holds
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._streams: dict[int, _StreamState] = {}
        self._heap: list[tuple[int, int, _StreamState]] = []
        self._seq = itertools.count(1)
        self._ids = itertools.count()
        self._wake: simpy.Event | None = None
        self._last_shape: tuple[int, list[int]] = (0, [])
        self.iterations = 0
        self.preemptions = 0
        self.process = env.process(self._run())

    # -- public API -------------------------------------------------------------------
    def submit(
        self,
        prompt_tokens: int,
        output_tokens: int,
        stream: Stream | None = None,
        tag: Any = None,
    ) -> Request:
        """Queue a request now. Its ``done`` event always fires (check ``status``)."""
        if prompt_tokens < 1 or output_tokens < 1:
            raise ComemInputError(
                f"engine {self.config.name}: a request needs >= 1 prompt and >= 1 output"
                f" token, got {prompt_tokens} and {output_tokens}"
            )
        req = Request(self, next(self._ids), int(prompt_tokens), int(output_tokens), stream, tag)
        cfg = self.config
        if prompt_tokens + 1 > cfg.max_model_len:
            self._reject(req, f"prompt of {prompt_tokens} tokens exceeds max_model_len")
            return req
        # vLLM stops generation at max_model_len
        req.output_tokens = min(req.output_tokens, cfg.max_model_len - prompt_tokens)
        need = self._blocks_for(req.prompt_tokens + req.output_tokens - 1)
        if need > self.total_blocks:
            self._reject(req, f"needs {need} KV blocks, the cache holds {self.total_blocks}")
            return req
        if self.request_overhead_s > 0:
            self.env.process(self._enqueue_after(req, self.request_overhead_s))
        else:
            self._enqueue(req)
        return req

    def _enqueue(self, req: Request) -> None:
        self.waiting.append(req)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _enqueue_after(self, req: Request, delay: float) -> Generator[simpy.Event, Any, None]:
        """A fixed per-request cost outside the iteration loop (HTTP, tokenization),
        measured on live servers (:mod:`calibration.measured`)."""
        yield self.env.timeout(delay)
        self._enqueue(req)

    def check_invariants(self) -> None:
        """Assert the block accounting is consistent (tests call this; cheap enough)."""
        held = sum(r.held_end + r.anon_blocks for r in self.running)
        anon = sum(r.anon_blocks for r in self.running)
        segs = sum(seg[1] - seg[0] for st in self._streams.values() for seg in st.segments)
        assert 0 <= self.free_blocks <= self.total_blocks, self.free_blocks
        assert segs == self.evictable_blocks, (segs, self.evictable_blocks)
        assert self.kv_used_blocks >= 0
        assert anon <= self.kv_used_blocks <= held, (anon, self.kv_used_blocks, held)
        for st in self._streams.values():
            assert st.own_start <= st.cached_end
            lo = max(st.max_hold, st.own_start)
            covered = sum(seg[1] - seg[0] for seg in st.segments)
            assert covered == max(0, st.cached_end - lo), (st.stream, covered, lo)
        for r in self.running:
            assert r.blocks * self.block_size >= r.computed, (r.id, r.blocks, r.computed)

    @property
    def kv_used_blocks(self) -> int:
        """Blocks held by running requests."""
        return self.total_blocks - self.free_blocks - self.evictable_blocks

    # -- block accounting -------------------------------------------------------------
    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _state(self, stream: Stream) -> _StreamState:
        st = self._streams.get(stream.uid)
        if st is None:
            own_start = stream.shared_tokens // self.block_size if stream.parent else 0
            st = _StreamState(stream, own_start)
            self._streams[stream.uid] = st
        return st

    def _hit(self, stream: Stream, max_blocks: int) -> int:
        """Cached blocks from the start of ``stream`` (at most ``max_blocks``)."""
        st = self._state(stream)
        o = st.own_start
        if o and stream.parent is not None:
            cap = min(o, max_blocks)
            h = self._hit(stream.parent, cap)
            if h < cap or max_blocks <= o:
                return h
        return min(max_blocks, st.cached_end)

    def _unheld_within(self, stream: Stream, end: int) -> int:
        """How many blocks of ``[0, end)`` are cached but held by nobody (evictable)."""
        st = self._state(stream)
        o = st.own_start
        count = 0
        if o and stream.parent is not None:
            count += self._unheld_within(stream.parent, min(end, o))
        lo = max(st.max_hold, o)
        hi = min(end, st.cached_end)
        return count + max(0, hi - lo)

    def _hold(self, stream: Stream, old: int, new: int) -> None:
        """A holder of ``[0, old)`` now holds ``[0, new)`` of ``stream`` (0: nothing)."""
        st = self._state(stream)
        o = st.own_start
        if o and stream.parent is not None:
            po, pn = min(old, o), min(new, o)
            if po != pn:
                self._hold(stream.parent, po, pn)
        oo = old if old > o else 0
        on = new if new > o else 0
        if oo == on:
            return
        before = st.max_hold
        if oo:
            del st.holds[bisect.bisect_left(st.holds, oo)]
        if on:
            bisect.insort(st.holds, on)
        after = st.max_hold
        if after < before:
            self._release_range(st, after, before)
        elif after > before:
            self._claim_range(st, before, after)

    def _release_range(self, st: _StreamState, lo: int, hi: int) -> None:
        lo = max(lo, st.own_start)
        hi = min(hi, st.cached_end)
        if lo >= hi:
            return
        seq = next(self._seq)
        st.segments.insert(0, [lo, hi, seq])
        self.evictable_blocks += hi - lo
        if len(st.segments) == 1:
            heapq.heappush(self._heap, (seq, st.stream.uid, st))

    def _claim_range(self, st: _StreamState, lo: int, hi: int) -> None:
        segs = st.segments
        while segs and segs[0][0] < hi:
            seg = segs[0]
            cut = min(seg[1], hi) - seg[0]
            self.evictable_blocks -= cut
            seg[0] += cut
            if seg[0] >= seg[1]:
                segs.pop(0)
            else:
                break

    def _evict(self, n: int) -> None:
        """Evict ``n`` unheld cached blocks, least recently freed first."""
        while n > 0:
            seq, _, st = heapq.heappop(self._heap)
            segs = st.segments
            if not segs or segs[-1][2] != seq:
                continue  # stale entry
            seg = segs[-1]
            k = min(n, seg[1] - seg[0])
            seg[1] -= k
            st.cached_end = seg[1]
            n -= k
            self.evictable_blocks -= k
            self.free_blocks += k
            if seg[0] >= seg[1]:
                segs.pop()
            if segs:
                heapq.heappush(self._heap, (segs[-1][2], st.stream.uid, st))

    def _allocate(self, req: Request, n: int) -> None:
        if n <= 0:
            return
        if self.free_blocks < n:
            self._evict(n - self.free_blocks)
        self.free_blocks -= n
        req.anon_blocks += n

    def _extend(self, stream: Stream, start: int, end: int) -> tuple[int, int]:
        """Make a request's filled blocks ``[start, end)`` of ``stream`` cached blocks.

        Returns (adopted, keyed), contiguous from ``start``: blocks already cached (the
        request computed a duplicate, e.g. after its prefix hit was capped or it was
        preempted) are adopted and the copy freed; blocks that continue the cached run
        are keyed. Past a gap (another request computing the same stream further on),
        blocks stay the request's own.
        """
        st = self._state(stream)
        o = st.own_start
        adopted = keyed = 0
        if start < o and stream.parent is not None:
            pe = min(end, o)
            adopted, keyed = self._extend(stream.parent, start, pe)
            if start + adopted + keyed < pe:
                return adopted, keyed
            start = pe
        if start < end and st.cached_end > start:
            a = min(end, st.cached_end) - start
            adopted += a
            start += a
        if start < end and st.cached_end == start:
            st.cached_end = end
            keyed += end - start
        return adopted, keyed

    def _register(self, req: Request) -> None:
        """Key the request's newly filled blocks (prefix caching)."""
        full = req.computed // self.block_size
        if req.stream is None or full <= req.held_end or not self.config.enable_prefix_caching:
            return
        adopted, keyed = self._extend(req.stream, req.held_end, full)
        if adopted or keyed:
            self._hold(req.stream, req.held_end, req.held_end + adopted + keyed)
            req.held_end += adopted + keyed
            req.anon_blocks -= adopted + keyed
            self.free_blocks += adopted

    def _release(self, req: Request) -> None:
        if req.stream is not None and req.held_end:
            self._hold(req.stream, req.held_end, 0)
        self.free_blocks += req.anon_blocks
        req.held_end = 0
        req.anon_blocks = 0

    # -- request lifecycle ----------------------------------------------------------------
    def _record(self, req: Request) -> None:
        gen = req.generated
        tpot = (req.finished_s - req.first_token_s) / (gen - 1) if gen > 1 else math.nan
        self.recorder.add_request(
            (
                self.config.name,
                req.id,
                req.tag,
                req.status,
                req.reason,
                req.prompt_tokens,
                gen,
                req.arrival_s,
                req.admitted_s,
                req.first_token_s,
                req.finished_s,
                req.admitted_s - req.arrival_s,
                req.first_token_s - req.arrival_s,
                tpot,
                req.finished_s - req.arrival_s,
                req.preemptions,
                req.cached_tokens,
            )
        )

    def _reject(self, req: Request, reason: str) -> None:
        req.status = "rejected"
        req.reason = reason
        req.finished_s = self.env.now
        self._record(req)
        req.done.succeed(req)

    def _finish(self, req: Request) -> None:
        self._register(req)
        self._release(req)
        self.running.remove(req)
        req.status = "finished"
        req.finished_s = self.env.now
        self._record(req)
        req.done.succeed(req)

    def _preempt(self, req: Request) -> None:
        self._release(req)
        req.computed = 0
        req.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(req)

    def _admission(self, req: Request, budget: int) -> tuple[int, int, int] | None:
        """(hit blocks, tokens to schedule, new blocks) if ``req`` can start now."""
        hit = 0
        if req.stream is not None and self.config.enable_prefix_caching:
            # vLLM recomputes at least the last prompt token
            hit = self._hit(req.stream, (req.length - 1) // self.block_size)
        start = hit * self.block_size
        n = min(req.length - start, budget)
        need = self._blocks_for(start + n) - hit
        unheld = self._unheld_within(req.stream, hit) if req.stream is not None and hit else 0
        if need > self.free_blocks + self.evictable_blocks - unheld:
            return None
        return hit, n, need

    # -- one iteration ------------------------------------------------------------------
    def _schedule(self) -> list[tuple[Request, int]]:
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted = False
        i = 0
        running = self.running
        bs = self.block_size
        append = scheduled.append
        while i < len(running) and budget > 0:
            req = running[i]
            c = req.computed
            n = req.length - c
            if n > budget:
                n = budget
            need = (c + n + bs - 1) // bs - req.held_end - req.anon_blocks
            if need > 0:
                while need > self.free_blocks + self.evictable_blocks:
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim is req:
                        break
                if preempted and (not running or i >= len(running) or running[i] is not req):
                    break
                self._allocate(req, need)
            append((req, n))
            budget -= n
            i += 1
        if preempted:
            return scheduled
        now = self.env.now
        while self.waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            req = self.waiting[0]
            plan = self._admission(req, budget)
            if plan is None:
                break
            hit, n, need = plan
            self.waiting.popleft()
            if hit:
                self._hold(req.stream, 0, hit)  # type: ignore[arg-type]
            req.held_end = hit
            req.computed = hit * self.block_size
            self._allocate(req, need)
            running.append(req)
            if req.status == "waiting":
                self._first_admissions += 1
                req.status = "running"
                req.admitted_s = now
                req.cached_tokens = req.computed
                req.admitted.succeed(req)
            scheduled.append((req, n))
            budget -= n
        return scheduled

    def _price(self, scheduled: list[tuple[Request, int]]) -> float:
        n_dec = 0
        kv = 0
        new: list[int] = []
        cached: list[int] = []
        for req, n in scheduled:
            c = req.computed
            if (
                n == 1 and c > 0 and req.length - c == 1
            ):  # one new token over a computed prefix: a decode (a chunked
                # prompt's last single token has the same shape and is priced so)
                n_dec += 1
                kv += c + 1
            else:
                new.append(n)
                cached.append(c)
        self._last_shape = (n_dec, new)
        duration = self.latency.iteration_time_of(n_dec, kv, new, cached)
        if self._first_admissions:
            duration += self.admission_s * self._first_admissions
            self._first_admissions = 0
        return duration

    def _apply(self, scheduled: list[tuple[Request, int]]) -> bool:
        """Advance the scheduled requests by their tokens; True if an event fired."""
        fired = False
        now = self.env.now
        bs = self.block_size
        for req, n in scheduled:
            req.computed += n
            if req.computed == req.length:  # a token is sampled
                req.length += 1
                if req.first_token_s != req.first_token_s:  # NaN: first token now
                    req.first_token_s = now
                    req.first_token.succeed(req)
                    fired = True
                if req.length - req.prompt_tokens >= req.output_tokens:
                    self._finish(req)
                    fired = True
                    continue
            if req.computed // bs > req.held_end:
                self._register(req)
        return fired

    def _record_step(self, start: float, iterations: int, decode: int, chunks: list[int]) -> None:
        if not self.config.record_iterations:
            return
        self.recorder.iterations.append(
            (
                self.config.name,
                start,
                self.env.now - start,
                iterations,
                decode,
                len(chunks),
                sum(chunks),
                len(self.running),
                len(self.waiting),
                self.kv_used_blocks,
                self.evictable_blocks,
                self.total_blocks,
            )
        )

    # -- fast steps ------------------------------------------------------------------
    def _steady_plan(self) -> tuple[int, list[Request], Request | None, int] | None:
        """(iterations, decoders, prefiller, chunk) of a run of same-shape iterations.

        Same shape: the running requests in order take one decode token each, until at
        most one partial prompt takes all the remaining budget (later ones get
        nothing, as in vLLM V1); no prompt completes, nothing can be admitted, nobody is
        preempted, and the step ends at the first completion. None if the next
        iteration must be scheduled one by one.
        """
        running = self.running
        if self.stepping != "fast" or not running:
            return None
        budget = self.config.max_num_batched_tokens
        decoders: list[Request] = []
        prefiller: Request | None = None
        chunk = 0
        steps = MAX_FAST_STEP
        for req in running:
            if budget == 0:
                break
            left = req.length - req.computed
            if left == 1 and req.computed > 0 and req.first_token_s == req.first_token_s:
                decoders.append(req)
                budget -= 1
                remaining = req.output_tokens - req.generated
                if remaining < steps:
                    steps = remaining
            elif left <= budget:
                return None  # a prompt completes (its first token) in this iteration
            else:
                prefiller, chunk, budget = req, budget, 0
                # full chunks that leave the prompt unfinished
                steps = min(steps, -(-left // chunk) - 1)
        if budget > 0 and self.waiting and self._may_admit(budget):
            return None
        # no preemption inside the step: blocks for all of it must be at hand
        avail = self.free_blocks + self.evictable_blocks
        bs = self.block_size

        def need(k: int) -> int:
            total = sum(-(-(r.computed + k) // bs) - r.held_end - r.anon_blocks for r in decoders)
            if prefiller is not None:
                total += -(-(prefiller.computed + k * chunk) // bs) - prefiller.blocks
            return total

        if need(steps) > avail:
            lo, hi = 0, steps  # need(lo) <= avail < need(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if need(mid) <= avail:
                    lo = mid
                else:
                    hi = mid
            steps = lo
        if steps < 2:
            return None
        return steps, decoders, prefiller, chunk

    def _may_admit(self, budget: int) -> bool:
        """Could the head of the queue be admitted (with ``budget`` tokens left)?"""
        if len(self.running) >= self.config.max_num_seqs:
            return False
        head = self.waiting[0]
        if head.stream is not None and self.config.enable_prefix_caching:
            # blocks keyed during the step could raise its prefix hit: be exact, step
            related = _lineage_uids(head.stream)
            for req in self.running:
                if req.stream is not None and not related.isdisjoint(_lineage_uids(req.stream)):
                    return True
        return self._admission(head, budget) is not None

    def _fast_step(
        self, plan: tuple[int, list[Request], Request | None, int]
    ) -> Generator[simpy.Event, Any, bool]:
        steps, decoders, prefiller, chunk = plan
        b = len(decoders)
        kv0 = sum(r.computed + 1 for r in decoders)
        cached0 = prefiller.computed if prefiller is not None else 0
        if steps <= SCALAR_STEP_LIMIT:  # numpy's per-call cost exceeds the loop's
            price = self.latency.iteration_time_of
            news = [chunk] if chunk else []
            acc = 0.0
            cum = []
            for j in range(steps):
                acc += price(b, kv0 + b * j, news, [cached0 + chunk * j] if chunk else [])
                cum.append(acc)
            ends = np.asarray(cum)
        else:
            times = self.latency.steady_iteration_times(b, kv0, chunk, cached0, steps)
            ends = np.cumsum(times)
        start = self.env.now
        self._wake = self.env.event()
        finish = self.env.timeout(float(ends[-1]))
        yield finish | self._wake
        self._wake = None
        done = steps
        if not finish.processed:  # (a Timeout counts as triggered from creation)
            # a submission arrived: stop at the end of the iteration in flight
            k = min(int(np.searchsorted(ends, self.env.now - start, side="left")), steps - 1)
            done = k + 1
            yield self.env.timeout(max(0.0, start + float(ends[k]) - self.env.now))
        bs = self.block_size
        grants: list[tuple[Request, int]] = [
            (r, -(-(r.computed + done) // bs) - r.blocks) for r in decoders
        ]
        if prefiller is not None:
            grants.append(
                (prefiller, -(-(prefiller.computed + done * chunk) // bs) - prefiller.blocks)
            )
        total = sum(n for _, n in grants)
        if total > self.free_blocks:
            self._evict(total - self.free_blocks)
        self.free_blocks -= total
        fired = False
        for req, n in grants:
            req.anon_blocks += n
        if prefiller is not None:
            prefiller.computed += done * chunk
            self._register(prefiller)
        for req in decoders:
            req.computed += done
            req.length += done
            if req.length - req.prompt_tokens >= req.output_tokens:
                self._finish(req)
                fired = True
            elif req.computed // bs > req.held_end:
                self._register(req)
        self.iterations += done
        self._record_step(start, done, b, [chunk] * done if chunk else [])
        return fired

    # -- the engine process -----------------------------------------------------------------
    def _run(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        while True:
            if not self.running and not self.waiting:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            plan = self._steady_plan()
            if plan is not None:
                fired = yield from self._fast_step(plan)
            else:
                start = env.now
                scheduled = self._schedule()
                if not scheduled:
                    raise RuntimeError(f"engine {self.config.name}: no progress possible")
                duration = self._price(scheduled)
                yield env.timeout(duration)
                self.iterations += 1
                fired = self._apply(scheduled)
                n_dec, chunks = self._last_shape
                self._record_step(start, 1, n_dec, chunks)
            if fired:
                # let processes woken at this instant submit before the next schedule
                yield env.timeout(0)


def _lineage_uids(stream: Stream) -> set[int]:
    uids = {stream.uid}
    parent = stream.parent
    while parent is not None:
        uids.add(parent.uid)
        parent = parent.parent
    return uids
