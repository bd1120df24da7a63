"""Serving measurements replayed through ``bench-serve``: the simulator side of
``comem calibrate fit-serving`` (:mod:`calibration.serving` fits, this module simulates).

:func:`simulate_row` runs one measured point (a closed loop of ``concurrency`` clients)
as ``vllm bench serve`` would, with the row's assumed server flags
(:class:`calibration.serving.ServingSetup`) and a given framework overhead, and reports
the mean TTFT and TPOT together with how they depend on each overhead term on the
simulated schedule: per request, the engine iterations (and scheduled sequences) between
its arrival at the scheduler and its first token, and between its first token and its
last, read off the engine's step records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from calibration.errors import ComemInputError
from calibration.latency import LatencyModel
from calibration.profile import FrameworkOverhead, Profile, default_profile
from calibration.serving import ServingRow, ServingSetup, setup_for, tpot_lower_bound
from calibration.serving_fit import (
    SERVING_FIT_TERMS,
    TPOT_TERMS,
    TTFT_TERMS,
    BatchSimulator,
    RowFeatures,
    ServingFit,
    cross_validation_record,
    fit_serving_overhead,
    overhead_entry,
    serving_table,
)
from sim.bench_serve import (
    BenchServeConfig,
    BenchServeResult,
    check_config,
    run_bench_serve,
    warmup_count,
)
from sim.config import EngineConfig

#: the name the pooled serving fit is kept under (the profiles' default overhead)
SERVING_FRAMEWORK = "vllm-serving"

#: step ends closer than this to a request's event time count as that event (seconds)
_EPS = 1e-9


_MODELS: dict[tuple[object, ...], tuple[LatencyModel, Profile | None]] = {}


def _latency_model(
    model: str,
    gpu: str,
    tp: int,
    dtype: str,
    kv_cache_dtype: str,
    fp8_gemm: str,
    budget: int,
    seqs: int,
    profile: Profile | None,
    async_scheduling: bool = True,
    expert_parallel: bool = False,
) -> LatencyModel:
    """One latency model per configuration (its tables take a moment to build)."""
    key = (
        model, gpu, tp, dtype, kv_cache_dtype, fp8_gemm, budget, seqs, id(profile),
        async_scheduling, expert_parallel,
    )  # fmt: skip
    if key not in _MODELS:
        if len(_MODELS) > 64:
            _MODELS.clear()
        lm = LatencyModel(
            model, gpu, tp, dtype, profile=profile, kv_cache_dtype=kv_cache_dtype,
            fp8_gemm=fp8_gemm, max_num_batched_tokens=budget, max_num_seqs=seqs,
            async_scheduling=async_scheduling, expert_parallel=expert_parallel,
        )  # fmt: skip
        _MODELS[key] = (lm, profile)  # the profile is kept alive: its id stays its own
    return _MODELS[key][0]


def bench_config(
    row: ServingRow, setup: ServingSetup, kv_capacity_tokens: int | None = None
) -> BenchServeConfig:
    """The ``bench-serve`` run of one measured point under ``setup`` (``kv_capacity_tokens``:
    the KV cache's size instead of vLLM's sizing, for what-if studies of the knee)."""
    engine = EngineConfig(
        name="serving-row",
        model=row.model,
        gpu=row.gpu,
        tp=row.tp,
        dtype=row.dtype,  # type: ignore[arg-type]
        kv_cache_dtype=setup.kv_cache_dtype,
        fp8_gemm=setup.fp8_gemm,
        max_num_batched_tokens=setup.max_num_batched_tokens,
        max_num_seqs=setup.seqs(row),
        enable_prefix_caching=setup.enable_prefix_caching,
        scheduler_reserve_full_isl=setup.scheduler_reserve_full_isl,
        async_scheduling=setup.schedules_async(row),
        enable_expert_parallel=row.expert_parallel,
        record_iterations=True,
        kv_capacity_tokens=kv_capacity_tokens,
    )
    return BenchServeConfig(
        engine=engine,
        num_prompts=setup.prompts_per_client * row.concurrency,
        random_input_len=row.isl,
        random_output_len=row.osl,
        random_range_ratio=setup.random_range_ratio,
        random_range_semantics=setup.random_range_semantics,
        max_concurrency=row.concurrency,
        closed_loop_start=setup.closed_loop_start,
        client_issue_delay_s=setup.client_issue_delay_s,
        backend="openai-chat" if setup.chat_endpoint else "vllm",
        ttft_at="first-text" if setup.chat_endpoint else "first-chunk",
        random_prefix_len=setup.chat_template_tokens,
    )


def simulate_row(
    row: ServingRow,
    setup: ServingSetup,
    overhead: FrameworkOverhead,
    profile: Profile | None = None,
    kv_scale: float = 1.0,
) -> RowFeatures:
    """Simulate ``row`` with ``overhead`` in place of the profile's (the kernel fits are
    the embedded profile's for the row's GPU and dtype unless ``profile`` is given);
    ``kv_scale``: the KV cache at that multiple of vLLM's sizing."""
    base = profile if profile is not None else default_profile(row.gpu, row.dtype)
    lm = _latency_model(
        row.model, row.gpu, row.tp, row.dtype, setup.kv_cache_dtype, setup.fp8_gemm,
        setup.max_num_batched_tokens, setup.seqs(row), profile, setup.schedules_async(row),
        row.expert_parallel,
    )  # fmt: skip
    lm.set_overhead(overhead)
    kv = None if kv_scale == 1.0 else int(lm.kv_capacity_tokens() * kv_scale)
    cfg = bench_config(row, setup, kv)
    res = run_bench_serve(cfg, lm)
    lm.set_overhead(base.framework_overhead())
    return row_features(res, overhead, row.tp, lm.async_scheduling)


