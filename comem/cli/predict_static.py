"""``comem predict-static``: the latency of one static batch."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import (
    _DTYPE_FLAG,
    _add_allow_large,
    _name,
    _positive_int,
    _token_count,
)
from comem.cli.common import _print_json, _weight_dtype
from comem.cli.fields import add_model_flags

#: where an engine flag of a static batch is not the engine field as it stands: vLLM's
#: dtype spellings; benchmark_latency's token budget (a whole batch's prompts at once)
ENGINE: dict[str, dict[str, Any]] = {
    "dtype": _DTYPE_FLAG,
    "max_num_batched_tokens": {"type": _token_count, "default": 16384, "help": None},
}


def cmd_predict_static(args: argparse.Namespace) -> int:
    from calibration.latency import LatencyModel
    from calibration.profile import Profile
    from calibration.static import static_cost

    args.dtype = _weight_dtype(args)
    if args.fp8_gemm not in (None, "auto") and args.dtype != "fp8":  # as EngineConfig says
        raise ComemInputError(
            f"--fp8-gemm {args.fp8_gemm} picks the kernel of fp8 weights, and these are"
            f" {args.dtype}: give --dtype fp8 (vLLM's --quantization fp8 on a bf16 checkpoint"
            " is --fp8-gemm tensor), or leave --fp8-gemm out"
        )

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
        fp8_gemm=args.fp8_gemm,
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
    trained = lm.model.max_position_embeddings
    if trained and args.input + args.output > trained:
        print(
            f"comem predict-static: note: {args.input} + {args.output} tokens a request are"
            f" past {lm.model.alias}'s max_position_embeddings {trained:,}: vLLM refuses"
            " such requests unless rope scaling extends it; priced as asked",
            file=sys.stderr,
        )
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


def register(sub: Any) -> None:
    from sim.config import EngineConfig

    ps = sub.add_parser(
        "predict-static", help="predicted latency of one static batch (vLLM benchmark_latency)"
    )
    ps.add_argument(
        "--model",
        type=_name,
        required=True,
        help="alias, HF id (see 'comem list models') or path of a Hugging Face config.json",
    )
    add_model_flags(
        ps, EngineConfig, ("gpu", "tp", "dtype", "enable_expert_parallel", "fp8_gemm"), ENGINE
    )
    # vLLM's ``vllm bench latency`` spells them --batch-size / --input-len / --output-len
    ps.add_argument(
        "--batch", "--batch-size", dest="batch", type=_positive_int, required=True,
        help="requests in the batch",
    )  # fmt: skip
    ps.add_argument(
        "--input", "--input-len", dest="input", type=_positive_int, required=True,
        help="prompt tokens",
    )  # fmt: skip
    ps.add_argument(
        "--output", "--output-len", dest="output", type=_positive_int, required=True,
        help="generated tokens",
    )  # fmt: skip
    add_model_flags(
        ps, EngineConfig, ("max_num_batched_tokens", "gpu_memory_utilization", "profile"), ENGINE
    )
    ps.add_argument(
        "--framework", type=_name,
        help="the profile's overhead of this framework version (e.g. vllm-2024,"
        " the 2024 vLLM of the static-batch data) [the profile's default: the serving fit]",
    )  # fmt: skip
    ps.add_argument("--json", action="store_true")
    _add_allow_large(ps)
    ps.set_defaults(func=cmd_predict_static)
