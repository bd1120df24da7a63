"""What an engine prices its iterations with: the latency model of an engine
configuration (built once per configuration and process) and its error bands."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from calibration.errors import ComemInputError
from sim.config import EngineConfig


class IterationLatency(Protocol):
    """What the engine needs from a latency model."""

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int: ...

    def iteration_time_of(
        self,
        num_decode: int,
        decode_kv_total: int,
        prefill_new: Sequence[int] = (),
        prefill_cached: Sequence[int] = (),
    ) -> float: ...

    def steady_iteration_times(
        self, num_decode: int, kv_total0: int, chunk: int, cached0: int, steps: int
    ) -> np.ndarray: ...


def engine_label(cfg: EngineConfig) -> str:
    return "engine" if cfg.name == "engine" else f"engine '{cfg.name}'"


def engine_error_bands(cfg: EngineConfig) -> dict[str, Any]:
    """The cross-validated error bands of the calibration ``cfg``'s engine prices with
    (:mod:`calibration.uncertainty`): its profile's framework fit's; {} for a measured
    profile or a GPU without an embedded one (then no interval is claimed)."""
    from calibration.measured import load_profile
    from calibration.profile import Profile, default_profile
    from calibration.registry import get_gpu

    if cfg.profile:
        profile = load_profile(cfg.profile)
        return profile.framework_bands() if isinstance(profile, Profile) else {}
    try:
        return default_profile(get_gpu(cfg.gpu).name, cfg.dtype).framework_bands()
    except ComemInputError:
        return {}


def engine_latency(cfg: EngineConfig) -> IterationLatency:
    """The latency model an engine of ``cfg`` prices its iterations with: its profile's
    (a measured one, or kernel fits for its gpu and dtype) or the embedded default.
    Built once per configuration and process (a model is not changed once built; its
    tables are filled on first use): the check of a scenario's engines builds them, and
    the simulations, in this process or in workers forked from it, reuse them."""
    return _engine_latency_cached(cfg.model_copy(update={"name": "engine"}))


@lru_cache(maxsize=64)
def _engine_latency_cached(cfg: EngineConfig) -> IterationLatency:
    from calibration.measured import MeasuredLatency, MeasuredProfile, load_profile

    profile = load_profile(cfg.profile) if cfg.profile else None
    if isinstance(profile, MeasuredProfile):
        return MeasuredLatency(profile)
    from calibration.latency import LatencyModel

    return LatencyModel(
        cfg.model,
        cfg.gpu,
        cfg.tp,
        cfg.dtype,
        profile=profile,
        expert_parallel=cfg.enable_expert_parallel,
        kv_cache_dtype=cfg.kv_cache_dtype,
        fp8_gemm=cfg.fp8_gemm,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        max_num_seqs=cfg.max_num_seqs,
        data_parallel_size=cfg.data_parallel_size,
        async_scheduling=cfg.async_scheduling,
    )