def _cpu_bound(
    iters: np.ndarray,
    seqs: np.ndarray,
    duration: np.ndarray,
    overhead: FrameworkOverhead,
    tp: int,
) -> np.ndarray:
    """Per recorded step (a run of iterations), whether its iterations took their CPU
    time under asynchronous scheduling (``max(GPU, CPU)`` was the CPU): then the CPU
    terms move the step's time one for one; otherwise not at all. A run is CPU-bound
    when its mean iteration time is its CPU time (every iteration's max is at least
    it), so a run that is partly CPU-bound counts as GPU-bound (the fit's next
    simulation corrects what that linearization misses)."""
    per_iter = duration / np.maximum(iters, 1.0) - overhead.per_iteration_serial_s
    per_iter = per_iter - overhead.per_sequence_serial_s * seqs / np.maximum(iters, 1.0)
    cpu = overhead.iteration_s(tp) + overhead.per_sequence_s * seqs / np.maximum(iters, 1.0)
    return (cpu > 0) & (per_iter <= cpu * (1.0 + 1e-9) + 1e-12)


def _step_counts(
    res: BenchServeResult, overhead: FrameworkOverhead, tp: int, async_scheduling: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The run's steps in the order they end: start, end, and per step the iterations
    (``i``) and sequences (``s``), and the iterations and sequences whose CPU time counts
    (``ci``, ``cs``)."""
    steps = res.recorder.iterations_frame()
    start = steps["start_s"].to_numpy(float)
    duration = steps["duration_s"].to_numpy(float)
    end = start + duration
    order = np.argsort(end, kind="stable")
    start, end, duration = start[order], end[order], duration[order]
    iters = steps["iterations"].to_numpy(float)[order]
    # sequences summed over a step's iterations: every iteration schedules its decodes, a
    # run records its prefill chunks one per iteration
    seqs = iters * steps["decode_seqs"].to_numpy(float)[order]
    seqs = seqs + steps["prefill_chunks"].to_numpy(float)[order]
    cpu_w = (
        _cpu_bound(iters, seqs, duration, overhead, tp).astype(float)
        if async_scheduling
        else np.ones_like(iters)
    )
    return start, end, {"i": iters, "ci": iters * cpu_w, "cs": seqs * cpu_w, "s": seqs}


def row_features(
    res: BenchServeResult, overhead: FrameworkOverhead, tp: int, async_scheduling: bool = False
) -> RowFeatures:
    """Mean TTFT / TPOT of the measured requests of a run and their overhead slopes.

    Per request, the slopes count the iterations (and scheduled sequences) its first
    token and its decode spanned: the serial term moves every iteration, the CPU terms
    every iteration without asynchronous scheduling and only the CPU-bound ones with it
    (:func:`_cpu_bound`)."""
    start, end, per_step = _step_counts(res, overhead, tp, async_scheduling)
    cum = {k: np.concatenate([[0.0], np.cumsum(v)]) for k, v in per_step.items()}
    multi = 1.0 if tp > 1 else 0.0

    warmup = warmup_count(res.config)
    done = [r for r in res.requests if r.status == "finished" and r.tag >= warmup]
    if not done:
        raise RuntimeError("simulated run finished no measured request")
    ttft, tpot = [], []
    d_ttft: dict[str, list[float]] = {k: [] for k in cum}
    d_tpot: dict[str, list[float]] = {k: [] for k in cum}
    for r in done:
        first, last = r.first_token_s, r.finished_s
        # the client's TTFT ends at the first streamed text, ``silent`` of the request's
        # decode tokens later (gpt-oss's harmony header): its slopes add theirs
        silent = res.silent_after_first(r)
        ttft.append(res.visible_first_token_s(r) - r.arrival_s)
        # TTFT: from the arrival at the scheduler (after the request overhead) to the end
        # of the iteration that sampled the first token; the iteration in flight at the
        # arrival counts for the part of it after the arrival
        entered = r.arrival_s + overhead.request_overhead_s
        a = int(np.searchsorted(end, entered + _EPS, side="left"))
        b = int(np.searchsorted(end, first + _EPS, side="right"))
        cut = (end[a] - entered) / (end[a] - start[a]) if a < b and start[a] < entered else 1.0
        e = int(np.searchsorted(end, last + _EPS, side="right"))
        for k, c in cum.items():
            to_first = c[b] - c[a] - (1.0 - cut) * per_step[k][a] if a < b else 0.0
            per_token = (c[e] - c[b]) / (r.generated - 1) if r.generated > 1 else 0.0
            d_ttft[k].append(to_first + silent * per_token)
        if res.shown_tokens(r) > 1:  # at the request's mean pace, silent tokens or not
            tpot.append((last - first) / (r.generated - 1))
            for k, c in cum.items():
                d_tpot[k].append((c[e] - c[b]) / (r.generated - 1))
    mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731

    def slopes(d: dict[str, list[float]]) -> dict[str, float]:
        return {
            "per_iteration_s": mean(d["ci"]),
            "per_iteration_tp_s": mean(d["ci"]) * multi,
            "per_sequence_s": mean(d["cs"]),
            "per_iteration_serial_s": mean(d["i"]),
            "per_sequence_serial_s": mean(d["s"]),
        }

    return RowFeatures(
        ttft_s=mean(ttft),
        tpot_s=mean(tpot),
        ttft_per_term=slopes(d_ttft) | {"request_overhead_s": 1.0},
        tpot_per_term=slopes(d_tpot),
        preemptions=res.engine.preemptions,
        kv_cache_tokens=res.engine.total_blocks * res.engine.block_size,
    )


#: kernel profiles by (gpu, dtype) to simulate with (None: the embedded ones)
Profiles = dict[tuple[str, str], Profile] | None


#: the profiles a forked worker of :func:`simulate_rows` simulates with
_WORKER_PROFILES: Profiles = None


def _simulate_job(job: tuple[ServingRow, ServingSetup, FrameworkOverhead]) -> RowFeatures:
    row, setup, overhead = job
    profiles = _WORKER_PROFILES
    return simulate_row(
        row, setup, overhead, profiles.get((row.gpu, row.dtype)) if profiles else None
    )


def simulate_rows(
    rows: Sequence[ServingRow],
    setups: Sequence[ServingSetup],
    overhead: FrameworkOverhead,
    profiles: Profiles = None,
    workers: int = 1,
) -> list[RowFeatures]:
    """Every row simulated with ``overhead``; with ``workers`` > 1 in forked processes
    (each row's simulation is independent and seeded: the same result, row for row)."""
    global _WORKER_PROFILES
    _WORKER_PROFILES = profiles
    jobs = [(r, s, overhead) for r, s in zip(rows, setups, strict=True)]
    if workers <= 1 or len(jobs) < 2:
        return [_simulate_job(j) for j in jobs]
    import multiprocessing

    from sim.workers import pool_kwargs

    with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), **pool_kwargs()) as pool:
        return pool.map(_simulate_job, jobs, chunksize=1)


