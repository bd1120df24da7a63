"""vLLM's native CPU KV offloading: the host-memory tier behind the GPU cache, and the
buffer of stores issued to it but not visible yet (no time, no SimPy).

The scheduler (:mod:`engine.scheduler`) hands every block that becomes full to the
:class:`StoreBuffer`; the stores issued at the start of an iteration reach the
:class:`OffloadTier` from the next one on, as vLLM 0.19's do. A waiting request's prefix
lookup continues on the tier past its GPU hit.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from calibration.errors import ComemInputError
from engine.kv_cache import Stream


def lineage_ranges(
    stream: Stream, block_size: int, lo: int, hi: int
) -> list[tuple[Stream, int, int]]:
    """Split blocks ``[lo, hi)`` of ``stream`` by the stream that owns them: blocks below
    ``shared_tokens // block_size`` are the parent's (recursively)."""
    out: list[tuple[Stream, int, int]] = []
    s: Stream | None = stream
    while s is not None and lo < hi:
        own = s.shared_tokens // block_size if s.parent is not None else 0
        if hi > own:
            out.append((s, max(lo, own), hi))
            hi = own
        s = s.parent
    out.reverse()
    return out


class _CpuRun:
    """Blocks ``[lo, hi)`` of one stream on the CPU tier, all last used at ``key``."""

    __slots__ = ("alive", "hi", "key", "lo", "uid")

    def __init__(self, uid: int, lo: int, hi: int, key: tuple[Any, ...]) -> None:
        self.uid = uid
        self.lo = lo
        self.hi = hi
        self.key = key
        self.alive = True


def _run_lo(run: _CpuRun) -> int:
    return run.lo


def _run_hi(run: _CpuRun) -> int:
    return run.hi


