"""The CoMem authors' workloads: their synthetic benchmark (input padding in the request
only), closed-batch arrivals, and trace-driven agents that keep their reasoning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import ComemInputError
from sim.actions import AgentReply, Send, Step, StepEnd, Task
from sim.policy import PolicyParams, make_policy
from sim.scenario import Scenario, load_scenario, run_scenario
from sim.workloads import (
    FittedWorkload,
    TraceWorkload,
    fit_workload,
    fitted_file,
    load_fitted,
)

ROOT = Path(__file__).resolve().parents[2]
SYS, OBS, A, TARGET = 500, 200, 1024, 512


def sends_of(task: Task, kind: str = "fc", **params) -> list[Send]:
    """Drive a policy whose requests all succeed; the agent requests it sent."""
    run = make_policy(PolicyParams(kind=kind, **params), task).run()
    sends, reply = [], None
    try:
        while True:
            act = run.send(reply)
            reply = None
            if isinstance(act, Send):
                sends.append(act)
                reply = AgentReply(True, act.output_tokens)
            elif not isinstance(act, StepEnd):
                raise AssertionError(f"unexpected {act}")
    except StopIteration:
        return sends


def authors_task(steps: int = 3) -> Task:
    first = Step(0, A, 0.0)
    return Task(SYS, (first, *[Step(OBS, A, 0.0)] * (steps - 1)), 2048, TARGET)


# --- input padding ----------------------------------------------------------------------------


def test_short_prompt_is_padded_in_the_request_only():
    s1, s2, s3 = sends_of(authors_task())
    # step 1 reads the 500-token problem statement: padded with 12 filler tokens
    assert s1.prompt.tokens == TARGET
    assert [seg.kind for seg in s1.prompt.segments] == ["system", "observation", "padding"]
    assert s1.prompt.segments[-1].tokens == TARGET - SYS
    # the filler is not in the history: step 2 = statement + action + observation
    assert s2.prompt.tokens == SYS + A + OBS
    assert "padding" not in [seg.kind for seg in s2.prompt.segments]
    assert s3.prompt.tokens == SYS + 2 * (A + OBS)


def test_padding_is_not_shared_with_the_next_prompt():
    """The padded request runs on a branch sharing only its real prompt; the next
    context shares that much with the same parent, never the filler or the action
    decoded after it."""
    s1, s2, s3 = sends_of(authors_task())
    assert s1.stream.shared == SYS and s1.stream.parent is not None
    assert s2.stream.parent is s1.stream.parent and s2.stream.shared == SYS
    assert s2.stream is not s1.stream
    assert s3.stream is s2.stream  # unpadded from here on: one growing stream


def test_prompts_at_or_above_the_target_are_sent_as_they_are():
    task = Task(SYS, (Step(OBS, A, 0.0),) * 2, 2048, TARGET)  # 700 >= 512
    s1, s2 = sends_of(task)
    assert s1.prompt.tokens == SYS + OBS and s2.stream is s1.stream
    assert sends_of(Task(SYS, (Step(0, A, 0.0),), 2048, 0))[0].prompt.tokens == SYS


def test_padding_in_the_engine_misses_the_prefix_cache():
    """Simulated: step 2 hits only the statement's full blocks (496 of 500 with 16-token
    blocks), not the filler nor step 1's action; without padding it hits 1520."""
    cached = {}
    for target in (0, TARGET):
        sc = Scenario.model_validate(
            {
                "workload": {
                    "agents": 1,
                    "steps": 3,
                    "system_tokens": SYS,
                    "first_observation_tokens": 0,
                    "observation_tokens": OBS,
                    "action_tokens": A,
                    "input_target_tokens": target,
                },
                "architectures": [{"name": "FC", "kind": "fc", "agent": {"model": "qwen3-4b"}}],
            }
        )
        steps = run_scenario(sc).results[0].steps
        cached[target] = steps["cached_tokens"].tolist()
        assert steps["prompt_tokens"].tolist() == [
            max(SYS, target),
            SYS + A + OBS,
            SYS + 2 * (A + OBS),
        ]
    block = 16
    assert cached[0][1] == (SYS + A) // block * block
    assert cached[TARGET][1] == SYS // block * block
    assert cached[TARGET][2] == cached[0][2] == (SYS + A + OBS + A) // block * block


def test_authors_synthetic_scenario_file_is_their_benchmark():
    sc = load_scenario(ROOT / "scenarios" / "authors_synthetic.toml")
    w = sc.workload
    tasks = w.tasks(np.random.default_rng(0))
    task = tasks[0][0]
    assert (w.arrivals, w.agents, w.tasks_per_agent) == ("closed-batch", 16, 1)
    assert (task.system_tokens, task.summary_tokens, task.input_target_tokens) == (
        500,
        2048,
        512,
    )
    assert len(task.steps) == 64 and task.steps[0].observation == 0
    assert {(s.observation, s.action, s.tool_s) for s in task.steps[1:]} == {(200, 1024, 0.0)}
    kinds = {a.name: (a.kind, a.retain) for a in sc.architectures}
    assert kinds["CoMem"] == ("kso-authors", 3)
    fc = next(a for a in sc.architectures if a.kind == "fc")
    comem = next(a for a in sc.architectures if a.kind == "kso-authors")
    assert fc.agent.max_model_len == 65536
    assert comem.memory is not None and comem.memory.max_model_len == 131072


# --- arrivals -----------------------------------------------------------------------------------


