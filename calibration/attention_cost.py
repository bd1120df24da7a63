"""Attention's cost per iteration: decode (generation) and prefill (context) attention.

Unlike the token-proportional ops (:mod:`calibration.token_ops`), attention depends on the
KV each sequence reads, so it is priced from the batch's aggregates: the decodes' count
and KV total, and each prefill chunk's new tokens and cached prefix. Every attention part
of the model (:mod:`calibration.attention_parts`: full, sliding, MLA, DSA, GDN) is priced
by its own fitted op, and the sums are tabulated once per model, made non-decreasing and
interpolated (the simulator prices hundreds of thousands of iterations).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from calibration.attention_parts import AttentionPart
from calibration.opmodels import (
    GENERATION_ATTENTION,
    OpFit,
    context_flops_bytes,
    query_tiles,
    smooth_max,
)
from calibration.opmodels import predict as op_predict
from calibration.profile import op_form

DECODE_TABLE_B = 2048
#: Mean-KV-per-sequence knots of the decode-attention table: 1 .. 2^20 tokens, ratio ~1.1.
DECODE_TABLE_KV_KNOTS = np.unique(np.round(np.geomspace(1.0, 2.0**20, 150)))
#: Prefill-chunk table knots: new tokens 1 .. 2^20, cached prefix 0 .. 2^22 (ratio ~1.08).
PREFILL_TABLE_Q_KNOTS = np.unique(np.round(np.geomspace(1.0, 2.0**20, 180)))
PREFILL_TABLE_PREFIX_KNOTS = np.concatenate(
    [[0.0], np.unique(np.round(np.geomspace(1.0, 2.0**22, 200)))]
)

#: An attention part with the profile op that prices it.
PricedPart = tuple[AttentionPart, OpFit]


def _knot_weight(knots: list[float], x: float) -> tuple[int, float]:
    """The interval of ``knots`` holding ``x`` and ``x``'s linear weight in it (clamped)."""
    i = min(max(bisect.bisect_right(knots, x) - 1, 0), len(knots) - 2)
    return i, min((x - knots[i]) / (knots[i + 1] - knots[i]), 1.0)


