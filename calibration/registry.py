"""Models and GPUs the project knows, and whether a model fits a GPU's memory.

Models are Hugging Face ``config.json`` files (the registry's own under ``model_configs/``,
architecture fields only, each naming its source; a user's by path or from the local Hugging
Face cache). GPUs are vendor datasheets. Both as collected in ``shared/data/models.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.dtypes import DTYPE_BYTES, DTYPES, check_dtype
from calibration.errors import ComemInputError, UnknownNameError
from calibration.hf_config import (
    architecture_from_config,
    check_quantization_fields,
    read_config_file,
)
from calibration.model_spec import ModelSpec

GIB = 2**30

#: GPU memory held back for activations / CUDA graphs / workspace, per GPU, when only
#: asking whether a model fits (:func:`fits_in_memory`); the KV-cache size uses
#: :func:`profile_run_bytes` instead.
ACTIVATION_RESERVE_BYTES = 1 * GIB

#: Bytes the sampler's dummy run holds per (row, vocabulary entry) at its peak: fp32
#: logits, the sorted values (fp32) and their int64 indices of top-k/top-p, and fp32
#: probabilities (vLLM V1 ``Sampler`` on the profiling run's dummy top-k/top-p metadata).
SAMPLER_BYTES_PER_LOGIT = 20
#: GPU memory outside torch's allocator that grows while vLLM profiles (NCCL and
#: custom all-reduce buffers, cuBLAS workspaces): an estimate, 0.5 GiB.
NON_TORCH_BYTES = GIB // 2


def _norm(name: str) -> str:
    return name.strip().lower()


#: The registry's models: one Hugging Face ``config.json`` (architecture fields only) per
#: model, with its name, other accepted names and source under the ``_comem`` key.
MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")

#: Key of the registry's own metadata inside a committed config (transformers ignores it).
_META_KEY = "_comem"


def spec_from_config(config: dict[str, Any], hf_id: str, alias: str, where: str = "") -> ModelSpec:
    """A :class:`ModelSpec` from a parsed Hugging Face config (see :mod:`calibration.hf_config`)."""
    fields = architecture_from_config(config, where)
    try:
        return ModelSpec(hf_id=hf_id, alias=alias, **fields)
    except ComemInputError as exc:
        raise ComemInputError(f"{where}: {exc}" if where else str(exc)) from None


def load_model_config(path: str | Path) -> ModelSpec:
    """The model of a ``config.json`` file (or of a directory holding one).

    Its name is the registry's when the file carries the ``_comem`` metadata; else the
    ``_name_or_path`` transformers writes, else the path; the alias is the directory's name
    for a ``config.json``, the file's stem otherwise.
    """
    p = Path(path)
    data = read_config_file(p)
    if p.is_dir():
        p = p / "config.json"
    meta = data.get(_META_KEY)
    if isinstance(meta, dict) and isinstance(meta.get("alias"), str):
        alias, hf_id = meta["alias"], str(meta.get("hf_id", meta["alias"]))
    else:
        name = p.parent.name if p.name == "config.json" and p.parent.name else p.stem
        alias = name.lower()
        named = data.get("_name_or_path")
        hf_id = named if isinstance(named, str) and named else str(p)
    return spec_from_config(data, hf_id, alias, str(p))


@dataclass(frozen=True)
class RegistryEntry:
    """A registry model with the names it answers to and where its architecture comes from."""

    spec: ModelSpec
    source: str
    also: tuple[str, ...]


def _registry() -> dict[str, RegistryEntry]:
    entries: dict[str, RegistryEntry] = {}
    for path in sorted(MODEL_CONFIG_DIR.glob("*.json")):
        spec = load_model_config(path)
        meta = read_config_file(path)[_META_KEY]
        entries[spec.alias] = RegistryEntry(spec, str(meta["source"]), tuple(meta.get("also", ())))
    return entries


#: Registry entries (spec, source, other names), keyed by alias.
REGISTRY: dict[str, RegistryEntry] = _registry()

#: Known models, keyed by alias.
MODELS: dict[str, ModelSpec] = {alias: e.spec for alias, e in REGISTRY.items()}


def _model_index() -> dict[str, ModelSpec]:
    index: dict[str, ModelSpec] = {}
    for entry in REGISTRY.values():
        spec = entry.spec
        index[spec.alias.lower()] = spec
        for name in (spec.hf_id, *entry.also):
            index[name.lower()] = spec
            index.setdefault(name.split("/", 1)[-1].lower(), spec)  # repo name without org
    return index


_MODEL_INDEX = _model_index()

#: Checkpoint suffixes that do not change the architecture: an FP8 / NVFP4 checkpoint or an
#: instruction-tuned model is priced as its base (the weight dtype is its own argument).
_VARIANT_SUFFIXES = ("-fp8-dynamic", "-fp8", "-nvfp4", "-fp4", "-instruct")


def _hf_cache_config(hf_id: str) -> Path | None:
    """``config.json`` of ``hf_id`` in the local Hugging Face hub cache, if it was downloaded.

    The cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``;
    the snapshot named by ``refs/main`` is preferred. Nothing is fetched from the network.
    """
    if hf_id.count("/") != 1 or any(part in ("", ".", "..") for part in hf_id.split("/")):
        return None
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface"), "hub"
    )
    repo = Path(hub) / ("models--" + hf_id.replace("/", "--"))
    if not repo.is_dir():
        # the hub cache keeps the id's case; match it case-insensitively
        want = repo.name.lower()
        found = [d for d in repo.parent.glob("models--*") if d.name.lower() == want]
        if not found:
            return None
        repo = found[0]
    ref = repo / "refs" / "main"
    commit = _read_ref(ref) if ref.is_file() else None
    if commit is not None:
        candidate = repo / "snapshots" / commit / "config.json"
        if candidate.is_file():
            return candidate
    configs = sorted(repo.glob("snapshots/*/config.json"), key=lambda p: p.stat().st_mtime)
    return configs[-1] if configs else None


def _read_ref(ref: Path) -> str | None:
    """The snapshot a ``refs/main`` names, or None when it names none (not UTF-8, not one
    plain name, unreadable): a damaged cache file, so the newest snapshot is used."""
    try:
        with ref.open("rb") as fh:
            raw = fh.read(257)
        text = raw.decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text or len(text) > 256 or not text.isalnum():
        return None
    return text


def _names_a_config(raw: str) -> bool:
    """``raw`` is a path to a ``config.json`` (or a directory holding one), not a name."""
    return bool(raw) and (raw.endswith(".json") or os.path.isdir(raw) or os.path.isfile(raw))


def get_model(name: str) -> ModelSpec:
    """Look a model up: alias, Hugging Face id (case-insensitive) or ``config.json`` path.

    In order: the registry's names; a path to a ``config.json`` (or to a directory holding
    one); the id's ``config.json`` in the local Hugging Face cache; the registry's names
    again without an ``-FP8`` / ``-Instruct`` suffix.
    """
    raw = str(name).strip()
    key = _norm(raw)
    spec = _MODEL_INDEX.get(key)
    if spec is not None:
        return spec
    if _names_a_config(raw):
        return load_model_config(raw)
    cached = _hf_cache_config(raw)
    if cached is not None:
        fields_of = read_config_file(cached)
        return spec_from_config(fields_of, raw, raw.split("/", 1)[1].lower(), str(cached))
    stripped = key
    for suffix in _VARIANT_SUFFIXES:
        if stripped.endswith(suffix):
            stripped = stripped[: -len(suffix)]
            # a quantized re-upload under another org (nvidia/DeepSeek-R1-FP4): its repo name
            for candidate in (stripped, stripped.split("/", 1)[-1]):
                if candidate in _MODEL_INDEX:
                    return _MODEL_INDEX[candidate]
    raise UnknownNameError(
        f"unknown model '{name}'; known: {', '.join(MODELS)}; or the path of a Hugging Face"
        " config.json"
    )


#: quantization methods vLLM serves as 4-bit integer weights with 16-bit activations (AWQ
#: and GPTQ run Marlin kernels on Hopper), priced as ``int4``
_INT4_METHODS = ("awq", "awq_marlin", "gptq", "gptq_marlin")
#: fp8 methods besides ``fp8`` itself (FBGEMM's and per-token-per-channel fp8 checkpoints)
_FP8_METHODS = ("fp8", "fbgemm_fp8", "ptpc_fp8")


def quantization_dtype(config: dict[str, Any], quant_file: Path | None = None) -> str:
    """The weight dtype vLLM loads a checkpoint in, from its ``quantization_config`` (or a
    ModelOpt ``hf_quant_config.json`` beside it): ``fp8`` (quant_method fp8, ModelOpt FP8,
    compressed-tensors float8), ``fp4`` (NVFP4: ModelOpt or compressed-tensors 4-bit
    floats), ``mxfp4`` (gpt-oss), ``int4`` (4-bit integer weights without quantized
    activations: compressed-tensors as Kimi-K2.5, AWQ, GPTQ), ``bf16`` without one.

    A method or bit width no kernel table here prices (bitsandbytes, 8-bit integers, ...)
    is refused in one line: pricing it as bf16 would read twice to four times the bytes;
    so is a ``quantization_config`` that is no JSON object (:func:`check_quantization_fields`)."""
    check_quantization_fields(config)
    text = config.get("text_config")
    quant = config.get("quantization_config")
    if quant is None and isinstance(text, dict):
        quant = text.get("quantization_config")
    if not isinstance(quant, dict) and quant_file is not None and quant_file.is_file():
        outer = read_config_file(quant_file).get("quantization")
        quant = {"quant_method": "modelopt", **outer} if isinstance(outer, dict) else None
    if not isinstance(quant, dict):
        return "bf16"
    method = str(quant.get("quant_method", "")).lower()
    algo = str(quant.get("quant_algo", "")).upper()
    if method in _FP8_METHODS or (method == "modelopt" and algo == "FP8"):
        return "fp8"
    if method in ("modelopt", "modelopt_fp4") and algo == "NVFP4":
        return "fp4"
    if method == "mxfp4":
        return "mxfp4"
    found = None
    if method in _INT4_METHODS:
        bits = quant.get("bits", quant.get("w_bit", 4))
        found = "int4" if bits == 4 else None
    elif method == "compressed-tensors":
        found = _compressed_tensors_dtype(quant)
    if found is None:
        shown = method or "(none)"
        raise ComemInputError(
            f"quantization_config: method {shown!r}"
            + (f" ({algo})" if algo else "")
            + " is not priced (fp8, NVFP4, MXFP4 and 4-bit integer weights are);"
            " give the weight dtype with --dtype"
        )
    return found


def _compressed_tensors_dtype(quant: dict[str, Any]) -> str | None:
    """A compressed-tensors checkpoint's weight dtype from its first quantized group:
    8-bit floats ``fp8``; 4-bit floats ``fp4`` (NVFP4); 4-bit integers without quantized
    activations ``int4``; anything else None (not priced)."""
    groups = quant.get("config_groups") or {}
    for group in groups.values() if isinstance(groups, dict) else ():
        if not isinstance(group, dict):
            continue
        weights = group.get("weights") or {}
        bits, kind = weights.get("num_bits"), weights.get("type")
        if bits == 8 and kind == "float":
            return "fp8"
        if bits == 4 and kind == "float":
            return "fp4"
        if bits == 4 and kind == "int" and not group.get("input_activations"):
            return "int4"
        return None
    return None


def checkpoint_dtype(name: str) -> str:
    """The weight dtype (:data:`calibration.dtypes.DTYPES`) vLLM loads ``name`` in by default.

    vLLM reads the quantization from the checkpoint itself (``--dtype`` sets only the
    activations), so an FP8 checkpoint runs its GEMMs in fp8 (:func:`quantization_dtype`).
    The config is the registry's own (which keeps each checkpoint's
    ``quantization_config``), a path, or the local Hugging Face cache; with none at hand a
    repo name with an ``FP8`` / ``NVFP4`` part (``Qwen/Qwen3-32B-FP8``,
    ``...-Instruct-FP8-Dynamic``, ``nvidia/DeepSeek-R1-NVFP4``) says fp8 / fp4.
    """
    raw = str(name).strip()
    config: Path | None = None
    if _names_a_config(raw):
        p = Path(raw)
        config = p / "config.json" if p.is_dir() else p
    elif _norm(raw) in _MODEL_INDEX:
        alias = _MODEL_INDEX[_norm(raw)].alias
        registry = MODEL_CONFIG_DIR / f"{alias}.json"
        if registry.is_file() and not _names_fp8_or_fp4(raw):
            return quantization_dtype(read_config_file(registry))
    else:
        config = _hf_cache_config(raw)
    if config is not None and config.is_file():
        try:
            return quantization_dtype(
                read_config_file(config), config.with_name("hf_quant_config.json")
            )
        except ComemInputError as exc:
            text = str(exc)
            raise ComemInputError(
                text if text.startswith(str(config)) else f"{config}: {text}"
            ) from None
    return _names_fp8_or_fp4(raw) or "bf16"


def _names_fp8_or_fp4(raw: str) -> str | None:
    """``fp8`` / ``fp4`` when the repo name has an ``FP8`` / ``NVFP4`` / ``FP4`` part."""
    parts = raw.rsplit("/", 1)[-1].lower().replace("_", "-").split("-")
    if "fp8" in parts:
        return "fp8"
    if "nvfp4" in parts or "fp4" in parts:
        return "fp4"
    return None


@dataclass(frozen=True)
class GpuSpec:
    """One GPU: memory, HBM bandwidth, dense peak FLOP/s per dtype, NVLink bandwidth."""

    name: str
    memory_gib: float
    hbm_bandwidth_Bps: float
    peak_flops: dict[str, float] = field(hash=False)
    nvlink_Bps: float
    sm_count: int
    #: how ``memory_gib`` was obtained: None when measured (what vLLM sizes from), else
    #: the assumption made (printed by ``comem list gpus`` and with every KV capacity)
    memory_assumption: str | None = None

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes (``memory_gib`` GiB)."""
        return self.memory_gib * GIB


