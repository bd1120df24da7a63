"""``comem bench-serve``: a simulated ``vllm bench serve``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import (
    _DTYPE_HELP,
    _add_allow_large,
    _dtype_arg,
    _fraction,
    _non_negative_int,
    _positive_int,
    _positive_number,
    _probability,
    _shown,
    _token_count,
)
from comem.cli.common import (
    _field_choices,
    _field_default,
    _json_safe,
    _outputs_not_inputs,
    _print_json,
    _weight_dtype,
    _with_progress,
    _writable_dir,
)


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
    from sim.bench_serve import run_bench_serve

    cfg = _bench_serve_config(args)
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
    _warn_bench_serve(args, out, result, cfg.num_prompts)
    _write_bench_serve(args, out, result, save_to)
    if args.json:
        _print_json(out)
        return 0
    _print_bench_serve(out, args, save_to)
    return 0


def _bench_serve_config(args: argparse.Namespace) -> Any:
    """The flags as a checked ``BenchServeConfig`` (a refused client flag, a bad model,
    GPU or combination is one line, before anything runs)."""
    from sim.bench_serve import (
        REFUSED_CLIENT_FLAGS,
        BenchServeConfig,
        check_config,
        parse_goodput,
        refused_flag,
    )
    from sim.config import validate

    refusal = refused_flag(
        [f for f in REFUSED_CLIENT_FLAGS if getattr(args, "refused_" + f[2:].replace("-", "_"))
         not in (None, False)]
    )  # fmt: skip
    if refusal is not None:
        raise ComemInputError(refusal)
    args.dtype = _weight_dtype(args)
    cfg = validate(
        BenchServeConfig,
        {
            "engine": _engine_fields(args),
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
    return cfg


def _engine_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The server flags as the engine's fields (vLLM serve's batch defaults for the GPU
    where the flags leave them out)."""
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
    return engine


def _warn_bench_serve(
    args: argparse.Namespace, out: dict[str, Any], result: Any, num_prompts: int
) -> None:
    """Notes on the accepted client flags given, and the failed requests, on stderr."""
    from sim.bench_serve import ACCEPTED_CLIENT_FLAGS, accepted_flag_notes

    given = [
        f for f in ACCEPTED_CLIENT_FLAGS
        if getattr(args, "accepted_" + f[2:].replace("-", "_")) not in (None, False)
    ]  # fmt: skip
    for note in accepted_flag_notes(given):  # once the run is known to be good
        print(f"comem bench-serve: note: {note}", file=sys.stderr)
    if out["failed"]:
        first = next((r.reason for r in result.requests if r.status != "finished"), "")
        print(
            f"comem bench-serve: warning: {out['failed']} of {num_prompts} requests failed"
            f" (first: {first or 'no reason recorded'}); the statistics cover the others",
            file=sys.stderr,
        )


def _write_bench_serve(
    args: argparse.Namespace, out: dict[str, Any], result: Any, save_to: Path | None
) -> None:
    """The result JSON to ``--save-result``'s file, and with the Parquet tables to ``--out``
    (whose files ``out`` then lists)."""
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


def register(sub: Any) -> None:
    """``comem bench-serve``: the server flags, the client flags, vLLM's others."""
    bs = sub.add_parser(
        "bench-serve",
        help="simulated `vllm bench serve` (random dataset): vLLM's flags and result names",
        description="Simulate `vllm serve MODEL` under `vllm bench serve --dataset-name random"
        " --ignore-eos`: the same flags (defaults are vLLM's) and the same result JSON"
        " (--json). Server flags: --model .. --stepping; client flags: --num-prompts ..",
    )
    _add_server_flags(bs)
    _add_client_flags(bs)
    _add_vllm_client_flags(bs)
    bs.add_argument("--save-detailed", action="store_true", help="per-request lists in the JSON")
    bs.add_argument("--out", help="directory for bench_serve.json and the Parquet tables")
    bs.add_argument("--json", action="store_true", help="print the result JSON")
    _add_allow_large(bs)
    bs.set_defaults(func=cmd_bench_serve)


def _engine(name: str) -> Any:
    """The default of the engine field a server flag mirrors (``sim.config.EngineConfig``)."""
    from sim.config import EngineConfig

    return _field_default(EngineConfig, name)


def _engine_choices(name: str) -> tuple[Any, ...]:
    from sim.config import EngineConfig

    return _field_choices(EngineConfig, name)


def _client(name: str) -> Any:
    """The default of the field a client flag mirrors (``sim.bench_serve.BenchServeConfig``)."""
    from sim.bench_serve import BenchServeConfig

    return _field_default(BenchServeConfig, name)


def _client_choices(name: str) -> tuple[Any, ...]:
    from sim.bench_serve import BenchServeConfig

    return _field_choices(BenchServeConfig, name)


