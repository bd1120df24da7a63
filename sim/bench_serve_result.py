"""The result of a ``comem bench-serve`` run, as ``vllm bench serve`` reports it.

:func:`vllm_result` is the result file ``vllm bench serve --save-result`` writes (the
same keys; VLLM_FACTS.md section 6), plus the simulated server it ran on and the
calibration's error bands; :func:`text_report` is the table vLLM prints from it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sim.bench_serve import PERCENTILE_METRICS, BenchServeResult, warmup_count
from sim.config import EngineConfig
from sim.request import Request


def _dp_fields(e: EngineConfig) -> dict[str, Any]:
    """The data-parallel ranks, named only where there are several (a DP-1 result file is
    as it was)."""
    if e.data_parallel_size == 1:
        return {}
    return {
        "data_parallel_size": e.data_parallel_size,
        "data_parallel_router": e.data_parallel_router,
    }


def _spec_fields(e: EngineConfig) -> dict[str, Any]:
    """Speculative decoding, named only when on (a result file without it is as it was)."""
    if not e.num_speculative_tokens:
        return {}
    return {
        "num_speculative_tokens": e.num_speculative_tokens,
        "spec_acceptance_rate": e.spec_acceptance_rate,
    }


def _weighted_percentiles(
    values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]
) -> list[float]:
    """np.percentile of ``values`` each repeated ``weights`` times (exact, linear)."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    w = weights[order].astype(np.int64)
    cum = np.cumsum(w)
    total = int(cum[-1])
    out = []
    for q in qs:
        pos = q / 100.0 * (total - 1)  # numpy's "linear" method on the expanded array
        lo = math.floor(pos)
        frac = pos - lo
        a = v[np.searchsorted(cum, lo, side="right")]
        b = v[np.searchsorted(cum, min(lo + 1, total - 1), side="right")]
        out.append(float(a + frac * (b - a)))
    return out


def percentile_key(q: float) -> str:
    """vLLM's name of a percentile in result keys: ``99`` -> ``p99``, ``99.9`` -> ``p99.9``."""
    return f"p{int(q)}" if q == int(q) else f"p{q}"


def vllm_result(
    res: BenchServeResult,
    detailed: bool = False,
    metrics: tuple[str, ...] = PERCENTILE_METRICS,
    percentiles: tuple[float, ...] = (99.0,),
) -> dict[str, Any]:
    """vLLM's result dict: mean, median and std of each of ``metrics``, plus the
    ``percentiles`` (``p99_ttft_ms``, ...), as ``vllm bench serve`` writes them."""
    cfg = res.config
    done = [r for r in res.requests if r.status == "finished"]
    start = min((r.arrival_s for r in res.requests), default=0.0)
    end = max((r.finished_s for r in done), default=start)
    duration = end - start
    # latency statistics leave the warm-up requests (the first sent) out
    warmup = warmup_count(cfg)
    result = _totals(res, done, start, duration, warmup)
    if cfg.goodput:
        result["request_goodput"] = _goodput(res, done, duration)
    measured = [r for r in done if r.tag >= warmup]
    _add_latency_stats(result, res, measured, metrics, percentiles)
    add_intervals(result, getattr(res.engine.latency, "error_bands", {}))
    caveat = getattr(res.engine.latency, "band_caveat", "")
    if caveat and "error_bands" in result:
        result["error_bands_caveat"] = caveat
    if detailed:
        result["input_lens"] = [r.prompt_tokens for r in res.requests]
        result["output_lens"] = [res.shown_tokens(r) for r in res.requests]
        result["ttfts"] = [res.visible_first_token_s(r) - r.arrival_s for r in res.requests]
        result["start_times"] = [r.arrival_s for r in res.requests]
        result["errors"] = [r.reason for r in res.requests]
    return result