#: Known GPUs. Vendor datasheets (SXM parts, dense, no sparsity), via shared/data/models.md;
#: sm_count from NVIDIA's H100 Tensor Core GPU Architecture whitepaper (H200 = same GH100 die).
#: NVLink is the total (bidirectional) bandwidth per GPU. ``memory_gib`` is what vLLM sizes
#: the KV cache from, the total that ``torch.cuda.mem_get_info()`` reports, measured on the
#: lent machines (2026-11-27): H100 SXM 85,017,493,504 B = 79.18 GiB (the datasheet's
#: "80 GB"); H200 SXM 139.8 GiB (benchmarks/device/results/h200_sxm/tables/device.json; the
#: datasheet's "141 GB").
GPUS: dict[str, GpuSpec] = {
    "h100_sxm": GpuSpec(
        name="h100_sxm",
        memory_gib=85_017_493_504 / 2**30,
        hbm_bandwidth_Bps=3.35e12,
        peak_flops={"bf16": 989e12, "fp8": 1979e12},
        nvlink_Bps=900e9,
        sm_count=132,
    ),
    "h200_sxm": GpuSpec(
        name="h200_sxm",
        memory_gib=139.8,
        hbm_bandwidth_Bps=4.8e12,
        peak_flops={"bf16": 989e12, "fp8": 1979e12},
        nvlink_Bps=900e9,
        sm_count=132,
    ),
}

