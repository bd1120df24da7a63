"""Typed, validated configuration of simulated engines.

pydantic models with a default for every field; unknown keys are rejected. A
validation failure becomes one :class:`~calibration.errors.ComemInputError` line that
names the field and the problem.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)

from calibration.errors import ComemInputError

#: ``event``: jump over runs of identical iterations (the default); ``iteration``: one
#: SimPy step per engine iteration (the reference). ``fast`` is the old name of ``event``.
Stepping = Literal["event", "iteration", "fast"]


class EngineConfig(BaseModel):
    """One vLLM-like instance: a model on ``tp`` GPUs with its scheduler limits.

    Defaults follow vLLM 0.19 V1 for an OpenAI-compatible server on GPUs with >= 70 GiB
    (vllm/engine/arg_utils.py: max_num_batched_tokens 8192, max_num_seqs 1024; block
    size 16; gpu_memory_utilization 0.9; prefix caching and chunked prefill on).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "engine"
    model: str = "llama-3-8b"
    gpu: str = "h100_sxm"
    tp: PositiveInt = 1
    dtype: Literal["bf16", "fp8"] = "bf16"
    #: vLLM's ``--enable-expert-parallel`` (one data-parallel rank): MoE layers split by
    #: whole experts over the ``tp`` GPUs instead of slicing every expert; an error for a
    #: dense model
    enable_expert_parallel: bool = False
    #: vLLM's ``--kv-cache-dtype``: ``auto`` (the activation dtype, bf16, also for fp8
    #: weights unless the checkpoint carries KV scales) or ``fp8`` (half the bytes per token)
    kv_cache_dtype: Literal["auto", "bf16", "fp8"] = "auto"
    #: the fp8 GEMM kernel (``dtype = "fp8"`` only): ``block`` (128x128 block-scaled, the
    #: published FP8 checkpoints of Qwen3 / GLM / Qwen3-Coder), ``tensor`` (per-tensor
    #: scaled: ``--quantization fp8`` on a bf16 checkpoint), ``auto`` (block for MoE models,
    #: tensor for dense ones)
    fp8_gemm: Literal["auto", "block", "tensor"] = "auto"
    max_num_batched_tokens: PositiveInt = 8192
    max_num_seqs: PositiveInt = 1024
    max_model_len: PositiveInt = 131072
    block_size: PositiveInt = 16
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    enable_prefix_caching: bool = True
    #: vLLM 0.19's ``scheduler_reserve_full_isl``: admit a waiting request only if free
    #: KV blocks cover its whole prompt (false: its first chunk, as vLLM 0.12 does)
    scheduler_reserve_full_isl: bool = True
    stepping: Stepping = "event"
    #: KV-cache capacity override in tokens (default: derived from GPU memory).
    kv_capacity_tokens: PositiveInt | None = None
    #: A profile JSON file instead of the embedded default for (gpu, dtype).
    profile: str | None = None
    #: Fixed cost per request before it joins the queue (HTTP, tokenization); None:
    #: the latency model's own (a measured profile's fitted value, else 0).
    request_overhead_s: NonNegativeFloat | None = None
    #: vLLM's native CPU KV offloading (``--kv-offloading-backend native
    #: --kv-offloading-size GiB``): host memory for an LRU tier of KV blocks, in GiB over
    #: all of the engine's GPUs; None: off.
    kv_offloading_size: PositiveFloat | None = None
    #: Host<->GPU copy bandwidth per GPU and direction, GB/s. Default 50: NVIDIA's
    #: H100/H200 SXM datasheets give PCIe Gen5 x16 as 128 GB/s (64 GB/s each way); a
    #: pinned-memory copy reaches about 80% of that (an assumption; set your measurement).
    kv_offloading_bandwidth_GBps: PositiveFloat = 50.0
    #: Fixed cost of each block's copy (vLLM issues one cudaMemcpyAsync per block); 0 by
    #: default (not measured here).
    kv_offloading_copy_overhead_s: NonNegativeFloat = 0.0
    #: Engines of one scenario with the same ``gpu_group`` run on the same GPUs (a memory
    #: model co-located with the agent): each takes its own ``gpu_memory_utilization``
    #: of every GPU (together at most 1), and their iterations take turns on the GPUs.
    gpu_group: str | None = None
    #: Data-parallel replicas (vLLM ``--data-parallel-size``), each on its own ``tp`` GPUs
    #: with its own scheduler and KV cache, behind a router.
    data_parallel_size: PositiveInt = 1
    #: ``vllm``: the replica with the lowest 4 x waiting + running (vLLM's DP client);
    #: ``round-robin``; ``prefix-aware``: the longest cached prefix, then vLLM's score.
    data_parallel_router: Literal["vllm", "round-robin", "prefix-aware"] = "vllm"
    #: Keep the per-iteration (per fast step) time series.
    record_iterations: bool = True


M = TypeVar("M", bound=BaseModel)


def validate(
    model: type[M], data: Any, where: str = "", union_tags: frozenset[str] = frozenset()
) -> M:
    """Validate ``data`` into ``model``; the first error as one line naming the field.

    ``union_tags``: tags of discriminated unions, left out of the field path (pydantic
    puts the chosen member's tag there: ``workload.synthetic.agents``).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p not in union_tags)
        field = f"{where}.{loc}" if where and loc else (where or loc)
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        extra = f" and {len(exc.errors()) - 1} more" if len(exc.errors()) > 1 else ""
        raise ComemInputError(f"{field}: {err['msg']}{shown}{extra}") from None


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's table; one clear line if it is missing or not TOML (``what``: the
    kind of file, for the message)."""
    p = Path(path)
    if not p.is_file():
        raise ComemInputError(f"{p}: {what} file does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ComemInputError(f"{p}: not valid TOML ({exc})") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, lists), else a string."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (a copy); validation comes after."""
    import copy

    out = copy.deepcopy(data)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ComemInputError(f"--set {item!r}: expected KEY=VALUE, e.g. engine.tp=4")
        parts = key.strip().split(".")
        node: Any = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):  # architectures.1.k=8
                if not part.isdigit() or int(part) >= len(node):
                    raise ComemInputError(
                        f"--set {item!r}: '{part}' is not an index of a {len(node)}-item list"
                    )
                if last:
                    node[int(part)] = parse_value(raw)
                else:
                    node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ComemInputError(f"--set {item!r}: '{parts[depth - 1]}' is a value")
            if last:
                node[part] = parse_value(raw)
            else:
                node = node.setdefault(part, {})
    return out