def _totals(
    res: BenchServeResult, done: list[Request], start: float, duration: float, warmup: int
) -> dict[str, Any]:
    """The run's counts and throughputs (over the completed requests), its settings and
    the simulated server, under vLLM's names."""
    cfg = res.config
    out_tokens = np.array([res.shown_tokens(r) for r in done], dtype=np.int64)
    in_tokens = np.array([r.prompt_tokens for r in done], dtype=np.int64)
    return {
        "backend": cfg.backend,
        "model_id": cfg.engine.model,
        "tokenizer_id": None,
        "num_prompts": cfg.num_prompts,
        "request_rate": "inf" if math.isinf(cfg.request_rate) else cfg.request_rate,
        "burstiness": cfg.burstiness,
        "max_concurrency": cfg.max_concurrency,
        "duration": duration,
        "completed": len(done),
        "failed": len(res.requests) - len(done),
        "total_input_tokens": int(in_tokens.sum()),
        "total_output_tokens": int(out_tokens.sum()),
        "request_throughput": len(done) / duration if duration > 0 else 0.0,
        "output_throughput": float(out_tokens.sum()) / duration if duration > 0 else 0.0,
        "total_token_throughput": float(in_tokens.sum() + out_tokens.sum()) / duration
        if duration > 0
        else 0.0,
        "max_concurrent_requests": _max_concurrency(res.requests),
        "max_output_tokens_per_s": _max_output_tokens_per_s(res, done, start),
        "closed_loop_start": cfg.closed_loop_start,
        "random_prefix_len": cfg.random_prefix_len,
        "warmup_requests": warmup,
        "preemptions": res.engine.preemptions,
        "itl_tokens_after_preemption": res.recorder.itl_after_preemption,
        "simulator": _simulator(res),
    }


def _simulator(res: BenchServeResult) -> dict[str, Any]:
    """The simulated server the result ran on (not a vLLM key: vLLM knows its server)."""
    e = res.config.engine
    return {
        "gpu": e.gpu,
        "tp": e.tp,
        "dtype": e.dtype,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "max_num_seqs": e.max_num_seqs,
        "kv_cache_blocks": res.engine.total_blocks,
        "iterations": res.engine.iterations,
        "stepping": e.stepping,
        "expert_parallel": e.enable_expert_parallel,
        **_dp_fields(e),
        **_spec_fields(e),
        "async_scheduling": getattr(res.engine.latency, "async_scheduling", None),
        "overhead": _overhead_name(res.engine.latency),
    }


def _add_latency_stats(
    result: dict[str, Any],
    res: BenchServeResult,
    measured: list[Request],
    metrics: tuple[str, ...],
    percentiles: tuple[float, ...],
) -> None:
    """``{mean,median,std,pNN}_{metric}_ms`` of each of ``metrics`` over the ``measured``
    requests (ITL: every token gap, pooled, as the recorder kept them)."""
    # output tokens as the client counts them: without the silent ones it was never sent
    m_out = np.array([res.shown_tokens(r) for r in measured], dtype=np.int64)
    ttft = np.array([res.visible_first_token_s(r) - r.arrival_s for r in measured])
    e2el = np.array([r.finished_s - r.arrival_s for r in measured])
    multi = m_out > 1
    tpot = (e2el[multi] - ttft[multi]) / (m_out[multi] - 1)
    samples = {"ttft": ttft, "tpot": tpot, "e2el": e2el}
    keys = ("mean", "median", "std", *(percentile_key(q) for q in percentiles))
    for name in metrics:
        if name == "itl":
            stats = _itl_stats(res, percentiles)
        else:
            v = samples[name]
            stats = (
                (
                    float(v.mean()),
                    float(np.median(v)),
                    float(v.std()),
                    *(float(np.percentile(v, q)) for q in percentiles),
                )
                if v.size
                else (math.nan,) * (3 + len(percentiles))
            )
        for key, value in zip(keys, stats, strict=True):
            result[f"{key}_{name}_ms"] = value * 1000.0


def _itl_stats(res: BenchServeResult, percentiles: tuple[float, ...]) -> tuple[float, ...]:
    """Mean, median, std and ``percentiles`` of the inter-token gaps (seconds), from the
    recorder's (gap, count) pairs."""
    itl_values, itl_weights = res.recorder.itl_arrays()
    if not itl_weights.sum() > 0:
        return (math.nan,) * (3 + len(percentiles))
    total = float(itl_weights.sum())
    mean = float((itl_values * itl_weights).sum() / total)
    var = float((itl_weights * (itl_values - mean) ** 2).sum() / total)
    median, *tail = _weighted_percentiles(itl_values, itl_weights, (50.0, *percentiles))
    return (mean, median, math.sqrt(var), *tail)


