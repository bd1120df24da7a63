"""``comem list``: known models, GPUs or embedded profiles."""

from __future__ import annotations

import argparse
from typing import Any


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
        from calibration.profile import Profile, profile_path

        # the file's framework name is the profile family; the kernels' own vLLM version
        # (A100: 0.14.0, L40S: 0.22.0) is what its op fits were measured on
        for gpu, framework, dtype in available_profiles():
            prov = Profile.load(profile_path(gpu, dtype, framework)).provenance
            head, found, folder = str(prov.get("kernel_dir", "")).rpartition("vllm-")
            folder = folder if found else ""
            kernels = prov.get("kernel_vllm_version") or folder or "unstated"
            print(f"{gpu:10s} {framework:12s} {dtype:6s} kernel tables: vLLM {kernels}")
    return 0


def register(sub: Any) -> None:
    ls = sub.add_parser("list", help="list known models, GPUs or embedded profiles")
    ls.add_argument("what", choices=("models", "gpus", "profiles"))
    ls.set_defaults(func=cmd_list)
