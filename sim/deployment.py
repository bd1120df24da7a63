"""The engines of one simulation, by role, and the garbage-collector setting every
simulation runs under."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import simpy

from calibration.errors import ComemInputError
from sim.config import EngineConfig
from sim.data_parallel import LockstepReplicas, ReplicatedEngine
from sim.engine import Engine
from sim.engine_latency import IterationLatency
from sim.metrics import MetricsRecorder
from sim.shared_gpus import SharedGpus

#: the garbage collector's first threshold while a simulation runs (Python's default: 700)
SIMULATION_GC_THRESHOLD = 50_000


@contextmanager
def simulation_gc() -> Iterator[None]:
    """Fewer and cheaper garbage collections while a simulation runs (about a fifth of
    a 256-agent run's time went to them): what exists now (modules, the scenario) is
    frozen out of the collections, and the youngest generation is collected after
    50,000 allocations instead of 700. Cycles are still collected; nothing a simulation
    computes depends on when."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(SIMULATION_GC_THRESHOLD, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


#: what agents and loads submit to: one engine, or data-parallel replicas of it
AnyEngine = Engine | ReplicatedEngine


def check_gpu_groups(configs: dict[str, EngineConfig]) -> list[str]:
    """The GPU groups two or more of ``configs`` share, checked: the same GPU type, TP and
    data parallelism (no data parallelism), memory fractions adding up to at most 1. Run
    when a scenario is read, so an impossible co-location is refused before anything
    runs, and again when its engines are built."""
    # each member with its label: an engine left unnamed in its file is named by its role
    groups: dict[str, list[tuple[str, EngineConfig]]] = {}
    for role, cfg in configs.items():
        if cfg.gpu_group is not None:
            label = role if cfg.name == "engine" else cfg.name
            groups.setdefault(cfg.gpu_group, []).append((label, cfg))
    shared = []
    for name, members in groups.items():
        if len(members) < 2:
            continue
        first_label, first = members[0]
        for label, cfg in members[1:]:
            if (cfg.gpu, cfg.tp, cfg.data_parallel_size) != (
                first.gpu,
                first.tp,
                first.data_parallel_size,
            ):
                raise ComemInputError(
                    f"gpu_group '{name}': engines '{first_label}' and '{label}'"
                    " share GPUs but differ in gpu, tp or data_parallel_size"
                )
        total = sum(cfg.gpu_memory_utilization for _, cfg in members)
        if total > 1.0 + 1e-9:
            roles = ", ".join(f"{label} {cfg.gpu_memory_utilization}" for label, cfg in members)
            raise ComemInputError(
                f"gpu_group '{name}': gpu_memory_utilization adds up to {total:.2f} > 1"
                f" ({roles}); give each engine its share"
            )
        if any(cfg.data_parallel_size > 1 for _, cfg in members):
            raise ComemInputError(
                f"gpu_group '{name}': co-located engines with data parallelism are not modelled"
            )
        shared.append(name)
    return shared


def build_engines(
    env: simpy.Environment,
    configs: dict[str, EngineConfig],
    latency: dict[str, IterationLatency] | None = None,
    recorder: MetricsRecorder | None = None,
) -> dict[str, AnyEngine]:
    """The engines of one simulation, by role: replicas where ``data_parallel_size`` > 1,
    shared GPUs where engines name the same ``gpu_group`` (checked: same GPU type and
    TP, memory fractions adding up to at most 1)."""
    latency = latency or {}
    shared: dict[str, SharedGpus] = {
        name: SharedGpus(env, name) for name in check_gpu_groups(configs)
    }
    engines: dict[str, AnyEngine] = {}
    for role, cfg in configs.items():
        if cfg.data_parallel_size > 1:
            from calibration.registry import get_model

            # vLLM steps the ranks of a MoE model in lockstep; a dense model's run alone
            group = LockstepReplicas if get_model(cfg.model).is_moe else ReplicatedEngine
            engines[role] = group(env, cfg, latency.get(role), recorder)
        else:
            gpus = shared.get(cfg.gpu_group) if cfg.gpu_group is not None else None
            engines[role] = Engine(env, cfg, latency.get(role), recorder, gpus)
    return engines