def _simulator(profiles: Profiles, workers: int = 1) -> BatchSimulator:
    def simulate(
        rows: Sequence[ServingRow], setups: Sequence[ServingSetup], overhead: FrameworkOverhead
    ) -> list[RowFeatures]:
        return simulate_rows(rows, setups, overhead, profiles, workers)

    return simulate


def fit_rows(
    rows: Sequence[ServingRow],
    setups: Sequence[ServingSetup],
    start: FrameworkOverhead | None = None,
    fit_terms: Sequence[str] = TPOT_TERMS + TTFT_TERMS,
    profiles: Profiles = None,
    workers: int = 1,
) -> ServingFit:
    """:func:`calibration.serving_fit.fit_serving_overhead` with this module's simulator."""
    return fit_serving_overhead(
        rows, setups, _simulator(profiles, workers), start, fit_terms, batch=True
    )


def evaluate_rows(
    rows: Sequence[ServingRow],
    setups: Sequence[ServingSetup],
    overhead: FrameworkOverhead,
    profiles: Profiles = None,
    workers: int = 1,
) -> Any:
    """Simulate every row with ``overhead``: the per-row error table."""
    return serving_table(rows, simulate_rows(rows, setups, overhead, profiles, workers))


def cross_validate(
    rows: Sequence[ServingRow],
    setups: Sequence[ServingSetup],
    start: FrameworkOverhead | None = None,
    fit_terms: Sequence[str] = TPOT_TERMS + TTFT_TERMS,
    profiles: Profiles = None,
) -> dict[str, tuple[FrameworkOverhead, Any]]:
    """Leave one model out: fit on the other models' rows, score the held-out model's.

    Returns, per held-out model, the overhead fitted without it and its error table."""
    out: dict[str, tuple[FrameworkOverhead, Any]] = {}
    models = sorted({r.model for r in rows})
    for held in models:
        train = [i for i, r in enumerate(rows) if r.model != held]
        test = [i for i, r in enumerate(rows) if r.model == held]
        if not train:
            continue
        fit = fit_rows(
            [rows[i] for i in train], [setups[i] for i in train], start, fit_terms, profiles
        )
        table = evaluate_rows(
            [rows[i] for i in test], [setups[i] for i in test], fit.overhead, profiles
        )
        out[held] = (fit.overhead, table)
    return out


