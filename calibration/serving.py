"""Serving measurements: the rows of real ``vllm bench serve`` runs and what they leave
unsaid.

A :class:`ServingRow` is one measured closed-loop point (model, GPU, TP, concurrency,
lengths, mean TTFT and TPOT); :func:`load_serving_csv` and :func:`load_silicon_csv` read
them, one clear line per defect. A :class:`ServingSetup` is what a row does not state (the
server's and the client's flags), set per model by the project's stated assumptions
(:data:`SHARED_H100_ASSUMPTIONS`, :data:`SILICON_ASSUMPTIONS`, ``--assume``).
:func:`tpot_lower_bound` tells a row that physics rules out. The overhead fitted on these
rows is :mod:`calibration.serving_fit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from calibration.dtypes import check_dtype
from calibration.errors import ComemInputError
from calibration.registry import get_model

#: Columns a serving CSV must have (``shared/data/serving/README.md``).
SERVING_COLUMNS = ("model", "gpu", "dtype", "tp", "concurrency", "isl", "osl", "ttft_ms", "tpot_ms")

#: The first vLLM release that schedules asynchronously by default (``VLLM_FACTS.md``,
#: More facts A: the field defaults to False in v0.13.0, to None = on in v0.14.0).
ASYNC_SCHEDULING_SINCE = (0, 14)


def version_schedules_async(version: str) -> bool | None:
    """Whether vLLM ``version`` (``0.16.0``) schedules asynchronously by default; None
    when the version is unstated or unreadable."""
    text = version.strip().lower().removeprefix("vllm-").removeprefix("vllm")
    parts = text.lstrip("v").split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None
    return (major, minor) >= ASYNC_SCHEDULING_SINCE


@dataclass(frozen=True)
class ServingRow:
    """One measured closed-loop benchmark point: ``concurrency`` clients, each sending a
    request of ``isl`` prompt tokens for exactly ``osl`` output tokens, then the next."""

    model: str
    gpu: str
    dtype: str
    tp: int
    concurrency: int
    isl: int
    osl: int
    ttft_s: float
    tpot_s: float
    vllm_version: str = ""
    source_id: str = ""
    measured: str = ""
    #: vLLM's --enable-expert-parallel (MoE experts split over the TP GPUs)
    expert_parallel: bool = False

    @property
    def framework(self) -> str:
        """The framework name its fit is kept under: ``vllm-<version>``, or for an
        unstated version ``vllm-unstated-<year-month measured>``."""
        if self.vllm_version:
            return f"vllm-{self.vllm_version}"
        return "vllm-unstated" + (f"-{self.measured[:7]}" if self.measured else "")

    @property
    def label(self) -> str:
        return f"{self.model} {self.dtype} TP{self.tp} c{self.concurrency} {self.isl}x{self.osl}"


#: an assumption's whole number (``true`` is no count)
_Count = Annotated[int, Field(strict=True, ge=1, le=10**9)]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ServingSetup:
    """What a serving CSV does not say about a row: the server's flags and the client's.

    Defaults are ``vllm serve`` / ``vllm bench serve`` defaults on an H100 with the
    prefix cache off (random prompts share no prefix; a cache only costs hashing), a
    closed loop of ``prompts_per_client`` requests per client (InferenceX-style runs send
    10 x concurrency), vLLM 0.12's admission (``scheduler_reserve_full_isl`` off).
    """

    max_num_batched_tokens: _Count = 8192
    #: vLLM's --max-num-seqs, or ``concurrency``: each row's own client count, as
    #: aiconfigurator's launches set it (its ``batch_size`` column mapped to max-num-seqs).
    #: It sizes the sampler's profiling run, so it sets the KV cache's size too.
    max_num_seqs: _Count | Literal["concurrency"] = 1024
    enable_prefix_caching: StrictBool = False
    prompts_per_client: _Count = 10
    random_range_ratio: Annotated[float, Field(strict=True, ge=0.0, lt=1.0)] = 0.0
    #: how the client spread the lengths by that ratio (``BenchServeConfig``'s field):
    #: ``symmetric`` (vllm bench serve >= 0.8) or ``below`` (benchmark_serving.py <= 0.7)
    random_range_semantics: Literal["symmetric", "below"] = "symmetric"
    closed_loop_start: Literal["burst", "staggered"] = "burst"
    kv_cache_dtype: Literal["auto", "bf16", "fp8"] = "auto"
    fp8_gemm: Literal["auto", "block", "tensor"] = "auto"
    scheduler_reserve_full_isl: StrictBool = False
    #: mean seconds a closed-loop client takes to send its next request after one ends
    #: (exponential, seeded; ``bench-serve --client-issue-delay``): 0, the ideal client
    client_issue_delay_s: Annotated[
        float, Field(strict=True, ge=0.0, le=60.0, allow_inf_nan=False)
    ] = 0.0

    #: the client called the chat endpoint and timed TTFT as aiperf does, to the first
    #: streamed text: after a model's silent header tokens (gpt-oss:
    #: ``ModelSpec.stream_silent_tokens``; bench-serve ``--ttft-at first-text``)
    chat_endpoint: StrictBool = False
    #: tokens the chat template puts in front of every prompt (the default system message
    #: and the role markers; the client's prompt length counts only its own text): the
    #: same for every prompt, computed per prompt with the prefix cache off
    chat_template_tokens: Annotated[int, Field(strict=True, ge=0, le=100_000)] = 0

    #: vLLM's --async-scheduling; None: the row's version's default
    #: (:func:`version_schedules_async`), off when its version is unstated (such rows were
    #: measured in 2025, before v0.14)
    async_scheduling: StrictBool | None = None

    def seqs(self, row: ServingRow) -> int:
        """``row``'s --max-num-seqs under this setup."""
        return row.concurrency if self.max_num_seqs == "concurrency" else self.max_num_seqs

    def schedules_async(self, row: ServingRow) -> bool:
        """Whether ``row``'s server scheduled asynchronously, under this setup."""
        if self.async_scheduling is not None:
            return self.async_scheduling
        return bool(version_schedules_async(row.vllm_version))

    def describe(self) -> str:
        since = ".".join(map(str, ASYNC_SCHEDULING_SINCE))
        by_version = f"by version (on from {since}; unstated: off)"
        sched = {None: by_version, True: "on", False: "off"}[self.async_scheduling]
        return (
            f"async scheduling {sched}, budget {self.max_num_batched_tokens}, max-num-seqs"
            f" {'= clients' if self.max_num_seqs == 'concurrency' else self.max_num_seqs},"
            " prefix caching"
            f" {'on' if self.enable_prefix_caching else 'off'}, {self.prompts_per_client} x C"
            f" prompts, range ratio {self.random_range_ratio}"
            + (" (below: [r L, L])" if self.random_range_semantics == "below" else "")
            + f", {self.closed_loop_start} start,"
            f" KV {self.kv_cache_dtype}, fp8 GEMM {self.fp8_gemm}"
            + (
                f", client issue delay {self.client_issue_delay_s * 1e3:g} ms (exponential)"
                if self.client_issue_delay_s
                else ""
            )
            + (", chat endpoint (TTFT to the first streamed text)" if self.chat_endpoint else "")
            + (
                f", {self.chat_template_tokens} chat-template tokens a prompt"
                if self.chat_template_tokens
                else ""
            )
        )