class AttentionCost:
    """Decode and prefill attention (all layers) of one model on one GPU.

    ``decode_parts`` / ``prefill_parts``: the attention parts decode and prefill run, each
    with its fitted op. ``cache_bytes``: bytes per cached value (1 for an fp8 KV cache).
    ``context_t0``: the context-attention op's launch floor, paid once per layer and part
    by every iteration with a prefill chunk.
    """

    def __init__(
        self,
        decode_parts: list[PricedPart],
        prefill_parts: list[PricedPart],
        cache_bytes: float,
        context_t0: float,
    ) -> None:
        self.decode_parts = decode_parts
        self.prefill_parts = prefill_parts
        self.cache_bytes = cache_bytes
        self.context_t0 = context_t0
        #: KV per decode sequence beyond which no part reads more (every part windowed or
        #: constant: a uniform sliding window), None when some part reads all of it
        caps = [p.window for p, _ in decode_parts if p.state_tokens is None]
        self.decode_cap: int | None = None
        if caps and all(c is not None for c in caps):
            self.decode_cap = max(c for c in caps if c is not None)
        #: context-attention launches per iteration (one per layer and part)
        self.context_launches = sum(part.layers for part, _ in prefill_parts)
        self._dec_knots: list[float] = DECODE_TABLE_KV_KNOTS.tolist()
        self._dec_rows: list[list[float]] = []
        self.decode_grid = np.zeros((0, 0))
        self._pre_q: list[float] = PREFILL_TABLE_Q_KNOTS.tolist()
        self._pre_c: list[float] = PREFILL_TABLE_PREFIX_KNOTS.tolist()
        self._pre_rows: list[list[float]] = []
        self.prefill_grid = np.zeros((0, 0))

    # -- decode -------------------------------------------------------------------------
    def decode_op(self, batch_size: np.ndarray | int, kv_total: np.ndarray | int) -> np.ndarray:
        """The fitted generation-attention op model (all layers), evaluated directly.

        Every attention part reads its share of the batch's KV: all of it, at most
        ``window`` tokens per sequence (sliding layers, DSA's top-k; exact when every
        sequence is on one side of the window and an overestimate, never below the true
        cost, when they straddle it), or a constant state per sequence.
        """
        b = np.asarray(batch_size, dtype=float)
        t = np.sum(self.decode_op_parts(b, kv_total), axis=0)
        return np.where(b > 0, t, 0.0)

    def decode_op_parts(
        self, batch_size: np.ndarray | float, kv_total: np.ndarray | float
    ) -> list[np.ndarray]:
        """:meth:`decode_op` of each attention part (all its layers), unsummed."""
        b_safe = np.maximum(np.asarray(batch_size, dtype=float), 1.0)
        kv_all = np.maximum(np.asarray(kv_total, dtype=float), b_safe)
        shape = np.ones_like(kv_all * b_safe)
        times = []
        for part, fit in self.decode_parts:
            if part.state_tokens is not None:
                kv = b_safe * part.state_tokens
            elif part.window is not None:
                kv = np.minimum(kv_all, b_safe * part.window)
            else:
                kv = kv_all
            feats = {
                "batch": b_safe * shape,
                "kv_total": kv * shape,
                "nq": shape * part.nq,
                "nkv": shape * part.nkv,
                "hd": shape * part.hd,
                "kv_bytes": shape * (part.kv_bytes or self.cache_bytes),
            }
            times.append(part.layers * op_predict(GENERATION_ATTENTION, fit, feats))
        return times

    def ensure_decode_table(self) -> None:
        """Tabulate decode attention on (every B up to DECODE_TABLE_B, mean KV per sequence).

        The fitted op model's lattice can make it dip slightly as KV grows; the table is
        made non-decreasing along both axes, and linear interpolation in the mean KV
        between knots (ratio 1.1) keeps it so: more KV, or one more sequence at least as
        long as the mean, never costs less. (At a fixed *total* KV, more sequences can be
        faster: more parallel work units. That is measured, and kept.) Beyond
        DECODE_TABLE_B the op model is evaluated directly.
        """
        if self._dec_rows:
            return
        b = np.arange(1, DECODE_TABLE_B + 1, dtype=float)[:, None]
        mean = DECODE_TABLE_KV_KNOTS[None, :]
        grid = self.decode_op(np.broadcast_to(b, (b.size, mean.size)), b * mean)
        grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=1), axis=0)
        self.decode_grid = grid
        self._dec_rows = grid.tolist()

    def decode_time(self, batch_size: np.ndarray | int, kv_total: np.ndarray | int) -> np.ndarray:
        """Generation attention (all layers) for ``batch_size`` decodes over ``kv_total``."""
        self.ensure_decode_table()
        b = np.asarray(batch_size, dtype=np.int64)
        kv = np.asarray(kv_total, dtype=float)
        if self.decode_cap is not None:
            kv = np.minimum(kv, b * float(self.decode_cap))
        kv = np.maximum(kv, np.maximum(b, 1))
        mean = kv / np.maximum(b, 1)
        knots = DECODE_TABLE_KV_KNOTS
        j = np.clip(np.searchsorted(knots, mean, side="right") - 1, 0, knots.size - 2)
        w = np.minimum((mean - knots[j]) / (knots[j + 1] - knots[j]), 1.0)
        row = np.clip(b, 1, DECODE_TABLE_B) - 1
        lo = self.decode_grid[row, j]
        hi = self.decode_grid[row, j + 1]
        t = lo + w * (hi - lo)
        big = b > DECODE_TABLE_B
        if np.any(big):
            t = np.where(big, self.decode_op(b, kv), t)
        return np.where(b > 0, t, 0.0)

    def decode_scalar(self, batch_size: int, kv_total: int) -> float:
        """Plain-Python :meth:`decode_time` for one iteration."""
        if batch_size <= 0:
            return 0.0
        if batch_size > DECODE_TABLE_B:
            return float(self.decode_op(batch_size, kv_total))
        self.ensure_decode_table()
        if self.decode_cap is not None:
            kv_total = min(kv_total, batch_size * self.decode_cap)
        mean = max(kv_total, batch_size) / batch_size
        j, w = _knot_weight(self._dec_knots, mean)
        row = self._dec_rows[batch_size - 1]
        return row[j] + w * (row[j + 1] - row[j])

    def steady_decode(self, num_decode: int, kv_total0: int, j: np.ndarray) -> np.ndarray:
        """Decode attention of iterations ``j`` (0, 1, ...) of ``num_decode`` decodes whose
        KV total starts at ``kv_total0`` and grows by ``num_decode`` per iteration."""
        if num_decode <= DECODE_TABLE_B:
            # one table row (the batch size is fixed), linear in the mean KV per sequence:
            # np.interp is the scalar path's interpolation, vectorized
            self.ensure_decode_table()
            kv = kv_total0 + num_decode * j
            if self.decode_cap is not None:
                kv = np.minimum(kv, float(num_decode * self.decode_cap))
            mean = kv / num_decode
            return np.interp(mean, DECODE_TABLE_KV_KNOTS, self.decode_grid[num_decode - 1])
        kv = kv_total0 + num_decode * j.astype(np.int64)
        return self.decode_time(np.full(j.size, num_decode, dtype=np.int64), kv)

    # -- prefill ------------------------------------------------------------------------
    def prefill_chunk_op(self, new: np.ndarray, cached: np.ndarray) -> np.ndarray:
        """The fitted context-attention op per chunk (all layers, launch floor excluded)."""
        return np.sum(self.prefill_chunk_parts(new, cached), axis=0)

    def prefill_chunk_parts(self, new: np.ndarray, cached: np.ndarray) -> list[np.ndarray]:
        """:meth:`prefill_chunk_op` of each attention part (all its layers), unsummed."""
        q = np.asarray(new, dtype=float)
        c = np.asarray(cached, dtype=float)
        times = []
        for part, fit in self.prefill_parts:
            if op_form(fit.op).name == "generation_attention":  # GDN: batch 1 per chunk
                times.append(part.layers * _linear_chunk(part, fit, q, c))
                continue
            p, hw = fit.params, fit.hw
            flops, moved = context_flops_bytes(q, c, part.nq, part.nkv, part.hd, part.window)
            tiles = query_tiles(q, part.nq, part.nkv)
            t_compute = flops / (hw["peak_flops"] * p["eff_compute"])
            t_compute = t_compute + tiles * p["tau"] / hw["sm_count"]
            w = smooth_max(t_compute, moved / (hw["hbm_Bps"] * p["eff_memory"]), p["p"])
            if fit.lattice is not None:
                coords = np.log2(np.maximum(q, 1.0)), np.full_like(q, np.log2(part.nq))
                w = w * fit.lattice.factor(*coords)
            times.append(part.layers * w)
        return times

    def ensure_prefill_table(self) -> None:
        """Tabulate the per-chunk cost over (new tokens, cached prefix), monotone in both.

        As for decode: the lattice may dip between knots; the table is made
        non-decreasing along both axes and bilinear interpolation keeps it so, so a longer
        chunk, a longer prefix or one more chunk never costs less.
        """
        if self._pre_rows:
            return
        q = PREFILL_TABLE_Q_KNOTS[:, None]
        c = PREFILL_TABLE_PREFIX_KNOTS[None, :]
        grid = self.prefill_chunk_op(
            np.broadcast_to(q, (q.size, c.size)), np.broadcast_to(c, (q.size, c.size))
        )
        grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=1), axis=0)
        self.prefill_grid = grid
        self._pre_rows = grid.tolist()

    def prefill_scalar(self, new: Sequence[int], cached: Sequence[int]) -> float:
        """Context attention (all layers) of one iteration's prefill chunks (one launch)."""
        if not new:
            return 0.0
        self.ensure_prefill_table()
        qk, ck, rows = self._pre_q, self._pre_c, self._pre_rows
        total = self.context_launches * self.context_t0
        for q_int, c_int in zip(new, cached, strict=True):
            q, c = float(q_int), float(c_int)
            i, wq = _knot_weight(qk, q)
            j, wc = _knot_weight(ck, c)
            lo, hi = rows[i], rows[i + 1]
            a = lo[j] + wc * (lo[j + 1] - lo[j])
            b = hi[j] + wc * (hi[j + 1] - hi[j])
            total += a + wq * (b - a)
        return total

    def steady_prefill(self, chunk: int, cached0: int, j: np.ndarray) -> np.ndarray:
        """Context attention of iterations ``j`` (0, 1, ...) each with one prefill chunk of
        ``chunk`` tokens over a prefix starting at ``cached0`` and growing by ``chunk``."""
        self.ensure_prefill_table()
        i, wq = _knot_weight(self._pre_q, float(chunk))
        grid = self.prefill_grid
        row = grid[i] + wq * (grid[i + 1] - grid[i])
        return self.context_launches * self.context_t0 + np.interp(
            cached0 + chunk * j, PREFILL_TABLE_PREFIX_KNOTS, row
        )


def _linear_chunk(part: AttentionPart, fit: OpFit, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """One layer of a linear-attention (GDN) part over prefill chunks of ``q`` new tokens:
    priced as a batch-1 generation step over the chunk, less the op's launch floor."""
    ones = np.ones_like(q + c)
    feats = {
        "batch": ones,
        "kv_total": np.maximum(q, 1.0) * ones,
        "nq": ones * part.nq,
        "nkv": ones * part.nkv,
        "hd": ones * part.hd,
        "kv_bytes": ones * (part.kv_bytes or 2.0),
    }
    w = op_predict(GENERATION_ATTENTION, fit, feats) - fit.params["t0"]
    return np.maximum(w, 0.0)
