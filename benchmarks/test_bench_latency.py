"""pytest-benchmark versions of the hot-path benchmarks (``make bench``).

Inputs come from ``bench_latency.py`` beside this file; run that script for the full
table (it also covers ``iteration_time(Batch)`` and ``predict_static_latency``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from bench_latency import CONFIGS, decode_inputs, make_lm, mixed_inputs, vector_inputs

from calibration.latency import LatencyModel

IDS = [c[1] for c in CONFIGS]


@pytest.fixture(scope="module", params=CONFIGS, ids=IDS)
def lm(request: pytest.FixtureRequest) -> LatencyModel:
    _, model, gpu, tp, dtype = request.param
    return make_lm(model, gpu, tp, dtype)


def test_iteration_time_of_decode(benchmark: Any, lm: LatencyModel) -> None:
    inputs = decode_inputs()
    f = lm.iteration_time_of

    def loop() -> float:
        total = 0.0
        for b, kv in inputs:
            total += f(b, kv)
        return total

    benchmark.extra_info["evals_per_round"] = len(inputs)
    assert benchmark(loop) > 0


def test_iteration_time_of_mixed(benchmark: Any, lm: LatencyModel) -> None:
    inputs = mixed_inputs()
    f = lm.iteration_time_of

    def loop() -> float:
        total = 0.0
        for b, kv, new, cached in inputs:
            total += f(b, kv, new, cached)
        return total

    benchmark.extra_info["evals_per_round"] = len(inputs)
    assert benchmark(loop) > 0


def test_decode_iteration_times_1e6(benchmark: Any, lm: LatencyModel) -> None:
    b, kv = vector_inputs()
    benchmark.extra_info["evals_per_round"] = int(b.size)
    out = benchmark(lm.decode_iteration_times, b, kv)
    assert out.shape == b.shape and np.all(out > 0)
