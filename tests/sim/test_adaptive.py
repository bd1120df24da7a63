"""kso-adaptive (sim/kso.py): its rule on its own (no SimPy: a tiny executor feeds it
chosen observations), its parameter checks, and the simulated agent running it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from pydantic import ValidationError

from calibration.errors import ComemInputError
from sim.actions import AgentReply, Await, Send, Step, StepEnd, Summarize, Task, Tool, Waited
from sim.kso import AdaptiveParams, KSOAdaptive
from sim.policy import POLICIES, PolicyParams, make_policy

SYS, OBS, A, S = 32, 16, 4, 8


@dataclass
class Run:
    launched: list[int] = field(default_factory=list)
    swapped: dict[int, int] = field(default_factory=dict)  # step -> job
    awaited: list[int] = field(default_factory=list)  # jobs
    sends: dict[int, Send] = field(default_factory=dict)
    status: str = ""


Observe = Callable[[int], AgentReply]


def drive(
    policy: KSOAdaptive,
    observe: Observe,
    ready_after: int = 0,
    waited_s: float | None = 0.0,
) -> Run:
    """Run ``policy``: step t's reply is ``observe(t)``; a summary ends after
    ``ready_after`` more agent requests (0: at once), or when the agent waits for it,
    which takes ``waited_s`` (None: the executor cannot tell)."""
    out = Run()
    left: dict[int, int] = {}
    run = policy.run()
    reply: AgentReply | Waited | None = None
    while True:
        try:
            act = run.send(reply)
        except StopIteration as end:
            out.status = end.value
            return out
        reply = None
        if isinstance(act, Send):
            out.sends[act.step] = act
            reply = observe(act.step)
            for job in list(left):
                left[job] -= 1
                if left[job] <= 0:
                    del left[job]
                    policy.summary_done(job, True, S)
        elif isinstance(act, Summarize):
            assert not act.blocking and act.model == "memory"
            if ready_after == 0:
                policy.summary_done(act.job, True, S)
            else:
                left[act.job] = ready_after
        elif isinstance(act, Await):
            out.awaited.append(act.job)
            left.pop(act.job, None)
            policy.summary_done(act.job, True, S)
            reply = Waited(waited_s)
        elif isinstance(act, StepEnd):
            if act.launched:
                out.launched.append(act.step)
            if act.swapped is not None:
                out.swapped[act.step] = act.swapped
        else:
            assert isinstance(act, Tool)


def adaptive(steps: int = 24, **params) -> KSOAdaptive:
    rule = params.pop("adaptive", None)
    p = PolicyParams(kind="kso-adaptive", adaptive=rule, **params)
    policy = make_policy(p, Task(SYS, (Step(OBS, A, 0.5),) * steps, S))
    assert isinstance(policy, KSOAdaptive)
    return policy


def calm(t: int) -> AgentReply:
    return AgentReply(True, A, queue_s=0.0, latency_s=1.0, kv_usage=0.2)


def kv_full(t: int) -> AgentReply:
    return AgentReply(True, A, queue_s=0.0, latency_s=1.0, kv_usage=0.97)


def blind(t: int) -> AgentReply:
    """What the live executor can tell: no queue, no KV."""
    return AgentReply(True, A, latency_s=1.0)


def test_registered_like_the_others():
    assert "kso-adaptive" in POLICIES and POLICIES["kso-adaptive"].uses_memory
    assert POLICIES["kso-adaptive"].step_accounting == "overlapped"


@pytest.mark.parametrize("observe", [calm, blind])
def test_no_pressure_and_summaries_on_time_is_plain_kso(observe):
    """Summaries that end during the step before their swap (no slack, never late) and
    no pressure: k and lag stay home and the run is KSO's, request for request."""
    policy = adaptive(steps=22, k=4, lag=1, retain=2)
    got = drive(policy, observe, ready_after=1)
    plain = make_policy(
        PolicyParams(kind="kso", k=4, lag=1, retain=2), Task(SYS, (Step(OBS, A, 0.5),) * 22, S)
    )
    want = drive(plain, observe, ready_after=1)  # type: ignore[arg-type]
    assert {(k, lag) for _, k, lag in policy.decisions} == {(4, 1)}
    assert got.launched == want.launched == [4, 8, 12, 16, 20]
    assert got.swapped == want.swapped and not got.awaited
    for t, send in want.sends.items():
        assert got.sends[t].prompt == send.prompt and got.sends[t].stream == send.stream


def test_pressure_drops_lag_then_halves_k():
    policy = adaptive(steps=24, k=4, lag=2)
    run = drive(policy, kv_full, ready_after=1)
    ks = [k for _, k, _ in policy.decisions]
    lags = [lag for _, _, lag in policy.decisions]
    assert lags[0] == 0  # lag straight to lag_min
    assert ks[:3] == [2, 1, 1]  # k halves to k_min
    # launches follow the current k: after step 4 (decided k 2), then every 2, then 1
    assert run.launched[:4] == [4, 6, 7, 8]
    # every launched summary is swapped in exactly once, in launch order
    jobs = list(run.swapped.values())
    assert jobs == sorted(jobs) and len(set(jobs)) == len(jobs)


def test_late_summaries_under_pressure_raise_k_and_set_a_floor():
    """Under KV pressure a long wait at a swap (>= stall_high of the next request)
    means the memory model cannot keep up: k goes up, and stays at least there."""
    policy = adaptive(steps=40, k=4, lag=1)
    # summaries are never ready at their swap; each wait is 0.5 s, next request 1 s
    run = drive(policy, kv_full, ready_after=99, waited_s=0.5)
    assert run.awaited  # it waited at every swap
    ks = [k for _, k, _ in policy.decisions]
    assert min(ks) == 2  # down once (no swap yet), then every swap is late: k only rises
    assert any(b > a for a, b in zip(ks, ks[1:], strict=False))  # it went up
    short = adaptive(steps=40, k=4, lag=1)
    drive(short, kv_full, ready_after=99, waited_s=0.1)  # below stall_high: not late
    assert [k for _, k, _ in short.decisions][-1] == 1


