"""The ``comem`` command: a thin layer over the importable library functions.

Every user error (bad name, bad number, missing file) ends as one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from calibration.errors import ComemInputError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what and where) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """An unknown flag names the command it was given to and that command's help
        (``comem bench-serve --help``), not the top-level one."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            prog = getattr(ns, "command_prog", self.prog)
            hint = (
                " (a `vllm bench serve` flag comem neither prices nor accepts)"
                if prog.endswith("bench-serve") and extras[0].startswith("--")
                else ""
            )
            self.exit(
                2,
                f"{prog}: error: unrecognized arguments: {' '.join(extras)}{hint}"
                f" (see '{prog} --help')\n",
            )
        return ns


class _HelpFields(argparse.Action):
    """``--help-fields``: print every scenario field (generated from the models) and exit."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from sim.reference import render_text

        print(render_text(), end="")
        parser.exit(0)


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low`` (and <= ``high``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number, got {_shown(text)}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_shown(text)}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _speculative_config(text: str) -> int:
    """vLLM's ``--speculative-config`` JSON, MTP only: the number of draft tokens."""
    import json

    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {_shown(text)}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {_shown(text)}")
    extra = sorted(set(spec) - {"method", "num_speculative_tokens"})
    if extra:
        raise argparse.ArgumentTypeError(
            f"{_shown(str(extra[0]))} is not modelled (only method and num_speculative_tokens)"
        )
    method = spec.get("method", "mtp")
    if not isinstance(method, str) or not (method == "mtp" or method.endswith("_mtp")):
        raise argparse.ArgumentTypeError(
            f"method {_shown(str(method))}: only MTP (the checkpoint's own modules) is modelled"
        )
    k = spec.get("num_speculative_tokens")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 16:
        raise argparse.ArgumentTypeError(
            f"num_speculative_tokens must be a whole number in 1..16, got {_shown(str(k))}"
        )
    return k


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not 0.0 < value <= 1e6:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 1e6], got {text}")
    return value


def _seconds(text: str) -> float:
    """Seconds, 0 allowed (a tool that returns at once)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not 0.0 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in [0, 1e6], got {text}")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_shown(text)}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _token_count(text: str) -> int:
    """A count of tokens (a budget, a cache size, a block size): 1 to 10^9, the bound of
    every token field of the input files."""
    from calibration.inputs import MAX_TOKENS

    value = _positive_int(text)
    if value > MAX_TOKENS:
        raise argparse.ArgumentTypeError(f"must be a token count <= {MAX_TOKENS:.0e}, got {text}")
    return value


def _name(text: str) -> str:
    """A name (a framework, a served model): not empty, no control characters."""
    if not text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"expected a name of printable characters, got {_shown(text)}"
        )
    return text


def _path(text: str) -> str:
    """A file or directory argument: an empty one names nothing (it would be skipped, or
    mean the current directory, without a word)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if not text.isprintable():  # a newline or NUL makes no usable file name
        raise argparse.ArgumentTypeError(
            f"expected a path of printable characters, got {_shown(text)}"
        )
    return text


#: the arguments that name files or directories (every command's): checked by :func:`_path`
_PATH_ARGS = frozenset(
    {"out", "profile", "grid", "spec", "workload", "kernels", "measurements", "e2e",
     "fallback_kernels", "overhead_from", "figures", "csv", "dir", "only", "steps", "figure",
     "scenario", "sweep", "shared", "result_dir", "result_filename", "data"}
)  # fmt: skip


def _check_paths(parser: argparse.ArgumentParser) -> None:
    """Give every path argument of ``parser`` and its subcommands the :func:`_path` type."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _check_paths(sub)
        elif action.dest in _PATH_ARGS and action.type is None and action.nargs != 0:
            action.type = _path


def _workers(requested: int | None, jobs: int) -> int:
    """Worker processes for ``jobs`` jobs: ``--workers`` (at most 4 per CPU: a process
    pool forks them all at once) or the CPU count, never more than there are jobs."""
    import os

    from calibration import limits

    cpus = os.cpu_count() or 1
    if requested is not None:
        limits.check(
            limits.Budget(4 * cpus, f"worker processes (4 per CPU; this machine has {cpus})"),
            requested,
            f"--workers {requested}",
        )
    return max(1, min(requested or cpus, jobs))


def _writable_dir(path: str | None, flag: str = "--out") -> None:
    """Fail before a run, not after it, if its output directory cannot be written."""
    if path is not None:
        from calibration.inputs import writable_dir

        writable_dir(path, flag)


def _writable_file(path: str | None, flag: str = "--out") -> None:
    """Fail before a run, not after it, if its output file cannot be written."""
    if path is not None:
        from calibration.inputs import writable_file

        writable_file(path, flag)


def _outputs_not_inputs(
    out: str | Path | None, names: Sequence[str], inputs: dict[str, Any], flag: str = "--out"
) -> None:
    """Refuse an ``--out`` directory where a file the command writes (``names``) is one of
    its inputs: a model's config.json, a profile, the scenario itself. ``inputs``: paths
    by name, and settings (``model_dump()``) whose strings may name files."""
    if out is None:
        return
    from calibration.inputs import input_paths, refuse_outputs_over_inputs

    found: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, dict | list):  # named by their field: agent.model
            found.update(input_paths(value))
        else:
            found[name] = value
    refuse_outputs_over_inputs([Path(out) / n for n in names], found, flag)


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _with_progress(
    show: bool, label: str, unit: str, total: int | None, work: Callable[[Any], Any]
) -> Any:
    """Run ``work(advance)`` with progress on stderr (``advance()`` per item done, None
    when ``show`` is false): a bar on a terminal, plain lines in a log
    (:mod:`sim.progress`)."""
    from sim.progress import progress

    with progress(label, unit, total, show) as counter:
        return work(counter)


def _print_json(obj: Any) -> None:
    print(json.dumps(_json_safe(obj), indent=1, sort_keys=True, allow_nan=False))


# --- commands -------------------------------------------------------------------------


def cmd_calibrate_report(args: argparse.Namespace) -> int:
    from calibration.profile import Profile
    from calibration.report import build_report, render_text

    profile = Profile.load(args.profile) if args.profile else None
    if profile is not None:  # the report is the profile's: another --gpu/--dtype is a mistake
        from calibration.registry import get_gpu

        for flag, asked, has in (
            ("--gpu", None if args.gpu is None else get_gpu(args.gpu).name, profile.gpu),
            ("--dtype", args.dtype, profile.dtype),
        ):
            if asked is not None and asked != has:
                raise ComemInputError(
                    f"{flag} {asked}: the --profile {args.profile} is for {has};"
                    f" leave {flag} out, or give a profile for {asked}"
                )
    if not args.no_figures:
        _writable_dir(args.figures, "--figures")
    report = build_report(
        gpu="h100_sxm" if args.gpu is None else args.gpu,
        dtype="bf16" if args.dtype is None else args.dtype,
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
    from calibration.inputs import refuse_input_as_output
    from calibration.profile import Profile

    sidecar = Path(args.measurements).with_suffix(".metrics.csv") if args.measurements else None
    refuse_input_as_output(
        args.out,
        {"--measurements": args.measurements, "--e2e": args.e2e,
         "--overhead-from": args.overhead_from, "--measurements' metrics sidecar": sidecar},
    )  # fmt: skip
    _writable_file(args.out)
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
    from calibration.inputs import parse_json

    value = parse_json(text, flag)
    if not isinstance(value, dict):
        raise ComemInputError(f"{flag}: expected a JSON object, got {text!r}")
    return value


def cmd_profile(args: argparse.Namespace) -> int:
    from calibration.inputs import refuse_outputs_over_inputs
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
    from live.openai_stream import Endpoint
    from live.replay import (
        LiveTarget,
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
        from calibration.inputs import refuse_overwrite

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
    from calibration.inputs import refuse_overwrite

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


def cmd_calibrate_build_defaults(args: argparse.Namespace) -> int:
    from calibration.fit import build_default_profiles
    from calibration.profile import Profile
    from calibration.serving import SHARED_H100_ASSUMPTIONS, load_serving_csv
    from sim.serving import SERVING_FRAMEWORK, calibrate_serving

    _writable_dir(args.out)
    if args.other_gpus is not None:
        from calibration.fit import build_other_gpu_profiles

        for path in build_other_gpu_profiles(args.shared, args.other_gpus or None, args.out):
            print(f"wrote {path}")
        return 0
    paths = build_default_profiles(args.shared, args.out)
    csv = Path(args.shared) / "data" / "serving" / "vllm_serving_h100.csv"
    if csv.is_file():
        # the serving overhead (a modern vLLM) becomes every profile's default; the
        # static batches' (a 2024 vLLM) stays under its own name
        profiles = {(p.gpu, p.dtype): p for p in map(Profile.load, paths)}
        rows = load_serving_csv(csv)
        result = calibrate_serving(rows, SHARED_H100_ASSUMPTIONS, profiles=profiles)
        note = "preset shared-h100: " + "; ".join(
            f"{m}: {v}" for m, v in SHARED_H100_ASSUMPTIONS.items() if v
        )
        entries = result.entries(f"shared/data/serving/{csv.name} ({len(rows)} rows)", note)
        for path in paths:
            prof = Profile.load(path)
            prof.overheads.update(entries)
            prof.overhead = dict(entries[SERVING_FRAMEWORK])
            prof.save(path)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_calibrate_fit_serving(args: argparse.Namespace) -> int:
    from calibration.inputs import refuse_input_as_output
    from calibration.profile import Profile, available_profiles, profile_path
    from calibration.serving import (
        ASSUMPTION_PRESETS,
        error_summary,
        load_serving_csv,
        parse_assumptions,
    )
    from sim.serving import calibrate_serving

    refuse_input_as_output(args.out, {"--csv": args.csv, "--profile": args.profile})
    _writable_file(args.out)
    rows = load_serving_csv(args.csv)
    assumptions = parse_assumptions(args.assume or [], ASSUMPTION_PRESETS[args.preset])
    result = calibrate_serving(
        rows,
        assumptions,
        framework=args.framework,
        per_version=not args.no_per_version,
        cross_validate_models=not args.no_cv,
    )
    note = f"preset {args.preset}; " + "; ".join(
        f"{model}: {values}" for model, values in assumptions.items() if values
    )
    source = f"{Path(args.csv).name}: {len(rows)} rows, {len(result.rows)} fitted"
    entries = result.entries(source, note)
    written = []
    if args.write_defaults or args.out:
        targets = (
            [(Profile.load(profile_path(g, d, f)), profile_path(g, d, f))
             for g, f, d in available_profiles()]
            if args.write_defaults
            else [(Profile.load(args.profile) if args.profile
                   else Profile.load(profile_path(rows[0].gpu, rows[0].dtype)), Path(args.out))]
        )  # fmt: skip
        for prof, path in targets:
            prof.overheads.update(entries)
            prof.overhead = dict(entries[args.framework])
            written.append(str(prof.save(path)))
    summary = error_summary(result.fit.table())
    cv = error_summary(result.cv_table(), by=("model",)) if result.cross_validation else None
    if args.json:
        _print_json(
            {
                "overheads": entries,
                "in_sample": summary.to_dict(orient="records"),
                "cross_validation": None if cv is None else cv.to_dict(orient="records"),
                "written": written,
            }
        )
        return 0
    for r, bound in result.excluded:
        print(
            f"left out: {r.label}: measured TPOT {r.tpot_s * 1e3:.2f} ms is below the"
            f" roofline bound {bound * 1e3:.2f} ms"
        )
    for name, entry in entries.items():
        terms = ", ".join(
            f"{k} {entry[k] * 1e3:.3f} ms" for k in ("per_iteration_s", "request_overhead_s")
        )
        print(
            f"{name}: {terms}, per_sequence_s {entry['per_sequence_s'] * 1e6:.1f} us"
            f" ({entry['rows']} rows; TTFT MAPE {entry['ttft_mape']:.1%},"
            f" TPOT MAPE {entry['tpot_mape']:.1%} in-sample)"
        )
    print("\nin-sample (pooled fit):")
    print(_percent_table(summary))
    if cv is not None:
        print("\nleave one model out (fitted on the other model's rows):")
        print(_percent_table(cv))
    for out_path in written:
        print(f"wrote {out_path}")
    return 0


def _percent_table(frame: Any) -> str:
    """A summary frame with its error columns as percentages."""
    shown = frame.copy()
    for col in shown.columns:
        if col.endswith(("_mape", "_signed")):
            fmt = "{:+.1%}" if col.endswith("_signed") else "{:.1%}"
            shown[col] = [fmt.format(v) for v in shown[col]]
    return shown.to_string(index=False)


def cmd_calibrate_microbench(args: argparse.Namespace) -> int:
    from calibration.inputs import refuse_overwrite
    from calibration.microbench import DEVICE_FILE, KERNEL_FILES, run_microbench

    # the tables are measurements (GPU time): never replaced without --force
    out_dir = Path(args.out)
    names = [DEVICE_FILE, *(fname for fname, _ in KERNEL_FILES.values())]
    refuse_overwrite([out_dir / n for n in names], args.force)
    _writable_dir(args.out)
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


def _weight_dtype(args: argparse.Namespace) -> str:
    """``--dtype``, with ``auto`` resolved as vLLM does: the checkpoint's quantization."""
    if args.dtype != "auto":
        return str(args.dtype)
    from calibration.registry import checkpoint_dtype

    return checkpoint_dtype(args.model)


