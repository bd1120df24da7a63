"""Why the serving TTFT misses: measured TTFT against the two client states the simulator
can be in (needs ../shared).

    PYTHONPATH=. .venv/bin/python benchmarks/ttft_envelopes.py [--shared ../shared]
        [--out benchmarks/results/ttft_envelopes] [--delays 0.01]

A closed loop of C clients with identical prompt and output lengths is a deterministic
dynamical system: requests that get their first token in the same iteration finish in
the same iteration, and their clients send again together. What the mean TTFT is depends
on how the clients are grouped, not only on what an iteration costs. This benchmark
simulates every fitted serving row (the GQA rows of ``serving_transfer.py``, at the
profiles' default overhead) in three client states and sets them beside the measurement:

- ``burst``: every client sends at t = 0 (the benchmark clients' start, the default);
  the groups are whatever the scheduler's chunking makes of one burst;
- ``staggered``: the clients spread evenly over one request's duration and the first C
  requests left out: the desynchronized steady state, each prompt prefilled nearly alone;
- ``jitter``: a burst whose clients each wait an exponential delay (``--delays``, seconds)
  before sending again: the client noise that can split a group.

It prints, per model / GPU / prompt length, the measured TTFT over each simulated one,
and how many rows lie between the staggered and the burst TTFT. The TPOT of the same
runs is printed too: a request's TPOT integrates the other clients' prefills, so it says
whether the prefill cost is right independently of the grouping.

Writes ``<out>/rows.csv`` and ``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.serving_transfer import SUMMARY, committed_overhead, keep_physical, load_rows, short
from calibration.profile import FrameworkOverhead
from calibration.serving_errors import markdown_table
from sim.serving import evaluate_rows

#: processes simulating rows (results do not depend on it)
WORKERS = 2


def states(delays: list[float]) -> dict[str, dict[str, object]]:
    """The client states simulated: name -> the setup fields it changes."""
    out: dict[str, dict[str, object]] = {
        "burst": {},
        "staggered": {"closed_loop_start": "staggered"},
    }
    for d in delays:
        out[f"jitter{d * 1e3:g}ms"] = {"client_issue_delay_s": d}
    return out


def measured_frame(rows: list) -> pd.DataFrame:
    """Each row's configuration and measured TTFT / TPOT (ms), one table line per row."""
    return pd.DataFrame(
        {
            "model": [short(r.model) for r in rows],
            "gpu": [r.gpu for r in rows],
            "dtype": [r.dtype for r in rows],
            "tp": [r.tp for r in rows],
            "concurrency": [r.concurrency for r in rows],
            "isl": [r.isl for r in rows],
            "osl": [r.osl for r in rows],
            "ttft_ms": [r.ttft_s * 1e3 for r in rows],
            "tpot_ms": [r.tpot_s * 1e3 for r in rows],
        }
    )


def simulate_states(
    rows: list, setups: list, overhead: FrameworkOverhead, delays: list[float]
) -> pd.DataFrame:
    """One table: each row's measurement and its simulated TTFT / TPOT in every state."""
    base = measured_frame(rows)
    for name, change in states(delays).items():
        t0 = time.perf_counter()
        table = evaluate_rows(
            rows, [replace(s, **change) for s in setups], overhead, workers=WORKERS
        )
        base[f"ttft_{name}_ms"] = table["pred_ttft_ms"].to_numpy()
        base[f"tpot_{name}_ms"] = table["pred_tpot_ms"].to_numpy()
        print(f"  {name}: {len(rows)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    return base


def summarize(table: pd.DataFrame, names: list[str]) -> str:
    """Markdown: per model / GPU / prompt length, the median measured / simulated ratio
    in each state, the share of rows between the envelopes, and the TPOT check."""
    t = table.copy()
    lo = np.minimum(t["ttft_burst_ms"], t["ttft_staggered_ms"])
    hi = np.maximum(t["ttft_burst_ms"], t["ttft_staggered_ms"])
    t["inside"] = (t["ttft_ms"] >= lo) & (t["ttft_ms"] <= hi)
    t["above"] = t["ttft_ms"] > hi
    for n in names:
        t[f"r_{n}"] = t["ttft_ms"] / t[f"ttft_{n}_ms"]
    t["tpot_r"] = t["tpot_ms"] / t["tpot_burst_ms"]
    keys = ["model", "gpu", "isl"]
    g = t.groupby(keys)
    agg = pd.DataFrame(
        {
            "rows": g.size(),
            **{f"meas/{n} (median)": g[f"r_{n}"].median().round(2) for n in names},
            "inside envelope": g["inside"].mean().round(2),
            "above both": g["above"].mean().round(2),
            "TPOT meas/burst": g["tpot_r"].median().round(2),
        }
    ).reset_index()
    mape = {n: float((t[f"ttft_{n}_ms"] / t["ttft_ms"] - 1).abs().mean()) for n in names}
    lines = [
        "# Measured TTFT against the simulator's client states",
        "",
        "Command: `PYTHONPATH=. .venv/bin/python benchmarks/ttft_envelopes.py`"
        " (rows and assumptions as `serving_transfer.py`; the profiles' default overhead).",
        "",
        "TTFT MAPE over all rows, per state: " + ", ".join(f"{n} {v:.0%}" for n, v in mape.items()),
        f"Rows between the staggered and the burst TTFT: {t['inside'].mean():.0%};"
        f" above both: {t['above'].mean():.0%}.",
        "",
        markdown_table(agg),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="benchmarks/results/ttft_envelopes")
    ap.add_argument(
        "--delays", default="0.003,0.03", help="client issue delays, seconds, comma-separated"
    )
    ap.add_argument(
        "--overhead",
        default=str(SUMMARY),
        help="summary.json of serving_transfer.py: its async joint fit is the overhead",
    )
    args = ap.parse_args()
    delays = [float(x) for x in args.delays.split(",") if x]
    rows, setups, _ = load_rows(Path(args.shared))
    rows, setups, dropped = keep_physical(rows, setups)
    overhead = committed_overhead(Path(args.overhead))
    print(f"{len(rows)} rows ({len(dropped)} below the roofline left out); overhead {overhead}")
    table = simulate_states(rows, setups, overhead, delays)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "rows.csv", index=False, float_format="%.4f")
    text = summarize(table, list(states(delays)))
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
