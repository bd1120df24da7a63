"""Data-parallel replicas: a MoE model's ranks step in lockstep (sim/data_parallel.py)."""

from __future__ import annotations


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
