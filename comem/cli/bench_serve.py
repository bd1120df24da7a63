"""``comem bench-serve``: a simulated ``vllm bench serve``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import _DTYPE_FLAG, _add_allow_large, _shown, _token_count
from comem.cli.common import (
    _json_safe,
    _outputs_not_inputs,
    _print_json,
    _weight_dtype,
    _with_progress,
    _writable_dir,
)
from comem.cli.fields import add_model_flags, fields_of

#: the ``vllm serve`` flags that are ``sim.config.EngineConfig`` fields, in ``--help``'s
#: order (``--dtype``, ``--speculative-config`` and ``--kv-offloading-backend`` between)
SERVER_FIELDS = (
    ("model", "gpu", "tp", "dtype", "enable_expert_parallel", "data_parallel_size"),
    ("spec_acceptance_rate", "kv_cache_dtype", "fp8_gemm", "max_num_batched_tokens",
     "max_num_seqs", "max_model_len", "gpu_memory_utilization", "kv_capacity_tokens",
     "enable_prefix_caching"),
    ("kv_offloading_size", "kv_offloading_bandwidth_GBps", "profile", "stepping"),
)  # fmt: skip

#: where a server flag is not its field as it stands: a required model; vLLM's dtype
#: spellings (and ``auto``, the checkpoint's); batch limits whose default is vLLM
#: serve's for the GPU (None until the GPU is known), bounded as token counts; a draft
#: acceptance rate given only with ``--speculative-config``; stepping without the old name
SERVER_OVERRIDES: dict[str, dict[str, Any]] = {
    "model": {"required": True, "default": None},
    "dtype": _DTYPE_FLAG,
    "max_num_batched_tokens": {"type": _token_count, "default": None},
    "max_num_seqs": {"type": _token_count, "default": None},
    "spec_acceptance_rate": {"default": None},
    "stepping": {"choices": ("event", "iteration")},
}

#: the ``vllm bench serve`` flags that are ``sim.bench_serve.BenchServeConfig`` fields:
#: the load (before ``--goodput``), the schedule of sends, and the reported backend
CLIENT_FIELDS = (
    ("num_prompts", "random_input_len", "random_output_len", "random_range_ratio",
     "random_range_semantics", "random_prefix_len"),
    ("request_rate", "burstiness", "max_concurrency", "closed_loop_start", "warmup_requests",
     "client_issue_delay_s", "seed"),
    ("backend", "ttft_at"),
)  # fmt: skip


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


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from sim.bench_serve import run_bench_serve

    cfg = _bench_serve_config(args)
    _outputs_not_inputs(
        args.out,
        ("requests.parquet", "engine_steps.parquet", "bench_serve.json"),
        {"settings": cfg.model_dump()},
    )
    _writable_dir(args.out, kind="bench-serve")
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
    client = fields_of(args, [f for group in CLIENT_FIELDS for f in group])
    cfg = validate(
        BenchServeConfig,
        {"engine": _engine_fields(args), **client, "goodput": parse_goodput(args.goodput or [])},
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
    given = fields_of(args, [f for group in SERVER_FIELDS for f in group])
    engine: dict[str, Any] = {
        "name": "bench-serve",
        **{k: v for k, v in given.items() if v is not None},
        "record_iterations": bool(args.out),
    }
    if (args.speculative_config is None) != (args.spec_acceptance_rate is None):
        raise ComemInputError(
            "--speculative-config and --spec-acceptance-rate go together (drafts need the"
            " rate at which they are accepted: not measured here, give your draft's)"
        )
    if args.speculative_config is not None:
        engine["num_speculative_tokens"] = args.speculative_config
    return engine


def _warn_bench_serve(
    args: argparse.Namespace, out: dict[str, Any], result: Any, num_prompts: int
) -> None:
    """Notes on the accepted client flags given, and the failed requests, on stderr."""
    from sim.bench_serve import ACCEPTED_CLIENT_FLAGS, accepted_flag_notes

    given = [
        f for f in ACCEPTED_CLIENT_FLAGS
        # given: any value (0 and 0.0 included) or a switch that is on
        if (v := getattr(args, "accepted_" + f[2:].replace("-", "_"))) is not None
        and v is not False
    ]  # fmt: skip
    from sim.describe import trained_context_note

    notes = accepted_flag_notes(given)  # once the run is known to be good
    notes += [n for n in [trained_context_note(args.model, args.max_model_len)] if n]
    for note in notes:
        print(f"comem bench-serve: note: {note}", file=sys.stderr)
    capped = getattr(result.engine, "length_capped", 0)
    if capped:
        print(
            f"comem bench-serve: warning: {capped} of {num_prompts} requests asked for more"
            f" output than max_model_len ({result.config.engine.max_model_len}) leaves after"
            " the prompt: they were stopped there, as vLLM's engine stops them, and count"
            " as completed with fewer tokens (vLLM's API server may refuse such requests"
            " instead: not modelled)",
            file=sys.stderr,
        )
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
        from calibration.outputs import write_text

        # beside its place, then renamed: a killed write leaves no half a result file
        text = json.dumps(_json_safe(out), indent=1, sort_keys=True, allow_nan=False) + "\n"
        write_text(save_to, text, "--save-result file")
    if args.out:
        from calibration.outputs import write_result

        # bench_serve.json last, the tables before it: a killed write leaves no result
        # file, and never an old one beside new tables
        text = json.dumps(_json_safe(out), indent=1, sort_keys=True, allow_nan=False) + "\n"
        writers = result.recorder.parquet_writers()
        writers["bench_serve.json"] = lambda p: p.write_text(text)
        out["files"] = [
            str(p) for p in write_result(args.out, writers, "bench_serve.json", "bench-serve")
        ]


def _print_bench_serve(out: dict[str, Any], args: argparse.Namespace, save_to: Any) -> None:
    """``vllm bench serve``'s text result and the simulated server, then the files written."""
    from sim.bench_serve_result import text_report

    for line in text_report(out, args.percentile_metrics, args.metric_percentiles):
        print(line)
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