def _goodput(res: BenchServeResult, done: list[Request], duration: float) -> float:
    """Requests per second that met every ``--goodput`` objective (vLLM's
    ``request_goodput``: over the completed requests and the benchmark's duration; TPOT
    of a one-token output is 0), on the metrics as the client times them."""
    if duration <= 0:
        return 0.0
    good = 0
    for r in done:
        ttft = res.visible_first_token_s(r) - r.arrival_s
        e2el = r.finished_s - r.arrival_s
        shown = res.shown_tokens(r)
        tpot = (e2el - ttft) / (shown - 1) if shown > 1 else 0.0
        values = {"ttft": ttft, "tpot": tpot, "e2el": e2el}
        good += all(values[k] * 1000.0 <= slo for k, slo in res.config.goodput.items())
    return good / duration


def _overhead_name(latency: Any) -> str:
    """The framework overhead a latency model prices with (its fit's name)."""
    name = getattr(latency, "framework", None)
    profile = getattr(latency, "profile", None)
    if (
        name is None
        and profile is not None
        and isinstance(getattr(profile, "overhead", None), dict)
    ):
        name = profile.overhead.get("framework")
    return str(name or "measured profile")


#: which cross-validated error band each latency metric's interval comes from
_BAND_OF = {"ttft": "ttft", "tpot": "tpot", "itl": "tpot"}


def add_intervals(result: dict[str, Any], bands: dict[str, Any]) -> None:
    """``mean_<metric>_ms_low`` / ``_high`` beside each mean (the interval of the
    calibration's cross-validated errors, :mod:`calibration.uncertainty`) and the bands
    themselves under ``error_bands``. The end-to-end latency's: its first token's
    interval plus the rest of it scaled as TPOT's."""
    if not bands:
        return
    for metric, band_name in _BAND_OF.items():
        key = f"mean_{metric}_ms"
        if key in result and band_name in bands:
            result[f"{key}_low"], result[f"{key}_high"] = bands[band_name].interval(result[key])
    if {"mean_e2el_ms", "mean_ttft_ms_low"} <= result.keys() and "tpot" in bands:
        rest = result["mean_e2el_ms"] - result["mean_ttft_ms"]
        low, high = bands["tpot"].interval(rest)
        result["mean_e2el_ms_low"] = result["mean_ttft_ms_low"] + low
        result["mean_e2el_ms_high"] = result["mean_ttft_ms_high"] + high
    result["error_bands"] = {k: b.to_dict() for k, b in bands.items()}


def _max_concurrency(requests: list[Request]) -> int:
    """vLLM's ``max_concurrent_requests``: the most requests in flight in any one-second
    bucket from the first send (a request counts in every bucket from its send's to its
    completion's, both included)."""
    done = [r for r in requests if r.status == "finished"]
    if not done:
        return 0
    t0 = min(r.arrival_s for r in requests)
    first = np.array([int(r.arrival_s - t0) for r in done])
    last = np.array([int(r.finished_s - t0) for r in done])
    counts = np.zeros(int(last.max()) + 2, dtype=np.int64)
    np.add.at(counts, first, 1)
    np.add.at(counts, last + 1, -1)
    return int(np.cumsum(counts).max())


def _max_output_tokens_per_s(res: BenchServeResult, done: list[Request], t0: float) -> float:
    """vLLM's ``max_output_tokens_per_s``: the most output tokens (first ones included) that
    arrive in any one-second bucket from the first send."""
    times, weights = res.recorder.later_token_times()
    firsts = np.array([r.first_token_s for r in done], dtype=float)
    all_t = np.concatenate([times, firsts])
    all_w = np.concatenate([weights, np.ones(firsts.size, np.int64)])
    if all_t.size == 0:
        return 0.0
    buckets = np.floor(all_t - t0).astype(np.int64)  # vLLM: int(token_time - first send)
    return float(np.bincount(buckets, weights=all_w).max())


