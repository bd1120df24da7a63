"""Linear surrogate of the composed latency model, for theory and fast paths.

``t = c0 + c1*N_tokens + c2*prefill_pairs + c3*B_decode + c4*KV_decoded`` per
(model, GPU, TP, dtype), fitted by non-negative relative least squares to the composed
model over a fixed, seeded design of realistic batches (decode-only, prefill-only,
mixed), and scored on a separate held-out design. Closed forms need linearity; the
report states what that costs in accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calibration.latency import Batch, LatencyModel


@dataclass(frozen=True)
class LinearSurrogate:
    """Coefficients (seconds per unit) and their error against the composed model."""

    c0: float
    c1: float
    c2: float
    c3: float
    c4: float
    mape: float
    max_rel_error: float
    p90_rel_error: float

    @property
    def coefficients(self) -> np.ndarray:
        return np.array([self.c0, self.c1, self.c2, self.c3, self.c4])

    def time(
        self,
        n_tokens: float | np.ndarray,
        prefill_pairs: float | np.ndarray,
        b_decode: float | np.ndarray,
        kv_decoded: float | np.ndarray,
    ) -> np.ndarray:
        return (
            self.c0
            + self.c1 * np.asarray(n_tokens, float)
            + self.c2 * np.asarray(prefill_pairs, float)
            + self.c3 * np.asarray(b_decode, float)
            + self.c4 * np.asarray(kv_decoded, float)
        )

    def batch_time(self, batch: Batch) -> float:
        return float(
            self.time(
                batch.num_tokens, batch.prefill_pairs, batch.num_decode, batch.decode_kv.sum()
            )
        )


def design_batches(
    rng: np.random.Generator,
    count: int,
    max_tokens: int = 8192,
    max_seqs: int = 256,
    max_kv: int = 65536,
) -> list[Batch]:
    """Realistic iteration mixes: a third decode-only, prefill-only and mixed each."""

    def log_uniform(lo: float, hi: float, size: int | None = None) -> np.ndarray:
        return np.exp(rng.uniform(np.log(lo), np.log(hi), size))

    batches = []
    for i in range(count):
        kind = i % 3
        decode = np.zeros(0, np.int64)
        new = np.zeros(0, np.int64)
        cached = np.zeros(0, np.int64)
        if kind in (0, 2):
            b = int(log_uniform(1, max_seqs))
            mean_kv = log_uniform(64, max_kv)
            decode = np.maximum(1, rng.poisson(mean_kv, b)).astype(np.int64)
        if kind in (1, 2):
            room = max_tokens - decode.size
            chunks = int(rng.integers(1, 4))
            new = np.maximum(1, log_uniform(16, max(17, room / chunks), chunks)).astype(np.int64)
            has_prefix = rng.random(chunks) < 0.6
            cached = np.where(has_prefix, log_uniform(16, max_kv, chunks), 0).astype(np.int64)
        batches.append(Batch(decode, new, cached))
    return batches


def _features(batches: list[Batch]) -> np.ndarray:
    return np.array(
        [
            [1.0, b.num_tokens, b.prefill_pairs, b.num_decode, float(b.decode_kv.sum())]
            for b in batches
        ]
    )


def fit_surrogate(
    lm: LatencyModel, samples: int = 600, holdout: int = 300, seed: int = 0
) -> LinearSurrogate:
    """Fit the linear surrogate to ``lm`` (deterministic for a given seed)."""
    rng = np.random.default_rng(seed)
    max_kv = max(256, min(65536, lm.kv_capacity_tokens() // 64))
    train = design_batches(rng, samples, max_kv=max_kv)
    test = design_batches(rng, holdout, max_kv=max_kv)
    x = _features(train)
    y = np.array([lm.iteration_time(b) for b in train])
    from scipy.optimize import nnls

    coef = nnls(x / y[:, None], np.ones_like(y))[0]
    xt = _features(test)
    yt = np.array([lm.iteration_time(b) for b in test])
    rel = np.abs(xt @ coef / yt - 1.0)
    c0, c1, c2, c3, c4 = (float(c) for c in coef)
    return LinearSurrogate(
        c0,
        c1,
        c2,
        c3,
        c4,
        mape=float(rel.mean()),
        max_rel_error=float(rel.max()),
        p90_rel_error=float(np.quantile(rel, 0.9)),
    )


class SurrogateLatency:
    """An engine latency model that *is* the linear surrogate (for exact theory checks).

    Implements what :class:`sim.engine.Engine` needs, like :class:`LatencyModel`: under
    it the simulator and the closed forms of ``theory/`` price the same iterations.
    """

    def __init__(self, surrogate: LinearSurrogate, kv_capacity_tokens: int = 1 << 30) -> None:
        self.s = surrogate
        self._capacity = int(kv_capacity_tokens)

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        return self._capacity

    def iteration_time_of(
        self,
        num_decode: int,
        decode_kv_total: int,
        prefill_new: Sequence[int] = (),
        prefill_cached: Sequence[int] = (),
    ) -> float:
        n = num_decode + sum(prefill_new)
        if n == 0:
            return 0.0
        pairs = sum(
            q * (c + (q + 1) / 2.0) for q, c in zip(prefill_new, prefill_cached, strict=True)
        )
        s = self.s
        return s.c0 + s.c1 * n + s.c2 * pairs + s.c3 * num_decode + s.c4 * decode_kv_total

    def steady_iteration_times(
        self, num_decode: int, kv_total0: int, chunk: int, cached0: int, steps: int
    ) -> np.ndarray:
        j = np.arange(steps, dtype=float)
        s = self.s
        n = num_decode + chunk
        if n == 0:
            return np.zeros(steps)
        cached = cached0 + chunk * j
        pairs = chunk * (cached + (chunk + 1) / 2.0)
        kv = kv_total0 + num_decode * j
        return s.c0 + s.c1 * n + s.c2 * pairs + s.c3 * num_decode + s.c4 * kv
