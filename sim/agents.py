"""Simulated agents: a SimPy process that executes a context policy on simulated engines.

What an agent sends, when it summarizes, swaps and waits is the policy's business
(:mod:`sim.policy`); the loop over its actions and the rows it writes are
:mod:`sim.executor`'s, shared with the live agent of :mod:`live.agent`. This module only
performs the actions in simulated time: requests go to the agent or memory
:class:`~sim.engine.Engine` on the prefix-cache stream the policy names, and tools take
simulated time. Replies tell the policy what happened, with what a client of the
engine observes: the request's queueing delay and latency, the agent engine's KV use
when it ended, and how long the agent waited for a summary. :class:`AgentRecorder` keeps
the step and task rows the loop writes (:class:`sim.rows.StepRow`, whose docstring says
what the authors' per-step columns are, and :class:`sim.rows.TaskRow`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import simpy

from engine.kv_cache import Stream, StreamSpace
from sim.actions import AgentReply, PrefixStream, PreWarm, Send, Summarize, Task
from sim.context_policy import ContextPolicy
from sim.deployment import AnyEngine
from sim.executor import AgentRequest, SummaryJob, TaskExecutor
from sim.policy import PolicyParams, make_policy
from sim.request import Request
from sim.rows import StepRow, TaskRow, frame

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Agent", "AgentRecorder", "SimTask"]


def _failure(req: Any) -> str:
    """Why the engine refused a request: its prompt past ``max_model_len``
    (``context_exceeded``), or more tokens than its whole KV cache holds
    (``kv_cache_too_small``: a deployment too small for the task, not a long task)."""
    return "kv_cache_too_small" if "KV blocks" in str(req.reason) else "context_exceeded"


@dataclass
class AgentRecorder:
    steps: list[StepRow] = field(default_factory=list)
    tasks: list[TaskRow] = field(default_factory=list)
    #: called after each finished task (progress bars)
    on_task: Callable[[], None] | None = None

    def add_task(self, row: TaskRow) -> None:
        self.tasks.append(row)
        if self.on_task is not None:
            self.on_task()

    def steps_frame(self) -> pd.DataFrame:
        return frame(self.steps, StepRow._fields)

    def tasks_frame(self) -> pd.DataFrame:
        return frame(self.tasks, TaskRow._fields)


@dataclass
class _SimJob(SummaryJob):
    """A summary request in flight or done, in simulated time."""

    submit_s: float = 0.0
    done: simpy.Event | None = None
    request: Request | None = None
    pre_warm: Request | None = None
    pre_warm_submit_s: float = 0.0


@dataclass(eq=False)
class Agent:
    """One agent process running tasks under the policy ``params.kind``."""

    env: simpy.Environment
    id: int
    name: str
    params: PolicyParams
    #: the agent model's engine, and the memory model's (None: the policy needs none)
    engine: AnyEngine
    memory: AnyEngine | None
    streams: StreamSpace
    recorder: AgentRecorder

    def run_task(self, task_id: int, task: Task) -> Generator[simpy.Event, Any, str]:
        limit = self.memory.config.max_model_len if self.memory is not None else None
        policy = make_policy(self.params, task, limit)
        return (yield from SimTask(self, policy, task_id).run())


class SimTask(TaskExecutor[simpy.Event, _SimJob]):
    """One task of a simulated agent: its actions performed in simulated time."""

    def __init__(self, agent: Agent, policy: ContextPolicy, task_id: int) -> None:
        super().__init__(policy, agent.name, agent.id, task_id)
        self.owner = agent
        self.env = agent.env
        self._streams: dict[int, Stream] = {}

    def now(self) -> float:
        return self.env.now  # an int at 0: the rows' dtypes are the clock's

    def _stream(self, ps: PrefixStream) -> Stream:
        """The engine stream of a policy stream (made once, parents first)."""
        s = self._streams.get(ps.id)
        if s is None:
            parent = self._stream(ps.parent) if ps.parent is not None else None
            s = self._streams[ps.id] = self.owner.streams.new(parent, ps.shared)
        return s

    def send(self, act: Send) -> Generator[simpy.Event, Any, tuple[AgentReply, AgentRequest]]:
        engine = self.owner.engine
        submit = self.env.now
        stream = self._stream(act.stream)
        tag = (self.agent, self.task, act.step)
        req = engine.submit(act.prompt.tokens, act.output_tokens, stream, tag)
        yield req.done
        ok = req.status == "finished"
        admitted = req.admitted_s == req.admitted_s  # not NaN: it was admitted
        reply = AgentReply(
            ok,
            req.generated,
            failure=_failure(req),
            queue_s=req.admitted_s - submit if admitted else None,
            latency_s=req.finished_s - submit,
            kv_usage=engine.kv_used_blocks / engine.total_blocks,
        )
        return reply, AgentRequest(
            status=req.status,
            submit_s=submit,
            admitted_s=req.admitted_s,
            first_token_s=req.first_token_s,
            finished_s=req.finished_s,
            queue_s=req.admitted_s - submit,
            prefill_s=req.first_token_s - req.admitted_s,
            decode_s=req.finished_s - req.first_token_s,
            latency_s=req.finished_s - submit,
            prompt_tokens=req.prompt_tokens,
            cached_tokens=req.cached_tokens,
            action_tokens=req.generated,
        )

    def sleep(self, seconds: float) -> simpy.Event:
        return self.env.timeout(seconds)

    def submit_summary(self, act: Summarize) -> simpy.Event:
        tag: tuple[Any, ...]
        if act.model == "agent":
            engine, tag = self.owner.engine, (self.agent, self.task, act.step, "summary")
        else:
            assert self.owner.memory is not None
            engine, tag = self.owner.memory, (self.agent, self.task, act.step, "summary")
        job = self.jobs[act.job] = _SimJob(submit_s=self.env.now, done=self.env.event())
        stream = self._stream(act.stream)
        job.request = engine.submit(act.prompt.tokens, act.output_tokens, stream, tag)
        return job.request.done

    def summary_outcome(self, act: Summarize, job: _SimJob, result: Any) -> tuple[bool, int, str]:
        req: Request = result
        ok = req.status == "finished"
        job.e2e_s = self.env.now - job.submit_s
        return ok, req.generated, "" if ok else _failure(req)

    def submit_pre_warm(self, job: _SimJob, warm: PreWarm) -> None:
        job.pre_warm_submit_s = self.env.now
        stream = self._stream(warm.stream)
        job.pre_warm = self.owner.engine.submit(
            warm.prompt.tokens, 1, stream, tag=(self.agent, self.task, None, "pre-warm")
        )
        return None  # nothing waits for it: the swap goes on whether it has ended or not

    def pre_warm_s(self, job: _SimJob) -> float:
        warm = job.pre_warm
        if warm is None:
            return 0.0
        # not done yet: the time it has taken so far (a lower bound)
        return (warm.finished_s if warm.done.triggered else self.env.now) - job.pre_warm_submit_s

    def release(self, job: _SimJob) -> None:
        assert job.done is not None
        job.done.succeed(job)

    def until_released(self, job: _SimJob) -> simpy.Event:
        assert job.done is not None
        return job.done

    def spawn(self, steps: Generator[simpy.Event, Any, None]) -> None:
        self.env.process(steps)

    def record_step(self, row: StepRow, request: AgentRequest) -> None:
        self.owner.recorder.steps.append(row)

    def record_task(self, row: TaskRow) -> None:
        self.owner.recorder.add_task(row)
