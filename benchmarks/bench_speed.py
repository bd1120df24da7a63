"""Whole-process wall time of each row of the speed table (issue 26), and the same
commands on another checkout in the same run for a before/after ratio.

Rows (``--rows``; default: every row but ``figures`` and the tests, which take minutes):

- ``dedicated``: the authors' GLM-4.7 synthetic benchmark, 256 agents, memory model on
  its own GPUs (``comem run ...agent_dedicated_tp4.toml --set workload.agents=256``)
- ``colocated``: the same with the memory model on the agent's GPUs; also printed as a
  ratio to ``dedicated`` (the goal: within 1.5x)
- ``open-loop``: 10k requests, Poisson 2 req/s, 512 in / 256 out, Llama-2-7B H100
  (``comem bench-serve``); the peer simulator (DistServe's ``simdistserve``) is timed on
  the same load only where it is installed (nothing is vendored or fetched here)
- ``plan``: ``comem plan --agent-model glm-4.7 --gpus 8 --agents 64`` (a fresh ``--out``)
- ``paper``: ``comem paper`` (a fresh ``--out``)
- ``figures``: ``comem figures`` (a fresh ``--out``)
- ``test``: the test suite (``pytest -q -x``; run it once, not alongside other work)
- ``test-fast``: the fast lane (``pytest -q -m "not slow and not live"``, ``make test-fast``)

::

    .venv/bin/python benchmarks/bench_speed.py                          # this checkout
    .venv/bin/python benchmarks/bench_speed.py --rows colocated dedicated
    git worktree add --detach ../base d2f6c85
    .venv/bin/python benchmarks/bench_speed.py --base ../base           # before / after

Each command runs in a fresh process (``python -m comem``, imports included) with the
checkout first on ``PYTHONPATH``; the best of ``--repeat`` runs is kept, with its CPU
seconds (user + system of the process and its workers: steadier than wall time on a
shared machine, but a parallel command's CPU time is not its wall time). Prints a
Markdown table (the README's speed table is this output); a failing command raises.
Times on a shared machine are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPER = "scenarios/paper/glm47_synthetic_benchmark__agent_{}.toml"

#: row -> (what, goal, comem arguments; "{out}" is a fresh directory)
ROWS: dict[str, tuple[str, str, list[str]]] = {
    "dedicated": (
        "GLM-4.7 synthetic benchmark, 256 agents, memory model on its own GPUs",
        "<= 2 s",
        ["run", PAPER.format("dedicated_tp4"), "--set", "workload.agents=256", "--json"],
    ),
    "colocated": (
        "the same, memory model co-located on the agent's GPUs",
        "within 1.5x of dedicated",
        ["run", PAPER.format("colocated_with_memory"), "--set", "workload.agents=256", "--json"],
    ),
    "open-loop": (
        "10k requests open loop (Poisson 2 req/s, 512/256, Llama-2-7B H100)",
        ">= 50x the peer",
        [
            "bench-serve",
            "--model",
            "llama-2-7b",
            "--num-prompts",
            "10000",
            "--request-rate",
            "2",
            "--random-input-len",
            "512",
            "--random-output-len",
            "256",
            "--json",
        ],
    ),  # fmt: skip
    "plan": (
        "comem plan (GLM-4.7, 8 H200, 64 agents)",
        "<= 20 s",
        [
            "plan",
            "--agent-model",
            "glm-4.7",
            "--gpus",
            "8",
            "--agents",
            "64",
            "--json",
            "--out",
            "{out}",
        ],
    ),  # fmt: skip
    "paper": ("comem paper", "<= 20 s", ["paper", "--json", "--out", "{out}"]),
    "figures": ("comem figures", "<= 60 s", ["figures", "--out", "{out}"]),
    "test": ("the test suite (pytest -q -x)", "<= 5 min", []),
    "test-fast": ("the fast lane (make test-fast)", "<= 60 s", []),
}
DEFAULT_ROWS = ["dedicated", "colocated", "open-loop", "plan", "paper"]


def _time(checkout: Path, row: str, repeat: int) -> tuple[float, float]:
    """Best wall seconds of the row's command on ``checkout``, and the CPU seconds (user
    + system, worker processes included) of that run (raises if it fails)."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "COMEM_ALLOW_LARGE": "1"}
    if row in ("test", "test-fast"):
        del env["COMEM_ALLOW_LARGE"]  # the tests check the budgets' refusals
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            if row in ("test", "test-fast"):
                cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
                if row == "test-fast":
                    cmd += ["-m", "not slow and not live"]
            else:
                args = [a.replace("{out}", out) for a in ROWS[row][2]]
                cmd = [sys.executable, "-m", "comem", *args]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"{row} on {checkout} failed:\n{proc.stderr[-2000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best = min(best, (wall, cpu))
    return best


def _peer() -> str:
    """The peer simulator's time on the open-loop row, where it is installed."""
    try:
        import simdistserve  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return "simdistserve is not installed (the package index here has none): no peer timed"
    return "simdistserve installed: time it with its own CLI on the same load"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=DEFAULT_ROWS)
    parser.add_argument("--base", type=Path, help="another checkout: the same commands on it")
    parser.add_argument(
        "--base-rows",
        nargs="+",
        choices=list(ROWS),
        help="the rows also timed on --base (default: all of --rows)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    args = parser.parse_args(argv)
    checkouts = [("now", ROOT)] + ([("base", args.base.resolve())] if args.base else [])
    base_rows = set(args.rows if args.base_rows is None else args.base_rows)
    times: dict[tuple[str, str], tuple[float, float]] = {}
    for row in args.rows:
        for name, checkout in checkouts:
            if name == "base" and row not in base_rows:
                continue
            wall, cpu = times[row, name] = _time(checkout, row, args.repeat)
            print(f"{row} ({name}): {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr)
    head = "| row | goal | now: wall (CPU) |"
    if args.base:
        head += " base: wall (CPU) | base / now: wall (CPU) |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for row in args.rows:
        now = times[row, "now"]
        cell = f"{now[0]:.1f} s ({now[1]:.1f} s)"
        if row == "colocated" and ("dedicated", "now") in times:
            ded = times["dedicated", "now"]
            cell += f", {now[0] / ded[0]:.2f}x ({now[1] / ded[1]:.2f}x) dedicated"
        line = f"| {ROWS[row][0]} | {ROWS[row][1]} | {cell} |"
        if args.base and (row, "base") not in times:
            line += " - | - |"
        elif args.base:
            base = times[row, "base"]
            line += f" {base[0]:.1f} s ({base[1]:.1f} s) |"
            line += f" {base[0] / now[0]:.1f}x ({base[1] / now[1]:.1f}x) |"
        print(line)
    if "open-loop" in args.rows:
        print(f"\nopen-loop peer: {_peer()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