#: torch's total over the datasheet capacity, measured on H100 SXM (79.18 GiB of "80 GiB"):
#: the share the driver keeps. Applied to GPUs whose capacity is a datasheet figure.
MEASURED_TOTAL_SHARE = (85_017_493_504 / 2**30) / 80.0


def _unmeasured(name: str, capacity_bytes: float, datasheet: bool, **rest: Any) -> GpuSpec:
    """A GPU whose usable memory is not measured: from aiconfigurator's ``mem_capacity``
    (``shared/data/gpus/<name>.yaml``); a datasheet figure is scaled by
    :data:`MEASURED_TOTAL_SHARE`, an ``nvidia-smi`` figure (the driver's total, which torch
    reports too) is kept."""
    gib = capacity_bytes / GIB
    if datasheet:
        note = (
            f"assumed, not measured: datasheet {gib:.1f} GiB x {MEASURED_TOTAL_SHARE:.4f}"
            " (torch's share of the datasheet figure measured on H100 SXM)"
        )
        gib *= MEASURED_TOTAL_SHARE
    else:
        note = f"assumed, not measured: the nvidia-smi total {gib:.1f} GiB (aiconfigurator)"
    return GpuSpec(name=name, memory_gib=gib, memory_assumption=note, **rest)


# Datasheet figures as aiconfigurator@095f58a5 collects them (shared/data/gpus/*.yaml: dense
# peaks, HBM bandwidth, one-direction link x 2 for the bidirectional NVLink figure used
# above). SM counts: NVIDIA's A100 whitepaper (108), L40S datasheet (142), Blackwell
# technical brief (B200 / GB200: 148 of the die's 160), Blackwell Ultra blog (B300: 160).
# The SM count only scales the context-attention tile cost, which is fitted per GPU.
GPUS.update(
    {
        "b200_sxm": _unmeasured(
            "b200_sxm", 193_273_528_320, True, hbm_bandwidth_Bps=7.7e12,
            peak_flops={"bf16": 2250e12, "fp8": 4500e12, "fp4": 9000e12},
            nvlink_Bps=1800e9, sm_count=148,
        ),
        "b300_sxm": _unmeasured(
            "b300_sxm", 288_400_343_040, False, hbm_bandwidth_Bps=7.75e12,
            peak_flops={"bf16": 2250e12, "fp8": 4500e12, "fp4": 14000e12},
            nvlink_Bps=1800e9, sm_count=160,
        ),
        "gb200": _unmeasured(
            "gb200", 198_674_743_296, False, hbm_bandwidth_Bps=8.0e12,
            peak_flops={"bf16": 2500e12, "fp8": 5000e12, "fp4": 10000e12},
            nvlink_Bps=1800e9, sm_count=148,
        ),
        "a100_sxm": _unmeasured(
            "a100_sxm", 85_899_345_920, True, hbm_bandwidth_Bps=2.039e12,
            peak_flops={"bf16": 312e12}, nvlink_Bps=600e9, sm_count=108,
        ),
        "l40s": _unmeasured(
            "l40s", 48_305_799_168, False, hbm_bandwidth_Bps=0.864e12,
            peak_flops={"bf16": 362.05e12, "fp8": 733e12}, nvlink_Bps=0.0, sm_count=142,
        ),
    }
)  # fmt: skip


