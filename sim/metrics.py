"""Explicit metric recorders (no globals): per-request rows and per-step engine series."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.rows import IterationRow, RequestRow, frame

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class MetricsRecorder:
    """Collects rows (:mod:`sim.rows`); frames are built on demand.

    Engines append one request row when a request ends (finished or rejected) and one
    series row per step: an iteration in ``iteration`` stepping, a run of
    ``iterations`` identical-shape iterations in ``event`` stepping.
    """

    requests: list[RequestRow] = field(default_factory=list)
    iterations: list[IterationRow] = field(default_factory=list)
    #: called with each request row as it is recorded (progress bars, streaming)
    on_request: Callable[[RequestRow], None] | None = None
    #: keep inter-token gaps (``vllm bench serve``'s ITL): per iteration, its duration
    #: and how many tokens it sampled that were not a request's first
    itl_samples: bool = False
    _itl_durations: list[Any] = field(default_factory=list)
    _itl_weights: list[Any] = field(default_factory=list)
    #: tokens whose gap spans a preemption (kept apart in ``_itl_gaps``: their gap runs
    #: from the request's last token before the preemption)
    itl_after_preemption: int = 0
    _itl_gaps: list[float] = field(default_factory=list)
    #: absolute start time of each ``add_itl`` step, and the time of each lone gap's token
    _itl_starts: list[float] = field(default_factory=list)
    _itl_gap_times: list[float] = field(default_factory=list)

    def add_itl(self, ends: Any, weight: int, start: float = 0.0) -> None:
        """One step's iterations: their end times from the step's ``start`` (a float for
        one iteration, an array for a run) and the tokens each sampled that were not first."""
        if weight > 0:
            self._itl_durations.append(ends)
            self._itl_weights.append(weight)
            self._itl_starts.append(start)

    def add_itl_gaps(self, gaps: list[float], at: float = 0.0) -> None:
        """Gaps of single tokens that are not an iteration's duration (a resumed request's
        first token after a preemption), sampled at time ``at``."""
        self._itl_gaps.extend(gaps)
        self._itl_gap_times.extend([at] * len(gaps))

    def _step_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every recorded iteration: its end from its step's start, its step's index, and
        the tokens it sampled that were not a request's first."""
        steps = [np.atleast_1d(e) for e in self._itl_durations]
        lengths = np.fromiter((e.size for e in steps), dtype=np.int64, count=len(steps))
        index = np.repeat(np.arange(len(steps)), lengths)
        weights = np.asarray(self._itl_weights, dtype=np.int64)[index]
        return np.concatenate(steps), index, weights

    def itl_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(gap seconds, how many tokens had that gap), one entry per iteration plus one
        per gap added on its own."""
        extra = np.asarray(self._itl_gaps, dtype=float)
        ones = np.ones(extra.size, np.int64)
        if not self._itl_durations:
            return extra, ones
        ends, index, weights = self._step_arrays()
        gaps = np.diff(ends, prepend=0.0)
        first = np.flatnonzero(np.diff(index, prepend=-1))  # a step's first: its own end
        gaps[first] = ends[first]
        return np.concatenate([gaps, extra]), np.concatenate([weights, ones])

    def later_token_times(self) -> tuple[np.ndarray, np.ndarray]:
        """(absolute time, tokens sampled then) of every token that is not a request's
        first, one entry per iteration plus one per lone gap."""
        extra_t = np.asarray(self._itl_gap_times, dtype=float)
        ones = np.ones(extra_t.size, np.int64)
        if not self._itl_durations:
            return extra_t, ones
        ends, index, weights = self._step_arrays()
        times = ends + np.asarray(self._itl_starts)[index]
        return np.concatenate([times, extra_t]), np.concatenate([weights, ones])

    def add_request(self, row: RequestRow) -> None:
        self.requests.append(row)
        if self.on_request is not None:
            self.on_request(row)

    def requests_frame(self) -> pd.DataFrame:
        return frame(self.requests, RequestRow._fields)

    def iterations_frame(self) -> pd.DataFrame:
        return frame(self.iterations, IterationRow._fields)

    def parquet_writers(self) -> dict[str, Any]:
        """The tables as ``calibration.outputs.write_result`` writers (file name -> a
        function writing it to a path)."""
        return {
            "requests.parquet": lambda p: self.requests_frame().to_parquet(p, index=False),
            "engine_steps.parquet": lambda p: self.iterations_frame().to_parquet(p, index=False),
        }
