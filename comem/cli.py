"""The ``comem`` command: a thin layer over the importable library functions.

Every user error (bad name, bad number, missing file) ends as one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from calibration.errors import ComemInputError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what and where) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text}")
    return value


def _writable_dir(path: str | None, flag: str) -> None:
    """Fail before a long live run, not after it, if its output cannot be written."""
    if path is None:
        return
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".comem-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ComemInputError(f"{flag} {path}: cannot write there ({exc.strerror})") from None


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=1, sort_keys=True))


# --- commands -------------------------------------------------------------------------


def cmd_calibrate_report(args: argparse.Namespace) -> int:
    from calibration.profile import Profile
    from calibration.report import build_report, render_text

    profile = Profile.load(args.profile) if args.profile else None
    report = build_report(
        gpu=args.gpu,
        dtype=args.dtype,
        kernels=args.kernels,
        e2e_csv=args.e2e,
        figures_dir=None if args.no_figures else args.figures,
        profile=profile,
    )
    if args.json:
        _print_json(report.to_dict())
    else:
        print(render_text(report), end="")
    return 0


def cmd_calibrate_fit(args: argparse.Namespace) -> int:
    from calibration.fit import fit_profile
    from calibration.profile import Profile

    if args.measurements:
        return _fit_measured(args)

    overhead_from = Profile.load(args.overhead_from) if args.overhead_from else None
    profile = fit_profile(
        args.kernels,
        dtype=args.dtype,
        gpu=args.gpu,
        e2e_csv=args.e2e,
        fallback_kernel_dir=args.fallback_kernels,
        overhead_from=overhead_from,
    )
    path = profile.save(args.out)
    for key, fit in sorted(profile.ops.items()):
        stats = fit.stats.get("with_lattice", fit.stats.get("roofline_only", {}))
        print(f"{key:22s} MAPE {stats.get('mape', float('nan')):6.1%}  rows {stats.get('rows')}")
    if profile.overhead:
        print(f"overhead: {profile.overhead}")
    for note in profile.provenance.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {path}")
    return 0


def _fit_measured(args: argparse.Namespace) -> int:
    from calibration.measured import fit_measurements_file

    if args.max_batch_tokens is None:
        raise ComemInputError(
            "--measurements needs --max-batch-tokens: the server's token budget per"
            " iteration (vLLM --max-num-batched-tokens, transformers --cb-max-batch-tokens)"
        )
    prof = fit_measurements_file(
        args.measurements,
        args.max_batch_tokens,
        args.kv_capacity_tokens,
        args.block_size,
        server={"description": args.server} if args.server else None,
    )
    path = prof.save(args.out)
    s, e = prof.surrogate, prof.fit_error
    print(
        f"iteration = {s.c0 * 1e3:.3f} ms + {s.c1 * 1e6:.3f} us/token"
        f" + {s.c2 * 1e9:.4f} ns/prefill pair + {s.c3 * 1e6:.2f} us/decode seq"
        f" + {s.c4 * 1e9:.3f} ns/KV token decoded + {prof.packed_attention_s * 1e12:.3f}"
        f" ps/(token x KV read); per admission {prof.admission_s * 1e3:.2f} ms of server"
        f" time; request overhead {prof.request_overhead_s * 1e3:.2f} ms"
    )
    print(
        f"fit on {e['waves']} waves ({e['waves_left_out']} left out for failed requests):"
        f" TTFT MAPE {e['ttft_mape']:.1%} (worst {e['ttft_max_rel_error']:.0%}),"
        f" ITL MAPE {e['itl_mape']:.1%} (worst {e['itl_max_rel_error']:.0%}),"
        f" e2e MAPE {e['e2e_mape']:.1%} (worst {e['e2e_max_rel_error']:.0%})"
    )
    print(f"wrote {path}")
    return 0


def _parse_json_object(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ComemInputError(f"{flag}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ComemInputError(f"{flag}: expected a JSON object, got {text!r}")
    return value


def cmd_profile(args: argparse.Namespace) -> int:
    from live.openai_stream import Endpoint
    from live.profiler import load_grid, run_profile

    endpoint = Endpoint.parse(args.endpoint)
    grid = load_grid(args.grid)
    extra = _parse_json_object(args.extra_body, "--extra-body")
    summary = run_profile(
        endpoint, args.model, grid, args.out, extra, progress=not args.json and sys.stderr.isatty()
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
    from live.openai_stream import Endpoint
    from live.replay import (
        LiveTarget,
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
    _writable_dir(args.out, "--out")
    live = replay_scenario(scenario, target, progress=not args.json and sys.stderr.isatty())
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
        raise ComemInputError(f"comem live-loop: {reason}")
    scenario = load_scenario(args.scenario or DEFAULT_SCENARIO, args.set or [])
    grid = load_grid(args.grid)
    _writable_dir(args.out, "--out")
    try:
        result = run_live_loop(
            args.out, scenario, grid, progress=sys.stderr.isatty() and not args.json
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


def cmd_calibrate_build_defaults(args: argparse.Namespace) -> int:
    from calibration.fit import build_default_profiles

    for path in build_default_profiles(args.shared, args.out):
        print(f"wrote {path}")
    return 0


def cmd_calibrate_microbench(args: argparse.Namespace) -> int:
    from calibration.microbench import run_microbench

    progress = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_microbench(args.out, device=args.device, quick=args.quick, progress=progress)
    if args.json:
        _print_json(
            {
                "out": str(result.out_dir),
                "rows": result.rows,
                "device": result.device,
                "skipped": result.skipped,
            }
        )
        return 0
    dev = result.device
    print(f"{dev['device']}: " + ", ".join(f"{op} {n} rows" for op, n in result.rows.items()))
    peaks = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in dev["peak_flops"].items())
    print(f"fastest GEMM: {peaks}; copy bandwidth {dev['hbm_bandwidth_Bps'] / 1e9:.4g} GB/s")
    for note in result.skipped:
        print(f"skipped: {note}")
    print(
        f"wrote {result.out_dir}; next: comem calibrate fit --kernels {result.out_dir} --out P.json"
    )
    return 0


def cmd_predict_static(args: argparse.Namespace) -> int:
    from calibration.latency import LatencyModel
    from calibration.profile import Profile
    from calibration.static import static_cost

    profile = Profile.load(args.profile) if args.profile else None
    lm = LatencyModel(args.model, args.gpu, args.tp, args.dtype, profile=profile)
    cost = static_cost(
        lm,
        args.batch,
        args.input,
        args.output,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    # the same arithmetic as calibration.static.predict_static_latency, priced once
    latency = cost.latency(lm.overhead_per_iteration_s, lm.overhead_per_sequence_s)
    if args.json:
        _print_json(
            {
                "latency_s": latency,
                "iterations": cost.iterations,
                "preemptions": cost.preemptions,
                "kernel_s": cost.kernel_s,
                "model": lm.model.alias,
                "gpu": lm.gpu.name,
                "tp": lm.tp,
                "dtype": lm.dtype,
            }
        )
    else:
        print(f"{latency:.4f}")
    return 0


def cmd_engine_sim(args: argparse.Namespace) -> int:
    from sim.config import apply_overrides, validate
    from sim.runner import EngineRun, run_engine_load

    run = validate(EngineRun, apply_overrides({}, args.set or []))
    result = run_engine_load(run, progress=not args.json and sys.stderr.isatty())
    summary = result.summary()
    written = result.write(args.out) if args.out else []
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
        f"  simulated {summary['simulated_s']:.1f} s in {summary['wall_s']:.2f} s wall, "
        f"{summary['iterations']} iterations in {summary['engine_steps']} engine steps"
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from sim.scenario import load_scenario, run_scenario

    scenario = load_scenario(args.scenario, args.set or [])
    result = run_scenario(scenario, progress=not args.json and sys.stderr.isatty())
    summary = result.summary()
    written = result.write(args.out) if args.out else []
    if args.json:
        _print_json({**summary, "files": [str(p) for p in written]})
        return 0
    from rich.console import Console
    from rich.table import Table

    w = scenario.workload
    table = Table(
        title=f"{scenario.name}: {w.agents} agents x {w.tasks_per_agent} tasks,"
        f" {w.kind} workload ({scenario.engine.stepping} stepping)"
    )
    cols = (
        "arch", "task mean s", "task p99 s", "step mean s", "step p50 s", "step p99 s",
        "steps/s", "stall s", "uncached tok", "KV peak", "preempt", "speedup vs FC",
    )  # fmt: skip
    for c in cols:
        table.add_column(c, justify="left" if c == "arch" else "right", no_wrap=c == "arch")
    for name, s in summary["architectures"].items():
        speed = summary["speedup_vs_fc"].get(name)
        table.add_row(
            name,
            f"{s['mean_task_latency_s']:.1f}",
            f"{s['p99_task_latency_s']:.1f}",
            f"{s['mean_step_latency_s']:.2f}",
            f"{s['p50_step_latency_s']:.2f}",
            f"{s['p99_step_latency_s']:.2f}",
            f"{s['throughput_steps_per_s']:.3f}",
            f"{s['mean_stall_s']:.2f}",
            f"{s['mean_uncached_prefill_tokens']:.0f}",
            f"{s['kv_peak_fraction']:.0%}",
            str(s["preemptions"]),
            "-" if speed is None else f"{speed:.2f}x",
        )
    Console(width=140).print(table)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_workload_fit(args: argparse.Namespace) -> int:
    from sim.workloads import default_steps_file, fit_workload, plot_fitted

    steps = args.steps or default_steps_file()
    if steps is None:
        raise ComemInputError("no steps CSV: pass --steps (shared/ is not beside the project)")
    payload = fit_workload(steps, args.source or None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    for name, spec in payload["variables"].items():
        print(
            f"{name:14s} lognormal mu {spec['mu']:8.3f} sigma {spec['sigma']:6.3f}"
            f"  zeros {spec['zero_fraction']:5.1%}  KS {spec['ks']:.3f}  n {spec['n']}"
        )
    print(f"wrote {out}")
    if args.figure:
        print(f"wrote {plot_fitted(steps, payload, args.figure)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from comem.validation import as_json, run_ladder

    rungs = run_ladder(quick=args.quick, seed=args.seed)
    if args.json:
        _print_json(as_json(rungs))
    else:
        for r in rungs:
            mark = "PASS" if r.ok else "FAIL"
            print(f"{mark}  {r.name}: {r.metric} = {r.value:.3g} (threshold {r.threshold:.3g})")
    return 0 if all(r.ok for r in rungs) else 1


def cmd_theory(args: argparse.Namespace) -> int:
    from theory import latex_results

    results = latex_results()
    if args.json:
        _print_json(results)
    else:
        for name, tex in results.items():
            print(f"{name}:\n  {tex}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import os

    from sim.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    out = args.out or str(Path("out") / Path(args.sweep).stem)
    workers = args.workers or (os.cpu_count() or 1)
    show = not args.json and sys.stderr.isatty()
    if show:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} points"),
            TimeRemainingColumn(),
            transient=True,
        ) as bar:
            job = bar.add_task(Path(args.sweep).stem, total=len(sweep.points))
            table = run_sweep(
                sweep, out, workers, args.scheduler,
                on_point=lambda done, total: bar.update(job, completed=done),
            )  # fmt: skip
    else:
        table = run_sweep(sweep, out, workers, args.scheduler)
    if args.json:
        _print_json({"points": len(sweep.points), "rows": len(table), "out": out})
    else:
        print(f"{len(sweep.points)} points, {len(table)} rows -> {Path(out) / 'results.parquet'}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from comem.figures import make_figures

    for path in make_figures(args.out, quick=args.quick):
        print(f"wrote {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from calibration.profile import available_profiles
    from calibration.registry import GPUS, REGISTRY

    if args.what == "models":
        for entry in REGISTRY.values():
            m = entry.spec
            kind = f"MoE {m.experts}x top-{m.top_k}" if m.is_moe else "dense"
            print(
                f"{m.alias:18s} {m.hf_id:36s} {m.param_count() / 1e9:7.1f}B  {kind:17s}"
                f" source: {entry.source}"
            )
    elif args.what == "gpus":
        for g in GPUS.values():
            print(
                f"{g.name:10s} {g.memory_gib:6.0f} GiB  {g.hbm_bandwidth_Bps / 1e12:.2f} TB/s  "
                f"bf16 {g.peak_flops['bf16'] / 1e12:.0f} TFLOP/s  "
                f"fp8 {g.peak_flops['fp8'] / 1e12:.0f} TFLOP/s"
            )
    else:
        for gpu, framework, dtype in available_profiles():
            print(f"{gpu:10s} {framework:12s} {dtype}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="comem",
        description="Systems model of decoupled context memory (CoMem) for LLM agents.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    cal = sub.add_parser("calibrate", help="latency-model calibration (report, fit)")
    cal_sub = cal.add_subparsers(dest="calibrate_command", required=True, parser_class=_Parser)

    rep = cal_sub.add_parser("report", help="print the calibration report and write its plots")
    rep.add_argument("--gpu", default="h100_sxm")
    rep.add_argument("--dtype", default="bf16")
    rep.add_argument("--profile", help="a profile JSON file instead of the embedded default")
    rep.add_argument("--kernels", help="kernel-table directory to recompute per-op errors on")
    rep.add_argument("--e2e", help="end-to-end static-batch CSV to recompute the e2e error on")
    rep.add_argument("--figures", default="figures/calibration", help="where plots go")
    rep.add_argument("--no-figures", action="store_true", help="do not write plots")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.set_defaults(func=cmd_calibrate_report)

    fit = cal_sub.add_parser(
        "fit", help="fit a profile from kernel tables or from a live server's measurements"
    )
    src = fit.add_mutually_exclusive_group(required=True)
    src.add_argument("--kernels", help="directory in aiconfigurator's schema")
    src.add_argument("--measurements", help="'comem profile' CSV of a live server")
    fit.add_argument("--out", required=True, help="profile JSON file to write")
    fit.add_argument(
        "--max-batch-tokens",
        type=_positive_int,
        help="(--measurements) the server's token budget per iteration",
    )
    fit.add_argument(
        "--kv-capacity-tokens", type=_positive_int, help="(--measurements) the server's KV tokens"
    )
    fit.add_argument("--block-size", type=_positive_int, help="(--measurements) KV block size")
    fit.add_argument("--server", help="(--measurements) free-text description of the server")
    fit.add_argument("--gpu", help="GPU name (default: from the tables' device column)")
    fit.add_argument("--dtype", default="bf16")
    fit.add_argument("--e2e", help="end-to-end static-batch CSV to fit the overhead term on")
    fit.add_argument("--fallback-kernels", help="tables for ops whose own table is inconsistent")
    fit.add_argument("--overhead-from", help="copy the overhead term from this profile")
    fit.set_defaults(func=cmd_calibrate_fit)

    bld = cal_sub.add_parser("build-defaults", help="regenerate the embedded profiles")
    bld.add_argument("--shared", required=True, help="the shared/ data checkout")
    bld.add_argument("--out", help="directory (default: the package's profiles/)")
    bld.set_defaults(func=cmd_calibrate_build_defaults)

    mb = cal_sub.add_parser(
        "microbench",
        help="time GEMMs and attention on this device with torch; write kernel tables",
        description="Writes the kernel-table schema of the committed vLLM tables plus"
        " device.json, for 'comem calibrate fit --kernels OUT'. Needs torch (extra 'serve').",
    )
    mb.add_argument("--out", required=True, help="directory for the tables and device.json")
    mb.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    mb.add_argument("--quick", action="store_true", help="tiny shapes (seconds, for CPU/CI)")
    mb.add_argument("--json", action="store_true", help="print the summary as JSON")
    mb.set_defaults(func=cmd_calibrate_microbench)

    ps = sub.add_parser(
        "predict-static", help="predicted latency of one static batch (vLLM benchmark_latency)"
    )
    ps.add_argument(
        "--model",
        required=True,
        help="alias, HF id (see 'comem list models') or path of a Hugging Face config.json",
    )
    ps.add_argument("--gpu", default="h100_sxm")
    ps.add_argument("--tp", type=_positive_int, default=1)
    ps.add_argument("--dtype", default="bf16")
    ps.add_argument("--batch", type=_positive_int, required=True)
    ps.add_argument("--input", type=_positive_int, required=True, help="prompt tokens")
    ps.add_argument("--output", type=_positive_int, required=True, help="generated tokens")
    ps.add_argument("--max-num-batched-tokens", type=_positive_int, default=16384)
    ps.add_argument("--gpu-memory-utilization", type=_fraction, default=0.9)
    ps.add_argument("--profile", help="a profile JSON file instead of the embedded default")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=cmd_predict_static)

    es = sub.add_parser(
        "engine-sim",
        help="simulate one serving engine under closed-loop clients",
        description="Fields (defaults in brackets): engine.model [llama-3-8b], engine.gpu,"
        " engine.tp, engine.dtype, engine.max_num_batched_tokens [8192],"
        " engine.max_num_seqs [1024], engine.max_model_len, engine.enable_prefix_caching,"
        " engine.stepping [fast|iteration], engine.kv_capacity_tokens; load.clients [64],"
        " load.requests [16], load.first_prompt [512], load.extend [512], load.output [1024],"
        " load.think_s [0], load.carry_output [false].",
    )
    es.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. engine.tp=4"
    )
    es.add_argument("--out", help="directory for requests.parquet, engine_steps.parquet, config")
    es.add_argument("--json", action="store_true", help="print the summary as JSON")
    es.set_defaults(func=cmd_engine_sim)

    rn = sub.add_parser(
        "run", help="run every architecture of a scenario and compare them (the main job)"
    )
    rn.add_argument("scenario", help="scenario TOML file (see scenarios/)")
    rn.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a field: workload.agents=128"
    )
    rn.add_argument("--out", help="directory for the Parquet tables and the resolved config")
    rn.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    rn.set_defaults(func=cmd_run)

    pr = sub.add_parser(
        "profile", help="measure a live OpenAI-compatible server over a grid of loads (CSV)"
    )
    pr.add_argument("--endpoint", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    pr.add_argument("--model", required=True, help="model name the server knows")
    pr.add_argument("--grid", help="grid TOML (input_tokens, output_tokens, concurrency, rounds)")
    pr.add_argument("--out", default="profile.csv", help="CSV to write, one row per request")
    pr.add_argument(
        "--extra-body", help="JSON merged into every request, e.g. '{\"ignore_eos\": true}' (vLLM)"
    )
    pr.add_argument("--json", action="store_true", help="print the summary as JSON")
    pr.set_defaults(func=cmd_profile)

    rp = sub.add_parser(
        "replay", help="run a scenario's agents against live servers (and compare with the sim)"
    )
    rp.add_argument("scenario", help="scenario TOML file (closed-loop workload)")
    rp.add_argument("--endpoint", required=True, help="agent model server base URL")
    rp.add_argument("--model", required=True, help="agent model name")
    rp.add_argument("--memory-endpoint", help="memory model server (needed by SM and KSO)")
    rp.add_argument("--memory-model", help="memory model name (default: --model)")
    rp.add_argument("--profile", help="measured profile JSON: also simulate and compare")
    rp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a scenario field")
    rp.add_argument("--timeout", type=_positive_seconds, default=120.0, help="seconds per request")
    rp.add_argument("--extra-body", help="JSON merged into every request")
    rp.add_argument("--out", help="directory for live_steps.csv, live_tasks.csv, comparison.csv")
    rp.add_argument("--json", action="store_true", help="print the summary as JSON")
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
    ll.set_defaults(func=cmd_live_loop)

    wl = sub.add_parser("workload", help="agent workloads (fit distributions to traces)")
    wl_sub = wl.add_subparsers(dest="workload_command", required=True, parser_class=_Parser)
    wf = wl_sub.add_parser("fit", help="fit the 'fitted' workload to a SWE-bench steps CSV")
    wf.add_argument("--steps", help="steps CSV (default: shared/data/workloads/...)")
    wf.add_argument("--source", action="append", help="trace source(s) to fit (default: Gemini)")
    wf.add_argument("--out", default="sim/data/swebench_fitted.json")
    wf.add_argument("--figure", help="write a fit-vs-data figure (PNG) here")
    wf.set_defaults(func=cmd_workload_fit)

    sw = sub.add_parser("sweep", help="run a grid of scenarios (parallel, resumable)")
    sw.add_argument("sweep", help="sweep TOML file (see sweeps/)")
    sw.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    sw.add_argument("--scheduler", help="'local' (a Dask LocalCluster) or a Dask scheduler address")
    sw.add_argument("--out", help="output directory (default: out/<sweep name>)")
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(func=cmd_sweep)

    fg = sub.add_parser("figures", help="regenerate the figures (PNG and PDF)")
    fg.add_argument("--quick", action="store_true", help="small simulations (seconds)")
    fg.add_argument("--out", default="figures")
    fg.set_defaults(func=cmd_figures)

    va = sub.add_parser("validate", help="run the validation ladder (sim vs theory vs data)")
    va.add_argument("--quick", action="store_true", help="fewer cases (about 15 s)")
    va.add_argument("--seed", type=int, default=0)
    va.add_argument("--json", action="store_true")
    va.set_defaults(func=cmd_validate)

    th = sub.add_parser("theory", help="print the closed forms and bounds as LaTeX")
    th.add_argument("--json", action="store_true")
    th.set_defaults(func=cmd_theory)

    ls = sub.add_parser("list", help="list known models, GPUs or embedded profiles")
    ls.add_argument("what", choices=("models", "gpus", "profiles"))
    ls.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ComemInputError as exc:
        print(f"comem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("comem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
