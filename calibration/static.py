"""Static-batch predictor: vLLM ``benchmark_latency`` semantics.

One batch of B identical prompts of ``input_len`` tokens arrives at t = 0; each request
generates ``output_len`` tokens. We replay vLLM V1's scheduler at iteration granularity
(running requests first, then waiting ones FCFS, under the token budget and
``max_num_seqs``; chunked prefill; paged KV in 16-token blocks; recompute preemption
of the newest running request when a block cannot be allocated) and charge each
iteration its latency-model time. The schedule does not depend on time, so it is
computed once and priced vectorized; this also makes the overhead fit a linear
least-squares problem (see :mod:`calibration.fit`).

Request state is the pair (computed tokens c, sequence length L = input + generated):
an iteration schedules ``min(L - c, budget)`` tokens; when c reaches L a token is
sampled (L += 1). A decode is the case L - c = 1 with c > 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calibration.errors import ComemInputError
from calibration.latency import LatencyModel

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
) -> StaticSchedule:
    """Replay the scheduler; returns decode-only runs in bulk and mixed iterations one by one.

    ``chunk_iterations`` entries are ``(n_decode, decode_kv_total, chunk_new, chunk_cached)``.
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
    total_blocks = kv_capacity_tokens // BLOCK_SIZE
    need_blocks = -(-(input_len + output_len) // BLOCK_SIZE)
    if need_blocks > total_blocks:
        raise ComemInputError(
            f"one request of {input_len}+{output_len} tokens needs {need_blocks} KV blocks,"
            f" the cache holds {total_blocks}"
        )
    computed = np.zeros(batch, np.int64)
    length = np.full(batch, input_len, np.int64)
    held = np.zeros(batch, np.int64)
    waiting: list[int] = list(range(batch))
    running: list[int] = []
    free = total_blocks
    done = 0
    sched = StaticSchedule()

    while done < batch:
        # Bulk path: everyone running is decoding, nobody waits -> jump to the next
        # completion or the first block shortfall.
        if not waiting and running and all(length[r] - computed[r] == 1 for r in running):
            run = np.asarray(running)
            steps = int((input_len + output_len - length[run]).min())
            # blocks needed after d steps: ceil((c + d) / 16) per request; shrink d to fit
            c0 = computed[run]
            while steps > 1 and int((-(-(c0 + steps) // BLOCK_SIZE) - held[run]).sum()) > free:
                steps //= 2
            if steps >= 1 and int((-(-(c0 + steps) // BLOCK_SIZE) - held[run]).sum()) <= free:
                b = run.size
                kv0 = int((c0 + 1).sum())
                sched.decode_batch.append(np.full(steps, b, np.int64))
                sched.decode_kv_total.append(kv0 + b * np.arange(steps, dtype=np.int64))
                new_held = -(-(c0 + steps) // BLOCK_SIZE)
                free -= int((new_held - held[run]).sum())
                held[run] = new_held
                computed[run] += steps
                length[run] += steps
                for r in list(running):
                    if length[r] - input_len >= output_len:
                        running.remove(r)
                        free += int(held[r])
                        held[r] = 0
                        done += 1
                continue
        budget = max_num_batched_tokens
        scheduled: list[tuple[int, int]] = []
        preempted_now = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            n = min(int(length[r] - computed[r]), budget)
            want = -(-(int(computed[r]) + n) // BLOCK_SIZE) - int(held[r])
            while want > free:
                victim = running.pop()
                free += int(held[victim])
                held[victim] = 0
                computed[victim] = 0
                waiting.insert(0, victim)
                sched.preemptions += 1
                preempted_now = True
                if victim == r:
                    break
            if preempted_now and r not in running:
                break
            free -= want
            held[r] += want
            scheduled.append((r, n))
            budget -= n
            i += 1
        if not preempted_now:
            while waiting and budget > 0 and len(running) < max_num_seqs:
                r = waiting[0]
                n = min(int(length[r] - computed[r]), budget)
                want = -(-(int(computed[r]) + n) // BLOCK_SIZE) - int(held[r])
                if want > free:
                    break
                waiting.pop(0)
                running.append(r)
                free -= want
                held[r] += want
                scheduled.append((r, n))
                budget -= n
        if not scheduled:
            raise ComemInputError("static batch cannot make progress (KV cache too small)")
        dec = [
            (r, n)
            for r, n in scheduled
            if n == 1 and computed[r] > 0 and length[r] - computed[r] == 1
        ]
        chunks = [(r, n) for r, n in scheduled if (r, n) not in dec]
        n_dec = len(dec)
        kv_dec = int(sum(int(computed[r]) + 1 for r, _ in dec))
        if chunks:
            new = np.array([n for _, n in chunks], np.int64)
            cached = np.array([int(computed[r]) for r, _ in chunks], np.int64)
            sched.chunk_iterations.append((n_dec, kv_dec, new, cached))
        else:
            sched.decode_batch.append(np.array([n_dec], np.int64))
            sched.decode_kv_total.append(np.array([kv_dec], np.int64))
        for r, n in scheduled:
            computed[r] += n
            if computed[r] == length[r]:
                length[r] += 1
                if length[r] - input_len >= output_len:
                    running.remove(r)
                    free += int(held[r])
                    held[r] = 0
                    done += 1
    return sched


@dataclass(frozen=True)
class StaticCost:
    """A priced schedule: kernel time, iteration count and sequence-iterations."""

    kernel_s: float
    iterations: int
    sequence_iterations: int
    preemptions: int

    def latency(
        self, per_iteration_s: float, per_sequence_s: float, kernel_scale: float = 1.0
    ) -> float:
        return (
            kernel_scale * self.kernel_s
            + per_iteration_s * self.iterations
            + per_sequence_s * self.sequence_iterations
        )


def price_schedule(lm: LatencyModel, sched: StaticSchedule) -> StaticCost:
    """Kernel seconds of a schedule, excluding the framework overhead term."""
    kernel = 0.0
    seq_iters = 0
    if sched.decode_batch:
        b = np.concatenate(sched.decode_batch)
        kv = np.concatenate(sched.decode_kv_total)
        t = lm.linear_time(b) + lm.decode_attention_time(b, kv) + lm.lm_head_tabulated(b)
        kernel += float(t.sum())
        seq_iters += int(b.sum())
    for n_dec, kv_dec, new, cached in sched.chunk_iterations:
        kernel += lm.kernel_time_of(n_dec, kv_dec, new.tolist(), cached.tolist())
        seq_iters += n_dec + new.size
    return StaticCost(kernel, sched.iterations, seq_iters, sched.preemptions)


def static_cost(
    lm: LatencyModel,
    batch: int,
    input_len: int,
    output_len: int,
    max_num_batched_tokens: int = DEFAULT_STATIC_BUDGET,
    max_num_seqs: int = DEFAULT_STATIC_MAX_SEQS,
    gpu_memory_utilization: float = 0.9,
) -> StaticCost:
    sched = schedule_static_batch(
        batch,
        input_len,
        output_len,
        lm.kv_capacity_tokens(gpu_memory_utilization),
        max_num_batched_tokens,
        max_num_seqs,
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
    over = lm.profile.overhead if lm.include_overhead else {}
    return cost.latency(
        float(over.get("per_iteration_s", 0.0)), float(over.get("per_sequence_s", 0.0))
    )
