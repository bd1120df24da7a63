"""vLLM V1's paged KV cache: a block pool, its free-block queue, and the prefix cache.

This module is the one KV-cache model of the project: the simulated engine, the
static-batch predictor and the measured-profile fit all schedule through it (via
:mod:`engine.scheduler`). It has no notion of time and no SimPy.

What it reproduces (``VLLM_FACTS.md`` section 2, from vLLM 0.12 / 0.19's
``block_pool.py`` and ``kv_cache_manager.py``):

- The pool holds ``total_blocks`` usable blocks of ``block_size`` tokens.
- **One free queue** holds every block no request references, cached or not.
  Allocation pops from its front; freed blocks are appended at its back, a request's
  blocks **tail first**, so a request's tail is evicted before its head. A popped block
  that carried a prefix-cache entry loses it (eviction). The front is therefore the
  least recently freed block, whether it is cached or not: vLLM does not prefer
  never-cached free blocks over cached ones.
- The "free" count a request is checked against is the queue's length: unreferenced
  cached blocks never cause a preemption.
- A prefix hit is the longest run of cached full blocks from block 0; hitting blocks
  that sit in the free queue takes them out of it ("touch").

Token identity is modelled by :class:`Stream` objects instead of hashes: a request's
prompt is the first tokens of its stream and its output the next ones; a stream may
start with the first ``shared_tokens`` tokens of a parent stream (a shared system
prompt, a context rebuilt after a summary). Per stream the cached blocks are one
contiguous run plus, for its unreferenced part, *release segments* that are also the
free queue's entries, so touching, freeing and evicting cost O(1) amortized rather
than O(blocks): agent prompts of 100k tokens are 6k blocks.

A second tier, vLLM's native CPU offloading, is :mod:`engine.offload`; the
scheduler stores blocks to it and looks prefixes up in it. vLLM's store is
write-through, not on eviction, so the GPU cache itself needs no hook for it.
"""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict

from calibration.errors import ComemInputError


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

    def lineage(self) -> list[Stream]:
        """This stream and its ancestors, the stream itself first."""
        out = [self]
        parent = self.parent
        while parent is not None:
            out.append(parent)
            parent = parent.parent
        return out