def cmd_predict_static(args: argparse.Namespace) -> int:
    from calibration.latency import LatencyModel
    from calibration.profile import Profile
    from calibration.static import static_cost

    args.dtype = _weight_dtype(args)

    profile = Profile.load(args.profile) if args.profile else None
    lm = LatencyModel(
        args.model,
        args.gpu,
        args.tp,
        args.dtype,
        profile=profile,
        expert_parallel=args.enable_expert_parallel,
        framework=args.framework,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    cost = static_cost(
        lm,
        args.batch,
        args.input,
        args.output,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    # the same arithmetic as calibration.static.predict_static_latency, priced once
    latency = cost.latency_with(lm) if lm.include_overhead else cost.kernel_s
    # a static batch is decode iterations: TPOT's cross-validated band (the static fit's
    # own, measured on whole batches, where the framework has one)
    band = lm.error_bands.get("static") or lm.error_bands.get("tpot")
    low, high = band.interval(latency) if band is not None else (None, None)
    if args.json:
        _print_json(
            {
                "latency_s": latency,
                "latency_s_low": low,
                "latency_s_high": high,
                "interval_level": None if band is None else band.level,
                "async_scheduling": lm.async_scheduling,
                "iterations": cost.iterations,
                "preemptions": cost.preemptions,
                "kernel_s": cost.kernel_s,
                "model": lm.model.alias,
                "gpu": lm.gpu.name,
                "tp": lm.tp,
                "dtype": lm.dtype,
                "expert_parallel": lm.expert_parallel,
            }
        )
    elif band is not None and low is not None and high is not None:
        print(f"{latency:.4f} s  [{low:.4f}, {high:.4f}] ({band.level:.0%} interval)")
    else:
        print(f"{latency:.4f} s")
    return 0


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
    _writable_dir(args.out)
    result = run_engine_load(run, progress=not args.json)
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
        f"  simulated {summary['simulated_s']:.1f} s in {result.wall_s:.2f} s wall, "
        f"{summary['iterations']} iterations in {summary['engine_steps']} engine steps"
    )
    for path in written:
        print(f"wrote {path}")
    return 0


_DTYPE_HELP = (
    "weights: bf16, fp8, fp4 (NVFP4), int4 or mxfp4 (weight-only routed experts) [auto: the"
    " checkpoint's, as vLLM loads it: from its config.json's quantization_config (fp8, ModelOpt"
    " or compressed-tensors NVFP4, compressed-tensors / AWQ / GPTQ int4, mxfp4; others are"
    " refused) or, without a config, an FP8 / NVFP4 part of its name; else bf16]"
)


#: vLLM's ``--dtype`` spellings. fp16 is priced as bf16: the same 16-bit tensor-core rate and
#: bytes on the GPUs modelled (H100/H200 datasheets list one dense FP16/BF16 peak).
_DTYPE_NAMES = {
    "auto": "auto",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "bf16",
    "float16": "bf16",
    "half": "bf16",
    "fp8": "fp8",
    "fp4": "fp4",
    "nvfp4": "fp4",
    "int4": "int4",
    "mxfp4": "mxfp4",
}


def _dtype_arg(text: str) -> str:
    key = text.strip().lower()
    if key not in _DTYPE_NAMES:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a weight dtype; use auto, bf16 (bfloat16, float16, half), fp8,"
            " fp4 (nvfp4), int4 or mxfp4"
        )
    return _DTYPE_NAMES[key]


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected requests per second or inf, got '{text}'"
        ) from None
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be > 0 (or inf), got {text}")
    return value


def _spec_words(sim: dict[str, Any]) -> str:
    """The simulated server's speculative decoding, if any, for its one-line description."""
    k = sim.get("num_speculative_tokens")
    if not k:
        return ""
    return f" MTP {k} drafts/step (acceptance {sim['spec_acceptance_rate']}),"


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from sim.bench_serve import (
        ACCEPTED_CLIENT_FLAGS,
        REFUSED_CLIENT_FLAGS,
        BenchServeConfig,
        accepted_flag_notes,
        check_config,
        parse_goodput,
        refused_flag,
        run_bench_serve,
    )
    from sim.config import validate

    refusal = refused_flag(
        [f for f in REFUSED_CLIENT_FLAGS if getattr(args, "refused_" + f[2:].replace("-", "_"))
         not in (None, False)]
    )  # fmt: skip
    if refusal is not None:
        raise ComemInputError(refusal)
    args.dtype = _weight_dtype(args)
    from calibration.registry import get_gpu, serve_batch_defaults

    tokens, seqs = serve_batch_defaults(get_gpu(args.gpu))
    if args.max_num_batched_tokens is None:
        args.max_num_batched_tokens = tokens
    if args.max_num_seqs is None:
        args.max_num_seqs = seqs
    engine: dict[str, Any] = {
        "name": "bench-serve",
        "model": args.model,
        "gpu": args.gpu,
        "tp": args.tp,
        "dtype": args.dtype,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "enable_prefix_caching": not args.no_enable_prefix_caching,
        "stepping": args.stepping,
        "record_iterations": bool(args.out),
        "enable_expert_parallel": args.enable_expert_parallel,
        "kv_cache_dtype": args.kv_cache_dtype,
        "fp8_gemm": args.fp8_gemm,
    }
    for key in ("max_model_len", "kv_capacity_tokens", "profile", "kv_offloading_size"):
        if getattr(args, key) is not None:
            engine[key] = getattr(args, key)
    if args.kv_offloading_size is not None:
        engine["kv_offloading_bandwidth_GBps"] = args.kv_offloading_bandwidth_gbps
    if args.data_parallel_size is not None:
        engine["data_parallel_size"] = args.data_parallel_size
    if (args.speculative_config is None) != (args.spec_acceptance_rate is None):
        raise ComemInputError(
            "--speculative-config and --spec-acceptance-rate go together (drafts need the"
            " rate at which they are accepted: not measured here, give your draft's)"
        )
    if args.speculative_config is not None:
        engine["num_speculative_tokens"] = args.speculative_config
        engine["spec_acceptance_rate"] = args.spec_acceptance_rate
    cfg = validate(
        BenchServeConfig,
        {
            "engine": engine,
            "num_prompts": args.num_prompts,
            "random_input_len": args.random_input_len,
            "random_output_len": args.random_output_len,
            "random_range_ratio": args.random_range_ratio,
            "request_rate": args.request_rate,
            "burstiness": args.burstiness,
            "max_concurrency": args.max_concurrency,
            "seed": args.seed,
            "closed_loop_start": args.closed_loop_start,
            "warmup_requests": args.warmup_requests,
            "client_issue_delay_s": args.client_issue_delay,
            "random_prefix_len": args.random_prefix_len,
            "goodput": parse_goodput(args.goodput or []),
            "backend": args.backend,
        },
        "bench-serve",
    )
    check_config(cfg)
    _outputs_not_inputs(
        args.out,
        ("requests.parquet", "engine_steps.parquet", "bench_serve.json"),
        {"settings": cfg.model_dump()},
    )
    _writable_dir(args.out)
    save_to = _bench_serve_result_path(args) if args.save_result else None
    result = _with_progress(
        not args.json, "bench-serve", "requests", cfg.num_prompts,
        lambda advance: run_bench_serve(cfg, progress=advance),
    )  # fmt: skip
    out = result.to_vllm_json(
        detailed=args.save_detailed, metrics=args.percentile_metrics,
        percentiles=args.metric_percentiles,
    )  # fmt: skip
    given = [
        f for f in ACCEPTED_CLIENT_FLAGS
        if getattr(args, "accepted_" + f[2:].replace("-", "_")) not in (None, False)
    ]  # fmt: skip
    for note in accepted_flag_notes(given):  # once the run is known to be good
        print(f"comem bench-serve: note: {note}", file=sys.stderr)
    if out["failed"]:
        first = next((r.reason for r in result.requests if r.status != "finished"), "")
        print(
            f"comem bench-serve: warning: {out['failed']} of {cfg.num_prompts} requests failed"
            f" (first: {first or 'no reason recorded'}); the statistics cover the others",
            file=sys.stderr,
        )
    if save_to is not None:
        save_to.write_text(
            json.dumps(_json_safe(out), indent=1, sort_keys=True, allow_nan=False) + "\n"
        )
    if args.out:
        paths = result.recorder.write_parquet(args.out)
        res_path = Path(args.out) / "bench_serve.json"
        res_path.write_text(
            json.dumps(_json_safe(out), indent=1, sort_keys=True, allow_nan=False) + "\n"
        )
        out["files"] = [str(p) for p in [*paths, res_path]]
    if args.json:
        _print_json(out)
        return 0
    _print_bench_serve(out, args, save_to)
    return 0