def _add_server_flags(bs: argparse.ArgumentParser) -> None:
    """`vllm serve`'s flags (the simulated server)."""
    bs.add_argument("--model", required=True, help="model name or alias ('comem list models')")
    bs.add_argument("--gpu", default=_engine("gpu"), help="GPU ('comem list gpus') [h100_sxm]")
    bs.add_argument(
        "--tp", "--tensor-parallel-size", type=_positive_int, default=_engine("tp"), dest="tp"
    )
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
        "--kv-cache-dtype", choices=_engine_choices("kv_cache_dtype"),
        default=_engine("kv_cache_dtype"),
        help="KV cache dtype [auto: bf16, vLLM's default also for fp8 weights]",
    )  # fmt: skip
    bs.add_argument(
        "--fp8-gemm", choices=_engine_choices("fp8_gemm"), default=_engine("fp8_gemm"),
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
    bs.add_argument(
        "--gpu-memory-utilization", type=_fraction, default=_engine("gpu_memory_utilization")
    )
    bs.add_argument("--kv-capacity-tokens", type=_token_count, help="KV cache size override")
    bs.add_argument("--no-enable-prefix-caching", action="store_true")
    bs.add_argument("--kv-offloading-backend", choices=("native",), help="vLLM's CPU KV offloading")
    bs.add_argument(
        "--kv-offloading-size", type=float, help="GiB of CPU memory for KV blocks (all GPUs)"
    )
    bs.add_argument(
        "--kv-offloading-bandwidth-gbps", type=_positive_number,
        default=_engine("kv_offloading_bandwidth_GBps"),
        help="host<->GPU copy GB/s per GPU and direction [50: PCIe Gen5 x16, ~80%%]",
    )  # fmt: skip
    bs.add_argument("--profile", help="a profile JSON (kernel-fitted or measured)")
    bs.add_argument("--stepping", choices=("event", "iteration"), default=_engine("stepping"))


def _add_client_flags(bs: argparse.ArgumentParser) -> None:
    """`vllm bench serve`'s flags that shape the load and the result."""
    bs.add_argument("--num-prompts", type=_positive_int, default=_client("num_prompts"))
    bs.add_argument("--random-input-len", type=_positive_int, default=_client("random_input_len"))
    bs.add_argument("--random-output-len", type=_positive_int, default=_client("random_output_len"))
    bs.add_argument("--random-range-ratio", type=float, default=_client("random_range_ratio"))
    bs.add_argument(
        "--random-prefix-len", type=_non_negative_int, default=_client("random_prefix_len"),
        help="tokens every prompt starts with, the same for all (with prefix caching,"
        " computed once) [0]",
    )  # fmt: skip
    bs.add_argument(
        "--goodput", nargs="+", metavar="KEY:MS",
        help="service-level objectives (ttft, tpot, e2el in ms): request_goodput, the"
        " requests per second meeting all of them",
    )  # fmt: skip
    bs.add_argument(
        "--request-rate", type=_rate, default=_client("request_rate"), help="req/s [inf]"
    )
    bs.add_argument(
        "--burstiness", type=float, default=_client("burstiness"),
        help="Gamma shape [1: Poisson]",
    )  # fmt: skip
    bs.add_argument("--max-concurrency", type=_positive_int, help="requests in flight at most")
    bs.add_argument(
        "--closed-loop-start", choices=_client_choices("closed_loop_start"),
        default=_client("closed_loop_start"),
        help="with --max-concurrency and rate inf: the first wave sent at once, as vLLM does"
        " (identical lengths then stay in lockstep) [burst], or spread over one request"
        " (a desynchronized steady state; the first wave is left out as warm-up)",
    )  # fmt: skip
    bs.add_argument(
        "--warmup-requests", type=int, help="first requests left out of the latency statistics"
        " [staggered: max-concurrency, else 0]",
    )  # fmt: skip
    bs.add_argument(
        "--client-issue-delay", type=float, default=_client("client_issue_delay_s"), metavar="S",
        help="mean seconds a closed-loop client takes to send its next request (exponential,"
        " seeded): the jitter that desynchronizes clients [0: ideal client]",
    )  # fmt: skip
    bs.add_argument("--seed", type=int, default=_client("seed"))
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


def _add_vllm_client_flags(bs: argparse.ArgumentParser) -> None:
    """`vllm bench serve`'s other flags: accepted (and noted) or refused, one line each."""
    compat = bs.add_argument_group(
        "vllm bench serve's client flags, accepted so its command lines run unchanged"
        " (nothing is contacted; the prompts are random, the outputs run to their length)"
    )
    compat.add_argument("--dataset-name", choices=("random",), default="random")
    compat.add_argument("--ignore-eos", action="store_true", help="always so here")
    compat.add_argument(
        "--backend", default=_client("backend"), choices=_client_choices("backend"),
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
