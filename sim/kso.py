"""The CoMem k-step-off family: summaries made on the memory model while the agent
goes on, swapped in some steps later. ``kso`` is the general form (``k``, ``lag``,
``retain``), ``kso-authors`` the form the CoMem authors' code runs, ``kso-adaptive``
the form that changes k and lag while it runs.

``lag >= k`` (KSO): summaries queue. Each summary is swapped in ``lag`` steps after its
launch, whatever was launched since; none replaces another. That is the paper's own
1-step-off (``comem-pipeline.png``: a summary every step, each swapped in one step
later, i.e. k = lag = 1), which a "newer replaces pending" rule would turn into never
swapping. The closed forms (:mod:`theory.single_agent`) use the same definition.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import ConfigDict, Field, NonNegativeInt, PositiveInt

from calibration.inputs import InputModel
from sim.actions import (
    Action,
    Await,
    PreWarm,
    Prompt,
    Segment,
    StepEnd,
    Task,
    Waited,
)
from sim.context_policy import ContextPolicy, Job

if TYPE_CHECKING:
    from sim.policy import PolicyParams


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


class KStepOff(ContextPolicy):
    """The general form: launched after step t (t % k == 0, not after the last step),
    over the history through step t; runs during steps t+1 .. t+lag; swapped in before
    step t+lag+1 as system + summary + raw steps t-retain+1 .. t+lag (one uncached
    prefill). Not ready then: the agent waits (``late_policy = "wait"``, stall) or keeps
    its context and drops that summary (``"skip"``). ``lag >= k``: summaries queue (see
    the module docstring). ``pre_warm``: once a summary is ready, the context it brings
    is prefilled ahead (system + summary + the raw tail so far)."""

    kind = "kso"
    description = (
        "CoMem k-step-off: every k steps the memory model summarizes asynchronously; the"
        " summary is swapped in lag steps later"
    )

    uses_memory = True
    step_accounting = "overlapped"

    def run(self) -> Generator[Action, Any, str]:
        n = len(self.task.steps)
        due: dict[int, Job] = {}  # step before which a job is swapped in -> job
        for t, step in enumerate(self.task.steps, start=1):
            swapped = None
            job = due.pop(t, None)
            if job is not None:
                yield from self._before_swap(job, t)
                if job.done and job.ok:
                    self._restart(job, max(0, job.cutoff - self.params.retain))
                    swapped = job.id
            failure = yield from self._agent_step(t, step)
            if failure is not None:
                yield StepEnd(t, False, swapped)
                return failure
            swap_at = self._launch(t, n)
            if swap_at is not None:
                job = self._new_job(t, t)
                due[swap_at] = job
                yield self._memory_request(job, (self.system, *self._raw_since(0)), False)
            yield StepEnd(t, swap_at is not None, swapped)
        return "finished"

    def _before_swap(self, job: Job, t: int) -> Generator[Action, Any, None]:
        """Job ``job`` is due before step ``t``: wait for it if late (``late_policy``)."""
        if not job.done and self.params.late_policy == "wait":
            yield Await(job.id)

    def _launch(self, t: int, n: int) -> int | None:
        """After step ``t`` of ``n``: the step before which a summary launched now is
        swapped in, or None to launch none."""
        p = self.params
        return t + p.lag + 1 if t % p.k == 0 and t < n else None

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
    cut. ``tests/sim/test_policy.py`` shows both.
    """

    kind = "kso-authors"
    description = (
        "CoMem k-step-off as the authors' code runs it: R = retain; a summary launched at"
        " the start of every step t with t % R == 0, collected at the start of the next"
    )

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

    kind = "kso-adaptive"
    description = (
        "CoMem k-step-off that adapts k and lag while it runs: smaller under KV or queueing"
        " pressure, larger k when its summaries come late under pressure, larger lag when"
        " they come late without it"
    )

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
        self._last_launch = 0  # the step of the latest launch
        self._last_due = 0  # the step before which the latest launched summary is swapped
        self._decided = False  # whether this period's launch point has decided

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

    def _before_swap(self, job: Job, t: int) -> Generator[Action, Any, None]:
        """Always wait for a late summary, and note how late or early it was."""
        self._stall = 0.0
        if not job.done:
            waited = yield Await(job.id)
            self._stall = waited.seconds if isinstance(waited, Waited) else None
        else:
            # it ended during step done_at_step; the swap is before step t
            self._slack = job.done_at_step <= t - 2

    def _launch(self, t: int, n: int) -> int | None:
        """A launch point ``k`` steps after the previous launch: decide (once per
        period) and launch if the new ``k`` steps have passed; swaps keep launch order."""
        self._note_reply()
        if not (t < n and t - self._last_launch >= self.k):
            return None
        if not self._decided:
            self._decide(t)
            self._decided = True
        if t - self._last_launch < self.k:
            return None
        self._last_due = max(t + self.lag + 1, self._last_due + 1)
        self._last_launch, self._decided = t, False
        return self._last_due
