"""Iteration latency: what one engine step of a batch costs on (model, GPU, TP, dtype).

An iteration runs every layer once over all scheduled tokens (decode tokens plus
prefill chunks): GEMMs (QKV, O, MLP or MoE), attention (context attention for the
prefill chunks, generation attention for the decodes), two TP all-reduces per layer,
the LM head for every scheduled sequence, plus a per-iteration framework overhead.

Speed matters (the simulator calls this hundreds of thousands of times), so every
op whose cost depends only on the token count is tabulated once per model over
``N = 0..`` and summed into one array (:mod:`calibration.token_ops`); attention is
evaluated from the batch's aggregates (:mod:`calibration.attention_cost`). The tables are
made non-decreasing (a real GPU is not quite, but a model that charged less for more work
would make schedulers game it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from calibration.attention_cost import AttentionCost
from calibration.attention_parts import AttentionPart, attention_parts
from calibration.dtypes import DTYPE_BYTES, check_dtype, compute_dtype
from calibration.errors import ComemInputError
from calibration.kv_layout import KVLayout, kv_layout
from calibration.latency_inputs import (
    FAMILY_FIELDS,
    check_parallelism,
    engine_profile,
    fp8_gemm_kernel,
    resolve_kv_cache_dtype,
    with_allreduce,
)
from calibration.model_spec import ModelSpec
from calibration.opmodels import OpFit
from calibration.profile import FP8_KV_SUFFIX, FrameworkOverhead, Profile
from calibration.registry import GpuSpec, fits_in_memory, get_gpu, get_model, profile_run_bytes
from calibration.token_ops import LINEAR_OP_KEYS, TokenOpCost
from calibration.uncertainty import band_caveat, cpu_bound_caveat


def _as_int_array(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise ComemInputError(f"batch: {what} must be >= 0, got {int(arr.min())}")
    return arr


@dataclass(frozen=True)
class Batch:
    """What one iteration schedules.

    ``decode_kv[i]``: KV length that decode sequence i attends over (including the token
    being decoded). ``prefill_new[j]`` / ``prefill_cached[j]``: new tokens of prefill chunk
    j and the tokens of that sequence already in the KV cache (cached prefix or earlier
    chunks).
    """

    decode_kv: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prefill_new: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prefill_cached: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        dkv = _as_int_array(self.decode_kv, "decode KV length")
        new = _as_int_array(self.prefill_new, "prefill new tokens")
        cached = _as_int_array(self.prefill_cached, "prefill cached tokens")
        if cached.size == 0 and new.size:
            cached = np.zeros_like(new)
        if new.size != cached.size:
            raise ComemInputError(
                f"batch: {new.size} prefill chunks but {cached.size} cached-prefix lengths"
            )
        if dkv.size and dkv.min() < 1:
            raise ComemInputError("batch: a decode sequence attends over at least 1 token")
        if new.size and new.min() < 1:
            raise ComemInputError("batch: a prefill chunk has at least 1 new token")
        object.__setattr__(self, "decode_kv", dkv)
        object.__setattr__(self, "prefill_new", new)
        object.__setattr__(self, "prefill_cached", cached)

    @property
    def num_decode(self) -> int:
        return int(self.decode_kv.size)

    @property
    def num_tokens(self) -> int:
        return int(self.decode_kv.size + self.prefill_new.sum())

    @property
    def num_seqs(self) -> int:
        return int(self.decode_kv.size + self.prefill_new.size)

    @property
    def prefill_pairs(self) -> float:
        """Sum over chunks of attended (query, key) pairs: the prefill attention work."""
        q = self.prefill_new.astype(float)
        return float(np.sum(q * (self.prefill_cached + (q + 1.0) / 2.0)))


class LatencyModel:
    """Composed per-iteration latency of ``model`` on ``tp`` x ``gpu`` in ``dtype``.

    ``kv_cache_dtype`` is vLLM's ``--kv-cache-dtype`` (``auto``: bf16): an fp8 cache holds
    twice the tokens and is priced by the attention ops fitted on the fp8-KV kernel rows.
    ``fp8_gemm`` picks the fp8 GEMM kernel (ignored for bf16; the choices:
    :data:`calibration.latency_inputs.FP8_GEMM_KINDS`).
    ``max_num_batched_tokens`` and ``max_num_seqs`` size vLLM's profiling run, which the
    KV cache does not get (:func:`calibration.registry.profile_run_bytes`).

    ``framework`` names the fitted framework overhead to add (a key of the profile's
    ``overheads``, e.g. ``vllm-2024`` for the static batches of LLM-Inference-Bench);
    None: the profile's default (:class:`calibration.profile.FrameworkOverhead`).

    ``async_scheduling`` is vLLM's ``--async-scheduling`` (on by default from v0.14; None:
    as the server the framework overhead was fitted on, its entry's ``async_scheduling``): the
    framework's CPU work for the next iteration overlaps this one's GPU work, so an
    iteration costs ``max(GPU, CPU) + serial`` instead of ``GPU + CPU + serial``
    (:class:`calibration.profile.FrameworkOverhead`).

    ``expert_parallel`` is vLLM's ``--enable-expert-parallel`` with one data-parallel
    rank: the MoE layers are split by whole experts over the ``tp`` GPUs (EP = TP,
    MoE-TP = 1) instead of slicing every expert; attention, dense layers, shared experts
    and the router stay tensor-parallel. Tokens are replicated (no all-to-all) and the
    layer's TP all-reduce sums the ranks' outputs, as without it. A dense model has no
    experts to split: asking for it is an error (vLLM ignores the flag there).

    ``data_parallel_size`` with ``expert_parallel``: the model is one of that many DP ranks
    whose experts span all of them (EP = TP x DP): the MoE layers run over every rank's
    tokens (this rank's count times the DP size, as vLLM pads the ranks to the largest) with
    an all-gather and a reduce-scatter per MoE layer, and each GPU holds ``1 / (TP x DP)``
    of the routed experts. Without expert parallelism the DP size does not change a rank.

    An iteration's GPU time is the tabulated token-proportional ops (``token_ops``,
    :class:`calibration.token_ops.TokenOpCost`) plus attention (``attention``,
    :class:`calibration.attention_cost.AttentionCost`); the framework overhead around it
    is the ``overhead_*`` terms (see "framework overhead" below).
    """

    def __init__(
        self,
        model: str | ModelSpec,
        gpu: str | GpuSpec = "h100_sxm",
        tp: int = 1,
        dtype: str = "bf16",
        profile: Profile | None = None,
        include_overhead: bool = True,
        expert_parallel: bool = False,
        kv_cache_dtype: str = "auto",
        fp8_gemm: str = "auto",
        max_num_batched_tokens: int = 8192,
        max_num_seqs: int = 1024,
        framework: str | None = None,
        data_parallel_size: int = 1,
        async_scheduling: bool | None = None,
    ) -> None:
        self.model = get_model(model) if isinstance(model, str) else model
        self.gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
        self.dtype = check_dtype(dtype)
        self.kv_cache_dtype = resolve_kv_cache_dtype(self.model, kv_cache_dtype)
        #: the fp8 GEMM kernel (None in bf16)
        self.fp8_gemm: str | None = fp8_gemm_kernel(self.model, self.dtype, fp8_gemm)
        self.max_num_batched_tokens = int(max_num_batched_tokens)
        self.max_num_seqs = int(max_num_seqs)
        self.tp = tp
        #: data-parallel ranks the experts span (``--data-parallel-size`` with
        #: ``--enable-expert-parallel``: EP = TP x DP); 1 otherwise, the model is one rank's
        self.dp = check_parallelism(self.model, tp, expert_parallel, data_parallel_size)
        self.include_overhead = include_overhead
        self.expert_parallel = expert_parallel
        #: ranks the experts are split over (1: every rank holds a TP slice of each)
        self.ep = tp * self.dp if expert_parallel else 1
        #: what the kernel tables did not measure and was extrapolated ("" if nothing)
        self.profile, self.extrapolated = with_allreduce(
            engine_profile(profile, self.gpu, self.dtype), {tp, self.ep}
        )
        #: profile op keys of the dense GEMMs and of the two attentions
        self._gemm_key = "gemm_fp8_tensor" if self.fp8_gemm == "tensor" else "gemm"
        suffix = FP8_KV_SUFFIX if self.kv_cache_dtype == "fp8" else ""
        self._ctx_key = "context_attention" + suffix
        self._gen_key = "generation_attention" + suffix
        self._check_profile_prices()
        # a clear error when the weights do not fit at this TP
        fits_in_memory(
            self.model, self.gpu, tp, self.dtype, reserve_bytes=self.reserve_bytes(),
            expert_ranks=self.ep if self.dp > 1 else None,
        )  # fmt: skip
        self.attention = self._attention_cost()
        self.token_ops = TokenOpCost(
            self.model, self.profile, tp, self.ep, self.dp, self.dtype, self._gemm_key,
            # bytes per weight of the dense GEMMs (the weight-only dtypes keep them bf16)
            DTYPE_BYTES[compute_dtype(self.dtype)],
        )  # fmt: skip
        self.framework = framework
        self._check_finite()  # before the band caveat prices a step
        self._init_overhead(framework, async_scheduling)

    # -- what the engine may ask of the profile -----------------------------------------
    def _check_profile_prices(self) -> None:
        """Fail now, not at the first iteration, when the profile has no fit for an op
        this engine runs: an all-reduce, a family's attention, the GEMM / attention keys,
        expert parallelism."""
        for ranks in {self.tp, self.ep} - {1}:
            self._check_allreduce(ranks)
        # a family's own ops first: its refusal names the config field
        for part in attention_parts(self.model, self.tp, False) + attention_parts(
            self.model, self.tp, True
        ):
            if part.op != "attention":
                self._part_fit(part, prefill=False)
                self._part_fit(part, prefill=True)
        for key in (self._gemm_key, self._ctx_key, self._gen_key):
            self.profile.op(key)
        if self.ep > 1 and "nonlocal_slot" not in self.profile.op("moe").params:
            raise ComemInputError(
                f"profile {self.profile.gpu}/{self.profile.dtype} cannot price expert"
                " parallelism: its MoE op was fitted without moe_ep_size rows (refit it with"
                " 'comem calibrate build-defaults' or 'comem calibrate fit')"
            )

    def _check_allreduce(self, ranks: int) -> None:
        """One line when the profile has no all-reduce over ``ranks`` GPUs (GB200: 2, 4)."""
        key = f"allreduce_{ranks}"
        if key not in self.profile.ops:
            have = self.profile.allreduce_ranks()
            measured = f"the all-reduce on {', '.join(map(str, have))} GPUs only"
            raise ComemInputError(
                f"tp={self.tp}{f' x data_parallel_size={self.dp}' if self.dp > 1 else ''} on"
                f" {self.gpu.name}: its kernel tables measure"
                f" {measured if have else 'no all-reduce'} (no {key})"
            )

    def _check_finite(self) -> None:
        """One line when the profile prices a plain decode step or a 512-token prefill as
        no finite time under 10^4 s (op parameters that pass their own bounds, e.g. a
        bandwidth of 1e-300 B/s, can still make every iteration last forever)."""
        for n_dec, kv, new in ((1, 1024, [512]), (8, 8 * 1024, [])):
            with np.errstate(all="ignore"):  # an overflow is what is being checked
                t = self.kernel_time_of(n_dec, kv, new, [0] * len(new))
            if not (math.isfinite(t) and 0.0 <= t < 1e4):
                which = f"profile {self.profile.source}" if self.profile.source else "the profile"
                raise ComemInputError(
                    f"{which} ({self.profile.gpu}/{self.profile.dtype}) prices one iteration of"
                    f" {self.model.alias} at {t:g} s: its op parameters describe no GPU"
                )

    def _part_fit(self, part: AttentionPart, prefill: bool) -> OpFit:
        """The profile op that prices ``part``; one line naming the config field when the
        profile has no fit for its family (no kernel table of it on this GPU)."""
        if part.op == "attention":
            return self.profile.op(self._ctx_key if prefill else self._gen_key)
        suffix = FP8_KV_SUFFIX if self.kv_cache_dtype == "fp8" and part.op != "gdn" else ""
        key = f"{part.op}_{'context' if prefill else 'generation'}{suffix}"
        if key not in self.profile.ops:
            field, what, table = FAMILY_FIELDS[part.op]
            raise ComemInputError(
                f"model {self.model.alias}: {field} is set: {what} is priced from the"
                f" {table} kernel tables, and profile {self.profile.gpu}/{self.profile.dtype}"
                f" has no {key} fit (no such table for this GPU"
                f"{' with an fp8 KV cache' if suffix else ''})"
            )
        return self.profile.op(key)

    def _attention_cost(self) -> AttentionCost:
        """The attention shapes decode and prefill run (per family), each with its fit."""
        decode = attention_parts(self.model, self.tp, prefill=False)
        prefill = attention_parts(self.model, self.tp, prefill=True)
        return AttentionCost(
            [(part, self._part_fit(part, prefill=False)) for part in decode],
            [(part, self._part_fit(part, prefill=True)) for part in prefill],
            cache_bytes=1.0 if self.kv_cache_dtype == "fp8" else 2.0,
            context_t0=self.profile.op(self._ctx_key).params["t0"],
        )

    # -- framework overhead -------------------------------------------------------------
    def _init_overhead(self, framework: str | None, async_scheduling: bool | None) -> None:
        """The framework overhead terms, asynchronous scheduling and the error bands of
        ``framework``'s fitted overhead entry in the profile."""
        #: tensor-parallel collectives one iteration launches: an all-reduce after the
        #: attention and one after the MLP / MoE of every layer (0 on one GPU)
        self.tp_collectives = 2 * self.model.layers if self.tp > 1 else 0
        #: None: as the framework's server ran (its overhead entry says; vLLM >= 0.14: on)
        self.async_scheduling = (
            self.profile.framework_async(framework)
            if async_scheduling is None
            else bool(async_scheduling)
        )
        #: the framework's CPU work per iteration (on this TP), per scheduled sequence, per
        #: token of KV held by the scheduled sequences, the part of each iteration that
        #: never overlaps, and per request before scheduling (the engine reads
        #: ``request_overhead_s``: HTTP and tokenization, in TTFT)
        self.overhead_per_iteration_s = 0.0
        self.overhead_per_sequence_s = 0.0
        self.overhead_per_kv_token_s = 0.0
        self.overhead_serial_s = 0.0
        self.overhead_serial_per_sequence_s = 0.0
        self.request_overhead_s = 0.0
        self.set_overhead(self.profile.framework_overhead(framework))
        #: metric -> band of the overhead fit's cross-validated errors (for intervals)
        self.error_bands = self.profile.framework_bands(framework)
        #: why the bands may not cover this model ("" when they do): they come from the
        #: serving rows' held-out errors (:data:`calibration.uncertainty.BAND_SOURCE`)
        self.band_caveat = self._band_caveat()

    def set_overhead(self, overhead: FrameworkOverhead) -> None:
        """Price iterations with ``overhead`` from now on (the kernel tables are kept:
        what fitting an overhead needs, one simulation after another)."""
        self.overhead_per_iteration_s = overhead.iteration_s(self.tp, self.tp_collectives)
        self.overhead_per_sequence_s = overhead.per_sequence_s
        self.overhead_per_kv_token_s = overhead.per_kv_token_s
        self.overhead_serial_s = overhead.per_iteration_serial_s
        self.overhead_serial_per_sequence_s = overhead.per_sequence_serial_s
        self.request_overhead_s = overhead.request_overhead_s if self.include_overhead else 0.0

    def _band_caveat(self) -> str:
        decode_parts = [part for part, _ in self.attention.decode_parts]
        families = {p.op for p in decode_parts if p.op != "attention"}
        families |= {"sliding window" for p in decode_parts if p.window is not None}
        caveat = band_caveat(families, self.dtype, self.gpu.name)
        small = cpu_bound_caveat(self.kernel_time_of(1, 1024))  # finite: _check_finite ran
        return "; ".join(filter(None, (caveat, small, self.extrapolated)))

    def _plus_overhead(
        self, gpu_s: float, seqs: int, decode_kv: int, new: Sequence[int], cached: Sequence[int]
    ) -> float:
        """One iteration of GPU time ``gpu_s`` over ``seqs`` sequences (decodes over
        ``decode_kv`` tokens, prefill chunks of ``new`` tokens over ``cached``) with the
        framework's overhead: the scalar :meth:`with_framework`."""
        cpu = self.overhead_per_iteration_s + self.overhead_per_sequence_s * seqs
        if self.overhead_per_kv_token_s:
            cpu += self.overhead_per_kv_token_s * (decode_kv + sum(new) + sum(cached))
        t = (gpu_s if gpu_s > cpu else cpu) if self.async_scheduling else gpu_s + cpu
        return t + self.overhead_serial_s + self.overhead_serial_per_sequence_s * seqs

    def cpu_time(self, n_seqs: np.ndarray | int, kv_tokens: np.ndarray | float = 0) -> np.ndarray:
        """The framework's CPU work of iterations of ``n_seqs`` sequences holding
        ``kv_tokens`` (what asynchronous scheduling overlaps; 0 without overhead)."""
        s = np.asarray(n_seqs, dtype=float)
        if not self.include_overhead:
            return np.zeros_like(s)
        kv = np.asarray(kv_tokens, dtype=float)
        return (
            self.overhead_per_iteration_s
            + self.overhead_per_sequence_s * s
            + self.overhead_per_kv_token_s * kv
        )

    def with_framework(
        self,
        gpu_s: np.ndarray,
        n_seqs: np.ndarray | int,
        kv_tokens: np.ndarray | float = 0,
    ) -> np.ndarray:
        """Iteration times from their GPU times: ``max(GPU, CPU) + serial`` with
        asynchronous scheduling, ``GPU + CPU + serial`` without (vectorized; an empty
        iteration, GPU time 0, stays 0)."""
        gpu = np.asarray(gpu_s, dtype=float)
        if not self.include_overhead:
            return gpu
        cpu = self.cpu_time(n_seqs, kv_tokens)
        t = np.maximum(gpu, cpu) if self.async_scheduling else gpu + cpu
        return np.where(gpu > 0, t + self.serial_time(n_seqs), 0.0)

    def serial_time(self, n_seqs: np.ndarray | int) -> np.ndarray:
        """The part of iterations of ``n_seqs`` sequences that never overlaps."""
        s = np.asarray(n_seqs, dtype=float)
        return self.overhead_serial_s + self.overhead_serial_per_sequence_s * s

    def overhead_time(
        self,
        n_seqs: np.ndarray | int,
        kv_tokens: np.ndarray | int = 0,
        gpu_s: np.ndarray | float | None = None,
    ) -> np.ndarray:
        """Framework time added to iterations of ``n_seqs`` sequences holding
        ``kv_tokens``: all of the CPU work plus the serial part without asynchronous
        scheduling; with it, only what the GPU time ``gpu_s`` does not hide."""
        if gpu_s is None or not self.async_scheduling:
            cpu = self.cpu_time(n_seqs, kv_tokens)
            return cpu + (self.serial_time(n_seqs) if self.include_overhead else 0.0)
        gpu = np.asarray(gpu_s, dtype=float)
        return self.with_framework(gpu, n_seqs, kv_tokens) - gpu

    # -- KV cache ---------------------------------------------------------------------
    @property
    def kv_layout(self) -> KVLayout:
        """vLLM's KV-cache layout of this model on one GPU (:mod:`calibration.kv_layout`)."""
        return self.kv_layout_for(16)

    def kv_layout_for(self, block_size: int) -> KVLayout:
        """The layout for ``--block-size`` ``block_size`` (raised as vLLM raises it for
        MLA/DSA backends and hybrid linear-attention models)."""
        per_value = 1 if self.kv_cache_dtype == "fp8" else 2
        return kv_layout(self.model, self.tp, per_value, self.gpu.name, block_size)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one more token of context occupies on one GPU (in
        ``kv_cache_dtype``): every layer that keeps all tokens (not the sliding or linear
        layers, whose per-request part is constant)."""
        return int(round(self.kv_layout.bytes_per_token))

    def reserve_bytes(
        self, max_num_batched_tokens: int | None = None, max_num_seqs: int | None = None
    ) -> int:
        """Per-GPU memory vLLM's profiling run keeps from the KV cache (this model's
        ``max_num_batched_tokens`` / ``max_num_seqs`` unless given)."""
        return profile_run_bytes(
            self.model,
            self.tp,
            max_num_batched_tokens or self.max_num_batched_tokens,
            max_num_seqs or self.max_num_seqs,
        )

    def kv_capacity_tokens(
        self,
        gpu_memory_utilization: float = 0.9,
        max_num_batched_tokens: int | None = None,
        max_num_seqs: int | None = None,
    ) -> int:
        """Tokens the KV cache holds: ``gpu_memory_utilization`` of the GPU less weights
        and the profiling run's peak (vLLM's sizing; GPU memory as ``memory_gib``)."""
        reserve = self.reserve_bytes(max_num_batched_tokens, max_num_seqs)
        free = fits_in_memory(
            self.model, self.gpu, self.tp, self.dtype, gpu_memory_utilization, reserve,
            self.ep if self.dp > 1 else None,
        )  # fmt: skip
        return int(free // self.kv_layout.bytes_per_token)

    # -- the parts of an iteration ------------------------------------------------------
    def linear_time(self, n_tokens: np.ndarray | int) -> np.ndarray:
        """Seconds of all token-proportional ops for iterations of ``n_tokens`` tokens."""
        return self.token_ops.linear_time(n_tokens)

    def lm_head_tabulated(self, n_seqs: np.ndarray | int) -> np.ndarray:
        """The LM-head times :meth:`iteration_time` uses (monotone in sequences)."""
        return self.token_ops.lm_head_tabulated(n_seqs)

    def decode_attention_time(
        self, batch_size: np.ndarray | int, kv_total: np.ndarray | int
    ) -> np.ndarray:
        """Generation attention (all layers) for ``batch_size`` decodes over ``kv_total``."""
        return self.attention.decode_time(batch_size, kv_total)

    def decode_attention_scalar(self, batch_size: int, kv_total: int) -> float:
        """Plain-Python :meth:`decode_attention_time` for one iteration."""
        return self.attention.decode_scalar(batch_size, kv_total)

    def prefill_attention_scalar(self, new: Sequence[int], cached: Sequence[int]) -> float:
        """Context attention (all layers) of one iteration's prefill chunks (one launch)."""
        return self.attention.prefill_scalar(new, cached)

    # -- whole iterations ---------------------------------------------------------------
    def kernel_time_of(
        self,
        num_decode: int,
        decode_kv_total: int,
        prefill_new: Sequence[int] = (),
        prefill_cached: Sequence[int] = (),
    ) -> float:
        """GPU time of one iteration from aggregates (no framework overhead)."""
        n = num_decode + sum(prefill_new)
        if n <= 0:
            return 0.0
        ops = self.token_ops
        if n >= len(ops.table_list):
            ops.ensure_table(n)
        t = ops.table_list[n] + ops.lm_table[num_decode + len(prefill_new)]
        if num_decode:
            t += self.attention.decode_scalar(num_decode, decode_kv_total)
        if prefill_new:
            t += self.attention.prefill_scalar(prefill_new, prefill_cached)
        return t

    def iteration_time_of(
        self,
        num_decode: int,
        decode_kv_total: int,
        prefill_new: Sequence[int] = (),
        prefill_cached: Sequence[int] = (),
    ) -> float:
        """:meth:`iteration_time` from aggregates, without building a :class:`Batch`.

        The engine's hot path: ``decode_kv_total`` is the sum of the decodes' KV lengths.
        """
        t = self.kernel_time_of(num_decode, decode_kv_total, prefill_new, prefill_cached)
        if t and self.include_overhead:
            seqs = num_decode + len(prefill_new)
            t = self._plus_overhead(t, seqs, decode_kv_total, prefill_new, prefill_cached)
        return t

    def breakdown(self, batch: Batch) -> dict[str, float]:
        """Seconds per component of one iteration (sums to :meth:`iteration_time`)."""
        n = batch.num_tokens
        if n == 0:
            return {}
        ops = self.token_ops.linear_ops(np.array([n]), aligned=True)
        parts = {k: float(v[0]) for k, v in ops.items()}
        kv = int(batch.decode_kv.sum())
        parts["decode_attention"] = self.decode_attention_scalar(batch.num_decode, kv)
        parts["prefill_attention"] = self.prefill_attention_scalar(
            batch.prefill_new.tolist(), batch.prefill_cached.tolist()
        )
        parts["lm_head"] = float(self.lm_head_tabulated(batch.num_seqs))
        held = kv + int(batch.prefill_new.sum() + batch.prefill_cached.sum())
        gpu = self.kernel_time_of(
            batch.num_decode, kv, batch.prefill_new.tolist(), batch.prefill_cached.tolist()
        )
        parts["overhead"] = float(self.overhead_time(batch.num_seqs, held, gpu))
        # The tabulated sum is made monotone in N: charge any difference to the GEMMs.
        tabulated = float(self.linear_time(n))
        linear = sum(v for k, v in parts.items() if k in LINEAR_OP_KEYS)
        parts["monotone_adjustment"] = tabulated - linear
        return parts

    def iteration_time(self, batch: Batch) -> float:
        """Seconds one engine iteration over ``batch`` takes (0 for an empty batch)."""
        return self.iteration_time_of(
            batch.num_decode,
            int(batch.decode_kv.sum()),
            batch.prefill_new.tolist(),
            batch.prefill_cached.tolist(),
        )

    def decode_iteration_times(self, batch_size: np.ndarray, kv_total: np.ndarray) -> np.ndarray:
        """Vectorized iteration times of decode-only iterations (no prefill chunks)."""
        b = np.asarray(batch_size, dtype=np.int64)
        t = self.linear_time(b) + self.decode_attention_time(b, kv_total)
        t = t + self.lm_head_tabulated(b)
        return self.with_framework(np.where(b > 0, t, 0.0), b, kv_total)

    def steady_iteration_times(
        self, num_decode: int, kv_total0: int, chunk: int, cached0: int, steps: int
    ) -> np.ndarray:
        """Times of ``steps`` iterations of a steady batch: ``num_decode`` decodes whose KV
        total starts at ``kv_total0`` and grows by ``num_decode`` per iteration, plus (if
        ``chunk``) one prefill chunk of ``chunk`` tokens over a prefix starting at
        ``cached0`` and growing by ``chunk``. Equals :meth:`iteration_time_of` per
        iteration to rounding."""
        n = num_decode + chunk
        seqs = num_decode + (1 if chunk else 0)
        if n == 0:
            return np.zeros(steps)
        ops = self.token_ops
        ops.ensure_table(n)
        base = ops.table_list[n] + ops.lm_table[seqs]
        j = np.arange(steps, dtype=float)
        t = np.full(steps, base)
        if num_decode:
            t += self.attention.steady_decode(num_decode, kv_total0, j)
        if chunk:
            t += self.attention.steady_prefill(chunk, cached0, j)
        if not self.include_overhead:
            return t
        held: np.ndarray | float = 0.0
        if self.overhead_per_kv_token_s:
            held = kv_total0 + num_decode * j + (cached0 + chunk * (j + 1) if chunk else 0.0)
        return self.with_framework(t, seqs, held)


