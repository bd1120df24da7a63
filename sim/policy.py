"""Context policies: one pure state machine per architecture, shared by every executor.

A policy decides, for one task, what the agent sends at each step, when a summary is
launched (and on which model), when it is swapped in, and what the context becomes:
which token segments it holds and which prefix-cache stream it continues. It knows
tokens and events, never time: no SimPy, no threads, no I/O. Two executors run it:
:class:`sim.agents.Agent` (SimPy, simulated engines) and :class:`live.replay.LiveAgent`
(threads, live servers). Both are thin: they perform the actions below and report
what happened, so the simulated and the live agent cannot drift apart.

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
early. Policies are registered by name (:func:`register_policy`); a scenario's
``kind`` picks one, so a new policy needs no change to either executor.

Kinds: ``fc`` (full context), ``cp`` (coupled: the agent model summarizes inline,
blocking), ``sm`` (sync memory: the memory model summarizes, blocking), ``kso``
(CoMem k-step-off, the general ``k``/``lag``/``retain`` form), ``kso-authors``
(k-step-off exactly as the CoMem authors' code runs it; see :class:`KSOAuthors`) and
``kso-adaptive`` (k-step-off that changes k and lag while it runs, from what it
observes; see :class:`KSOAdaptive`).

``lag >= k`` (KSO): summaries queue. Each summary is swapped in ``lag`` steps after its
launch, whatever was launched since; none replaces another. That is the paper's own
1-step-off (``comem-pipeline.png``: a summary every step, each swapped in one step
later, i.e. k = lag = 1), which a "newer replaces pending" rule would turn into never
swapping. The closed forms (:mod:`theory.single_agent`) use the same definition.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator

from calibration.inputs import InputModel, TokensOrZero

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


# --- actions (policy -> executor) and replies -----------------------------------------------


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


# --- parameters and the registry ------------------------------------------------------------


class AdaptiveParams(InputModel):
    """The rule of ``kso-adaptive`` (:class:`KSOAdaptive`): the range k and lag move in,
    and the thresholds that count as pressure and lateness."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the smallest k the rule moves to
    k_min: PositiveInt = 1
    #: the largest k the rule moves to
    k_max: PositiveInt = 16
    #: the smallest lag the rule moves to
    lag_min: NonNegativeInt = 0
    #: the largest lag the rule moves to
    lag_max: NonNegativeInt = 4
    #: KV pressure: the fraction of the agent engine's KV blocks in use
    kv_high: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    #: queueing pressure: queueing delay over the request's latency
    queue_high: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25
    #: a late summary: the stall at its swap over the next request's latency
    stall_high: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 0.25


class PolicyParams(InputModel):
    """A policy's parameters, as a scenario's ``[[architectures]]`` entry gives them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the context policy: fc, cp, sm, kso, kso-authors or kso-adaptive (docs/explanation/agents.md)
    kind: str
    #: a summary every k steps (cp, sm, kso)
    k: PositiveInt = 4
    #: steps from a summary's launch to its swap (kso)
    lag: NonNegativeInt = 1
    #: raw steps kept after the summary when the context restarts (kso-authors: their R)
    retain: NonNegativeInt = 4
    #: prefill the context a summary brings as soon as it is ready (kso)
    pre_warm: bool = False
    #: a summary not ready at its swap: wait for it (a stall) or skip it (kso)
    late_policy: Literal["wait", "skip"] = "wait"
    #: tokens of the summarize instruction appended to a summary prompt
    summary_prompt_tokens: TokensOrZero = 64
    #: ``kso-adaptive`` only: its rule (None: the defaults)
    adaptive: AdaptiveParams | None = None

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind not in POLICIES:
            raise ValueError(f"unknown kind '{kind}'; known: {', '.join(POLICIES)}")
        return kind

    def check(self) -> None:
        """The chosen policy's own checks (ValueError with the reason)."""
        policy = POLICIES[self.kind]
        if self.adaptive is not None and not policy.adaptive:
            raise ValueError(f"kind '{self.kind}' has no adaptive rule (kso-adaptive has)")
        policy.check(self)


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


