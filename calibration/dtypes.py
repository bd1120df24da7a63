"""The weight and KV-cache dtypes the project prices, and the bytes each weight takes."""

from __future__ import annotations

from calibration.errors import UnknownNameError

#: Supported weight dtypes (the KV cache has its own, see :data:`KV_CACHE_DTYPES`):
#: ``fp4`` is NVFP4 (ModelOpt W4A4: 4-bit values, one fp8 scale per 16, Blackwell tensor
#: cores), ``int4`` int4 weight-only experts (compressed-tensors pack-quantized, group 32,
#: bf16 scales, Marlin kernels: Kimi-K2.5), ``mxfp4`` MXFP4 weight-only experts (4-bit
#: values, one e8m0 scale per 32: gpt-oss). ``int4`` and ``mxfp4`` quantize only the
#: routed experts; everything else stays bf16, as those checkpoints ship.
DTYPES = ("bf16", "fp8", "fp4", "int4", "mxfp4")
#: Dtypes that quantize only the routed experts (the rest of the model is bf16).
EXPERT_ONLY_DTYPES = ("int4", "mxfp4")
#: vLLM's ``--kv-cache-dtype`` choices the project prices. ``auto`` is vLLM's default: the
#: model's activation dtype, bf16 here also for fp8 weights (a checkpoint that carries
#: KV-cache scales would switch vLLM to fp8: say ``fp8`` then).
KV_CACHE_DTYPES = ("auto", "bf16", "fp8")
#: Bytes per quantized weight, scales included (block-scale layouts as named above).
DTYPE_BYTES: dict[str, float] = {
    "bf16": 2.0,
    "fp8": 1.0,
    "fp4": 0.5 + 1.0 / 16,
    "int4": 0.5 + 2.0 / 32,
    "mxfp4": 0.5 + 1.0 / 32,
}
_DTYPE_ALIASES = {"bfloat16": "bf16", "nvfp4": "fp4", "int4_wo": "int4", "w4a16": "int4"}


def check_kv_cache_dtype(name: str) -> str:
    """``bf16`` or ``fp8`` for a ``--kv-cache-dtype`` value (``auto`` is bf16, see
    :data:`KV_CACHE_DTYPES`; ``bfloat16``, ``fp8_e4m3`` are accepted)."""
    key = str(name).strip().lower()
    key = {"bfloat16": "bf16", "fp8_e4m3": "fp8", "auto": "bf16"}.get(key, key)
    if key not in ("bf16", "fp8"):
        raise UnknownNameError(
            f"unknown kv_cache_dtype '{name}'; known: {', '.join(KV_CACHE_DTYPES)}"
        )
    return key


def check_dtype(name: str) -> str:
    """Return the canonical dtype name (``"bf16"`` or ``"fp8"``); ``"bfloat16"`` is accepted."""
    key = str(name).strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise UnknownNameError(f"unknown dtype '{name}'; known: {', '.join(DTYPES)}")
    return key


def compute_dtype(dtype: str) -> str:
    """The tensor-core dtype a weight dtype computes in: int4 / mxfp4 weight-only experts
    are dequantized to bf16 in the kernel."""
    return "bf16" if dtype in EXPERT_ONLY_DTYPES else dtype
