"""Context policies: one pure state machine per architecture, shared by every executor.

A policy decides, for one task, what the agent sends at each step, when a summary is
launched (and on which model), when it is swapped in, and what the context becomes:
which token segments it holds and which prefix-cache stream it continues. It knows
tokens and events, never time: no SimPy, no threads, no I/O. One loop runs it
(:mod:`sim.executor`) under two executors: :class:`sim.agents.Agent` (SimPy, simulated
engines) and :class:`live.agent.LiveAgent` (threads, live servers). Both are thin: they
perform the actions of :mod:`sim.actions` and report what happened, so the simulated
and the live agent cannot drift apart.

Policies are registered by name (:data:`POLICIES`, :func:`register_policy`); a
scenario's ``kind`` picks one, so a new policy needs no change to either executor.
This module holds the parameters, the registry and the policies that block on their
summaries; :mod:`sim.context_policy` what they all share, :mod:`sim.kso` the k-step-off
family, :mod:`sim.actions` what a policy and its executor say to each other.

Kinds: ``fc`` (full context), ``cp`` (coupled: the agent model summarizes inline,
blocking), ``sm`` (sync memory: the memory model summarizes, blocking), ``kso``
(CoMem k-step-off, the general ``k``/``lag``/``retain`` form), ``kso-authors``
(k-step-off exactly as the CoMem authors' code runs it; see :class:`sim.kso.KSOAuthors`) and
``kso-adaptive`` (k-step-off that changes k and lag while it runs, from what it
observes; see :class:`sim.kso.KSOAdaptive`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Literal

from pydantic import ConfigDict, NonNegativeInt, PositiveInt, field_validator

from calibration.inputs import InputModel, TokensOrZero
from sim.actions import (
    Action,
    Prompt,
    StepEnd,
    Summarize,
    Task,
)
from sim.context_policy import ContextPolicy, Job
from sim.kso import AdaptiveParams, KSOAdaptive, KSOAuthors, KStepOff


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


# --- the policies ---------------------------------------------------------------------------


class FullContext(ContextPolicy):
    kind = "fc"
    description = "full context: the context grows (prefix-cached)"

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


class Coupled(_Blocking):
    kind = "cp"
    description = "coupled: the agent model summarizes inline, blocking"

    def _summary_request(self, job: Job) -> Summarize:
        # over its own context, whose prefix is cached; the summary's tokens go to a
        # branch of the context's stream, which goes on unchanged if the summary fails
        instruction = self._instruction(job.step)
        prompt = Prompt.of((*self.context, instruction), self.context_tokens + instruction.tokens)
        stream = self._new_stream(self.stream, self.context_tokens)
        return Summarize(job.id, job.step, "agent", prompt, self.task.summary_tokens, stream, True)


class SyncMemory(_Blocking):
    kind = "sm"
    description = "sync memory: the memory model summarizes; the agent blocks"
    uses_memory = True

    def _summary_request(self, job: Job) -> Summarize:
        return self._memory_request(job, (self.system, *self._raw_since(0)), blocking=True)


#: the policies by kind, in the order the docs and errors list them
POLICIES: dict[str, type[ContextPolicy]] = {
    policy.kind: policy
    for policy in (FullContext, Coupled, SyncMemory, KStepOff, KSOAuthors, KSOAdaptive)
}


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