#: The fastest memory-bound rows of the vLLM 0.19.0 H100 kernel tables (decode GEMMs with
#: m <= 16, decode attention at long KV) stream 3.07 TB/s of the datasheet's 3.35: no
#: decode step of vLLM reads its bytes faster than this share of the HBM bandwidth.
ACHIEVABLE_HBM_FRACTION = 0.92


def tpot_lower_bound(row: ServingRow, setup: ServingSetup) -> float:
    """The least TPOT physics allows for ``row`` given its measured TTFT: a roofline with
    no overhead at all.

    A closed loop's steady state: while one client's request lives (``L = TTFT + (osl -
    1) TPOT``), each of the ``concurrency`` clients has one prompt prefilled, and the
    request itself needs ``osl`` iterations. So ``L >= C max(t_prefill, t_decode) +
    max(osl - C, 0) t_decode``, where a decode iteration streams the weights a GPU holds
    (the input embedding is only looked up; of a MoE layer, only the experts the batch's
    tokens are routed to) and the KV of ``concurrency`` requests at the
    mean context ``isl + osl / 2`` (never more than fits beside the weights at
    ``gpu_memory_utilization`` 0.9) at :data:`ACHIEVABLE_HBM_FRACTION` of the datasheet
    bandwidth, and a prefill takes at least its FLOPs at the datasheet peak. A measured
    TPOT below this bound means the row's stated workload or hardware is not what ran
    (such rows are left out of a fit, and said so).
    """
    from calibration.dtypes import check_kv_cache_dtype, compute_dtype
    from calibration.registry import get_gpu

    m = get_model(row.model)
    gpu = get_gpu(row.gpu)
    tp = row.tp
    embedding = m.vocab * m.hidden * 2
    weights = (m.weight_bytes(row.dtype) - embedding) / tp
    if m.is_moe:
        # a decode step of c sequences streams only the routed experts they pick: c x
        # top_k draws over E experts reach E (1 - (1 - k/E)^c) distinct ones per layer
        idle = m.experts - m.experts * (1.0 - (1.0 - m.top_k / m.experts) ** row.concurrency)
        per_expert = (
            3 * m.hidden * m.moe_intermediate * m.weight_bytes(row.dtype) / max(m.param_count(), 1)
        )  # bytes per parameter of the checkpoint, on average
        weights -= m.moe_layers * idle * per_expert / tp
    kv_value = 1 if check_kv_cache_dtype(setup.kv_cache_dtype) == "fp8" else 2
    # vLLM replicates KV heads when TP exceeds their number
    kv_per_token = 2 * m.layers * max(1, m.kv_heads // tp) * m.head_dim * kv_value
    context = row.isl + row.osl / 2.0
    room = max(gpu.memory_bytes * 0.9 - m.weight_bytes(row.dtype) / tp, 0.0)
    kv_read = min(row.concurrency * context * kv_per_token, room)
    decode = (weights + kv_read) / (gpu.hbm_bandwidth_Bps * ACHIEVABLE_HBM_FRACTION)
    matrices = m.param_count() - m.vocab * m.hidden * (1 if m.tied_embeddings else 2)
    if m.is_moe:  # only the routed experts a token uses
        idle = m.experts - m.top_k
        matrices -= m.moe_layers * idle * 3 * m.hidden * m.moe_intermediate
    flops = 2.0 * matrices * row.isl + 2.0 * m.layers * m.q_heads * m.head_dim * row.isl**2
    # weight-only 4-bit experts compute in bf16; a dtype without a datasheet peak: bf16's
    peak = gpu.peak_flops.get(compute_dtype(row.dtype)) or gpu.peak_flops["bf16"]
    prefill = flops / tp / peak
    c = row.concurrency
    lifetime = c * max(prefill, decode) + max(row.osl - c, 0) * decode
    return max((lifetime - row.ttft_s) / max(row.osl - 1, 1), decode)


def load_serving_csv(path: str | Path) -> list[ServingRow]:
    """Rows of a serving CSV (schema of ``shared/data/serving``); one clear line per defect."""
    from calibration.inputs import (
        MAX_SECONDS,
        MAX_TOKENS,
        numeric_column,
        read_csv,
        require_columns,
    )
    from calibration.registry import get_gpu

    p = Path(path)
    raw = read_csv(p, "serving")
    require_columns(raw, SERVING_COLUMNS, p)
    where = str(p)
    counts = {"tp": 64, "concurrency": MAX_TOKENS, "isl": MAX_TOKENS, "osl": MAX_TOKENS}
    for col, high in counts.items():
        raw[col] = numeric_column(raw, col, where, low=1, high=high, whole=True)
    for col in ("ttft_ms", "tpot_ms"):  # milliseconds: finite, above a nanosecond
        raw[col] = numeric_column(raw, col, where, low=1e-6, high=MAX_SECONDS * 1e3)
    rows = []
    for i, r in enumerate(raw.itertuples(index=False), start=2):
        ints = {k: int(getattr(r, k)) for k in counts}
        ttft, tpot = float(r.ttft_ms), float(r.tpot_ms)
        version = getattr(r, "vllm_version", "")
        measured = getattr(r, "measured", "")
        try:
            model = get_model(str(r.model)).alias
            get_gpu(str(r.gpu))  # known, or a device file
            dtype = check_dtype(str(r.dtype))
        except ComemInputError as exc:
            raise ComemInputError(f"{p}:{i}: {exc}") from None
        rows.append(
            ServingRow(
                model=model,
                gpu=str(r.gpu),
                dtype=dtype,
                ttft_s=ttft / 1e3,
                tpot_s=tpot / 1e3,
                vllm_version="" if version != version else str(version),  # NaN: unstated
                source_id=str(getattr(r, "source_id", "")),
                measured="" if measured != measured else str(measured),
                tp=ints["tp"],
                concurrency=ints["concurrency"],
                isl=ints["isl"],
                osl=ints["osl"],
            )
        )
    return rows


#: Columns of aiconfigurator's silicon sample CSV
#: (``shared/data/serving/vllm_serving_silicon_more.csv``).
SILICON_COLUMNS = (
    "model_path", "system", "precision", "backend_version", "isl", "osl", "tp_size",
    "attention_dp_size", "moe_tp_size", "moe_ep_size", "silicon_data_source",
    "silicon_ttft_ms", "silicon_tpot_ms",
)  # fmt: skip


@dataclass(frozen=True)
class SkippedRow:
    """A measured row that is not fitted or scored, and why (named in every report)."""

    label: str
    reason: str


def _silicon_model(path: str, config_dir: Path | None) -> str:
    """The registry alias of ``path`` (an HF id), else the path of its config.json in
    ``config_dir`` (aiconfigurator's ``<org>--<name>_config.json``); raises
    ComemInputError when neither exists."""
    try:
        return get_model(path).alias
    except ComemInputError:
        if config_dir is None:
            raise
        config = config_dir / f"{path.replace('/', '--')}_config.json"
        if not config.is_file():
            raise
        get_model(str(config))  # a family the simulator refuses raises here
        return str(config)


def _silicon_dtype(precision: str, model: str, gpu: str) -> str:
    """The weight dtype a silicon row ran in: its ``precision``, except that a 4-bit one
    is what the checkpoint ships, as vLLM loads it (gpt-oss's rows say fp4 for its MXFP4
    experts, which Hopper runs as 4-bit weights: data README); refused when no embedded
    profile prices that dtype on that GPU."""
    from calibration.profile import default_profile
    from calibration.registry import checkpoint_dtype

    dtype = check_dtype(precision)
    if dtype in ("fp4", "int4", "mxfp4"):
        dtype = checkpoint_dtype(model)
    default_profile(gpu, dtype)  # one line when there is none
    return dtype


def load_silicon_csv(
    path: str | Path, config_dir: str | Path | None = None
) -> tuple[list[ServingRow], list[SkippedRow]]:
    """Serving rows of aiconfigurator's silicon sample CSV, as its README says to read them.

    The concurrency is ``silicon_concurrency=`` of ``silicon_data_source`` (not
    ``batch_size``); rows that repeat a configuration are averaged into one row (exact
    repeats are one measurement listed twice; re-measurements differ by a few percent,
    and their mean is the better estimate); ``moe_ep_size`` > 1 with ``moe_tp_size`` 1
    is ``--enable-expert-parallel``. Skipped, with the reason: attention data
    parallelism (its parallelism is uncertain: README), a dtype the latency model has no
    kernels for, a model it cannot price."""
    import pandas as pd

    from calibration.inputs import read_csv, require_columns

    p = Path(path)
    raw = read_csv(p, "silicon serving")
    require_columns(raw, SILICON_COLUMNS, p)
    conc = raw["silicon_data_source"].astype(str).str.extract(r"silicon_concurrency=(\d+)")[0]
    measured = raw["silicon_data_source"].astype(str).str.extract(r"measured=([0-9-]+)")[0]
    frame = raw.assign(concurrency=pd.to_numeric(conc), measured=measured.fillna(""))
    frame = frame.dropna(subset=["concurrency"])
    frame["backend_version"] = frame["backend_version"].fillna("").astype(str)
    keys = [
        "model_path", "system", "precision", "backend_version", "isl", "osl", "tp_size",
        "attention_dp_size", "moe_tp_size", "moe_ep_size", "concurrency",
    ]  # fmt: skip
    groups = frame.groupby(keys, sort=True, dropna=False)
    table = groups[["silicon_ttft_ms", "silicon_tpot_ms"]].mean().reset_index()
    table["measured"] = groups["measured"].min().to_numpy()
    cdir = Path(config_dir) if config_dir is not None else None
    rows: list[ServingRow] = []
    skipped: list[SkippedRow] = []
    for r in table.itertuples(index=False):
        label = (
            f"{r.model_path} {r.system} vllm {r.backend_version or 'unstated'} {r.precision}"
            f" TP{r.tp_size} c{int(r.concurrency)} {r.isl}x{r.osl}"
        )
        if int(r.attention_dp_size) > 1:
            skipped.append(SkippedRow(label, "attention data parallelism (uncertain: README)"))
            continue
        try:
            model = _silicon_model(str(r.model_path), cdir)
            dtype = _silicon_dtype(str(r.precision), model, str(r.system))
        except ComemInputError as exc:
            skipped.append(SkippedRow(label, str(exc).split(";")[0]))
            continue
        ep = int(r.moe_ep_size) > 1 and int(r.moe_tp_size) == 1
        rows.append(
            ServingRow(
                model=model, gpu=str(r.system), dtype=dtype, tp=int(r.tp_size),
                concurrency=int(r.concurrency), isl=int(r.isl), osl=int(r.osl),
                ttft_s=float(r.silicon_ttft_ms) / 1e3, tpot_s=float(r.silicon_tpot_ms) / 1e3,
                vllm_version=r.backend_version, measured=str(r.measured),
                source_id=p.name, expert_parallel=ep,
            )
        )  # fmt: skip
    return rows, skipped


#: The project's stated assumptions for ``shared/data/serving/vllm_serving_h100.csv``
#: (what its rows do not state), by model; ``*`` applies to every row. Reasons:
#:
#: - Qwen3-32B (vLLM 0.12.0, an aiconfigurator sweep): ``vllm serve``'s defaults on an H100
#:   (max_num_batched_tokens 8192), lengths exactly as stated, and the chat endpoint: the
#:   rows come from the same aiconfigurator database as the silicon rows, whose generated
#:   benchmark calls it (data README). Qwen3's default template puts 8 tokens around a
#:   one-message prompt (``<|im_start|>user\n`` ... ``<|im_end|>\n<|im_start|>assistant\n``;
#:   no default system message), counted from the template's structure (the checkpoint's
#:   tokenizer_config.json is not in shared/; 20 gives the same errors). What they do: 8 x
#:   1024 prompts no longer fill the 8192 budget exactly, and the clients leave lockstep.
#:   The rows' own TPOT says they did: at a fixed prompt it falls with the output length
#:   (TP2, 8 clients: 18.0 / 16.5 / 15.9 ms at 128 / 512 / 1024 tokens, other requests'
#:   prefills inside each decode), where a burst in lockstep gives a flat 16.4 ms.
#: - Llama-3.1-70B fp8 (version unstated, 2025-10): its grid (1k/1k, 1k/8k, 8k/1k at 4-64
#:   clients) is InferenceX's, whose launch scripts set max-num-batched-tokens 32768 (the
#:   data README) and whose client draws lengths with ``--random-range-ratio 0.8`` (our
#:   recollection of its benchmark script, not verified here). Identical lengths cannot
#:   be what ran: a simulated burst of identical requests stays in lockstep, three times
#:   the measured TTFT, and a desynchronized steady state falls 40% short; varied lengths
#:   reproduce the measured growth of TTFT with concurrency (docs/explanation/latency-model.md).
#:   That script is a fork of vLLM's ``benchmarks/benchmark_serving.py``, which up to v0.7
#:   drew lengths uniformly in [r L, L] (``sample_random_requests`` in the 0.6.3 sdist;
#:   r = 1, exact, by default); v0.8 made it [L(1 - r), L(1 + r)]. Read the old way
#:   (``random_range_semantics = below``), 0.8 means 80-100% of the stated lengths; read
#:   the new way, 20-180%, whose long tail fills the KV cache: 1024 -> 8192 tokens at 32
#:   clients on TP2 thrashes (3.3 s TTFT against 0.29 s measured, TPOT 15% high), while
#:   80-100% matches the knee within 2x (HYPOTHESES.md, seventh pass). Which reading the
#:   fork kept is not stated; the knee rows choose the old one.
#: - Everyone: prefix caching off (random prompts), 10 x concurrency prompts per run,
#:   the first wave sent at once (``vllm bench serve``), vLLM 0.12's admission.
SHARED_H100_ASSUMPTIONS: dict[str, dict[str, Any]] = {
    "*": {},
    "qwen3-32b": {"max_num_batched_tokens": 8192, "chat_endpoint": True, "chat_template_tokens": 8},
    "llama-3.1-70b": {
        "max_num_batched_tokens": 32768,
        "random_range_ratio": 0.8,
        "random_range_semantics": "below",
    },
}

#: The project's stated assumptions for aiconfigurator's silicon rows
#: (``shared/data/serving/vllm_serving_silicon_more.csv``): what its generated benchmark
#: does (the data README): aiperf, closed loop of c clients, 20 x c measured requests,
#: lengths exactly as stated; the server at ``vllm serve`` defaults (budget 8192 on
#: H100/H200); asynchronous scheduling by the row's version. aiperf's 2 x c warm-up
#: requests are a phase of their own that ends before the measured one starts: the
#: server is idle again (random prompts leave nothing to reuse), and the measured phase
#: begins with a burst of c requests, whose first wave is in the statistics. Simulated
#: as a fresh burst of 20 x c requests, none left out. (Leaving the first wave out, as
#: a continuous run with 2 x c warm-up would, predicts MiniMax-M2.5's TTFT at 128 clients
#: 5x too low: the burst's queue of prefills is most of the measured mean.)
#: The chat endpoint (``chat_endpoint``): TTFT ends at the first streamed text, three tokens
#: after the first sampled one for gpt-oss (its harmony header, ``ModelSpec.stream_silent_
#: tokens``), and the chat template's tokens in front of every prompt
#: (``chat_template_tokens``, estimated per model below).
#: Checked against aiperf's own source (the 0.5.0, 0.6.0 and 0.7.0 wheels from PyPI, files
#: of 0.6.0 named): concurrency mode is a true closed loop, one new request per returned
#: one with no batching or ramp (``timing/strategies/request_rate.py``, ``credit/issuer.py``);
#: warm-up is a separate phase that waits for all its requests to return before profiling
#: starts (``timing/phase/runner.py``, ``timing/config.py``): so the measured phase opens on
#: an idle server with a burst of c; every profiling record counts, the drain included
#: (``records_manager.py``); TTFT is stamped from just before the HTTP send to the first
#: streamed chunk with content or reasoning content (``transports/aiohttp_client.py``,
#: ``metrics/types/ttft_metric.py``, ``endpoints/openai_chat.py``: a role-only chunk does
#: not count); prompts come from a 100-entry dataset reused in shuffled order
#: (``dataset_samplers.py``). A fit that lets the burst shrink to fewer rounds lowers the
#: gpt-oss and MiniMax-H200 TTFT error but has no support in that client: not adopted.
#: The chat template's tokens before each prompt (``chat_template_tokens``) are estimates,
#: not read from the checkpoints (their tokenizer_config.json is not in shared/): gpt-oss's
#: harmony system message (identity, knowledge cutoff, date, reasoning level, valid
#: channels) with the user and assistant headers, ~66; Kimi-K2.5's default system line and
#: role markers, ~25; MiniMax-M2.5's, ~22. What they do is break the lockstep of a burst
#: whose prompts fill the token budget exactly (8 x 1024 = 8192); the same 40 tokens for
#: every model gives the same held-out TTFT (35.0%), so the exact counts matter little.
#: ``--max-num-seqs`` is each row's client count: the rows' ``batch_size`` column is the
#: concurrency, and aiconfigurator's generator maps a worker's ``max_batch_size`` to vLLM's
#: ``--max-num-seqs`` (``generator/config/backend_config_mapping.yaml`` of the 0.12.0 wheel).
#: It matters through the KV cache: vLLM sizes the cache after a profiling run whose sampler
#: covers max-num-seqs rows of the whole vocabulary (``_dummy_sampler_run``, 0.12 and 0.18
#: sdists), 3.8 GiB per GPU at 1024 rows of MiniMax-M2.5's 200k vocabulary, 0.1 GiB at 32:
#: MiniMax-M2.5's KV cache on 4 H100s grows from 223k to 285k tokens, and its four knee rows
#: go from 2-9x the measured TTFT to 0.3-1.2x (HYPOTHESES.md, seventh pass). The same
#: generator's ``max-num-batched-tokens = max_batch_size + isl + 1500`` rule
#: (``rule_plugin/benchmark/vllm.rule``) is not taken: a rule the rows' own fields do not
#: state, which the measured TTFTs reject (44% against 34%).
SILICON_ASSUMPTIONS: dict[str, dict[str, Any]] = {
    "*": {"prompts_per_client": 20, "chat_endpoint": True, "max_num_seqs": "concurrency"},
    "gpt-oss-120b": {"chat_template_tokens": 66},
    "kimi-k2.5": {"chat_template_tokens": 25},
    "minimax-m2.5": {"chat_template_tokens": 22},
}

#: named sets of assumptions (``comem calibrate fit-serving --preset``)
ASSUMPTION_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "none": {"*": {}},
    "shared-h100": SHARED_H100_ASSUMPTIONS,
    "silicon": SILICON_ASSUMPTIONS,
}


