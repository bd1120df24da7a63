"""Typed, validated configuration of simulated engines.

pydantic models with a default for every field; unknown keys are rejected. A
validation failure becomes one :class:`~calibration.errors.ComemInputError` line that
names the field and the problem.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PositiveInt,
    model_validator,
)

from calibration.errors import ComemInputError
from calibration.inputs import (
    MAX_NESTING,
    InputModel,
    Name,
    PathText,
    Seconds,
    Tokens,
    nesting_depth,
    read_toml,
    validate,
)

__all__ = ["EngineConfig", "Stepping", "apply_overrides", "parse_value", "read_toml", "validate"]

#: The most data-parallel replicas of one engine: each is a scheduler and a KV cache in
#: memory (a million of them fill gigabytes before the first step); 1024 replicas of
#: even one GPU each are beyond any deployment the project studies.
MAX_REPLICAS = 1024

#: ``event``: jump over runs of identical iterations (the default); ``iteration``: one
#: SimPy step per engine iteration (the reference). ``fast`` is the old name of ``event``.
Stepping = Literal["event", "iteration", "fast"]


class EngineConfig(InputModel):
    """One vLLM-like instance: a model on ``tp`` GPUs with its scheduler limits.

    Defaults follow vLLM 0.19 V1 for an OpenAI-compatible server on GPUs with >= 70 GiB
    (vllm/engine/arg_utils.py: max_num_batched_tokens 8192, max_num_seqs 1024; block
    size 16; gpu_memory_utilization 0.9; prefix caching and chunked prefill on).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: name in tables and messages (a scenario names its engines <architecture>/agent
    #: and <architecture>/memory)
    name: Name = "engine"
    #: model alias or HF id ('comem list models'), or the path of a config.json
    model: PathText = Field(
        default="llama-3-8b", description="model name or alias ('comem list models')"
    )
    #: GPU name ('comem list gpus'), or the path of a device JSON
    gpu: PathText = Field(default="h100_sxm", description="GPU ('comem list gpus') [{default}]")
    #: tensor-parallel GPUs of this instance (1, 2, 4 or 8, dividing the model's heads)
    tp: PositiveInt = Field(
        default=1, json_schema_extra={"flags": ["--tp", "--tensor-parallel-size"]}
    )
    #: weight precision; a scenario states it (bench-serve and predict-static default to the
    #: checkpoint's, as vLLM loads it). The KV cache: kv_cache_dtype
    dtype: Literal["bf16", "fp8", "fp4", "int4", "mxfp4"] = "bf16"
    #: vLLM's ``--enable-expert-parallel`` (one data-parallel rank): MoE layers split by
    #: whole experts over the ``tp`` GPUs instead of slicing every expert; an error for a
    #: dense model
    enable_expert_parallel: bool = Field(
        default=False,
        description="split MoE layers by whole experts over the TP GPUs (MoE models only)",
    )
    #: vLLM's ``--kv-cache-dtype``: ``auto`` (the activation dtype, bf16, also for fp8
    #: weights unless the checkpoint carries KV scales) or ``fp8`` (half the bytes per token)
    kv_cache_dtype: Literal["auto", "bf16", "fp8"] = Field(
        default="auto",
        description="KV cache dtype [auto: bf16, vLLM's default also for fp8 weights]",
    )
    #: the fp8 GEMM kernel (``dtype = "fp8"`` only): ``block`` (128x128 block-scaled, the
    #: published FP8 checkpoints of Qwen3 / GLM / Qwen3-Coder), ``tensor`` (per-tensor
    #: scaled: ``--quantization fp8`` on a bf16 checkpoint), ``auto`` (block for MoE models,
    #: tensor for dense ones)
    fp8_gemm: Literal["auto", "block", "tensor"] = Field(
        default="auto",
        description="fp8 GEMM kernel: 128x128 block-scaled (the Qwen3/GLM FP8 checkpoints) or"
        " per-tensor (--quantization fp8) [auto: block for MoE, tensor for dense models]",
    )
    #: vLLM's --max-num-batched-tokens: tokens an iteration may schedule (chunked prefill)
    max_num_batched_tokens: PositiveInt = Field(
        default=8192,
        description="[vLLM serve's default: 8192 on GPUs of 70 GiB or more but A100, else 2048]",
    )
    #: vLLM's --max-num-seqs: requests running at once
    max_num_seqs: PositiveInt = Field(
        default=1024,
        description="[vLLM serve's default: 1024 on GPUs of 70 GiB or more but A100, else 256]",
    )
    #: vLLM's --max-model-len: a longer prompt is rejected (its task ends early)
    max_model_len: Tokens = 131072
    #: tokens per KV-cache block
    block_size: PositiveInt = 16
    #: fraction of GPU memory for weights, activations and the KV cache
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    #: reuse cached KV blocks of a shared prompt prefix (vLLM's automatic prefix caching)
    enable_prefix_caching: bool = Field(
        default=True, json_schema_extra={"flags": ["--no-enable-prefix-caching"]}
    )
    #: vLLM 0.19's ``scheduler_reserve_full_isl``: admit a waiting request only if free
    #: KV blocks cover its whole prompt (false: its first chunk, as vLLM 0.12 does)
    scheduler_reserve_full_isl: bool = True
    #: vLLM's ``--async-scheduling``: the CPU work of the next iteration overlaps this
    #: one's GPU work (on by default from vLLM 0.14); None: as the server the profile's
    #: framework overhead was fitted on (the embedded default: on)
    async_scheduling: bool | None = None
    #: how the simulation steps the engine (a scenario's engine.stepping sets every one)
    stepping: Stepping = "event"
    #: KV-cache capacity override in tokens (default: derived from GPU memory).
    kv_capacity_tokens: Tokens | None = Field(default=None, description="KV cache size override")
    #: A profile JSON file instead of the embedded default for (gpu, dtype).
    profile: PathText | None = Field(
        default=None, description="a profile JSON (kernel-fitted or measured)"
    )
    #: Fixed cost per request before it joins the queue (HTTP, tokenization); None:
    #: the latency model's own (a measured profile's fitted value, else 0).
    request_overhead_s: Seconds | None = None
    #: vLLM's native CPU KV offloading (``--kv-offloading-backend native
    #: --kv-offloading-size GiB``): host memory for an LRU tier of KV blocks, in GiB over
    #: all of the engine's GPUs; None: off.
    kv_offloading_size: float | None = Field(
        default=None,
        gt=0.0,
        le=1e6,
        allow_inf_nan=False,
        description="GiB of CPU memory for KV blocks (all GPUs)",
        json_schema_extra={"unit": "GiB"},
    )
    #: Host<->GPU copy bandwidth per GPU and direction, GB/s. Default 50: NVIDIA's
    #: H100/H200 SXM datasheets give PCIe Gen5 x16 as 128 GB/s (64 GB/s each way); a
    #: pinned-memory copy reaches about 80% of that (an assumption; set your measurement).
    kv_offloading_bandwidth_GBps: float = Field(
        default=50.0,
        gt=0.0,
        le=1e5,
        allow_inf_nan=False,
        description="host<->GPU copy GB/s per GPU and direction [50: PCIe Gen5 x16, ~80%]",
        json_schema_extra={"flags": ["--kv-offloading-bandwidth-gbps"]},
    )
    #: Fixed cost of each block's copy (vLLM issues one cudaMemcpyAsync per block); 0 by
    #: default (not measured here).
    kv_offloading_copy_overhead_s: Seconds = 0.0
    #: Engines of one scenario with the same ``gpu_group`` run on the same GPUs (a memory
    #: model co-located with the agent): each takes its own ``gpu_memory_utilization``
    #: of every GPU (together at most 1), and their iterations take turns on the GPUs.
    gpu_group: Name | None = None
    #: Data-parallel replicas (vLLM ``--data-parallel-size``), each on its own ``tp`` GPUs
    #: with its own scheduler and KV cache, behind a router.
    data_parallel_size: int = Field(
        default=1,
        ge=1,
        le=MAX_REPLICAS,
        description="DP ranks of TP GPUs each, own scheduler and KV cache; a request goes to the"
        " rank with the lowest 4 x waiting + running (vLLM's DP load balancer); MoE ranks"
        " step in lockstep; with --enable-expert-parallel EP = TP x DP [{default}]",
        json_schema_extra={"flags": ["--data-parallel-size", "-dp"]},
    )
    #: ``vllm``: the replica with the lowest 4 x waiting + running (vLLM's DP client);
    #: ``round-robin``; ``prefix-aware``: the longest cached prefix, then vLLM's score.
    data_parallel_router: Literal["vllm", "round-robin", "prefix-aware"] = "vllm"
    #: Keep the per-step time series (an iteration, or a run of them in event stepping).
    record_iterations: bool = True
    #: Speculative decoding with the checkpoint's MTP modules (vLLM ``--speculative-config
    #: '{"method": "mtp", "num_speculative_tokens": k}'``): draft tokens per decode step
    #: (0: off). Each step verifies 1 + k tokens per decoding request in the target model,
    #: then runs the MTP module; event stepping then schedules iteration by iteration.
    num_speculative_tokens: int = Field(default=0, ge=0, le=16)
    #: Probability that a draft is accepted, given the drafts before it were (independent
    #: per token: a step of k drafts emits (1 - a^(k+1)) / (1 - a) tokens on average). Not
    #: measured here: set what your draft model reaches on your data.
    spec_acceptance_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="probability each draft is accepted given the ones before were (with"
        " --speculative-config; a step of k drafts emits (1 - A^(k+1)) / (1 - A) tokens)",
        json_schema_extra={"metavar": "A"},
    )

    @model_validator(mode="after")
    def _fp8_gemm_is_for_fp8_weights(self) -> EngineConfig:
        """A GEMM kernel choice for weights that run no fp8 GEMM would be dropped without a
        word: refused, with what the user likely meant."""
        if self.fp8_gemm != "auto" and self.dtype != "fp8":
            raise ValueError(
                f"fp8_gemm = '{self.fp8_gemm}' picks the kernel of fp8 weights, and these are"
                f" {self.dtype}: set dtype = 'fp8' (vLLM's --quantization fp8 on a bf16"
                " checkpoint is fp8_gemm = 'tensor'), or leave fp8_gemm at 'auto'"
            )
        return self


