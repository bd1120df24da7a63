"""What ``comem calibrate microbench`` measures: the shapes of each op it times.

``quick`` is a few tiny shapes (seconds on a CPU), enough rows for every op fit; ``gpu`` the
data-center set, on the committed H100/H200 tables' grids so the two compare row by row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GemmShape:
    """``m`` tokens times a weight of ``n`` outputs by ``k`` inputs."""

    m: int
    n: int
    k: int


@dataclass(frozen=True)
class ContextShape:
    """Prefill: ``batch`` sequences of ``isl`` new tokens after ``prefix`` cached ones."""

    batch: int
    isl: int
    prefix: int
    nq: int
    nkv: int
    head_dim: int = 128


@dataclass(frozen=True)
class DecodeShape:
    """Decode: ``batch`` sequences, one new token each, over ``kv_len`` keys each."""

    batch: int
    kv_len: int
    nq: int
    nkv: int
    head_dim: int = 128


@dataclass(frozen=True)
class MoeShape:
    """One MoE layer: ``tokens`` tokens routed (balanced) to ``top_k`` of ``experts``."""

    tokens: int
    hidden: int
    inter: int
    experts: int
    top_k: int


@dataclass(frozen=True)
class Plan:
    """Every shape of one microbenchmark run."""

    name: str
    gemm: tuple[GemmShape, ...]
    context: tuple[ContextShape, ...]
    decode: tuple[DecodeShape, ...]
    moe: tuple[MoeShape, ...]
    #: seconds each timed run should last at least (more calls per run for short ops)
    min_run_s: float = 0.002
    runs: int = 5
    warmup: int = 3


def _grid(*axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for axis in axes:
        out = [(*prefix, v) for prefix in out for v in axis]
    return out


def quick_plan() -> Plan:
    """Tiny shapes (seconds on a laptop CPU), enough rows for every op fit."""
    nk = ((512, 512), (1024, 512), (512, 1024))
    heads = ((2, 1), (4, 2), (8, 8))
    return Plan(
        name="quick",
        gemm=tuple(GemmShape(m, n, k) for m in (1, 4, 16, 64) for n, k in nk),
        context=tuple(
            ContextShape(b, s, p, nq, nkv)
            for b, s, p in ((1, 16, 0), (1, 64, 0), (2, 64, 0), (1, 256, 0), (1, 64, 256))
            for nq, nkv in heads
        ),
        decode=tuple(
            DecodeShape(b, kv, nq, nkv)
            for b, kv in _grid((1, 4, 16), (16, 128, 1024))
            for nq, nkv in ((2, 1), (8, 2))
        ),
        moe=tuple(MoeShape(t, 512, i, 8, 2) for t in (1, 4, 16, 64) for i in (256, 512)),
        min_run_s=0.001,
        runs=3,
        warmup=1,
    )


def gpu_plan() -> Plan:
    """The prepared data-center GPU set: shapes on the committed H100/H200 tables' grids
    (so they can be compared row by row), about a minute on an H100."""
    ms = (1, 8, 32, 128, 512, 2048, 8192)
    nk = ((4096, 4096), (6144, 4096), (4096, 12288), (16384, 4096), (8192, 8192), (1024, 5120))
    heads = ((32, 8), (64, 8), (8, 1), (16, 2))
    context = [
        ContextShape(b, s, 0, nq, nkv)
        for b, s in ((1, 128), (1, 512), (1, 2048), (1, 8192), (4, 512), (4, 2048), (16, 1024))
        for nq, nkv in heads
    ]
    # prefill over a cached prefix: absent from the committed tables (their step is 0)
    context += [
        ContextShape(1, s, p, nq, nkv)
        for s, p in ((512, 2048), (512, 8192), (2048, 8192), (2048, 30720))
        for nq, nkv in heads
    ]
    decode = [
        DecodeShape(b, kv, nq, nkv)
        for b, kv in _grid((1, 8, 32, 128), (128, 1024, 4096, 16384))
        for nq, nkv in heads
    ]
    moe = [MoeShape(t, 4096, 1536, 128, 8) for t in (1, 16, 128, 1024, 4096)]
    moe += [MoeShape(t, 6144, 2560, 160, 8) for t in (1, 128, 1024)]
    return Plan(
        name="gpu",
        gemm=tuple(GemmShape(m, n, k) for m in ms for n, k in nk),
        context=tuple(context),
        decode=tuple(decode),
        moe=tuple(moe),
    )