def _starts(arrivals: str, **extra) -> list[float]:
    sc = Scenario.model_validate(
        {
            "workload": {
                "agents": 3,
                "tasks_per_agent": 2,
                "steps": 2,
                "system_tokens": 64,
                "observation_tokens": 16,
                "action_tokens": 8,
                "arrivals": arrivals,
                **extra,
            },
            "architectures": [{"name": "FC", "kind": "fc", "agent": {"model": "qwen3-4b"}}],
        }
    )
    tasks = run_scenario(sc).results[0].tasks
    assert len(tasks) == 6
    return sorted(tasks["start_s"].tolist())


def test_closed_batch_starts_every_task_at_once_closed_loop_replaces_them():
    assert _starts("closed-batch") == [0.0] * 6
    loop = _starts("closed-loop")
    assert loop[:3] == [0.0] * 3 and min(loop[3:]) > 0.0
    poisson = _starts("poisson", arrival_rate_per_s=10.0)
    assert poisson[0] > 0.0 and len(set(poisson)) == 6


def test_arrival_fields_are_checked_and_a_rate_alone_still_means_poisson():
    from sim.workloads import AgentLoad

    assert AgentLoad(arrival_rate_per_s=2.0).arrivals == "poisson"
    assert AgentLoad().arrivals == "closed-loop"
    with pytest.raises(ValueError, match="needs arrival_rate_per_s"):
        AgentLoad(arrivals="poisson")
    with pytest.raises(ValueError, match="not 'closed-batch'"):
        AgentLoad(arrivals="closed-batch", arrival_rate_per_s=1.0)
    with pytest.raises(ComemInputError, match="workload.arrivals"):
        load_scenario(None, ["workload.arrivals=open"])


# --- agents that keep their reasoning -----------------------------------------------------------


def test_committed_glm46_fit_loads_by_name_with_provenance():
    data = load_fitted(str(fitted_file("swebench_fitted_glm46")))
    assert data["sources"] == ["openhands_glm46_sessions"]
    assert data["variable_sources"] == {"system": ["gemini3pro_mini1.15_verified"]}
    assert "GLM-4.6" in data["note"] and "swebench_agent_steps" in data["provenance"]
    comp = data["variables"]["completion"]
    assert comp["dist"] == "lognormal-mixture" and comp["ks"] < 0.08
    assert fitted_file(None).name == "swebench_fitted.json"


def test_fitted_reasoning_workload_keeps_every_decoded_token_and_matches_its_fit():
    """Sampled decode lengths follow the committed mixture: the sample mean is within 5
    standard errors of the mixture's mean sum(w exp(mu + sigma^2 / 2))."""
    w = FittedWorkload(path="swebench_fitted_glm46", agents=300, keep_reasoning=True, max_steps=100)
    tasks = [t for own in w.tasks(np.random.default_rng(3)) for t in own]
    steps = [s for t in tasks for s in t.steps]
    assert all(s.kept is None for s in steps)
    comp = np.array([s.action for s in steps], dtype=float)
    spec = load_fitted(str(fitted_file("swebench_fitted_glm46")))["variables"]["completion"]
    parts = zip(spec["weights"], spec["mus"], spec["sigmas"], strict=True)
    mean = sum(wt * np.exp(m + s**2 / 2) for wt, m, s in parts)
    assert abs(comp.mean() - mean) < 5 * comp.std() / np.sqrt(comp.size)
    # the same draws without keep_reasoning: only the kept counts change
    plain = FittedWorkload(path="swebench_fitted_glm46", agents=300, max_steps=100)
    again = [t for own in plain.tasks(np.random.default_rng(3)) for t in own]
    assert [s.action for t in again for s in t.steps] == comp.astype(int).tolist()


def test_mixture_file_errors_are_clear(tmp_path: Path):
    data = json.loads(fitted_file("swebench_fitted_glm46").read_text())
    del data["variables"]["completion"]["mus"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ComemInputError, match="completion: a mixture needs 2"):
        load_fitted(str(bad))


@pytest.mark.shared
def test_refit_reproduces_the_committed_glm46_fit(shared_dir):
    path = shared_dir / "data" / "workloads" / "swebench_agent_steps.csv.gz"
    fresh = fit_workload(
        path,
        ["openhands_glm46_sessions"],
        {"system": ["gemini3pro_mini1.15_verified"]},
        ("completion", "observation"),
    )
    committed = load_fitted(str(fitted_file("swebench_fitted_glm46")))
    assert fresh["variables"] == committed["variables"]


@pytest.mark.shared
def test_trace_workload_keeps_reasoning_and_takes_a_system_prompt_for_blind_sources(shared_dir):
    glm = {"sources": ["openhands_glm46_sessions"], "agents": 4, "max_steps": 100}
    with pytest.raises(ComemInputError, match="set workload.system_tokens"):
        TraceWorkload(**glm).tasks(np.random.default_rng(0))
    tasks = TraceWorkload(**glm, system_tokens=1647, keep_reasoning=True).tasks(
        np.random.default_rng(0)
    )
    task = tasks[0][0]
    assert task.system_tokens == 1647 and all(s.kept is None for s in task.steps)
    # dropping reasoning on a source that reports it: kept < completion somewhere
    gpt = TraceWorkload(sources=["gpt5mini_mini2.2.4_verified45"], agents=4)
    gpt_tasks = [t for own in gpt.tasks(np.random.default_rng(0)) for t in own]
    kept = [(s.kept, s.action) for t in gpt_tasks for s in t.steps]
    assert any(k is not None and k < a for k, a in kept)