POLICIES: dict[str, type[ContextPolicy]] = {}


def register_policy(kind: str, description: str) -> Callable[[type[ContextPolicy]], Any]:
    """Class decorator: make a policy available as ``kind = "<kind>"`` in scenarios."""

    def add(cls: type[ContextPolicy]) -> type[ContextPolicy]:
        cls.kind = kind
        cls.description = description
        POLICIES[kind] = cls
        return cls

    return add


def make_policy(
    params: PolicyParams, task: Task, memory_max_model_len: int | None = None
) -> ContextPolicy:
    """A fresh state machine for one task."""
    return POLICIES[params.kind](params, task, memory_max_model_len)


def uses_memory(kind: str) -> bool:
    return POLICIES[kind].uses_memory


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


# --- the policies ---------------------------------------------------------------------------


@register_policy("fc", "full context: the context grows (prefix-cached)")
class FullContext(ContextPolicy):
    def run(self) -> Generator[Action, Any, str]:
        for t, step in enumerate(self.task.steps, start=1):
            failure = yield from self._agent_step(t, step)
            yield StepEnd(t, False, None)
            if failure is not None:
                return failure
        return "finished"


class _Blocking(ContextPolicy):
    """Every ``k`` steps (not after the last) a summary is made while the agent waits;
    the context restarts as system + summary + the last ``retain`` raw steps."""

    def _summary_request(self, job: Job) -> Summarize:
        raise NotImplementedError

    def run(self) -> Generator[Action, Any, str]:
        p, n = self.params, len(self.task.steps)
        for t, step in enumerate(self.task.steps, start=1):
            failure = yield from self._agent_step(t, step)
            if failure is not None:
                yield StepEnd(t, False, None)
                return failure
            launched, swapped = False, None
            if t % p.k == 0 and t < n:
                launched = True
                job = self._new_job(t, t)
                yield self._summary_request(job)  # blocking: summary_done has been called
                if job.ok:
                    self._restart(job, max(0, t - p.retain))
                    swapped = job.id
            yield StepEnd(t, launched, swapped)
        return "finished"


@register_policy("cp", "coupled: the agent model summarizes inline, blocking")
class Coupled(_Blocking):
    def _summary_request(self, job: Job) -> Summarize:
        # over its own context, whose prefix is cached; the summary's tokens go to a
        # branch of the context's stream, which goes on unchanged if the summary fails
        instruction = self._instruction(job.step)
        prompt = Prompt.of((*self.context, instruction), self.context_tokens + instruction.tokens)
        stream = self._new_stream(self.stream, self.context_tokens)
        return Summarize(job.id, job.step, "agent", prompt, self.task.summary_tokens, stream, True)


@register_policy("sm", "sync memory: the memory model summarizes; the agent blocks")
class SyncMemory(_Blocking):
    uses_memory = True

    def _summary_request(self, job: Job) -> Summarize:
        return self._memory_request(job, (self.system, *self._raw_since(0)), blocking=True)


