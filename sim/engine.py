"""A vLLM-like serving engine in SimPy: the V1 scheduler over a paged, prefix-cached KV
cache, priced by the latency model, stepped from event to event.

One :class:`Engine` is one model instance on ``tp`` GPUs. What an iteration schedules,
which request is preempted, what the prefix cache keeps: all of it is
:class:`calibration.scheduler.Scheduler` over :class:`calibration.kv_cache.KVCache`,
the same code the static predictor and the measured-profile fit use. This module adds
time: each iteration lasts what the latency model says, requests arrive from SimPy
processes, and a request's ``admitted`` / ``first_token`` / ``done`` events fire when
they happen.

Stepping. ``stepping = "iteration"`` schedules, prices and waits for every iteration
on its own: the reference. ``stepping = "event"`` (the default) asks the scheduler
for the run of identical-shape iterations ahead (until a request finishes, a prompt
completes, a block allocation would fail, the waiting head could be admitted) and
prices the whole run in one vectorized call, as one SimPy timeout. A submission
during a run stops it at the end of the iteration in flight, exactly where the
iteration-stepped engine would see it. Results equal iteration stepping exactly in
every count and to floating-point rounding in times (``tests/test_engine.py``,
``benchmarks/bench_stepping.py``).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any, Protocol

import numpy as np
import simpy

from calibration.errors import ComemInputError
from calibration.kv_cache import KVCache, Stream, StreamSpace
from calibration.scheduler import (
    MAX_RUN_ITERATIONS,
    Event,
    Run,
    Scheduler,
    SchedulerConfig,
    Step,
)
from calibration.scheduler import Sequence as SchedSequence
from sim.config import EngineConfig
from sim.metrics import MetricsRecorder

__all__ = ["Engine", "IterationLatency", "Request", "Stream", "StreamSpace"]

#: runs up to this many iterations are priced by a plain loop (numpy's per-call cost
#: exceeds the loop's below it)
SCALAR_RUN_LIMIT = 4


class IterationLatency(Protocol):
    """What the engine needs from a latency model."""

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int: ...

    def iteration_time_of(
        self,
        num_decode: int,
        decode_kv_total: int,
        prefill_new: Sequence[int] = (),
        prefill_cached: Sequence[int] = (),
    ) -> float: ...

    def steady_iteration_times(
        self, num_decode: int, kv_total0: int, chunk: int, cached0: int, steps: int
    ) -> np.ndarray: ...


class Request(SchedSequence):
    """One generation request and what happened to it (times in simulated seconds).

    ``admitted``, ``first_token`` and ``done`` are SimPy events, made when first asked
    for (most requests are never waited on for the first two; an event that nobody
    holds costs a SimPy step all the same). Asked for after the fact, they come back
    already triggered.
    """

    __slots__ = (
        "_admitted",
        "_done",
        "_first_token",
        "admitted_s",
        "arrival_s",
        "engine",
        "finished_s",
        "first_token_s",
        "reason",
        "tag",
    )

    def __init__(
        self,
        engine: Engine,
        rid: int,
        prompt_tokens: int,
        output_tokens: int,
        stream: Stream | None,
        tag: Any,
    ) -> None:
        super().__init__(rid, prompt_tokens, output_tokens, stream)
        env = engine.env
        self.engine = engine
        self.tag = tag
        self.arrival_s = env.now
        self.admitted_s = math.nan
        self.first_token_s = math.nan
        self.finished_s = math.nan
        self.reason = ""
        self._admitted: simpy.Event | None = None
        self._first_token: simpy.Event | None = None
        self._done: simpy.Event | None = None

    def _event(self, happened: bool) -> simpy.Event:
        ev = self.engine.env.event()
        if happened:
            ev.succeed(self)
        return ev

    @property
    def admitted(self) -> simpy.Event:
        if self._admitted is None:
            self._admitted = self._event(self.admitted_s == self.admitted_s)
        return self._admitted

    @property
    def first_token(self) -> simpy.Event:
        if self._first_token is None:
            self._first_token = self._event(self.first_token_s == self.first_token_s)
        return self._first_token

    @property
    def done(self) -> simpy.Event:
        if self._done is None:
            self._done = self._event(self.finished_s == self.finished_s)
        return self._done


class Engine:
    """A simulated serving engine. ``submit`` requests; SimPy events report progress."""

    def __init__(
        self,
        env: simpy.Environment,
        config: EngineConfig | None = None,
        latency: IterationLatency | None = None,
        recorder: MetricsRecorder | None = None,
    ) -> None:
        self.env = env
        self.config = config if config is not None else EngineConfig()
        cfg = self.config
        if latency is None:
            from calibration.measured import MeasuredLatency, MeasuredProfile, load_profile

            profile = load_profile(cfg.profile) if cfg.profile else None
            if isinstance(profile, MeasuredProfile):
                latency = MeasuredLatency(profile)
            else:
                from calibration.latency import LatencyModel

                latency = LatencyModel(
                    cfg.model,
                    cfg.gpu,
                    cfg.tp,
                    cfg.dtype,
                    profile=profile,
                    expert_parallel=cfg.enable_expert_parallel,
                )
        self.latency = latency
        overhead = cfg.request_overhead_s
        if overhead is None:
            overhead = float(getattr(latency, "request_overhead_s", 0.0))
        self.request_overhead_s = overhead
        #: server time per newly admitted request, charged to the admitting iteration
        #: (HTTP parsing and tokenization that share the engine's core; measured
        #: profiles fit it, GPU profiles have none)
        self.admission_s = float(getattr(latency, "admission_s", 0.0))
        self.recorder = recorder if recorder is not None else MetricsRecorder()
        capacity = cfg.kv_capacity_tokens or latency.kv_capacity_tokens(cfg.gpu_memory_utilization)
        self.block_size = cfg.block_size
        # vLLM keeps block 0 as its null block
        blocks = capacity // cfg.block_size - 1
        if blocks < 1:
            raise ComemInputError(
                f"engine '{cfg.name}': a KV cache of {capacity} tokens holds no"
                f" {cfg.block_size}-token block besides vLLM's null block"
            )
        self.kv = KVCache(blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.kv,
            SchedulerConfig(
                max_num_batched_tokens=cfg.max_num_batched_tokens,
                max_num_seqs=cfg.max_num_seqs,
                enable_prefix_caching=cfg.enable_prefix_caching,
                reserve_full_prompt=cfg.scheduler_reserve_full_isl,
            ),
            lazy=cfg.stepping != "iteration",
        )
        self._wake: simpy.Event | None = None  # the idle engine waits on it
        self._in_run = False  # a run is in flight: a submission interrupts it
        self._ids = 0
        self.process = env.process(self._run())

    # -- state ------------------------------------------------------------------------
    @property
    def total_blocks(self) -> int:
        return self.kv.total_blocks

    @property
    def kv_used_blocks(self) -> int:
        """Blocks referenced by running requests."""
        return self.kv.used_blocks

    @property
    def evictable_blocks(self) -> int:
        """Unreferenced blocks that are still prefix-cache entries."""
        return self.kv.cached_free_blocks

    @property
    def free_blocks(self) -> int:
        """Unreferenced blocks that are no cache entry."""
        return self.kv.queue_blocks - self.kv.cached_free_blocks

    @property
    def running(self) -> list[SchedSequence]:
        """Running requests in admission order (a snapshot; in event stepping the token
        counts of plain decoders are brought up to date only when they finish)."""
        sched = self.scheduler
        return sorted([*sched.running, *sched.group], key=lambda s: s.run_seq)

    @property
    def waiting(self) -> Any:
        return self.scheduler.waiting

    @property
    def preemptions(self) -> int:
        return self.scheduler.preemptions

    @property
    def iterations(self) -> int:
        return self.scheduler.iterations

    def check_invariants(self) -> None:
        """Assert the block accounting is consistent (tests call this; cheap enough)."""
        self.scheduler.check_invariants()

    # -- public API -------------------------------------------------------------------
    def submit(
        self,
        prompt_tokens: int,
        output_tokens: int,
        stream: Stream | None = None,
        tag: Any = None,
    ) -> Request:
        """Queue a request now. Its ``done`` event always fires (check ``status``)."""
        cfg = self.config
        if prompt_tokens < 1 or output_tokens < 1:
            raise ComemInputError(
                f"engine '{cfg.name}': a request needs >= 1 prompt and >= 1 output"
                f" token, got {prompt_tokens} and {output_tokens}"
            )
        req = Request(self, self._ids, int(prompt_tokens), int(output_tokens), stream, tag)
        self._ids += 1
        if prompt_tokens + 1 > cfg.max_model_len:
            self._reject(req, f"prompt of {prompt_tokens} tokens exceeds max_model_len")
            return req
        # vLLM stops generation at max_model_len
        req.output_tokens = min(req.output_tokens, cfg.max_model_len - req.prompt_tokens)
        need = self.kv.blocks_for(req.prompt_tokens + req.output_tokens - 1)
        if need > self.kv.total_blocks:
            self._reject(req, f"needs {need} KV blocks, the cache holds {self.kv.total_blocks}")
            return req
        if self.request_overhead_s > 0:
            self.env.process(self._enqueue_after(req, self.request_overhead_s))
        else:
            self._enqueue(req)
        return req

    def _enqueue(self, req: Request) -> None:
        self.scheduler.add(req)
        if self._in_run:
            self._in_run = False
            self.process.interrupt()
        elif self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _enqueue_after(self, req: Request, delay: float) -> Generator[simpy.Event, Any, None]:
        """A fixed per-request cost outside the iteration loop (HTTP, tokenization),
        measured on live servers (:mod:`calibration.measured`)."""
        yield self.env.timeout(delay)
        self._enqueue(req)

    # -- request lifecycle ----------------------------------------------------------------
    def _record(self, req: Request) -> None:
        gen = req.generated
        tpot = (req.finished_s - req.first_token_s) / (gen - 1) if gen > 1 else math.nan
        self.recorder.add_request(
            (
                self.config.name,
                req.id,
                req.tag,
                req.status,
                req.reason,
                req.prompt_tokens,
                gen,
                req.arrival_s,
                req.admitted_s,
                req.first_token_s,
                req.finished_s,
                req.admitted_s - req.arrival_s,
                req.first_token_s - req.arrival_s,
                tpot,
                req.finished_s - req.arrival_s,
                req.preemptions,
                req.cached_tokens,
            )
        )

    def _reject(self, req: Request, reason: str) -> None:
        req.status = "rejected"
        req.reason = reason
        req.finished_s = self.env.now
        self._record(req)
        if req._done is not None:
            req._done.succeed(req)

    def _fire(self, events: list[Event]) -> bool:
        now = self.env.now
        for seq, what in events:
            req: Request = seq  # type: ignore[assignment]
            if what == "first_token":
                req.first_token_s = now
                if req._first_token is not None:
                    req._first_token.succeed(req)
            else:
                req.finished_s = now
                self._record(req)
                if req._done is not None:
                    req._done.succeed(req)
        return bool(events)

    def _record_step(self, start: float, iterations: int, decode: int, chunks: list[int]) -> None:
        if not self.config.record_iterations:
            return
        kv = self.kv
        self.recorder.iterations.append(
            (
                self.config.name,
                start,
                self.env.now - start,
                iterations,
                decode,
                len(chunks),
                sum(chunks),
                self.scheduler.num_running,
                len(self.scheduler.waiting),
                kv.used_blocks,
                kv.cached_free_blocks,
                kv.total_blocks,
            )
        )

    # -- stepping ---------------------------------------------------------------------
    def _price(self, step: Step) -> float:
        duration = self.latency.iteration_time_of(
            step.num_decode, step.decode_kv_total, step.prefill_new, step.prefill_cached
        )
        if step.admitted and self.admission_s:
            duration += self.admission_s * len(step.admitted)
        return duration

    def _one_iteration(self, step: Step) -> Generator[simpy.Event, Any, bool]:
        env = self.env
        start = env.now
        if not step.entries and not step.group_decodes:
            raise RuntimeError(f"engine '{self.config.name}': no progress possible")
        for seq in step.admitted:
            req: Request = seq  # type: ignore[assignment]
            req.admitted_s = start
            if req._admitted is not None:
                req._admitted.succeed(req)
        duration = self._price(step)
        yield env.timeout(duration)
        fired = self._fire(self.scheduler.apply(step))
        self._record_step(start, 1, step.num_decode, step.prefill_new)
        rec = self.recorder
        if rec.itl_samples:
            rec.add_itl(duration, step.sampled - step.first_samples)
            rec.itl_after_preemption += step.resumed_samples
        return fired

    def _run_times(self, run: Run) -> np.ndarray:
        """End times of the run's iterations, relative to its start."""
        m, b, chunk = run.iterations, run.num_decode, run.chunk
        kv0, cached0 = run.decode_kv_total0, run.prefill_cached0
        if m <= SCALAR_RUN_LIMIT:  # numpy's per-call cost exceeds the loop's
            price = self.latency.iteration_time_of
            news = [chunk] if chunk else []
            acc = 0.0
            ends = []
            for j in range(m):
                acc += price(b, kv0 + b * j, news, [cached0 + chunk * j] if chunk else [])
                ends.append(acc)
            return np.asarray(ends)
        return np.cumsum(self.latency.steady_iteration_times(b, kv0, chunk, cached0, m))

    def _run_iterations(self, run: Run) -> Generator[simpy.Event, Any, bool]:
        env = self.env
        ends = self._run_times(run)
        start = env.now
        done = run.iterations
        self._in_run = True
        try:
            yield env.timeout(float(ends[-1]))
        except simpy.Interrupt:
            # a submission arrived: stop at the end of the iteration in flight
            k = min(int(np.searchsorted(ends, env.now - start, side="left")), done - 1)
            done = k + 1
            yield env.timeout(max(0.0, start + float(ends[k]) - env.now))
        self._in_run = False
        fired = self._fire(self.scheduler.apply_run(run, done))
        chunks = [run.chunk] * done if run.chunk else []
        self._record_step(start, done, run.num_decode, chunks)
        if self.recorder.itl_samples and run.num_decode:
            self.recorder.add_itl(ends[:done], run.num_decode)
        return fired

    def _run(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        sched = self.scheduler
        while True:
            if sched.idle:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            plan = sched.next(MAX_RUN_ITERATIONS)
            if isinstance(plan, Run):
                fired = yield from self._run_iterations(plan)
            else:
                fired = yield from self._one_iteration(plan)
            if fired:
                # let processes woken at this instant submit before the next schedule
                yield env.timeout(0)
