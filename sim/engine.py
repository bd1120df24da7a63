"""A vLLM-like serving engine in SimPy: the V1 scheduler over a paged, prefix-cached KV
cache, priced by the latency model, stepped from event to event.

One :class:`Engine` is one model instance on ``tp`` GPUs. What an iteration schedules,
which request is preempted, what the prefix cache keeps: all of it is
:mod:`engine` (the V1 scheduler over the paged KV cache, :mod:`engine.stepping`),
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
iteration-stepped engine would see it. Two engines sharing GPUs
(:class:`sim.shared_gpus.SharedGpus`), which iteration stepping alternates one iteration
each, run joint runs: the holder's run and the rest of the queued engine's, interleaved
and priced together, cut at the first end of either run or at the iteration in flight
when either gets a submission.
Results equal iteration stepping exactly in every count and to floating-point rounding
in times (``tests/sim/test_engine.py``, ``tests/sim/test_deployment.py``,
``benchmarks/bench_stepping.py``).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from calibration.errors import ComemInputError
from engine.kv_cache import KVCache, Stream
from engine.request import Event, Run, Sequence, Step
from engine.runs import MAX_RUN_ITERATIONS
from engine.scheduler import SchedulerConfig
from engine.stepping import EventStepper
from sim.config import EngineConfig
from sim.engine_latency import IterationLatency, engine_label, engine_latency
from sim.kv_geometry import kv_geometry, offload_tier
from sim.metrics import MetricsRecorder
from sim.pricing import run_end_times, run_rest, step_time, turn_durations
from sim.request import Request
from sim.rows import IterationRow, RequestRow
from sim.shared_gpus import SERVED, delay_to

if TYPE_CHECKING:
    from sim.data_parallel import LockstepReplicas
    from sim.shared_gpus import SharedGpus


def is_empty(plan: Any) -> bool:
    """A plan that schedules nothing (every waiting request waits for KV blocks or a load)."""
    return isinstance(plan, Step) and plan.schedules_nothing


def idle_wait(
    name: str, schedulers: list[Any], plans: list[Any], retried_at: float | None, now: float
) -> tuple[float, float | None]:
    """How long an engine (or a lockstep group of replicas) whose plans schedule nothing
    waits: until the first CPU load still in flight completes; once, 0 s, after a step that
    preempted (such a step admits no one; the next may). A load already done waits for GPU
    blocks, not for the copy: with none in flight nothing can move, and waiting 0 s again
    and again would stop the simulated clock, so that is one line. Returns (seconds,
    the instant of the last retry)."""
    ready = min((r for r in (s.next_load_after_now() for s in schedulers) if r is not None),
                default=None)  # fmt: skip
    if ready is None and any(getattr(p, "preempted", None) for p in plans) and retried_at != now:
        return 0.0, now
    if ready is None:
        held = sum(s.loads_held() for s in schedulers)
        raise ComemInputError(
            f"engine '{name}': no progress possible: nothing runs and the first waiting request"
            f" cannot get the KV blocks it needs ({held} requests loaded from the CPU tier hold"
            " blocks and wait for more); a larger KV cache (more GPUs, fp8) avoids it"
        )
    return max(0.0, ready - now), retried_at


def wait_out_run(
    env: simpy.Environment, start: float, ends: np.ndarray, iterations: int
) -> Generator[simpy.Event, Any, int]:
    """Wait out a run of ``iterations`` iterations that started at ``start`` and whose
    iterations end ``ends`` seconds after it, as one SimPy timeout; a submission
    (a :class:`simpy.Interrupt`) stops it at the end of the iteration in flight. Returns
    how many iterations ran."""
    try:
        yield env.timeout(float(ends[-1]))
    except simpy.Interrupt:
        # a submission arrived: stop at the end of the iteration in flight
        k = min(int(np.searchsorted(ends, env.now - start, side="left")), iterations - 1)
        yield env.timeout(max(0.0, start + float(ends[k]) - env.now))
        return k + 1
    return iterations


class Engine:
    """A simulated serving engine. ``submit`` requests; SimPy events report progress."""

    def __init__(
        self,
        env: simpy.Environment,
        config: EngineConfig | None = None,
        latency: IterationLatency | None = None,
        recorder: MetricsRecorder | None = None,
        gpus: SharedGpus | None = None,
        driver: LockstepReplicas | None = None,
    ) -> None:
        self.env = env
        self.config = config if config is not None else EngineConfig()
        cfg = self.config
        #: the GPUs this engine shares with others (co-location), if any
        self.gpus = gpus
        #: a data-parallel group that steps this engine with its peers (MoE models)
        self.driver = driver
        if latency is None:
            latency = engine_latency(cfg)
        self.latency = latency
        overhead = cfg.request_overhead_s
        if overhead is None:
            overhead = float(getattr(latency, "request_overhead_s", 0.0))
        self.request_overhead_s = overhead
        #: requests submitted that are still in their per-request overhead (not yet waiting)
        self.arriving = 0
        #: preempted requests' last token times, until they sample again (their ITL gap)
        self._last_token_s: dict[Sequence, float] = {}
        #: server time per newly admitted request, charged to the admitting iteration
        #: (HTTP parsing and tokenization that share the engine's core; measured
        #: profiles fit it, GPU profiles have none)
        self.admission_s = float(getattr(latency, "admission_s", 0.0))
        self.recorder = recorder if recorder is not None else MetricsRecorder()
        geo = kv_geometry(cfg, latency)
        self.block_size = geo.block_size
        self.kv = KVCache(geo.total_blocks, geo.block_size, cfg.enable_prefix_caching)
        self.offload = offload_tier(cfg, latency, geo.block_size)
        self.scheduler = EventStepper(
            self.kv,
            SchedulerConfig(
                max_num_batched_tokens=cfg.max_num_batched_tokens,
                max_num_seqs=cfg.max_num_seqs,
                enable_prefix_caching=cfg.enable_prefix_caching,
                reserve_full_prompt=cfg.scheduler_reserve_full_isl,
                request_blocks=geo.request_blocks,
                num_speculative_tokens=cfg.num_speculative_tokens,
                spec_acceptance_rate=cfg.spec_acceptance_rate,
            ),
            offload=self.offload,
            event_stepping=cfg.stepping != "iteration",
        )
        self._wake: simpy.Event | None = None  # the idle engine waits on it
        self._in_run = False  # a run is in flight: a submission interrupts it
        #: the rest of a run cut short to give the shared GPUs to the other engine: what
        #: this engine runs next, until a submission changes its scheduler's state
        self._parked: Run | None = None
        #: a submission arrived since the engine last planned (its run's rest is stale)
        self._stale = False
        #: when the engine last retried a step that preempted and scheduled nothing (a
        #: step that preempts admits no one; the next one may)
        self._retried_at: float | None = None
        if gpus is not None:
            gpus.members += 1
        self._ids = 0
        #: requests whose output was cut to fit max_model_len (vLLM stops them there)
        self.length_capped = 0
        self.process = env.process(self._run()) if driver is None else None

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
    def running(self) -> list[Sequence]:
        """Running requests in admission order (a snapshot; in event stepping the token
        counts of plain decoders are brought up to date only when they finish)."""
        return self.scheduler.running_in_order()

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
                f"{engine_label(cfg)}: a request needs >= 1 prompt and >= 1 output"
                f" token, got {prompt_tokens} and {output_tokens}"
            )
        req = Request(self, self._ids, int(prompt_tokens), int(output_tokens), stream, tag)
        self._ids += 1
        if prompt_tokens + 1 > cfg.max_model_len:
            self._reject(req, f"prompt of {prompt_tokens} tokens exceeds max_model_len")
            return req
        # vLLM stops generation at max_model_len
        if req.prompt_tokens + req.output_tokens > cfg.max_model_len:
            req.output_tokens = cfg.max_model_len - req.prompt_tokens
            self.length_capped += 1
        need = self.kv.blocks_for(req.prompt_tokens + req.output_tokens - 1)
        need += self.scheduler.config.request_blocks
        if need > self.kv.total_blocks:
            self._reject(req, f"needs {need} KV blocks, the cache holds {self.kv.total_blocks}")
            return req
        if self.request_overhead_s > 0:
            self.arriving += 1
            self.env.process(self._enqueue_after(req, self.request_overhead_s))
        else:
            self._enqueue(req)
        return req

    def _enqueue(self, req: Request) -> None:
        self.scheduler.add(req)
        self._parked = None
        self._stale = True
        if self.driver is not None:
            self.driver.notify()
        elif self._in_run:
            self._in_run = False
            assert self.process is not None
            self.process.interrupt()
        elif self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        elif self.gpus is not None:  # queued: stop a joint run that prices our iterations
            self.gpus.stop_joint()

    def _enqueue_after(self, req: Request, delay: float) -> Generator[simpy.Event, Any, None]:
        """A fixed per-request cost outside the iteration loop (HTTP, tokenization),
        measured on live servers (:mod:`calibration.measured`)."""
        yield self.env.timeout(delay)
        self.arriving -= 1
        self._enqueue(req)

    # -- request lifecycle ----------------------------------------------------------------
    def _record(self, req: Request) -> None:
        gen = req.generated
        tpot = (req.finished_s - req.first_token_s) / (gen - 1) if gen > 1 else math.nan
        self.recorder.add_request(
            RequestRow(
                engine=self.config.name,
                request_id=req.id,
                tag=req.tag,
                status=req.status,
                reason=req.reason,
                prompt_tokens=req.prompt_tokens,
                output_tokens=gen,
                arrival_s=req.arrival_s,
                admitted_s=req.admitted_s,
                first_token_s=req.first_token_s,
                finished_s=req.finished_s,
                queue_s=req.admitted_s - req.arrival_s,
                ttft_s=req.first_token_s - req.arrival_s,
                tpot_s=tpot,
                e2e_s=req.finished_s - req.arrival_s,
                preemptions=req.preemptions,
                cached_tokens=req.cached_tokens,
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

    def _record_step(
        self, start: float, iterations: int, decode: int, chunks: list[int], end: float = math.nan
    ) -> None:
        if not self.config.record_iterations:
            return
        kv = self.kv
        self.recorder.iterations.append(
            IterationRow(
                engine=self.config.name,
                start_s=start,
                duration_s=(self.env.now if end != end else end) - start,
                iterations=iterations,
                decode_seqs=decode,
                prefill_chunks=len(chunks),
                prefill_tokens=sum(chunks),
                running=self.scheduler.num_running,
                waiting=len(self.scheduler.waiting),
                kv_used_blocks=kv.used_blocks,
                kv_cached_blocks=kv.cached_free_blocks,
                kv_total_blocks=kv.total_blocks,
            )
        )

    # -- stepping ---------------------------------------------------------------------
    def step_time(self, step: Step) -> float:
        """How long one scheduled iteration takes on this engine."""
        return step_time(self.latency, step, self.config.num_speculative_tokens, self.admission_s)

    @staticmethod
    def mark_admitted(step: Step, start: float) -> None:
        """The requests ``step`` admits were admitted at ``start``."""
        for seq in step.admitted:
            req: Request = seq  # type: ignore[assignment]
            req.admitted_s = start
            if req._admitted is not None:
                req._admitted.succeed(req)

    def _one_iteration(self, step: Step) -> Generator[simpy.Event, Any, bool]:
        env = self.env
        start = env.now
        self.mark_admitted(step, start)
        rec = self.recorder
        if rec.itl_samples:
            for seq in step.preempted:
                if seq.has_first_token:
                    # its last token came at the end of the iteration before (a running
                    # decode is scheduled every iteration); kept over a second preemption
                    self._last_token_s.setdefault(seq, start)
        duration = self.step_time(step)
        yield env.timeout(duration)
        fired = self._fire(self.scheduler.apply(step))
        self._record_step(start, 1, step.num_decode, step.prefill_new)
        if rec.itl_samples:
            end = start + duration
            gaps = [end - self._last_token_s.pop(seq, start) for seq in step.resumed]
            rec.add_itl(duration, step.sampled - step.first_samples - len(gaps), start)
            rec.add_itl_gaps(gaps, end)
            rec.itl_after_preemption += len(gaps)
        return fired

    def _run_iterations(self, run: Run) -> Generator[simpy.Event, Any, bool]:
        env = self.env
        full = run.iterations
        start = env.now
        cut = None
        if self.gpus is not None and self.gpus.queue:
            # another engine waits for the shared GPUs: one iteration, then its turn
            # (priced alone, as the first of the whole run would be)
            cut = 0
            ends = np.asarray(turn_durations(self.latency, run, 1), dtype=float)
        else:
            ends = run_end_times(self.latency, run)
            ready = self.scheduler.next_load_ready()
            if ready is not None and start + ends[-1] >= ready:
                # a CPU load completes: the iteration after the one in flight admits it
                cut = int(np.searchsorted(start + ends, ready, side="left"))
        if cut is not None and cut + 1 < run.iterations:
            ends = ends[: cut + 1]
            run.iterations = cut + 1
            run.allocations = None
        self._in_run = True
        done = yield from wait_out_run(env, start, ends, run.iterations)
        self._in_run = False
        fired = self._fire(self.scheduler.apply_run(run, done))
        chunks = [run.chunk] * done if run.chunk else []
        self._record_step(start, done, run.num_decode, chunks)
        if self.recorder.itl_samples and run.num_decode:
            self.recorder.add_itl(ends[:done].copy(), run.num_decode, start)
        if self.gpus is not None and not self._stale and self.offload is None:
            self._parked = run_rest(run, done, full)
        return fired

    def _joint_run(self, run: Run, other: Engine) -> Generator[simpy.Event, Any, tuple[bool, bool]]:
        """Our run and the rest of ``other``'s taking turns on the shared GPUs, ours first,
        as one SimPy timeout: iteration stepping alternates the two engines' iterations one
        by one, and neither engine's iterations depend on the other's. Stops at the end of
        either run, or at the iteration in flight when either engine gets a submission.
        Each iteration is priced, and its end time summed, as when the engines took turns
        one iteration at a time. Returns whether the engine whose iteration came last fired
        events, and whether it is us."""
        env = self.env
        gpus = self.gpus
        rest = other._parked
        assert gpus is not None and rest is not None
        a_max = min(run.iterations, rest.iterations)  # ours
        b_max = min(run.iterations - 1, rest.iterations)  # the other's, one behind
        start = env.now
        acc = np.empty(a_max + b_max + 1)
        acc[0] = start
        acc[1::2] = turn_durations(self.latency, run, a_max)
        acc[2::2] = turn_durations(other.latency, rest, b_max)
        times = np.cumsum(acc)  # start, then each turn's end: the sums SimPy would make
        last = len(times) - 2  # index of the last turn
        self._in_run = True
        gpus.joint = self
        try:
            yield env.timeout(delay_to(start, float(times[last + 1])))
        except simpy.Interrupt:
            k = int(np.searchsorted(times[1:], env.now, side="left"))
            last = min(k, last)
            yield env.timeout(delay_to(env.now, float(times[last + 1])))
        self._in_run = False
        gpus.joint = None
        a, b = last // 2 + 1, (last + 1) // 2
        fired, ours_rest = self._advance(run, a, times[0::2], times[1::2])
        if b:
            fired_other, rest_rest = other._advance(rest, b, times[1::2], times[2::2])
            fired |= fired_other
            if other._parked is rest:
                other._parked = rest_rest
        ours = last % 2 == 0
        if ours and not self._stale:
            self._parked = ours_rest
        return fired, ours

    def _advance(
        self, run: Run, n: int, starts: np.ndarray, ends: np.ndarray
    ) -> tuple[bool, Run | None]:
        """Apply the first ``n`` iterations of ``run`` that took turns on shared GPUs
        (``starts``, ``ends``: each one's times), recording the state before the last one
        and after it (as iteration stepping, whose rows hold the run's KV peak when its
        last iteration frees blocks). Returns whether events fired, and the run's rest."""
        sched = self.scheduler
        fired = False
        if n > 1:
            fired = self._fire(sched.apply_run(run, n - 1))
            chunks = [run.chunk] * (n - 1) if run.chunk else []
            self._record_step(float(starts[0]), n - 1, run.num_decode, chunks, float(ends[n - 2]))
            tail = run_rest(run, n - 1, run.iterations)
            assert tail is not None
            run = tail
        fired |= self._fire(sched.apply_run(run, 1))
        chunks = [run.chunk] if run.chunk else []
        self._record_step(float(starts[n - 1]), 1, run.num_decode, chunks, float(ends[n - 1]))
        return fired, run_rest(run, 1, run.iterations)

    def _run(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        sched = self.scheduler
        gpus = self.gpus
        holding = False  # we keep the shared GPUs after a joint run the other engine ended
        while True:
            if sched.idle:
                if holding:
                    assert gpus is not None
                    gpus.release(self)
                    holding = False
                sched.settle()
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            # the shared GPUs are ours for the next step (SERVED: the other engine ran our
            # iterations and fired their events; we go on as if we had released them)
            if gpus is not None and not holding and (yield gpus.acquire(self)) is SERVED:
                continue
            holding = False
            sched.now = env.now
            self._parked = None
            self._stale = False
            plan = sched.next(MAX_RUN_ITERATIONS)
            if is_empty(plan):
                if gpus is not None:
                    gpus.release(self)
                wait, self._retried_at = idle_wait(
                    self.config.name, [sched], [plan], self._retried_at, env.now
                )
                # only CPU loads in flight: wait for the first (or a submission)
                self._wake = env.event()
                yield env.timeout(wait) | self._wake
                self._wake = None
                continue
            other = gpus.partner(self) if gpus is not None and isinstance(plan, Run) else None
            if other is not None:
                assert gpus is not None and isinstance(plan, Run)
                fired, ours = yield from self._joint_run(plan, other)
                if not ours:
                    # as if the other engine released the GPUs to us after its iteration
                    holding = True
                    resume = env.timeout(0)
                    if fired:
                        gpus.serve(other)
                    yield resume
                    continue
            elif isinstance(plan, Run):
                fired = yield from self._run_iterations(plan)
            else:
                fired = yield from self._one_iteration(plan)
            if gpus is not None:
                gpus.release(self)
            if fired:
                # let processes woken at this instant submit before the next schedule
                yield env.timeout(0)
