"""``comem bench-serve``: the simulated ``vllm bench serve`` (random dataset).

Same load, same flags, same result names as vLLM's benchmark (``VLLM_FACTS.md``
section 6, vLLM 0.12 / 0.19 ``benchmarks/serve.py``), so a user who knows one knows the
other and can put a simulated result file next to a measured one:

- ``num_prompts`` requests; input and output lengths uniform integers in
  ``[floor(L(1 - r)), ceil(L(1 + r))]`` (``--random-range-ratio`` r, output >= 1; with
  ``--random-range-semantics below``, ``[int(r L), L]`` as clients forked from vLLM's
  ``benchmark_serving.py`` <= 0.7 draw them),
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
from functools import cached_property
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
    #: How the ratio r spreads a length L. ``symmetric``: uniform in [L(1 - r), L(1 + r)],
    #: ``vllm bench serve`` since v0.8 (``benchmark_dataset.py`` of the 0.8.5 sdist). ``below``:
    #: uniform in [r L, L], r the shortest fraction, so the mean is (1 + r) L / 2: vLLM's
    #: ``benchmarks/benchmark_serving.py`` up to v0.7 (``sample_random_requests`` of the
    #: 0.6.3 sdist, where r = 1 meant exact lengths) and the clients forked from it.
    random_range_semantics: Literal["symmetric", "below"] = Field(
        default="symmetric",
        description="how --random-range-ratio r spreads a length L: symmetric, [L(1-r), L(1+r)]"
        " (vllm bench serve >= 0.8), or below, [r L, L] (benchmark_serving.py <= 0.7 and its"
        " forks) [{default}]",
    )
    #: tokens every prompt starts with (the same tokens), before its drawn input
    random_prefix_len: TokensOrZero = Field(
        default=0,
        description="tokens every prompt starts with, the same for all (with prefix caching,"
        " computed once) [{default}]",
    )
    #: service-level objectives in ms (``--goodput ttft:500``): ``request_goodput``
    goodput: dict[Literal["ttft", "tpot", "e2el"], PositiveMs] = Field(default_factory=dict)
    #: the client's --backend, reported as given (what the user asked for)
    backend: Literal["vllm", "openai", "openai-chat"] = Field(
        default="vllm", description="reported as given in the result's backend"
    )
    #: Where the client stops TTFT and how it counts output tokens. ``first-chunk``: the
    #: first streamed chunk (``vllm bench serve``: on the chat endpoint the role chunk that
    #: comes with the first token), tokens as the server counts them. ``first-text``
    #: (aiperf, ``calibration.serving.SILICON_ASSUMPTIONS``): the first chunk with text or
    #: reasoning text, tokens re-counted from the text, so a model's silent header tokens
    #: (gpt-oss's harmony header: ``ModelSpec.stream_silent_tokens``) are in TTFT, not in
    #: the output. ITL's gaps are the server's either way (every token).
    ttft_at: Literal["first-chunk", "first-text"] = Field(
        default="first-chunk",
        description="where TTFT ends: the first streamed chunk (vllm bench serve) or the first"
        " chunk with text (aiperf; gpt-oss: after its 3-token harmony header) [{default}]",
    )
    #: requests per second; ``inf`` sends every request at once
    request_rate: float = Field(default=math.inf, gt=0.0, description="req/s [{default}]")
    #: the Gamma shape of the gaps (1: Poisson); below 0.01 most gaps are exactly 0.0
    #: in float64, so the rescaling to ``num_prompts / rate`` has nothing to scale
    burstiness: float = Field(
        default=1.0, ge=0.01, allow_inf_nan=False, description="Gamma shape [1: Poisson]"
    )
    max_concurrency: PositiveInt | None = Field(
        default=None, description="requests in flight at most"
    )
    seed: NonNegativeInt = 0
    #: How a closed loop (rate ``inf`` with ``max_concurrency`` C) starts; see
    #: :func:`first_sends`. ``burst`` (vLLM as run): the first C requests at t = 0, as
    #: ``vllm bench serve`` sends them; ``staggered``: spread evenly over one request's
    #: duration, the desynchronized steady state.
    closed_loop_start: Literal["burst", "staggered"] = Field(
        default="burst",
        description="with --max-concurrency and rate inf: the first wave sent at once, as vLLM"
        " does (identical lengths then stay in lockstep) [burst], or spread over one request"
        " (a desynchronized steady state; the first wave is left out as warm-up)",
    )
    #: Requests left out of the statistics, counted from the first sent (the ramp-up of a
    #: staggered start): ``None`` means C for a staggered closed loop, else 0.
    warmup_requests: NonNegativeInt | None = Field(
        default=None,
        description="first requests left out of the latency statistics"
        " [staggered: max-concurrency, else 0]",
    )
    #: Mean seconds a closed-loop client takes between the end of one request and the send
    #: of its next (its own HTTP and bookkeeping), drawn per request from an exponential
    #: distribution (seeded by ``seed``): the jitter that desynchronizes clients whose
    #: requests finished in the same iteration. 0: the ideal client, as before.
    client_issue_delay_s: float = Field(
        default=0.0,
        ge=0.0,
        le=60.0,
        allow_inf_nan=False,
        description="mean seconds a closed-loop client takes to send its next request"
        " (exponential, seeded): the jitter that desynchronizes clients [0: ideal client]",
        json_schema_extra={"flags": ["--client-issue-delay"], "metavar": "S"},
    )

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
    """Input and output lengths of vLLM's random dataset (no special tokens), spread as
    ``random_range_semantics`` says."""
    r = cfg.random_range_ratio
    below = cfg.random_range_semantics == "below"

    def draw(mean: int, low_min: int) -> np.ndarray:
        if below:  # benchmark_serving.py <= 0.7: randint(int(L * r), L + 1)
            lo, hi = max(low_min, int(mean * r)), mean
        else:
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

    @cached_property
    def silent_tokens(self) -> int:
        """Tokens each reply generates before a ``first-text`` client sees any text: the
        model's :attr:`~calibration.model_spec.ModelSpec.stream_silent_tokens` (gpt-oss's
        harmony header), else 0 (looked up once per run, read per request)."""
        if self.config.ttft_at != "first-text":
            return 0
        model = getattr(self.engine.latency, "model", None)
        if model is None:  # a measured profile: the registry's model of the engine's name
            from calibration.errors import ComemInputError
            from calibration.registry import get_model

            try:
                model = get_model(self.config.engine.model)
            except ComemInputError:
                return 0
        return int(getattr(model, "stream_silent_tokens", 0))

    def shown_tokens(self, req: Request) -> int:
        """Output tokens of ``req`` as the client counts them (without the silent ones)."""
        return max(req.generated - self.silent_tokens, 0)

    def silent_after_first(self, req: Request) -> int:
        """Of ``req``'s tokens after its first sampled one, how many the client waits for
        before it sees text (:attr:`silent_tokens`, fewer when the reply ends sooner)."""
        return min(self.silent_tokens, max(req.generated - 1, 0))

    def visible_first_token_s(self, req: Request) -> float:
        """When the client sees ``req``'s first text: :meth:`silent_after_first` tokens
        after its first sampled one, at the request's mean pace (its tokens are not timed
        one by one; a request that ends sooner shows its first text at its end)."""
        k = self.silent_after_first(req)
        if k == 0:
            return req.first_token_s
        pace = (req.finished_s - req.first_token_s) / (req.generated - 1)
        return req.first_token_s + k * pace

    def to_vllm_json(
        self,
        detailed: bool = False,
        metrics: tuple[str, ...] = PERCENTILE_METRICS,
        percentiles: tuple[float, ...] = (99.0,),
    ) -> dict[str, Any]:
        """The result file ``vllm bench serve --save-result`` writes, with the same names
        (``--percentile-metrics``: ``metrics``; ``--metric-percentiles``: ``percentiles``)."""
        from sim.bench_serve_result import vllm_result

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
    streams = _prompt_streams(cfg, getattr(engine, "replicas", [engine]))
    client = _Client(cfg, env, engine, (inputs, outputs), streams, progress)
    client.start(sends)
    with simulation_gc():
        env.run()
    client.requests.sort(key=lambda r: r.tag)
    return BenchServeResult(cfg, client.requests, engine, recorder)


def _prompt_streams(
    cfg: BenchServeConfig, ranks: list[Any]
) -> tuple[StreamSpace | None, Any | None]:
    """The token streams of the prompts, and the shared prefix's (None: none).

    Every prompt is its own content. With prefix caching vLLM hashes its blocks; no
    other request shares them, but a preempted request finds its own freed blocks again
    when it is re-admitted (those not evicted meanwhile), and a CPU offload tier stores
    and reloads them. With offload each request has its own stream from the start;
    without, the scheduler gives one to a request when it is preempted (the same hits,
    without keying the blocks of requests that never are)."""
    e = cfg.engine
    shared = e.enable_prefix_caching and cfg.random_prefix_len > 0
    own = e.enable_prefix_caching and (e.kv_offloading_size or shared)
    streams = StreamSpace() if own else None
    if e.enable_prefix_caching and streams is None:
        for rank in ranks:
            rank.scheduler.private_streams = StreamSpace()
    # --random-prefix-len: every prompt's first tokens are one stream's, shared
    prefix = streams.new() if streams is not None and shared else None
    return streams, prefix


class _Client:
    """``vllm bench serve``'s client: sends each request at its time, or, with
    ``max_concurrency``, when one of that many slots is free (a closed loop with rate
    ``inf``); a closed-loop client may take ``client_issue_delay_s`` to send its next."""

    def __init__(
        self,
        cfg: BenchServeConfig,
        env: simpy.Environment,
        engine: AnyEngine,
        lengths: tuple[np.ndarray, np.ndarray],
        streams: tuple[StreamSpace | None, Any | None],
        progress: Callable[[], None] | None,
    ) -> None:
        self.cfg, self.env, self.engine, self.progress = cfg, env, engine, progress
        #: each request's input and output tokens, by its index
        self.inputs, self.outputs = lengths
        #: the prompts' token streams, and the prefix every prompt shares (None: none)
        self.streams, self.prefix = streams
        self.requests: list[Request] = []
        self.pending: deque[int] = deque()
        self.in_flight = 0
        # a client's issue delays have their own stream: lengths and arrivals stay as without
        self.delays = np.random.default_rng([cfg.seed, 1]) if cfg.client_issue_delay_s > 0 else None

    def start(self, sends: np.ndarray) -> None:
        """Schedule the sends: at the arrival times, or a closed loop's first wave."""
        cfg = self.cfg
        if not math.isinf(cfg.request_rate):
            self.env.process(self._dispatch(sends))
            return
        starts = (
            first_sends(cfg, self.engine.latency)
            if cfg.max_concurrency is not None
            else np.zeros(0)
        )
        if starts.size and starts[-1] > 0:
            self.env.process(self._staggered(starts))
        else:
            for i in range(cfg.num_prompts):
                self._arrive(i)

    def _send(self, i: int) -> None:
        self.in_flight += 1
        stream = None
        if self.streams is not None:
            prefix_len = self.cfg.random_prefix_len if self.prefix else 0
            stream = self.streams.new(self.prefix, prefix_len)
        req = self.engine.submit(int(self.inputs[i]), int(self.outputs[i]), stream, tag=i)
        self.requests.append(req)
        req.done.callbacks.append(self._finished)

    def _finished(self, _: simpy.Event) -> None:
        self.in_flight -= 1
        if self.progress is not None:
            self.progress()
        if not self.pending:
            return
        nxt = self.pending.popleft()
        if self.delays is None:
            self._send(nxt)
        else:  # the client's slot stays taken while it prepares the next request
            self.in_flight += 1
            delay = float(self.delays.exponential(self.cfg.client_issue_delay_s))
            self.env.timeout(delay, nxt).callbacks.append(self._send_after_delay)

    def _send_after_delay(self, event: simpy.Event) -> None:
        self.in_flight -= 1
        self._send(cast(int, event.value))

    def _arrive(self, i: int) -> None:
        limit = self.cfg.max_concurrency
        if limit is None or self.in_flight < limit:
            self._send(i)
        else:
            self.pending.append(i)

    def _dispatch(self, sends: np.ndarray) -> Any:
        now = 0.0
        for i, t in enumerate(sends):
            if t > now:
                yield self.env.timeout(float(t) - now)
                now = float(t)
            self._arrive(i)

    def _staggered(self, starts: np.ndarray) -> Any:
        # the later requests wait for a client from the start, so that a request done
        # before the last client started still hands its client the next one
        self.pending.extend(range(starts.size, self.cfg.num_prompts))
        now = 0.0
        for i, t in enumerate(starts):
            if t > now:
                yield self.env.timeout(float(t) - now)
                now = float(t)
            self._send(i)


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
