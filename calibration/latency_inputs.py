"""The latency model's inputs, resolved and checked before anything is priced.

What a deployment must be for :class:`calibration.latency.LatencyModel` to price it: a
KV-cache dtype and fp8 GEMM kernel it has kernels for, tensor / expert / data parallelism
on one node whose collectives were measured, and a profile fitted on the engine's own GPU
and dtype. Each defect is one line naming the setting.
"""

from __future__ import annotations

import math
from dataclasses import replace

from calibration.dtypes import check_kv_cache_dtype
from calibration.errors import ComemInputError
from calibration.model_spec import ModelSpec
from calibration.profile import Profile, default_profile
from calibration.registry import GpuSpec

#: Tensor-parallel sizes priced: one node, the all-reduce measured on 2, 4 and 8 GPUs.
SUPPORTED_TP = (1, 2, 4, 8)
#: ``fp8_gemm`` choices: the 128x128 block-scaled fp8 GEMM (the published FP8 checkpoints
#: of Qwen3, GLM-4.5/4.7, Qwen3-Coder), the per-tensor scaled one (``--quantization fp8``
#: on a bf16 checkpoint; per-tensor / per-channel checkpoints such as Llama-3.1 FP8), or
#: ``auto``: block for mixture-of-experts models, tensor for dense ones.
FP8_GEMM_KINDS = ("auto", "block", "tensor")
#: Per family op: the config field that names it, what it is, its kernel tables.
FAMILY_FIELDS = {
    "mla": ("kv_lora_rank", "multi-head latent attention (MLA)", "mla_*_module_perf / *_mla_perf"),
    "dsa": ("index_topk", "DeepSeek sparse attention (DSA)", "dsa_*_module_perf"),
    "gdn": ("layer_types", "Gated DeltaNet linear attention", "gdn_perf"),
}


def resolve_kv_cache_dtype(model: ModelSpec, kv_cache_dtype: str) -> str:
    """``bf16`` or ``fp8``: ``--kv-cache-dtype``, where ``auto`` is fp8 for DeepSeek sparse
    attention (vLLM's default cache there is fp8_ds_mla, VLLM_FACTS D)."""
    checked = check_kv_cache_dtype(kv_cache_dtype)
    if model.index_topk and str(kv_cache_dtype).strip().lower() == "auto":
        return "fp8"
    return checked


def fp8_gemm_kernel(model: ModelSpec, dtype: str, fp8_gemm: str) -> str | None:
    """The fp8 GEMM kernel ``fp8_gemm`` names (``auto``: block for mixture-of-experts
    models, tensor for dense ones); None when the weights are not fp8."""
    if fp8_gemm not in FP8_GEMM_KINDS:
        raise ComemInputError(f"unknown fp8_gemm '{fp8_gemm}'; known: {', '.join(FP8_GEMM_KINDS)}")
    if fp8_gemm == "auto":
        fp8_gemm = "block" if model.is_moe else "tensor"
    return fp8_gemm if dtype == "fp8" else None


def check_parallelism(
    model: ModelSpec, tp: int, expert_parallel: bool, data_parallel_size: int
) -> int:
    """Check that ``tp`` (and expert parallelism over ``data_parallel_size`` ranks) can
    shard ``model`` on one node; return the DP ranks the experts span (1 without EP)."""
    if expert_parallel and not model.is_moe:
        raise ComemInputError(
            f"expert parallelism needs a mixture-of-experts model: {model.alias} is dense"
        )
    model.check_tp(tp, expert_parallel=expert_parallel)
    if tp not in SUPPORTED_TP:
        raise ComemInputError(
            f"tp={tp} is not supported: one node, all-reduce measured for 2, 4, 8 GPUs"
            f" (choose from {', '.join(map(str, SUPPORTED_TP))})"
        )
    dp = int(data_parallel_size) if expert_parallel else 1
    if dp > 1 and tp * dp not in SUPPORTED_TP[1:]:
        raise ComemInputError(
            f"data_parallel_size {dp} x tp {tp} = {tp * dp} expert-parallel ranks:"
            " their all-gather / reduce-scatter is priced from the all-reduce tables,"
            " measured on 2, 4 or 8 GPUs of one node"
        )
    return dp


def engine_profile(profile: Profile | None, gpu: GpuSpec, dtype: str) -> Profile:
    """``profile``, which must be for the engine's GPU and dtype, else the embedded one."""
    if profile is not None and (profile.gpu, profile.dtype) != (gpu.name, dtype):
        # a profile's op fits price one GPU's kernels in one dtype; the KV capacity
        # and weights come from the engine's GPU: mixed, they describe no machine
        which = f"profile {profile.source}" if profile.source else "the profile"
        raise ComemInputError(
            f"{which} is for {profile.gpu}/{profile.dtype}, but the engine runs"
            f" {gpu.name}/{dtype}: set the engine's gpu and dtype to the"
            f" profile's, or use a profile fitted on {gpu.name}/{dtype}"
        )
    return profile if profile is not None else default_profile(gpu.name, dtype)


#: An all-reduce over twice the GPUs, on an NVLink-switch node: its launch latency ``t0``
#: grows by this factor and its bus bandwidth stays. From the committed profiles of the GPUs
#: whose tables measure 4 and 8 GPUs: t0(8) / t0(4) = 1.12 (H100), 1.14 (H200), 1.17 (B200),
#: 1.21 (B300); bus bandwidth 8 / 4 = 0.97-1.07. (A100's 1.31 and L40S's PCIe 1.81 are
#: other fabrics, not used.)
ALLREDUCE_T0_PER_DOUBLING = 1.16


def with_allreduce(profile: Profile, all_ranks: set[int]) -> tuple[Profile, str]:
    """``profile``, with an all-reduce over each of ``all_ranks`` GPUs where its tables stop
    below that (:func:`_with_allreduce`), and what was extrapolated ("" if nothing)."""
    notes = []
    for ranks in sorted(all_ranks):
        profile, note = _with_allreduce(profile, ranks)
        notes.append(note)
    return profile, "; ".join(filter(None, notes))


def _with_allreduce(profile: Profile, ranks: int) -> tuple[Profile, str]:
    """``profile``, and an all-reduce over ``ranks`` GPUs where its tables stop below that
    (GB200's measure 2 and 4 GPUs, one compute tray; TP8 spans two over NVLink): the
    largest measured one's fit with its launch latency grown by
    :data:`ALLREDUCE_T0_PER_DOUBLING` per doubling; and a line saying so ("" when the
    tables have it, or have nothing to extrapolate from)."""
    key = f"allreduce_{ranks}"
    have = profile.allreduce_ranks()
    below = [n for n in have if n < ranks]
    if key in profile.ops or not below:
        return profile, ""
    base = below[-1]
    fit = profile.ops[f"allreduce_{base}"]
    grow = ALLREDUCE_T0_PER_DOUBLING ** math.log2(ranks / base)
    derived = replace(fit, params={**fit.params, "t0": fit.params["t0"] * grow})
    note = (
        f"the all-reduce over {ranks} GPUs is extrapolated from {profile.gpu}'s over {base}"
        f" (its tables measure {', '.join(map(str, have))}): launch latency x{grow:.2f},"
        " bus bandwidth kept, as on the NVLink-switch GPUs that measure both"
    )
    return replace(profile, ops={**profile.ops, key: derived}), note
