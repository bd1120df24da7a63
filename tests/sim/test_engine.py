"""The serving engine: agreement with the static predictor, fast == iteration stepping,
M/G/1 queueing theory, conservation, prefix caching, bad input."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from calibration import LatencyModel
from calibration.errors import ComemInputError
from calibration.latency import ConstantLatency
from calibration.static import predict_static_latency, price_schedule, schedule_static_batch
from engine.kv_cache import StreamSpace
from sim.clients import poisson_arrivals, start_closed_loop
from sim.config import EngineConfig, validate
from sim.engine import Engine

LLAMA = LatencyModel("llama-3-8b", "h100_sxm", 1)


def _engine(env: simpy.Environment, latency=LLAMA, **cfg) -> Engine:
    return Engine(env, EngineConfig(**cfg), latency=latency)


# --- agreement with the calibration layer's static-batch predictor -------------------------


@pytest.mark.parametrize(
    "batch,length,capacity",
    [(64, 2048, None), (8, 128, None), (32, 512, None), (16, 1000, 20000), (48, 700, 30000)],
)
@pytest.mark.parametrize("stepping", ["event", "iteration"])
def test_engine_runs_the_static_benchmark_like_the_predictor(batch, length, capacity, stepping):
    env = simpy.Environment()
    eng = _engine(
        env,
        max_num_batched_tokens=16384,
        enable_prefix_caching=False,
        stepping=stepping,
        kv_capacity_tokens=capacity,
    )
    reqs = [eng.submit(length, length) for _ in range(batch)]
    env.run()
    if capacity is None:
        predicted = predict_static_latency(LLAMA, batch, length, length)
        sched = schedule_static_batch(batch, length, length, LLAMA.kv_capacity_tokens(), 16384)
    else:
        sched = schedule_static_batch(batch, length, length, capacity, 16384)
        cost = price_schedule(LLAMA, sched)
        predicted = cost.latency_with(LLAMA)
    assert max(r.finished_s for r in reqs) == pytest.approx(predicted, rel=1e-9)
    assert eng.iterations == sched.iterations
    assert eng.preemptions == sched.preemptions
    if capacity is not None:
        assert eng.preemptions > 0  # the case exercises preemption


# --- fast stepping == iteration stepping ----------------------------------------------------


def _run_workload(stepping: str, params: dict, seed: int) -> tuple[pd.DataFrame, Engine]:
    env = simpy.Environment()
    eng = _engine(
        env,
        stepping=stepping,
        kv_capacity_tokens=params["capacity"],
        max_num_batched_tokens=params["budget"],
        max_num_seqs=params["max_seqs"],
        max_model_len=params["max_len"],
        enable_prefix_caching=params["caching"],
    )
    sources = start_closed_loop(
        env,
        eng,
        params["clients"],
        params["requests"],
        params["prompt"],
        params["extend"],
        params["output"],
        think_s=params["think"],
        carry_output=params["carry"],
    )
    rng = np.random.default_rng(seed)
    sources.append(
        env.process(
            poisson_arrivals(
                env,
                eng,
                params["rate"],
                params["poisson"],
                lambda r: int(r.integers(1, 3000)),
                lambda r: int(r.integers(1, 400)),
                rng,
            )
        )
    )

    def watchdog():
        # check the block accounting along the way; stop once all work is done
        while any(p.is_alive for p in sources) or eng.running or eng.waiting:
            yield env.timeout(0.05)
            eng.check_invariants()

    env.process(watchdog())
    env.run(until=params["horizon"])
    return eng.recorder.requests_frame(), eng


ANY_LOAD = st.fixed_dictionaries(
    {
        "capacity": st.sampled_from([1500, 3000, 12000, 60000, 400000]),
        "budget": st.sampled_from([256, 2048, 8192]),
        "max_seqs": st.sampled_from([1, 4, 64]),
        "max_len": st.sampled_from([4096, 131072]),
        "caching": st.booleans(),
        "clients": st.integers(0, 8),
        "requests": st.integers(1, 4),
        "prompt": st.integers(1, 2500),
        "extend": st.integers(0, 600),
        "output": st.integers(1, 200),
        "think": st.sampled_from([0.0, 0.01, 0.3]),
        "carry": st.booleans(),
        "rate": st.sampled_from([1.0, 20.0]),
        "poisson": st.integers(0, 20),
        "horizon": st.sampled_from([5.0, 30.0]),
    }
)
#: loads several times what the cache holds, with prefix caching: they fill it, evict
#: cached blocks and preempt (the regime the paper's question lives in)
HEAVY_LOAD = st.fixed_dictionaries(
    {
        "capacity": st.sampled_from([1600, 3200, 6400]),
        "budget": st.sampled_from([256, 1024, 8192]),
        "max_seqs": st.sampled_from([8, 64, 1024]),
        "max_len": st.just(131072),
        "caching": st.just(True),
        "clients": st.integers(3, 8),
        "requests": st.integers(2, 4),
        "prompt": st.integers(200, 1200),
        "extend": st.integers(0, 300),
        "output": st.integers(20, 200),
        "think": st.sampled_from([0.0, 0.01, 0.3]),
        "carry": st.booleans(),
        "rate": st.sampled_from([5.0, 20.0]),
        "poisson": st.integers(0, 10),
        "horizon": st.just(1e9),
    }
)
WORKLOADS = st.one_of(ANY_LOAD, HEAVY_LOAD)


def test_event_stepping_equals_iteration_stepping():
    """Random loads, many of which fill the cache, evict and preempt: event stepping must
    give exactly the reference's counts and its times to rounding. The examples must
    really reach those regimes; the counts at the end say how many did."""
    reached: collections.Counter[str] = collections.Counter()

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(params=WORKLOADS, seed=st.integers(0, 2**16))
    def check(params, seed):
        slow, eng_slow = _run_workload("iteration", params, seed)
        fast, eng_fast = _run_workload("event", params, seed)
        assert len(slow) == len(fast)
        if not (eng_slow.running or eng_slow.waiting):  # not cut by the horizon mid-step
            assert eng_slow.iterations == eng_fast.iterations
            assert eng_slow.kv.evicted_blocks == eng_fast.kv.evicted_blocks
        assert eng_slow.preemptions == eng_fast.preemptions
        for col in ("request_id", "status", "preemptions", "cached_tokens", "output_tokens"):
            assert slow[col].tolist() == fast[col].tolist(), col
        for col in ("arrival_s", "admitted_s", "first_token_s", "finished_s"):
            np.testing.assert_allclose(
                fast[col].to_numpy(float),
                slow[col].to_numpy(float),
                rtol=1e-9,
                atol=1e-12,
                err_msg=col,
            )
        reached["examples"] += 1
        reached["preempted"] += eng_slow.preemptions > 0
        reached["evicted"] += eng_slow.kv.evicted_blocks > 0
        reached["prefix hits"] += bool((slow["cached_tokens"] > 0).any())
        for bound, count in eng_fast.scheduler.run_bounds.items():
            reached[f"run ended by {bound}"] += count > 0

    check()
    n = reached["examples"]
    for regime in ("preempted", "evicted", "prefix hits", "run ended by kv"):
        assert reached[regime] >= n // 10, (regime, dict(reached))


@pytest.mark.slow
def test_paper_scenario_steps_agree_in_both_steppings():
    """The issue's smallest disagreeing case (GLM-4.7 latency benchmark, 48 agents x 8
    steps, KV saturated with preemptions): identical in both steppings."""
    from sim.scenario import load_scenario, run_scenario

    out = {}
    for stepping in ("event", "iteration"):
        scenario = load_scenario(
            Path(__file__).resolve().parents[2] / "scenarios" / "paper_latency_glm47.toml",
            ["workload.agents=48", "workload.steps=8", f"engine.stepping={stepping}"],
        )
        out[stepping] = run_scenario(scenario).results
    for ev, it in zip(out["event"], out["iteration"], strict=True):
        assert ev.preemptions == it.preemptions
        for col in ("step", "prompt_tokens", "cached_tokens", "summary_swapped"):
            assert ev.steps[col].tolist() == it.steps[col].tolist(), col
        np.testing.assert_allclose(
            ev.steps["finished_s"].to_numpy(float), it.steps["finished_s"].to_numpy(float),
            rtol=1e-9,
        )  # fmt: skip
    assert sum(r.preemptions for r in out["iteration"]) > 0  # the hard regime is reached


# --- conservation and determinism ----------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=WORKLOADS, seed=st.integers(0, 2**16))
@pytest.mark.slow
def test_conservation(params, seed):
    params = {**params, "horizon": 1e9}  # run to completion
    frame, eng = _run_workload("event", params, seed)
    submitted = params["poisson"] + (
        params["clients"] * params["requests"] if params["clients"] else 0
    )
    # closed-loop clients stop after a rejected request; everything submitted ends once
    assert len(frame) <= submitted
    assert frame["request_id"].is_unique
    assert set(frame["status"]) <= {"finished", "rejected"}
    done = frame[frame["status"] == "finished"]
    # tokens out = tokens asked (capped by max_model_len like vLLM)
    assert (done["output_tokens"] >= 1).all()
    assert (done["prompt_tokens"] + done["output_tokens"] <= params["max_len"]).all()
    assert (frame.loc[frame["status"] == "rejected", "reason"] != "").all()
    # every block back in the pool; the cache keeps what nobody holds
    assert not eng.running and not eng.waiting
    assert eng.kv_used_blocks == 0
    assert eng.free_blocks + eng.evictable_blocks == eng.total_blocks
    eng.check_invariants()
    steps = eng.recorder.iterations_frame()
    assert (steps["kv_used_blocks"] + steps["kv_cached_blocks"] <= steps["kv_total_blocks"]).all()
    assert steps["iterations"].sum() == eng.iterations


def test_poisson_requests_all_complete_with_exact_token_counts():
    env = simpy.Environment()
    eng = _engine(env, kv_capacity_tokens=20000, max_num_batched_tokens=1024)
    rng = np.random.default_rng(7)
    outs = []

    def out(r):
        outs.append(int(r.integers(1, 200)))
        return outs[-1]

    env.process(poisson_arrivals(env, eng, 30.0, 300, lambda r: int(r.integers(1, 2000)), out, rng))
    env.run()
    frame = eng.recorder.requests_frame().sort_values("request_id")
    assert len(frame) == 300
    assert (frame["status"] == "finished").all()
    assert frame["output_tokens"].tolist() == outs
    assert eng.preemptions > 0  # the tight cache forces recomputation, tokens still exact


def test_identical_inputs_give_identical_outputs():
    params = dict(
        capacity=12000, budget=2048, max_seqs=64, max_len=131072, caching=True, clients=8,
        requests=4, prompt=900, extend=300, output=120, think=0.01, carry=True, rate=20.0,
        poisson=15, horizon=1e9,
    )  # fmt: skip
    a, _ = _run_workload("event", params, 3)
    b, _ = _run_workload("event", params, 3)
    pd.testing.assert_frame_equal(a, b)


# --- queueing theory: M/G/1 ------------------------------------------------------------------


@pytest.mark.slow
def test_mg1_waiting_time_matches_pollaczek_khinchine():
    """Constant iteration time tau, one sequence at a time, geometric output lengths:
    service S = tau * X, X ~ Geometric(p) on {1, 2, ...}. Poisson arrivals at rate lam.
    Pollaczek-Khinchine: Wq = lam E[S^2] / (2 (1 - rho)). We check it lies in the 99%
    confidence interval of the mean wait over independent replications (warm-up cut)."""
    tau, p, lam = 0.01, 0.1, 5.0
    es = tau / p
    es2 = tau**2 * (2 - p) / p**2
    rho = lam * es
    wq = lam * es2 / (2 * (1 - rho))
    means = []
    for rep in range(24):
        env = simpy.Environment()
        eng = _engine(env, latency=ConstantLatency(tau), max_num_seqs=1)
        rng = np.random.default_rng(1000 + rep)
        env.process(
            poisson_arrivals(env, eng, lam, 3000, lambda r: 1, lambda r: int(r.geometric(p)), rng)
        )
        env.run()
        frame = eng.recorder.requests_frame().sort_values("arrival_s")
        waits = frame["queue_s"].to_numpy()[300:]  # warm-up
        means.append(waits.mean())
    means = np.asarray(means)
    half = stats.t.ppf(0.995, len(means) - 1) * means.std(ddof=1) / math.sqrt(len(means))
    assert abs(means.mean() - wq) <= half, (means.mean(), wq, half)
    assert half < 0.15 * wq  # the interval is tight enough to mean something


# --- prefix caching ------------------------------------------------------------------------------


def test_next_step_of_a_stream_hits_everything_but_the_last_block():
    env = simpy.Environment()
    eng = _engine(env)
    streams = StreamSpace()
    s = streams.new()
    first = eng.submit(1000, 100, s)
    env.run()
    second = eng.submit(1000 + 100 + 500, 50, s)
    env.run()
    # computed KV of the first: prompt + output - 1 tokens, in full blocks
    assert first.cached_tokens == 0
    assert second.cached_tokens == (1000 + 100 - 1) // 16 * 16
    # a prompt entirely cached still recomputes its last token
    third = eng.submit(1000, 10, s)
    env.run()
    assert third.cached_tokens == (1000 - 1) // 16 * 16
    eng.check_invariants()


def test_child_stream_shares_the_parent_prefix_only():
    env = simpy.Environment()
    eng = _engine(env)
    streams = StreamSpace()
    system = streams.new()
    eng.submit(2000, 1, system)
    env.run()
    child = streams.new(system, 1024)  # shares 1024 tokens, then diverges
    req = eng.submit(3000, 5, child)
    env.run()
    assert req.cached_tokens == 1024
    eng.check_invariants()


def test_eviction_takes_the_least_recently_freed_first():
    env = simpy.Environment()
    eng = _engine(env, kv_capacity_tokens=16 * 100)  # 100 blocks, 99 besides vLLM's null block
    streams = StreamSpace()
    a, b = streams.new(), streams.new()
    eng.submit(640, 1, a)  # 40 blocks, freed first
    env.run()
    eng.submit(640, 1, b)  # 40 blocks, freed second
    env.run()
    assert eng.evictable_blocks == 80
    # free queue, front first: 19 never-used blocks, a's 40 (tail first), b's 40
    eng.submit(16 * 30, 1)  # takes 30 blocks: the 19 unused + a's last 11
    env.run()
    again_a = eng.submit(641, 1, a)
    again_b = eng.submit(641, 1, b)
    env.run()
    assert again_a.cached_tokens == 29 * 16  # a lost its last 11 blocks
    # a, admitted first, takes its 12 new blocks from the queue's front: b's last 12
    # (the 30 freed blocks of the third request are behind b's)
    assert again_b.cached_tokens == 28 * 16


def test_a_cached_block_at_the_queue_front_goes_before_a_free_one_behind_it():
    """vLLM pops its free queue's front whether the block is cached or not."""
    env = simpy.Environment()
    eng = _engine(env, kv_capacity_tokens=16 * 41)  # 40 usable blocks
    streams = StreamSpace()
    a = streams.new()
    eng.submit(16 * 20, 1, a)  # a: 20 blocks; the 20 unused ones stay at the front
    env.run()
    eng.submit(16 * 25 + 5, 1)  # 26 blocks: the 20 unused, then 6 of a's; its 26 freed last
    env.run()
    assert eng.evictable_blocks == 14 and eng.free_blocks == 26
    again = eng.submit(16 * 20 + 1, 1, a)
    env.run()
    assert again.cached_tokens == 14 * 16  # not 20: uncached free blocks did not protect a