def test_late_summaries_without_pressure_raise_lag():
    policy = adaptive(steps=30, k=3, lag=0, adaptive=AdaptiveParams(lag_max=2))
    drive(policy, calm, ready_after=99, waited_s=0.6)
    lags = [lag for _, _, lag in policy.decisions]
    assert lags[-1] == 2 and max(lags) == 2  # up to lag_max, no further
    assert {k for _, k, _ in policy.decisions} == {3}  # k stays home


def test_slack_lowers_lag_and_unknown_waits_change_nothing():
    # summaries end at once: a whole step before their swap (lag 2): slack
    policy = adaptive(steps=20, k=4, lag=2)
    drive(policy, calm, ready_after=0)
    assert [lag for _, _, lag in policy.decisions][-1] == 0
    # the live executor without a wait time (None) and no queue/KV: nothing to act on
    policy = adaptive(steps=20, k=4, lag=1)
    drive(policy, blind, ready_after=99, waited_s=None)
    assert {(k, lag) for _, k, lag in policy.decisions} == {(4, 1)}


def test_queueing_counts_as_pressure():
    def queued(t: int) -> AgentReply:
        return AgentReply(True, A, queue_s=0.5, latency_s=1.0, kv_usage=None)

    policy = adaptive(steps=20, k=4, lag=1)
    drive(policy, queued, ready_after=1)
    assert policy.decisions[0][1:] == (2, 0)
    policy = adaptive(steps=20, k=4, lag=1, adaptive=AdaptiveParams(queue_high=0.6))
    drive(policy, queued, ready_after=1)
    assert policy.decisions[0][1:] == (4, 1)


def test_k_returns_home_when_the_pressure_is_gone():
    def burst(t: int) -> AgentReply:
        return kv_full(t) if t <= 8 else calm(t)

    policy = adaptive(steps=40, k=4, lag=1)
    run = drive(policy, burst, ready_after=1)
    ks = [k for _, k, _ in policy.decisions]
    assert min(ks) == 1 and ks[-1] == 4
    assert run.status == "finished" and len(run.sends) == 40


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"k": 20}, "k 20 outside adaptive"),
        ({"lag": 5}, "lag 5 outside adaptive"),
        ({"adaptive": {"k_min": 5, "k_max": 2}, "k": 3}, "k_min 5 > adaptive.k_max 2"),
        ({"adaptive": {"lag_min": 3, "lag_max": 1}}, "lag_min 3 > adaptive.lag_max 1"),
        ({"adaptive": {"kv_high": 1.5}}, "less than or equal to 1"),
        ({"adaptive": {"stall_high": 0}}, "greater than 0"),
        ({"adaptive": {"k_mx": 3}}, "Extra inputs"),
        ({"late_policy": "skip"}, "always waits"),
    ],
)
def test_bad_parameters_are_rejected(bad, match):
    with pytest.raises((ValidationError, ValueError), match=match):
        PolicyParams(kind="kso-adaptive", **bad).check()


def test_adaptive_belongs_to_kso_adaptive_only():
    with pytest.raises(ValueError, match="kind 'kso' has no adaptive rule"):
        PolicyParams(kind="kso", adaptive=AdaptiveParams()).check()


def test_a_bad_scenario_value_is_one_line(tmp_path):
    from sim.scenario import load_scenario

    path = tmp_path / "s.toml"
    path.write_text(
        '[[architectures]]\nname = "A"\nkind = "kso-adaptive"\nk = 4\n'
        'adaptive = { k_max = 2 }\nmemory = { name = "memory" }\n'
    )
    with pytest.raises(ComemInputError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert "\n" not in msg and "k 4 outside adaptive" in msg and "s.toml" in msg


# --- simulated --------------------------------------------------------------------------------


def _scenario(kind: str, stepping: str = "event", agents: int = 16):
    from sim.scenario import load_scenario

    scn = load_scenario(
        "scenarios/paper_latency_glm47.toml",
        [
            f"workload.agents={agents}",
            "workload.steps=12",
            "workload.action_tokens=256",
            f"engine.stepping={stepping}",
        ],  # fmt: skip
    )
    kso = next(a for a in scn.architectures if a.kind == "kso")
    # a small agent KV cache: pressure from the start
    agent = kso.agent.model_copy(update={"kv_capacity_tokens": 50_000})
    arch = kso.model_copy(update={"kind": kind, "name": kind, "agent": agent})
    return scn.model_copy(update={"architectures": [arch]})


@pytest.mark.slow
def test_simulated_adaptive_reacts_to_kv_pressure_deterministically():
    from sim.scenario import run_scenario

    fixed = run_scenario(_scenario("kso")).results[0]
    event = run_scenario(_scenario("kso-adaptive")).results[0]
    iteration = run_scenario(_scenario("kso-adaptive", "iteration")).results[0]
    # the observations it adapts on are the same in both steppings: so is every step
    for col in ("step_latency_s", "stall_s", "finished_s"):
        np.testing.assert_allclose(event.steps[col], iteration.steps[col], rtol=1e-9)
    assert (event.steps["summary_launched"] == iteration.steps["summary_launched"]).all()
    # under pressure it summarizes more often than k = 4 (k came down)
    assert event.steps["summary_launched"].sum() > fixed.steps["summary_launched"].sum()
    assert (event.tasks["status"] == "finished").all()
