"""``comem profile``, ``comem replay`` and ``comem live-loop``: live servers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import _add_allow_large, _name, _positive_seconds
from comem.cli.common import _outputs_not_inputs, _print_json, _writable_dir


def _parse_json_object(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    from calibration.inputs import parse_json

    value = parse_json(text, flag)
    if not isinstance(value, dict):
        raise ComemInputError(f"{flag}: expected a JSON object, got {text!r}")
    return value


def cmd_profile(args: argparse.Namespace) -> int:
    from calibration.outputs import refuse_outputs_over_inputs
    from live.openai_stream import Endpoint
    from live.profiler import load_grid, run_profile

    endpoint = Endpoint.parse(args.endpoint)
    grid = load_grid(args.grid)
    extra = _parse_json_object(args.extra_body, "--extra-body")
    out = Path(args.out)  # --force replaces measurements, never the grid it reads
    refuse_outputs_over_inputs([out, out.with_suffix(".metrics.csv")], {"--grid": args.grid})
    summary = run_profile(
        endpoint,
        args.model,
        grid,
        args.out,
        extra,
        progress=not args.json and sys.stderr.isatty(),
        overwrite=args.force,
    )
    failed = summary["requests"] - summary["statuses"].get("ok", 0)
    if args.json:
        _print_json(summary)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{args.model} at {endpoint}: medians per grid point")
        for c in (
            "cached tok",
            "new tok",
            "output tok",
            "concurrency",
            "ok",
            "failed",
            "TTFT ms",
            "ITL ms",
            "e2e ms",
        ):
            table.add_column(c, justify="right")
        for p in summary["points"]:
            table.add_row(
                str(p["cached_tokens"]),
                str(p["input_tokens"]),
                str(p["output_tokens"]),
                str(p["concurrency"]),
                str(p["ok"]),
                str(p["failed"]),
                f"{p['ttft_ms']:.1f}",
                f"{p['itl_ms']:.2f}",
                f"{p['e2e_ms']:.1f}",
            )
        Console().print(table)
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary["statuses"].items()))
        print(f"{summary['requests']} requests: {statuses}")
        print(
            f"wrote {summary['csv']}"
            + (f" and {summary['metrics_csv']}" if summary["metrics_csv"] else "")
        )
    if failed:
        print(
            f"comem profile: {failed} of {summary['requests']} requests failed (see the"
            f" status and error columns of {summary['csv']})",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from live.agent import LiveTarget
    from live.openai_stream import Endpoint
    from live.replay import (
        check_live_cost,
        compare_with_simulation,
        comparison_line,
        replay_scenario,
        simulate_live,
    )
    from sim.scenario import load_scenario

    scenario = load_scenario(args.scenario, args.set or [])
    target = LiveTarget(
        agent=Endpoint.parse(args.endpoint),
        model=args.model,
        memory=Endpoint.parse(args.memory_endpoint, "--memory-endpoint")
        if args.memory_endpoint
        else None,
        memory_model=args.memory_model,
        timeout_s=args.timeout,
        extra_body=_parse_json_object(args.extra_body, "--extra-body"),
    )
    if args.profile:  # fail on a bad profile before running anything live
        from calibration.measured import MeasuredProfile

        MeasuredProfile.load(args.profile)
    check_live_cost(scenario)
    if args.out:
        from calibration.outputs import refuse_overwrite

        names = ("live_steps.csv", "live_tasks.csv", "live_summaries.csv", "comparison.csv")
        _outputs_not_inputs(
            args.out,
            (*names, "config.json"),
            {"scenario": args.scenario, "--profile": args.profile,
             "settings": scenario.model_dump()},
        )  # fmt: skip
        refuse_overwrite([Path(args.out) / n for n in names], args.force)
    _writable_dir(args.out)
    live = replay_scenario(
        scenario, target, progress=not args.json and sys.stderr.isatty(), out=args.out
    )
    written = live.write(args.out) if args.out else []
    out: dict[str, Any] = {**live.summary(), "files": written}
    comparison = None
    if args.profile:
        comparison = compare_with_simulation(live, simulate_live(scenario, args.profile))
        out["comparison"] = comparison.to_dict(orient="records")
        if args.out:
            path = Path(args.out) / "comparison.csv"
            comparison.to_csv(path, index=False)
            out["files"].append(str(path))
    if args.json:
        _print_json(out)
    else:
        for name, s in out["architectures"].items():
            print(
                f"{name:8s} steps {s['steps']} ({s['steps_failed']} failed)  tasks"
                f" {s['tasks_finished']}/{s['tasks']} finished  step mean"
                f" {s['mean_step_latency_s']:.3f} s  task mean {s['mean_task_latency_s']:.2f} s"
                f"  stall mean {s['mean_stall_s']:.3f} s"
            )
        if comparison is not None:
            for row in comparison.to_dict(orient="records"):
                print(comparison_line(row))
        for f in written:
            print(f"wrote {f}")
    bad = live.tasks[live.tasks["status"] != "finished"]["status"]
    bad_summaries = int((live.summaries["status"] != "ok").sum())
    if len(bad) or bad_summaries:
        first = bad.iloc[0] if len(bad) else "a summary request failed"
        print(
            f"comem replay: {len(bad)} tasks did not finish, {bad_summaries} summary"
            f" requests failed; first: {first}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_live_loop(args: argparse.Namespace) -> int:
    from live.loop import DEFAULT_SCENARIO, run_live_loop
    from live.profiler import load_grid
    from live.replay import comparison_line
    from live.server import serve_available
    from sim.scenario import load_scenario

    reason = serve_available()
    if reason is not None:
        raise ComemInputError(reason)
    scenario = load_scenario(args.scenario or DEFAULT_SCENARIO, args.set or [])
    grid = load_grid(args.grid)
    from calibration.outputs import refuse_overwrite

    out = Path(args.out)
    _outputs_not_inputs(
        out,
        ("profile.csv", "profile.metrics.csv", "profile.json", "live_steps.csv",
         "live_tasks.csv", "live_summaries.csv", "config.json", "comparison.csv", "loop.json"),
        {"--scenario": args.scenario, "--grid": args.grid, "settings": scenario.model_dump()},
    )  # fmt: skip
    refuse_overwrite([out / "profile.csv", out / "live_steps.csv"], args.force)
    _writable_dir(args.out)
    try:
        result = run_live_loop(
            args.out,
            scenario,
            grid,
            progress=not args.json and sys.stderr.isatty(),
            overwrite=args.force,
        )
    except RuntimeError as exc:  # a server that would not start: its log says why
        print(f"comem live-loop: {str(exc).splitlines()[0]} (logs in {args.out})", file=sys.stderr)
        return 1
    if args.json:
        _print_json(result.to_dict())
        return 0
    e = result.fit_error
    print(
        f"profile: {result.profile_summary['requests']} requests, fit TTFT MAPE"
        f" {e['ttft_mape']:.1%}, ITL MAPE {e['itl_mape']:.1%}, e2e MAPE {e['e2e_mape']:.1%}"
    )
    for row in result.comparison.to_dict(orient="records"):
        print(comparison_line(row))
    print(
        f"machine speed drift during the run: {result.drift:.1%} (spread of a speed probe"
        " before the profile, before and after the replay; errors below it mean little)"
    )
    print(f"wrote {result.out}/ (profile.csv, profile.json, live_steps.csv, comparison.csv, ...)")
    return 0


def register(sub: Any) -> None:
    pr = sub.add_parser(
        "profile", help="measure a live OpenAI-compatible server over a grid of loads (CSV)"
    )
    pr.add_argument("--endpoint", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    pr.add_argument("--model", type=_name, required=True, help="model name the server knows")
    pr.add_argument("--grid", help="grid TOML (input_tokens, output_tokens, concurrency, rounds)")
    pr.add_argument(
        "--out",
        default="profile.csv",
        help="CSV to write, one row per request (never replaces an existing one: see --force)",
    )
    pr.add_argument(
        "--force", action="store_true", help="replace an existing --out CSV and its .metrics.csv"
    )
    pr.add_argument(
        "--extra-body", help="JSON merged into every request, e.g. '{\"ignore_eos\": true}' (vLLM)"
    )
    pr.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_allow_large(pr)
    pr.set_defaults(func=cmd_profile)

    rp = sub.add_parser(
        "replay", help="run a scenario's agents against live servers (and compare with the sim)"
    )
    rp.add_argument("scenario", help="scenario TOML file (closed-loop workload)")
    rp.add_argument("--endpoint", required=True, help="agent model server base URL")
    rp.add_argument("--model", type=_name, required=True, help="agent model name")
    rp.add_argument("--memory-endpoint", help="memory model server (needed by SM and KSO)")
    rp.add_argument("--memory-model", type=_name, help="memory model name (default: --model)")
    rp.add_argument("--profile", help="measured profile JSON: also simulate and compare")
    rp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a scenario field")
    rp.add_argument("--timeout", type=_positive_seconds, default=120.0, help="seconds per request")
    rp.add_argument("--extra-body", help="JSON merged into every request")
    rp.add_argument("--out", help="directory for live_steps.csv, live_tasks.csv, comparison.csv")
    rp.add_argument("--force", action="store_true", help="replace measurements already in --out")
    rp.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_allow_large(rp)
    rp.set_defaults(func=cmd_replay)

    ll = sub.add_parser(
        "live-loop",
        help="tiny local model on two transformers-serve instances: profile, fit, replay, compare",
    )
    ll.add_argument("--out", default="out/live-loop", help="directory for everything measured")
    ll.add_argument("--scenario", help="scenario TOML (default: scenarios/live/tiny_cpu.toml)")
    ll.add_argument("--grid", help="profile grid TOML (default: the built-in grid)")
    ll.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a scenario field")
    ll.add_argument("--json", action="store_true", help="print the result as JSON")
    ll.add_argument("--force", action="store_true", help="replace measurements already in --out")
    _add_allow_large(ll)
    ll.set_defaults(func=cmd_live_loop)
