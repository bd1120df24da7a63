"""Live agents: threads that execute a context policy against live servers.

The policy (:mod:`sim.policy`) says what to send, when to summarize, wait and swap; the
loop over its actions and the rows it writes are :mod:`sim.executor`'s, the same loop
the simulated agent runs. This module performs the actions on real servers: it turns
the policy's token segments into real text (words that are one token each for the tiny
model's tokenizer: seeded words for the system prompt, observations and instructions,
the servers' own output for actions and summaries), so the server's prefix cache sees
what the simulator's prefix cache sees. Asynchronous summaries run on background
threads; each thing the loop waits on is a blocking call (:func:`drive_blocking`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, TypeVar

import numpy as np

from live.openai_stream import Endpoint, StreamResult, stream_completion
from sim.actions import AgentReply, PreWarm, Prompt, Segment, Send, Summarize, Task
from sim.context_policy import ContextPolicy
from sim.executor import AgentRequest, SummaryJob, TaskExecutor
from sim.policy import PolicyParams, make_policy
from sim.rows import StepRow, TaskRow

T = TypeVar("T")
#: what a live task waits on: a call that blocks until it is over
Blocking = Callable[[], Any]


def drive_blocking(steps: Generator[Blocking, Any, T]) -> T:
    """Run a loop written for :class:`sim.executor.TaskExecutor` on this thread: make
    each blocking call it yields and send back its result (or throw in its error)."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            wait = steps.send(result) if error is None else steps.throw(error)
        except StopIteration as end:
            return end.value
        try:
            result, error = wait(), None
        except Exception as exc:
            result, error = None, exc


#: the step columns a client cannot observe: they are inside the server
_SERVER_SIDE = frozenset({"admitted_s", "queue_s", "cached_tokens", "uncached_prefill_tokens"})
#: a live step's columns: those of :class:`sim.rows.StepRow` a client observes, in its
#: order, then whose token counts these are
REPLAY_STEP_COLUMNS = (
    *(column for column in StepRow._fields if column not in _SERVER_SIDE),
    "token_counts_from",
)


class ReplayStepRow(NamedTuple):
    """One live step: its :class:`sim.rows.StepRow` (the server-side columns left out
    of the table, :data:`REPLAY_STEP_COLUMNS`) and whose token counts these are:
    ``usage`` (the server's) or ``client`` (the prompt as sent, the streamed chunks)."""

    row: StepRow
    token_counts_from: str

    def cells(self) -> list[Any]:
        """The row's values under :data:`REPLAY_STEP_COLUMNS`."""
        values = {**self.row._asdict(), "token_counts_from": self.token_counts_from}
        return [values[column] for column in REPLAY_STEP_COLUMNS]


class ReplaySummaryRow(NamedTuple):
    """One summarization request (CP on the agent server, SM/KSO on the memory one)."""

    architecture: str
    agent: int
    task: int
    step: int
    server: str
    status: str
    submit_s: float
    ttft_s: float
    e2e_s: float
    prompt_tokens: int
    output_tokens: int
    token_counts_from: str


@dataclass(frozen=True)
class LiveTarget:
    """Where and how to send requests."""

    agent: Endpoint
    model: str
    memory: Endpoint | None = None
    memory_model: str | None = None
    timeout_s: float = 120.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    vocabulary_words: int = 4000
    word_prefix: str = "w"


class Words:
    """Seeded random prompt words, one token each for the tiny model's tokenizer."""

    def __init__(self, target: LiveTarget, seed: int, stream: int = 0) -> None:
        self.target = target
        self.seed = seed
        self.stream = stream  # one per architecture: no prompt is cached by another's run

    def make(self, n: int, *key: int) -> list[str]:
        rng = np.random.default_rng([self.seed, self.stream, *key])
        ids = rng.integers(0, self.target.vocabulary_words, n)
        return [f"{self.target.word_prefix}{i}" for i in ids]


