"""An engine's KV cache as vLLM sizes it: blocks in GPU memory (per attention family),
the blocks every request holds whatever its length, and the CPU offload tier; and the
check that an engine configuration can be built at all."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

from calibration.errors import ComemInputError
from calibration.spec_decode import check_speculative
from engine.offload import OffloadTier
from sim.config import EngineConfig
from sim.engine_latency import IterationLatency, engine_label, engine_latency


class KVGeometry(NamedTuple):
    """An engine's KV cache in the simulator's blocks (``block_size`` tokens of every
    layer that keeps all tokens): how many there are, and how many each running request
    holds whatever its length (hybrid models' linear states and sliding windows)."""

    block_size: int
    total_blocks: int
    request_blocks: int
    #: the model has linear-attention (GDN) layers
    linear: bool


def kv_geometry(cfg: EngineConfig, latency: IterationLatency) -> KVGeometry:
    """The KV cache of an engine of ``cfg`` as vLLM lays it out
    (:mod:`calibration.kv_layout`; vLLM keeps block 0 as its null block). A latency model
    without a layout (a measured profile) gets ``block_size`` and no constant part."""
    if cfg.num_speculative_tokens:
        model = getattr(latency, "model", None)
        if model is None or not hasattr(latency, "linear_time"):
            raise ComemInputError(
                f"{engine_label(cfg)}: num_speculative_tokens: speculative decoding is priced from"
                " the kernel-fitted latency model, not a measured profile"
            )
        check_speculative(
            model, cfg.num_speculative_tokens, cfg.spec_acceptance_rate, engine_label(cfg)
        )
    block, state, linear = cfg.block_size, 0, False
    layout_for = getattr(latency, "kv_layout_for", None)
    lay = None
    if layout_for is not None:
        lay = layout_for(cfg.block_size)
        block, state, linear = lay.block_size, lay.request_state_blocks(), lay.linear_groups > 0
    capacity = cfg.kv_capacity_tokens or latency.kv_capacity_tokens(cfg.gpu_memory_utilization)
    if cfg.num_speculative_tokens and lay is not None:
        if not cfg.kv_capacity_tokens:
            capacity = _with_mtp_layers(capacity, lay, latency)
        # vLLM's MambaManager keeps num_speculative_blocks (k) more states per linear group
        state += -(-lay.linear_groups * cfg.num_speculative_tokens // lay.token_groups)
    blocks = capacity // block - 1
    if blocks < 1:
        raise ComemInputError(
            f"{engine_label(cfg)}: a KV cache of {capacity} tokens holds no"
            f" {block}-token block besides vLLM's null block"
        )
    if state and cfg.kv_offloading_size is not None:
        raise ComemInputError(
            f"{engine_label(cfg)}: kv_offloading_size with a hybrid model (linear-attention or"
            " sliding-window layers): vLLM's offloading connector disables the hybrid KV-cache"
            " manager for it, which is not modelled"
        )
    if state + 1 > blocks:
        raise ComemInputError(
            f"{engine_label(cfg)}: one request's constant KV part ({state} blocks of {block}"
            f" tokens: linear states, sliding windows) fills the {blocks}-block cache"
        )
    return KVGeometry(block, blocks, state, linear)


def _with_mtp_layers(capacity: int, lay: Any, latency: Any) -> int:
    """Tokens the cache holds once the MTP modules' attention layers keep their KV too (vLLM
    allocates the drafter's layers from the same pool): each token costs one more layer's
    bytes per module. (The modules' weights, about one decoder layer each, are not
    subtracted.)"""
    per_layer = lay.page_bytes / lay.block_size
    bpt = lay.bytes_per_token
    return int(capacity * bpt // (bpt + latency.model.mtp_layers * per_layer))


def kv_blocks(cfg: EngineConfig, latency: IterationLatency) -> int:
    """KV blocks of an engine of ``cfg`` (vLLM keeps block 0 as its null block)."""
    return kv_geometry(cfg, latency).total_blocks


def check_engine(cfg: EngineConfig) -> None:
    """Everything :class:`sim.engine.Engine` would refuse at construction, without a simulation:
    the model, GPU, dtype and tp, the profile, whether the weights fit, the KV cache."""
    _check_engine_cached(cfg.model_copy(update={"name": "engine"}))


@lru_cache(maxsize=256)
def _check_engine_cached(cfg: EngineConfig) -> None:
    kv_blocks(cfg, engine_latency(cfg))


def offload_tier(cfg: EngineConfig, latency: Any, block_size: int) -> OffloadTier | None:
    """The CPU tier of ``--kv-offloading-size`` GiB (over all GPUs of the engine)."""
    if cfg.kv_offloading_size is None:
        return None
    per_gpu = getattr(latency, "kv_bytes_per_token", None)
    if per_gpu is None:
        raise ComemInputError(
            f"engine '{cfg.name}': CPU KV offloading needs a latency model that knows the"
            " KV bytes per token (a kernel-fitted profile, not a measured one)"
        )
    block_bytes_per_gpu = per_gpu * block_size
    capacity = int(cfg.kv_offloading_size * 2**30 // (block_bytes_per_gpu * cfg.tp))
    if capacity < 1:
        raise ComemInputError(
            f"engine '{cfg.name}': kv_offloading_size {cfg.kv_offloading_size} GiB holds"
            " no KV block"
        )
    load_s = block_bytes_per_gpu / (cfg.kv_offloading_bandwidth_GBps * 1e9)
    return OffloadTier(capacity, block_size, load_s + cfg.kv_offloading_copy_overhead_s)
