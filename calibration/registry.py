"""Models, GPUs and dtypes the project knows, with sizes derived from their architectures.

Sources: each model's ``config.json`` on Hugging Face and the vendor datasheets, as collected
in ``shared/data/models.md``. Everything here is plain data plus arithmetic; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from calibration.errors import ComemInputError, UnknownNameError

GIB = 2**30

#: Supported weight dtypes (KV cache is always bf16 in this project).
DTYPES = ("bf16", "fp8")
_DTYPE_BYTES = {"bf16": 2, "fp8": 1}
_DTYPE_ALIASES = {"bfloat16": "bf16"}

#: GPU memory held back for activations / CUDA graphs / workspace, per GPU.
ACTIVATION_RESERVE_BYTES = 1 * GIB


def _norm(name: str) -> str:
    return name.strip().lower()


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
    of leading dense layers; left at -1 it means all layers for a dense model, 0 for MoE.
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

    def check_tp(self, tp: int) -> None:
        """Raise :class:`ComemInputError` unless tensor parallelism ``tp`` can shard the model.

        ``tp`` must divide the query heads and the (MoE) intermediate sizes; KV heads must be
        divisible by ``tp`` or, as vLLM replicates them when ``tp > kv_heads``, divide it.
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
        if self.moe_intermediate % tp:
            raise ComemInputError(
                f"tp={tp} does not divide the expert intermediate size {self.moe_intermediate}"
                f" of {name}"
            )


def _models() -> dict[str, ModelSpec]:
    specs = [
        # config.json on Hugging Face, via shared/data/models.md (MHA: kv_heads == q_heads)
        ModelSpec("meta-llama/Llama-2-7b-hf", "llama-2-7b", 32, 4096, 11008, 32, 32, 32000),
        # config.json on Hugging Face, via shared/data/models.md
        ModelSpec("meta-llama/Llama-2-70b-hf", "llama-2-70b", 80, 8192, 28672, 64, 8, 32000),
        # config.json on Hugging Face, via shared/data/models.md
        ModelSpec("meta-llama/Meta-Llama-3-8B", "llama-3-8b", 32, 4096, 14336, 32, 8, 128256),
        # config.json on Hugging Face, via shared/data/models.md
        ModelSpec("meta-llama/Meta-Llama-3-70B", "llama-3-70b", 80, 8192, 28672, 64, 8, 128256),
        # config.json on Hugging Face, via shared/data/models.md (sliding window 4096)
        ModelSpec(
            "mistralai/Mistral-7B-v0.1",
            "mistral-7b",
            32,
            4096,
            14336,
            32,
            8,
            32000,
            sliding_window=4096,
        ),
        # config.json on Hugging Face, via shared/data/models.md
        ModelSpec("Qwen/Qwen2-7B", "qwen2-7b", 28, 3584, 18944, 28, 4, 152064),
        # config.json on Hugging Face, via shared/data/models.md
        ModelSpec("Qwen/Qwen2-72B", "qwen2-72b", 80, 8192, 29568, 64, 8, 152064),
        # config.json on Hugging Face, via shared/data/models.md (tied embeddings)
        ModelSpec("Qwen/Qwen3-4B", "qwen3-4b", 36, 2560, 9728, 32, 8, 151936, tied_embeddings=True),
        # config.json on Hugging Face, via shared/data/models.md
        ModelSpec("Qwen/Qwen3-32B", "qwen3-32b", 64, 5120, 25600, 64, 8, 151936),
        # config.json on Hugging Face, via shared/data/models.md (fine-tune of Qwen3-32B)
        ModelSpec("agentica-org/DeepSWE-Preview", "deepswe", 64, 5120, 25600, 64, 8, 151936),
        # config.json on Hugging Face, via shared/data/models.md (all 62 layers MoE)
        ModelSpec(
            "Qwen/Qwen3-Coder-480B-A35B-Instruct",
            "qwen3-coder-480b",
            62,
            6144,
            0,
            96,
            8,
            151936,
            experts=160,
            top_k=8,
            moe_intermediate=2560,
            shared_experts=0,
            dense_layers=0,
        ),
        # config.json on Hugging Face, via shared/data/models.md (GLM-4.5 355B-A32B
        # architecture; first 3 layers dense, layers 4-92 MoE; MTP layer not counted)
        ModelSpec(
            "zai-org/GLM-4.7",
            "glm-4.7",
            92,
            5120,
            12288,
            96,
            8,
            151552,
            experts=160,
            top_k=8,
            moe_intermediate=1536,
            shared_experts=1,
            dense_layers=3,
        ),
    ]
    return {s.alias: s for s in specs}


