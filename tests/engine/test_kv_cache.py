"""The KV-cache module on its own (engine/kv_cache.py): vLLM's free queue, the prefix
cache over streams, eviction order. Expected values worked out by hand from VLLM_FACTS.md
section 2."""

from __future__ import annotations

import pytest

from calibration.errors import ComemInputError
from engine.kv_cache import KVCache, StreamSpace


def test_the_free_queue_is_first_in_first_out_cached_or_not():
    kv = KVCache(10)
    s = StreamSpace().new()
    kv.pop_free(4)
    assert kv.extend(s, 0, 4) == (0, 4)
    kv.hold(s, 0, 4)
    kv.hold(s, 4, 0)  # freed: behind the 6 never-used blocks
    assert (kv.queue_blocks, kv.cached_free_blocks) == (10, 4)
    kv.pop_free(6)  # the 6 unused ones first
    assert kv.hit(s, 4) == 4
    kv.pop_free(1)  # then s's tail block
    assert kv.hit(s, 4) == 3
    kv.free_anonymous(7)
    kv.pop_free(3)  # s's three remaining blocks come before the 7 freed after them
    assert kv.hit(s, 4) == 0 and kv.evicted_blocks == 4
    kv.check_invariants(0, 3)


def test_a_request_is_freed_tail_first_its_own_blocks_before_its_parents():
    streams = StreamSpace()
    kv = KVCache(20, block_size=4)
    system = streams.new()
    ctx = streams.new(system, 8)  # shares 2 blocks with system
    kv.pop_free(5)
    assert kv.extend(ctx, 0, 5) == (0, 5)  # blocks 0-1 in system, 2-4 in ctx
    kv.hold(ctx, 0, 5)
    assert kv.hit(ctx, 5) == 5 and kv.hit(system, 2) == 2
    kv.hold(ctx, 5, 0)
    kv.pop_free(15)  # the never-used blocks
    kv.pop_free(1)  # ctx's block 4: the tail goes first
    assert kv.hit(ctx, 5) == 4
    kv.pop_free(2)  # ctx's blocks 3, 2
    assert kv.hit(ctx, 5) == 2 and kv.hit(system, 2) == 2  # the shared head survives
    kv.pop_free(1)
    assert kv.hit(system, 2) == 1


def test_a_hit_touches_blocks_out_of_the_queue_and_counts_unheld_ones():
    streams = StreamSpace()
    kv = KVCache(8)
    a = streams.new()
    kv.prime(a, 16 * 5)
    assert kv.hit(a, 10) == 5 and kv.unheld_within(a, 5) == 5
    kv.hold(a, 0, 3)  # a request hits 3 of them
    assert kv.unheld_within(a, 5) == 2 and kv.queue_blocks == 5
    kv.pop_free(3)  # the 3 never-used blocks
    kv.pop_free(2)  # a's blocks 4, 3 (unreferenced); 0-2 are held, not in the queue
    assert kv.hit(a, 10) == 3 and kv.queue_blocks == 0
    with pytest.raises(RuntimeError):
        kv.pop_free(1)


def test_a_lineage_is_always_freed_tail_first():
    """A holder of a child's blocks holds its parent's too, so parent blocks never join
    the queue before the child's: popping the queue only ever cuts a hit at its end
    (which is why event stepping rarely has to stop for it)."""
    streams = StreamSpace()
    kv = KVCache(30, block_size=4)
    system = streams.new()
    c1, c2 = streams.new(system, 8), streams.new(system, 8)
    for child, until in ((c1, 5), (c2, 4)):
        start = kv.hit(child, until)
        kv.pop_free(until - start)
        kv.hold(child, 0, start)
        kv.extend(child, start, until)
        kv.hold(child, start, until)
    kv.hold(c1, 5, 0)  # c1 ends first; the system blocks stay held by c2
    kv.hold(c2, 4, 0)
    assert kv.first_disruptive_pop(c1, kv.hit(c1, 100), 100) is None
    assert kv.first_disruptive_pop(c2, kv.hit(c2, 100), 100) is None


def test_first_disruptive_pop_finds_a_block_inside_a_hit():
    # an artificial queue (parent blocks ahead of the child's) that the release
    # discipline above never builds: the guard must still see it
    streams = StreamSpace()
    kv = KVCache(12, block_size=4)
    system = streams.new()
    kv.prime(system, 8)  # system blocks 1, 0 after the 10 unused ones
    child = streams.new(system, 8)
    kv.pop_free(3)  # 3 of the unused
    assert kv.extend(child, 2, 5) == (0, 3)
    kv._release_range(kv.state(child), 2, 5)  # child blocks queued behind the system's
    assert kv.hit(child, 100) == 5
    # queue: 7 unused (positions 0-6), system 1 (7), system 0 (8), child 4, 3, 2
    assert kv.first_disruptive_pop(child, 5, 100) == 7
    assert kv.first_disruptive_pop(child, 5, 7) is None  # not within 7 pops


def test_stream_and_cache_sizes_are_checked():
    with pytest.raises(ComemInputError, match="no block"):
        KVCache(0)
    with pytest.raises(ComemInputError, match="parent"):
        StreamSpace().new(None, 5)
