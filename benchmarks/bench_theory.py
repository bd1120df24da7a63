"""Closed-form evaluation speed: configurations per second (target >= 1e6/s).

    .venv/bin/python benchmarks/bench_theory.py [--configs N]

Rows: one request's latency; the step-by-step forms (``step_latencies``, the
reference, 64 steps); and whole 64-step tasks (``theory.whole_task.task_latencies``)
for FC, CP, SM and KSO at k = 4, lag = 1, retain = 4, and for a mix in which every
configuration differs (k 1-16, lag 0-3, retain 0-8, N 1-256 agents in lockstep, its own
surrogate coefficients, tokens and tool time). Each row is the best of 3 rounds after a
warm-up call.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

from theory.single_agent import AgentParams, request_latency, step_latencies
from theory.whole_task import task_latencies

COEFFS = np.array([5e-3, 2e-5, 1e-9, 5e-5, 3e-8])


def _rate(n: int, fn: Callable[[], object], rounds: int = 3) -> float:
    fn()
    best = min(_timed(fn) for _ in range(rounds))
    return n / best


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _fixed(rng: np.random.Generator, n: int) -> AgentParams:
    return AgentParams(
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


def _mixed(rng: np.random.Generator, n: int) -> tuple[AgentParams, np.ndarray, np.ndarray]:
    p = AgentParams(
        system=rng.integers(256, 4096, n),
        observation=rng.integers(64, 1024, n),
        action=rng.integers(64, 2048, n),
        summary=rng.integers(256, 4096, n),
        tool_s=rng.uniform(0, 5, n),
        steps=64,
        k=rng.integers(1, 17, n),
        retain=rng.integers(0, 9, n),
        lag=rng.integers(0, 4, n),
    )
    coeffs = COEFFS.reshape(5, 1) * rng.uniform(0.5, 2.0, (5, n))
    return p, coeffs, rng.integers(1, 257, n)


def run(n: int) -> list[tuple[str, float]]:
    rng = np.random.default_rng(0)
    prompts, outs = rng.integers(1, 100_000, n), rng.integers(1, 2048, n)
    rows = [
        (
            "request latency (one request)",
            _rate(n, lambda: request_latency(prompts, np.zeros(n), outs, COEFFS)),
        )
    ]
    small = max(1, n // 5)  # the step-by-step forms are slow: fewer configurations
    ps = _fixed(rng, small)
    for kind in ("fc", "kso"):
        rows.append(
            (
                f"{kind}: step by step (step_latencies)",
                _rate(small, lambda k=kind: step_latencies(k, ps, COEFFS, COEFFS), rounds=1),
            )
        )
    p = _fixed(rng, n)
    for kind in ("fc", "cp", "sm", "kso"):
        rows.append(
            (
                f"{kind}: whole task, k 4 lag 1",
                _rate(n, lambda k=kind: task_latencies(k, p, COEFFS, COEFFS)),
            )
        )
    pm, cm, agents = _mixed(rng, n)
    for kind in ("cp", "sm", "kso"):
        rows.append(
            (
                f"{kind}: whole task, all differ",
                _rate(n, lambda k=kind: task_latencies(k, pm, cm, cm, agents)),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    for name, rate in run(args.configs):
        print(f"{name:38s} {rate:14,.0f} configurations/s")
    print(
        f"command: {' '.join(sys.argv)}; python {platform.python_version()},"
        f" numpy {np.__version__}, {platform.processor() or platform.machine()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
