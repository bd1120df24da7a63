"""The KV-saturation knee: the H100 serving rows the simulation runs with a full KV cache,
re-simulated with the cache at 1, 1.25, 1.5, 1.75 and 2 times vLLM's sizing (needs
../shared; ~5 min on 2 cores).

    PYTHONPATH=. .venv/bin/python benchmarks/kv_knee.py [--shared ../shared]

At the knee a row's TTFT moves 10x for 25% of capacity, so these rows say more about the
real servers' KV capacity than about the latency model; the table and what it implies are
in ``benchmarks/results/ttft_envelopes/HYPOTHESES.md`` ("The KV-saturation knee"). The
overhead is the committed serving fit's (``benchmarks/results/serving_transfer/summary.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.serving_transfer import SUMMARY, committed_overhead, load_rows
from calibration.serving import ServingRow, ServingSetup
from sim.serving import simulate_row

SCALES = (1.0, 1.25, 1.5, 1.75, 2.0)

#: (model substring, tp, clients, isl, osl) of the H100 rows the committed fit preempts on
KNEE_ROWS = tuple(
    (model, tp, c, isl, osl)
    for model, tp in (("llama", 2), ("minimax", 4))
    for isl, osl in ((1024, 8192), (8192, 1024))
    for c in (32, 64)
)


def knee_rows(shared: Path) -> list[tuple[ServingRow, ServingSetup]]:
    """The rows of :data:`KNEE_ROWS`, with the setups the transfer benchmark gives them."""
    rows, setups, _ = load_rows(shared)
    out = []
    for model, tp, c, isl, osl in KNEE_ROWS:
        out += [
            (r, s) for r, s in zip(rows, setups, strict=True)
            if model in r.model.lower() and r.gpu == "h100_sxm"
            and (r.tp, r.concurrency, r.isl, r.osl) == (tp, c, isl, osl)
        ][:1]  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--summary", default=str(SUMMARY))
    args = ap.parse_args(argv)
    overhead = committed_overhead(Path(args.summary))
    print("row | measured TTFT / TPOT ms | " + " | ".join(f"KV x{k}" for k in SCALES))
    for row, setup in knee_rows(Path(args.shared)):
        cells = []
        for k in SCALES:
            f = simulate_row(row, setup, overhead, kv_scale=k)
            cells.append(f"{f.ttft_s * 1e3:.0f} / {f.tpot_s * 1e3:.1f} ({f.preemptions} preempted)")
        measured = f"{row.ttft_s * 1e3:.0f} / {row.tpot_s * 1e3:.1f}"
        print(f"{row.label} | {measured} | " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