class LeftOut(NamedTuple):
    """A serving row no fit uses: its own TPOT, or another row of its run, is below the
    roofline bound (:func:`calibration.serving.tpot_lower_bound`)."""

    row: ServingRow
    #: the row's own TPOT lower bound, seconds
    bound_s: float

    def why(self) -> str:
        if self.row.tpot_s < self.bound_s:
            return (
                f"measured TPOT {self.row.tpot_s * 1e3:.2f} ms is below the roofline bound"
                f" {self.bound_s * 1e3:.2f} ms"
            )
        return "a row of the same run (model, dtype, GPU, vLLM version, clients) is below its bound"


def run_of(row: ServingRow) -> tuple[str, str, str, str, int]:
    """The benchmark run a row belongs to: one model and weight dtype on one GPU type, one
    vLLM version (an unstated one: its measurement month, :attr:`ServingRow.framework`),
    one client count. Its TP sizes are separate launches of one campaign, with one set of
    server flags the data does not state."""
    return (row.model, row.dtype, row.gpu, row.framework, row.concurrency)


def physical_rows(
    rows: Sequence[ServingRow], setups: Sequence[ServingSetup]
) -> tuple[list[ServingRow], list[ServingSetup], list[LeftOut]]:
    """The rows a fit may use, and the others (:class:`LeftOut`): a row whose measured TPOT
    is below its roofline bound cannot be what its columns say (its server ran fewer
    sequences at once than the clients sent: a limit the data does not state), and neither
    can the other rows of its run (:func:`run_of`), served under the same flags."""
    bounds = [tpot_lower_bound(r, s) for r, s in zip(rows, setups, strict=True)]
    bad = {run_of(r) for r, b in zip(rows, bounds, strict=True) if r.tpot_s < b}
    kept_r, kept_s, out = [], [], []
    for r, s, b in zip(rows, setups, bounds, strict=True):
        if run_of(r) in bad:
            out.append(LeftOut(r, b))
        else:
            kept_r.append(r)
            kept_s.append(s)
    return kept_r, kept_s, out


