"""``comem calibrate``: report, fit, cv, build-defaults, fit-serving, microbench."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import _add_allow_large, _name, _Parser, _token_count
from comem.cli.common import _print_json, _writable_dir, _writable_file


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


def _refuse_foreign_profile(out: str | None, measured: bool = False) -> None:
    """An existing ``--out`` that is not a profile of the kind this fit writes is a user's
    file (or another kind of fit's): not overwritten."""
    from calibration.outputs import refuse_foreign_file
    from calibration.profile import is_profile_json

    what = "a comem measured profile" if measured else "a comem kernel-fitted profile"
    refuse_foreign_file(out, lambda d: is_profile_json(d, measured), what)


def cmd_calibrate_fit(args: argparse.Namespace) -> int:
    from calibration.fit import fit_profile
    from calibration.outputs import refuse_input_as_output
    from calibration.profile import Profile

    sidecar = Path(args.measurements).with_suffix(".metrics.csv") if args.measurements else None
    refuse_input_as_output(
        args.out,
        {"--measurements": args.measurements, "--e2e": args.e2e,
         "--overhead-from": args.overhead_from, "--measurements' metrics sidecar": sidecar},
    )  # fmt: skip
    _refuse_foreign_profile(args.out, measured=bool(args.measurements))
    _writable_file(args.out)
    if args.measurements:
        return _fit_measured(args)

    overhead_from = Profile.load(args.overhead_from) if args.overhead_from else None
    profile = fit_profile(
        args.kernels,
        dtype=args.dtype or "bf16",
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

    # the kernel fit's own flags say nothing about a measured server: refused, not ignored
    kernel_only = {
        "--gpu": args.gpu, "--dtype": args.dtype, "--e2e": args.e2e,
        "--fallback-kernels": args.fallback_kernels, "--overhead-from": args.overhead_from,
    }  # fmt: skip
    given = [flag for flag, value in kernel_only.items() if value is not None]
    if given:
        raise ComemInputError(
            f"{', '.join(given)}: for a fit from --kernels; a fit from --measurements"
            " prices the server that was measured (describe it with --server)"
        )

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
    from calibration.outputs import refuse_input_as_output
    from calibration.profile import FrameworkOverhead, Profile, available_profiles, profile_path
    from calibration.serving import ASSUMPTION_PRESETS, load_serving_csv, parse_assumptions
    from calibration.serving_fit import error_summary
    from sim.serving import calibrate_serving, check_rows

    refuse_input_as_output(args.out, {"--csv": args.csv, "--profile": args.profile})
    _refuse_foreign_profile(args.out)
    _writable_file(args.out)
    rows = load_serving_csv(args.csv)
    assumptions = parse_assumptions(args.assume or [], ASSUMPTION_PRESETS[args.preset])
    # every check before the fit states its cost and starts: the rows, the profiles
    check_rows(rows, assumptions)
    targets = (
        [(Profile.load(profile_path(g, d, f)), profile_path(g, d, f))
         for g, f, d in available_profiles()]
        if args.write_defaults
        else [(Profile.load(args.profile) if args.profile
               else Profile.load(profile_path(rows[0].gpu, rows[0].dtype)), Path(args.out))]
        if args.out else []
    )  # fmt: skip
    _check_fit_cost(rows, assumptions, not args.no_cv, not args.no_per_version)
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
    for left in result.excluded:
        print(f"left out: {left.row.label}: {left.why()}")
    for name, entry in entries.items():
        print(
            f"{name}: {FrameworkOverhead.from_dict(entry).describe()}"
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


#: fixed-point passes a serving fit takes (a generous count: it usually settles in 4-6)
_FIT_PASSES = 8


def _check_fit_cost(
    rows: list[Any], assumptions: dict[str, Any], cross_validate: bool, per_version: bool
) -> None:
    """Refuse, before anything runs, a fit whose simulations exceed the budget: every row's
    closed loop once a pass for the pooled fit, once more across the per-version fits
    (when there are several versions) and per held-out model (with several models)."""
    from calibration import limits
    from calibration.serving import setup_for

    per_pass = sum(setup_for(r, assumptions).prompts_per_client * r.concurrency for r in rows)
    models = len({r.model for r in rows})
    fits = 1 + (per_version and len({r.framework for r in rows}) > 1)
    fits += models if cross_validate and models > 1 else 0
    limits.check(
        limits.SERVING_FIT_REQUESTS,
        per_pass * _FIT_PASSES * fits,
        f"--csv: {len(rows)} rows x their clients x requests per client x {_FIT_PASSES}"
        f" passes x {fits} fit(s)" + (" (--no-cv fits once)" if cross_validate else ""),
    )
    print(
        f"comem calibrate fit-serving: {len(rows)} rows, about {per_pass:,} simulated requests"
        f" a pass, {fits} fit(s)",
        file=sys.stderr,
    )


def _percent_table(frame: Any) -> str:
    """A summary frame with its error columns as percentages."""
    shown = frame.copy()
    for col in shown.columns:
        if col.endswith(("_mape", "_signed")):
            fmt = "{:+.1%}" if col.endswith("_signed") else "{:.1%}"
            shown[col] = [fmt.format(v) for v in shown[col]]
    return shown.to_string(index=False)


def cmd_calibrate_microbench(args: argparse.Namespace) -> int:
    from calibration.microbench import DEVICE_FILE, KERNEL_FILES, run_microbench
    from calibration.outputs import refuse_overwrite

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


def cmd_calibrate_cv(args: argparse.Namespace) -> int:
    """Per op of every embedded profile (or those of ``--gpu``): in-sample and
    cross-validated (whole shapes held out) MAPE."""
    from calibration.profile import available_profiles, default_profile
    from calibration.registry import get_gpu

    # an unknown name is one line, as every other --gpu; a known GPU without an embedded
    # profile says so instead of printing an empty table
    wanted = {get_gpu(g).name for g in args.gpu or []}
    have = {gpu for gpu, _, _ in available_profiles()}
    if wanted - have:
        raise ComemInputError(
            f"--gpu {', '.join(sorted(wanted - have))}: no embedded profile"
            f" (profiles: {', '.join(sorted(have))})"
        )
    print("gpu       dtype  op                          rows  MAPE   CV MAPE  CV p90")
    for gpu, _, dtype in available_profiles():
        if wanted and gpu not in wanted:
            continue
        for key, fit in sorted(default_profile(gpu, dtype).ops.items()):
            own, cv = fit.stats.get("with_lattice", {}), fit.stats.get("cv")
            cv_text = f"{cv['mape']:7.1%}  {cv['p90']:6.1%}" if cv else "      -       -"
            print(
                f"{gpu:9s} {dtype:6s} {key:27s} {own.get('rows', 0):6d}"
                f" {own.get('mape', math.nan):6.1%} {cv_text}"
            )
    return 0


def register(sub: Any) -> None:
    """``comem calibrate`` and its subcommands."""
    cal = sub.add_parser("calibrate", help="latency-model calibration (report, fit)")
    cal_sub = cal.add_subparsers(dest="calibrate_command", required=True, parser_class=_Parser)
    _register_report(cal_sub)
    _register_fit(cal_sub)
    _register_cv(cal_sub)
    _register_build_defaults(cal_sub)
    _register_fit_serving(cal_sub)
    _register_microbench(cal_sub)


def _register_report(cal_sub: Any) -> None:
    rep = cal_sub.add_parser("report", help="print the calibration report and write its plots")
    rep.add_argument("--gpu", help="GPU of the embedded profile to report on [h100_sxm]")
    rep.add_argument("--dtype", help="dtype of the embedded profile [bf16]")
    rep.add_argument("--profile", help="a profile JSON file instead of the embedded default")
    rep.add_argument("--kernels", help="kernel-table directory to recompute per-op errors on")
    rep.add_argument("--e2e", help="end-to-end static-batch CSV to recompute the e2e error on")
    plots = rep.add_mutually_exclusive_group()
    plots.add_argument("--figures", default="figures/calibration", help="where plots go")
    plots.add_argument("--no-figures", action="store_true", help="do not write plots")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.set_defaults(func=cmd_calibrate_report)


def _register_fit(cal_sub: Any) -> None:
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
    fit.add_argument("--dtype", help="(--kernels) weight dtype of the tables [bf16]")
    fit.add_argument("--e2e", help="end-to-end static-batch CSV to fit the overhead term on")
    fit.add_argument("--fallback-kernels", help="tables for ops whose own table is inconsistent")
    fit.add_argument("--overhead-from", help="copy the overhead term from this profile")
    _add_allow_large(fit)
    fit.set_defaults(func=cmd_calibrate_fit)


def _register_cv(cal_sub: Any) -> None:
    cvp = cal_sub.add_parser(
        "cv",
        help="per-op error of the embedded profiles: in-sample and cross-validated",
        description="Every op of every embedded profile: its MAPE on its table and, where"
        " fitted with it (the GPUs beyond H100/H200 bf16/fp8, the family ops), its 5-fold"
        " cross-validated MAPE with whole shapes held out.",
    )
    cvp.add_argument("--gpu", nargs="+", help="only these GPUs")
    cvp.set_defaults(func=cmd_calibrate_cv)


def _register_build_defaults(cal_sub: Any) -> None:
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


def _register_fit_serving(cal_sub: Any) -> None:
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
        "--preset", choices=("none", "shared-h100", "silicon"), default="none",
        help="stated assumptions for what the rows do not say [none: vLLM defaults];"
        " shared-h100: the project's for shared/data/serving/vllm_serving_h100.csv;"
        " silicon: for aiconfigurator's aiperf rows (20 x C prompts, chat endpoint)",
    )  # fmt: skip
    fs.add_argument(
        "--assume", action="append", metavar="[MODEL:]KEY=VALUE",
        help="one assumption (max_num_batched_tokens, prompts_per_client, random_range_ratio,"
        " random_range_semantics, closed_loop_start, kv_cache_dtype, fp8_gemm,"
        " enable_prefix_caching, chat_endpoint, client_issue_delay_s, async_scheduling, ...)",
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


def _register_microbench(cal_sub: Any) -> None:
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
