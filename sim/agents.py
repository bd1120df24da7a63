"""LLM agents and their context management: FC, CP, SM and CoMem k-step-off (KSO).

An agent runs a task step by step: its prompt is the current context plus the new
observation (submitted to the agent engine on the context's stream, so the prefix
cache hits wherever the real system would), it decodes an action, the tool runs,
and the step's observation and action join the raw history. Architectures differ in
what happens every ``k`` steps:

- ``fc``: nothing; the context grows without bound.
- ``cp``: the agent model summarizes inline over its own (cached) context, blocking,
  and the context restarts as system + summary + the last ``retain`` raw steps
  (uncached apart from the shared system prompt).
- ``sm``: as ``cp`` but the memory engine summarizes (the agent still blocks).
- ``kso``: the memory engine is sent the history and the agent goes on; the summary
  is swapped in ``lag`` steps later (one uncached prefill). If it is not ready then,
  the agent waits (``late_policy = "wait"``) or keeps its old context (``"skip"``).
  With ``pre_warm`` the new context's prefill is started as soon as the summary is
  ready, so the swap step finds it cached.

The memory engine's prompt for an agent is the raw history (system prompt plus every
step so far) on a per-agent prompt stream, so it pays only for new tokens; past the
memory model's ``max_model_len`` it keeps the most recent history (and loses its
cache). Timing follows ``comem-pipeline.png``: a summary launched after step t runs
concurrently with steps t+1 .. t+lag and is swapped in before step t+lag+1.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import simpy

from sim.engine import Engine, Request, Stream, StreamSpace

Kind = Literal["fc", "cp", "sm", "kso"]

STEP_COLUMNS = (
    "architecture",
    "agent",
    "task",
    "step",
    "submit_s",
    "admitted_s",
    "first_token_s",
    "finished_s",
    "queue_s",
    "prefill_s",
    "decode_s",
    "tool_s",
    "stall_s",
    "step_latency_s",
    "prompt_tokens",
    "cached_tokens",
    "uncached_prefill_tokens",
    "action_tokens",
    "summary_launched",
    "summary_swapped",
)

TASK_COLUMNS = (
    "architecture",
    "agent",
    "task",
    "start_s",
    "end_s",
    "latency_s",
    "steps",
    "status",
    "summaries",
    "stall_s",
)


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
    system_tokens: int
    steps: tuple[Step, ...]
    summary_tokens: int


@dataclass(frozen=True)
class Policy:
    """An architecture's context-management policy."""

    name: str
    kind: Kind
    k: int = 4
    lag: int = 1
    retain: int = 4
    pre_warm: bool = False
    late_policy: Literal["wait", "skip"] = "wait"
    summary_prompt_tokens: int = 64  # the summarize instruction


@dataclass
class AgentRecorder:
    steps: list[tuple[Any, ...]] = field(default_factory=list)
    tasks: list[tuple[Any, ...]] = field(default_factory=list)
    #: called after each finished task (progress bars)
    on_task: Callable[[], None] | None = None

    def add_task(self, row: tuple[Any, ...]) -> None:
        self.tasks.append(row)
        if self.on_task is not None:
            self.on_task()


@dataclass
class _Summary:
    """A memory job in flight (KSO) or done."""

    cutoff: int  # raw steps it covers
    done: simpy.Event
    tokens: int = 0
    stream: Stream | None = None
    failed: bool = False


