"""Where engines run: a memory model co-located on the agent's GPUs (shared GPUs, split
memory) and data-parallel replicas behind a router, on hand-computed cases; event
stepping equals iteration stepping with both."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from calibration.errors import ComemInputError
from calibration.latency import ConstantLatency
from engine.kv_cache import StreamSpace
from sim.clients import start_closed_loop
from sim.config import EngineConfig
from sim.data_parallel import ReplicatedEngine
from sim.deployment import build_engines
from sim.engine import Engine

D = 0.01  # seconds per iteration


def cfg(name: str, **kw) -> EngineConfig:
    return EngineConfig(name=name, **{"kv_capacity_tokens": 1 << 20, **kw})


@pytest.mark.parametrize("stepping", ["event", "iteration"])
def test_co_located_engines_take_turns_on_the_gpus(stepping):
    env = simpy.Environment()
    engines = build_engines(
        env,
        {
            "agent": cfg("a", gpu_group="g", gpu_memory_utilization=0.6, stepping=stepping),
            "memory": cfg("m", gpu_group="g", gpu_memory_utilization=0.3, stepping=stepping),
        },
        {"agent": ConstantLatency(D), "memory": ConstantLatency(D)},
    )
    k = 20  # tokens each: one prompt iteration, then 19 decodes
    a = engines["agent"].submit(16, k)
    m = engines["memory"].submit(16, k)
    env.run()
    # iterations alternate a, m, a, m, ...: a's k-th ends at (2k - 1) d, m's at 2k d
    assert a.finished_s == pytest.approx((2 * k - 1) * D, rel=1e-9)
    assert m.finished_s == pytest.approx(2 * k * D, rel=1e-9)


def test_without_a_gpu_group_the_same_engines_run_side_by_side():
    env = simpy.Environment()
    engines = build_engines(
        env, {"agent": cfg("a"), "memory": cfg("m")},
        {"agent": ConstantLatency(D), "memory": ConstantLatency(D)},
    )  # fmt: skip
    a = engines["agent"].submit(16, 20)
    m = engines["memory"].submit(16, 20)
    env.run()
    assert a.finished_s == pytest.approx(20 * D) and m.finished_s == pytest.approx(20 * D)


def test_a_lone_engine_of_a_group_runs_whole_runs():
    """Shared GPUs cost nothing while the other engine is idle: one engine's run is not
    cut, and its requests finish as if alone."""
    env = simpy.Environment()
    engines = build_engines(
        env,
        {"agent": cfg("a", gpu_group="g", gpu_memory_utilization=0.5),
         "memory": cfg("m", gpu_group="g", gpu_memory_utilization=0.5)},
        {"agent": ConstantLatency(D), "memory": ConstantLatency(D)},
    )  # fmt: skip
    a = engines["agent"].submit(16, 50)
    env.run()
    assert a.finished_s == pytest.approx(50 * D)
    agent = engines["agent"]
    assert isinstance(agent, Engine)
    assert len(agent.recorder.iterations) < 10  # a few steps, not 50


def test_shared_gpus_are_checked():
    env = simpy.Environment()
    with pytest.raises(ComemInputError, match="adds up to 1.20"):
        build_engines(
            env,
            {"agent": cfg("a", gpu_group="g", gpu_memory_utilization=0.7),
             "memory": cfg("m", gpu_group="g", gpu_memory_utilization=0.5)},
            {"agent": ConstantLatency(D), "memory": ConstantLatency(D)},
        )  # fmt: skip
    with pytest.raises(ComemInputError, match="differ in gpu, tp"):
        build_engines(
            env,
            {"agent": cfg("a", gpu_group="g", gpu_memory_utilization=0.5, tp=2),
             "memory": cfg("m", gpu_group="g", gpu_memory_utilization=0.4)},
            {"agent": ConstantLatency(D), "memory": ConstantLatency(D)},
        )  # fmt: skip


@pytest.mark.parametrize(
    "router,expected", [("vllm", [0, 1, 0, 1, 0]), ("round-robin", [0, 1, 0, 1, 0])]
)
def test_data_parallel_routing(router, expected):
    env = simpy.Environment()
    eng = ReplicatedEngine(
        env, cfg("x", data_parallel_size=2, data_parallel_router=router), ConstantLatency(D)
    )
    reqs = [eng.submit(16, 5, tag=i) for i in range(5)]
    # vLLM's score 4 x waiting + running: 0 -> r0 (4), 1 -> r1 (4), 2 -> r0 (8), ...
    assert [eng.replicas.index(r.engine) for r in reqs] == expected
    env.run()
    # each replica serves its requests as one batch: 5 iterations
    assert max(r.finished_s for r in reqs) == pytest.approx(5 * D)


def test_routing_counts_requests_still_in_their_overhead():
    """A request routed to a replica counts there at once (vLLM increments its counts on
    assignment), also while it spends the per-request overhead before it waits."""
    env = simpy.Environment()
    eng = ReplicatedEngine(
        env, cfg("x", data_parallel_size=4, request_overhead_s=0.005), ConstantLatency(D)
    )
    reqs = [eng.submit(16, 5) for _ in range(400)]
    assert [sum(r.engine is e for r in reqs) for e in eng.replicas] == [100, 100, 100, 100]
    env.run()
    assert all(e.arriving == 0 for e in eng.replicas)


def test_prefix_aware_routing_follows_the_cache():
    env = simpy.Environment()
    eng = ReplicatedEngine(
        env, cfg("x", data_parallel_size=3, data_parallel_router="prefix-aware"),
        ConstantLatency(D),
    )  # fmt: skip
    streams = StreamSpace()
    ctx = streams.new()
    eng.replicas[2].submit(16 * 10, 2, ctx)  # replica 2 caches ctx's first 10 blocks
    env.run()
    again = eng.submit(16 * 12, 2, ctx)
    assert again.engine is eng.replicas[2]
    env.run()
    assert again.cached_tokens == 16 * 10


@pytest.mark.slow
def test_event_stepping_equals_iteration_stepping_when_engines_share_gpus():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        loads = {
            role: (int(rng.integers(2, 6)), int(rng.integers(100, 800)),
                   int(rng.integers(10, 120)), float(rng.choice([0.0, 0.05])))
            for role in ("agent", "memory")
        }  # fmt: skip
        out = {}
        for stepping in ("iteration", "event"):
            env = simpy.Environment()
            engines = build_engines(
                env,
                {
                    "agent": cfg("a", gpu_group="g", gpu_memory_utilization=0.6,
                                 stepping=stepping, kv_capacity_tokens=6000),
                    "memory": cfg("m", gpu_group="g", gpu_memory_utilization=0.3,
                                  stepping=stepping, kv_capacity_tokens=6000),
                },
            )  # fmt: skip
            for role, (clients, prompt, output, think) in loads.items():
                start_closed_loop(
                    env, engines[role], clients, 3, prompt, 200, output, think_s=think,
                    carry_output=True,
                )  # fmt: skip
            env.run()
            out[stepping] = {r: e.recorder.requests_frame() for r, e in engines.items()}
        for role in ("agent", "memory"):
            a, b = out["iteration"][role], out["event"][role]
            assert len(a) == len(b) > 0
            assert a["preemptions"].tolist() == b["preemptions"].tolist()
            np.testing.assert_allclose(b["finished_s"], a["finished_s"], rtol=1e-9)


@pytest.mark.slow
def test_moe_replicas_step_in_lockstep():
    """vLLM steps a MoE model's DP ranks together: a rank with a long prompt holds back the
    other's decodes (its steps last as long as the slowest rank's), unlike a dense model's
    independent ranks."""
    from sim.data_parallel import LockstepReplicas

    def short_request_end(model: str, with_long: bool) -> float:
        env = simpy.Environment()
        cfg = EngineConfig(
            name="x", model=model, gpu="h200_sxm", tp=8, dtype="fp8", data_parallel_size=2,
            data_parallel_router="round-robin",
        )  # fmt: skip
        eng = build_engines(env, {"agent": cfg})["agent"]
        assert isinstance(eng, LockstepReplicas) == (model == "qwen3-235b-a22b")
        short = eng.submit(64, 200)  # rank 0: a short decode
        if with_long:
            eng.submit(30000, 2)  # rank 1: a long prompt, chunked over several steps
        env.run()
        return short.finished_s

    # dense ranks are independent: the other rank's prompt changes nothing
    assert short_request_end("qwen3-32b", True) == pytest.approx(
        short_request_end("qwen3-32b", False), rel=1e-12
    )
    # MoE ranks step together: the short request waits for the long prompt's chunks
    assert short_request_end("qwen3-235b-a22b", True) > 1.2 * short_request_end(
        "qwen3-235b-a22b", False
    )


@pytest.mark.slow
def test_lockstep_replicas_agree_in_both_steppings():
    out = {}
    for mode in ("iteration", "event"):
        env = simpy.Environment()
        cfg = EngineConfig(
            name="x", model="qwen3-235b-a22b", gpu="h200_sxm", tp=8, dtype="fp8",
            data_parallel_size=2, stepping=mode, kv_capacity_tokens=20000,
        )  # fmt: skip
        eng = build_engines(env, {"agent": cfg})["agent"]
        start_closed_loop(env, eng, 5, 3, 600, 300, 80, think_s=0.02, carry_output=True)
        env.run()
        out[mode] = eng.recorder.requests_frame().sort_values(["engine", "request_id"])
    a, b = out["iteration"], out["event"]
    assert len(a) == len(b) == 15
    np.testing.assert_allclose(b["finished_s"], a["finished_s"], rtol=1e-9)


def _poisson(env, engine, rng, rate, n, prompts, outputs):
    for _ in range(n):
        yield env.timeout(rng.exponential(1 / rate))
        engine.submit(int(rng.integers(*prompts)), int(rng.integers(*outputs)))


@pytest.mark.slow
def test_co_located_engines_run_joint_runs_equal_to_iteration_stepping():
    """Event stepping prices the two engines' runs together and interleaves them; open-loop
    submissions at random times stop a joint run at the iteration in flight, whichever
    engine's it is. Counts and times equal iteration stepping, in far fewer steps."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        kv = int(rng.choice([3000, 20000]))
        overhead = float(rng.choice([0.0, 0.003]))
        loads = {
            role: (float(rng.choice([2, 10, 40])), int(rng.integers(5, 40)),
                   (int(rng.integers(10, 300)), 1500), (int(rng.integers(2, 50)), 300))
            for role in ("agent", "memory")
        }  # fmt: skip
        out = {}
        for stepping in ("iteration", "event"):
            env = simpy.Environment()
            engines = build_engines(
                env,
                {
                    "agent": cfg("a", gpu_group="g", gpu_memory_utilization=0.6,
                                 stepping=stepping, kv_capacity_tokens=kv,
                                 request_overhead_s=overhead),
                    "memory": cfg("m", gpu_group="g", gpu_memory_utilization=0.3,
                                  stepping=stepping, kv_capacity_tokens=kv, model="qwen3-4b"),
                },
            )  # fmt: skip
            arrivals = np.random.default_rng(seed + 100)
            for role, load in loads.items():
                env.process(_poisson(env, engines[role], arrivals, *load))
            env.run()
            out[stepping] = engines
        for role in ("agent", "memory"):
            it, ev = out["iteration"][role], out["event"][role]
            a, b = it.recorder.requests_frame(), ev.recorder.requests_frame()
            assert (it.iterations, it.preemptions) == (ev.iterations, ev.preemptions)
            assert a["preemptions"].tolist() == b["preemptions"].tolist()
            for col in ("admitted_s", "first_token_s", "finished_s"):
                np.testing.assert_allclose(b[col], a[col], rtol=1e-9, atol=1e-12)
        steps = len(out["event"]["agent"].recorder.iterations)
        assert steps < 0.5 * len(out["iteration"]["agent"].recorder.iterations)


def test_an_impossible_gpu_group_is_refused_when_the_file_is_read(tmp_path):
    """Two engines sharing GPUs with 0.8 of their memory each: refused by load_scenario,
    naming the file and the roles, before any architecture runs."""
    from calibration.errors import ComemInputError
    from sim.scenario import load_scenario

    path = tmp_path / "g.toml"
    path.write_text(
        'name = "g"\n[workload]\nagents = 2\nsteps = 4\n'
        '[[architectures]]\nname = "FC"\nkind = "fc"\n'
        '[[architectures]]\nname = "KSO"\nkind = "kso"\nk = 2\n'
        'agent = { gpu_group = "g", gpu_memory_utilization = 0.8 }\n'
        'memory = { model = "qwen3-4b", gpu_group = "g", gpu_memory_utilization = 0.8 }\n'
    )
    with pytest.raises(
        ComemInputError, match=r"g.toml: architecture 'KSO': .*agent 0.8, memory 0.8"
    ):
        load_scenario(path)
