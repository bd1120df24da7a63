"""Data-parallel replicas of one engine behind vLLM's router: independent for a dense
model, stepped in lockstep for a MoE model (no time of their own: each replica is a
:class:`sim.engine.Engine`)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from engine.kv_cache import Stream
from engine.request import Run, Sequence, Step
from engine.runs import MAX_RUN_ITERATIONS
from sim.config import EngineConfig
from sim.engine import Engine, idle_wait, is_empty, wait_out_run
from sim.engine_latency import IterationLatency, engine_latency
from sim.metrics import MetricsRecorder
from sim.pricing import run_end_times
from sim.request import Request


class ReplicatedEngine:
    """``data_parallel_size`` replicas of one engine behind a router (vLLM DP).

    Each replica is an :class:`Engine` with its own scheduler and KV cache. Routing:
    ``vllm`` sends a request to the replica with the lowest ``4 * waiting + running``
    (vLLM's DP client; vLLM refreshes the counts from its coordinator about every 100 ms
    and counts its own assignments in between, here they are exact), ``round-robin``,
    or ``prefix-aware`` (the longest cached prefix of the request's stream, then vLLM's
    score). Replicas step independently, as vLLM 0.19 runs a dense model's ranks; a MoE
    model's ranks step together (:class:`LockstepReplicas`).
    """

    def __init__(
        self,
        env: simpy.Environment,
        config: EngineConfig,
        latency: IterationLatency | None = None,
        recorder: MetricsRecorder | None = None,
    ) -> None:
        if config.enable_expert_parallel and latency is None:
            # vLLM's EP spans all DP ranks (EP = TP x DP, tokens all-gathered across them):
            # every replica prices its iterations with the whole group's MoE layers
            latency = engine_latency(config)
        self.env = env
        self.config = config
        self.recorder = recorder if recorder is not None else MetricsRecorder()
        self.replicas = [
            Engine(
                env,
                config.model_copy(update={"name": f"{config.name}#dp{i}", "data_parallel_size": 1}),
                latency,
                self.recorder,
                driver=self._driver(),
            )
            for i in range(config.data_parallel_size)
        ]
        self.latency = self.replicas[0].latency
        self._next = 0

    def _driver(self) -> LockstepReplicas | None:
        """Who steps the replicas: each itself (None), or one driver for all."""
        return None

    def _route(self, prompt_tokens: int, stream: Stream | None) -> Engine:
        router = self.config.data_parallel_router
        reps = self.replicas
        if router == "round-robin":
            eng = reps[self._next % len(reps)]
            self._next += 1
            return eng

        def score(e: Engine) -> int:
            # vLLM counts a request at its rank when it is assigned: one still in its
            # per-request overhead (HTTP, tokenization) is waiting there already
            sched = e.scheduler
            return 4 * (len(sched.waiting) + e.arriving) + sched.num_running

        if router == "prefix-aware" and stream is not None:
            cap = max(0, (prompt_tokens - 1) // reps[0].block_size)
            return min(reps, key=lambda e: (-e.kv.hit(stream, cap), score(e)))
        return min(reps, key=score)

    def submit(
        self,
        prompt_tokens: int,
        output_tokens: int,
        stream: Stream | None = None,
        tag: Any = None,
    ) -> Request:
        return self._route(prompt_tokens, stream).submit(prompt_tokens, output_tokens, stream, tag)

    @property
    def preemptions(self) -> int:
        return sum(e.preemptions for e in self.replicas)

    @property
    def iterations(self) -> int:
        return sum(e.iterations for e in self.replicas)

    @property
    def length_capped(self) -> int:
        return sum(e.length_capped for e in self.replicas)

    @property
    def total_blocks(self) -> int:
        return sum(e.total_blocks for e in self.replicas)

    @property
    def block_size(self) -> int:
        return self.replicas[0].block_size

    @property
    def kv_used_blocks(self) -> int:
        return sum(e.kv_used_blocks for e in self.replicas)

    @property
    def running(self) -> list[Sequence]:
        return [r for e in self.replicas for r in e.running]

    @property
    def waiting(self) -> list[Sequence]:
        return [r for e in self.replicas for r in e.waiting]

    def check_invariants(self) -> None:
        for e in self.replicas:
            e.check_invariants()


class LockstepReplicas(ReplicatedEngine):
    """Data-parallel replicas of a MoE model, stepped in lockstep as vLLM does
    (``VLLM_FACTS.md`` section 5: every rank runs each step, an idle rank a dummy batch,
    and the step lasts as long as the slowest rank's).

    One SimPy process drives every replica's scheduler: a step is a single iteration of
    every rank, or, when every busy rank has a run of identical iterations ahead, the
    shortest of those runs, priced rank by rank and taken as the elementwise maximum.
    A dummy batch is priced as a one-token decode.
    """

    def __init__(
        self,
        env: simpy.Environment,
        config: EngineConfig,
        latency: IterationLatency | None = None,
        recorder: MetricsRecorder | None = None,
    ) -> None:
        super().__init__(env, config, latency, recorder)
        self._wake: simpy.Event | None = None
        self._in_run = False
        #: when the group last retried a step that preempted and scheduled nothing
        self._retried_at: float | None = None
        self.process = env.process(self._run())

    def _driver(self) -> LockstepReplicas:
        return self

    def notify(self) -> None:
        """A replica got a request: wake the group, or stop its run at the iteration in
        flight."""
        if self._in_run:
            self._in_run = False
            self.process.interrupt()
        elif self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _dummy_s(self, engine: Engine) -> float:
        return engine.latency.iteration_time_of(1, 1)

    def _run(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        reps = self.replicas
        while True:
            if all(e.scheduler.idle for e in reps):
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            start = env.now
            plans: list[Step | Run | None] = []
            for e in reps:
                sched = e.scheduler
                sched.now = start
                plans.append(None if sched.idle else sched.next(MAX_RUN_ITERATIONS))
            busy = [p for p in plans if p is not None]
            if all(is_empty(p) for p in busy):  # every rank waits for KV blocks or loads
                wait, self._retried_at = idle_wait(
                    self.config.name, [e.scheduler for e in reps], busy, self._retried_at, start
                )
                self._wake = env.event()
                yield env.timeout(wait) | self._wake
                self._wake = None
                continue
            if all(isinstance(p, Run) for p in busy):
                fired = yield from self._run_together(plans, start)
            else:
                fired = yield from self._step_together(plans, start)
            if fired:
                yield env.timeout(0)

    def _run_together(
        self, plans: list[Step | Run | None], start: float
    ) -> Generator[simpy.Event, Any, bool]:
        """Every busy rank has a run ahead: the shortest of them, each iteration as long
        as the slowest rank's, cut at the iteration in flight by a submission."""
        env = self.env
        reps = self.replicas
        m = min(p.iterations for p in plans if isinstance(p, Run))
        per_rank = []
        for e, p in zip(reps, plans, strict=True):
            if p is None:
                per_rank.append(np.full(m, self._dummy_s(e)))
            else:
                assert isinstance(p, Run)
                p.iterations, p.allocations = m, None
                per_rank.append(np.diff(run_end_times(e.latency, p), prepend=0.0))
        ends = np.cumsum(np.max(np.vstack(per_rank), axis=0))
        self._in_run = True
        done = yield from wait_out_run(env, start, ends, m)
        self._in_run = False
        fired = False
        for e, p in zip(reps, plans, strict=True):
            if p is not None:
                assert isinstance(p, Run)
                fired |= e._fire(e.scheduler.apply_run(p, done))
                chunks = [p.chunk] * done if p.chunk else []
                e._record_step(start, done, p.num_decode, chunks)
        return fired

    def _step_together(
        self, plans: list[Step | Run | None], start: float
    ) -> Generator[simpy.Event, Any, bool]:
        """One iteration of every rank (a run's first), as long as the slowest rank's."""
        env = self.env
        reps = self.replicas
        durations = []
        for e, p in zip(reps, plans, strict=True):
            if p is None:
                durations.append(self._dummy_s(e))
            elif isinstance(p, Run):
                p.iterations, p.allocations = 1, None
                durations.append(float(run_end_times(e.latency, p)[0]))
            else:
                e.mark_admitted(p, start)
                durations.append(e.step_time(p))
        yield env.timeout(max(durations))
        fired = False
        for e, p in zip(reps, plans, strict=True):
            if p is None:
                continue
            if isinstance(p, Run):
                fired |= e._fire(e.scheduler.apply_run(p, 1))
                e._record_step(start, 1, p.num_decode, [p.chunk] if p.chunk else [])
            else:
                fired |= e._fire(e.scheduler.apply(p))
                e._record_step(start, 1, p.num_decode, p.prefill_new)
        return fired
