"""A small multiplicative correction surface on a log2 grid.

Each per-op model is a roofline (physics) times ``exp(lattice(log2 features))``. The
lattice absorbs kernel-selection effects (tile shapes, split-K, wave quantization)
that no compact formula captures, while the roofline keeps extrapolation sane: outside
the measured range only the physics scales. Values are fitted by ridge least squares on
log residuals, so knots without data stay at 0 (no correction).

Past the data the correction is held at its value at the data's edge (``data_range``),
not let decay to 0 between the last measured knot and the next: fitted on part of a
table and scored on the rest (longer prefills and KV caches, more tokens per GEMM,
experts sliced more ways), holding it extrapolates better in 21 of 24 op/GPU/dtype cases
(``benchmarks/op_extrapolation.py``; e.g. a MoE sliced 4-8 ways from its 1-2-way rows,
9.9-14.9% against 11.7-19.9%). It loses on H200's prefill table, which the profiles do
not use (inconsistent: H100's is fitted instead), and on H100's bf16 decode (6.6% / 5.2%).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Lattice:
    """Multilinear interpolation of log-corrections on knots given in log2 units."""

    axes: list[np.ndarray]
    values: np.ndarray
    #: per axis, the (low, high) log2 coordinates the fit saw; a point outside is evaluated
    #: at the nearest edge (None: the axes' own ends, as profiles written before it)
    data_range: list[tuple[float, float]] | None = None
    _py: tuple[list[list[float]], list[float], list[int], list[tuple[float, float]]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def _corners(self, coords: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        lows, weights = [], []
        for axis, c, (lo, hi) in zip(self.axes, coords, self._edges(), strict=True):
            c = np.clip(np.asarray(c, dtype=float), lo, hi)
            i = np.clip(np.searchsorted(axis, c, side="right") - 1, 0, len(axis) - 2)
            w = (c - axis[i]) / (axis[i + 1] - axis[i])
            lows.append(i)
            weights.append(w)
        return lows, weights

    def _edges(self) -> list[tuple[float, float]]:
        """Where each axis's coordinate is clamped: the data's range within the axis."""
        ends = [(float(a[0]), float(a[-1])) for a in self.axes]
        if self.data_range is None:
            return ends
        return [
            (min(max(lo, a0), a1), max(min(hi, a1), a0))
            for (lo, hi), (a0, a1) in zip(self.data_range, ends, strict=True)
        ]

    def _stencil(self, coords: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Flat knot indices and weights of the 2^d corners around each point."""
        lows, weights = self._corners(coords)
        shape = tuple(len(a) for a in self.axes)
        d = len(shape)
        idx_list, w_list = [], []
        for corner in range(2**d):
            flat = np.zeros_like(lows[0])
            w = np.ones_like(weights[0])
            for dim in range(d):
                bit = (corner >> dim) & 1
                flat = flat * shape[dim] + lows[dim] + bit
                w = w * (weights[dim] if bit else 1.0 - weights[dim])
            idx_list.append(flat)
            w_list.append(w)
        return idx_list, w_list

    def log_factor(self, *coords: np.ndarray) -> np.ndarray:
        """Interpolated log correction at the given log2 coordinates."""
        arrays = list(np.broadcast_arrays(*[np.asarray(c, dtype=float) for c in coords]))
        shape = arrays[0].shape
        idx, w = self._stencil([a.reshape(-1) for a in arrays])
        flat_values = self.values.ravel()
        out = np.zeros(int(np.prod(shape)))
        for i, wi in zip(idx, w, strict=True):
            out += wi * flat_values[i]
        return out.reshape(shape)

    def factor(self, *coords: np.ndarray) -> np.ndarray:
        return np.exp(self.log_factor(*coords))

    def factor_scalar(self, *coords: float) -> float:
        """:meth:`factor` for one point in plain Python (no numpy call overhead)."""
        if self._py is None:
            strides = [1] * len(self.axes)
            for d in range(len(self.axes) - 2, -1, -1):
                strides[d] = strides[d + 1] * len(self.axes[d + 1])
            self._py = (
                [list(map(float, a)) for a in self.axes],
                self.values.ravel().tolist(),
                strides,
                self._edges(),
            )
        axes, values, strides, edges = self._py
        base = 0
        spans: list[tuple[int, float]] = []
        for axis, c, stride, (lo, hi) in zip(axes, coords, strides, edges, strict=True):
            c = min(max(c, lo), hi)
            i = min(max(bisect.bisect_right(axis, c) - 1, 0), len(axis) - 2)
            w = (c - axis[i]) / (axis[i + 1] - axis[i])
            base += i * stride
            spans.append((stride, w))
        total = 0.0
        for corner in range(1 << len(spans)):
            idx = base
            weight = 1.0
            for dim, (stride, w) in enumerate(spans):
                if (corner >> dim) & 1:
                    idx += stride
                    weight *= w
                else:
                    weight *= 1.0 - w
            total += weight * values[idx]
        return math.exp(total)

    @classmethod
    def fit(
        cls,
        axes: list[list[float]] | list[np.ndarray],
        coords: list[np.ndarray],
        log_residual: np.ndarray,
        ridge: float = 0.05,
        row_scale: np.ndarray | None = None,
    ) -> Lattice:
        """Fit knot values so that ``row_scale * log_factor(coords) ~= log_residual``
        (``row_scale`` defaults to 1: a Gauss-Newton step passes the share of each row's
        time the lattice scales)."""
        ax = [np.asarray(a, dtype=float) for a in axes]
        lat = cls(ax, np.zeros(tuple(len(a) for a in ax)))
        idx, w = lat._stencil([np.asarray(c, dtype=float) for c in coords])
        n = len(log_residual)
        rows = np.tile(np.arange(n), len(idx))
        from scipy.sparse import csr_matrix
        from scipy.sparse.linalg import lsqr

        if row_scale is not None:
            w = [wi * np.asarray(row_scale, dtype=float) for wi in w]
        design = csr_matrix(
            (np.concatenate(w), (rows, np.concatenate(idx))), shape=(n, lat.values.size)
        )
        solution = lsqr(design, np.asarray(log_residual, dtype=float), damp=ridge)[0]
        lat.values = solution.reshape(lat.values.shape)
        lat.data_range = [
            (float(np.min(c)), float(np.max(c))) for c in (np.asarray(c, float) for c in coords)
        ]
        return lat

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "axes_log2": [[float(v) for v in a] for a in self.axes],
            "log_values": [round(float(v), 5) for v in self.values.ravel()],
        }
        if self.data_range is not None:
            out["data_range_log2"] = [[round(lo, 5), round(hi, 5)] for lo, hi in self.data_range]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lattice:
        axes = [np.asarray(a, dtype=float) for a in data["axes_log2"]]
        values = np.asarray(data["log_values"], dtype=float).reshape(tuple(len(a) for a in axes))
        rng = data.get("data_range_log2")
        data_range = None if rng is None else [(float(lo), float(hi)) for lo, hi in rng]
        return cls(axes, values, data_range)
