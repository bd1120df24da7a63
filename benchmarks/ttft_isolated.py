"""Measured TTFT at 4 and 8 clients against the simulated TTFT of one request alone
(needs ../shared; ~1 min on 2 cores).

    PYTHONPATH=. .venv/bin/python benchmarks/ttft_isolated.py [--shared ../shared]

The ratio bounds what the clients' phases can explain (HYPOTHESES.md, sixth pass): clients
that never meet give about 1x the isolated TTFT (a prompt waits at most for the step in
flight), clients in lockstep give the burst's ~2-2.5x at 4 clients. Writes
``benchmarks/results/ttft_envelopes/isolated.csv`` (one row per serving row) and prints the
ratio's median and range per prompt length. The overhead is the committed serving fit's.
"""

from __future__ import annotations

import argparse
import multiprocessing
from dataclasses import replace
from pathlib import Path

import pandas as pd

from benchmarks.serving_transfer import committed_overhead, keep_physical, load_rows, short
from sim.serving import simulate_row

OUT = Path("benchmarks/results/ttft_envelopes/isolated.csv")


def _job(args: tuple) -> dict:
    row, setup, overhead = args
    alone = simulate_row(replace(row, concurrency=1), setup, overhead).ttft_s
    loaded = simulate_row(row, setup, overhead).ttft_s
    return {
        "model": short(row.model), "gpu": row.gpu, "tp": row.tp, "isl": row.isl,
        "osl": row.osl, "concurrency": row.concurrency, "measured_ttft_ms": row.ttft_s * 1e3,
        "simulated_ttft_ms": loaded * 1e3, "isolated_ttft_ms": alone * 1e3,
        "measured_over_isolated": row.ttft_s / alone,
        "simulated_over_isolated": loaded / alone,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="../shared")
    args = ap.parse_args(argv)
    overhead = committed_overhead()
    rows, setups, _ = keep_physical(*load_rows(Path(args.shared))[:2])
    jobs = [(r, s, overhead) for r, s in zip(rows, setups, strict=True) if r.concurrency in (4, 8)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        table = pd.DataFrame(pool.map(_job, jobs, chunksize=1))
    table.round(3).to_csv(OUT, index=False)
    grouped = table.groupby(["concurrency", "isl"])
    for (c, isl), g in grouped:
        m, s = g["measured_over_isolated"], g["simulated_over_isolated"]
        print(
            f"{c} clients, {isl}-token prompts ({len(g)} rows): measured / isolated median"
            f" {m.median():.2f} ({m.min():.2f}-{m.max():.2f}), simulated / isolated median"
            f" {s.median():.2f} ({s.min():.2f}-{s.max():.2f})"
        )
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
