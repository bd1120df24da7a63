"""The one loop that runs a context policy for a task, whatever performs its actions.

A policy (:mod:`sim.policy`) yields actions (:mod:`sim.actions`); :meth:`TaskExecutor.run`
is the loop that dispatches them, keeps the step's tally (tool time, stalls, the
summary it swapped in), writes the step and task rows and sends the replies back. How
an action is performed is a subclass's: :class:`sim.agents.SimTask` submits to
simulated engines in a SimPy process, :class:`live.agent.LiveTask` sends to live
servers from threads.

The loop is a generator that yields what it waits on, of the executor's type ``W``:
a SimPy event (SimPy drives the generator as a process), or a blocking call
(:func:`live.agent.drive_blocking` makes each call on its thread and sends the result
back). A summary's end (its result, ``policy.summary_done``, the pre-warm it may ask
for) is the same generator shape, waited for inline when the summary blocks, else run
in the background (:meth:`TaskExecutor.spawn`: a SimPy process, or a thread).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sim.actions import AgentReply, Await, PreWarm, Send, StepEnd, Summarize, Tool, Waited
from sim.context_policy import ContextPolicy, total_step_time
from sim.rows import StepRow, TaskRow

__all__ = ["AgentRequest", "SummaryJob", "TaskExecutor"]


@dataclass(frozen=True, kw_only=True)
class AgentRequest:
    """A step's agent request as its client saw it: the step row's request columns.

    ``latency_s`` runs from submission to the last token. What a client cannot see is
    NaN (admission and queueing inside a live server) or 0 (its cached tokens);
    ``token_counts_from`` says whose token counts these are (``engine``: the simulated
    engine's; a live server's ``usage``, or the ``client``'s own count)."""

    status: str
    submit_s: float
    admitted_s: float
    first_token_s: float
    finished_s: float
    queue_s: float
    prefill_s: float
    decode_s: float
    latency_s: float
    prompt_tokens: int
    cached_tokens: int
    action_tokens: int
    token_counts_from: str = "engine"


@dataclass
class SummaryJob:
    """A summary request in flight or done, as an executor sees it: ``e2e_s`` is its
    end-to-end time once it has ended."""

    e2e_s: float = 0.0


W = TypeVar("W")  # what the executor waits on: a SimPy event, a blocking call
J = TypeVar("J", bound=SummaryJob)


@dataclass
class _StepTally:
    """What the step under way has done so far."""

    request: AgentRequest | None = None
    tool_s: float = 0.0
    stall_s: float = 0.0


class TaskExecutor(ABC, Generic[W, J]):
    """One task of one agent: its policy, its summary jobs, and the loop (:meth:`run`)
    over the actions; subclasses perform them."""

    def __init__(self, policy: ContextPolicy, architecture: str, agent: int, task: int) -> None:
        self.policy = policy
        self.architecture = architecture
        self.agent = agent
        self.task = task
        self.jobs: dict[int, J] = {}

    # -- what a subclass performs ----------------------------------------------------------
    @abstractmethod
    def now(self) -> float:
        """Seconds on the executor's clock."""

    @abstractmethod
    def send(self, act: Send) -> Generator[W, Any, tuple[AgentReply, AgentRequest]]:
        """The step's agent request: the reply for the policy, and what the client saw."""

    @abstractmethod
    def sleep(self, seconds: float) -> W:
        """A tool that runs ``seconds``."""

    @abstractmethod
    def submit_summary(self, act: Summarize) -> W:
        """Make job ``act.job`` (in :attr:`jobs`) and start its request, or ready it to
        be made: waiting on what this returns gives its result."""

    @abstractmethod
    def summary_outcome(self, act: Summarize, job: J, result: Any) -> tuple[bool, int, str]:
        """Whether summary ``job`` succeeded, the tokens it wrote and why it failed."""

    @abstractmethod
    def submit_pre_warm(self, job: J, warm: PreWarm) -> W | None:
        """Send the pre-warm the policy asked for: what to wait on for its end (which
        :meth:`pre_warm_done` then takes), or None where nothing waits for it."""

    def pre_warm_done(self, job: J, result: Any) -> None:
        """A pre-warm waited for has ended with ``result``."""

    @abstractmethod
    def pre_warm_s(self, job: J) -> float:
        """The seconds ``job``'s pre-warm took (so far), 0 without one."""

    @abstractmethod
    def release(self, job: J) -> None:
        """Job ``job`` has ended: whoever waits for it may go on."""

    @abstractmethod
    def until_released(self, job: J) -> W:
        """What waiting for ``job``'s :meth:`release` is."""

    @abstractmethod
    def spawn(self, steps: Generator[W, Any, None]) -> None:
        """Run ``steps`` in the background."""

    @abstractmethod
    def record_step(self, row: StepRow, request: AgentRequest) -> None: ...

    @abstractmethod
    def record_task(self, row: TaskRow) -> None: ...

    def locked(self) -> AbstractContextManager[Any]:
        """Held while the policy runs (its summaries may end on other threads)."""
        return nullcontext()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> Generator[W, Any, str]:
        """Run the task's policy to its end; returns its status."""
        start = self.now()
        actions = self.policy.run()
        reply: AgentReply | Waited | None = None
        step = _StepTally()
        total_stall, summaries = 0.0, 0
        while True:
            with self.locked():
                try:
                    action = actions.send(reply)
                except StopIteration as end:
                    status = str(end.value)
                    break
            reply = None
            if isinstance(action, Send):
                reply, step.request = yield from self.send(action)
            elif isinstance(action, Tool):
                yield self.sleep(action.seconds)
                step.tool_s += action.seconds
            elif isinstance(action, Summarize):
                t0 = self.now()
                yield from self._summarize(action)
                if action.blocking:
                    step.stall_s += self.now() - t0
            elif isinstance(action, Await):
                t0 = self.now()
                yield self.until_released(self.jobs[action.job])
                waited = self.now() - t0
                step.stall_s += waited
                reply = Waited(waited)
            elif isinstance(action, StepEnd):
                swapped = self.jobs.get(action.swapped) if action.swapped is not None else None
                if step.request is not None:  # a step that sent nothing has no row
                    row = self._step_row(action, step, swapped)
                    self.record_step(row, step.request)
                summaries += swapped is not None
                total_stall += step.stall_s
                step = _StepTally()
        self._record_task(start, status, summaries, total_stall + step.stall_s)
        return status

    def _summarize(self, act: Summarize) -> Generator[W, Any, None]:
        """Start a summary request; a blocking one ends here, another in the background."""
        result = self.submit_summary(act)
        if act.blocking:
            yield from self._end_summary(act, result)
        else:
            self.spawn(self._end_summary(act, result))

    def _end_summary(self, act: Summarize, result: W) -> Generator[W, Any, None]:
        """Wait for the summary's result and tell the policy; the job is released (even
        if that fails) before any pre-warm the policy asks for is waited for."""
        job = self.jobs[act.job]
        warm_end = None
        try:
            outcome = yield result
            with self.locked():
                ok, tokens, failure = self.summary_outcome(act, job, outcome)
                warm = self.policy.summary_done(act.job, ok, tokens, failure)
                if warm is not None:
                    warm_end = self.submit_pre_warm(job, warm)
        finally:
            self.release(job)
        if warm_end is not None:
            self.pre_warm_done(job, (yield warm_end))

    # -- rows --------------------------------------------------------------------------------
    def _step_row(self, end: StepEnd, step: _StepTally, swapped: J | None) -> StepRow:
        r = step.request
        assert r is not None
        tool_s, stall_s, llm_s = step.tool_s, step.stall_s, r.latency_s
        summary_s = swapped.e2e_s if swapped is not None else 0.0
        pre_warm_s = self.pre_warm_s(swapped) if swapped is not None else 0.0
        total_s = total_step_time(self.policy.step_accounting, llm_s, summary_s, pre_warm_s, tool_s)
        return StepRow(
            architecture=self.architecture,
            agent=self.agent,
            task=self.task,
            step=end.step,
            status=r.status,
            submit_s=r.submit_s,
            admitted_s=r.admitted_s,
            first_token_s=r.first_token_s,
            finished_s=r.finished_s,
            queue_s=r.queue_s,
            prefill_s=r.prefill_s,
            decode_s=r.decode_s,
            tool_s=tool_s,
            stall_s=stall_s,
            step_latency_s=llm_s + tool_s + stall_s,
            prompt_tokens=r.prompt_tokens,
            cached_tokens=r.cached_tokens,
            uncached_prefill_tokens=r.prompt_tokens - r.cached_tokens,
            action_tokens=r.action_tokens,
            summary_launched=end.launched,
            summary_swapped=end.swapped is not None,
            llm_exec_time_s=llm_s,
            summary_exec_time_s=summary_s,
            prefill_exec_time_s=pre_warm_s,
            env_exec_time_s=tool_s,
            total_step_time_s=total_s,
        )

    def _record_task(self, start: float, status: str, summaries: int, stall_s: float) -> None:
        end = self.now()
        self.record_task(
            TaskRow(
                architecture=self.architecture,
                agent=self.agent,
                task=self.task,
                start_s=start,
                end_s=end,
                latency_s=end - start,
                steps=len(self.policy.raw),
                status=status,
                summaries=summaries,
                stall_s=stall_s,
            )
        )