_GPU_EXTRA_NAMES = {
    "h100": "h100_sxm",
    "h200": "h200_sxm",
    "b200": "b200_sxm",
    "b300": "b300_sxm",
    "a100": "a100_sxm",
    "a100_80gb": "a100_sxm",
    "gb200_nvl72": "gb200",
}


def load_gpu_file(path: str | Path) -> GpuSpec:
    """A GPU described by a JSON file (the ``device.json`` of ``comem calibrate microbench``):
    ``name``, ``memory_gib``, ``hbm_bandwidth_Bps``, ``peak_flops`` (per dtype), ``sm_count``
    and optionally ``nvlink_Bps``; one clear line for anything missing or not positive."""
    p = Path(path)
    data = read_config_file(p)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ComemInputError(f"{p}: 'name' must be a non-empty string")

    def number(value: Any, high: float) -> bool:
        # finite and below ``high``: no device comes near these bounds
        return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= high

    numbers: dict[str, Any] = {}
    for key, high in (("memory_gib", 1e5), ("hbm_bandwidth_Bps", 1e15), ("sm_count", 1e6)):
        value: Any = data.get(key)
        if not number(value, high) or (key == "sm_count" and value != int(value)):
            kind = "a whole number" if key == "sm_count" else "a number"
            raise ComemInputError(f"{p}: '{key}' must be {kind} in (0, {high:g}], got {value!r}")
        numbers[key] = value
    peaks = data.get("peak_flops")
    if (
        not isinstance(peaks, dict)
        or "bf16" not in peaks
        or not all(k in DTYPES and number(v, 1e18) for k, v in peaks.items())
    ):
        raise ComemInputError(
            f"{p}: 'peak_flops' must map bf16 (and optionally fp8) to FLOP/s in (0, 1e18]"
        )
    nvlink = data.get("nvlink_Bps", 0.0)
    if nvlink != 0 and not number(nvlink, 1e15):
        raise ComemInputError(f"{p}: 'nvlink_Bps' must be a number in [0, 1e15], got {nvlink!r}")
    return GpuSpec(
        name=name,
        memory_gib=float(numbers["memory_gib"]),
        hbm_bandwidth_Bps=float(numbers["hbm_bandwidth_Bps"]),
        peak_flops={k: float(v) for k, v in peaks.items()},
        nvlink_Bps=float(nvlink),
        sm_count=int(numbers["sm_count"]),
    )


