"""Simulated agents: a SimPy process that executes a context policy on simulated engines.

What an agent sends, when it summarizes, swaps and waits is the policy's business
(:mod:`sim.policy`, shared with the live agent of :mod:`live.replay`); this module only
performs its actions: requests go to the agent or memory :class:`~sim.engine.Engine` on
the prefix-cache stream the policy names, tools take simulated time, and every step and
task becomes a row. Replies tell the policy what happened, with what a client of the
engine observes: the request's queueing delay and latency, the agent engine's KV use
when it ended, and how long the agent waited for a summary.

Per step, next to the project's own breakdown (queue, prefill, decode, tool, stall),
the row has what the CoMem authors record (AUTHORS_SETUP.md, "What they measure"):
``llm_exec_time_s`` (the agent request at the client, queueing included),
``summary_exec_time_s`` (the summary request whose result the context took up at this
step), ``prefill_exec_time_s`` (its pre-warm request, when there is one),
``env_exec_time_s`` (tool), and ``total_step_time_s`` by their formula for the policy
(:func:`sim.policy.total_step_time`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import simpy

from engine.kv_cache import Stream, StreamSpace
from sim.deployment import AnyEngine
from sim.policy import (
    AgentReply,
    Await,
    ContextPolicy,
    PolicyParams,
    PrefixStream,
    Send,
    Step,
    StepEnd,
    Summarize,
    Task,
    Tool,
    Waited,
    make_policy,
    total_step_time,
)
from sim.request import Request

__all__ = [
    "STEP_COLUMNS",
    "TASK_COLUMNS",
    "Agent",
    "AgentRecorder",
    "Step",
    "StepRow",
    "Task",
    "TaskRow",
]


class StepRow(NamedTuple):
    architecture: str
    agent: int
    task: int
    step: int
    #: the agent request's engine status: ``finished``, or ``rejected`` (the step that
    #: ended its task early)
    status: str
    submit_s: float
    admitted_s: float
    first_token_s: float
    finished_s: float
    queue_s: float
    prefill_s: float
    decode_s: float
    tool_s: float
    stall_s: float
    step_latency_s: float
    prompt_tokens: int
    cached_tokens: int
    uncached_prefill_tokens: int
    action_tokens: int
    summary_launched: bool
    summary_swapped: bool
    llm_exec_time_s: float
    summary_exec_time_s: float
    prefill_exec_time_s: float
    env_exec_time_s: float
    total_step_time_s: float


class TaskRow(NamedTuple):
    architecture: str
    agent: int
    task: int
    start_s: float
    end_s: float
    latency_s: float
    steps: int
    #: ``finished``, or why the task ended early (``context_exceeded``: an agent prompt
    #: past max_model_len; ``kv_cache_too_small``: one the engine's whole KV cache cannot
    #: hold; ``memory_``: the same of a memory prompt)
    status: str
    summaries: int
    stall_s: float


STEP_COLUMNS = StepRow._fields
TASK_COLUMNS = TaskRow._fields


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


@dataclass
class _Job:
    """A summary request in flight or done, as the executor sees it."""

    submit_s: float
    done: simpy.Event
    e2e_s: float = 0.0
    pre_warm: Request | None = None
    pre_warm_submit_s: float = 0.0


class Agent:
    """One agent process running tasks under the policy ``params.kind``."""

    def __init__(
        self,
        env: simpy.Environment,
        agent_id: int,
        name: str,
        params: PolicyParams,
        agent_engine: AnyEngine,
        memory_engine: AnyEngine | None,
        streams: StreamSpace,
        recorder: AgentRecorder,
    ) -> None:
        self.env = env
        self.id = agent_id
        self.name = name
        self.params = params
        self.engine = agent_engine
        self.memory = memory_engine
        self.streams = streams
        self.recorder = recorder

    # -- one task ----------------------------------------------------------------------
    def run_task(self, task_id: int, task: Task) -> Generator[simpy.Event, Any, str]:
        env = self.env
        limit = self.memory.config.max_model_len if self.memory is not None else None
        policy = make_policy(self.params, task, limit)
        known: dict[int, Stream] = {}
        jobs: dict[int, _Job] = {}
        start = env.now
        run = policy.run()
        reply: AgentReply | Waited | None = None
        req: Request | None = None
        submit = tool = stall = total_stall = 0.0
        summaries = 0
        while True:
            try:
                action = run.send(reply)
            except StopIteration as end:
                status = str(end.value)
                break
            reply = None
            if isinstance(action, Send):
                submit = env.now
                stream = self._stream(known, action.stream)
                tag = (self.id, task_id, action.step)
                req = self.engine.submit(action.prompt.tokens, action.output_tokens, stream, tag)
                yield req.done
                ok = req.status == "finished"
                admitted = req.admitted_s == req.admitted_s  # not NaN: it was admitted
                reply = AgentReply(
                    ok,
                    req.generated,
                    failure=_failure(req),
                    queue_s=req.admitted_s - submit if admitted else None,
                    latency_s=req.finished_s - submit,
                    kv_usage=self.engine.kv_used_blocks / self.engine.total_blocks,
                )
            elif isinstance(action, Tool):
                yield env.timeout(action.seconds)
                tool += action.seconds
            elif isinstance(action, Summarize):
                t0 = env.now
                yield from self._summarize(policy, action, known, jobs, task_id)
                stall += env.now - t0
            elif isinstance(action, Await):
                t0 = env.now
                yield jobs[action.job].done
                stall += env.now - t0
                reply = Waited(env.now - t0)
            elif isinstance(action, StepEnd):
                swapped = jobs.get(action.swapped) if action.swapped is not None else None
                if req is not None:  # a step that sent nothing has no row
                    self._record_step(policy, task_id, action, req, submit, tool, stall, swapped)
                summaries += swapped is not None
                total_stall += stall
                req, tool, stall = None, 0.0, 0.0
        end_s = env.now
        self.recorder.add_task(
            TaskRow(
                self.name,
                self.id,
                task_id,
                start,
                end_s,
                end_s - start,
                len(policy.raw),
                status,
                summaries,
                total_stall + stall,
            )
        )
        return status

    def _stream(self, known: dict[int, Stream], ps: PrefixStream) -> Stream:
        """The engine stream of a policy stream (made once, parents first)."""
        s = known.get(ps.id)
        if s is None:
            parent = self._stream(known, ps.parent) if ps.parent is not None else None
            s = known[ps.id] = self.streams.new(parent, ps.shared)
        return s

    def _summarize(
        self,
        policy: ContextPolicy,
        act: Summarize,
        known: dict[int, Stream],
        jobs: dict[int, _Job],
        task_id: int,
    ) -> Generator[simpy.Event, Any, None]:
        """Submit a summary request; a blocking one is waited for here."""
        tag: tuple[Any, ...]
        if act.model == "agent":
            engine, tag = self.engine, (self.id, task_id, act.step, "summary")
        else:
            assert self.memory is not None
            engine, tag = self.memory, (self.id, task_id, act.step)
        job = jobs[act.job] = _Job(self.env.now, self.env.event())
        stream = self._stream(known, act.stream)
        req = engine.submit(act.prompt.tokens, act.output_tokens, stream, tag)
        if act.blocking:
            yield req.done
            self._summary_done(policy, act.job, job, req, known)
        else:
            self.env.process(self._await_summary(policy, act.job, job, req, known))

    def _await_summary(
        self,
        policy: ContextPolicy,
        job_id: int,
        job: _Job,
        req: Request,
        known: dict[int, Stream],
    ) -> Generator[simpy.Event, Any, None]:
        yield req.done
        self._summary_done(policy, job_id, job, req, known)

    def _summary_done(
        self,
        policy: ContextPolicy,
        job_id: int,
        job: _Job,
        req: Request,
        known: dict[int, Stream],
    ) -> None:
        ok = req.status == "finished"
        job.e2e_s = self.env.now - job.submit_s
        warm = policy.summary_done(job_id, ok, req.generated, "" if ok else _failure(req))
        if warm is not None:
            job.pre_warm_submit_s = self.env.now
            stream = self._stream(known, warm.stream)
            job.pre_warm = self.engine.submit(
                warm.prompt.tokens, 1, stream, tag=(self.id, "pre-warm")
            )
        job.done.succeed(job)

    def _record_step(
        self,
        policy: ContextPolicy,
        task_id: int,
        end: StepEnd,
        req: Request,
        submit: float,
        tool_s: float,
        stall: float,
        swapped: _Job | None,
    ) -> None:
        queue = req.admitted_s - submit
        prefill = req.first_token_s - req.admitted_s
        decode = req.finished_s - req.first_token_s
        llm = req.finished_s - submit
        summary = swapped.e2e_s if swapped is not None else 0.0
        pre = 0.0
        if swapped is not None and swapped.pre_warm is not None:
            warm = swapped.pre_warm
            # not done yet: the time it has taken so far (a lower bound)
            pre = (warm.finished_s if warm.done.triggered else self.env.now) - (
                swapped.pre_warm_submit_s
            )
        self.recorder.steps.append(
            StepRow(
                self.name,
                self.id,
                task_id,
                end.step,
                req.status,
                submit,
                req.admitted_s,
                req.first_token_s,
                req.finished_s,
                queue,
                prefill,
                decode,
                tool_s,
                stall,
                llm + tool_s + stall,
                req.prompt_tokens,
                req.cached_tokens,
                req.prompt_tokens - req.cached_tokens,
                req.generated,
                end.launched,
                end.swapped is not None,
                llm,
                summary,
                pre,
                tool_s,
                total_step_time(policy.step_accounting, llm, summary, pre, tool_s),
            )
        )
