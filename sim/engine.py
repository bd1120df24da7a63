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
iteration-stepped engine would see it. Two engines sharing GPUs (:class:`SharedGpus`),
which iteration stepping alternates one iteration each, run joint runs: the holder's run
and the rest of the queued engine's, interleaved and priced together, cut at the first
end of either run or at the iteration in flight when either gets a submission.
Results equal iteration stepping exactly in every count and to floating-point rounding
in times (``tests/test_engine.py``, ``tests/test_deployment.py``,
``benchmarks/bench_stepping.py``).
"""

from __future__ import annotations

import gc
import math
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

import numpy as np
import simpy

from calibration.errors import ComemInputError
from calibration.kv_cache import KVCache, OffloadTier, Stream, StreamSpace
from calibration.scheduler import (
    MAX_RUN_ITERATIONS,
    Event,
    Run,
    Scheduler,
    SchedulerConfig,
    Step,
)
from calibration.scheduler import Sequence as SchedSequence
from calibration.spec_decode import check_speculative, spec_iteration_time
from sim.config import EngineConfig
from sim.metrics import MetricsRecorder
from sim.rows import IterationRow, RequestRow

__all__ = [
    "AnyEngine",
    "Engine",
    "IterationLatency",
    "LockstepReplicas",
    "ReplicatedEngine",
    "Request",
    "SharedGpus",
    "Stream",
    "StreamSpace",
    "build_engines",
    "simulation_gc",
]

#: runs up to this many iterations are priced by a plain loop (numpy's per-call cost
#: exceeds the loop's below it)
SCALAR_RUN_LIMIT = 4


#: the garbage collector's first threshold while a simulation runs (Python's default: 700)
SIMULATION_GC_THRESHOLD = 50_000


@contextmanager
def simulation_gc() -> Iterator[None]:
    """Fewer and cheaper garbage collections while a simulation runs (about a fifth of
    a 256-agent run's time went to them): what exists now (modules, the scenario) is
    frozen out of the collections, and the youngest generation is collected after
    50,000 allocations instead of 700. Cycles are still collected; nothing a simulation
    computes depends on when."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(SIMULATION_GC_THRESHOLD, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


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


def _label(cfg: EngineConfig) -> str:
    return "engine" if cfg.name == "engine" else f"engine '{cfg.name}'"


def engine_error_bands(cfg: EngineConfig) -> dict[str, Any]:
    """The cross-validated error bands of the calibration ``cfg``'s engine prices with
    (:mod:`calibration.uncertainty`): its profile's framework fit's; {} for a measured
    profile or a GPU without an embedded one (then no interval is claimed)."""
    from calibration.measured import load_profile
    from calibration.profile import Profile, default_profile
    from calibration.registry import get_gpu

    if cfg.profile:
        profile = load_profile(cfg.profile)
        return profile.framework_bands() if isinstance(profile, Profile) else {}
    try:
        return default_profile(get_gpu(cfg.gpu).name, cfg.dtype).framework_bands()
    except ComemInputError:
        return {}


def engine_latency(cfg: EngineConfig) -> IterationLatency:
    """The latency model an engine of ``cfg`` prices its iterations with: its profile's
    (a measured one, or kernel fits for its gpu and dtype) or the embedded default.
    Built once per configuration and process (a model is not changed once built; its
    tables are filled on first use): the check of a scenario's engines builds them, and
    the simulations, in this process or in workers forked from it, reuse them."""
    return _engine_latency_cached(cfg.model_copy(update={"name": "engine"}))


@lru_cache(maxsize=64)
def _engine_latency_cached(cfg: EngineConfig) -> IterationLatency:
    from calibration.measured import MeasuredLatency, MeasuredProfile, load_profile

    profile = load_profile(cfg.profile) if cfg.profile else None
    if isinstance(profile, MeasuredProfile):
        return MeasuredLatency(profile)
    from calibration.latency import LatencyModel

    return LatencyModel(
        cfg.model,
        cfg.gpu,
        cfg.tp,
        cfg.dtype,
        profile=profile,
        expert_parallel=cfg.enable_expert_parallel,
        kv_cache_dtype=cfg.kv_cache_dtype,
        fp8_gemm=cfg.fp8_gemm,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        max_num_seqs=cfg.max_num_seqs,
        data_parallel_size=cfg.data_parallel_size,
        async_scheduling=cfg.async_scheduling,
    )


class KVGeometry(NamedTuple):
    """An engine's KV cache in the simulator's blocks (``block_size`` tokens of every
    layer that keeps all tokens): how many there are, and how many each running request
    holds whatever its length (hybrid models' linear states and sliding windows)."""

    block_size: int
    total_blocks: int
    request_blocks: int
    #: the model has linear-attention (GDN) layers
    linear: bool


def kv_geometry(cfg: EngineConfig, latency: IterationLatency) -> KVGeometry:
    """The KV cache of an engine of ``cfg`` as vLLM lays it out
    (:mod:`calibration.kv_layout`; vLLM keeps block 0 as its null block). A latency model
    without a layout (a measured profile) gets ``block_size`` and no constant part."""
    if cfg.num_speculative_tokens:
        model = getattr(latency, "model", None)
        if model is None or not hasattr(latency, "linear_time"):
            raise ComemInputError(
                f"{_label(cfg)}: num_speculative_tokens: speculative decoding is priced from"
                " the kernel-fitted latency model, not a measured profile"
            )
        check_speculative(model, cfg.num_speculative_tokens, cfg.spec_acceptance_rate, _label(cfg))
    block, state, linear = cfg.block_size, 0, False
    layout_for = getattr(latency, "kv_layout_for", None)
    lay = None
    if layout_for is not None:
        lay = layout_for(cfg.block_size)
        block, state, linear = lay.block_size, lay.request_state_blocks(), lay.linear_groups > 0
    capacity = cfg.kv_capacity_tokens or latency.kv_capacity_tokens(cfg.gpu_memory_utilization)
    if cfg.num_speculative_tokens and lay is not None:
        if not cfg.kv_capacity_tokens:
            capacity = _with_mtp_layers(capacity, lay, latency)
        # vLLM's MambaManager keeps num_speculative_blocks (k) more states per linear group
        state += -(-lay.linear_groups * cfg.num_speculative_tokens // lay.token_groups)
    blocks = capacity // block - 1
    if blocks < 1:
        raise ComemInputError(
            f"{_label(cfg)}: a KV cache of {capacity} tokens holds no"
            f" {block}-token block besides vLLM's null block"
        )
    if state and cfg.kv_offloading_size is not None:
        raise ComemInputError(
            f"{_label(cfg)}: kv_offloading_size with a hybrid model (linear-attention or"
            " sliding-window layers): vLLM's offloading connector disables the hybrid KV-cache"
            " manager for it, which is not modelled"
        )
    if state + 1 > blocks:
        raise ComemInputError(
            f"{_label(cfg)}: one request's constant KV part ({state} blocks of {block}"
            f" tokens: linear states, sliding windows) fills the {blocks}-block cache"
        )
    return KVGeometry(block, blocks, state, linear)


def _with_mtp_layers(capacity: int, lay: Any, latency: Any) -> int:
    """Tokens the cache holds once the MTP modules' attention layers keep their KV too (vLLM
    allocates the drafter's layers from the same pool): each token costs one more layer's
    bytes per module. (The modules' weights, about one decoder layer each, are not
    subtracted.)"""
    per_layer = lay.page_bytes / lay.block_size
    bpt = lay.bytes_per_token
    return int(capacity * bpt // (bpt + latency.model.mtp_layers * per_layer))


def kv_blocks(cfg: EngineConfig, latency: IterationLatency) -> int:
    """KV blocks of an engine of ``cfg`` (vLLM keeps block 0 as its null block)."""
    return kv_geometry(cfg, latency).total_blocks


def check_engine(cfg: EngineConfig) -> None:
    """Everything :class:`Engine` would refuse at construction, without a simulation:
    the model, GPU, dtype and tp, the profile, whether the weights fit, the KV cache."""
    _check_engine_cached(cfg.model_copy(update={"name": "engine"}))


@lru_cache(maxsize=256)
def _check_engine_cached(cfg: EngineConfig) -> None:
    kv_blocks(cfg, engine_latency(cfg))


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
        self._last_token_s: dict[SchedSequence, float] = {}
        #: server time per newly admitted request, charged to the admitting iteration
        #: (HTTP parsing and tokenization that share the engine's core; measured
        #: profiles fit it, GPU profiles have none)
        self.admission_s = float(getattr(latency, "admission_s", 0.0))
        self.recorder = recorder if recorder is not None else MetricsRecorder()
        geo = kv_geometry(cfg, latency)
        self.block_size = geo.block_size
        self.kv = KVCache(geo.total_blocks, geo.block_size, cfg.enable_prefix_caching)
        self.offload = self._offload_tier(cfg, latency, geo.block_size)
        self.scheduler = Scheduler(
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
            lazy=cfg.stepping != "iteration",
            offload=self.offload,
        )
        self._wake: simpy.Event | None = None  # the idle engine waits on it
        self._in_run = False  # a run is in flight: a submission interrupts it
        #: the rest of a run cut short to give the shared GPUs to the other engine: what
        #: this engine runs next, until a submission changes its scheduler's state
        self._parked: Run | None = None
        #: a submission arrived since the engine last planned (its run's rest is stale)
        self._stale = False
        if gpus is not None:
            gpus.members += 1
        self._ids = 0
        self.process = env.process(self._run()) if driver is None else None

    @staticmethod
    def _offload_tier(cfg: EngineConfig, latency: Any, block_size: int) -> OffloadTier | None:
        """The CPU tier of ``--kv-offloading-size`` GiB (over all GPUs of the engine)."""
        if cfg.kv_offloading_size is None:
            return None
        per_gpu = getattr(latency, "kv_bytes_per_token", None)
        if per_gpu is None:
            raise ComemInputError(
                f"engine '{cfg.name}': CPU KV offloading needs a latency model that knows the"
                " KV bytes per token (a kernel-fitted profile, not a measured one)"
            )
        block_bytes_per_gpu = per_gpu * block_size
        capacity = int(cfg.kv_offloading_size * 2**30 // (block_bytes_per_gpu * cfg.tp))
        if capacity < 1:
            raise ComemInputError(
                f"engine '{cfg.name}': kv_offloading_size {cfg.kv_offloading_size} GiB holds"
                " no KV block"
            )
        load_s = block_bytes_per_gpu / (cfg.kv_offloading_bandwidth_GBps * 1e9)
        return OffloadTier(capacity, block_size, load_s + cfg.kv_offloading_copy_overhead_s)

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
                f"{_label(cfg)}: a request needs >= 1 prompt and >= 1 output"
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
    def _price(self, step: Step) -> float:
        k = self.config.num_speculative_tokens
        if k:  # the verify pass's drafts and the MTP drafter after every forward
            duration = spec_iteration_time(
                self.latency,
                step.num_decode,
                step.decode_kv_total,
                step.prefill_new,
                step.prefill_cached,
                step.spec_tokens,
                step.spec_seqs,
                k,
            )
        else:
            duration = self.latency.iteration_time_of(
                step.num_decode, step.decode_kv_total, step.prefill_new, step.prefill_cached
            )
        if step.admitted and self.admission_s:
            duration += self.admission_s * len(step.admitted)
        return duration

    def _one_iteration(self, step: Step) -> Generator[simpy.Event, Any, bool]:
        env = self.env
        start = env.now
        for seq in step.admitted:
            req: Request = seq  # type: ignore[assignment]
            req.admitted_s = start
            if req._admitted is not None:
                req._admitted.succeed(req)
        rec = self.recorder
        if rec.itl_samples:
            for seq in step.preempted:
                if seq.has_first_token:
                    # its last token came at the end of the iteration before (a running
                    # decode is scheduled every iteration); kept over a second preemption
                    self._last_token_s.setdefault(seq, start)
        duration = self._price(step)
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

    def _scalar_durations(self, run: Run, lo: int, hi: int) -> list[float]:
        """Durations of the run's iterations ``lo`` to ``hi - 1``, priced one by one."""
        b, chunk = run.num_decode, run.chunk
        kv0, cached0 = run.decode_kv_total0, run.prefill_cached0
        price = self.latency.iteration_time_of
        news = [chunk] if chunk else []
        return [
            price(b, kv0 + b * j, news, [cached0 + chunk * j] if chunk else [])
            for j in range(lo, hi)
        ]

    def _turn_durations(self, run: Run, n: int) -> Any:
        """Durations of the run's first ``n`` iterations, each priced as the first of what
        is left of the run would be (:meth:`_run_times`: vectorized while more than
        ``SCALAR_RUN_LIMIT`` are left, one by one after)."""
        vec = min(n, run.iterations - SCALAR_RUN_LIMIT)
        if vec <= 0:
            return self._scalar_durations(run, 0, n)
        head = self.latency.steady_iteration_times(
            run.num_decode, run.decode_kv_total0, run.chunk, run.prefill_cached0, vec
        )
        if vec == n:
            return head
        return np.concatenate([head, self._scalar_durations(run, vec, n)])

    @staticmethod
    def _rest(run: Run, done: int, full: int) -> Run | None:
        """What is left of a run of ``full`` iterations after its first ``done``."""
        if done >= full:
            return None
        d, chunk = run.num_decode, run.chunk
        return Run(
            full - done,
            d,
            run.decode_kv_total0 + d * done,
            run.prefiller,
            chunk,
            run.prefill_cached0 + chunk * done,
            None,
            run.bound,
        )

    def _run_iterations(self, run: Run) -> Generator[simpy.Event, Any, bool]:
        env = self.env
        full = run.iterations
        start = env.now
        cut = None
        if self.gpus is not None and self.gpus.queue:
            # another engine waits for the shared GPUs: one iteration, then its turn
            # (priced alone, as the first of the whole run would be)
            cut = 0
            ends = np.asarray(self._turn_durations(run, 1), dtype=float)
        else:
            ends = self._run_times(run)
            ready = self.scheduler.next_load_ready()
            if ready is not None and start + ends[-1] >= ready:
                # a CPU load completes: the iteration after the one in flight admits it
                cut = int(np.searchsorted(start + ends, ready, side="left"))
        if cut is not None and cut + 1 < run.iterations:
            ends = ends[: cut + 1]
            run.iterations = cut + 1
            run.allocations = None
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
            self.recorder.add_itl(ends[:done].copy(), run.num_decode, start)
        if self.gpus is not None and not self._stale and self.offload is None:
            self._parked = self._rest(run, done, full)
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
        acc[1::2] = self._turn_durations(run, a_max)
        acc[2::2] = other._turn_durations(rest, b_max)
        times = np.cumsum(acc)  # start, then each turn's end: the sums SimPy would make
        last = len(times) - 2  # index of the last turn
        self._in_run = True
        gpus.joint = self
        try:
            yield env.timeout(_delay_to(start, float(times[last + 1])))
        except simpy.Interrupt:
            k = int(np.searchsorted(times[1:], env.now, side="left"))
            last = min(k, last)
            yield env.timeout(_delay_to(env.now, float(times[last + 1])))
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
            tail = self._rest(run, n - 1, run.iterations)
            assert tail is not None
            run = tail
        fired |= self._fire(sched.apply_run(run, 1))
        chunks = [run.chunk] if run.chunk else []
        self._record_step(float(starts[n - 1]), 1, run.num_decode, chunks, float(ends[n - 1]))
        return fired, self._rest(run, 1, run.iterations)

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
            if isinstance(plan, Step) and not plan.entries and not plan.group_decodes:
                if gpus is not None:
                    gpus.release(self)
                ready = sched.next_load_ready()
                if ready is None:
                    raise RuntimeError(f"engine '{self.config.name}': no progress possible")
                # only CPU loads in flight: wait for the first (or a submission)
                self._wake = env.event()
                yield env.timeout(max(0.0, ready - env.now)) | self._wake
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


def _delay_to(now: float, t: float) -> float:
    """The delay that takes SimPy's clock from ``now`` to exactly ``t`` (``now + (t - now)``
    can miss ``t`` by a rounding step)."""
    d = max(0.0, t - now)
    for _ in range(4):
        got = now + d
        if got == t:
            break
        d = max(0.0, math.nextafter(d, math.inf if got < t else -math.inf))
    return d


#: what a queued engine's ``acquire`` event gives when the holder ran its iterations
#: in a joint run and fired their events: it goes on as if it had released the GPUs
SERVED = object()


class SharedGpus:
    """GPUs shared by several engines (``gpu_group``: a memory model co-located with the
    agent). Two vLLM processes on one GPU without MPS time-slice it; this model lets
    their iterations take turns, first come first served: an engine holds the GPUs for
    one step, and a run of iterations is cut at the iteration in flight when another
    engine of the group asks for them. With two engines in event stepping, the holder
    runs its run and the rest of the queued engine's (:meth:`Engine._joint_run`) as one
    step. Memory is split by each engine's own ``gpu_memory_utilization``."""

    def __init__(self, env: simpy.Environment, name: str) -> None:
        self.env = env
        self.name = name
        self.holder: Engine | None = None
        self.queue: deque[tuple[Engine, simpy.Event]] = deque()
        #: engines in the group (each counts itself in)
        self.members = 0
        #: the holder while it runs a joint run (its iterations and the queued engine's)
        self.joint: Engine | None = None

    def acquire(self, engine: Engine) -> simpy.Event:
        ev = self.env.event()
        if self.holder is None:
            self.holder = engine
            ev.succeed()
            return ev
        self.queue.append((engine, ev))
        holder = self.holder
        if holder._in_run and holder.process is not None:  # stop its run in flight
            holder._in_run = False
            holder.process.interrupt()
        return ev

    def partner(self, engine: Engine) -> Engine | None:
        """The engine ``engine`` (the holder) can run a joint run with: the other of a
        two-engine group, queued, with the rest of a run parked (event stepping, no CPU
        KV tier, no per-token ITL samples)."""
        if self.members != 2 or len(self.queue) != 1:
            return None
        other = self.queue[0][0]
        if other._parked is None or engine.offload is not None:
            return None
        if engine.recorder.itl_samples or other.recorder.itl_samples:
            return None
        return other

    def serve(self, engine: Engine) -> None:
        """Take the queued ``engine`` out of the queue: the holder ran its iterations."""
        other, ev = self.queue.popleft()
        assert other is engine
        ev.succeed(SERVED)

    def stop_joint(self) -> None:
        """A queued engine got a submission: stop a joint run at the iteration in flight."""
        eng = self.joint
        if eng is not None and eng._in_run and eng.process is not None:
            eng._in_run = False
            eng.process.interrupt()

    def release(self, engine: Engine) -> None:
        if self.holder is not engine:
            raise RuntimeError(f"GPU group {self.name}: released by an engine not holding it")
        if self.queue:
            nxt, ev = self.queue.popleft()
            self.holder = nxt
            ev.succeed()
        else:
            self.holder = None


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
    def total_blocks(self) -> int:
        return sum(e.total_blocks for e in self.replicas)

    @property
    def block_size(self) -> int:
        return self.replicas[0].block_size

    @property
    def kv_used_blocks(self) -> int:
        return sum(e.kv_used_blocks for e in self.replicas)

    @property
    def running(self) -> list[SchedSequence]:
        return [r for e in self.replicas for r in e.running]

    @property
    def waiting(self) -> list[SchedSequence]:
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
            if all(isinstance(p, Run) for p in busy):
                m = min(p.iterations for p in busy)  # type: ignore[union-attr]
                per_rank = []
                for e, p in zip(reps, plans, strict=True):
                    if p is None:
                        per_rank.append(np.full(m, self._dummy_s(e)))
                    else:
                        assert isinstance(p, Run)
                        p.iterations, p.allocations = m, None
                        per_rank.append(np.diff(e._run_times(p), prepend=0.0))
                ends = np.cumsum(np.max(np.vstack(per_rank), axis=0))
                done = m
                self._in_run = True
                try:
                    yield env.timeout(float(ends[-1]))
                except simpy.Interrupt:
                    k = min(int(np.searchsorted(ends, env.now - start, side="left")), m - 1)
                    done = k + 1
                    yield env.timeout(max(0.0, start + float(ends[k]) - env.now))
                self._in_run = False
                fired = False
                for e, p in zip(reps, plans, strict=True):
                    if p is not None:
                        assert isinstance(p, Run)
                        fired |= e._fire(e.scheduler.apply_run(p, done))
                        chunks = [p.chunk] * done if p.chunk else []
                        e._record_step(start, done, p.num_decode, chunks)
            else:
                durations = []
                for e, p in zip(reps, plans, strict=True):
                    if p is None:
                        durations.append(self._dummy_s(e))
                    elif isinstance(p, Run):
                        p.iterations, p.allocations = 1, None
                        durations.append(float(e._run_times(p)[0]))
                    else:
                        for seq in p.admitted:
                            req: Request = seq  # type: ignore[assignment]
                            req.admitted_s = start
                            if req._admitted is not None:
                                req._admitted.succeed(req)
                        durations.append(e._price(p))
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
            if fired:
                yield env.timeout(0)


#: what agents and loads submit to: one engine, or data-parallel replicas of it
AnyEngine = Engine | ReplicatedEngine


def build_engines(
    env: simpy.Environment,
    configs: dict[str, EngineConfig],
    latency: dict[str, IterationLatency] | None = None,
    recorder: MetricsRecorder | None = None,
) -> dict[str, AnyEngine]:
    """The engines of one simulation, by role: replicas where ``data_parallel_size`` > 1,
    shared GPUs where engines name the same ``gpu_group`` (checked: same GPU type and
    TP, memory fractions adding up to at most 1)."""
    latency = latency or {}
    groups: dict[str, list[tuple[str, EngineConfig]]] = {}
    for role, cfg in configs.items():
        if cfg.gpu_group is not None:
            groups.setdefault(cfg.gpu_group, []).append((role, cfg))
    shared: dict[str, SharedGpus] = {}
    for name, members in groups.items():
        if len(members) < 2:
            continue
        first = members[0][1]
        for _, cfg in members[1:]:
            if (cfg.gpu, cfg.tp, cfg.data_parallel_size) != (
                first.gpu,
                first.tp,
                first.data_parallel_size,
            ):
                raise ComemInputError(
                    f"gpu_group '{name}': engines '{first.name}' and '{cfg.name}' share GPUs"
                    " but differ in gpu, tp or data_parallel_size"
                )
        total = sum(cfg.gpu_memory_utilization for _, cfg in members)
        if total > 1.0 + 1e-9:
            roles = ", ".join(f"{cfg.name} {cfg.gpu_memory_utilization}" for _, cfg in members)
            raise ComemInputError(
                f"gpu_group '{name}': gpu_memory_utilization adds up to {total:.2f} > 1"
                f" ({roles}); give each engine its share"
            )
        if any(cfg.data_parallel_size > 1 for _, cfg in members):
            raise ComemInputError(
                f"gpu_group '{name}': co-located engines with data parallelism are not modelled"
            )
        shared[name] = SharedGpus(env, name)
    engines: dict[str, AnyEngine] = {}
    for role, cfg in configs.items():
        if cfg.data_parallel_size > 1:
            from calibration.registry import get_model

            # vLLM steps the ranks of a MoE model in lockstep; a dense model's run alone
            group = LockstepReplicas if get_model(cfg.model).is_moe else ReplicatedEngine
            engines[role] = group(env, cfg, latency.get(role), recorder)
        else:
            gpus = shared.get(cfg.gpu_group) if cfg.gpu_group is not None else None
            engines[role] = Engine(env, cfg, latency.get(role), recorder, gpus)
    return engines
