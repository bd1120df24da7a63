"""The lines a run prints before its table: context limits a user must know about."""

from __future__ import annotations

from sim.describe import context_limit_notes
from sim.scenario import scenario_from


def _scenario(agent: dict, steps: int = 8) -> object:
    data = {
        "workload": {"agents": 1, "steps": steps, "system_tokens": 1000,
                     "observation_tokens": 500, "action_tokens": 100},
        "architectures": [{"name": "FC", "kind": "fc", "agent": agent}],
    }  # fmt: skip
    return scenario_from(data, [], "test")


def test_a_max_model_len_past_the_trained_context_is_said() -> None:
    # Qwen3-8B's config.json: max_position_embeddings 40960
    (note,) = context_limit_notes(
        _scenario({"name": "agent", "model": "qwen3-8b", "max_model_len": 65536})
    )
    assert "max_model_len 65,536 is above qwen3-8b's max_position_embeddings 40,960" in note
    assert (
        context_limit_notes(
            _scenario({"name": "agent", "model": "qwen3-8b", "max_model_len": 40960})
        )
        == []
    )


def test_a_full_context_task_that_outgrows_its_cap_is_said() -> None:
    # the last prompt: 1000 + 500 + 39 x (500 + 100) = 24,900 tokens
    agent = {"name": "agent", "model": "qwen3-8b", "max_model_len": 16384}
    (note,) = context_limit_notes(_scenario(agent, steps=40))
    assert "last prompt (~24,900 tokens) is past its agent's max_model_len 16,384" in note
    assert "architectures.0.agent.max_model_len" in note
    assert context_limit_notes(_scenario(agent, steps=20)) == []  # 12,900 tokens fit


def test_a_fitted_workload_line_states_what_drives_its_answers():
    """A fitted workload's line gives its tasks' means (steps, tokens per step, tool
    time), the numbers that move a verdict, not only its kind."""
    from sim.describe import mean_task_shape, workload
    from sim.scenario import Scenario

    w = Scenario.model_validate(
        {"workload": {"kind": "fitted", "agents": 2, "max_steps": 12}}
    ).workload
    shape = mean_task_shape(w)
    assert 1 <= shape.steps <= 12 and shape.kept_tokens <= shape.action_tokens
    line = workload(w)
    assert "means of 256 drawn tasks" in line and f"{shape.steps:.0f} steps" in line
    assert f"decoded {shape.action_tokens:,.0f} tokens" in line


def test_the_verdict_says_when_the_two_sides_use_different_gpus() -> None:
    """A speedup of CoMem on 4 + 2 GPUs over full context on 4 is partly the 2 GPUs."""
    from sim.describe import unlike_agents_note
    from sim.scenario import scenario_from

    agent = {"model": "llama-3-8b", "gpu": "h100_sxm", "tp": 4}
    memory = {"model": "qwen3-4b", "gpu": "h100_sxm", "tp": 2}
    fc = {"name": "FC", "kind": "fc", "agent": agent}
    kso = {"name": "KSO", "kind": "kso", "k": 2, "agent": agent, "memory": memory}
    data = {"workload": {"agents": 1, "steps": 4}, "architectures": [fc, kso]}
    note = unlike_agents_note(scenario_from(data, [], "s"), "FC", "KSO")
    assert note is not None and note.startswith("the GPUs differ: FC on 4 x h100_sxm, KSO on 6")
    assert "(agent 4, memory model 2)" in note
    shared = {
        **kso,
        "agent": {**agent, "gpu_group": "g", "gpu_memory_utilization": 0.6},
        "memory": {**memory, "tp": 4, "gpu_group": "g", "gpu_memory_utilization": 0.3},
    }
    data["architectures"] = [fc, shared]
    assert unlike_agents_note(scenario_from(data, [], "s"), "FC", "KSO") is None
    data["architectures"] = [fc, {**kso, "agent": {**agent, "dtype": "fp8"}}]
    note = unlike_agents_note(scenario_from(data, [], "s"), "FC", "KSO")
    assert note is not None and note.startswith("the agents differ: FC bf16 on 4")
    # the same GPUs split another way: said as a split, not as different GPUs
    split = {**kso, "agent": {**agent, "tp": 2}}
    data["architectures"] = [{**fc, "agent": {**agent, "tp": 4}}, split]
    note = unlike_agents_note(scenario_from(data, [], "s"), "FC", "KSO")
    assert note is not None and note.startswith(
        "the same 4 x h100_sxm, split differently: FC's agent on all 4, KSO's agent on 2 and"
        " its memory model on 2"
    ), note


def test_the_verdict_says_when_the_resolve_rate_is_extrapolated() -> None:
    """k = 2 lies below the effectiveness fit's k range (3-34): the verdict, the line a
    user reads, says so as the table's `*` does, not only --json."""
    from sim.scenario import run_scenario

    agent = {"model": "llama-3-8b", "gpu": "h100_sxm"}
    kso = {"name": "KSO", "kind": "kso", "k": 2, "lag": 1, "agent": agent,
           "memory": {"model": "qwen3-4b", "gpu": "h100_sxm"}}  # fmt: skip
    data = {
        "workload": {"agents": 1, "steps": 6, "system_tokens": 200, "observation_tokens": 50,
                     "action_tokens": 20, "summary_tokens": 50},
        "architectures": [{"name": "FC", "kind": "fc", "agent": agent}, kso],
    }  # fmt: skip
    from sim.describe import verdict_lines

    result = run_scenario(scenario_from(data, [], "s"))
    (line,) = verdict_lines(result.summary(), "step")
    assert "extrapolated: k or raw tail outside the effectiveness fit's range" in line
    data["architectures"][1] = {**kso, "k": 4}
    (line,) = verdict_lines(run_scenario(scenario_from(data, [], "s")).summary(), "step")
    assert "extrapolated" not in line
