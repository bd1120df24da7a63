"""Data-parallel replicas: a MoE model's ranks step in lockstep (sim/data_parallel.py)."""

from __future__ import annotations

import pytest


def test_lockstep_ranks_waiting_only_for_cpu_loads_wait_for_them() -> None:
    """A MoE agent as DP replicas with CPU KV offload: when every rank's requests wait for
    loads from the CPU tier (nothing schedulable), the group must wait for the first load,
    not step in place. It used to loop without end (a run, and the plan holding it, hung
    with no output); every task now finishes."""
    import signal

    from sim.scenario import run_scenario, scenario_from

    agent = {
        "name": "agent",
        "model": "glm-4.7",
        "gpu": "h200_sxm",
        "tp": 4,
        "dtype": "fp8",
        "max_model_len": 131072,
        "data_parallel_size": 2,
        "kv_offloading_size": 500.0,
    }
    workload = {
        "kind": "synthetic",
        "agents": 16,
        "steps": 64,
        "system_tokens": 512,
        "observation_tokens": 512,
        "action_tokens": 1024,
        "tool_s": 0.0,
    }
    data = {"workload": workload, "architectures": [{"name": "FC", "kind": "fc", "agent": agent}]}
    scenario = scenario_from(data, [], "test")  # fmt: skip

    def hung(*_: object) -> None:
        raise TimeoutError("the lockstep group did not finish in 60 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        summary = run_scenario(scenario).summary()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    fc = summary["architectures"]["FC"]
    assert fc["tasks_finished"] == 16 and fc["tasks_ended_early"] == 0


@pytest.mark.slow
def test_every_deployment_ends_every_task_or_says_why() -> None:
    """Random small deployments of a MoE (lockstep ranks) or dense (independent replicas)
    agent, with and without CPU KV offload, on KV caches small enough to preempt: every
    run ends (under an alarm), every task with a status, or the run stops with the one
    line that says no progress is possible. The counts assert the examples reached
    preemption under lockstep ranks with offload, where a run once looped without end."""
    import collections
    import signal

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from calibration.errors import ComemInputError
    from sim.scenario import run_scenario, scenario_from

    reached: collections.Counter[str] = collections.Counter()

    def hung(*_: object) -> None:
        raise TimeoutError("a run did not end in 30 s")

    def one(model: str, dp: int, offload: bool, shape: tuple[int, int, int, int]) -> None:
        cap, agents, steps, tokens = shape
        agent = {"name": "agent", "model": model, "gpu": "h100_sxm", "data_parallel_size": dp,
                 "kv_capacity_tokens": cap, "max_model_len": 8000}  # fmt: skip
        if offload:
            agent["kv_offloading_size"] = 10.0
        workload = {
            "agents": agents,
            "steps": steps,
            "system_tokens": tokens,
            "observation_tokens": tokens,
            "action_tokens": tokens // 2,
            "tool_s": 0.2,
        }
        data = {"workload": workload, "architectures": [{"name": "FC", "kind": "fc",
                                                         "agent": agent}]}  # fmt: skip
        old = signal.signal(signal.SIGALRM, hung)
        signal.alarm(30)
        try:
            result = run_scenario(scenario_from(data, [], "test")).results[0]
        except ComemInputError as exc:
            assert "no progress possible" in str(exc), exc
            reached["no progress"] += 1
            return
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        assert len(result.tasks) == agents
        assert set(result.tasks["status"]) <= {"finished", "context_exceeded",
                                               "kv_cache_too_small"}  # fmt: skip
        reached["examples"] += 1
        lockstep = model == "qwen3-30b-a3b" and dp == 2
        reached["lockstep, offload, preempted"] += lockstep and offload and result.preemptions > 0
        reached["preempted"] += result.preemptions > 0

    # every deployment on each drawn shape: MoE (lockstep ranks) and dense, DP 1 and 2,
    # offload on and off
    @settings(max_examples=12, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(shape=st.tuples(st.sampled_from([4000, 8000, 16000]), st.integers(3, 8),
                           st.integers(3, 8), st.integers(250, 800)))  # fmt: skip
    def check(shape: tuple[int, int, int, int]) -> None:
        for model in ("qwen3-30b-a3b", "qwen3-4b"):
            for dp in (1, 2):
                for offload in (False, True):
                    one(model, dp, offload, shape)

    check()
    assert reached["lockstep, offload, preempted"] >= 2, dict(reached)
    assert reached["preempted"] >= reached["examples"] // 5, dict(reached)
