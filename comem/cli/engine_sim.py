"""``comem engine-sim``: one serving engine under closed-loop clients."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from comem.cli.args import _add_allow_large
from comem.cli.common import _outputs_not_inputs, _print_json, _writable_dir


def cmd_engine_sim(args: argparse.Namespace) -> int:
    from sim.config import apply_overrides, validate
    from sim.runner import EngineRun, check_run, run_engine_load

    run = validate(EngineRun, apply_overrides({}, args.set or []))
    check_run(run)
    _outputs_not_inputs(
        args.out,
        ("requests.parquet", "engine_steps.parquet", "config.json"),
        {"settings": run.model_dump()},
    )
    _writable_dir(args.out, kind="engine-sim")
    result = run_engine_load(run, progress=not args.json)
    summary = result.summary()
    written = result.write(args.out) if args.out else []
    if summary["requests_rejected"]:
        req = result.recorder.requests_frame()
        first = req.loc[req["status"] == "rejected", "reason"].iloc[0]
        total = summary["requests_rejected"] + summary["requests_finished"]
        print(
            f"comem engine-sim: warning: the engine refused {summary['requests_rejected']} of"
            f" {total} requests (first: {first}); the statistics cover the others",
            file=sys.stderr,
        )
    if args.json:
        _print_json({**summary, "files": [str(p) for p in written]})
        return 0
    e = run.engine
    print(
        f"{e.model} {e.dtype} TP{e.tp} on {e.gpu}: {run.load.clients} clients x "
        f"{run.load.requests} requests ({e.stepping} stepping)"
    )
    for key in ("ttft_s", "tpot_s", "e2e_s", "queue_s"):
        s = summary[key]
        print(
            f"  {key[:-2]:6s} mean {s['mean']:9.3f} s   p50 {s['p50']:9.3f} s"
            f"   p99 {s['p99']:9.3f} s"
        )
    print(
        f"  finished {summary['requests_finished']}, rejected {summary['requests_rejected']}, "
        f"{summary['output_tokens_per_s']:.0f} output tok/s, preemptions {summary['preemptions']}, "
        f"KV peak {summary['kv_peak_fraction']:.0%}, prefix hits "
        f"{summary['prefix_cache_hit_fraction']:.0%}"
    )
    print(
        f"  simulated {summary['simulated_s']:.1f} s in {result.wall_s:.2f} s wall, "
        f"{summary['iterations']} iterations in {summary['engine_steps']} engine steps"
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def register(sub: Any) -> None:
    es = sub.add_parser(
        "engine-sim",
        help="simulate one serving engine under closed-loop clients",
        description="Fields (defaults in brackets): engine.model [llama-3-8b], engine.gpu,"
        " engine.tp, engine.dtype, engine.max_num_batched_tokens [8192],"
        " engine.max_num_seqs [1024], engine.max_model_len, engine.enable_prefix_caching,"
        " engine.stepping [event|iteration], engine.kv_capacity_tokens; load.clients [64],"
        " load.requests [16], load.first_prompt [512], load.extend [512], load.output [1024],"
        " load.think_s [0], load.carry_output [false].",
    )
    es.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. engine.tp=4"
    )
    es.add_argument("--out", help="directory for requests.parquet, engine_steps.parquet, config")
    es.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_allow_large(es)
    es.set_defaults(func=cmd_engine_sim)