def _add_server_flags(bs: argparse.ArgumentParser) -> None:
    """`vllm serve`'s flags (the simulated server): the engine's fields, and vLLM's JSON
    speculative config and offloading backend."""
    from sim.config import EngineConfig

    first, middle, last = SERVER_FIELDS
    add_model_flags(bs, EngineConfig, first, SERVER_OVERRIDES)
    bs.add_argument(
        "--speculative-config", type=_speculative_config, default=None, metavar="JSON",
        help='MTP speculative decoding, e.g. \'{"method": "mtp", "num_speculative_tokens":'
        " 3}' (models shipping MTP modules: DeepSeek, GLM, MiniMax, Qwen3.5)",
    )  # fmt: skip
    add_model_flags(bs, EngineConfig, middle, SERVER_OVERRIDES)
    bs.add_argument("--kv-offloading-backend", choices=("native",), help="vLLM's CPU KV offloading")
    add_model_flags(bs, EngineConfig, last, SERVER_OVERRIDES)


def _add_client_flags(bs: argparse.ArgumentParser) -> None:
    """`vllm bench serve`'s flags that shape the load and the result."""
    from sim.bench_serve import BenchServeConfig

    load, sends, _ = CLIENT_FIELDS
    add_model_flags(bs, BenchServeConfig, load)
    bs.add_argument(
        "--goodput", nargs="+", metavar="KEY:MS",
        help="service-level objectives (ttft, tpot, e2el in ms): request_goodput, the"
        " requests per second meeting all of them",
    )  # fmt: skip
    add_model_flags(bs, BenchServeConfig, sends, {"request_rate": {"type": _rate}})
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


#: the types ``vllm bench serve`` parses these accepted flags with: a value vLLM would
#: refuse is refused here too (argparse, exit 2), though the simulation does not use it
_ACCEPTED_TYPES: dict[str, Any] = {
    "--port": int,
    "--ready-check-timeout-sec": int,
    "--num-warmups": int,
    "--temperature": float,
    "--top-p": float,
    "--top-k": int,
    "--min-p": float,
}


def _add_vllm_client_flags(bs: argparse.ArgumentParser) -> None:
    """`vllm bench serve`'s other flags: accepted (and noted) or refused, one line each."""
    compat = bs.add_argument_group(
        "vllm bench serve's client flags, accepted so its command lines run unchanged"
        " (nothing is contacted; the prompts are random, the outputs run to their length)"
    )
    compat.add_argument("--dataset-name", choices=("random",), default="random")
    compat.add_argument("--ignore-eos", action="store_true", help="always so here")
    from sim.bench_serve import ACCEPTED_CLIENT_FLAGS, REFUSED_CLIENT_FLAGS, BenchServeConfig

    add_model_flags(compat, BenchServeConfig, CLIENT_FIELDS[2])

    for table, word in ((ACCEPTED_CLIENT_FLAGS, "accepted"), (REFUSED_CLIENT_FLAGS, "refused")):
        for flag, (nargs, why) in table.items():
            dest = f"{word}_" + flag[2:].replace("-", "_")
            if nargs == 0:
                compat.add_argument(flag, dest=dest, action="store_true", help=f"{word}: {why}")
            else:
                compat.add_argument(
                    flag, dest=dest, nargs=None if nargs == 1 else nargs, help=f"{word}: {why}",
                    type=_ACCEPTED_TYPES.get(flag, str),
                )  # fmt: skip