def _print_bench_serve(out: dict[str, Any], args: argparse.Namespace, save_to: Any) -> None:
    """``vllm bench serve``'s text result, then the simulated server it ran on."""
    print(f"{' Serving Benchmark Result (simulated) ':=^60}")
    rows = [
        ("Successful requests:", out["completed"]),
        ("Failed requests:", out["failed"]),
        ("Maximum request concurrency:", out["max_concurrency"]),
        ("Benchmark duration (s):", f"{out['duration']:.2f}"),
        ("Total input tokens:", out["total_input_tokens"]),
        ("Total generated tokens:", out["total_output_tokens"]),
        ("Request throughput (req/s):", f"{out['request_throughput']:.2f}"),
        *(
            [("Request goodput (req/s):", f"{out['request_goodput']:.2f}")]
            if "request_goodput" in out
            else []
        ),
        ("Output token throughput (tok/s):", f"{out['output_throughput']:.2f}"),
        ("Peak output token throughput (tok/s):", f"{out['max_output_tokens_per_s']:.2f}"),
        ("Peak concurrent requests:", out["max_concurrent_requests"]),
        ("Total token throughput (tok/s):", f"{out['total_token_throughput']:.2f}"),
    ]
    for label, value in rows:
        print(f"{label:<40}{value!s:<20}")
    titles = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
              "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}  # fmt: skip
    from sim.bench_serve import percentile_key

    stats = ["mean", "median", *(percentile_key(q) for q in args.metric_percentiles)]
    for key in args.percentile_metrics:
        print(f"{titles[key]:-^60}")
        for stat in stats:
            name = f"{stat.capitalize()} {key.upper()} (ms):"
            value = out[f"{stat}_{key}_ms"]
            low, high = out.get(f"{stat}_{key}_ms_low"), out.get(f"{stat}_{key}_ms_high")
            band = f"  [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
            print(f"{name:<40}{value:<20.2f}{band}")
    print("=" * 60)
    if "error_bands" in out:
        level = next(iter(out["error_bands"].values()))["level"]
        print(
            f"[low, high]: {level:.0%} interval from the calibration's errors on models and GPUs"
            " it was not fitted to (comem calibrate report)"
        )
        if out.get("error_bands_caveat"):
            print(f"caveat: {out['error_bands_caveat']}")
    sim = out["simulator"]
    sched = {True: "async scheduling", False: "sync scheduling"}.get(sim["async_scheduling"], "")
    print(
        f"simulated server: {out['model_id']} on"
        f" {sim['tp'] * sim.get('data_parallel_size', 1)} x {sim['gpu']} (TP{sim['tp']}"
        f"{', DP' + str(sim['data_parallel_size']) if 'data_parallel_size' in sim else ''}"
        f"{', EP' if sim['expert_parallel'] else ''}), {sim['dtype']}, {sched},"
        f"{_spec_words(sim)}"
        f" framework overhead {sim['overhead']}"
    )
    print(
        f"preemptions {out['preemptions']}, {sim['iterations']} engine iterations,"
        f" KV cache {sim['kv_cache_blocks']} blocks"
    )
    for path in out.get("files", []):
        print(f"wrote {path}")
    if save_to is not None:
        print(f"wrote {save_to}")


def _bench_serve_result_path(args: argparse.Namespace) -> Path:
    """Where ``--save-result`` writes: ``--result-dir``/``--result-filename``, else vLLM's
    name ``{backend}-{rate}qps[-concurrency{C}]-{model}-{YYYYmmdd-HHMMSS}.json``. An existing
    file is never replaced: a result someone kept is theirs."""
    import datetime

    name = args.result_filename
    if not name:
        rate = "inf" if math.isinf(args.request_rate) else f"{args.request_rate:g}"
        conc = f"-concurrency{args.max_concurrency}" if args.max_concurrency else ""
        model = str(args.model).rstrip("/").rsplit("/", 1)[-1]
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{args.backend}-{rate}qps{conc}-{model}-{stamp}.json"
    if "/" in name or name in (".", ".."):
        raise ComemInputError(f"--result-filename: '{name}' must be a file name, not a path")
    directory = Path(args.result_dir or ".")
    _writable_dir(str(directory), "--result-dir")
    path = directory / name
    if path.exists():
        raise ComemInputError(f"--save-result: {path} exists; choose another --result-filename")
    return path


def _percentiles_arg(text: str) -> tuple[float, ...]:
    values = []
    for part in text.split(","):
        try:
            q = float(part)
        except ValueError:
            q = math.nan
        if not 0.0 < q <= 100.0:
            raise argparse.ArgumentTypeError(
                f"'{part}' is not a percentile; give numbers in (0, 100] separated by commas"
            )
        values.append(q)
    return tuple(dict.fromkeys(values))


def _percentile_metrics_arg(text: str) -> tuple[str, ...]:
    from sim.bench_serve import PERCENTILE_METRICS

    names = tuple(dict.fromkeys(p.strip() for p in text.split(",")))
    bad = [n for n in names if n not in PERCENTILE_METRICS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric '{bad[0] if bad else text}'; choose among"
            f" {','.join(PERCENTILE_METRICS)}"
        )
    return names


def cmd_paper(args: argparse.Namespace) -> int:

    from sim.paper import (
        PAPER_METRICS,
        figure,
        paper_files,
        run_paper,
        sensitivity,
        sensitivity_figure,
        table_markdown,
        write_table,
    )

    files = paper_files(args.dir) if not args.only else [Path(f) for f in args.only]
    for f in files:
        if not f.is_file():
            what = "is not a regular file" if f.exists() else "does not exist"
            raise ComemInputError(f"{f}: scenario file {what}")
    out = Path(args.out)
    _writable_dir(str(out), "--out")
    workers = _workers(args.workers, len(files))
    show = not args.json
    rows = _with_progress(
        show, "comem paper", "scenarios", len(files),
        lambda cb: run_paper(files, args.set, workers, cb),
    )  # fmt: skip
    written = write_table(rows, out)
    written.append(figure(rows, out / "paper_speedups.png"))
    result: dict[str, Any] = {"rows": [r.to_dict() for r in rows], "metrics": PAPER_METRICS}
    if args.sensitivity:
        from sim.paper import SENSITIVITY_AXES, SENSITIVITY_BASE

        n = 1 + sum(len(v) for v in SENSITIVITY_AXES.values())
        sens = _with_progress(
            show, "sensitivity", "runs", n,
            lambda cb: sensitivity(SENSITIVITY_BASE, SENSITIVITY_AXES, args.metric, workers, cb),
        )  # fmt: skip
        (out / "sensitivity.json").write_text(json.dumps(sens, indent=1, sort_keys=True) + "\n")
        written.append(out / "sensitivity.json")
        written.append(sensitivity_figure(sens, out / "sensitivity.png"))
        result["sensitivity"] = sens
    result["files"] = [str(p) for p in written]
    if args.json:
        _print_json(result)
        return 0
    print(table_markdown(rows), end="")
    default = next((r for r in rows if r.default), None)
    if default is not None:
        step = default.speedup.get("step")
        shown = "-" if step is None else f"{step:.2f}x"
        print(
            "verdict of the default experiment (row 1, what `comem run` runs):"
            f" {default.architecture} {shown} over {default.reference} by mean step latency"
        )
    if "sensitivity" in result:
        sens = result["sensitivity"]
        print(
            f"\nsensitivity of {sens['architecture']}'s speedup ({sens['metric']}) around"
            f" {Path(sens['base']).name}: documented setup {sens['base_speedup']:.2f}x"
        )
        for axis, vals in sens["variations"].items():
            shown = ", ".join(
                f"{v['variation']} {v['speedup']:.2f}x" if v["speedup"] is not None
                else f"{v['variation']} -"
                for v in vals
            )  # fmt: skip
            print(f"  {axis}: {shown}")
    for p in written:
        print(f"wrote {p}")
    return 0


def _plan_spec(args: argparse.Namespace) -> tuple[Any, str]:
    """``plan``'s settings: a ``--spec`` file's [plan] table, the flags over it, the rest
    from the default experiment; and the line saying how the workload flags mapped."""
    from comem.plan import PlanSpec
    from sim.config import read_toml, validate

    data: dict[str, Any] = {}
    if args.spec:
        table = read_toml(args.spec, "plan")
        other = sorted(set(table) - {"plan"})
        if other or not isinstance(table.get("plan"), dict):
            found = f" (found {', '.join(other)})" if other else ""
            raise ComemInputError(f"{args.spec}: expected one [plan] table of settings{found}")
        data = dict(table["plan"])
    workload_set, note = _plan_workload_set(args, data)
    flags = {
        "agent_model": args.agent_model,
        "memory_model": args.memory_model,
        "gpu": args.gpu,
        "gpus": args.gpus,
        "agents": args.agents,
        "workload_scenario": args.workload,
        "steps": args.steps,
        "workload_set": workload_set,
        "objective": args.objective,
        "slo_step_s": args.slo,
        "max_gpus": args.max_gpus,
        "kinds": args.kinds,
        "dtypes": args.dtypes,
        "k_values": args.k,
        "top": args.top,
        "max_resolve_loss_pp": args.max_resolve_loss,
        "baseline_resolve_rate": args.baseline_resolve_rate,
        "memory_loss_scale": args.memory_loss_scale,
    }
    if args.offload is not None:
        flags["offload"] = {"on": [True], "off": [False], "both": [False, True]}[args.offload]
    data.update({k: v for k, v in flags.items() if v is not None})
    return validate(PlanSpec, data, "plan"), note