class _Texts:
    """The words of a task's segments: seeded prompt words for the system prompt,
    observations and instructions; what the servers wrote for actions and summaries."""

    def __init__(self, words: Words, key: tuple[int, int]) -> None:
        self.words = words
        self.key = key
        self.actions: dict[int, list[str]] = {}
        self.summaries: dict[int, list[str]] = {}

    def segment(self, seg: Segment) -> list[str]:
        if seg.kind == "system":
            return self.words.make(seg.tokens, *self.key, 0)
        if seg.kind == "observation":
            return self.words.make(seg.tokens, *self.key, seg.ref, 1)
        if seg.kind == "instruction":
            return self.words.make(seg.tokens, *self.key, seg.ref, 2)
        if seg.kind == "padding":
            return self.words.make(seg.tokens, *self.key, seg.ref, 3)
        own = self.actions if seg.kind == "action" else self.summaries
        return own[seg.ref][: seg.tokens]

    def render(self, prompt: Prompt) -> list[str]:
        out = [w for seg in prompt.segments for w in self.segment(seg)]
        return out[-prompt.keep_last :] if prompt.keep_last is not None else out


@dataclass
class LiveRows:
    """Where an architecture's agents put their rows (lists shared by its threads)."""

    steps: list[ReplayStepRow]
    tasks: list[TaskRow]
    summaries: list[ReplaySummaryRow]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rows: list[Any], row: Any) -> None:
        with self.lock:
            rows.append(row)


@dataclass(eq=False)
class LiveAgent:
    """One agent thread running its tasks, one :class:`LiveTask` after the other."""

    id: int
    name: str
    params: PolicyParams
    target: LiveTarget
    words: Words
    #: the clock's zero (``time.perf_counter``)
    t0: float
    rows: LiveRows
    #: called after each finished task (progress bars)
    on_task: Callable[[], None] | None = None
    memory_max_model_len: int | None = None
    #: why its thread died, if it did
    crashed: str | None = field(default=None, init=False)
    background: list[threading.Thread] = field(default_factory=list, init=False)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def request(
        self, memory: bool, prompt: list[str], max_tokens: int
    ) -> tuple[StreamResult, float]:
        """One streamed request (to the memory server if ``memory``): its result and
        when it was submitted."""
        t = self.target
        endpoint = t.memory if memory and t.memory is not None else t.agent
        model = (t.memory_model or t.model) if memory else t.model
        submit = self.now()
        res = stream_completion(
            endpoint, model, " ".join(prompt), max_tokens, t.timeout_s, t.extra_body
        )
        return res, submit

    def run(self, own: list[Task]) -> None:
        """Run the tasks; an unexpected exception is kept (``self.crashed``), not lost
        with the thread, so the caller can report it."""
        try:
            for task_id, task in enumerate(own):
                self.run_task(task_id, task)
                if self.on_task is not None:
                    self.on_task()
        except Exception as exc:
            self.crashed = f"agent {self.id}: {type(exc).__name__}: {exc}"
        finally:
            for th in self.background:
                th.join()

    def run_task(self, task_id: int, task: Task) -> str:
        policy = make_policy(self.params, task, self.memory_max_model_len)
        return drive_blocking(LiveTask(self, policy, task_id).run())


@dataclass
class _LiveJob(SummaryJob):
    """A summary request on a live server, as the executor sees it."""

    done: threading.Event = field(default_factory=threading.Event)
    pre_warm_s: float = 0.0