class ConstantLatency:
    """Every non-empty iteration takes ``seconds``: the queueing-theory reference model.

    Same interface as :class:`LatencyModel` for what the engine needs. With it and
    ``max_num_seqs = 1`` an engine is an M/G/1 queue, which tests compare with
    Pollaczek-Khinchine.
    """

    def __init__(self, seconds: float, kv_capacity_tokens: int = 1 << 30) -> None:
        if not seconds > 0:
            raise ComemInputError(f"constant iteration time must be > 0, got {seconds}")
        self.seconds = float(seconds)
        self._capacity = int(kv_capacity_tokens)

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        return self._capacity

    def iteration_time_of(
        self,
        num_decode: int,
        decode_kv_total: int,
        prefill_new: Sequence[int] = (),
        prefill_cached: Sequence[int] = (),
    ) -> float:
        return self.seconds if (num_decode or prefill_new) else 0.0

    def decode_iteration_times(self, batch_size: np.ndarray, kv_total: np.ndarray) -> np.ndarray:
        b = np.asarray(batch_size)
        return np.where(b > 0, self.seconds, 0.0)

    def steady_iteration_times(
        self, num_decode: int, kv_total0: int, chunk: int, cached0: int, steps: int
    ) -> np.ndarray:
        return np.full(steps, self.seconds if (num_decode or chunk) else 0.0)