@register_policy(
    "kso",
    "CoMem k-step-off: every k steps the memory model summarizes asynchronously; the"
    " summary is swapped in lag steps later",
)
class KStepOff(ContextPolicy):
    """The general form: launched after step t (t % k == 0, not after the last step),
    over the history through step t; runs during steps t+1 .. t+lag; swapped in before
    step t+lag+1 as system + summary + raw steps t-retain+1 .. t+lag (one uncached
    prefill). Not ready then: the agent waits (``late_policy = "wait"``, stall) or keeps
    its context and drops that summary (``"skip"``). ``lag >= k``: summaries queue (see
    the module docstring). ``pre_warm``: once a summary is ready, the context it brings
    is prefilled ahead (system + summary + the raw tail so far)."""

    uses_memory = True
    step_accounting = "overlapped"

    def run(self) -> Generator[Action, Any, str]:
        p, n = self.params, len(self.task.steps)
        due: dict[int, Job] = {}  # step before which a job is swapped in -> job
        for t, step in enumerate(self.task.steps, start=1):
            swapped = None
            job = due.pop(t, None)
            if job is not None:
                if not job.done and p.late_policy == "wait":
                    yield Await(job.id)
                if job.done and job.ok:
                    self._restart(job, max(0, job.cutoff - p.retain))
                    swapped = job.id
            failure = yield from self._agent_step(t, step)
            if failure is not None:
                yield StepEnd(t, False, swapped)
                return failure
            launched = t % p.k == 0 and t < n
            if launched:
                job = self._new_job(t, t)
                due[t + p.lag + 1] = job
                yield self._memory_request(job, (self.system, *self._raw_since(0)), False)
            yield StepEnd(t, launched, swapped)
        return "finished"

    def summary_done(self, job: int, ok: bool, tokens: int, failure: str = "") -> PreWarm | None:
        super().summary_done(job, ok, tokens, failure)
        j = self.jobs[job]
        if not (ok and self.params.pre_warm) or j.stream is None:
            return None
        # the context it will bring, as far as the agent has got: system + summary + the
        # raw tail so far
        tail = self._raw_since(max(0, j.cutoff - self.params.retain))
        prompt = Prompt((self.system, Segment("summary", j.id, j.tokens), *tail))
        return PreWarm(j.id, prompt, j.stream)


@register_policy(
    "kso-authors",
    "CoMem k-step-off as the authors' code runs it: R = retain; a summary launched at"
    " the start of every step t with t % R == 0, collected at the start of the next",
)
class KSOAuthors(ContextPolicy):
    """CoMem's k-step-off as coded (``comem_agent_kso.py``; AUTHORS_SETUP.md).

    R = ``retain`` (their ``retain_most_turns``); there is no separate k or lag. At the
    start of step t, with t % R == 0 (their ``(steps + 1) % R == 0``), a compression is
    launched over the WHOLE history (system, every earlier step, and step t's
    observation; never truncated), alongside step t's agent request. It is collected at
    the start of step t+1, the agent blocking if it is late; the context becomes system
    + summary + step t's action, and grows from there (between 1 and R raw steps) until
    the next collection; that step prefills uncached. The first R steps are a plain chat.
    A memory prompt the memory model rejects ends the task
    (``memory_context_exceeded``), as an agent prompt past ``max_model_len`` does.

    Assumptions where the code is silent (stated, so they can be compared): a
    compression no step would collect (at the last step) is not launched; between two
    collections the agent's prompt extends its cache (AUTHORS_SETUP.md: only the step
    after a new summary prefills uncached).

    Against the general form: like KSO(k = R, lag = 1, retain = 0), one step of agent
    work overlaps each summary and one summary is swapped in every R steps; unlike it,
    the summary starts one step earlier (before the agent request, with the new
    observation, so it is swapped in before step R+1, not R+2), the swapped context
    keeps the last action rather than a whole raw step, and the memory prompt is never
    cut. ``tests/test_policy.py`` shows both.
    """

    uses_memory = True
    step_accounting = "overlapped"
    _NOT_THEIRS = ("k", "lag", "pre_warm", "late_policy")

    @classmethod
    def check(cls, params: PolicyParams) -> None:
        given = sorted(set(cls._NOT_THEIRS) & params.model_fields_set)
        if given:
            raise ValueError(
                f"kind 'kso-authors' has no {', '.join(given)}: its period is R = retain,"
                " its summary is collected one step after launch, and it always waits"
            )
        if params.retain < 1:
            raise ValueError("kind 'kso-authors' needs retain (their R) >= 1")

    def run(self) -> Generator[Action, Any, str]:
        r, n = self.params.retain, len(self.task.steps)
        job: Job | None = None
        for t, step in enumerate(self.task.steps, start=1):
            swapped = None
            if job is not None:  # collected at the start of the next step
                if not job.done:
                    yield Await(job.id)
                if not job.ok:
                    return f"memory_{job.failure}"
                last_action = self.raw[-1][1]
                summary = Segment("summary", job.id, job.tokens)
                self._set_context((self.system, summary, last_action))
                self.stream = job.stream or self._fresh_context_stream()
                swapped, job = job.id, None
            launched = t % r == 0 and t < n
            if launched:
                job = self._new_job(t, t - 1)
                obs = Segment("observation", t, step.observation)
                history = (self.system, *self._raw_since(0), obs)
                yield self._memory_request(job, history, blocking=False, truncate=False)
            failure = yield from self._agent_step(t, step)
            yield StepEnd(t, launched, swapped)
            if failure is not None:
                return failure
        return "finished"