class OffloadTier:
    """vLLM's native CPU KV offloading (``--kv-offloading-backend native
    --kv-offloading-size GiB``; ``VLLM_FACTS.md`` section 3, vLLM 0.19): an LRU of KV
    blocks in host memory behind the GPU cache.

    - Stores are write-through: every block that becomes full is stored once (the
      scheduler issues them at the start of the next iteration, as vLLM 0.19 does);
      when the tier is full the least recently used blocks are evicted, lower block
      indices of one store first (the order vLLM inserts them).
    - A lookup (only for a request with nothing computed: new or preempted) extends
      the GPU prefix hit by consecutive whole blocks found here, and marks them most
      recently used.
    - Loading ``n`` blocks takes ``n * load_s_per_block`` on the host-to-device copy
      queue (one ``cudaMemcpyAsync`` per block, in order, overlapping compute).

    Keys order recency: ``(iteration, 0, ...)`` for stores issued at the start of an
    iteration, ``(iteration, 1, ...)`` for lookups during its scheduling.
    Not modelled: a store that cannot evict anything (blocks being loaded are pinned in
    vLLM; here every block can be evicted) and the time a store itself takes (the GPU
    blocks of a finished request are freed at once, not when its stores complete).
    """

    def __init__(self, capacity_blocks: int, block_size: int, load_s_per_block: float) -> None:
        if capacity_blocks < 1:
            raise ComemInputError(f"the CPU offload tier holds no block ({capacity_blocks})")
        if not load_s_per_block >= 0:
            raise ComemInputError(f"load time per block must be >= 0, got {load_s_per_block}")
        self.capacity_blocks = int(capacity_blocks)
        self.block_size = int(block_size)
        self.load_s_per_block = float(load_s_per_block)
        self.blocks = 0
        self._runs: dict[int, list[_CpuRun]] = {}
        self._heap: list[tuple[tuple[Any, ...], int, _CpuRun]] = []
        self._counter = itertools.count()
        self.stored_blocks = 0
        self.evicted_blocks = 0
        self.loaded_blocks = 0

    def _push(self, run: _CpuRun) -> None:
        heapq.heappush(self._heap, (run.key, next(self._counter), run))

    def _present(self, uid: int, lo: int, hi: int) -> list[tuple[int, int]]:
        """Parts of ``[lo, hi)`` of stream ``uid`` that are NOT on the tier."""
        runs = self._runs.get(uid)
        if not runs or runs[-1].hi <= lo:  # the common case: stores extend a stream
            return [(lo, hi)] if lo < hi else []
        missing = []
        cur = lo
        # runs are disjoint and sorted: skip those ending at or before lo at once
        for i in range(bisect.bisect_right(runs, lo, key=_run_hi), len(runs)):
            run = runs[i]
            if run.lo >= hi:
                break
            if run.lo > cur:
                missing.append((cur, run.lo))
            cur = max(cur, run.hi)
            if cur >= hi:
                break
        if cur < hi:
            missing.append((cur, hi))
        return missing

    def _insert(self, uid: int, lo: int, hi: int, key: tuple[Any, ...]) -> None:
        runs = self._runs.setdefault(uid, [])
        run = _CpuRun(uid, lo, hi, key)
        if not runs or runs[-1].lo < lo:  # after every run (the common case)
            runs.append(run)
        else:
            runs.insert(bisect.bisect_left(runs, lo, key=_run_lo), run)
        self._push(run)
        self.blocks += hi - lo

    def _cut(self, uid: int, lo: int, hi: int) -> None:
        """Take blocks ``[lo, hi)`` of ``uid`` out of their runs (to re-key them)."""
        runs = self._runs.get(uid)
        if not runs:
            return
        keep: list[_CpuRun] = []
        for run in runs:
            if run.hi <= lo or run.lo >= hi:
                keep.append(run)
                continue
            run.alive = False
            self.blocks -= run.hi - run.lo
            for a, b in ((run.lo, min(run.hi, lo)), (max(run.lo, hi), run.hi)):
                if a < b:
                    part = _CpuRun(uid, a, b, run.key)
                    keep.append(part)
                    self._push(part)
                    self.blocks += b - a
        keep.sort(key=lambda r: r.lo)
        self._runs[uid] = keep

    def store(self, stream: Stream, lo: int, hi: int, key: tuple[Any, ...]) -> None:
        """Blocks ``[lo, hi)`` of ``stream`` became full; store those not on the tier yet."""
        own = stream.shared_tokens // self.block_size if stream.parent is not None else 0
        runs = self._runs.get(stream.uid)
        if lo >= own and (not runs or runs[-1].hi <= lo):
            # the common case, a stream's own blocks past all it has stored: what
            # lineage_ranges, _present and _insert would do, inline
            if lo < hi:
                run = _CpuRun(stream.uid, lo, hi, key)
                if runs is None:
                    self._runs[stream.uid] = [run]
                else:
                    runs.append(run)
                heapq.heappush(self._heap, (key, next(self._counter), run))
                self.blocks += hi - lo
                self.stored_blocks += hi - lo
            self._evict()
            return
        for s, a, b in lineage_ranges(stream, self.block_size, lo, hi):
            for m_lo, m_hi in self._present(s.uid, a, b):
                self._insert(s.uid, m_lo, m_hi, key)
                self.stored_blocks += m_hi - m_lo
        self._evict()

    def _evict(self) -> None:
        heap = self._heap
        while self.blocks > self.capacity_blocks and heap:
            _, _, run = heap[0]
            if not run.alive:
                heapq.heappop(heap)
                continue
            k = min(self.blocks - self.capacity_blocks, run.hi - run.lo)
            run.lo += k  # lower block indices of a store go first
            self.blocks -= k
            self.evicted_blocks += k
            if run.lo >= run.hi:
                run.alive = False
                heapq.heappop(heap)
                runs = self._runs[run.uid]
                i = bisect.bisect_left(runs, run.hi, key=_run_hi)  # hi is unique
                if i < len(runs) and runs[i] is run:
                    del runs[i]
                else:
                    runs.remove(run)

    def run_length(self, stream: Stream, start: int, max_blocks: int) -> int:
        """Consecutive blocks of ``stream`` on the tier from block ``start`` (at most up to
        block ``max_blocks``)."""
        if start >= max_blocks:
            return 0
        cur = start
        for s, a, b in lineage_ranges(stream, self.block_size, start, max_blocks):
            if a != cur:
                break
            runs = self._runs.get(s.uid, [])
            for i in range(bisect.bisect_right(runs, cur, key=_run_hi), len(runs)):
                run = runs[i]
                if run.lo > cur:
                    break
                cur = min(run.hi, b)
                if cur >= b:
                    break
            if cur < b:
                break
        return cur - start

    def touch(self, stream: Stream, lo: int, hi: int, key: tuple[Any, ...]) -> None:
        """A lookup used blocks ``[lo, hi)``: they become the most recently used."""
        for s, a, b in lineage_ranges(stream, self.block_size, lo, hi):
            self._cut(s.uid, a, b)
            self._insert(s.uid, a, b, key)
        self.loaded_blocks += hi - lo


class StoreBuffer:
    """Stores issued to the CPU tier but not visible on it yet.

    vLLM 0.19 issues a block's store at the start of the iteration after the one it
    became full in, and a lookup sees it from the iteration after that. Each pending
    store is ``(key, id, stream, lo, hi)``, ordered by its recency key
    ``(iteration issued, 1, run_seq, first block)``.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[Any, ...], int, Stream, int, int]] = []
        self._ids = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._heap)

    def add(
        self,
        stream: Stream,
        run_seq: int,
        lo: int,
        hi: int,
        iteration: int,
        completed: Callable[[int], int] | None,
    ) -> None:
        """Blocks ``[lo, hi)`` of ``stream`` became full: in ``iteration``, or, with
        ``completed``, in the iteration it maps each block to (one store per iteration)."""
        b = lo
        while b < hi:
            x = iteration if completed is None else completed(b)
            e = b + 1
            if completed is not None:
                while e < hi and completed(e) == x:
                    e += 1
            else:
                e = hi
            key = (x + 1, 1, run_seq, b)
            heapq.heappush(self._heap, (key, next(self._ids), stream, b, e))
            b = e

    def issue(self, iteration: int, tier: OffloadTier) -> None:
        """Stores issued at the start of an iteration before ``iteration`` reach the tier."""
        buf = self._heap
        while buf and buf[0][0][0] <= iteration - 1:
            key, _, stream, lo, hi = heapq.heappop(buf)
            tier.store(stream, lo, hi, key)

    def pending(self) -> Iterator[tuple[tuple[Any, ...], Stream]]:
        """The pending stores' keys and streams (in no particular order)."""
        for key, _, stream, _, _ in self._heap:
            yield key, stream