def cmd_plan(args: argparse.Namespace) -> int:
    from comem.plan import (
        Candidate,
        assumptions,
        edge_warnings,
        left_out_kinds,
        pareto,
        pareto_figure,
        run_plan,
        table_markdown,
        verdict,
        write_scenario,
    )  # fmt: skip

    spec, note = _plan_spec(args)
    if note and not args.json:
        print(f"comem plan: {note}", file=sys.stderr)
    out = Path(args.out)
    _outputs_not_inputs(
        out,
        ("plan.md", "plan.json", "pareto.png", "chosen_scenario.toml"),
        {"--spec": args.spec, "settings": spec.model_dump()},
    )
    _writable_dir(str(out), "--out")
    workers = _workers(args.workers, 10**6)  # the candidates are counted later
    rows, n = _with_progress(
        not args.json, "comem plan: simulating", "candidates", None,
        lambda advance: run_plan(spec, workers, out, advance),
    )  # fmt: skip
    warnings = left_out_kinds(spec, [Candidate(**r.candidate) for r in rows])
    warnings += edge_warnings(spec, rows)
    for line in warnings:
        print(f"comem plan: warning: {line}", file=sys.stderr)
    written = [out / "plan.md", out / "plan.json"]
    (out / "plan.md").write_text(table_markdown(rows, limit=len(rows)))
    payload = {
        "spec": spec.model_dump(),
        "candidates": n,
        "simulated": sum(r.simulated for r in rows),
        "chosen": rows[0].label,
        "rows": [r.__dict__ for r in rows],
        "pareto": [r.label for r in pareto(rows)],
        "warnings": warnings,
        "assumptions": assumptions(spec),
        "verdict": verdict(rows),
    }
    (out / "plan.json").write_text(
        json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n"
    )
    title = f"{spec.agent_model}, {spec.agents} agents, {spec.gpus} x {spec.gpu}"
    written.append(pareto_figure(rows, out / "pareto.png", title))
    written.append(write_scenario(spec, rows, out / "chosen_scenario.toml"))
    payload["files"] = [str(p) for p in written]
    if args.json:
        _print_json(payload)
    else:
        _print_plan(spec, rows, payload, args.show)
    return 0


def _print_plan(spec: Any, rows: list[Any], payload: dict[str, Any], show: int) -> None:
    from comem.plan import table_markdown

    best = rows[0]
    print(
        f"{payload['candidates']} candidates, {payload['simulated']} simulated (the rest"
        f" pruned by the closed form and the KV bound); objective {spec.objective}"
        + (f", SLO p99 step <= {spec.slo_step_s} s" if spec.slo_step_s else "")
        + (
            f", resolve loss <= {spec.max_resolve_loss_pp} pp (pessimistic)"
            if spec.max_resolve_loss_pp is not None
            else ""
        )
    )
    print("assumptions:")
    for line in payload["assumptions"]:
        print(f"- {line}")
    print(table_markdown(rows, limit=show), end="")
    met = best.meets_slo and best.meets_resolve
    print(
        f"chosen: {best.label}; resolve rate {100 * best.resolve_rate:.1f}%"
        f" [{100 * best.resolve_rate_low:.1f}, {100 * best.resolve_rate_high:.1f}],"
        f" {best.resolve_rate_delta_pp:+.1f} pp vs full context"
        f" [{best.resolve_rate_delta_pp_low:+.1f}, {best.resolve_rate_delta_pp_high:+.1f}]"
        + ("" if met else " (NO candidate meets the SLO and the resolve-loss limit)")
    )
    print(payload["verdict"])
    for p in payload["files"]:
        print(f"wrote {p}")


def cmd_explain(args: argparse.Namespace) -> int:
    from sim.explain import explain, load_side, table_markdown

    a = load_side(args.a, args.set_a or [])
    b = load_side(args.b, args.set_b or [])
    if args.out:
        _writable_file(args.out)
    workers = _workers(args.workers, 10**6)
    result = _with_progress(
        not args.json, "comem explain: runs", "runs", None,
        lambda advance: explain(a, b, args.metric, workers, advance),
    )  # fmt: skip
    text = table_markdown(result)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        _print_json(result)
    else:
        print(text, end="")
    return 0


def _workload_sets(args: argparse.Namespace, scenario: str) -> tuple[list[str], str]:
    """The workload flags (``--context-tokens`` ...) as ``--set`` overrides of the
    scenario's workload, and the line saying how they were mapped."""
    from sim.config import read_toml
    from sim.workload_flags import as_sets, from_args, workload_fields

    flags = from_args(args)
    if not flags.given():
        return [], ""
    base = read_toml(scenario, "scenario").get("workload", {})
    fields, note = workload_fields(base if isinstance(base, dict) else {}, flags)
    return as_sets(fields), note


def _default_name() -> str:
    from sim.paper import DEFAULT_SCENARIO

    return (
        "the CoMem authors' documented setup"
        f" ({DEFAULT_SCENARIO.relative_to(DEFAULT_SCENARIO.parents[2])})"
    )


def _plan_workload_set(
    args: argparse.Namespace, spec: dict[str, Any]
) -> tuple[dict[str, Any] | None, str]:
    """``plan``'s workload flags as workload fields (agents and steps are the spec's)."""
    from comem.plan import scenario_workload
    from sim.workload_flags import from_args, workload_fields

    flags = from_args(args)
    if flags.context_tokens is None and all(
        getattr(flags, k) is None for k in ("decode_tokens", "observation_tokens", "tool_s")
    ):
        return None, ""
    base = scenario_workload(args.workload or spec.get("workload_scenario"))
    fields, note = workload_fields(base, flags)
    kept = {k: v for k, v in fields.items() if k not in ("agents", "steps", "max_steps")}
    if "steps" in fields and args.steps is None:  # derived from --context-tokens
        kept["steps"] = fields["steps"]
    return kept, note


def cmd_run(args: argparse.Namespace) -> int:
    from sim.compare import METRICS
    from sim.describe import scenario_description, scenario_lines, verdict_lines
    from sim.paper import DEFAULT_SCENARIO
    from sim.scenario import load_scenario, run_scenario

    notes = []
    if args.scenario is None:
        args.scenario = str(DEFAULT_SCENARIO)
        notes.append(f"comem run: the default experiment, {_default_name()}")
    extra, note = _workload_sets(args, args.scenario)
    scenario = load_scenario(args.scenario, (args.set or []) + extra)
    if note:
        notes.append(f"comem run: {note}")
    for line in notes if not args.json else []:  # once the input is known to be good
        print(line, file=sys.stderr)
    _outputs_not_inputs(
        args.out,
        ("steps.parquet", "tasks.parquet", "requests.parquet", "engine_steps.parquet",
         "config.json"),
        {"scenario": args.scenario, "settings": scenario.model_dump()},
    )  # fmt: skip
    _writable_dir(args.out)
    result = run_scenario(scenario, progress=not args.json)
    summary = result.summary()
    written = result.write(args.out) if args.out else []
    comparison = summary["comparison"]
    ref = comparison["reference"]
    notes = list(summary["warnings"])
    if ref is not None:
        chosen = comparison["metrics"][args.metric]
        for name, value in chosen["speedup"].items():
            if value is None:
                notes.append(
                    f"{name}: no speedup by {chosen['label']}: nothing to compare"
                    f" ({chosen['compared_on']}: none)"
                )
    for note in notes:
        print(f"comem run: warning: {note}", file=sys.stderr)
    described = scenario_description(scenario)
    if args.json:
        _print_json({**summary, "described": described, "files": [str(p) for p in written]})
        return 0
    from rich.console import Console

    console = Console()
    w = scenario.workload
    title = (
        f"{scenario.name}: {w.agents} agents x {w.tasks_per_agent} tasks,"
        f" {w.kind} workload ({scenario.engine.stepping} stepping)"
    )
    metric = METRICS[args.metric]
    table, legend = _run_table(summary, args.metric, console.width, title)
    console.print(table)
    for line in legend:
        console.print(line, highlight=False, markup=False)
    for line in scenario_lines(scenario) + verdict_lines(summary, args.metric):
        console.print(line, highlight=False, markup=False)
    if ref is None:
        console.print("no full-context (fc) architecture: no speedups", highlight=False)
    else:
        console.print(
            f"speedup ({metric.name}): {ref}'s {metric.label} over this architecture's, on"
            f" {metric.compared_on}; > 1 is faster than {ref}. Other metrics: --metric"
            f" {'|'.join(METRICS)}; --json has all of them.",
            highlight=False,
            markup=False,
        )
    for path in written:
        print(f"wrote {path}")
    return 0


#: why tasks ended early, as the table abbreviates it
_EARLY = {
    "context_exceeded": "ctx",
    "memory_context_exceeded": "mem",
    "kv_cache_too_small": "kv",
    "memory_kv_cache_too_small": "mem-kv",
}

#: the ``comem run`` table's columns, most important first (narrow terminals drop the
#: last ones): header, legend, cell
_RUN_COLUMNS: list[tuple[str, str, Any]] = [
    ("arch", "architecture; ! = some of its tasks ended early", None),
    ("done", "tasks finished", lambda s: str(s["tasks_finished"])),
    (
        "early",
        "tasks that ended early, by reason: ctx = an agent prompt passed max_model_len,"
        " mem = a memory prompt passed the memory model's limit, kv / mem-kv = one the"
        " engine's whole KV cache cannot hold",
        lambda s: " ".join(f"{v} {_EARLY.get(k, k)}" for k, v in s["ended_early"].items()) or "0",
    ),
    ("speedup", "", None),
    (
        "resolve %",
        "resolve rate of the fitted effectiveness model (SWE-bench runs of The Complexity"
        " Trap, relative to [effectiveness] baseline_resolve_rate) [95% interval];"
        " * = outside the fitted range",
        lambda s: (
            f"{100 * s['resolve_rate']:.1f} [{100 * s['resolve_rate_low']:.1f},"
            f" {100 * s['resolve_rate_high']:.1f}]"
            + ("*" if s["resolve_rate_extrapolated"] else "")
        ),
    ),
    (
        "resolve pp",
        "resolve-rate change against the reference architecture, percentage points [95%]",
        lambda s: (
            "-"
            if "resolve_rate_delta_pp" not in s
            else f"{s['resolve_rate_delta_pp']:+.1f} [{s['resolve_rate_delta_pp_low']:+.1f},"
            f" {s['resolve_rate_delta_pp_high']:+.1f}]"
        ),
    ),
    ("task s", "mean task latency over its finished tasks, seconds", "mean_task_latency_s"),
    (
        "task 80%",
        "interval of the mean task latency from the calibration's cross-validated errors"
        " (tool time exact, GPU time scaled), seconds",
        lambda s: (
            f"{s['mean_task_latency_s_low']:.3g}-{s['mean_task_latency_s_high']:.3g}"
            if "mean_task_latency_s_low" in s
            else "-"
        ),
    ),
    (
        "step s",
        "mean step latency (queue + prefill + decode + tool + stall) over its finished"
        " steps, seconds",
        "mean_step_latency_s",
    ),
    ("stall s", "mean wait for a summary per step, seconds", "mean_stall_s"),
    (
        "uncached tok",
        "prompt tokens the agent engine prefilled (not from its prefix cache), mean per step",
        "mean_uncached_prefill_tokens",
    ),
    ("KV peak", "peak fraction of the agent engine's KV cache in use", "kv_peak_fraction"),
    ("preempt", "preemptions, agent and memory engines summed", "preemptions"),
    (
        "llm s",
        "mean llm_exec_time per step (the authors': the agent request at the client,"
        " queueing included), seconds",
        "mean_llm_exec_time_s",
    ),
    (
        "total s",
        "mean total_step_time per step (the authors' formula: llm + summary + env for"
        " FC, CP, SM; max(llm, summary + prefill) + env for KSO), seconds",
        "mean_total_step_time_s",
    ),
    ("step p99 s", "99th percentile of step latency, seconds", "p99_step_latency_s"),
    ("task p99 s", "99th percentile of task latency, seconds", "p99_task_latency_s"),
    ("steps/s", "finished steps per second of makespan", "throughput_steps_per_s"),
]