def get_gpu(name: str) -> GpuSpec:
    """Look a GPU up by name (case-insensitive; ``h100``, ``H100-SXM`` are accepted), or read
    the JSON file of a device of one's own (see :func:`load_gpu_file`)."""
    key = _norm(str(name)).replace("-", "_").replace(" ", "_")
    key = _GPU_EXTRA_NAMES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    if str(name).strip().endswith(".json") or os.path.isfile(str(name).strip()):
        return load_gpu_file(str(name).strip())
    raise UnknownNameError(f"unknown gpu '{name}'; known: {', '.join(GPUS)}")


def serve_batch_defaults(gpu: GpuSpec) -> tuple[int, int]:
    """``vllm serve``'s default (max_num_batched_tokens, max_num_seqs) on ``gpu``: 8192 /
    1024 on GPUs of 70 GiB or more except A100, else 2048 / 256 (VLLM_FACTS C,
    ``engine/arg_utils.py`` ``get_batch_defaults``)."""
    if gpu.memory_gib >= 70 and not gpu.name.startswith("a100"):
        return 8192, 1024
    return 2048, 256


def profile_run_bytes(
    model: ModelSpec, tp: int, max_num_batched_tokens: int = 8192, max_num_seqs: int = 1024
) -> int:
    """GPU memory vLLM's profiling run takes per GPU beyond the weights, which vLLM keeps
    out of the KV cache (``VLLM_FACTS.md`` section 2: ``avail = total x utilization -
    weights - peak torch growth of profile_run - non-torch growth``).

    The profiling run is a forward pass of ``max_num_batched_tokens`` tokens and a sampler
    run over ``min(max_num_seqs, max_num_batched_tokens)`` rows of the whole vocabulary.
    Its peak is estimated from the shapes: the forward's live bf16 activations (residual
    and normed hidden states, the widest projection output per GPU, the gated activation),
    plus :data:`SAMPLER_BYTES_PER_LOGIT` per sampled logit, plus :data:`NON_TORCH_BYTES`.
    CUDA graphs are captured after the KV cache is sized (vLLM 0.12 subtracts nothing for
    them): they live in the ``1 - gpu_memory_utilization`` headroom.
    """
    n = float(max_num_batched_tokens)
    h = float(model.hidden)
    qkv = (model.q_heads + 2 * model.kv_heads) * model.head_dim / tp
    ffn = max(model.intermediate, model.top_k * model.moe_intermediate) / tp
    forward = n * 2.0 * (2.0 * h + max(qkv, 2.0 * ffn) + ffn)
    rows = float(min(max_num_seqs, max_num_batched_tokens))
    sampler = rows * model.vocab * SAMPLER_BYTES_PER_LOGIT
    return int(forward + sampler + NON_TORCH_BYTES)