class LiveTask(TaskExecutor[Blocking, _LiveJob]):
    """One task of a live agent: its actions performed on live servers."""

    def __init__(self, agent: LiveAgent, policy: ContextPolicy, task_id: int) -> None:
        super().__init__(policy, agent.name, agent.id, task_id)
        self.owner = agent
        self.texts = _Texts(agent.words, (agent.id, task_id))
        self.guard = threading.Lock()  # the policy and texts, shared with summary threads

    def now(self) -> float:
        return self.owner.now()

    def locked(self) -> AbstractContextManager[Any]:
        return self.guard

    def _render(self, prompt: Prompt) -> list[str]:
        with self.guard:
            return self.texts.render(prompt)

    def send(self, act: Send) -> Generator[Blocking, Any, tuple[AgentReply, AgentRequest]]:
        prompt = self._render(act.prompt)
        res, submit = yield partial(self.owner.request, False, prompt, act.output_tokens)
        if res.ok:
            words = res.text.split()
            with self.guard:
                self.texts.actions[act.step] = words
            # a client sees the latency; queueing and KV are inside the server
            reply = AgentReply(True, len(words), latency_s=res.e2e_s)
        else:
            failure = f"{res.status}: {res.error}"[:200]
            reply = AgentReply(False, failure=failure, latency_s=res.e2e_s)
        prompt_tokens, action_tokens = res.counts(len(prompt))
        nan = float("nan")
        return reply, AgentRequest(
            status=res.status,
            submit_s=submit,
            admitted_s=nan,
            first_token_s=submit + res.ttft_s,
            finished_s=submit + res.e2e_s,
            queue_s=nan,
            prefill_s=res.ttft_s,
            decode_s=res.e2e_s - res.ttft_s,
            latency_s=res.e2e_s,
            prompt_tokens=prompt_tokens,
            cached_tokens=0,
            action_tokens=action_tokens,
            token_counts_from=res.token_counts_from,
        )

    def sleep(self, seconds: float) -> Blocking:
        return partial(time.sleep, seconds)

    def submit_summary(self, act: Summarize) -> Blocking:
        job = self.jobs[act.job] = _LiveJob()
        return partial(self._summary_request, act, self._render(act.prompt), job)

    def _summary_request(
        self, act: Summarize, prompt: list[str], job: _LiveJob
    ) -> tuple[StreamResult | None, str]:
        """The summary request and its row; an exception is returned as the error (a
        background thread must not die silently)."""
        memory = act.model == "memory"
        try:
            res, submit = self.owner.request(memory, prompt, act.output_tokens)
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"
        prompt_tokens, output_tokens = res.counts(len(prompt))
        row = ReplaySummaryRow(
            architecture=self.architecture,
            agent=self.agent,
            task=self.task,
            step=act.step,
            server="memory" if memory else "agent",
            status=res.status,
            submit_s=submit,
            ttft_s=res.ttft_s,
            e2e_s=res.e2e_s,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            token_counts_from=res.token_counts_from,
        )
        self.owner.rows.add(self.owner.rows.summaries, row)
        job.e2e_s = res.e2e_s
        return res, ""

    def summary_outcome(self, act: Summarize, job: _LiveJob, result: Any) -> tuple[bool, int, str]:
        res, error = result
        ok = res is not None and res.ok
        words = res.text.split() if ok else []
        if res is not None and not ok:
            error = f"{res.status}: {res.error}"
        self.texts.summaries[act.job] = words
        return ok, len(words), error[:200]

    def submit_pre_warm(self, job: _LiveJob, warm: PreWarm) -> Blocking:
        # prefill the next context once the summary is ready, as the simulator does (the
        # swap does not wait for it). 2 tokens: transformers serve caches a prompt's
        # blocks only after a forward pass that follows them (see live.profiler); the
        # simulator's pre-warm is 1 token, which vLLM caches at prefill
        return partial(self.owner.request, False, self.texts.render(warm.prompt), 2)

    def pre_warm_done(self, job: _LiveJob, result: Any) -> None:
        res, _ = result
        job.pre_warm_s = res.e2e_s

    def pre_warm_s(self, job: _LiveJob) -> float:
        return job.pre_warm_s

    def release(self, job: _LiveJob) -> None:
        job.done.set()

    def until_released(self, job: _LiveJob) -> Blocking:
        return job.done.wait

    def spawn(self, steps: Generator[Blocking, Any, None]) -> None:
        th = threading.Thread(target=drive_blocking, args=(steps,), daemon=True)
        self.owner.background.append(th)
        th.start()

    def record_step(self, row: StepRow, request: AgentRequest) -> None:
        step = ReplayStepRow(row, request.token_counts_from)
        self.owner.rows.add(self.owner.rows.steps, step)

    def record_task(self, row: TaskRow) -> None:
        self.owner.rows.add(self.owner.rows.tasks, row)
