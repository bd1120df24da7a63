"""Error bars from cross-validated residuals.

A prediction's interval is what the model's errors on data it was not fitted to say:
the ratio predicted / measured of every held-out row (leave one model out, leave one GPU
out: ``benchmarks/serving_transfer.py``), and its quantiles. An 80% band is the 10th
and 90th percentile of that ratio; a new prediction ``p`` then has the interval
``[p / ratio_high, p / ratio_low]``: the measured value it is consistent with, as often
as the held-out rows were. The band is stored with the overhead fit it belongs to
(``error_bands`` of a profile's overhead entry), so it travels with the embedded
profiles and needs no ``../shared`` at run time.

This is an empirical band, not a confidence interval of a parameter: it covers what the
held-out models and GPUs covered. A workload or machine unlike all of them (another
attention family, another vLLM generation) can fall outside; ``comem validate`` checks
the coverage on rows held out by model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from calibration.errors import ComemInputError

#: The interval width every prediction reports (the ``*_low`` / ``*_high`` columns).
DEFAULT_LEVEL = 0.8
#: predicted / measured beyond these is no calibration's error band (a 1000x miss)
RATIO_MIN = 1e-3
RATIO_MAX = 1e3


@dataclass(frozen=True)
class ErrorBand:
    """Quantiles of predicted / measured on held-out rows, for one metric."""

    metric: str
    level: float
    ratio_low: float
    ratio_high: float
    rows: int
    source: str = ""

    def interval(self, predicted: float) -> tuple[float, float]:
        """``(low, high)`` of the measured value a prediction ``predicted`` stands for."""
        if not math.isfinite(predicted):
            return predicted, predicted
        return predicted / self.ratio_high, predicted / self.ratio_low

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "error band") -> ErrorBand:
        def number(key: str) -> float:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{key} must be a number, got {type(value).__name__}")
            return float(value)

        try:
            if not isinstance(data, dict):
                raise TypeError(f"an object is needed, got {type(data).__name__}")
            rows = data["rows"]
            if isinstance(rows, bool) or not isinstance(rows, int):
                raise TypeError(f"rows must be a whole number, got {rows!r}"[:120])
            metric, source = data["metric"], data.get("source", "")
            if not isinstance(metric, str) or not isinstance(source, str):
                raise TypeError("metric and source must be text")
            band = cls(
                metric=metric,
                level=number("level"),
                ratio_low=number("ratio_low"),
                ratio_high=number("ratio_high"),
                rows=rows,
                source=source,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ComemInputError(f"{where}: not an error band ({exc})") from None
        ok = (
            0.0 < band.level < 1.0
            and RATIO_MIN <= band.ratio_low <= band.ratio_high <= RATIO_MAX
            and 1 <= band.rows <= 10**9
            and all(c.isprintable() for c in band.metric + band.source)
        )
        if not ok:
            shown = repr(data) if len(repr(data)) <= 200 else repr(data)[:197] + "..."
            raise ComemInputError(
                f"{where}: an error band needs 0 < level < 1, {RATIO_MIN:g} <= ratio_low <="
                f" ratio_high <= {RATIO_MAX:g}, 1 <= rows <= 1e9 and printable text; got {shown}"
            )
        return band


def band_from_errors(
    metric: str, errors: Iterable[float], level: float = DEFAULT_LEVEL, source: str = ""
) -> ErrorBand:
    """The band of relative errors ``predicted / measured - 1`` of held-out rows."""
    ratio = 1.0 + np.asarray(list(errors), dtype=float)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if ratio.size == 0:
        raise ComemInputError(f"error band for {metric}: no held-out rows")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(ratio, [tail, 1.0 - tail])
    return ErrorBand(metric, level, float(low), float(high), int(ratio.size), source)


def coverage(band: ErrorBand, predicted: np.ndarray, measured: np.ndarray) -> float:
    """Share of rows whose measured value lies inside the prediction's interval."""
    p = np.asarray(predicted, float)
    m = np.asarray(measured, float)
    inside = (m >= p / band.ratio_high) & (m <= p / band.ratio_low)
    return float(inside.mean()) if inside.size else math.nan


def read_bands(entry: dict[str, Any], where: str) -> dict[str, ErrorBand]:
    """The ``error_bands`` of a profile's overhead entry (metric -> band); {} if none."""
    raw = entry.get("error_bands") or {}
    if not isinstance(raw, dict):
        raise ComemInputError(f"{where}: 'error_bands' must map metrics to bands")
    bands = {}
    for key, value in raw.items():
        name = str(key) if len(str(key)) <= 40 else str(key)[:37] + "..."
        band = ErrorBand.from_dict(value, f"{where}: error band {name!r}")
        if band.metric != key:
            raise ComemInputError(f"{where}: error band {name!r} is for metric {band.metric!r}")
        bands[str(key)] = band
    return bands


#: What the serving fit's error bands were measured on (benchmarks/serving_transfer.py: five
#: models, H100 and H200): a prediction outside it gets a caveat beside its interval.
BAND_SOURCE: dict[str, frozenset[str]] = {
    "families": frozenset({"mla", "sliding window"}),  # besides full GQA attention
    "dtypes": frozenset({"bf16", "fp8", "int4", "mxfp4"}),
    "gpus": frozenset({"h100_sxm", "h200_sxm"}),
}

#: The shortest GPU time of a one-sequence decode step (1k context) among the deployments
#: of the rows the bands come from: gpt-oss-120b at TP 8 (2.35 ms on H100 and H200; the
#: other models' are 5-9 ms at TP 8). Below it a step is priced by vLLM's CPU terms more
#: than by any serving row's kernels, and asynchronous scheduling's overlap, which those
#: rows fitted, hides less of it: a small model on many GPUs.
SMALLEST_FITTED_STEP_S = 2.3e-3


def cpu_bound_caveat(step_s: float) -> str:
    """Why the bands may not cover a deployment whose one-sequence decode step takes
    ``step_s`` seconds of GPU time ("" when the serving rows had steps that short, or when
    the step is no finite time: the latency model refuses that profile in one line)."""
    if not math.isfinite(step_s) or step_s >= SMALLEST_FITTED_STEP_S:
        return ""
    return (
        f"a one-sequence decode step takes {step_s * 1e3:.1f} ms of GPU time, shorter than"
        f" any serving row's ({SMALLEST_FITTED_STEP_S * 1e3:.1f} ms): small batches are priced"
        " by vLLM's CPU terms there, which those rows bound only loosely"
    )


def band_caveat(families: Iterable[str], dtype: str, gpu: str) -> str:
    """Why the bands may not cover a model of these attention ``families`` (besides full
    attention), weight ``dtype`` on ``gpu`` ("" when they do): what lies outside
    :data:`BAND_SOURCE`. Each is checked on its own: a combination the rows never had
    (an MLA model in int4 on H100) passes when each part was measured somewhere."""
    outside = sorted(set(families) - BAND_SOURCE["families"])
    if dtype not in BAND_SOURCE["dtypes"]:
        outside.append(f"{dtype} weights")
    if gpu not in BAND_SOURCE["gpus"]:
        outside.append(gpu)
    if not outside:
        return ""
    return (
        f"{', '.join(outside)}: outside the serving rows the error bands come from, so the"
        f" intervals may be too narrow there (the rows cover GPUs"
        f" {', '.join(sorted(BAND_SOURCE['gpus']))}; weights"
        f" {', '.join(sorted(BAND_SOURCE['dtypes']))}; attention full,"
        f" {', '.join(sorted(BAND_SOURCE['families']))}: docs/explanation/latency-model.md)"
    )
