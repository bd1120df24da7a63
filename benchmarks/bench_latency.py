"""Throughput of the latency model's hot paths.

Run as a script (``.venv/bin/python benchmarks/bench_latency.py``) to print a table of
evaluations per second; the input generators and :func:`run_benchmarks` are importable
(``benchmarks/test_bench_latency.py`` uses them under pytest-benchmark).

Benchmarked, for each configuration in :data:`CONFIGS`:

* ``iteration_time_of`` on decode-only iterations and on mixed iterations (decodes plus
  one prefill chunk), the engine's per-iteration hot path;
* ``iteration_time(Batch(...))`` on the same mixed iterations, with the ``Batch`` built
  beforehand and with its construction included;
* ``decode_iteration_times`` over 1e6 decode-only iterations in one vectorized call;
* ``predict_static_latency`` for B=64, input = output = 2048 (seconds per call), on a
  warm model (tables built) and cold (a fresh ``LatencyModel``, tables built in the call).

Inputs are random but seeded, and cycled so that no single input is timed alone.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from calibration.latency import Batch, LatencyModel
from calibration.static import predict_static_latency

#: (label, model, gpu, tp, dtype)
CONFIGS: tuple[tuple[str, str, str, int, str], ...] = (
    ("Llama-3-8B bf16 TP1 h100_sxm", "llama-3-8b", "h100_sxm", 1, "bf16"),
    ("GLM-4.7 fp8 TP4 h200_sxm", "glm-4.7", "h200_sxm", 4, "fp8"),
)

N_INPUTS = 4096
VECTOR_N = 1_000_000
STATIC_B, STATIC_IN, STATIC_OUT = 64, 2048, 2048


def make_lm(model: str, gpu: str, tp: int, dtype: str) -> LatencyModel:
    return LatencyModel(model, gpu, tp, dtype)


def decode_inputs(n: int = N_INPUTS, seed: int = 0) -> list[tuple[int, int]]:
    """(num_decode, decode_kv_total) pairs: 1..256 decodes of 128..32k tokens each."""
    rng = np.random.default_rng(seed)
    b = rng.integers(1, 257, n)
    mean_kv = rng.integers(128, 32_769, n)
    return [(int(x), int(x * k)) for x, k in zip(b, mean_kv, strict=True)]


def mixed_inputs(n: int = N_INPUTS, seed: int = 1) -> list[tuple[int, int, list[int], list[int]]]:
    """Decodes plus one prefill chunk: (num_decode, kv_total, [new], [cached])."""
    rng = np.random.default_rng(seed)
    out = []
    for b, k, new, cached in zip(
        rng.integers(1, 129, n),
        rng.integers(128, 16_385, n),
        rng.integers(16, 4097, n),
        rng.integers(0, 16_385, n),
        strict=True,
    ):
        out.append((int(b), int(b * k), [int(new)], [int(cached)]))
    return out


def mixed_batches(
    inputs: Sequence[tuple[int, int, list[int], list[int]]], seed: int = 2
) -> list[tuple[np.ndarray, list[int], list[int]]]:
    """Per-sequence decode KV lengths matching ``inputs`` (for building ``Batch``es)."""
    rng = np.random.default_rng(seed)
    out = []
    for b, kv_total, new, cached in inputs:
        mean = kv_total // b
        kv = rng.integers(max(1, mean // 2), mean + mean // 2 + 1, b)
        out.append((kv.astype(np.int64), new, cached))
    return out


def vector_inputs(n: int = VECTOR_N, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Batch sizes 1..512 and KV totals for ``decode_iteration_times``."""
    rng = np.random.default_rng(seed)
    b = rng.integers(1, 513, n)
    kv = b * rng.integers(128, 32_769, n)
    return b, kv


@dataclass
class Result:
    config: str
    name: str
    evals_per_call: int
    seconds_per_call: float

    @property
    def evals_per_s(self) -> float:
        return self.evals_per_call / self.seconds_per_call


def time_it(fn: Callable[[], object], min_time: float = 0.2, repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds per call of ``fn`` (after a warm-up call)."""
    fn()
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time or loops >= 1 << 20:
            break
        loops *= 2 if dt < min_time / 8 else 1 + int(min_time / max(dt, 1e-9))
    best = dt / loops
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best


def bench_config(label: str, model: str, gpu: str, tp: int, dtype: str) -> list[Result]:
    lm = make_lm(model, gpu, tp, dtype)
    dec = decode_inputs()
    mix = mixed_inputs()
    batches_raw = mixed_batches(mix)
    batches = [Batch(kv, new, cached) for kv, new, cached in batches_raw]
    vb, vkv = vector_inputs()
    f = lm.iteration_time_of
    n = len(dec)

    def decode_loop() -> None:
        for b, kv in dec:
            f(b, kv)

    def mixed_loop() -> None:
        for b, kv, new, cached in mix:
            f(b, kv, new, cached)

    def batch_loop() -> None:
        for batch in batches:
            lm.iteration_time(batch)

    def batch_build_loop() -> None:
        for kv, new, cached in batches_raw:
            lm.iteration_time(Batch(kv, new, cached))

    def static_cold() -> None:
        predict_static_latency(make_lm(model, gpu, tp, dtype), STATIC_B, STATIC_IN, STATIC_OUT)

    results = [
        Result(label, "iteration_time_of, decode-only", n, time_it(decode_loop)),
        Result(label, "iteration_time_of, decode + 1 chunk", n, time_it(mixed_loop)),
        Result(label, "iteration_time(Batch), prebuilt", n, time_it(batch_loop)),
        Result(label, "iteration_time(Batch(...)), incl. build", n, time_it(batch_build_loop)),
        Result(
            label,
            "decode_iteration_times, 1e6 vectorized",
            VECTOR_N,
            time_it(lambda: lm.decode_iteration_times(vb, vkv), repeats=3),
        ),
        Result(
            label,
            f"predict_static B={STATIC_B} in=out={STATIC_IN}, warm",
            1,
            time_it(lambda: predict_static_latency(lm, STATIC_B, STATIC_IN, STATIC_OUT)),
        ),
        Result(
            label,
            f"predict_static B={STATIC_B} in=out={STATIC_IN}, cold",
            1,
            time_it(static_cold, min_time=0.5, repeats=3),
        ),
    ]
    return results


def run_benchmarks(
    configs: Sequence[tuple[str, str, str, int, str]] = CONFIGS,
) -> list[Result]:
    results: list[Result] = []
    for cfg in configs:
        results.extend(bench_config(*cfg))
    return results


def _fmt_seconds(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:7.2f} {unit}"
    return f"{s / 1e-9:7.1f} ns"


def format_table(results: Sequence[Result]) -> str:
    head = ("config", "benchmark", "evals/round", "per round", "per eval", "evals/s")
    rows = [
        (
            r.config,
            r.name,
            f"{r.evals_per_call:,}",
            _fmt_seconds(r.seconds_per_call),
            _fmt_seconds(r.seconds_per_call / r.evals_per_call),
            f"{r.evals_per_s:,.0f}",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    align = ("<", "<", ">", ">", ">", ">")

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True))

    out = [line(head), line(["-" * w for w in widths])]
    prev = None
    for row in rows:
        if prev is not None and row[0] != prev:
            out.append("")
        out.append(line(row))
        prev = row[0]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        action="append",
        choices=[c[1] for c in CONFIGS],
        help="only this model's configuration (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    configs = [c for c in CONFIGS if not args.config or c[1] in args.config]
    results = run_benchmarks(configs)
    print(format_table(results))
    print()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.machine()} {platform.processor() or platform.system()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