def _cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if key == "kv_peak_fraction":
        return f"{value:.0%}"
    if key in ("preemptions", "mean_uncached_prefill_tokens"):
        return f"{value:.0f}"
    if key == "throughput_steps_per_s":
        return f"{value:.3f}"
    if key.startswith(("mean_task", "p99_task")):
        return f"{value:.1f}"
    return f"{value:.2f}"


def _run_table(
    summary: dict[str, Any], metric: str, width: int, title: str
) -> tuple[Any, list[str]]:
    """The ``comem run`` table, as many columns as fit ``width``, and its legend."""
    from rich.table import Table

    archs = summary["architectures"]
    speed = summary["comparison"]["metrics"].get(metric, {}).get("speedup", {})
    columns: list[tuple[str, str, list[str]]] = []
    for header, meaning, cell in _RUN_COLUMNS:
        if header == "arch":
            cells = [n + ("!" if s["tasks_ended_early"] else "") for n, s in archs.items()]
        elif header == "speedup":
            header = f"speedup {metric}"
            meaning = f"see below ({metric})"
            cells = ["-" if speed.get(n) is None else f"{speed[n]:.2f}x" for n in archs]
        elif callable(cell):
            cells = [cell(s) for s in archs.values()]
        else:
            cells = [_cell(s[cell], cell) for s in archs.values()]
        columns.append((header, meaning, cells))
    shown: list[tuple[str, str, list[str]]] = []
    used = 1
    for header, meaning, cells in columns:
        need = max(max(len(c) for c in cells), *(len(w) for w in header.split())) + 3
        if used + need <= width or len(shown) < 4:  # arch, done, early, speedup always
            shown.append((header, meaning, cells))
            used += need
    table = Table(title=title)
    for header, _, _ in shown:  # one word a line: the widths estimated above hold
        table.add_column(header.replace(" ", "\n"), justify="left" if header == "arch" else "right")
    for row in zip(*(cells for _, _, cells in shown), strict=True):
        table.add_row(*row)
    legend = [f"{h}: {m}" for h, m, _ in shown if not h.startswith("speedup")]
    dropped = [h for h, _, _ in columns if h not in {s[0] for s in shown}]
    if dropped:
        legend.append(f"left out for width ({width} columns): {', '.join(dropped)}")
    return table, legend