class Agent:
    """One agent process running tasks under a policy."""

    def __init__(
        self,
        env: simpy.Environment,
        agent_id: int,
        policy: Policy,
        agent_engine: Engine,
        memory_engine: Engine | None,
        streams: StreamSpace,
        recorder: AgentRecorder,
    ) -> None:
        self.env = env
        self.id = agent_id
        self.policy = policy
        self.engine = agent_engine
        self.memory = memory_engine
        self.streams = streams
        self.recorder = recorder

    # -- one task ----------------------------------------------------------------------
    def run_task(self, task_id: int, task: Task) -> Generator[simpy.Event, Any, str]:
        env, pol = self.env, self.policy
        start = env.now
        system = self.streams.new()  # system + task prompt, shared by every context
        ctx_stream = self.streams.new(system, task.system_tokens)
        ctx_tokens = task.system_tokens  # context before the new observation
        raw: list[int] = []  # tokens of each finished step (observation + action)
        in_context_from = 0  # raw steps [in_context_from:] are verbatim in the context
        mem_prompt = self.streams.new()  # the memory engine's view of the history
        pending: _Summary | None = None
        pending_swap_at = 0
        summaries = 0
        total_stall = 0.0
        status = "finished"
        for t, step in enumerate(task.steps, start=1):
            stall = 0.0
            swapped = False
            # KSO: swap in the summary launched lag steps ago
            if pending is not None and t == pending_swap_at:
                if not pending.done.triggered and pol.late_policy == "wait":
                    t0 = env.now
                    yield pending.done
                    stall = env.now - t0
                if pending.done.triggered and not pending.failed:
                    summary_in_context = pending.tokens
                    in_context_from = max(0, pending.cutoff - pol.retain)
                    ctx_stream = pending.stream or self._context_stream(system, task)
                    ctx_tokens = (
                        task.system_tokens + summary_in_context + sum(raw[in_context_from:])
                    )
                    swapped = True
                    summaries += 1
                pending = None
            prompt = ctx_tokens + step.observation
            submit = env.now
            req = self.engine.submit(prompt, step.action, ctx_stream, tag=(self.id, task_id, t))
            yield req.done
            if req.status != "finished":
                status = "context_exceeded"
                self._record_step(task_id, t, req, submit, 0.0, stall, False, swapped)
                break
            kept = req.generated if step.kept is None else min(step.kept, req.generated)
            if kept < req.generated:
                # dropped reasoning: the context diverges from the stream after the prompt
                ctx_stream = self.streams.new(ctx_stream, prompt)
            ctx_tokens = prompt + kept
            raw.append(step.observation + kept)
            if step.tool_s > 0:
                yield env.timeout(step.tool_s)
            launched = False
            if pol.kind != "fc" and t % pol.k == 0 and t < len(task.steps):
                launched = True
                if pol.kind in ("cp", "sm"):  # blocking: wait, then restart the context
                    t0 = env.now
                    if pol.kind == "cp":  # the agent model, over its own cached context
                        s = self.engine.submit(
                            ctx_tokens + pol.summary_prompt_tokens,
                            task.summary_tokens,
                            ctx_stream,
                            tag=(self.id, task_id, t, "summary"),
                        )
                        yield s.done
                        ok, summary = s.status == "finished", s.generated
                    else:
                        job, mem_prompt = self._launch_summary(
                            task_id, t, task, raw, mem_prompt, system, None
                        )
                        yield job.done
                        ok, summary = not job.failed, job.tokens
                    stall += env.now - t0
                    if ok:
                        in_context_from = max(0, t - pol.retain)
                        ctx_stream = self._context_stream(system, task)
                        ctx_tokens = task.system_tokens + summary + sum(raw[in_context_from:])
                        summaries += 1
                        swapped = True
                else:  # kso: asynchronous; a newer launch replaces one not swapped yet
                    pending, mem_prompt = self._launch_summary(
                        task_id, t, task, raw, mem_prompt, system, raw
                    )
                    pending_swap_at = t + pol.lag + 1
            total_stall += stall
            self._record_step(task_id, t, req, submit, step.tool_s, stall, launched, swapped)
        end = env.now
        self.recorder.add_task(
            (
                self.policy.name,
                self.id,
                task_id,
                start,
                end,
                end - start,
                len(raw),
                status,
                summaries,
                total_stall,
            )
        )
        return status

    def _context_stream(self, system: Stream, task: Task) -> Stream:
        return self.streams.new(system, task.system_tokens)

    def _launch_summary(
        self,
        task_id: int,
        t: int,
        task: Task,
        raw: list[int],
        mem_prompt: Stream,
        system: Stream,
        live_raw: list[int] | None,
    ) -> tuple[_Summary, Stream]:
        """Start a memory job over the history through step ``t``; returns the job and
        the memory prompt stream to use next time."""
        assert self.memory is not None
        history = task.system_tokens + sum(raw)
        limit = self.memory.config.max_model_len - task.summary_tokens
        prompt = history + self.policy.summary_prompt_tokens
        if prompt > limit:  # keep the most recent history; the cache cannot follow
            prompt = limit
            mem_prompt = self.streams.new()
        job = _Summary(cutoff=t, done=self.env.event())
        stream = self.streams.new(mem_prompt, history)  # output after the shared history
        req = self.memory.submit(prompt, task.summary_tokens, stream, tag=(self.id, task_id, t))
        self.env.process(self._await_summary(job, req, task, system, live_raw))
        return job, mem_prompt

    def _await_summary(
        self,
        job: _Summary,
        req: Request,
        task: Task,
        system: Stream,
        live_raw: list[int] | None,
    ) -> Generator[simpy.Event, Any, None]:
        yield req.done
        job.failed = req.status != "finished"
        job.tokens = req.generated
        if not job.failed and live_raw is not None:
            job.stream = self._context_stream(system, task)
            if self.policy.pre_warm:
                # prefill the next context now: system + summary + the raw tail so far
                start = max(0, job.cutoff - self.policy.retain)
                tokens = task.system_tokens + job.tokens + sum(live_raw[start:])
                self.engine.submit(tokens, 1, job.stream, tag=(self.id, "pre-warm"))
        job.done.succeed(job)

    def _record_step(
        self,
        task_id: int,
        t: int,
        req: Request,
        submit: float,
        tool_s: float,
        stall: float,
        launched: bool,
        swapped: bool,
    ) -> None:
        queue = req.admitted_s - submit
        prefill = req.first_token_s - req.admitted_s
        decode = req.finished_s - req.first_token_s
        self.recorder.steps.append(
            (
                self.policy.name,
                self.id,
                task_id,
                t,
                submit,
                req.admitted_s,
                req.first_token_s,
                req.finished_s,
                queue,
                prefill,
                decode,
                tool_s,
                stall,
                req.finished_s - submit + tool_s + stall,
                req.prompt_tokens,
                req.cached_tokens,
                req.prompt_tokens - req.cached_tokens,
                req.generated,
                launched,
                swapped,
            )
        )