def parse_value(text: str, where: str = "--set") -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, lists), else a string."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    except RecursionError:
        raise ComemInputError(f"{where}: nested more than {MAX_NESTING} levels deep") from None
    except ValueError:  # JSON, but an integer of more than 4300 digits
        raise ComemInputError(f"{where}: a number of {len(text)} digits is too long") from None
    if nesting_depth(value) > MAX_NESTING:
        raise ComemInputError(f"{where}: nested more than {MAX_NESTING} levels deep")
    return value


def apply_overrides(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (a copy); validation comes after."""
    import copy

    out = copy.deepcopy(data)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ComemInputError(f"--set {item!r}: expected KEY=VALUE, e.g. engine.tp=4")
        parts = key.strip().split(".")
        if len(parts) > MAX_NESTING:
            raise ComemInputError(f"--set {key[:40]!r}...: more than {MAX_NESTING} levels deep")
        node: Any = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):  # architectures.1.k=8
                if not part.isdigit() or int(part) >= len(node):
                    raise ComemInputError(
                        f"--set {item!r}: '{part}' is not an index of a {len(node)}-item list"
                    )
                if last:
                    node[int(part)] = parse_value(raw, f"--set {key.strip()}")
                else:
                    node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ComemInputError(f"--set {item!r}: '{parts[depth - 1]}' is a value")
            if last:
                node[part] = parse_value(raw, f"--set {key.strip()}")
            else:
                if part not in node and parts[depth + 1].isdigit():
                    raise ComemInputError(
                        f"--set {item!r}: '{part}' is not in the file, so it has no item"
                        f" {parts[depth + 1]} to change (write the list out in the file)"
                    )
                node = node.setdefault(part, {})
    return out
