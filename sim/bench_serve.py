"""``comem bench-serve``: the simulated ``vllm bench serve`` (random dataset).

Same load, same flags, same result names as vLLM's benchmark (``VLLM_FACTS.md``
section 6, vLLM 0.12 / 0.19 ``benchmarks/serve.py``), so a user who knows one knows the
other and can put a simulated result file next to a measured one:

- ``num_prompts`` requests; input and output lengths uniform integers in
  ``[floor(L(1 - r)), ceil(L(1 + r))]`` (``--random-range-ratio`` r, output >= 1),
  prompts sharing no prefix but the ``--random-prefix-len`` tokens every prompt starts
  with (added to its drawn length; with prefix caching, computed once and then hit);
  every request generates exactly its output length (``--ignore-eos``).
- ``--goodput ttft:MS tpot:MS e2el:MS``: ``request_goodput``, the requests per second
  that met every given objective, as vLLM counts it.
- Arrivals: ``--request-rate inf`` sends all at once; a finite rate draws gaps from a
  Gamma distribution (shape ``burstiness``, scale ``1 / (rate * burstiness)``; 1 =
  Poisson) and rescales them so the last arrival is at ``num_prompts / rate``.
  ``--max-concurrency`` is a semaphore taken after the arrival time (with rate ``inf``,
  a closed loop of that many clients). How a closed loop starts is a stated choice
  (``closed_loop_start``, :func:`first_sends`): ``burst`` sends the first wave at once
  as vLLM does (requests of identical lengths then stay in lockstep, which real clients
  do not quite), ``staggered`` spreads it over one request and leaves it out of the
  statistics (a desynchronized steady state).
- Metrics, from the moment a request is sent: TTFT, E2EL, TPOT = (E2EL - TTFT) /
  (output - 1) for outputs > 1, ITL = every gap between consecutive tokens, pooled;
  throughputs over the duration from the first send to the last completion.

What the simulator cannot give, it says: there is no tokenizer (prompt lengths are the
token counts asked for), and a token gap that spans a preemption is counted at the
duration of the iteration that produced it (``itl_tokens_after_preemption`` says how
many such gaps there are).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

import numpy as np
import simpy
from pydantic import ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from calibration import limits
from calibration.inputs import MAX_SECONDS, InputModel, Tokens, TokensOrZero
from engine.kv_cache import StreamSpace
from sim.config import EngineConfig
from sim.deployment import AnyEngine, build_engines, simulation_gc
from sim.engine_latency import IterationLatency
from sim.kv_geometry import check_engine
from sim.metrics import MetricsRecorder
from sim.request import Request

PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
#: a goodput objective: milliseconds, finite and positive
PositiveMs = Annotated[float, Field(gt=0.0, le=MAX_SECONDS * 1000.0, allow_inf_nan=False)]


class BenchServeConfig(InputModel):
    """One ``vllm bench serve`` run against one simulated server (vLLM's defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineConfig = Field(default_factory=EngineConfig)
    num_prompts: PositiveInt = 1000
    random_input_len: Tokens = 1024
    random_output_len: Tokens = 128
    random_range_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: tokens every prompt starts with (the same tokens), before its drawn input
    random_prefix_len: TokensOrZero = 0
    #: service-level objectives in ms (``--goodput ttft:500``): ``request_goodput``
    goodput: dict[Literal["ttft", "tpot", "e2el"], PositiveMs] = Field(default_factory=dict)
    #: the client's --backend, reported as given (what the user asked for)
    backend: Literal["vllm", "openai", "openai-chat"] = "vllm"
    #: requests per second; ``inf`` sends every request at once
    request_rate: float = Field(default=math.inf, gt=0.0)
    #: the Gamma shape of the gaps (1: Poisson); below 0.01 most gaps are exactly 0.0
    #: in float64, so the rescaling to ``num_prompts / rate`` has nothing to scale
    burstiness: float = Field(default=1.0, ge=0.01, allow_inf_nan=False)
    max_concurrency: PositiveInt | None = None
    seed: NonNegativeInt = 0
    #: How a closed loop (rate ``inf`` with ``max_concurrency`` C) starts; see
    #: :func:`first_sends`. ``burst`` (vLLM as run): the first C requests at t = 0, as
    #: ``vllm bench serve`` sends them; ``staggered``: spread evenly over one request's
    #: duration, the desynchronized steady state.
    closed_loop_start: Literal["burst", "staggered"] = "burst"
    #: Requests left out of the statistics, counted from the first sent (the ramp-up of a
    #: staggered start): ``None`` means C for a staggered closed loop, else 0.
    warmup_requests: NonNegativeInt | None = None
    #: Mean seconds a closed-loop client takes between the end of one request and the send
    #: of its next (its own HTTP and bookkeeping), drawn per request from an exponential
    #: distribution (seeded by ``seed``): the jitter that desynchronizes clients whose
    #: requests finished in the same iteration. 0: the ideal client, as before.
    client_issue_delay_s: float = Field(default=0.0, ge=0.0, le=60.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _finite(self) -> BenchServeConfig:
        closed = math.isinf(self.request_rate) and self.max_concurrency is not None
        if self.client_issue_delay_s > 0 and not closed:
            raise ValueError(
                "client_issue_delay_s needs a closed loop (--max-concurrency with request"
                " rate inf): with an arrival rate the send times are the rate's"
            )
        if self.warmup_requests is not None and self.warmup_requests >= self.num_prompts:
            raise ValueError(
                f"warmup_requests ({self.warmup_requests}) leaves none of the"
                f" {self.num_prompts} prompts to measure"
            )
        rate = self.request_rate
        if math.isnan(rate) or (math.isfinite(rate) and rate < 1.0 / MAX_SECONDS):
            raise ValueError(
                f"request_rate must be inf or a number >= {1.0 / MAX_SECONDS:g} (one request"
                f" per {MAX_SECONDS:g} s), got {rate}"
            )
        return self


def random_lengths(
    cfg: BenchServeConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Input and output lengths of vLLM's random dataset (no special tokens)."""
    r = cfg.random_range_ratio

    def draw(mean: int, low_min: int) -> np.ndarray:
        lo = max(low_min, math.floor(mean * (1 - r)))
        hi = max(lo, math.ceil(mean * (1 + r)))
        return rng.integers(lo, hi + 1, cfg.num_prompts)

    inputs = draw(cfg.random_input_len, 1) + cfg.random_prefix_len
    return inputs, draw(cfg.random_output_len, 1)


def arrival_times(cfg: BenchServeConfig, rng: np.random.Generator) -> np.ndarray:
    """Send times of the requests, seconds from the start (vLLM's request generator)."""
    n = cfg.num_prompts
    if math.isinf(cfg.request_rate):
        return np.zeros(n)
    theta = 1.0 / (cfg.request_rate * cfg.burstiness)
    gaps = rng.gamma(cfg.burstiness, theta, n)
    times = np.cumsum(gaps)
    if not times[-1] > 0:  # every gap drew 0.0: a burst at t = 0
        return np.zeros(n)
    # vLLM rescales the delays so the last request goes out at num_prompts / rate
    return times * ((n / cfg.request_rate) / times[-1])


def request_duration_estimate(
    latency: IterationLatency, concurrency: int, input_len: int, output_len: int, budget: int
) -> float:
    """Seconds one request of a closed loop of ``concurrency`` lasts, from the latency model
    alone: its prompt in chunks of at most ``budget`` tokens beside the other requests'
    decodes, then ``output_len - 1`` decode iterations of the whole batch at the mean
    context. Only the spacing of a staggered start uses it: it need not be exact."""
    others = concurrency - 1
    context = input_len + output_len // 2
    t = 0.0
    done = 0
    while done < input_len:
        chunk = min(budget - others, input_len - done) if budget > others else input_len
        t += latency.iteration_time_of(others, others * context, [chunk], [done])
        done += chunk
    step = latency.iteration_time_of(concurrency, concurrency * context)
    return t + max(output_len - 1, 0) * step


def first_sends(cfg: BenchServeConfig, latency: IterationLatency) -> np.ndarray:
    """Send times of a closed loop's first ``max_concurrency`` requests.

    ``vllm bench serve`` sends them together (``burst``, the default). Requests that are
    prefilled in one iteration then finish in one iteration, so with identical lengths a
    simulated server keeps such groups in lockstep forever: each wave's prompts arrive
    together and wait for each other's prefill. ``staggered`` starts the clients at
    ``k D / C`` (D: :func:`request_duration_estimate`), clients spread evenly over one
    request, and leaves those first C requests (the ramp-up) out of the statistics
    (``warmup_requests``): the fully desynchronized steady state, where a prompt meets
    the others' decodes only.

    Real runs lie between the two: on the shared H100 serving rows, mean TTFT is below
    lockstep (Llama-3.1-70B fp8 TP2, 8 clients, 1024-token prompts: 150 ms measured,
    0.5 s in lockstep) and above the steady state (about 0.1 s), growing with the
    clients as a burst first wave among 10 x C requests does. Varied lengths
    (``random_range_ratio`` > 0) desynchronize clients after that first wave by
    themselves, as in real runs; identical lengths with ``burst`` are the upper
    envelope, ``staggered`` the lower one.
    """
    c = min(int(cfg.max_concurrency or cfg.num_prompts), cfg.num_prompts)
    if cfg.closed_loop_start == "burst" or c <= 1:
        return np.zeros(c)
    e = cfg.engine
    span = request_duration_estimate(
        latency, c, cfg.random_input_len, cfg.random_output_len, e.max_num_batched_tokens
    )
    return np.arange(c) * (span / c)


def warmup_count(cfg: BenchServeConfig) -> int:
    """Requests (first sent) left out of the statistics (see ``warmup_requests``)."""
    if cfg.warmup_requests is not None:
        return min(cfg.warmup_requests, cfg.num_prompts - 1)
    c = cfg.max_concurrency
    closed = math.isinf(cfg.request_rate) and c is not None
    if closed and c is not None and cfg.closed_loop_start == "staggered" and c < cfg.num_prompts:
        return int(c)
    return 0


@dataclass
class BenchServeResult:
    config: BenchServeConfig
    requests: list[Request]
    #: the server: one engine, or ``data_parallel_size`` ranks behind vLLM's DP load
    #: balancer (:class:`sim.data_parallel.ReplicatedEngine`, in lockstep for MoE models)
    engine: AnyEngine
    recorder: MetricsRecorder

    def to_vllm_json(
        self,
        detailed: bool = False,
        metrics: tuple[str, ...] = PERCENTILE_METRICS,
        percentiles: tuple[float, ...] = (99.0,),
    ) -> dict[str, Any]:
        """The result file ``vllm bench serve --save-result`` writes, with the same names
        (``--percentile-metrics``: ``metrics``; ``--metric-percentiles``: ``percentiles``)."""
        return vllm_result(self, detailed, metrics, percentiles)


def check_config(cfg: BenchServeConfig, latency: IterationLatency | None = None) -> None:
    """Refuse a benchmark above the budgets (:mod:`calibration.limits`), or whose server
    cannot exist, before anything is drawn or simulated."""
    limits.check(limits.REQUESTS, cfg.num_prompts, "--num-prompts")
    eng = cfg.engine
    if eng.stepping == "iteration":
        limits.check(
            limits.ITERATION_TOKENS,
            cfg.num_prompts * cfg.random_output_len,
            "--stepping iteration: --num-prompts x --random-output-len",
        )
    if latency is None:
        check_engine(eng)


def run_bench_serve(
    cfg: BenchServeConfig,
    latency: IterationLatency | None = None,
    progress: Callable[[], None] | None = None,
) -> BenchServeResult:
    """Simulate the benchmark to its last completion (``progress`` is called per request)."""
    check_config(cfg, latency)
    rng = np.random.default_rng(cfg.seed)
    inputs, outputs = random_lengths(cfg, rng)
    sends = arrival_times(cfg, rng)
    env = simpy.Environment()
    recorder = MetricsRecorder(itl_samples=True)
    # --data-parallel-size N: N ranks, each with its own scheduler and KV cache; a new
    # request goes to the rank with the lowest 4 x waiting + running (vLLM's DP client)
    engine = build_engines(
        env, {"server": cfg.engine}, {"server": latency} if latency else None, recorder
    )["server"]
    ranks = getattr(engine, "replicas", [engine])
    requests: list[Request] = []
    limit = cfg.max_concurrency
    pending: deque[int] = deque()
    in_flight = 0
    # every prompt is its own content. With prefix caching vLLM hashes its blocks; no
    # other request shares them, but a preempted request finds its own freed blocks again
    # when it is re-admitted (those not evicted meanwhile), and a CPU offload tier stores
    # and reloads them. With offload each request has its own stream from the start;
    # without, the scheduler gives one to a request when it is preempted (the same hits,
    # without keying the blocks of requests that never are)
    e = cfg.engine
    shared = e.enable_prefix_caching and cfg.random_prefix_len > 0
    own = e.enable_prefix_caching and (e.kv_offloading_size or shared)
    streams = StreamSpace() if own else None
    if e.enable_prefix_caching and streams is None:
        for rank in ranks:
            rank.scheduler.private_streams = StreamSpace()
    # --random-prefix-len: every prompt's first tokens are one stream's, shared
    prefix = streams.new() if streams is not None and shared else None

    def send(i: int) -> None:
        nonlocal in_flight
        in_flight += 1
        stream = None
        if streams is not None:
            stream = streams.new(prefix, cfg.random_prefix_len if prefix else 0)
        req = engine.submit(int(inputs[i]), int(outputs[i]), stream, tag=i)
        requests.append(req)
        req.done.callbacks.append(finished)

    # a client's issue delays have their own stream: lengths and arrivals stay as without
    delays = np.random.default_rng([cfg.seed, 1]) if cfg.client_issue_delay_s > 0 else None

    def finished(_: simpy.Event) -> None:
        nonlocal in_flight
        in_flight -= 1
        if progress is not None:
            progress()
        if not pending:
            return
        nxt = pending.popleft()
        if delays is None:
            send(nxt)
        else:  # the client's slot stays taken while it prepares the next request
            in_flight += 1
            wait = env.timeout(float(delays.exponential(cfg.client_issue_delay_s)), nxt)
            wait.callbacks.append(_send_after_delay)

    def _send_after_delay(event: simpy.Event) -> None:
        nonlocal in_flight
        in_flight -= 1
        send(cast(int, event.value))

    def arrive(i: int) -> None:
        if limit is None or in_flight < limit:
            send(i)
        else:
            pending.append(i)

    def dispatcher() -> Any:
        now = 0.0
        for i, t in enumerate(sends):
            if t > now:
                yield env.timeout(float(t) - now)
                now = float(t)
            arrive(i)

    def staggered(starts: np.ndarray) -> Any:
        # the later requests wait for a client from the start, so that a request done
        # before the last client started still hands its client the next one
        pending.extend(range(starts.size, cfg.num_prompts))
        now = 0.0
        for i, t in enumerate(starts):
            if t > now:
                yield env.timeout(float(t) - now)
                now = float(t)
            send(i)

    if math.isinf(cfg.request_rate):
        starts = (
            first_sends(cfg, engine.latency) if cfg.max_concurrency is not None else np.zeros(0)
        )
        if starts.size and starts[-1] > 0:
            env.process(staggered(starts))
        else:
            for i in range(cfg.num_prompts):
                arrive(i)
    else:
        env.process(dispatcher())
    with simulation_gc():
        env.run()
    requests.sort(key=lambda r: r.tag)
    return BenchServeResult(cfg, requests, engine, recorder)


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
    failed = [r for r in res.requests if r.status != "finished"]
    start = min((r.arrival_s for r in res.requests), default=0.0)
    end = max((r.finished_s for r in done), default=start)
    duration = end - start
    out_tokens = np.array([r.generated for r in done], dtype=np.int64)
    in_tokens = np.array([r.prompt_tokens for r in done], dtype=np.int64)
    # latency statistics leave the warm-up requests (the first sent) out
    warmup = warmup_count(cfg)
    measured = [r for r in done if r.tag >= warmup]
    m_out = np.array([r.generated for r in measured], dtype=np.int64)
    ttft = np.array([r.first_token_s - r.arrival_s for r in measured])
    e2el = np.array([r.finished_s - r.arrival_s for r in measured])
    multi = m_out > 1
    tpot = (e2el[multi] - ttft[multi]) / (m_out[multi] - 1)
    itl_values, itl_weights = res.recorder.itl_arrays()
    result: dict[str, Any] = {
        "backend": cfg.backend,
        "model_id": cfg.engine.model,
        "tokenizer_id": None,
        "num_prompts": cfg.num_prompts,
        "request_rate": "inf" if math.isinf(cfg.request_rate) else cfg.request_rate,
        "burstiness": cfg.burstiness,
        "max_concurrency": cfg.max_concurrency,
        "duration": duration,
        "completed": len(done),
        "failed": len(failed),
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
        "simulator": {
            "gpu": cfg.engine.gpu,
            "tp": cfg.engine.tp,
            "dtype": cfg.engine.dtype,
            "max_num_batched_tokens": cfg.engine.max_num_batched_tokens,
            "max_num_seqs": cfg.engine.max_num_seqs,
            "kv_cache_blocks": res.engine.total_blocks,
            "iterations": res.engine.iterations,
            "stepping": cfg.engine.stepping,
            "expert_parallel": cfg.engine.enable_expert_parallel,
            **_dp_fields(cfg.engine),
            **_spec_fields(cfg.engine),
            "async_scheduling": getattr(res.engine.latency, "async_scheduling", None),
            "overhead": _overhead_name(res.engine.latency),
        },
    }
    if cfg.goodput:
        result["request_goodput"] = _goodput(cfg, done, duration)
    samples = {"ttft": ttft, "tpot": tpot, "e2el": e2el}
    qs = (50.0, *percentiles)
    for name in metrics:
        if name == "itl":
            if itl_weights.sum() > 0:
                total = float(itl_weights.sum())
                mean = float((itl_values * itl_weights).sum() / total)
                var = float((itl_weights * (itl_values - mean) ** 2).sum() / total)
                median, *tail = _weighted_percentiles(itl_values, itl_weights, qs)
                stats = (mean, median, math.sqrt(var), *tail)
            else:
                stats = (math.nan,) * (3 + len(percentiles))
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
        keys = ("mean", "median", "std", *(percentile_key(q) for q in percentiles))
        for key, value in zip(keys, stats, strict=True):
            result[f"{key}_{name}_ms"] = value * 1000.0
    add_intervals(result, getattr(res.engine.latency, "error_bands", {}))
    caveat = getattr(res.engine.latency, "band_caveat", "")
    if caveat and "error_bands" in result:
        result["error_bands_caveat"] = caveat
    if detailed:
        result["input_lens"] = [r.prompt_tokens for r in res.requests]
        result["output_lens"] = [r.generated for r in res.requests]
        result["ttfts"] = [r.first_token_s - r.arrival_s for r in res.requests]
        result["start_times"] = [r.arrival_s for r in res.requests]
        result["errors"] = [r.reason for r in res.requests]
    return result


def _goodput(cfg: BenchServeConfig, done: list[Request], duration: float) -> float:
    """Requests per second that met every ``--goodput`` objective (vLLM's
    ``request_goodput``: over the completed requests and the benchmark's duration; TPOT
    of a one-token output is 0)."""
    if duration <= 0:
        return 0.0
    good = 0
    for r in done:
        ttft = r.first_token_s - r.arrival_s
        e2el = r.finished_s - r.arrival_s
        tpot = (e2el - ttft) / (r.generated - 1) if r.generated > 1 else 0.0
        values = {"ttft": ttft, "tpot": tpot, "e2el": e2el}
        good += all(values[k] * 1000.0 <= slo for k, slo in cfg.goodput.items())
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


#: ``vllm bench serve`` flags that do not change the simulation: flag -> (its nargs:
#: 0 for a switch, 1 for one value, "*" for several; why it changes nothing). Each is
#: accepted with this one-line note, so a real command line runs unchanged.
ACCEPTED_CLIENT_FLAGS: dict[str, tuple[int | str, str]] = {
    "--host": (1, "nothing is contacted: the server is simulated"),
    "--port": (1, "nothing is contacted: the server is simulated"),
    "--base-url": (1, "nothing is contacted: the server is simulated"),
    "--endpoint": (1, "nothing is contacted: the server is simulated"),
    "--header": ("*", "nothing is contacted: no HTTP headers are sent"),
    "--insecure": (0, "nothing is contacted: no TLS"),
    "--ready-check-timeout-sec": (1, "the simulated server is ready at once"),
    "--tokenizer": (1, "no tokenizer: prompt lengths are the token counts asked for"),
    "--tokenizer-mode": (1, "no tokenizer: prompt lengths are the token counts asked for"),
    "--trust-remote-code": (0, "no tokenizer or model code is loaded"),
    "--served-model-name": (1, "a name only: the model priced is --model"),
    "--label": (1, "a name only: it labels the result file"),
    "--metadata": ("*", "a note only: it is stored in the result file by vLLM"),
    "--request-id-prefix": (1, "request ids are not simulated"),
    "--disable-tqdm": (0, "progress goes to stderr; --json prints none"),
    "--num-warmups": (1, "the simulated server has no cold start to warm up"),
    "--temperature": (1, "sampling changes no length: every output runs to its length"),
    "--top-p": (1, "sampling changes no length: every output runs to its length"),
    "--top-k": (1, "sampling changes no length: every output runs to its length"),
    "--min-p": (1, "sampling changes no length: every output runs to its length"),
    "--disable-shuffle": (0, "the random dataset is drawn in order already"),
}


#: ``vllm bench serve`` flags that would change the result and are not simulated: flag ->
#: (nargs, why). Each is refused with its reason (one line, exit 2), not run wrongly.
REFUSED_CLIENT_FLAGS: dict[str, tuple[int | str, str]] = {
    "--ramp-up-strategy": (1, "a request rate that ramps over the run is not simulated"),
    "--ramp-up-start-rps": (1, "a request rate that ramps over the run is not simulated"),
    "--ramp-up-end-rps": (1, "a request rate that ramps over the run is not simulated"),
    "--use-beam-search": (0, "beam search is not simulated"),
    "--logprobs": (1, "returning logprobs is not priced"),
    "--dataset-path": (1, "only the random dataset is simulated (--dataset-name random)"),
    "--lora-modules": ("*", "LoRA adapters are not priced"),
    "--no-stream": (0, "only streaming requests are simulated"),
    "--append-result": (0, "--save-result writes a new file; appending is not supported"),
    "--extra-body": (1, "an extra request body may change the outputs: not simulated"),
}


def refused_flag(given: list[str]) -> str | None:
    """The one-line refusal of the first refused flag given (None: none given)."""
    if not given:
        return None
    flag = given[0]
    return (
        f"{flag}: {REFUSED_CLIENT_FLAGS[flag][1]} (comem bench-serve --help lists the flags taken)"
    )


def accepted_flag_notes(given: list[str]) -> list[str]:
    """One line per accepted flag the user gave."""
    return [
        f"{flag} does not change the simulation ({ACCEPTED_CLIENT_FLAGS[flag][1]})"
        for flag in given
    ]


def parse_goodput(items: list[str]) -> dict[str, float]:
    """``--goodput ttft:500 tpot:50``: objectives in ms, as vLLM reads them."""
    from calibration.errors import ComemInputError

    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or key not in ("ttft", "tpot", "e2el"):
            raise ComemInputError(
                f"--goodput: expected KEY:MILLISECONDS with KEY ttft, tpot or e2el, got {item!r}"
            )
        try:
            ms = float(value)
        except ValueError:
            raise ComemInputError(f"--goodput {key}: {value!r} is no number of ms") from None
        if not (math.isfinite(ms) and ms > 0):
            raise ComemInputError(f"--goodput {key}: must be a finite number of ms > 0")
        out[key] = ms
    return out