@dataclass
class ServingCalibration:
    """``comem calibrate fit-serving``'s result: the fits and their errors."""

    rows: list[ServingRow]
    setups: list[ServingSetup]
    #: rows left out of every fit (:func:`physical_rows`)
    excluded: list[LeftOut]
    fit: ServingFit
    framework: str
    per_version: dict[str, ServingFit] = field(default_factory=dict)
    cross_validation: dict[str, tuple[FrameworkOverhead, Any]] = field(default_factory=dict)

    def cv_table(self) -> Any:
        import pandas as pd

        return pd.concat([t for _, t in self.cross_validation.values()], ignore_index=True)

    def entries(self, source: str, assumptions_note: str) -> dict[str, dict[str, Any]]:
        """Profile ``overheads`` entries: the pooled fit (with its cross-validation) and
        one per framework version."""
        cv = cross_validation_record({m: t for m, (_, t) in self.cross_validation.items()})
        excluded = [f"{x.row.label} ({x.why()})" for x in self.excluded]
        out = {
            self.framework: overhead_entry(self.fit, self.framework, source, assumptions_note, cv)
            | {"excluded_rows": excluded}
        }
        for name, fit in self.per_version.items():
            out[name] = overhead_entry(fit, name, source, assumptions_note)
        return out


def check_rows(
    rows: Sequence[ServingRow], assumptions: dict[str, dict[str, Any]]
) -> tuple[list[ServingRow], list[ServingSetup], list[Any]]:
    """The rows a serving fit keeps, their setups and the ones it leaves out (below their
    roofline bound: :func:`physical_rows`); one line for a row whose server cannot exist,
    or when none is left. Cheap: run before a fit states its cost."""
    setups = [setup_for(r, assumptions) for r in rows]
    for r, s in zip(rows, setups, strict=True):  # a server that cannot exist, a huge run
        try:
            check_config(bench_config(r, s))
        except ComemInputError as exc:
            raise ComemInputError(f"serving row {r.label}: {exc}") from None
    kept_rows, kept_setups, excluded = physical_rows(rows, setups)
    if not kept_rows:
        raise ComemInputError(
            "fit-serving: every row is below its roofline bound or in a run with such a row"
        )
    return kept_rows, kept_setups, excluded


def calibrate_serving(
    rows: Sequence[ServingRow],
    assumptions: dict[str, dict[str, Any]],
    framework: str = SERVING_FRAMEWORK,
    fit_terms: Sequence[str] = SERVING_FIT_TERMS,
    per_version: bool = True,
    cross_validate_models: bool = True,
    profiles: Profiles = None,
) -> ServingCalibration:
    """Fit the serving overhead on ``rows`` (pooled, and per framework version), with
    leave-one-model-out cross-validation. Rows :func:`physical_rows` rejects are left out."""
    kept_rows, kept_setups, excluded = check_rows(rows, assumptions)
    pooled = fit_rows(kept_rows, kept_setups, None, fit_terms, profiles)
    result = ServingCalibration(kept_rows, kept_setups, excluded, pooled, framework)
    if per_version:
        versions = sorted({r.framework for r in kept_rows})
        if len(versions) > 1:
            for name in versions:
                idx = [i for i, r in enumerate(kept_rows) if r.framework == name]
                result.per_version[name] = fit_rows(
                    [kept_rows[i] for i in idx],
                    [kept_setups[i] for i in idx],
                    None,
                    fit_terms,
                    profiles,
                )
    if cross_validate_models and len({r.model for r in kept_rows}) > 1:
        result.cross_validation = cross_validate(kept_rows, kept_setups, None, fit_terms, profiles)
    return result