def cmd_workload_fit(args: argparse.Namespace) -> int:
    from calibration.inputs import refuse_input_as_output
    from sim.workloads import default_steps_file, fit_workload, plot_fitted

    refuse_input_as_output(args.out, {"--steps": args.steps})
    refuse_input_as_output(args.figure, {"--steps": args.steps}, "--figure")
    _writable_file(args.out)
    _writable_file(args.figure, "--figure")
    steps = args.steps or default_steps_file()
    if steps is None:
        raise ComemInputError("no steps CSV: pass --steps (shared/ is not beside the project)")
    variable_sources: dict[str, list[str]] = {}
    for item in args.variable_source or []:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise ComemInputError(
                f"--variable-source {item!r}: expected VARIABLE=SOURCE, e.g."
                " system=gemini3pro_mini1.15_verified"
            )
        variable_sources.setdefault(name, []).append(source)
    payload = fit_workload(
        steps, args.source or None, variable_sources or None, tuple(args.mixture or ())
    )
    if args.note:
        payload["note"] = args.note
    from calibration.inputs import write_text

    out = write_text(args.out, json.dumps(payload, indent=1) + "\n", "fitted workload")
    for name, spec in payload["variables"].items():
        shape = f"lognormal mu {spec['mu']:8.3f} sigma {spec['sigma']:6.3f}"
        if spec["dist"] == "lognormal-mixture":
            shape = "mixture " + " + ".join(
                f"{w:.2f} x (mu {m:.2f}, sigma {sd:.2f})"
                for w, m, sd in zip(spec["weights"], spec["mus"], spec["sigmas"], strict=True)
            )
        print(
            f"{name:14s} {shape}  zeros {spec['zero_fraction']:5.1%}  KS {spec['ks']:.3f}"
            f"  n {spec['n']}"
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
            line = f"{mark}  {r.name}: {r.metric} = {r.value:.3g} (threshold {r.threshold:.3g})"
            if r.source == "stored":
                line += "; stored in the embedded profile at fit time, not re-measured here"
            print(line)
        if any(r.source == "stored" for r in rungs):
            print(
                "note: 'stored' rungs re-read numbers the calibration fit recorded;"
                " 'comem calibrate report' recomputes them from ../shared's measurements"
            )
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

    from sim.sweep import (
        base_path,
        failed_points,
        load_sweep,
        run_sweep,
        summary,
        summary_markdown,
    )

    extra, note = _workload_sets(args, str(base_path(args.sweep)))
    sweep = load_sweep(args.sweep, extra)
    if note and not args.json:
        print(f"comem sweep: {note}", file=sys.stderr)
    out = args.out or str(Path("out") / Path(args.sweep).stem)
    _outputs_not_inputs(
        out, ("results.parquet", "results.csv", "sweep.json"), {"sweep": args.sweep}
    )
    workers = _workers(args.workers, len(sweep.points))
    _writable_dir(out)

    def work(advance: Any) -> Any:
        def on_point(done: int, total: int) -> None:
            while advance is not None and advance.done < done:
                advance()

        return run_sweep(sweep, out, workers, args.scheduler, on_point=on_point)

    table = _with_progress(not args.json, Path(args.sweep).stem, "points", len(sweep.points), work)
    results = Path(out) / "results.parquet"
    failed = failed_points(table)
    if args.json:
        _print_json(
            {
                "points": len(sweep.points),
                "rows": len(table),
                "failed_points": len(failed),
                "out": out,
                "results": str(results),
                "summary": summary(table),
            }
        )
    else:
        from sim.describe import scenario_lines

        print(f"base scenario {sweep.points[0].scenario.name}, as point 0 ran it:")
        for line in scenario_lines(sweep.points[0].scenario):
            print(f"  {line}")
        print(summary_markdown(summary(table)), end="")
        print(f"{len(sweep.points)} points, {len(table)} rows -> {results}")
    if len(failed):
        first = failed.iloc[0]
        grid = ", ".join(
            f"{c[len('grid.') :]}={first[c]!r}" for c in failed.columns if c.startswith("grid.")
        )
        print(
            f"comem sweep: {len(failed)} of {len(sweep.points)} points failed; their rows in"
            f" {results} carry the error; first: point {first['point']} ({grid}):"
            f" {first['error']}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_fit_effectiveness(args: argparse.Namespace) -> int:
    """Refit the effectiveness model from ../shared (or --data), or with --show read the
    committed fit; print its numbers and what it predicts for each architecture."""
    import json as json_mod

    from sim.effectiveness import FIT_PATH, load_fit

    out = Path(args.out) if args.out else FIT_PATH
    if not args.show and args.data:
        from calibration.inputs import refuse_input_as_output

        data = Path(args.data)
        files = [p for p in data.rglob("*") if p.is_file()] if data.is_dir() else [data]
        refuse_input_as_output(str(out), {f"--data ({p.name})": p for p in files[:10_000]})
    if args.show:
        load_fit(out)  # a defect is one line
        report = json_mod.loads(out.read_text())
    else:
        from sim.effectiveness_fit import fit_and_write

        report = fit_and_write(_effectiveness_data(args.data), out, args.draws, args.seed)
    table = _architecture_table(out, args.baseline)
    if args.json:
        _print_json(
            {**{k: v for k, v in report.items() if k != "bootstrap"}, "architectures": table}
        )
        return 0
    est = report["estimate"]
    print(
        f"logit change per instance = (b_0 + b_m / (1 + M)) / k: b_0 = {est['b_0']:.3f},"
        f" b_m = {est['b_m']:.3f}; instance SD {est['instance_sd']:.2f};"
        f" run-to-run tau {est['tau']:.3f}; fitted k {report['fitted_range']['k']},"
        f" raw tail M {report['fitted_range']['raw_tail']}"
    )
    for form, cv in report["cross_validation"].items():
        c = cv["summary"]
        print(
            f"leave-one-configuration-out ({form}): {c['configurations']} configurations,"
            f" MAE {c['mae_pp']:.2f} pp (same-as-raw: {c['mae_raw_pp']:.2f} pp),"
            f" 95% interval coverage {c['coverage_95']:.0%}"
        )
    print(f"at a full-context resolve rate of {args.baseline:.1%}:")
    for row in table:
        print(
            f"  {row['architecture']:<34} k {row['k']:>4}  M {row['raw_tail']:>4}"
            f"  {100 * row['resolve_rate']:5.1f}% [{100 * row['resolve_rate_low']:.1f},"
            f" {100 * row['resolve_rate_high']:.1f}]  {row['resolve_rate_delta_pp']:+5.1f} pp"
            f" [{row['resolve_rate_delta_pp_low']:+.1f}, {row['resolve_rate_delta_pp_high']:+.1f}]"
            + ("  (extrapolated)" if row["resolve_rate_extrapolated"] else "")
        )
    if not args.show:
        print(f"wrote {out}")
    return 0


def _effectiveness_data(given: str | None) -> Path:
    """The runs' directory: ``--data``, or ../shared's (``$COMEM_SHARED``)."""
    from calibration.report import find_shared

    shared = find_shared()
    if given is not None:
        data = Path(given)
    elif shared is not None:
        data = shared / "data" / "effectiveness"
    else:
        raise ComemInputError("fit-effectiveness: no ../shared (set COMEM_SHARED or give --data)")
    if not data.is_dir():
        raise ComemInputError(f"{data}: no such directory (the effectiveness runs; see --data)")
    return data


#: the architectures ``comem fit-effectiveness`` prints predictions for
_EFFECT_EXAMPLES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("FC", {"kind": "fc"}),
    ("CP k=8 retain=3", {"kind": "cp", "k": 8, "retain": 3}),
    ("SM k=8 retain=3", {"kind": "sm", "k": 8, "retain": 3}),
    ("KSO k=8 retain=3 lag=1", {"kind": "kso", "k": 8, "retain": 3, "lag": 1}),
    ("CP k=4 retain=3", {"kind": "cp", "k": 4, "retain": 3}),
    ("KSO k=4 retain=3 lag=1", {"kind": "kso", "k": 4, "retain": 3, "lag": 1}),
    ("KSO k=1 retain=3 lag=1 (1-step-off)", {"kind": "kso", "k": 1, "retain": 3, "lag": 1}),
    ("kso-authors R=4 (GLM-4.7)", {"kind": "kso-authors", "retain": 4}),
    ("kso-authors R=2 (DeepSWE, Qwen)", {"kind": "kso-authors", "retain": 2}),
)


def _architecture_table(path: Path, baseline: float) -> list[dict[str, Any]]:
    """Each example architecture's features and predicted resolve rate against FC."""
    from sim.effectiveness import (
        EffectivenessParams,
        load_fit,
        policy_features,
        resolve_delta,
        resolve_rate,
        summary_fields,
    )
    from sim.policy import PolicyParams

    if not 0.0 < baseline < 1.0:
        raise ComemInputError(f"--baseline: expected a rate in (0, 1), got {baseline}")
    fit = load_fit(path)
    params = EffectivenessParams(baseline_resolve_rate=baseline)
    fc = resolve_rate(policy_features(PolicyParams(kind="fc")), params, fit)
    rows = []
    for name, kw in _EFFECT_EXAMPLES:
        f = policy_features(PolicyParams(**kw))
        rate = resolve_rate(f, params, fit)
        rows.append(
            {"architecture": name, "k": f.k, "raw_tail": f.raw_tail, "lag": f.lag,
             "summarizer": f.summarizer, **summary_fields(rate, resolve_delta(rate, fc))}
        )  # fmt: skip
    return rows


def cmd_figures(args: argparse.Namespace) -> int:
    from comem.figures import FIGURES, make_figures

    # quick figures are smoke tests: they never replace the committed full-size ones
    out = args.out or (QUICK_FIGURES_DIR if args.quick else "figures")
    _writable_dir(out)
    workers = _workers(args.workers, len(args.only or FIGURES))
    for path in make_figures(out, quick=args.quick, only=args.only, workers=workers):
        print(f"wrote {path}")
    return 0


#: where ``comem figures --quick`` writes unless told otherwise
QUICK_FIGURES_DIR = "out/figures-quick"


def _print_gpu(g: Any, profiles: list[tuple[str, str, str]]) -> None:
    """One GPU of ``comem list gpus``: datasheet, memory (and its assumption), kernels."""
    from calibration.profile import default_profile

    peaks = "  ".join(
        f"{d} {v / 1e12:.0f}" for d, v in g.peak_flops.items() if d in ("bf16", "fp8", "fp4")
    )
    dtypes = [d for gpu, _, d in profiles if gpu == g.name]
    versions = sorted(
        {
            str(default_profile(g.name, d).provenance.get("kernel_dir", "")).rsplit("vllm-", 1)[-1]
            for d in dtypes
        }
    )
    fp8_kv = any("generation_attention_fp8kv" in default_profile(g.name, d).ops for d in dtypes)
    kv = ("bf16, fp8" if fp8_kv else "bf16") if dtypes else "none"
    print(
        f"{g.name:9s} {g.memory_gib:6.1f} GiB  {g.hbm_bandwidth_Bps / 1e12:.2f} TB/s  "
        f"TFLOP/s {peaks}  kernels: vLLM {', '.join(versions) or '-'},"
        f" weights {', '.join(dtypes) or 'none'}, KV cache {kv}"
    )
    memory = g.memory_assumption or "measured (torch.cuda.mem_get_info total on the GPU)"
    print(f"{'':9s} memory vLLM sizes the KV cache from: {memory}")


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
            _print_gpu(g, available_profiles())
    else:
        for gpu, framework, dtype in available_profiles():
            print(f"{gpu:10s} {framework:12s} {dtype}")
    return 0


def cmd_calibrate_cv(args: argparse.Namespace) -> int:
    """Per op of every embedded profile (or those of ``--gpu``): in-sample and
    cross-validated (whole shapes held out) MAPE."""
    from calibration.profile import available_profiles, default_profile

    print("gpu       dtype  op                          rows  MAPE   CV MAPE  CV p90")
    for gpu, _, dtype in available_profiles():
        if args.gpu and gpu not in args.gpu:
            continue
        for key, fit in sorted(default_profile(gpu, dtype).ops.items()):
            own, cv = fit.stats.get("with_lattice", {}), fit.stats.get("cv")
            cv_text = f"{cv['mape']:7.1%}  {cv['p90']:6.1%}" if cv else "      -       -"
            print(
                f"{gpu:9s} {dtype:6s} {key:27s} {own.get('rows', 0):6d}"
                f" {own.get('mape', math.nan):6.1%} {cv_text}"
            )
    return 0


def cmd_families(args: argparse.Namespace) -> int:
    from calibration.registry import get_gpu
    from comem.families import run_families

    for gpu in args.gpus or []:
        if not str(gpu).strip():
            raise ComemInputError("--gpus: an empty GPU name")
        get_gpu(gpu)  # an unknown GPU is one line, not a table of refusals
    _writable_dir(args.out)
    for path in run_families(args.gpus, Path(args.out)):
        print(f"wrote {path}")
    return 0


def _add_allow_large(parser: argparse.ArgumentParser) -> None:
    from calibration.limits import ALLOW_LARGE_ENV

    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="run even above the work budgets that catch typos (see README, 'Budgets';"
        f" also {ALLOW_LARGE_ENV}=1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="comem",
        description="Systems model of decoupled context memory (CoMem) for LLM agents.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    cal = sub.add_parser("calibrate", help="latency-model calibration (report, fit)")
    cal_sub = cal.add_subparsers(dest="calibrate_command", required=True, parser_class=_Parser)

    rep = cal_sub.add_parser("report", help="print the calibration report and write its plots")
    rep.add_argument("--gpu", help="GPU of the embedded profile to report on [h100_sxm]")
    rep.add_argument("--dtype", help="dtype of the embedded profile [bf16]")
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
        type=_token_count,
        help="(--measurements) the server's token budget per iteration",
    )
    fit.add_argument(
        "--kv-capacity-tokens", type=_token_count, help="(--measurements) the server's KV tokens"
    )
    fit.add_argument("--block-size", type=_token_count, help="(--measurements) KV block size")
    fit.add_argument(
        "--server", type=_name, help="(--measurements) free-text description of the server"
    )
    fit.add_argument("--gpu", help="GPU name (default: from the tables' device column)")
    fit.add_argument("--dtype", default="bf16")
    fit.add_argument("--e2e", help="end-to-end static-batch CSV to fit the overhead term on")
    fit.add_argument("--fallback-kernels", help="tables for ops whose own table is inconsistent")
    fit.add_argument("--overhead-from", help="copy the overhead term from this profile")
    _add_allow_large(fit)
    fit.set_defaults(func=cmd_calibrate_fit)

    cvp = cal_sub.add_parser(
        "cv",
        help="per-op error of the embedded profiles: in-sample and cross-validated",
        description="Every op of every embedded profile: its MAPE on its table and, where"
        " fitted with it (the GPUs beyond H100/H200 bf16/fp8, the family ops), its 5-fold"
        " cross-validated MAPE with whole shapes held out.",
    )
    cvp.add_argument("--gpu", nargs="+", help="only these GPUs")
    cvp.set_defaults(func=cmd_calibrate_cv)

    bld = cal_sub.add_parser("build-defaults", help="regenerate the embedded profiles")
    bld.add_argument("--shared", required=True, help="the shared/ data checkout")
    bld.add_argument("--out", help="directory (default: the package's profiles/)")
    bld.add_argument(
        "--other-gpus", nargs="*", metavar="GPU",
        help="instead of H100/H200: fit the other GPUs' profiles (all of b200_sxm, b300_sxm,"
        " gb200, a100_sxm, l40s, or those named), every dtype their tables price, each op"
        " cross-validated on held-out shapes; the overhead is copied from h200_sxm's",
    )  # fmt: skip
    bld.set_defaults(func=cmd_calibrate_build_defaults)

    fs = cal_sub.add_parser(
        "fit-serving",
        help="fit the serving framework's overhead on measured vllm bench serve points",
        description="Replays every row of a serving CSV (schema of shared/data/serving) through"
        " bench-serve and fits the framework overhead the kernels cannot know: per iteration and"
        " per scheduled sequence (on TPOT), per request before scheduling (on TTFT); pooled, per"
        " vLLM version, and cross-validated leaving one model out. Rows whose TPOT is below"
        " the roofline bound are left out (and listed).",
    )
    fs.add_argument("--csv", required=True, help="serving CSV (model, gpu, dtype, tp, ...)")
    fs.add_argument(
        "--preset", choices=("none", "shared-h100"), default="none",
        help="stated assumptions for what the rows do not say [none: vLLM defaults];"
        " shared-h100: the project's for shared/data/serving/vllm_serving_h100.csv",
    )  # fmt: skip
    fs.add_argument(
        "--assume", action="append", metavar="[MODEL:]KEY=VALUE",
        help="one assumption (max_num_batched_tokens, prompts_per_client, random_range_ratio,"
        " closed_loop_start, kv_cache_dtype, fp8_gemm, enable_prefix_caching, ...)",
    )  # fmt: skip
    fs.add_argument(
        "--framework", type=_name, default="vllm-serving", help="name of the pooled fit"
    )
    fs.add_argument("--no-cv", action="store_true", help="skip leave-one-model-out")
    fs.add_argument("--no-per-version", action="store_true", help="skip per-version fits")
    fs.add_argument("--profile", help="(--out) the profile to copy the kernels from")
    fs.add_argument("--out", help="write a profile with the fitted overheads here")
    fs.add_argument(
        "--write-defaults", action="store_true",
        help="store the fits in every embedded profile (the pooled one as the default)",
    )  # fmt: skip
    fs.add_argument("--json", action="store_true")
    _add_allow_large(fs)
    fs.set_defaults(func=cmd_calibrate_fit_serving)

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
    mb.add_argument("--force", action="store_true", help="replace kernel tables already in --out")
    mb.set_defaults(func=cmd_calibrate_microbench)

    ps = sub.add_parser(
        "predict-static", help="predicted latency of one static batch (vLLM benchmark_latency)"
    )
    ps.add_argument(
        "--model",
        type=_name,
        required=True,
        help="alias, HF id (see 'comem list models') or path of a Hugging Face config.json",
    )
    ps.add_argument("--gpu", default="h100_sxm")
    ps.add_argument("--tp", type=_positive_int, default=1)
    ps.add_argument("--dtype", type=_dtype_arg, default="auto", help=_DTYPE_HELP)
    ps.add_argument(
        "--enable-expert-parallel",
        action="store_true",
        help="split MoE layers by whole experts over the TP GPUs (MoE models only)",
    )
    ps.add_argument("--batch", type=_positive_int, required=True)
    ps.add_argument("--input", type=_positive_int, required=True, help="prompt tokens")
    ps.add_argument("--output", type=_positive_int, required=True, help="generated tokens")
    ps.add_argument("--max-num-batched-tokens", type=_token_count, default=16384)
    ps.add_argument("--gpu-memory-utilization", type=_fraction, default=0.9)
    ps.add_argument("--profile", help="a profile JSON file instead of the embedded default")
    ps.add_argument(
        "--framework", type=_name,
        help="the profile's overhead of this framework version (e.g. vllm-2024,"
        " the 2024 vLLM of the static-batch data) [the profile's default: the serving fit]",
    )  # fmt: skip
    ps.add_argument("--json", action="store_true")
    _add_allow_large(ps)
    ps.set_defaults(func=cmd_predict_static)

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

    bs = sub.add_parser(
        "bench-serve",
        help="simulated `vllm bench serve` (random dataset): vLLM's flags and result names",
        description="Simulate `vllm serve MODEL` under `vllm bench serve --dataset-name random"
        " --ignore-eos`: the same flags (defaults are vLLM's) and the same result JSON"
        " (--json). Server flags: --model .. --stepping; client flags: --num-prompts ..",
    )
    bs.add_argument("--model", required=True, help="model name or alias ('comem list models')")
    bs.add_argument("--gpu", default="h100_sxm", help="GPU ('comem list gpus') [h100_sxm]")
    bs.add_argument("--tp", "--tensor-parallel-size", type=_positive_int, default=1, dest="tp")
    bs.add_argument("--dtype", type=_dtype_arg, default="auto", help=_DTYPE_HELP)
    bs.add_argument(
        "--enable-expert-parallel",
        action="store_true",
        help="split MoE layers by whole experts over the TP GPUs (MoE models only)",
    )
    bs.add_argument(
        "--data-parallel-size", "-dp", type=_positive_int, default=None,
        help="DP ranks of TP GPUs each, own scheduler and KV cache; a request goes to the"
        " rank with the lowest 4 x waiting + running (vLLM's DP load balancer); MoE ranks"
        " step in lockstep; with --enable-expert-parallel EP = TP x DP [1]",
    )  # fmt: skip
    bs.add_argument(
        "--speculative-config", type=_speculative_config, default=None, metavar="JSON",
        help='MTP speculative decoding, e.g. \'{"method": "mtp", "num_speculative_tokens":'
        " 3}' (models shipping MTP modules: DeepSeek, GLM, MiniMax, Qwen3.5)",
    )  # fmt: skip
    bs.add_argument(
        "--spec-acceptance-rate", type=_probability, default=None, metavar="A",
        help="probability each draft is accepted given the ones before were (with"
        " --speculative-config; a step of k drafts emits (1 - A^(k+1)) / (1 - A) tokens)",
    )  # fmt: skip
    bs.add_argument(
        "--kv-cache-dtype", choices=("auto", "bf16", "fp8"), default="auto",
        help="KV cache dtype [auto: bf16, vLLM's default also for fp8 weights]",
    )  # fmt: skip
    bs.add_argument(
        "--fp8-gemm", choices=("auto", "block", "tensor"), default="auto",
        help="fp8 GEMM kernel: 128x128 block-scaled (the Qwen3/GLM FP8 checkpoints) or"
        " per-tensor (--quantization fp8) [auto: block for MoE, tensor for dense models]",
    )  # fmt: skip
    bs.add_argument(
        "--max-num-batched-tokens", type=_token_count,
        help="[vLLM serve's default: 8192 on GPUs of 70 GiB or more but A100, else 2048]",
    )  # fmt: skip
    bs.add_argument(
        "--max-num-seqs", type=_token_count,
        help="[vLLM serve's default: 1024 on GPUs of 70 GiB or more but A100, else 256]",
    )  # fmt: skip
    bs.add_argument("--max-model-len", type=_token_count)
    bs.add_argument("--gpu-memory-utilization", type=_fraction, default=0.9)
    bs.add_argument("--kv-capacity-tokens", type=_token_count, help="KV cache size override")
    bs.add_argument("--no-enable-prefix-caching", action="store_true")
    bs.add_argument("--kv-offloading-backend", choices=("native",), help="vLLM's CPU KV offloading")
    bs.add_argument(
        "--kv-offloading-size", type=float, help="GiB of CPU memory for KV blocks (all GPUs)"
    )
    bs.add_argument(
        "--kv-offloading-bandwidth-gbps", type=_positive_number, default=50.0,
        help="host<->GPU copy GB/s per GPU and direction [50: PCIe Gen5 x16, ~80%%]",
    )  # fmt: skip
    bs.add_argument("--profile", help="a profile JSON (kernel-fitted or measured)")
    bs.add_argument("--stepping", choices=("event", "iteration"), default="event")
    bs.add_argument("--num-prompts", type=_positive_int, default=1000)
    bs.add_argument("--random-input-len", type=_positive_int, default=1024)
    bs.add_argument("--random-output-len", type=_positive_int, default=128)
    bs.add_argument("--random-range-ratio", type=float, default=0.0)
    bs.add_argument(
        "--random-prefix-len", type=_non_negative_int, default=0,
        help="tokens every prompt starts with, the same for all (with prefix caching,"
        " computed once) [0]",
    )  # fmt: skip
    bs.add_argument(
        "--goodput", nargs="+", metavar="KEY:MS",
        help="service-level objectives (ttft, tpot, e2el in ms): request_goodput, the"
        " requests per second meeting all of them",
    )  # fmt: skip
    bs.add_argument("--request-rate", type=_rate, default=float("inf"), help="req/s [inf]")
    bs.add_argument("--burstiness", type=float, default=1.0, help="Gamma shape [1: Poisson]")
    bs.add_argument("--max-concurrency", type=_positive_int, help="requests in flight at most")
    bs.add_argument(
        "--closed-loop-start", choices=("burst", "staggered"), default="burst",
        help="with --max-concurrency and rate inf: the first wave sent at once, as vLLM does"
        " (identical lengths then stay in lockstep) [burst], or spread over one request"
        " (a desynchronized steady state; the first wave is left out as warm-up)",
    )  # fmt: skip
    bs.add_argument(
        "--warmup-requests", type=int, help="first requests left out of the latency statistics"
        " [staggered: max-concurrency, else 0]",
    )  # fmt: skip
    bs.add_argument(
        "--client-issue-delay", type=float, default=0.0, metavar="S",
        help="mean seconds a closed-loop client takes to send its next request (exponential,"
        " seeded): the jitter that desynchronizes clients [0: ideal client]",
    )  # fmt: skip
    bs.add_argument("--seed", type=int, default=0)
    bs.add_argument(
        "--percentile-metrics", type=_percentile_metrics_arg,
        default=("ttft", "tpot", "itl", "e2el"),
        help="metrics whose statistics are reported [ttft,tpot,itl,e2el]",
    )  # fmt: skip
    bs.add_argument(
        "--metric-percentiles", type=_percentiles_arg, default=(99.0,),
        help="percentiles reported, e.g. 50,90,99 (keys p50_ttft_ms, ...) [99]",
    )  # fmt: skip
    bs.add_argument(
        "--save-result", action="store_true",
        help="write the result JSON as vLLM does (--result-dir, --result-filename)",
    )  # fmt: skip
    bs.add_argument("--result-dir", help="directory of --save-result [.]")
    bs.add_argument("--result-filename", help="file name of --save-result [vLLM's]")
    compat = bs.add_argument_group(
        "vllm bench serve's client flags, accepted so its command lines run unchanged"
        " (nothing is contacted; the prompts are random, the outputs run to their length)"
    )
    compat.add_argument("--dataset-name", choices=("random",), default="random")
    compat.add_argument("--ignore-eos", action="store_true", help="always so here")
    compat.add_argument(
        "--backend", default="vllm", choices=("vllm", "openai", "openai-chat"),
        help="reported as given in the result's backend",
    )  # fmt: skip
    from sim.bench_serve import ACCEPTED_CLIENT_FLAGS, REFUSED_CLIENT_FLAGS

    for table, word in ((ACCEPTED_CLIENT_FLAGS, "accepted"), (REFUSED_CLIENT_FLAGS, "refused")):
        for flag, (nargs, why) in table.items():
            dest = f"{word}_" + flag[2:].replace("-", "_")
            if nargs == 0:
                compat.add_argument(flag, dest=dest, action="store_true", help=f"{word}: {why}")
            else:
                compat.add_argument(
                    flag, dest=dest, nargs=None if nargs == 1 else nargs, help=f"{word}: {why}"
                )
    bs.add_argument("--save-detailed", action="store_true", help="per-request lists in the JSON")
    bs.add_argument("--out", help="directory for bench_serve.json and the Parquet tables")
    bs.add_argument("--json", action="store_true", help="print the result JSON")
    _add_allow_large(bs)
    bs.set_defaults(func=cmd_bench_serve)

    pp = sub.add_parser(
        "paper",
        help="run the CoMem authors' experiments as they ran them (scenarios/paper/): one table",
        description="Every scenarios/paper/*.toml (a documented experiment, or one candidate"
        " assumption where the authors' code is silent): the speedup of CoMem over full"
        " context under each metric (llm, total, llm-index-peak, task, makespan), with KV"
        " saturation and preemptions. Writes paper_table.{csv,md} and paper_speedups.png.",
    )
    pp.add_argument("--dir", help="directory of paper scenarios (default: scenarios/paper)")
    pp.add_argument("--only", nargs="+", help="just these scenario files")
    pp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override every file")
    pp.add_argument("--sensitivity", action="store_true", help="also the one-at-a-time figure")
    from sim.compare import METRICS as COMPARE_METRICS

    pp.add_argument(
        "--metric",
        default="llm",
        choices=list(COMPARE_METRICS),
        help="metric of the sensitivity figure [llm]",
    )
    pp.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    pp.add_argument("--out", default="out/paper", help="output directory [out/paper]")
    pp.add_argument("--json", action="store_true")
    _add_allow_large(pp)
    pp.set_defaults(func=cmd_paper)

    pl = sub.add_parser(
        "plan",
        help="which deployment to run: architecture, GPU split, TP/EP/DP, k, offload",
        description="Enumerates the deployments of --agent-model and --memory-model on"
        " --gpus x --gpu for --agents agents, prunes them with the closed forms (lockstep"
        " step latency, KV-capacity bound), simulates the best in parallel (resumable in"
        " --out/points), ranks by --objective under --slo, and writes the table, the Pareto"
        " front and the chosen deployment as a scenario file.",
    )
    pl.add_argument("--spec", help="TOML file with a [plan] table (flags override it)")
    pl.add_argument("--agent-model", help="agent model (alias, HF id or config.json)")
    pl.add_argument("--memory-model", help="memory model [qwen3-4b]")
    pl.add_argument("--gpu", help="GPU type [h200_sxm]")
    pl.add_argument("--gpus", type=_positive_int, help="GPUs available [8]")
    pl.add_argument(
        "--workload",
        help="scenario file whose [workload] the agents run [the default experiment's]",
    )
    from sim.workload_flags import add_flags

    add_flags(pl, _token_count, _positive_int, _seconds)
    pl.add_argument("--objective", choices=("mean-step", "p99-step", "steps-per-gpu"))
    pl.add_argument("--slo", type=_positive_seconds, help="p99 step latency to meet, seconds")
    pl.add_argument("--max-gpus", type=_positive_int)
    pl.add_argument("--kinds", nargs="+", choices=("fc", "cp", "sm", "kso"))
    pl.add_argument("--dtypes", nargs="+", choices=("bf16", "fp8"))
    pl.add_argument("--k", nargs="+", type=_positive_int, help="k values to try [1 2 4 8]")
    pl.add_argument("--offload", choices=("on", "off", "both"), help="CPU KV offload [both]")
    pl.add_argument("--top", type=_positive_int, help="candidates to simulate [6 + best per kind]")
    pl.add_argument(
        "--max-resolve-loss",
        type=float,
        metavar="PP",
        help="most resolve-rate points a deployment may lose against full context (the"
        " fitted model's pessimistic 95%% end) [no limit]",
    )
    pl.add_argument(
        "--baseline-resolve-rate",
        type=float,
        help="the full-context agent's resolve rate on these tasks, in (0, 1) [0.5]",
    )
    pl.add_argument(
        "--memory-loss-scale",
        type=float,
        help="memory-model summaries' loss against a generic LLM summarizer (0: lossless) [1]",
    )
    pl.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    pl.add_argument("--show", type=_positive_int, default=12, help="rows printed [12]")
    pl.add_argument("--out", default="out/plan", help="output directory [out/plan]")
    pl.add_argument("--json", action="store_true")
    _add_allow_large(pl)
    pl.set_defaults(func=cmd_plan)

    ex = sub.add_parser(
        "explain",
        help="why two answers differ: which inputs differ, how much each moves the verdict",
        description="A and B: scenario files, 'comem run --out' or 'comem plan --out'"
        " directories. Lists the inputs that differ (workload fields, full context's engine,"
        " CoMem's policy and engines) and re-runs A with each one taken from B alone.",
    )
    ex.add_argument("a", help="the first answer (scenario file, run or plan --out directory)")
    ex.add_argument("b", help="the second answer")
    ex.add_argument("--set-a", action="append", metavar="KEY=VALUE", help="override A's field")
    ex.add_argument("--set-b", action="append", metavar="KEY=VALUE", help="override B's field")
    ex.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    from sim.compare import DEFAULT_METRIC as _METRIC
    from sim.compare import METRICS as _METRICS

    ex.add_argument(
        "--metric", choices=list(_METRICS), default=_METRIC,
        help=f"the verdict's metric (default: {_METRIC}; see comem run --help)",
    )  # fmt: skip
    ex.add_argument("--out", help="also write the table (Markdown) to this file")
    ex.add_argument("--json", action="store_true")
    _add_allow_large(ex)
    ex.set_defaults(func=cmd_explain)

    rn = sub.add_parser(
        "run", help="run every architecture of a scenario and compare them (the main job)"
    )
    rn.add_argument(
        "scenario",
        nargs="?",
        help="scenario TOML file (see scenarios/ and --help-fields); left out: the default"
        " experiment, the authors' documented setup (scenarios/paper/"
        "glm47_synthetic_benchmark__agent_dedicated_tp4.toml)",
    )
    rn.add_argument(
        "--help-fields",
        action=_HelpFields,
        help="print every scenario field (type, default, unit, meaning) and exit",
    )
    rn.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a field: workload.agents=128"
    )
    from sim.workload_flags import add_flags as _add_workload_flags

    _add_workload_flags(rn, _token_count, _positive_int, _seconds)
    rn.add_argument("--out", help="directory for the Parquet tables and the resolved config")
    rn.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    from sim.compare import DEFAULT_METRIC, METRICS, METRICS_HELP

    rn.add_argument(
        "--metric",
        choices=list(METRICS),
        default=DEFAULT_METRIC,
        help=f"what the table's speedup column compares (default: {DEFAULT_METRIC}):"
        f" {METRICS_HELP}. The speedup is the reference's (first fc architecture) over"
        " the other's; --json has every metric",
    )
    _add_allow_large(rn)
    rn.set_defaults(func=cmd_run)

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

    wl = sub.add_parser("workload", help="agent workloads (fit distributions to traces)")
    wl_sub = wl.add_subparsers(dest="workload_command", required=True, parser_class=_Parser)
    wf = wl_sub.add_parser("fit", help="fit the 'fitted' workload to a SWE-bench steps CSV")
    wf.add_argument("--steps", help="steps CSV (default: shared/data/workloads/...)")
    wf.add_argument("--source", action="append", help="trace source(s) to fit (default: Gemini)")
    wf.add_argument(
        "--variable-source",
        action="append",
        metavar="VARIABLE=SOURCE",
        help="take one variable from another source, e.g. system=gemini3pro_mini1.15_verified",
    )
    wf.add_argument(
        "--mixture",
        action="append",
        metavar="VARIABLE",
        help="fit this variable with two log-normal components (a bimodal one)",
    )
    wf.add_argument("--note", help="why this fit (stored in the file, with its provenance)")
    wf.add_argument("--out", default="sim/data/swebench_fitted.json")
    wf.add_argument("--figure", help="write a fit-vs-data figure (PNG) here")
    wf.set_defaults(func=cmd_workload_fit)

    sw = sub.add_parser("sweep", help="run a grid of scenarios (parallel, resumable)")
    sw.add_argument("sweep", help="sweep TOML file (see sweeps/)")
    sw.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    sw.add_argument("--scheduler", help="'local' (a Dask LocalCluster) or a Dask scheduler address")
    _add_workload_flags(sw, _token_count, _positive_int, _seconds)
    sw.add_argument("--out", help="output directory (default: out/<sweep name>)")
    sw.add_argument("--json", action="store_true")
    _add_allow_large(sw)
    sw.set_defaults(func=cmd_sweep)

    fe = sub.add_parser(
        "fit-effectiveness",
        help="refit the effectiveness model on The Complexity Trap runs (../shared)",
    )
    fe.add_argument(
        "--data",
        help="the runs' directory (default: ../shared/data/effectiveness, or $COMEM_SHARED's)",
    )
    fe.add_argument("--out", help="the fit's JSON (default: sim/data/effectiveness_fit.json)")
    fe.add_argument(
        "--draws", type=_int_at_least(1, 10_000), default=200,
        help="instance-bootstrap draws (1-10000; each is a refit, ~10 s)",
    )  # fmt: skip
    fe.add_argument("--seed", type=_non_negative_int, default=23)
    fe.add_argument(
        "--show", action="store_true", help="print the committed fit (no refit, no ../shared)"
    )
    fe.add_argument(
        "--baseline", type=float, default=0.5, help="full-context resolve rate for the examples"
    )
    fe.add_argument("--json", action="store_true")
    _add_allow_large(fe)
    fe.set_defaults(func=cmd_fit_effectiveness)

    fg = sub.add_parser("figures", help="regenerate the figures (PNG and PDF)")
    fg.add_argument(
        "--quick",
        action="store_true",
        help=f"small simulations (seconds), into {QUICK_FIGURES_DIR}",
    )
    fg.add_argument(
        "--out", help=f"directory (default: figures, or {QUICK_FIGURES_DIR} with --quick)"
    )
    fg.add_argument("--only", action="append", metavar="NAME", help="only this figure (repeatable)")
    fg.add_argument("--workers", type=_positive_int, help="processes (default: CPU count)")
    _add_allow_large(fg)
    fg.set_defaults(func=cmd_figures)

    va = sub.add_parser("validate", help="run the validation ladder (sim vs theory vs data)")
    va.add_argument("--quick", action="store_true", help="fewer cases (about 15 s)")
    va.add_argument("--seed", type=_non_negative_int, default=0)
    va.add_argument("--json", action="store_true")
    va.set_defaults(func=cmd_validate)

    th = sub.add_parser("theory", help="print the closed forms and bounds as LaTeX")
    th.add_argument("--json", action="store_true")
    th.set_defaults(func=cmd_theory)

    fam = sub.add_parser(
        "families",
        help="per attention family: KV bytes per token and the concurrency where CoMem beats FC",
        description="One model per attention family (GQA dense, GQA MoE, MLA, DSA, hybrid GDN,"
        " sliding) on each GPU: KV bytes per token, and the authors' synthetic benchmark run at"
        " 1, 2, 4, ... agents until CoMem's llm_exec_time beats FC's, then at 4x that.",
    )
    fam.add_argument("--gpus", nargs="+", default=["h200_sxm", "b200_sxm"])
    fam.add_argument("--out", default="figures/families", help="directory [figures/families]")
    _add_allow_large(fam)
    fam.set_defaults(func=cmd_families)

    ls = sub.add_parser("list", help="list known models, GPUs or embedded profiles")
    ls.add_argument("what", choices=("models", "gpus", "profiles"))
    ls.set_defaults(func=cmd_list)
    _check_paths(parser)
    _name_commands(sub)
    return parser


def _name_commands(sub: Any) -> None:
    """Each (sub)command's full name (``comem calibrate fit``), for its errors."""
    for command in sub.choices.values():
        command.set_defaults(command_prog=command.prog)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _name_commands(action)


def _one_line(text: str) -> str:
    """An error message as one printable line: a newline or other control character
    quoted from the user's input (a name, a parser's message) is shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.strip())


def main(argv: Sequence[str] | None = None) -> int:
    from calibration.limits import allowing_large

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with allowing_large(getattr(args, "allow_large", False)):
            return int(args.func(args))
    except ComemInputError as exc:
        print(f"comem: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's files, disks or network: one line as well
        # a full disk raises from a write, which names no file: name the output then
        out = getattr(args, "out", None)
        where = f"{exc.filename}: " if exc.filename else (f"writing --out {out}: " if out else "")
        print(f"comem: error: {_one_line(f'{where}{exc.strerror or exc}')}", file=sys.stderr)
        return 2
    except MemoryError:  # past a budget with --allow-large, or a small machine
        print(
            "comem: error: out of memory: the run is too large for this machine (a smaller"
            " run, or fewer --workers)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("comem: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `comem ... --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
