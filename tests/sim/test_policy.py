"""The context policies (sim/policy.py, sim/kso.py) on their own: no SimPy, no torch, no time.

A tiny executor below drives a policy the way sim.executor's loop does (under
sim.agents and live.agent), with summaries that finish after a chosen number of agent
requests; the tests read what the policy asked for: prompts (tokens), streams (cached
or fresh), summaries launched, waited for and swapped in. The timelines are those of
comem-pipeline.png.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sim.actions import AgentReply, Await, PreWarm, Send, Step, StepEnd, Summarize, Task, Tool
from sim.context_policy import ContextPolicy, total_step_time
from sim.policy import POLICIES, PolicyParams, make_policy, register_policy

SYS, OBS, A, S, Q = 32, 16, 4, 8, 2  # system, observation, action, summary, instruction
RAW = OBS + A
ROOT = Path(__file__).resolve().parents[2]


def task(steps: int = 6, tool: float = 0.5, kept: int | None = None) -> Task:
    return Task(SYS, (Step(OBS, A, tool, kept),) * steps, S)


@dataclass
class Trace:
    """What a policy asked for, in order."""

    status: str = ""
    sends: dict[int, Send] = field(default_factory=dict)
    summaries: dict[int, Summarize] = field(default_factory=dict)  # by job
    awaited: list[tuple[int, int]] = field(default_factory=list)  # (step, job)
    ends: dict[int, StepEnd] = field(default_factory=dict)
    pre_warms: list[PreWarm] = field(default_factory=list)
    order: list[str] = field(default_factory=list)

    def swapped_at(self) -> list[int]:
        return [t for t, e in self.ends.items() if e.swapped is not None]

    def launched_at(self) -> list[int]:
        return [t for t, e in self.ends.items() if e.launched]


def drive(
    policy: ContextPolicy,
    ready_after: int = 0,
    summary_ok: bool = True,
    generated: int | None = None,
) -> Trace:
    """Execute ``policy``: each agent request generates what it asks for (or
    ``generated`` tokens); a summary ends after ``ready_after`` more agent requests
    have (0: at once), or when the agent waits for it."""
    trace = Trace()
    left: dict[int, int] = {}  # job -> agent requests until it ends
    step = 0

    def finish(job: int) -> None:
        left.pop(job, None)
        warm = policy.summary_done(job, summary_ok, S if summary_ok else 0, "context_exceeded")
        if warm is not None:
            trace.pre_warms.append(warm)

    run = policy.run()
    reply = None
    while True:
        try:
            act = run.send(reply)
        except StopIteration as end:
            trace.status = end.value
            return trace
        reply = None
        trace.order.append(type(act).__name__)
        if isinstance(act, Send):
            step = act.step
            trace.sends[act.step] = act
            reply = AgentReply(True, act.output_tokens if generated is None else generated)
            for job in list(left):
                left[job] -= 1
                if left[job] <= 0:
                    finish(job)
        elif isinstance(act, Summarize):
            trace.summaries[act.job] = act
            if act.blocking or ready_after == 0:
                finish(act.job)
            else:
                left[act.job] = ready_after
        elif isinstance(act, Await):
            trace.awaited.append((step + 1, act.job))
            finish(act.job)
        elif isinstance(act, StepEnd):
            trace.ends[act.step] = act
        else:
            assert isinstance(act, Tool)


def run_kind(kind: str, n: int = 6, ready_after: int = 0, memory_len=None, **params) -> Trace:
    p = PolicyParams(kind=kind, **params)
    return drive(make_policy(p, task(n), memory_len), ready_after)


def prompt_tokens(trace: Trace) -> list[int]:
    return [trace.sends[t].prompt.tokens for t in sorted(trace.sends)]


def is_fresh(trace: Trace, t: int) -> bool:
    """Step t's prompt continues no earlier context: only the system prompt is shared."""
    s = trace.sends[t].stream
    return s.parent is not None and s.parent.parent is None and s.shared == SYS


# --- the core is pure -------------------------------------------------------------------