#: the section titles of vLLM's text result, by metric
_TITLES = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2el": "End-to-end Latency",
}


def text_report(
    out: dict[str, Any], metrics: tuple[str, ...], percentiles: tuple[float, ...]
) -> list[str]:
    """``vllm bench serve``'s text result of :func:`vllm_result`'s ``out`` (its lines),
    then the simulated server it ran on."""
    lines = [f"{' Serving Benchmark Result (simulated) ':=^60}"]
    lines += [f"{label:<40}{value!s:<20}" for label, value in _total_rows(out)]
    stats = ["mean", "median", *(percentile_key(q) for q in percentiles)]
    for key in metrics:
        lines.append(f"{_TITLES[key]:-^60}")
        for stat in stats:
            name = f"{stat.capitalize()} {key.upper()} (ms):"
            value = out[f"{stat}_{key}_ms"]
            low, high = out.get(f"{stat}_{key}_ms_low"), out.get(f"{stat}_{key}_ms_high")
            band = f"  [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
            lines.append(f"{name:<40}{value:<20.2f}{band}")
    lines.append("=" * 60)
    if "error_bands" in out:
        level = next(iter(out["error_bands"].values()))["level"]
        lines.append(
            f"[low, high]: {level:.0%} interval from the calibration's errors on models and GPUs"
            " it was not fitted to (comem calibrate report)"
        )
        if out.get("error_bands_caveat"):
            lines.append(f"caveat: {out['error_bands_caveat']}")
    return [*lines, *_server_lines(out)]


def _total_rows(out: dict[str, Any]) -> list[tuple[str, Any]]:
    """The counts and throughputs of vLLM's text result, labelled as vLLM labels them."""
    return [
        ("Successful requests:", out["completed"]),
        ("Failed requests:", out["failed"]),
        ("Maximum request concurrency:", out["max_concurrency"]),
        ("Benchmark duration (s):", f"{out['duration']:.2f}"),
        ("Total input tokens:", out["total_input_tokens"]),
        ("Total generated tokens:", out["total_output_tokens"]),
        ("Request throughput (req/s):", f"{out['request_throughput']:.2f}"),
        *(
            [("Request goodput (req/s):", f"{out['request_goodput']:.2f}")]
            if "request_goodput" in out
            else []
        ),
        ("Output token throughput (tok/s):", f"{out['output_throughput']:.2f}"),
        ("Peak output token throughput (tok/s):", f"{out['max_output_tokens_per_s']:.2f}"),
        ("Peak concurrent requests:", out["max_concurrent_requests"]),
        ("Total token throughput (tok/s):", f"{out['total_token_throughput']:.2f}"),
    ]


def _server_lines(out: dict[str, Any]) -> list[str]:
    """The simulated server in two lines: what it is, and what the run did to it."""
    sim = out["simulator"]
    sched = {True: "async scheduling", False: "sync scheduling"}.get(sim["async_scheduling"], "")
    return [
        f"simulated server: {out['model_id']} on"
        f" {sim['tp'] * sim.get('data_parallel_size', 1)} x {sim['gpu']} (TP{sim['tp']}"
        f"{', DP' + str(sim['data_parallel_size']) if 'data_parallel_size' in sim else ''}"
        f"{', EP' if sim['expert_parallel'] else ''}), {sim['dtype']}, {sched},"
        f"{_spec_words(sim)}"
        f" framework overhead {sim['overhead']}",
        f"preemptions {out['preemptions']}, {sim['iterations']} engine iterations,"
        f" KV cache {sim['kv_cache_blocks']} blocks",
    ]


def _spec_words(sim: dict[str, Any]) -> str:
    """The simulated server's speculative decoding, if any, for its one-line description."""
    k = sim.get("num_speculative_tokens")
    if not k:
        return ""
    return f" MTP {k} drafts/step (acceptance {sim['spec_acceptance_rate']}),"
