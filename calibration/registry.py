"""Models, GPUs and dtypes the project knows, with sizes derived from their architectures.

Models are Hugging Face ``config.json`` files (the registry's own under ``model_configs/``,
architecture fields only, each naming its source; a user's by path or from the local Hugging
Face cache). GPUs are vendor datasheets. Both as collected in ``shared/data/models.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError, UnknownNameError
from calibration.hf_config import architecture_from_config, read_config_file

GIB = 2**30

#: Supported weight dtypes (the KV cache has its own, see :data:`KV_CACHE_DTYPES`).
DTYPES = ("bf16", "fp8")
#: vLLM's ``--kv-cache-dtype`` choices the project prices. ``auto`` is vLLM's default: the
#: model's activation dtype, bf16 here also for fp8 weights (a checkpoint that carries
#: KV-cache scales would switch vLLM to fp8: say ``fp8`` then).
KV_CACHE_DTYPES = ("auto", "bf16", "fp8")
_DTYPE_BYTES = {"bf16": 2, "fp8": 1}
_DTYPE_ALIASES = {"bfloat16": "bf16"}

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


def check_kv_cache_dtype(name: str) -> str:
    """``bf16`` or ``fp8`` for a ``--kv-cache-dtype`` value (``auto`` is bf16, see
    :data:`KV_CACHE_DTYPES`; ``bfloat16``, ``fp8_e4m3`` are accepted)."""
    key = _norm(str(name))
    key = {"bfloat16": "bf16", "fp8_e4m3": "fp8", "auto": "bf16"}.get(key, key)
    if key not in ("bf16", "fp8"):
        raise UnknownNameError(
            f"unknown kv_cache_dtype '{name}'; known: {', '.join(KV_CACHE_DTYPES)}"
        )
    return key


def check_dtype(name: str) -> str:
    """Return the canonical dtype name (``"bf16"`` or ``"fp8"``); ``"bfloat16"`` is accepted."""
    key = _norm(str(name))
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise UnknownNameError(f"unknown dtype '{name}'; known: {', '.join(DTYPES)}")
    return key


def _divisors(n: int, limit: int = 16) -> str:
    return ", ".join(str(d) for d in range(1, min(n, limit) + 1) if n % d == 0)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one transformer LLM (grouped-query attention, gated MLP / MoE).

    ``intermediate`` is the dense FFN width (0 if the model has no dense layer). MoE layers
    have ``experts`` routed experts (``top_k`` active per token) and ``shared_experts``
    always-active experts, all of width ``moe_intermediate``. ``dense_layers`` is the number
    of dense layers (which ones does not change the cost); left at -1 it means all layers for
    a dense model, 0 for MoE. ``sliding_window``: the attention window of every layer (None:
    full attention).
    """

    hf_id: str
    alias: str
    layers: int
    hidden: int
    intermediate: int
    q_heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 128
    tied_embeddings: bool = False
    sliding_window: int | None = None
    experts: int = 0
    top_k: int = 0
    moe_intermediate: int = 0
    shared_experts: int = 0
    dense_layers: int = -1

    def __post_init__(self) -> None:
        if self.dense_layers == -1:
            object.__setattr__(self, "dense_layers", 0 if self.experts else self.layers)
        for name in ("layers", "hidden", "q_heads", "kv_heads", "vocab", "head_dim"):
            if getattr(self, name) < 1:
                raise ComemInputError(f"model {self.alias}: {name} must be >= 1")
        for name in ("intermediate", "experts", "top_k", "moe_intermediate", "shared_experts"):
            if getattr(self, name) < 0:
                raise ComemInputError(f"model {self.alias}: {name} must be >= 0")
        if not 0 <= self.dense_layers <= self.layers:
            raise ComemInputError(
                f"model {self.alias}: dense_layers must be in [0, {self.layers}],"
                f" got {self.dense_layers}"
            )
        if self.dense_layers and not self.intermediate:
            raise ComemInputError(f"model {self.alias}: dense layers need intermediate > 0")
        if self.experts:
            if not (1 <= self.top_k <= self.experts and self.moe_intermediate > 0):
                raise ComemInputError(
                    f"model {self.alias}: MoE needs 1 <= top_k <= experts and moe_intermediate > 0"
                )
        elif self.dense_layers != self.layers:
            raise ComemInputError(f"model {self.alias}: a dense model has dense_layers == layers")
        if self.q_heads % self.kv_heads:
            raise ComemInputError(
                f"model {self.alias}: q_heads ({self.q_heads}) must be a multiple of"
                f" kv_heads ({self.kv_heads})"
            )

    @property
    def is_moe(self) -> bool:
        """True if the model has mixture-of-experts layers."""
        return self.experts > 0

    @property
    def moe_layers(self) -> int:
        """Number of MoE layers (the layers after the leading dense ones)."""
        return self.layers - self.dense_layers if self.is_moe else 0

    def _embedding_params(self) -> int:
        """Input embedding plus LM head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def param_count(self) -> int:
        """Parameter count from the architecture (norms and biases ignored, no MTP layers)."""
        h, hd = self.hidden, self.head_dim
        attention = h * (self.q_heads + 2 * self.kv_heads) * hd + self.q_heads * hd * h
        dense_mlp = 3 * h * self.intermediate
        moe = (
            (self.experts + self.shared_experts) * 3 * h * self.moe_intermediate
            + h * self.experts  # router
        )
        return (
            self._embedding_params()
            + self.layers * attention
            + self.dense_layers * dense_mlp
            + self.moe_layers * moe
        )

    def weight_bytes(self, dtype: str) -> int:
        """Bytes of all weights in ``dtype``; embedding and LM head stay bf16 in fp8."""
        dt = check_dtype(dtype)
        emb = self._embedding_params()
        return 2 * emb + _DTYPE_BYTES[dt] * (self.param_count() - emb)

    def kv_bytes_per_token(self, kv_dtype_bytes: int = 2) -> int:
        """KV-cache bytes per token over the whole model (all layers, all KV heads, K and V)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_dtype_bytes

    def check_tp(self, tp: int, expert_parallel: bool = False) -> None:
        """Raise :class:`ComemInputError` unless tensor parallelism ``tp`` can shard the model.

        ``tp`` must divide the query heads and the (MoE) intermediate sizes; KV heads must be
        divisible by ``tp`` or, as vLLM replicates them when ``tp > kv_heads``, divide it.
        Under ``expert_parallel`` the routed experts are not sliced (whole experts per rank,
        any count: vLLM gives the remainder to the first ranks), so only the shared
        experts' width must divide.
        """
        if tp < 1:
            raise ComemInputError(f"tp must be >= 1, got {tp}")
        name = self.alias
        if self.q_heads % tp:
            raise ComemInputError(
                f"tp={tp} does not divide the {self.q_heads} query heads of {name};"
                f" valid tp up to 16: {_divisors(self.q_heads)}"
            )
        if self.kv_heads % tp and tp % self.kv_heads:
            raise ComemInputError(
                f"tp={tp} cannot shard the {self.kv_heads} KV heads of {name}: tp must divide"
                f" them or be a multiple of them"
            )
        if self.intermediate % tp:
            raise ComemInputError(
                f"tp={tp} does not divide the FFN intermediate size {self.intermediate} of {name}"
            )
        sliced = self.shared_experts if expert_parallel else 1
        if sliced and self.moe_intermediate % tp:
            raise ComemInputError(
                f"tp={tp} does not divide the expert intermediate size {self.moe_intermediate}"
                f" of {name}"
            )


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