def test_the_core_imports_neither_simpy_nor_torch():
    code = (
        "import sys, sim.policy; bad = {'simpy', 'torch'} & set(sys.modules); assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- full context, coupled, sync memory -----------------------------------------------------


def test_full_context_grows_one_cached_context():
    tr = run_kind("fc")
    assert tr.status == "finished"
    assert prompt_tokens(tr) == [SYS + (t - 1) * RAW + OBS for t in range(1, 7)]
    assert len({s.stream for s in tr.sends.values()}) == 1  # one stream: all cached
    assert not tr.summaries and not tr.swapped_at()
    assert tr.order[:3] == ["Send", "Tool", "StepEnd"]


def test_coupled_summarizes_inline_over_its_own_context_and_restarts():
    tr = run_kind("cp", k=2, retain=1, summary_prompt_tokens=Q)
    assert tr.launched_at() == [2, 4] and tr.swapped_at() == [2, 4]  # not after step 6
    first = tr.summaries[1]
    assert first.model == "agent" and first.blocking
    assert first.prompt.tokens == SYS + 2 * RAW + Q  # context + instruction
    # its tokens branch off the context's stream, which it shares up to the context
    assert first.stream.parent == tr.sends[2].stream and first.stream.shared == SYS + 2 * RAW
    # the context restarts: system + summary + 1 retained step, only the system cached
    assert tr.sends[3].prompt.tokens == SYS + S + RAW + OBS and is_fresh(tr, 3)
    assert tr.sends[4].stream == tr.sends[3].stream  # and then grows, cached
    i = tr.order.index("Summarize")
    assert tr.order[i - 2 : i + 2] == ["Send", "Tool", "Summarize", "StepEnd"]  # after the tool


def test_sync_memory_blocks_on_the_memory_model_reading_the_history():
    tr = run_kind("sm", k=2, retain=1, summary_prompt_tokens=Q)
    job = tr.summaries[2]
    assert job.model == "memory" and job.blocking
    assert job.prompt.tokens == SYS + 4 * RAW + Q
    # the memory model's prompt extends its previous one (its prefix cache)
    assert job.stream.parent == tr.summaries[1].stream.parent
    assert tr.sends[5].prompt.tokens == SYS + S + RAW + OBS and is_fresh(tr, 5)


# --- k-step-off --------------------------------------------------------------------------------


def test_two_step_off_overlaps_one_step_and_swaps_in_uncached():
    # comem-pipeline.png, 2-step-off: launched after steps 2 and 4, run during steps 3
    # and 5, swapped in before steps 4 and 6
    tr = run_kind("kso", k=2, lag=1, retain=1, ready_after=1)
    assert tr.launched_at() == [2, 4] and tr.swapped_at() == [4, 6]
    assert not tr.awaited  # each summary ended during the step it overlapped
    assert not tr.summaries[1].blocking and tr.summaries[1].model == "memory"
    # step 3 still runs on the old, growing context; step 4 on system + summary +
    # retained step 2 + step 3, uncached
    assert tr.sends[3].prompt.tokens == SYS + 2 * RAW + OBS
    assert tr.sends[4].prompt.tokens == SYS + S + 2 * RAW + OBS and is_fresh(tr, 4)
    assert tr.ends[4].swapped == 1 and tr.ends[6].swapped == 2


def test_a_late_summary_is_waited_for_at_its_swap():
    tr = run_kind("kso", k=2, lag=1, retain=1, ready_after=2)
    assert tr.awaited == [(4, 1), (6, 2)]
    assert tr.swapped_at() == [4, 6]


def test_skip_if_late_keeps_the_context_and_drops_the_summary():
    tr = run_kind("kso", k=2, lag=1, retain=1, ready_after=2, late_policy="skip")
    assert not tr.awaited and not tr.swapped_at()
    assert prompt_tokens(tr) == prompt_tokens(run_kind("fc"))


def test_one_step_off_summarizes_every_step_and_swaps_every_step():
    # comem-pipeline.png, 1-step-off: a summary after every step, each swapped in one
    # step later (k = lag = 1). Summaries queue: none replaces another
    tr = run_kind("kso", k=1, lag=1, retain=0, ready_after=1)
    assert tr.launched_at() == [1, 2, 3, 4, 5]
    assert tr.swapped_at() == [3, 4, 5, 6]
    assert [tr.ends[t].swapped for t in (3, 4, 5, 6)] == [1, 2, 3, 4]  # launched at t-2
    for t in (3, 4, 5, 6):  # system + summary + the step run during it + observation
        assert tr.sends[t].prompt.tokens == SYS + S + RAW + OBS and is_fresh(tr, t)


@pytest.mark.parametrize("lag", [1, 2, 3])
def test_lag_at_least_k_swaps_each_summary_lag_steps_after_its_launch(lag):
    n = 9
    tr = run_kind("kso", n=n, k=1, lag=lag, retain=1, ready_after=lag)
    assert tr.swapped_at() == list(range(lag + 2, n + 1))
    for t in tr.swapped_at():
        assert tr.ends[t].swapped == t - lag - 1
        assert tr.sends[t].prompt.tokens == SYS + S + (1 + lag) * RAW + OBS
    assert not tr.awaited  # each ended as its swap came


def test_pre_warm_prefills_the_context_the_summary_brings_on_its_stream():
    tr = run_kind("kso", k=2, lag=1, retain=1, ready_after=0, pre_warm=True)
    warm = tr.pre_warms[0]
    # ready at once (after step 2): system + summary + retained step 2
    assert warm.prompt.tokens == SYS + S + RAW
    assert tr.sends[4].stream == warm.stream  # the swap step finds it cached


def test_memory_prompt_past_its_limit_keeps_the_recent_history_and_loses_the_cache():
    room = SYS + 2 * RAW + Q  # the first memory prompt, plus room for the summary
    tr = run_kind("kso", n=8, k=2, lag=1, retain=1, memory_len=room + S, summary_prompt_tokens=Q)
    first, last = tr.summaries[1], tr.summaries[3]
    assert first.prompt.keep_last is None and first.prompt.tokens == room
    assert last.prompt.full_tokens == SYS + 6 * RAW + Q
    assert last.prompt.keep_last == room and last.prompt.tokens == room
    assert last.stream.parent != first.stream.parent  # a new memory stream


def test_dropped_reasoning_branches_the_context_after_the_prompt():
    pol = make_policy(PolicyParams(kind="fc"), task(3, kept=1))
    tr = drive(pol)
    s2 = tr.sends[2].stream
    assert s2.parent == tr.sends[1].stream and s2.shared == SYS + OBS
    assert tr.sends[2].prompt.tokens == SYS + OBS + 1 + OBS


def test_an_agent_request_that_fails_ends_the_task_with_its_reason():
    pol = make_policy(PolicyParams(kind="kso"), task(6))
    run = pol.run()
    act = next(run)
    assert isinstance(act, Send)
    assert run.send(AgentReply(False, failure="context_exceeded")) == StepEnd(1, False, None)
    with pytest.raises(StopIteration) as end:
        next(run)
    assert end.value.value == "context_exceeded"


# --- the authors' k-step-off ---------------------------------------------------------------


def test_authors_kso_launches_with_the_request_and_collects_at_the_next_step():
    tr = run_kind("kso-authors", n=7, retain=2, ready_after=1, summary_prompt_tokens=Q)
    # launched at the start of steps 2, 4, 6 ((steps + 1) % R == 0), before the request
    assert tr.launched_at() == [2, 4, 6]
    i = tr.order.index("Summarize")
    assert tr.order[i + 1] == "Send"
    # the memory model reads the whole history: every earlier step and this observation
    assert tr.summaries[1].prompt.tokens == SYS + RAW + OBS + Q
    assert tr.summaries[2].prompt.tokens == SYS + 3 * RAW + OBS + Q
    # collected at the start of the next step: system + summary + the last action
    assert tr.swapped_at() == [3, 5, 7]
    assert tr.sends[3].prompt.tokens == SYS + S + A + OBS and is_fresh(tr, 3)
    # between collections 1..R raw steps, cached; the first R steps are a plain chat
    assert tr.sends[4].prompt.tokens == SYS + S + A + RAW + OBS
    assert tr.sends[4].stream == tr.sends[3].stream
    assert prompt_tokens(tr)[:2] == prompt_tokens(run_kind("fc"))[:2]
    late = run_kind("kso-authors", n=7, retain=2, ready_after=2)
    assert late.awaited == [(3, 1), (5, 2), (7, 3)]  # it always waits


def test_authors_kso_never_cuts_the_memory_prompt_and_stops_when_it_is_rejected():
    pol = make_policy(PolicyParams(kind="kso-authors", retain=2), task(6), memory_max_model_len=40)
    tr = drive(pol, ready_after=1, summary_ok=False)
    assert tr.summaries[1].prompt.keep_last is None
    assert tr.status == "memory_context_exceeded"
    assert sorted(tr.sends) == [1, 2]  # stopped at the step that would collect it


def test_authors_kso_has_no_separate_k_or_lag():
    with pytest.raises(ValueError, match="no k, lag"):
        PolicyParams(kind="kso-authors", k=2, lag=1).check()
    with pytest.raises(ValueError, match="retain"):
        PolicyParams(kind="kso-authors", retain=0).check()
    PolicyParams(kind="kso-authors", retain=3).check()


def test_authors_and_general_kso_coincide_in_rhythm_and_differ_in_phase_and_contents():
    """R = k, general lag 1 and retain 0: the same number of summaries, each overlapping
    exactly one agent request, swapped every R steps; the authors' start one step
    earlier, their swapped context lacks the lagged step's observation, their memory
    prompt has the new observation instead of the last action."""
    r, n = 3, 12
    authors = run_kind("kso-authors", n=n, retain=r, ready_after=1, summary_prompt_tokens=Q)
    general = run_kind("kso", n=n, k=r, lag=1, retain=0, ready_after=1, summary_prompt_tokens=Q)
    # coincide: launches (steps R, 2R, ...) and swaps every R steps, one request overlapped
    assert authors.launched_at() == general.launched_at() == [3, 6, 9]
    assert len(authors.swapped_at()) == len(general.swapped_at()) == 3
    assert not authors.awaited and not general.awaited  # one request each hides them
    assert run_kind("kso-authors", n=n, retain=r, ready_after=2).awaited
    assert run_kind("kso", n=n, k=r, lag=1, retain=0, ready_after=2).awaited
    # differ: the phase (the authors' summary starts before step t's request)
    assert authors.swapped_at() == [4, 7, 10] and general.swapped_at() == [5, 8, 11]
    # the swapped context: system + summary + a (+ o) against + (o + a) (+ o)
    assert authors.sends[4].prompt.tokens == SYS + S + A + OBS
    assert general.sends[5].prompt.tokens == SYS + S + RAW + OBS
    # the memory prompt at the launch of step t: t - 1 steps and o_t against t steps
    assert authors.summaries[1].prompt.tokens == SYS + 2 * RAW + OBS + Q
    assert general.summaries[1].prompt.tokens == SYS + 3 * RAW + Q


# --- the registry and the authors' step accounting -------------------------------------------


def test_unknown_kinds_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown kind 'magic'.*kso-authors"):
        PolicyParams(kind="magic")


def test_a_registered_policy_is_a_kind_without_touching_any_executor():
    @register_policy("sm-always", "sync memory after every step")
    class EveryStep(ContextPolicy):
        uses_memory = True

        def run(self):
            for t, step in enumerate(self.task.steps, start=1):
                failure = yield from self._agent_step(t, step)
                if failure is not None:
                    return failure
                job = self._new_job(t, t)
                yield self._memory_request(job, (self.system, *self._raw_since(0)), True)
                self._restart(job, t)
                yield StepEnd(t, True, job.id)
            return "finished"

    try:
        tr = drive(make_policy(PolicyParams(kind="sm-always"), task(4)))
        assert tr.swapped_at() == [1, 2, 3, 4]
        assert tr.sends[3].prompt.tokens == SYS + S + OBS
    finally:
        POLICIES.pop("sm-always")


def test_total_step_time_follows_the_authors_formulas():
    assert total_step_time("sequential", 2.0, 0.5, 0.0, 1.0) == 3.5  # FC (summary 0), SM
    assert total_step_time("overlapped", 2.0, 1.5, 0.25, 1.0) == 3.0  # max(llm, s + p) + env
    assert total_step_time("overlapped", 2.0, 1.5, 0.75, 1.0) == 3.25
    assert POLICIES["kso"].step_accounting == POLICIES["kso-authors"].step_accounting
    assert POLICIES["fc"].step_accounting == "sequential"


def test_a_summary_instruction_the_memory_model_cannot_hold_is_refused() -> None:
    """The history is cut to the memory model's context; an instruction and summary that
    do not fit in it would be cut too, and the summaries reported as made."""
    from calibration.errors import ComemInputError
    from sim.scenario import scenario_from

    memory = {"model": "qwen3-4b", "gpu": "h100_sxm", "tp": 1, "max_model_len": 4096}
    arch = {"name": "KSO", "kind": "kso", "k": 2, "memory": memory,
            "agent": {"model": "llama-3-8b", "gpu": "h100_sxm", "tp": 1}}  # fmt: skip
    data = {"workload": {"agents": 1, "steps": 4, "summary_tokens": 1024}, "architectures": [arch]}
    scenario_from(data, [], "s.toml")  # 64 + 1024 tokens fit in 4096
    with pytest.raises(ComemInputError) as info:
        scenario_from(data, ["architectures.0.summary_prompt_tokens=3500"], "s.toml")
    msg = str(info.value)
    assert "architectures.0 ('KSO'): summary_prompt_tokens (3500)" in msg
    assert "max_model_len (4096)" in msg
