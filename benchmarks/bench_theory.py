"""Closed-form evaluation speed: configurations per second (target >= 1e6/s).

    .venv/bin/python benchmarks/bench_theory.py

Evaluates the exact per-step latency of FC and KSO (64 steps, k = 4, lag = 1) for a
million configurations that differ in tool time, tokens and coefficients.
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np

from theory.single_agent import AgentParams, request_latency, step_latencies


def main() -> int:
    n = 1_000_000
    rng = np.random.default_rng(0)
    coeffs = np.array([5e-3, 2e-5, 1e-9, 5e-5, 3e-8])
    t0 = time.perf_counter()
    request_latency(rng.integers(1, 100_000, n), np.zeros(n), rng.integers(1, 2048, n), coeffs)
    per_request = n / (time.perf_counter() - t0)
    p = AgentParams(
        system=np.full(n, 512),
        observation=rng.integers(64, 1024, n),
        action=rng.integers(64, 2048, n),
        summary=np.full(n, 2048),
        tool_s=rng.uniform(0, 5, n),
        steps=64,
        k=np.full(n, 4),
        retain=np.full(n, 4),
        lag=np.full(n, 1),
    )
    rows = [("request latency (one request)", per_request)]
    for kind in ("fc", "kso"):
        t0 = time.perf_counter()
        step_latencies(kind, p, coeffs, coeffs)
        rows.append((f"{kind}: 64-step task, every step", n / (time.perf_counter() - t0)))
    for name, rate in rows:
        print(f"{name:36s} {rate:14,.0f} configurations/s")
    print(
        f"command: {' '.join(sys.argv)}; python {platform.python_version()}, numpy {np.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