def test_kv_usage_never_exceeds_capacity_under_pressure():
    env = simpy.Environment()
    eng = _engine(env, kv_capacity_tokens=8000, max_num_batched_tokens=2048)
    start_closed_loop(env, eng, 20, 5, 500, 400, 200, carry_output=True)
    env.run()
    steps = eng.recorder.iterations_frame()
    assert (steps["kv_used_blocks"] <= steps["kv_total_blocks"]).all()
    assert eng.preemptions > 0
    assert (eng.recorder.requests_frame()["status"] == "finished").all()


# --- bad input ---------------------------------------------------------------------------


def test_too_long_prompts_are_rejected_with_a_reason_and_nothing_is_lost():
    env = simpy.Environment()
    eng = _engine(env, max_model_len=4096, kv_capacity_tokens=100000)
    ok = eng.submit(1000, 10)
    too_long = eng.submit(4096, 10)
    capped = eng.submit(4000, 500)  # generation stops at max_model_len
    env.run()
    assert too_long.status == "rejected" and "max_model_len" in too_long.reason
    assert too_long.done.triggered
    assert ok.status == "finished" and ok.generated == 10
    assert capped.generated == 96
    frame = eng.recorder.requests_frame()
    assert sorted(frame["status"]) == ["finished", "finished", "rejected"]


