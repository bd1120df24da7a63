"""vLLM's native CPU KV offloading (engine/offload.py OffloadTier, wired through the
scheduler and the engine) on hand-computed cases, and event == iteration stepping with it.
Facts: VLLM_FACTS.md section 3 (write-through stores issued at the start of the next
iteration, LRU, lookup only for requests with nothing computed, the GPU hit first, then
whole CPU blocks, asynchronous loads polled after each iteration)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import simpy

from calibration.errors import ComemInputError
from calibration.latency import ConstantLatency
from engine.kv_cache import StreamSpace
from engine.offload import OffloadTier
from sim.clients import start_closed_loop
from sim.config import EngineConfig
from sim.engine import Engine

ITER = 0.01  # seconds per iteration (ConstantLatency)


class _Const(ConstantLatency):
    """A constant iteration time with a KV size per token (what the CPU tier needs)."""

    kv_bytes_per_token = 1000  # bytes per token per GPU: 16 kB per 16-token block


def engine(env, blocks, offload_gib=None, gbps=1.6e-3, **cfg) -> Engine:
    # 1.6e-3 GB/s = 1.6 MB/s: one 16 kB block loads in 0.01 s, one iteration's worth
    return Engine(
        env,
        EngineConfig(
            kv_capacity_tokens=16 * (blocks + 1),  # + vLLM's null block
            kv_offloading_size=offload_gib,
            kv_offloading_bandwidth_GBps=gbps,
            max_num_batched_tokens=4096,
            **cfg,
        ),
        latency=_Const(ITER),
    )


def test_the_tier_is_an_lru_of_blocks_lower_indices_of_a_store_first():
    streams = StreamSpace()
    tier = OffloadTier(10, 16, 0.0)
    a, b = streams.new(), streams.new()
    tier.store(a, 0, 6, (1, 1))
    tier.store(b, 0, 6, (2, 1))  # 12 > 10: a's blocks 0 and 1 go
    assert tier.run_length(a, 0, 100) == 0 and tier.run_length(a, 2, 100) == 4
    assert tier.run_length(b, 0, 100) == 6
    tier.touch(a, 2, 6, (3, 0))  # a's remaining four become the most recent
    tier.store(b, 6, 8, (4, 1))  # 12 again: b's 0 and 1 go, not a's
    assert tier.run_length(a, 2, 100) == 4 and tier.run_length(b, 0, 100) == 0
    assert tier.run_length(b, 2, 100) == 6
    assert tier.evicted_blocks == 4


def test_a_prefix_evicted_from_the_gpu_comes_back_from_the_cpu():
    """Request 1 computes 20 blocks of stream a; a second stream's request takes the GPU
    blocks; request 3 on a then loads its prefix instead of recomputing it."""
    env = simpy.Environment()
    eng = engine(env, blocks=24, offload_gib=1.0)
    streams = StreamSpace()
    a, b = streams.new(), streams.new()
    first = eng.submit(16 * 20, 1, a)
    env.run()
    other = eng.submit(16 * 20, 1, b)  # needs 20 of the 24 blocks: evicts 16 of a's
    env.run()
    assert first.status == other.status == "finished"
    assert eng.kv.hit(a, 100) < 20
    gpu_hit = eng.kv.hit(a, 100)
    again = eng.submit(16 * 20 + 8, 1, a)
    t0 = env.now
    env.run()
    assert again.cached_tokens == 20 * 16  # GPU hit + CPU hit: nothing recomputed
    loaded = 20 - gpu_hit
    # the load takes `loaded` iterations' worth of copy time; the request is admitted at
    # the first iteration boundary after it and then computes its last 8 tokens
    assert again.first_token_s - t0 == pytest.approx(loaded * ITER + ITER, rel=1e-9)
    assert eng.offload is not None and eng.offload.loaded_blocks == loaded


def test_without_the_tier_the_same_prefix_is_recomputed():
    env = simpy.Environment()
    eng = engine(env, blocks=24)
    streams = StreamSpace()
    a, b = streams.new(), streams.new()
    eng.submit(16 * 20, 1, a)
    env.run()
    eng.submit(16 * 20, 1, b)
    env.run()
    again = eng.submit(16 * 20 + 8, 1, a)
    env.run()
    assert again.cached_tokens == 16 * eng.kv.hit(a, 100) or again.cached_tokens < 20 * 16
    assert again.cached_tokens < 20 * 16


def test_stores_become_visible_two_iterations_after_a_block_fills():
    """vLLM 0.19 issues a store at the start of the iteration after the block filled; the
    scheduler sees it done from the iteration after that."""
    env = simpy.Environment()
    eng = engine(env, blocks=100, offload_gib=1.0)
    a = StreamSpace().new()
    eng.submit(16 * 4, 3, a)  # prompt: 4 blocks full in iteration 0
    env.run(until=ITER * 1.5)  # iteration 1 running: the store was issued at its start
    sched = eng.scheduler
    assert sched.offload is not None
    assert sched.offload.run_length(a, 0, 100) == 0
    env.run()
    sched.now = env.now
    sched.next()  # the next schedule makes issued stores visible
    assert sched.offload.run_length(a, 0, 100) == 4


def test_tier_sizes_come_from_the_kv_bytes_and_are_checked():
    env = simpy.Environment()
    eng = engine(env, blocks=10, offload_gib=1.0, tp=1)
    assert eng.offload is not None
    assert eng.offload.capacity_blocks == 2**30 // (1000 * 16)
    with pytest.raises(ComemInputError, match="no KV block"):
        engine(simpy.Environment(), blocks=10, offload_gib=1e-9)


def test_event_stepping_equals_iteration_stepping_with_offload():
    """Closed-loop agents whose contexts outgrow the GPU cache, with a CPU tier small
    enough to evict too: loads, GPU and CPU evictions and preemptions all happen (the
    counts at the end say so), and both steppings agree exactly."""
    reached = {"loaded": 0, "cpu evicted": 0, "gpu evicted": 0, "preempted": 0}
    for seed in range(12):
        rng = np.random.default_rng(seed)
        clients = int(rng.integers(3, 8))
        requests = int(rng.integers(2, 5))
        first = int(rng.integers(200, 900))
        extend = int(rng.integers(0, 300))
        output = int(rng.integers(20, 150))
        blocks = int(rng.choice([120, 250, 400]))
        gib = float(rng.choice([0.002, 0.004, 0.02]))
        out = {}
        for stepping in ("iteration", "event"):
            env = simpy.Environment()
            eng = engine(env, blocks=blocks, offload_gib=gib, gbps=0.05, stepping=stepping)
            start_closed_loop(env, eng, clients, requests, first, extend, output, carry_output=True)
            env.run()
            out[stepping] = (eng.recorder.requests_frame(), eng)
        (a, ea), (b, eb) = out["iteration"], out["event"]
        ta, tb = ea.offload, eb.offload
        assert ta is not None and tb is not None
        assert ea.preemptions == eb.preemptions and ea.iterations == eb.iterations
        assert (ta.loaded_blocks, ta.evicted_blocks) == (tb.loaded_blocks, tb.evicted_blocks)
        assert ea.kv.evicted_blocks == eb.kv.evicted_blocks
        assert a["cached_tokens"].tolist() == b["cached_tokens"].tolist()
        for col in ("first_token_s", "finished_s"):
            np.testing.assert_allclose(b[col], a[col], rtol=1e-9)
        assert not math.isnan(a["finished_s"].max())
        reached["loaded"] += ta.loaded_blocks > 0
        reached["cpu evicted"] += ta.evicted_blocks > 0
        reached["gpu evicted"] += ea.kv.evicted_blocks > 0
        reached["preempted"] += ea.preemptions > 0
    assert min(reached.values()) >= 2, reached