#: Known models, keyed by alias.
MODELS: dict[str, ModelSpec] = _models()

#: Extra accepted names (lower case) -> alias.
_MODEL_EXTRA_NAMES = {
    "qwen/qwen3-4b-instruct-2507": "qwen3-4b",
    "qwen3-4b-instruct-2507": "qwen3-4b",
}


def _model_index() -> dict[str, ModelSpec]:
    index: dict[str, ModelSpec] = {}
    for spec in MODELS.values():
        index[spec.alias.lower()] = spec
        index[spec.hf_id.lower()] = spec
        index.setdefault(spec.hf_id.split("/", 1)[1].lower(), spec)  # repo name without org
    for extra, alias in _MODEL_EXTRA_NAMES.items():
        index[extra] = MODELS[alias]
    return index


_MODEL_INDEX = _model_index()


def get_model(name: str) -> ModelSpec:
    """Look a model up by alias or Hugging Face id (case-insensitive)."""
    spec = _MODEL_INDEX.get(_norm(str(name)))
    if spec is None:
        raise UnknownNameError(f"unknown model '{name}'; known: {', '.join(MODELS)}")
    return spec


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
#: NVLink is the total (bidirectional) bandwidth per GPU.
GPUS: dict[str, GpuSpec] = {
    "h100_sxm": GpuSpec(
        name="h100_sxm",
        memory_gib=80,
        hbm_bandwidth_Bps=3.35e12,
        peak_flops={"bf16": 989e12, "fp8": 1979e12},
        nvlink_Bps=900e9,
        sm_count=132,
    ),
    "h200_sxm": GpuSpec(
        name="h200_sxm",
        memory_gib=141,
        hbm_bandwidth_Bps=4.8e12,
        peak_flops={"bf16": 989e12, "fp8": 1979e12},
        nvlink_Bps=900e9,
        sm_count=132,
    ),
}

_GPU_EXTRA_NAMES = {"h100": "h100_sxm", "h200": "h200_sxm"}


def get_gpu(name: str) -> GpuSpec:
    """Look a GPU up by name (case-insensitive; ``h100``, ``H100-SXM`` are accepted)."""
    key = _norm(str(name)).replace("-", "_").replace(" ", "_")
    key = _GPU_EXTRA_NAMES.get(key, key)
    if key not in GPUS:
        raise UnknownNameError(f"unknown gpu '{name}'; known: {', '.join(GPUS)}")
    return GPUS[key]


def fits_in_memory(
    model: ModelSpec,
    gpu: GpuSpec,
    tp: int,
    dtype: str,
    gpu_memory_utilization: float = 0.9,
) -> int:
    """Free KV-cache bytes per GPU after weights (sharded over ``tp``) and the reserve.

    Usable memory is ``gpu_memory_utilization`` of the GPU; from it the weights / tp and a
    1 GiB activation reserve are subtracted. Raises :class:`ComemInputError` if nothing is left.
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
    free = usable - per_gpu - ACTIVATION_RESERVE_BYTES
    if free <= 0:
        hint = "use more GPUs or fp8" if dt == "bf16" else "use more GPUs"
        raise ComemInputError(
            f"model {model.alias} ({weights / 1e9:.0f} GB in {dt}) does not fit on"
            f" {tp} x {gpu.name}: {per_gpu / GIB:.1f} GiB of weights per GPU + 1 GiB reserve"
            f" > {usable / GIB:.1f} GiB usable (gpu_memory_utilization={gpu_memory_utilization});"
            f" {hint}"
        )
    return int(free)
