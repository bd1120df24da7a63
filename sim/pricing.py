"""What an engine's iterations cost: one scheduled iteration (:class:`engine.request.Step`)
or a run of identical ones (:class:`engine.request.Run`), priced by its latency model.

A run's iterations are priced in one vectorized call
(``IterationLatency.steady_iteration_times``) unless few are left: then one by one, as
the first of what is left would be, so a run cut anywhere is priced as iteration
stepping prices it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calibration.spec_decode import spec_iteration_time
from engine.request import Run, Step
from sim.engine_latency import IterationLatency

#: runs up to this many iterations are priced by a plain loop (numpy's per-call cost
#: exceeds the loop's below it)
SCALAR_RUN_LIMIT = 4


def step_time(latency: IterationLatency, step: Step, drafts: int, admission_s: float) -> float:
    """One iteration: its batch (with ``drafts``, the verify pass's drafts and the MTP
    drafter after every forward), and ``admission_s`` per newly admitted request."""
    if drafts:
        duration = spec_iteration_time(
            latency,
            step.num_decode,
            step.decode_kv_total,
            step.prefill_new,
            step.prefill_cached,
            step.spec_tokens,
            step.spec_seqs,
            drafts,
        )
    else:
        duration = latency.iteration_time_of(
            step.num_decode, step.decode_kv_total, step.prefill_new, step.prefill_cached
        )
    if step.admitted and admission_s:
        duration += admission_s * len(step.admitted)
    return duration


def run_end_times(latency: IterationLatency, run: Run) -> np.ndarray:
    """End times of the run's iterations, relative to its start."""
    m, b, chunk = run.iterations, run.num_decode, run.chunk
    kv0, cached0 = run.decode_kv_total0, run.prefill_cached0
    if m <= SCALAR_RUN_LIMIT:  # numpy's per-call cost exceeds the loop's
        price = latency.iteration_time_of
        news = [chunk] if chunk else []
        acc = 0.0
        ends = []
        for j in range(m):
            acc += price(b, kv0 + b * j, news, [cached0 + chunk * j] if chunk else [])
            ends.append(acc)
        return np.asarray(ends)
    return np.cumsum(latency.steady_iteration_times(b, kv0, chunk, cached0, m))


def _scalar_durations(latency: IterationLatency, run: Run, lo: int, hi: int) -> list[float]:
    """Durations of the run's iterations ``lo`` to ``hi - 1``, priced one by one."""
    b, chunk = run.num_decode, run.chunk
    kv0, cached0 = run.decode_kv_total0, run.prefill_cached0
    price = latency.iteration_time_of
    news = [chunk] if chunk else []
    return [
        price(b, kv0 + b * j, news, [cached0 + chunk * j] if chunk else []) for j in range(lo, hi)
    ]


def turn_durations(latency: IterationLatency, run: Run, n: int) -> Any:
    """Durations of the run's first ``n`` iterations, each priced as the first of what
    is left of the run would be (:func:`run_end_times`: vectorized while more than
    ``SCALAR_RUN_LIMIT`` are left, one by one after)."""
    vec = min(n, run.iterations - SCALAR_RUN_LIMIT)
    if vec <= 0:
        return _scalar_durations(latency, run, 0, n)
    head = latency.steady_iteration_times(
        run.num_decode, run.decode_kv_total0, run.chunk, run.prefill_cached0, vec
    )
    if vec == n:
        return head
    return np.concatenate([head, _scalar_durations(latency, run, vec, n)])


def run_rest(run: Run, done: int, full: int) -> Run | None:
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
