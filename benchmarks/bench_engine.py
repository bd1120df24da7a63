"""Engine speed: wall time and events for the closed-loop client benchmark.

256 concurrent closed-loop clients x 64 requests each; each request's prompt extends the
previous one's by 512 tokens and generates 1024 tokens (issue 3). GLM-4.7 fp8 on 4 x
H200 SXM, vLLM V1 defaults. Reports, per stepping mode and output length: wall
seconds, simulated seconds, iterations, engine steps, SimPy events, preemptions.

    .venv/bin/python benchmarks/bench_engine.py                 # fast: 1024 and 10240 tokens
    .venv/bin/python benchmarks/bench_engine.py --iteration     # + iteration stepping (minutes)
    .venv/bin/python benchmarks/bench_engine.py --clients 64 --requests 16 --iteration
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass

import simpy

from sim.clients import start_closed_loop
from sim.config import EngineConfig
from sim.engine import Engine


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts processed events."""

    def __init__(self) -> None:
        super().__init__()
        self.events_processed = 0

    def step(self) -> None:
        self.events_processed += 1
        super().step()


@dataclass
class Result:
    stepping: str
    output: int
    wall_s: float
    sim_s: float
    iterations: int
    steps: int
    events: int
    preemptions: int
    finished: int


def run(
    stepping: str,
    clients: int = 256,
    requests: int = 64,
    extend: int = 512,
    output: int = 1024,
    carry_output: bool = False,
) -> Result:
    env = CountingEnvironment()
    cfg = EngineConfig(model="glm-4.7", gpu="h200_sxm", tp=4, dtype="fp8", stepping=stepping)
    engine = Engine(env, cfg)
    engine.latency.iteration_time_of(1, 1)  # build the latency tables outside the timing
    start_closed_loop(env, engine, clients, requests, extend, extend, output, 0.0, carry_output)
    t0 = time.perf_counter()
    env.run()
    wall = time.perf_counter() - t0
    frame = engine.recorder.requests_frame()
    return Result(
        stepping,
        output,
        wall,
        env.now,
        engine.iterations,
        len(engine.recorder.iterations),
        env.events_processed,
        engine.preemptions,
        int((frame["status"] == "finished").sum()),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--iteration", action="store_true", help="also run iteration stepping")
    parser.add_argument("--carry-output", action="store_true", help="prompts include outputs")
    args = parser.parse_args(argv)
    results = []
    for output in (1024, 10240):
        results.append(run("event", args.clients, args.requests, 512, output, args.carry_output))
    if args.iteration:
        results.append(run("iteration", args.clients, args.requests, 512, 1024, args.carry_output))
    print(
        f"{args.clients} clients x {args.requests} requests, +512 tokens/request,"
        " GLM-4.7 fp8 TP4 h200_sxm"
    )
    print(
        f"{'stepping':10s} {'output':>7s} {'wall s':>8s} {'sim s':>10s} {'iterations':>11s}"
        f" {'steps':>8s} {'events':>9s} {'preempt':>8s} {'finished':>9s}"
    )
    for r in results:
        print(
            f"{r.stepping:10s} {r.output:7d} {r.wall_s:8.2f} {r.sim_s:10.1f} {r.iterations:11d}"
            f" {r.steps:8d} {r.events:9d} {r.preemptions:8d} {r.finished:9d}"
        )
    fast = {r.output: r for r in results if r.stepping == "event"}
    print(f"wall(10x output) / wall(1x output): {fast[10240].wall_s / fast[1024].wall_s:.2f}")
    slow = [r for r in results if r.stepping == "iteration"]
    if slow:
        print(f"iteration / fast stepping wall: {slow[0].wall_s / fast[1024].wall_s:.1f}x")
    print(
        f"command: {' '.join(sys.argv)}; python {platform.python_version()}, {platform.machine()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