class StreamSpace:
    """Hands out stream identities; owned by one simulation (no global counter)."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def new(self, parent: Stream | None = None, shared_tokens: int = 0) -> Stream:
        return Stream(next(self._ids), parent, shared_tokens)


class FreeSegment:
    """A run of blocks in the free queue: blocks ``[lo, hi)`` of ``state``'s stream, popped
    from ``hi - 1`` down (tail first), or, with ``state`` None, ``hi - lo`` anonymous
    blocks (never cached, or a request's uncached tail)."""

    __slots__ = ("hi", "lo", "seq", "state")

    def __init__(self, state: StreamState | None, lo: int, hi: int, seq: int) -> None:
        self.state = state
        self.lo = lo
        self.hi = hi
        self.seq = seq


class StreamState:
    """One stream's blocks in one cache (indices in the stream's block space).

    Own blocks ``[own_start, cached_end)`` are cached; blocks below ``own_start`` are the
    parent's. ``holds`` are the (sorted) hold ends of the requests referencing a prefix
    of the stream; the unreferenced cached blocks ``[max(max_hold, own_start),
    cached_end)`` are covered by ``segments`` (ascending in index, the highest one the
    least recently freed), which are also entries of the free queue.
    """

    __slots__ = ("cached_end", "holds", "own_runners", "own_start", "runners", "segments", "stream")

    def __init__(self, stream: Stream, own_start: int) -> None:
        self.stream = stream
        self.own_start = own_start
        self.cached_end = own_start
        self.holds: list[int] = []
        self.segments: list[FreeSegment] = []
        #: running requests whose stream lineage includes this stream (see
        #: :meth:`KVCache.enter` / :meth:`KVCache.leave`)
        self.runners = 0
        #: running requests on this very stream
        self.own_runners = 0

    @property
    def max_hold(self) -> int:
        return self.holds[-1] if self.holds else self.own_start


class KVCache:
    """Block pool + free queue + prefix cache of one engine (see the module docstring)."""

    def __init__(
        self, total_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True
    ) -> None:
        if total_blocks < 1:
            raise ComemInputError(f"the KV cache holds no block (total_blocks={total_blocks})")
        if block_size < 1:
            raise ComemInputError(f"block_size must be >= 1, got {block_size}")
        self.total_blocks = int(total_blocks)
        self.block_size = int(block_size)
        self.enable_prefix_caching = enable_prefix_caching
        self._seq = itertools.count()
        #: the free queue, front first: seq -> segment
        self.queue: OrderedDict[int, FreeSegment] = OrderedDict()
        self.queue_blocks = 0  # blocks in the free queue (vLLM's num_free_blocks)
        self.cached_free_blocks = 0  # of which still carry a prefix-cache entry
        self._states: dict[int, StreamState] = {}
        self.evicted_blocks = 0
        self.free_anonymous(self.total_blocks)

    # -- counts -------------------------------------------------------------------------
    @property
    def used_blocks(self) -> int:
        """Blocks referenced by requests."""
        return self.total_blocks - self.queue_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # -- streams ------------------------------------------------------------------------
    def state(self, stream: Stream) -> StreamState:
        st = self._states.get(stream.uid)
        if st is None:
            own_start = stream.shared_tokens // self.block_size if stream.parent else 0
            st = StreamState(stream, own_start)
            self._states[stream.uid] = st
        return st

    def lineage_states(self, stream: Stream) -> list[StreamState]:
        """States of ``stream`` and its ancestors, the stream's own first."""
        return [self.state(s) for s in stream.lineage()]

    def enter(self, stream: Stream) -> None:
        """A request on ``stream`` starts running (it may key blocks of its lineage)."""
        states = self.lineage_states(stream)
        states[0].own_runners += 1
        for st in states:
            st.runners += 1

    def leave(self, stream: Stream) -> None:
        states = self.lineage_states(stream)
        states[0].own_runners -= 1
        for st in states:
            st.runners -= 1

    def hit(self, stream: Stream, max_blocks: int) -> int:
        """Cached blocks from the start of ``stream`` (at most ``max_blocks``)."""
        st = self.state(stream)
        o = st.own_start
        if o and stream.parent is not None:
            cap = min(o, max_blocks)
            h = self.hit(stream.parent, cap)
            if h < cap or max_blocks <= o:
                return h
        return max(0, min(max_blocks, st.cached_end))

    def unheld_within(self, stream: Stream, end: int) -> int:
        """How many blocks of ``[0, end)`` are cached but referenced by nobody (queued)."""
        st = self.state(stream)
        o = st.own_start
        count = 0
        if o and stream.parent is not None:
            count += self.unheld_within(stream.parent, min(end, o))
        lo = max(st.max_hold, o)
        hi = min(end, st.cached_end)
        return count + max(0, hi - lo)

    # -- references -----------------------------------------------------------------------
    def hold(self, stream: Stream, old: int, new: int) -> None:
        """A holder of ``[0, old)`` of ``stream`` now holds ``[0, new)`` (0: nothing).

        Blocks that nobody holds any more join the free queue, the stream's own (tail)
        part before its parent's (head) part, as vLLM frees a request tail first.
        """
        st = self.state(stream)
        o = st.own_start
        oo = old if old > o else 0
        on = new if new > o else 0
        if oo != on:
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
        if o and stream.parent is not None:
            po, pn = min(old, o), min(new, o)
            if po != pn:
                self.hold(stream.parent, po, pn)

    def _release_range(self, st: StreamState, lo: int, hi: int) -> None:
        lo = max(lo, st.own_start)
        hi = min(hi, st.cached_end)
        if lo >= hi:
            return
        seg = FreeSegment(st, lo, hi, next(self._seq))
        st.segments.insert(0, seg)
        self.queue[seg.seq] = seg
        self.queue_blocks += hi - lo
        self.cached_free_blocks += hi - lo

    def _claim_range(self, st: StreamState, lo: int, hi: int) -> None:
        """Take cached blocks below ``hi`` out of the free queue (a prefix hit touches them)."""
        segs = st.segments
        while segs and segs[0].lo < hi:
            seg = segs[0]
            cut = min(seg.hi, hi) - seg.lo
            self.queue_blocks -= cut
            self.cached_free_blocks -= cut
            seg.lo += cut
            if seg.lo >= seg.hi:
                segs.pop(0)
                del self.queue[seg.seq]
            else:
                break

    def prime(self, stream: Stream, tokens: int) -> None:
        """Put the full blocks of ``stream``'s first ``tokens`` tokens in the cache,
        unreferenced (as a warm-up request would leave them)."""
        st = self.state(stream)
        end = tokens // self.block_size
        if end <= st.cached_end:
            return
        if st.cached_end != st.own_start or st.holds or st.segments:
            raise ValueError("prime() works on a stream with nothing cached yet")
        self.pop_free(end - st.own_start)
        st.cached_end = end
        self._release_range(st, st.own_start, end)

    def free_anonymous(self, n: int) -> None:
        """Append ``n`` uncached blocks to the free queue."""
        if n <= 0:
            return
        seg = FreeSegment(None, 0, n, next(self._seq))
        self.queue[seg.seq] = seg
        self.queue_blocks += n

    def pop_free(self, n: int) -> None:
        """Take ``n`` blocks from the front of the free queue (evicting cached ones)."""
        if n > self.queue_blocks:
            raise RuntimeError(f"KV cache: {n} blocks asked, {self.queue_blocks} free")
        queue = self.queue
        self.queue_blocks -= n
        while n > 0:
            seg = queue[next(iter(queue))]
            k = min(n, seg.hi - seg.lo)
            seg.hi -= k
            n -= k
            st = seg.state
            if st is not None:
                st.cached_end = seg.hi
                self.cached_free_blocks -= k
                self.evicted_blocks += k
            if seg.lo >= seg.hi:
                queue.popitem(last=False)
                if st is not None:
                    st.segments.pop()

    def extend(self, stream: Stream, start: int, end: int) -> tuple[int, int]:
        """Make a request's filled blocks ``[start, end)`` of ``stream`` cached blocks.

        Returns (adopted, keyed), contiguous from ``start``: blocks already cached (the
        request computed a duplicate, e.g. after its prefix hit was capped or it was
        preempted) are adopted and the request's copy freed; blocks that continue the
        cached run are keyed. Past a gap (another request computing the same stream
        further on), blocks stay the request's own.
        """
        st = self.state(stream)
        o = st.own_start
        adopted = keyed = 0
        if start < o and stream.parent is not None:
            pe = min(end, o)
            adopted, keyed = self.extend(stream.parent, start, pe)
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

    def keys_alone(self, stream: Stream, start: int) -> bool:
        """Would blocks a running request computes from block ``start`` of ``stream`` on
        simply extend the cached run (none of them cached yet, no other running request
        that could key them first)? Then keying them late, in bulk, changes nothing."""
        st = self._states[stream.uid]
        if st.runners != 1:
            return False
        if start < st.own_start and stream.parent is not None:
            # the parent's part must end exactly here and nothing of our own be cached yet
            return st.cached_end == st.own_start and self.keys_alone(stream.parent, start)
        return st.cached_end == start

    # -- what a free-queue pop would do to one prefix ---------------------------------------
    def first_disruptive_pop(self, stream: Stream, hit: int, max_pops: int) -> int | None:
        """Position (0-based) in the free queue of the first block whose eviction would cut
        ``stream``'s prefix hit of ``hit`` blocks by more than that one block, within the
        first ``max_pops`` pops; None if there is none.

        Evicting the hit's last block, or a block beyond it, never makes a waiting
        request easier to admit; evicting a block inside it can (the rest of the hit is
        no longer counted against the free blocks). See :mod:`engine.stepping`.
        """
        ranges: dict[int, tuple[int, int]] = {}  # state uid -> lineage block range
        upper = 1 << 62
        for s in stream.lineage():
            own_start = self.state(s).own_start if s.parent is not None else 0
            ranges[s.uid] = (own_start, upper)
            upper = own_start
            if upper == 0:
                break
        h = hit
        pos = 0
        for seg in self.queue.values():
            if pos >= max_pops:
                return None
            size = seg.hi - seg.lo
            rng = ranges.get(seg.state.stream.uid) if seg.state is not None else None
            if rng is None:
                pos += size
                continue
            lo = max(seg.lo, rng[0])
            hi = min(seg.hi, rng[1])
            if lo >= hi:
                pos += size
                continue
            # pops run from seg.hi - 1 down; those above ``hi`` are not of this lineage
            first = pos + (seg.hi - hi)
            if hi >= h:  # pops at or above the hit's end, then tail pops down to lo
                h = min(h, lo)
            else:
                return first if first < max_pops else None
            pos += size
        return None

    # -- checks -------------------------------------------------------------------------
    def check_invariants(self, own_blocks: int, held_blocks: int) -> None:
        """Assert the block accounting is consistent: requests reference between
        ``own_blocks`` (their uncached blocks) and ``held_blocks`` (all their blocks,
        shared prefixes counted once per holder)."""
        queued = sum(seg.hi - seg.lo for seg in self.queue.values())
        assert queued == self.queue_blocks, (queued, self.queue_blocks)
        cached = sum(seg.hi - seg.lo for seg in self.queue.values() if seg.state is not None)
        assert cached == self.cached_free_blocks, (cached, self.cached_free_blocks)
        assert 0 <= self.queue_blocks <= self.total_blocks
        assert own_blocks <= self.used_blocks <= held_blocks, (own_blocks, self.used_blocks)
        for st in self._states.values():
            assert st.own_start <= st.cached_end, st.stream
            lo = max(st.max_hold, st.own_start)
            covered = sum(seg.hi - seg.lo for seg in st.segments)
            assert covered == max(0, st.cached_end - lo), (st.stream, covered, lo)
            for a, b in zip(st.segments, st.segments[1:], strict=False):
                assert a.hi <= b.lo and a.seq > b.seq, (st.stream, a.lo, b.lo)
            assert st.runners >= 0 and st.own_runners >= 0
