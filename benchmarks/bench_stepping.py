"""Event stepping vs iteration stepping on the paper scenarios: equal, and how much faster.

For each agent count, runs ``scenarios/paper_latency_glm47.toml`` (or ``--scenario``)
in both steppings and prints, per architecture, the largest relative difference of any
step's and request's times, whether every count (steps, requests, preemptions,
iterations, evicted blocks, cached tokens) is identical, and the wall seconds of each
stepping (the simulation only, ``run_scenario``, not the process start)::

    .venv/bin/python benchmarks/bench_stepping.py                   # 32, 64, 128, 256 agents
    .venv/bin/python benchmarks/bench_stepping.py --agents 48 --steps 8
    .venv/bin/python benchmarks/bench_stepping.py --no-iteration    # event stepping only

Exit code 1 if any count differs or a time differs by more than 1e-9 relative.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from sim.scenario import load_scenario, run_scenario

ROOT = Path(__file__).resolve().parent.parent
TIME_COLUMNS = ("submit_s", "admitted_s", "first_token_s", "finished_s")
REQUEST_TIMES = ("arrival_s", "admitted_s", "first_token_s", "finished_s")
COUNT_COLUMNS = ("step", "prompt_tokens", "cached_tokens", "action_tokens", "summary_swapped")


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("inf")
    if not both.any():
        return 0.0
    return float(np.max(np.abs(a[both] - b[both]) / np.maximum(np.abs(b[both]), 1e-300)))


def compare(scenario: str, sets: list[str], iteration: bool) -> tuple[bool, list[str]]:
    lines = []
    runs = {}
    walls = {}
    for stepping in ("event", "iteration") if iteration else ("event",):
        sc = load_scenario(scenario, [*sets, f"engine.stepping={stepping}"])
        t0 = time.perf_counter()
        runs[stepping] = run_scenario(sc).results
        walls[stepping] = time.perf_counter() - t0
    ok = True
    if iteration:
        for ev, it in zip(runs["event"], runs["iteration"], strict=True):
            counts_equal = (
                ev.preemptions == it.preemptions
                and len(ev.steps) == len(it.steps)
                and len(ev.requests) == len(it.requests)
                and all(ev.steps[c].tolist() == it.steps[c].tolist() for c in COUNT_COLUMNS)
                and ev.requests["preemptions"].tolist() == it.requests["preemptions"].tolist()
                and ev.requests["cached_tokens"].tolist() == it.requests["cached_tokens"].tolist()
                and int(ev.engine_steps["iterations"].sum())
                == int(it.engine_steps["iterations"].sum())
            )
            rel = 0.0
            if counts_equal:
                for c in TIME_COLUMNS:
                    rel = max(
                        rel, _max_rel(ev.steps[c].to_numpy(float), it.steps[c].to_numpy(float))
                    )
                for c in REQUEST_TIMES:
                    rel = max(
                        rel,
                        _max_rel(ev.requests[c].to_numpy(float), it.requests[c].to_numpy(float)),
                    )
            ok &= counts_equal and rel <= 1e-9
            lines.append(
                f"  {ev.config.name:5s} counts {'equal' if counts_equal else 'DIFFER'},"
                f" max rel time diff {rel:.1e}, preemptions {ev.preemptions},"
                f" iterations {int(ev.engine_steps['iterations'].sum())},"
                f" engine steps event {len(ev.engine_steps)} / iteration {len(it.engine_steps)}"
            )
    wall = f"wall: event {walls['event']:.2f} s"
    if iteration:
        wall += (
            f", iteration {walls['iteration']:.2f} s ({walls['iteration'] / walls['event']:.1f}x)"
        )
    lines.append("  " + wall)
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    # iteration stepping at 256 agents is above the default budget on purpose
    os.environ.setdefault("COMEM_ALLOW_LARGE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "paper_latency_glm47.toml"))
    parser.add_argument("--agents", type=int, nargs="*", default=[32, 64, 128, 256])
    parser.add_argument("--steps", type=int, help="override workload.steps")
    parser.add_argument("--no-iteration", action="store_true", help="event stepping only")
    args = parser.parse_args(argv)
    ok = True
    for n in args.agents:
        sets = [f"workload.agents={n}"]
        if args.steps:
            sets.append(f"workload.steps={args.steps}")
        print(
            f"{Path(args.scenario).name}, {n} agents"
            + (f" x {args.steps} steps" if args.steps else "")
        )
        good, lines = compare(args.scenario, sets, not args.no_iteration)
        ok &= good
        print("\n".join(lines), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
