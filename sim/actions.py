"""What a context policy and its executor say to each other: the task, the pieces a
context is made of, the actions a policy yields and the replies it gets back.

Protocol. ``policy.run()`` is a generator of actions; the executor performs each one
and sends its outcome back:

- :class:`Send`: the agent's request of a step; send back an :class:`AgentReply`.
- :class:`Summarize`: a summary request (on the agent or the memory model). When it
  ends, whenever that is, the executor calls ``policy.summary_done(job, ok, tokens)``,
  which may answer with a :class:`PreWarm` to send. If ``blocking``, the executor
  waits for that before it resumes the generator.
- :class:`Await`: wait until the summary job has ended (the time is the step's stall);
  send back a :class:`Waited` with the seconds waited.
- :class:`Tool`: the tool runs for ``seconds``.
- :class:`StepEnd`: the step is over (the executor writes its row).

Replies carry what the executor observed, for policies that adapt (``kso-adaptive``):
an :class:`AgentReply` has the request's queueing delay, latency and the agent engine's
KV use, each None where the executor cannot measure it (the live executor sees no
queue and no KV). Policies that do not adapt ignore them.

The generator's return value is the task's status: ``"finished"`` or why it ended
early. :mod:`sim.executor` is the one loop that performs these actions, under a SimPy
or a thread executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

# --- the task a policy runs ---------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a task: tokens of the observation the agent reads (the tool output of
    the previous step, or the task statement), of the action it decodes, and tool time.

    ``kept``: tokens of the action that stay in the context (reasoning tokens are decoded
    but dropped by most agents); None keeps all of them.
    """

    observation: int
    action: int
    tool_s: float
    kept: int | None = None


@dataclass(frozen=True)
class Task:
    """A task's system (and task statement) prompt, its steps and summary length.

    ``input_target_tokens``: an agent request whose prompt is shorter is padded with
    filler up to it, in that request only (the CoMem authors' synthetic benchmark,
    AUTHORS_SETUP.md: input target 512); 0: no padding.
    """

    system_tokens: int
    steps: tuple[Step, ...]
    summary_tokens: int
    input_target_tokens: int = 0


# --- what contexts are made of --------------------------------------------------------------

SegmentKind = Literal["system", "observation", "action", "summary", "instruction", "padding"]


@dataclass(frozen=True)
class Segment:
    """A run of tokens: the system prompt, step ``ref``'s observation, action (its kept
    part), summarize instruction or request filler (``padding``, never kept in a
    context), or summary job ``ref``'s output."""

    kind: SegmentKind
    ref: int
    tokens: int


@dataclass(frozen=True)
class Prompt:
    """What a request reads: segments in order. ``keep_last``: send only the most recent
    ``keep_last`` tokens (a memory prompt past the memory model's context)."""

    segments: tuple[Segment, ...]
    keep_last: int | None = None

    @classmethod
    def of(cls, segments: tuple[Segment, ...], full_tokens: int) -> Prompt:
        """A prompt whose token count the caller already keeps (a context grows by one
        step at a time: summing it again every step would be quadratic in its length)."""
        prompt = cls(segments)
        prompt.__dict__["full_tokens"] = full_tokens  # what cached_property stores
        return prompt

    @cached_property
    def full_tokens(self) -> int:
        """All tokens of the segments (computed once)."""
        return sum(s.tokens for s in self.segments)

    @property
    def tokens(self) -> int:
        n = self.full_tokens
        return n if self.keep_last is None else min(n, self.keep_last)


@dataclass(frozen=True)
class PrefixStream:
    """The identity of a token sequence for prefix caching: its first ``shared`` tokens
    are those of stream ``parent``. Executors map each one to an engine stream once."""

    id: int
    parent: PrefixStream | None = None
    shared: int = 0


# --- actions (policy -> executor) and replies ------------------------------------------------


@dataclass(frozen=True)
class Send:
    """The agent's request of step ``step``."""

    step: int
    prompt: Prompt
    output_tokens: int
    stream: PrefixStream


@dataclass(frozen=True)
class Summarize:
    """A summary request: job ``job``, launched at step ``step``, on ``model``."""

    job: int
    step: int
    model: Literal["agent", "memory"]
    prompt: Prompt
    output_tokens: int
    stream: PrefixStream
    blocking: bool


@dataclass(frozen=True)
class Await:
    """Wait until summary job ``job`` has ended."""

    job: int


@dataclass(frozen=True)
class PreWarm:
    """Prefill the context summary ``job`` will bring, ahead of its swap (1 token)."""

    job: int
    prompt: Prompt
    stream: PrefixStream


@dataclass(frozen=True)
class Tool:
    seconds: float


@dataclass(frozen=True)
class StepEnd:
    """Step ``step`` is over. ``launched``: a summary was launched in it; ``swapped``:
    the job whose summary the context took up in it (None: none)."""

    step: int
    launched: bool
    swapped: int | None


Action = Send | Summarize | Await | Tool | StepEnd


@dataclass(frozen=True)
class AgentReply:
    """What became of a :class:`Send`: ``generated`` tokens, or a failure (why).

    Observations (None: the executor cannot measure it): ``queue_s``, seconds from
    submission to admission by the engine; ``latency_s``, from submission to the last
    token; ``kv_usage``, the fraction of the agent engine's KV blocks in use when the
    request ended."""

    ok: bool
    generated: int = 0
    failure: str = "context_exceeded"
    queue_s: float | None = None
    latency_s: float | None = None
    kv_usage: float | None = None


@dataclass(frozen=True)
class Waited:
    """What became of an :class:`Await`: the seconds the agent waited (None: unknown)."""

    seconds: float | None