def fits_in_memory(
    model: ModelSpec,
    gpu: GpuSpec,
    tp: int,
    dtype: str,
    gpu_memory_utilization: float = 0.9,
    reserve_bytes: int | None = None,
    expert_ranks: int | None = None,
) -> int:
    """Free KV-cache bytes per GPU after weights (sharded over ``tp``) and the reserve.

    ``expert_ranks``: the routed experts are split over this many GPUs instead (expert
    parallelism across ``data_parallel_size`` x ``tp`` ranks).

    Usable memory is ``gpu_memory_utilization`` of the GPU; from it the weights / tp and a
    reserve are subtracted (``reserve_bytes``, default a flat 1 GiB: the KV cache's size
    uses :func:`profile_run_bytes`). Raises :class:`ComemInputError` if nothing is left.
    """
    dt = check_dtype(dtype)
    if tp < 1:
        raise ComemInputError(f"tp must be >= 1, got {tp}")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ComemInputError(
            f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
        )
    weights = model.weight_bytes(dt)
    per_gpu = weights / tp
    if expert_ranks is not None and model.is_moe:
        experts = model.routed_expert_params() * DTYPE_BYTES[dt]
        per_gpu = (weights - experts) / tp + experts / expert_ranks
    usable = gpu.memory_bytes * gpu_memory_utilization
    reserve = ACTIVATION_RESERVE_BYTES if reserve_bytes is None else reserve_bytes
    free = usable - per_gpu - reserve
    if free <= 0:
        hint = "use more GPUs or fp8" if dt == "bf16" else "use more GPUs"
        raise ComemInputError(
            f"model {model.alias} ({weights / 1e9:.0f} GB in {dt}) does not fit on"
            f" {tp} x {gpu.name}: {per_gpu / GIB:.1f} GiB of weights per GPU"
            f" + {reserve / GIB:.1f} GiB reserve"
            f" > {usable / GIB:.1f} GiB usable (gpu_memory_utilization={gpu_memory_utilization});"
            f" {hint}"
        )
    return int(free)