#: Checkpoint suffixes that do not change the architecture: an FP8 checkpoint or an
#: instruction-tuned model is priced as its base (the weight dtype is its own argument).
_VARIANT_SUFFIXES = ("-fp8", "-instruct")


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
            if stripped in _MODEL_INDEX:
                return _MODEL_INDEX[stripped]
    raise UnknownNameError(
        f"unknown model '{name}'; known: {', '.join(MODELS)}; or the path of a Hugging Face"
        " config.json"
    )


def checkpoint_dtype(name: str) -> str:
    """The weight dtype vLLM loads ``name`` in when no dtype is given: ``fp8`` or ``bf16``.

    vLLM reads the quantization from the checkpoint itself (``--dtype`` sets only the
    activations), so an FP8 checkpoint runs its GEMMs in fp8. A checkpoint is fp8 when its
    ``config.json`` (a path, or the local Hugging Face cache) has a ``quantization_config``
    whose ``quant_method`` is ``fp8``, or, with no config at hand, when its repo name has an
    ``FP8`` part (``Qwen/Qwen3-32B-FP8``, ``...-Instruct-FP8-Dynamic``).
    """
    raw = str(name).strip()
    config: Path | None = None
    if _names_a_config(raw):
        p = Path(raw)
        config = p / "config.json" if p.is_dir() else p
    elif _norm(raw) not in _MODEL_INDEX:
        config = _hf_cache_config(raw)
    if config is not None and config.is_file():
        quant = read_config_file(config).get("quantization_config")
        if isinstance(quant, dict):
            method = str(quant.get("quant_method", "")).lower()
            return "fp8" if method == "fp8" else "bf16"
        return "bf16"
    parts = raw.rsplit("/", 1)[-1].lower().replace("_", "-").split("-")
    return "fp8" if "fp8" in parts else "bf16"


@dataclass(frozen=True)
class GpuSpec:
    """One GPU: memory, HBM bandwidth, dense peak FLOP/s per dtype, NVLink bandwidth."""

    name: str
    memory_gib: float
    hbm_bandwidth_Bps: float
    peak_flops: dict[str, float] = field(hash=False)
    nvlink_Bps: float
    sm_count: int

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

_GPU_EXTRA_NAMES = {"h100": "h100_sxm", "h200": "h200_sxm"}


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
) -> int:
    """Free KV-cache bytes per GPU after weights (sharded over ``tp``) and the reserve.

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