def test_request_larger_than_the_cache_is_rejected():
    env = simpy.Environment()
    eng = _engine(env, kv_capacity_tokens=1600)
    req = eng.submit(1700, 10)
    env.run()
    assert req.status == "rejected" and "KV blocks" in req.reason


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("max_num_batched_tokens", 0, "max_num_batched_tokens"),
        ("max_num_seqs", -3, "max_num_seqs"),
        ("gpu_memory_utilization", 1.5, "gpu_memory_utilization"),
        ("stepping", "warp", "stepping"),
        ("dtype", "int3", "dtype"),
        ("blocksize", 16, "blocksize"),
    ],
)
def test_engine_config_errors_name_the_field(field, value, message):
    with pytest.raises(ComemInputError, match=message) as info:
        validate(EngineConfig, {field: value}, "engine")
    assert "\n" not in str(info.value)


def test_submit_rejects_nonsense_token_counts():
    env = simpy.Environment()
    eng = _engine(env)
    with pytest.raises(ComemInputError, match="prompt"):
        eng.submit(0, 5)
    with pytest.raises(ComemInputError, match="output"):
        eng.submit(5, 0)


def test_default_engine_builds_its_latency_model_and_capacity():
    env = simpy.Environment()
    eng = Engine(env, EngineConfig(model="glm-4.7", gpu="h200_sxm", tp=4, dtype="fp8"))
    assert eng.total_blocks == eng.latency.kv_capacity_tokens() // 16 - 1  # the null block
    req = eng.submit(4096, 64)
    env.run()
    assert req.status == "finished" and req.finished_s > 0


def test_cpu_loads_that_cannot_finish_admission_end_in_an_error_not_a_hang():
    """Requests loaded from the CPU tier hold the blocks the first of them still needs,
    and nothing runs: the engine used to wait 0 s for the done load forever (its clock
    stopped, no output); it now says no progress is possible."""
    from sim.scenario import run_scenario, scenario_from

    agent = dict(
        name="agent", model="llama-3.1-70b", gpu="l40s", tp=4, dtype="bf16",
        max_model_len=131072, data_parallel_size=2, kv_offloading_size=500.0,
    )  # fmt: skip
    workload = dict(
        kind="synthetic", arrivals="closed-batch", agents=32, steps=30, system_tokens=500,
        first_observation_tokens=0, observation_tokens=600, input_target_tokens=512,
        action_tokens=250, tool_s=3.0,
    )  # fmt: skip
    data = {"name": "stuck", "workload": workload,
            "architectures": [{"name": "FC", "kind": "fc", "agent": agent}]}  # fmt: skip
    with pytest.raises(ComemInputError, match="no progress possible"):
        run_scenario(scenario_from(data, [], "test"))
