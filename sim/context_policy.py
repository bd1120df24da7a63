"""What every context policy shares: the task's context, its raw steps, prefix-cache
streams and summary jobs, and the building blocks the policies of :mod:`sim.policy`
and :mod:`sim.kso` are written with (an agent step, a memory request, a restart)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from sim.actions import (
    Action,
    AgentReply,
    PrefixStream,
    PreWarm,
    Prompt,
    Segment,
    Send,
    Step,
    Summarize,
    Task,
    Tool,
)

if TYPE_CHECKING:
    from sim.policy import PolicyParams


@dataclass
class Job:
    """A summary job: launched after (or at) step ``step``, covering ``cutoff`` raw steps."""

    id: int
    step: int
    cutoff: int
    done: bool = False
    ok: bool = False
    tokens: int = 0
    failure: str = ""
    #: the stream of the context it brings (a fresh one: the swap prefills uncached)
    stream: PrefixStream | None = None
    #: the step under way when it ended (its request or tool)
    done_at_step: int = 0


class ContextPolicy:
    """Base of every policy: the task's context, its raw steps, streams and jobs."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: whether it needs a memory model (engine or server)
    uses_memory: ClassVar[bool] = False
    #: the authors' ``total_step_time``: ``sequential`` llm + summary + env (FC, and CP
    #: and SM, which block on the summary), or ``overlapped`` max(llm, summary +
    #: prefill) + env (CoMem)
    step_accounting: ClassVar[Literal["sequential", "overlapped"]] = "sequential"
    #: whether it reads ``PolicyParams.adaptive``
    adaptive: ClassVar[bool] = False

    def __init__(
        self, params: PolicyParams, task: Task, memory_max_model_len: int | None = None
    ) -> None:
        self.params = params
        self.task = task
        self.memory_max_model_len = memory_max_model_len
        self._stream_ids = 0
        self.system = Segment("system", 0, task.system_tokens)
        #: the stream of the system (and task) prompt, which every context shares
        self.system_stream = self._new_stream()
        self.context: tuple[Segment, ...] = (self.system,)
        self.context_tokens = task.system_tokens
        self.stream = self._fresh_context_stream()
        #: per finished step: its observation and its kept action
        self.raw: list[tuple[Segment, Segment]] = []
        self.jobs: dict[int, Job] = {}
        self._memory_stream = self._new_stream()  # the memory model's view of the history
        #: the reply to the latest agent request (its observations)
        self.last_reply: AgentReply | None = None
        #: the step whose request or tool is under way (summary_done reads it)
        self.current_step = 0

    # -- to override -----------------------------------------------------------------------
    @classmethod
    def check(cls, params: PolicyParams) -> None:
        """Reject parameters this policy cannot honour (ValueError)."""

    def run(self) -> Generator[Action, Any, str]:
        raise NotImplementedError

    def summary_done(self, job: int, ok: bool, tokens: int, failure: str = "") -> PreWarm | None:
        """A summary request has ended (executors call this whenever it happens)."""
        j = self.jobs[job]
        j.done, j.ok, j.tokens, j.failure = True, ok, tokens, failure
        j.done_at_step = self.current_step
        if ok:
            j.stream = self._fresh_context_stream()
        return None

    # -- shared building blocks ----------------------------------------------------------------
    def _new_stream(self, parent: PrefixStream | None = None, shared: int = 0) -> PrefixStream:
        self._stream_ids += 1
        return PrefixStream(self._stream_ids, parent, shared)

    def _fresh_context_stream(self) -> PrefixStream:
        """A new context: only the system prompt is shared (cached) with earlier ones."""
        return self._new_stream(self.system_stream, self.task.system_tokens)

    def _set_context(self, segments: tuple[Segment, ...]) -> None:
        self.context = segments
        self.context_tokens = sum(s.tokens for s in segments)

    def _raw_since(self, start: int) -> tuple[Segment, ...]:
        """Raw steps ``start + 1 ..`` (1-based) as segments."""
        return tuple(seg for pair in self.raw[start:] for seg in pair)

    def _restart(self, job: Job, keep_from: int) -> None:
        """Context := system + the job's summary + raw steps after ``keep_from``."""
        summary = Segment("summary", job.id, job.tokens)
        self._set_context((self.system, summary, *self._raw_since(keep_from)))
        self.stream = job.stream or self._fresh_context_stream()

    def _agent_step(self, t: int, step: Step) -> Generator[Action, Any, str | None]:
        """Send step ``t``'s request over context + observation; on success the context
        becomes prompt + kept action and the tool runs. Returns the failure, or None.

        A prompt below the task's input target is sent with filler appended, on a branch
        of the context's stream: the filler and the action decoded after it are that
        request's alone, so the next prompt (without the filler) reuses the cache only up
        to the end of this prompt."""
        obs = Segment("observation", t, step.observation)
        prompt = (*self.context, obs)
        prompt_tokens = self.context_tokens + step.observation
        filler = self.task.input_target_tokens - prompt_tokens
        sent, stream = Prompt.of(prompt, prompt_tokens), self.stream
        if filler > 0:
            sent = Prompt.of((*prompt, Segment("padding", t, filler)), prompt_tokens + filler)
            stream = self._new_stream(self.stream, prompt_tokens)
        self.current_step = t
        reply = yield Send(t, sent, step.action, stream)
        self.last_reply = reply
        if not reply.ok:
            return reply.failure
        kept = reply.generated if step.kept is None else min(step.kept, reply.generated)
        if kept < reply.generated or filler > 0:
            # dropped reasoning or filler: the context diverges from the stream after the
            # prompt
            self.stream = self._new_stream(self.stream, prompt_tokens)
        action = Segment("action", t, kept)
        self.context = (*prompt, action)
        self.context_tokens = prompt_tokens + kept
        self.raw.append((obs, action))
        if step.tool_s > 0:
            yield Tool(step.tool_s)
        return None

    def _new_job(self, step: int, cutoff: int) -> Job:
        job = Job(len(self.jobs) + 1, step, cutoff)
        self.jobs[job.id] = job
        return job

    def _instruction(self, t: int) -> Segment:
        return Segment("instruction", t, self.params.summary_prompt_tokens)

    def _memory_request(
        self, job: Job, history: tuple[Segment, ...], blocking: bool, truncate: bool = True
    ) -> Summarize:
        """The memory model reads the whole history (an append-only prompt: its prefix
        cache makes each job pay for the new tokens only). With ``truncate``, past the
        memory model's context it reads the most recent history (and loses its cache)."""
        history_tokens = sum(s.tokens for s in history)
        instruction = self._instruction(job.step)
        prompt = Prompt.of((*history, instruction), history_tokens + instruction.tokens)
        limit = None
        if truncate and self.memory_max_model_len is not None:
            limit = max(1, self.memory_max_model_len - self.task.summary_tokens)
            if prompt.full_tokens > limit:
                prompt = Prompt(prompt.segments, keep_last=limit)
                self._memory_stream = self._new_stream()  # the cache cannot follow
        stream = self._new_stream(self._memory_stream, history_tokens)
        return Summarize(
            job.id, job.step, "memory", prompt, self.task.summary_tokens, stream, blocking
        )


def total_step_time(
    accounting: Literal["sequential", "overlapped"],
    llm_s: float,
    summary_s: float,
    prefill_s: float,
    env_s: float,
) -> float:
    """The authors' ``total_step_time`` (AUTHORS_SETUP.md, "What they measure")."""
    if accounting == "overlapped":
        return max(llm_s, summary_s + prefill_s) + env_s
    return llm_s + summary_s + env_s
