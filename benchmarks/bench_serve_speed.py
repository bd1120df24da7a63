"""Simulation speed of `comem bench-serve` on the issue's open-loop load.

Poisson arrivals at 2 req/s, 512 input / 256 output tokens, Llama-2-7B bf16 TP1 on H100
(vLLM defaults). Prints, per request count, the simulation's wall seconds, simulated
requests per wall second, and the process's peak memory::

    .venv/bin/python benchmarks/bench_serve_speed.py                # 10k and 100k requests
    .venv/bin/python benchmarks/bench_serve_speed.py --requests 10000

Whole-process time (imports included) is what `time comem bench-serve ...` prints:

    time .venv/bin/comem bench-serve --model llama-2-7b --num-prompts 10000 \\
        --request-rate 2 --random-input-len 512 --random-output-len 256 --json > /dev/null
"""

from __future__ import annotations

import argparse
import resource
import time

from sim.bench_serve import BenchServeConfig, run_bench_serve
from sim.config import EngineConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, nargs="*", default=[10_000, 100_000])
    args = parser.parse_args()
    # warm the latency model's tables (built once per process)
    run_bench_serve(
        BenchServeConfig(engine=EngineConfig(model="llama-2-7b"), num_prompts=50, request_rate=2)
    )
    for n in args.requests:
        cfg = BenchServeConfig(
            engine=EngineConfig(model="llama-2-7b", record_iterations=False),
            num_prompts=n, request_rate=2.0, random_input_len=512, random_output_len=256,
        )  # fmt: skip
        t0 = time.perf_counter()
        res = run_bench_serve(cfg)
        wall = time.perf_counter() - t0
        out = res.to_vllm_json()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{n:>7} requests: {wall:6.2f} s wall, {n / wall:8.0f} requests/s,"
            f" peak RSS {rss:.0f} MB, {res.engine.iterations} iterations,"
            f" mean TTFT {out['mean_ttft_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
