"""Static-batch predictor: vLLM ``benchmark_latency`` semantics.

One batch of B identical prompts of ``input_len`` tokens arrives at t = 0; each request
generates ``output_len`` tokens. The project's one vLLM V1 scheduler
(:mod:`engine.scheduler`: running requests first, then waiting ones FCFS, under
the token budget and ``max_num_seqs``; chunked prefill; paged KV in 16-token blocks;
recompute preemption of the newest running request when a block cannot be allocated)
replays the batch and each iteration is charged its latency-model time. The schedule
does not depend on time, so it is computed once and priced vectorized; this also makes
the overhead fit a linear least-squares problem (see :mod:`calibration.e2e_overhead`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calibration import limits
from calibration.errors import ComemInputError
from calibration.latency import LatencyModel
from engine.kv_cache import KVCache
from engine.request import Run, Sequence, Step
from engine.scheduler import SchedulerConfig
from engine.stepping import EventStepper

BLOCK_SIZE = 16

#: vLLM V1 defaults for the offline ``LLM`` class on GPUs with >= 70 GiB (H100, H200):
#: max_num_batched_tokens 16384, max_num_seqs 1024 (vllm/engine/arg_utils.py,
#: EngineArgs default-by-usage-context table).
DEFAULT_STATIC_BUDGET = 16384
DEFAULT_STATIC_MAX_SEQS = 1024


@dataclass
class StaticSchedule:
    """Per-iteration aggregates of a static batch run."""

    decode_batch: list[np.ndarray] = field(default_factory=list)
    decode_kv_total: list[np.ndarray] = field(default_factory=list)
    chunk_iterations: list[tuple[int, int, np.ndarray, np.ndarray]] = field(default_factory=list)
    preemptions: int = 0

    @property
    def iterations(self) -> int:
        return int(sum(a.size for a in self.decode_batch)) + len(self.chunk_iterations)


def schedule_static_batch(
    batch: int,
    input_len: int,
    output_len: int,
    kv_capacity_tokens: int,
    max_num_batched_tokens: int = DEFAULT_STATIC_BUDGET,
    max_num_seqs: int = DEFAULT_STATIC_MAX_SEQS,
    reserve_full_prompt: bool = True,
    block_size: int = BLOCK_SIZE,
    request_blocks: int = 0,
) -> StaticSchedule:
    """Replay the scheduler (:mod:`engine.scheduler`, the engine's own) on a batch of
    identical prompts arriving together; decode-only iterations come back in bulk, mixed
    ones one by one.

    ``chunk_iterations`` entries are ``(n_decode, decode_kv_total, chunk_new, chunk_cached)``.
    The prompts share no prefix (``benchmark_latency`` draws random token ids), and
    ``kv_capacity_tokens`` includes vLLM's null block, as the engine's does;
    ``block_size`` and ``request_blocks`` are the engine's KV geometry (a hybrid model's
    raised block and each request's constant part, :func:`sim.kv_geometry.kv_geometry`).
    """
    for name, value in (
        ("batch", batch),
        ("input length", input_len),
        ("output length", output_len),
        ("max_num_batched_tokens", max_num_batched_tokens),
        ("max_num_seqs", max_num_seqs),
    ):
        if value < 1:
            raise ComemInputError(f"{name} must be >= 1, got {value}")
    total_blocks = kv_capacity_tokens // block_size - 1
    need_blocks = -(-(input_len + output_len - 1) // block_size) + request_blocks
    if need_blocks > total_blocks:
        raise ComemInputError(
            f"one request of {input_len}+{output_len} tokens needs {need_blocks} KV blocks,"
            f" the cache holds {total_blocks}"
        )
    limits.check(limits.SEQUENCES, batch, f"static batch of {batch}")
    # requests run in waves of what the KV cache and max_num_seqs admit; each wave
    # takes its prefill chunks and one iteration per output token
    at_once = max(1, min(batch, max_num_seqs, total_blocks // max(1, need_blocks)))
    waves = -(-batch // at_once)
    limits.check(
        limits.STATIC_ITERATIONS,
        waves * (output_len + -(-at_once * input_len // max_num_batched_tokens)),
        f"static batch of {batch} x {input_len}+{output_len} tokens (in waves of {at_once})",
    )
    kv = KVCache(total_blocks, block_size, enable_prefix_caching=False)
    sched = EventStepper(
        kv,
        SchedulerConfig(
            max_num_batched_tokens=int(max_num_batched_tokens),
            max_num_seqs=int(max_num_seqs),
            enable_prefix_caching=False,
            reserve_full_prompt=reserve_full_prompt,
            request_blocks=request_blocks,
        ),
    )
    for i in range(batch):
        sched.add(Sequence(i, int(input_len), int(output_len)))
    out = StaticSchedule()
    finished = 0
    while finished < batch:
        plan = sched.next()
        if isinstance(plan, Run):
            _add_run(out, plan)
            events = sched.apply_run(plan, plan.iterations)
        else:
            if plan.schedules_nothing:
                raise ComemInputError("static batch cannot make progress (KV cache too small)")
            _add_step(out, plan)
            events = sched.apply(plan)
        finished += sum(1 for _, what in events if what == "finished")
    out.preemptions = sched.preemptions
    return out


def _add_run(out: StaticSchedule, run: Run) -> None:
    """A run's iterations: decode-only ones in bulk, those with a prompt chunk one by one."""
    m, b = run.iterations, run.num_decode
    if run.chunk:
        for j in range(m):
            out.chunk_iterations.append(
                (
                    b,
                    run.decode_kv_total0 + b * j,
                    np.array([run.chunk], np.int64),
                    np.array([run.prefill_cached0 + run.chunk * j], np.int64),
                )
            )
    else:
        out.decode_batch.append(np.full(m, b, np.int64))
        out.decode_kv_total.append(run.decode_kv_total0 + b * np.arange(m, dtype=np.int64))


def _add_step(out: StaticSchedule, step: Step) -> None:
    """One scheduled iteration's aggregates."""
    if step.prefill_new:
        out.chunk_iterations.append(
            (
                step.num_decode,
                step.decode_kv_total,
                np.array(step.prefill_new, np.int64),
                np.array(step.prefill_cached, np.int64),
            )
        )
    else:
        out.decode_batch.append(np.array([step.num_decode], np.int64))
        out.decode_kv_total.append(np.array([step.decode_kv_total], np.int64))


@dataclass(frozen=True)
class StaticCost:
    """A priced schedule: kernel time, iteration count, sequence-iterations and the sum
    over iterations of the KV tokens the scheduled sequences hold (what the framework
    overhead terms multiply)."""

    kernel_s: float
    iterations: int
    sequence_iterations: int
    preemptions: int
    kv_token_iterations: float = 0.0
    #: per iteration: GPU seconds, scheduled sequences and KV tokens held (what
    #: :meth:`latency_with` needs: asynchronous scheduling prices each iteration as a max)
    gpu_s: np.ndarray | None = field(default=None, compare=False, repr=False)
    seqs: np.ndarray | None = field(default=None, compare=False, repr=False)
    held: np.ndarray | None = field(default=None, compare=False, repr=False)

    def latency_with(self, lm: LatencyModel) -> float:
        """Seconds of the whole schedule with ``lm``'s framework overhead, iteration by
        iteration (:meth:`LatencyModel.with_framework`: overlapped under asynchronous
        scheduling, added without)."""
        if self.gpu_s is None or self.seqs is None:
            raise ValueError("StaticCost was built without per-iteration times")
        held = self.held if lm.overhead_per_kv_token_s and self.held is not None else 0
        return float(lm.with_framework(self.gpu_s, self.seqs, held).sum())

    def latency(
        self,
        per_iteration_s: float,
        per_sequence_s: float,
        kernel_scale: float = 1.0,
        per_kv_token_s: float = 0.0,
    ) -> float:
        return (
            kernel_scale * self.kernel_s
            + per_iteration_s * self.iterations
            + per_sequence_s * self.sequence_iterations
            + per_kv_token_s * self.kv_token_iterations
        )


def price_schedule(lm: LatencyModel, sched: StaticSchedule) -> StaticCost:
    """Kernel seconds of a schedule, excluding the framework overhead term."""
    gpu: list[np.ndarray] = []
    seqs: list[np.ndarray] = []
    held: list[np.ndarray] = []
    if sched.decode_batch:
        b = np.concatenate(sched.decode_batch)
        kv = np.concatenate(sched.decode_kv_total)
        gpu.append(lm.linear_time(b) + lm.decode_attention_time(b, kv) + lm.lm_head_tabulated(b))
        seqs.append(b.astype(float))
        held.append(kv.astype(float))
    chunks = sched.chunk_iterations
    if chunks:
        gpu.append(
            np.array([lm.kernel_time_of(n, k, new.tolist(), c.tolist()) for n, k, new, c in chunks])
        )
        seqs.append(np.array([float(n + new.size) for n, _, new, _ in chunks]))
        held.append(np.array([float(kv + new.sum() + c.sum()) for _, kv, new, c in chunks]))
    g = np.concatenate(gpu) if gpu else np.zeros(0)
    s = np.concatenate(seqs) if seqs else np.zeros(0)
    h = np.concatenate(held) if held else np.zeros(0)
    return StaticCost(
        float(g.sum()), sched.iterations, int(s.sum()), sched.preemptions, float(h.sum()), g, s, h
    )


def static_cost(
    lm: LatencyModel,
    batch: int,
    input_len: int,
    output_len: int,
    max_num_batched_tokens: int = DEFAULT_STATIC_BUDGET,
    max_num_seqs: int = DEFAULT_STATIC_MAX_SEQS,
    gpu_memory_utilization: float = 0.9,
) -> StaticCost:
    # the KV cache as the engine lays it out (hybrid models: vLLM's raised block and
    # each request's linear states / sliding windows, :func:`sim.kv_geometry.kv_geometry`)
    lay = lm.kv_layout_for(BLOCK_SIZE)
    sched = schedule_static_batch(
        batch,
        input_len,
        output_len,
        lm.kv_capacity_tokens(gpu_memory_utilization, max_num_batched_tokens, max_num_seqs),
        max_num_batched_tokens,
        max_num_seqs,
        block_size=lay.block_size,
        request_blocks=lay.request_state_blocks(),
    )
    return price_schedule(lm, sched)


def predict_static_latency(
    lm: LatencyModel,
    batch: int,
    input_len: int,
    output_len: int,
    max_num_batched_tokens: int = DEFAULT_STATIC_BUDGET,
    max_num_seqs: int = DEFAULT_STATIC_MAX_SEQS,
    gpu_memory_utilization: float = 0.9,
) -> float:
    """Predicted seconds for the whole static batch (prefill + all decode steps)."""
    cost = static_cost(
        lm,
        batch,
        input_len,
        output_len,
        max_num_batched_tokens,
        max_num_seqs,
        gpu_memory_utilization,
    )
    if not lm.include_overhead:
        return cost.kernel_s
    return cost.latency_with(lm)