@register_policy(
    "kso-adaptive",
    "CoMem k-step-off that adapts k and lag while it runs: smaller under KV or queueing"
    " pressure, larger k when its summaries come late under pressure, larger lag when"
    " they come late without it",
)
class KSOAdaptive(KStepOff):
    """k-step-off whose k and lag follow what the agent observes (the paper's "adaptive
    k", future work there). It starts at ``k`` and ``lag`` (its home) and, at every
    launch point (``k`` steps after the previous launch, once per period), reads:

    - pressure: the agent engine's KV use of the latest request ``>= kv_high``, or its
      queueing delay ``>= queue_high`` of its latency (signals the executor cannot
      measure, None, count as no pressure);
    - late: at the latest swap the agent waited ``>= stall_high`` of the latency of the
      request that followed;
    - slack: the latest summary ended at least one whole step before its swap (it
      would have been on time with one lag less; counted in steps, not seconds).

    Then, one move per decision:

    - under pressure, if late: ``k + 1`` (the memory model cannot keep up with this
      many summaries); else ``lag - 1``, and at ``lag_min`` ``k - 1``. Smaller contexts
      hold less KV and prefill less; under pressure a lag of 0 makes the agent wait for
      its summary outside the engine (no request there), which is cheaper than the
      raw steps a lag keeps in context.
    - without pressure: if late, ``lag + 1`` (mask the summary); elif slack,
      ``lag - 1``; and k moves one step back toward its home ``k``.

    k stays in ``[k_min, k_max]``, lag in ``[lag_min, lag_max]``. A new k applies from
    this launch point (the launch happens now if ``k`` steps have passed); a summary is
    swapped in ``lag`` steps after its launch with the lag of its launch, after any
    earlier one (swaps keep launch order; ``lag >= k`` queues summaries as ``kso``
    does). It always waits for a late summary (``late_policy = "wait"``). The defaults
    were chosen on the GLM-4.7 synthetic benchmark (``figures/adaptive_k.png``); the
    rule knows no time (only what replies carry), so it runs unchanged on live
    servers, where it sees latency and stalls but no queue and no KV.
    """

    adaptive = True

    @classmethod
    def check(cls, params: PolicyParams) -> None:
        a = params.adaptive or AdaptiveParams()
        if a.k_min > a.k_max:
            raise ValueError(f"adaptive.k_min {a.k_min} > adaptive.k_max {a.k_max}")
        if a.lag_min > a.lag_max:
            raise ValueError(f"adaptive.lag_min {a.lag_min} > adaptive.lag_max {a.lag_max}")
        if not a.k_min <= params.k <= a.k_max:
            raise ValueError(
                f"k {params.k} outside adaptive [k_min, k_max] = [{a.k_min}, {a.k_max}]"
            )
        if not a.lag_min <= params.lag <= a.lag_max:
            raise ValueError(
                f"lag {params.lag} outside adaptive [lag_min, lag_max] = [{a.lag_min}, {a.lag_max}]"
            )
        if params.late_policy != "wait":
            raise ValueError("kind 'kso-adaptive' always waits for a late summary")

    def __init__(
        self, params: PolicyParams, task: Task, memory_max_model_len: int | None = None
    ) -> None:
        super().__init__(params, task, memory_max_model_len)
        self.rule = params.adaptive or AdaptiveParams()
        self.k = params.k
        self.lag = params.lag
        #: (step, k, lag) after every decision, for tests and tables
        self.decisions: list[tuple[int, int, int]] = []
        self._stall: float | None = None  # the latest swap's wait, until a reply prices it
        self._late = False
        self._slack = False
        self._k_floor = self.rule.k_min  # under pressure, the k that came late, plus one

    def _pressure(self) -> bool:
        r, reply = self.rule, self.last_reply
        if reply is None:
            return False
        if reply.kv_usage is not None and reply.kv_usage >= r.kv_high:
            return True
        return (
            reply.queue_s is not None
            and reply.latency_s is not None
            and reply.latency_s > 0
            and reply.queue_s >= r.queue_high * reply.latency_s
        )

    def _decide(self, t: int) -> None:
        r = self.rule
        if self._pressure():
            if self._late:
                self.k = min(r.k_max, self.k + 1)
                self._k_floor = self.k
            else:
                self.lag = r.lag_min
                self.k = max(self._k_floor, r.k_min, self.k // 2)
        else:
            self._k_floor = r.k_min
            if self._late:
                self.lag = min(r.lag_max, self.lag + 1)
            elif self._slack:
                self.lag = max(r.lag_min, self.lag - 1)
            home = self.params.k
            self.k += (self.k < home) - (self.k > home)
        self._late = self._slack = False
        self.decisions.append((t, self.k, self.lag))

    def _note_reply(self) -> None:
        """A request's reply has come: price the stall of the swap before it."""
        reply = self.last_reply
        if self._stall is None or reply is None:
            return
        if reply.latency_s is not None and reply.latency_s > 0:
            self._late = self._stall >= self.rule.stall_high * reply.latency_s
        self._stall = None

    def run(self) -> Generator[Action, Any, str]:
        p, n = self.params, len(self.task.steps)
        due: dict[int, Job] = {}  # step before which a job is swapped in -> job
        last_launch, last_due, decided = 0, 0, False
        for t, step in enumerate(self.task.steps, start=1):
            swapped = None
            job = due.pop(t, None)
            if job is not None:
                self._stall = 0.0
                if not job.done:
                    waited = yield Await(job.id)
                    seconds = waited.seconds if isinstance(waited, Waited) else None
                    self._stall = seconds
                else:
                    # it ended during step done_at_step; the swap is before step t
                    self._slack = job.done_at_step <= t - 2
                if job.done and job.ok:
                    self._restart(job, max(0, job.cutoff - p.retain))
                    swapped = job.id
            failure = yield from self._agent_step(t, step)
            if failure is not None:
                yield StepEnd(t, False, swapped)
                return failure
            self._note_reply()
            launched = False
            if t < n and t - last_launch >= self.k:
                if not decided:
                    self._decide(t)
                    decided = True
                launched = t - last_launch >= self.k
            if launched:
                job = self._new_job(t, t)
                last_due = max(t + self.lag + 1, last_due + 1)
                due[last_due] = job
                last_launch, decided = t, False
                yield self._memory_request(job, (self.system, *self._raw_since(0)), False)
            yield StepEnd(t, launched, swapped)
        return "finished"


__all__ = [
    "POLICIES",
    "Action",
    "AdaptiveParams",
    "AgentReply",
    "Await",
    "ContextPolicy",
    "Job",
    "PolicyParams",
    "PreWarm",
    "PrefixStream",
    "Prompt",
    "Segment",
    "Send",
    "Step",
    "StepEnd",
    "Summarize",
    "Task",
    "Tool",
    "Waited",
    "make_policy",
    "register_policy",
    "total_step_time",
    "uses_memory",
]