def parse_assumptions(
    items: Sequence[str], base: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """``[MODEL:]KEY=VALUE`` items (``--assume``) over ``base``: ``max_num_batched_tokens=32768``
    for every row, ``llama-3.1-70b:random_range_ratio=0.8`` for one model's."""
    import json

    out = {k: dict(v) for k, v in (base or {"*": {}}).items()}
    given: dict[tuple[str, str], Any] = {}  # what --assume itself said
    fields = set(ServingSetup.__dataclass_fields__)
    for item in items:
        scope, _, assignment = (
            item.rpartition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        )
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ComemInputError(
                f"--assume {item!r}: expected [MODEL:]KEY=VALUE with KEY one of"
                f" {', '.join(sorted(fields))}"
            )
        try:
            value: Any = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON (a word), or no usable number
            value = raw
        _check_assumption(key, value, f"--assume {item!r}")
        model = get_model(scope).alias if scope else "*"
        if (model, key) in given and given[model, key] != value:
            raise ComemInputError(
                f"--assume {item!r}: {key} was already given as {given[model, key]!r}"
                f" for {'every row' if model == '*' else model} (one value each)"
            )
        given[model, key] = value
        out.setdefault(model, {})[key] = value
    return out


def _check_assumption(key: str, value: Any, where: str) -> None:
    """One line if ``value`` cannot be the assumption ``key`` (a count that is no whole
    number >= 1, a ratio outside [0, 1), a word that is no choice, text for a flag)."""
    try:
        ServingSetup(**{key: value})
    except ValidationError as exc:
        err = exc.errors()[0]
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ComemInputError(f"{where}: {err['msg']} (got {shown})") from None


def setup_for(row: ServingRow, assumptions: dict[str, dict[str, Any]]) -> ServingSetup:
    """The setup of ``row``: defaults, then ``*``, then its model's assumptions."""
    values = dict(assumptions.get("*", {})) | dict(assumptions.get(row.model, {}))
    for key, value in values.items():
        _check_assumption(key, value, f"serving assumptions for {row.model}: {key}")
    return ServingSetup(**values)
