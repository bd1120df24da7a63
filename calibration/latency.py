"""Iteration latency: what one engine step of a batch costs on (model, GPU, TP, dtype).

An iteration runs every layer once over all scheduled tokens (decode tokens plus
prefill chunks): GEMMs (QKV, O, MLP or MoE), attention (context attention for the
prefill chunks, generation attention for the decodes), two TP all-reduces per layer,
the LM head for every scheduled sequence, plus a per-iteration framework overhead.

Speed matters (the simulator calls this hundreds of thousands of times), so every
op whose cost depends only on the token count is tabulated once per model over
``N = 0..`` and summed into one array; attention is evaluated from the batch's
aggregates. The table is made non-decreasing in N (a real GPU is not quite, but a
model that charged less for more work would make schedulers game it).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from calibration.attention_parts import AttentionPart, attention_parts, projection_gemms
from calibration.errors import ComemInputError
from calibration.kv_layout import KVLayout, kv_layout
from calibration.opmodels import (
    GENERATION_ATTENTION,
    OpFit,
    context_flops_bytes,
    query_tiles,
    smooth_max,
)
from calibration.opmodels import predict as op_predict
from calibration.profile import (
    FP8_KV_SUFFIX,
    FrameworkOverhead,
    Profile,
    default_profile,
    op_form,
)
from calibration.registry import (
    DTYPE_BYTES,
    GpuSpec,
    ModelSpec,
    check_dtype,
    check_kv_cache_dtype,
    compute_dtype,
    fits_in_memory,
    get_gpu,
    get_model,
    profile_run_bytes,
)

SUPPORTED_TP = (1, 2, 4, 8)
#: ``fp8_gemm`` choices: the 128x128 block-scaled fp8 GEMM (the published FP8 checkpoints
#: of Qwen3, GLM-4.5/4.7, Qwen3-Coder), the per-tensor scaled one (``--quantization fp8``
#: on a bf16 checkpoint; per-tensor / per-channel checkpoints such as Llama-3.1 FP8), or
#: ``auto``: block for mixture-of-experts models, tensor for dense ones.
FP8_GEMM_KINDS = ("auto", "block", "tensor")
DECODE_TABLE_B = 2048
#: Mean-KV-per-sequence knots of the decode-attention table: 1 .. 2^20 tokens, ratio ~1.1.
DECODE_TABLE_KV_KNOTS = np.unique(np.round(np.geomspace(1.0, 2.0**20, 150)))
#: Prefill-chunk table knots: new tokens 1 .. 2^20, cached prefix 0 .. 2^22 (ratio ~1.08).
PREFILL_TABLE_Q_KNOTS = np.unique(np.round(np.geomspace(1.0, 2.0**20, 180)))
PREFILL_TABLE_PREFIX_KNOTS = np.concatenate(
    [[0.0], np.unique(np.round(np.geomspace(1.0, 2.0**22, 200)))]
)
_TABLE_MIN = 1 << 14
_TABLE_MAX = 1 << 21


#: Per family op: the config field that names it, what it is, its kernel tables.
FAMILY_FIELDS = {
    "mla": ("kv_lora_rank", "multi-head latent attention (MLA)", "mla_*_module_perf / *_mla_perf"),
    "dsa": ("index_topk", "DeepSeek sparse attention (DSA)", "dsa_*_module_perf"),
    "gdn": ("layer_types", "Gated DeltaNet linear attention", "gdn_perf"),
}

#: vLLM V1's default CUDA-graph capture sizes (CompilationConfig: 1, 2, 4, then steps of 8
#: to 256 and of 16 to max_capture_size = 512). Iterations up to 512 tokens are padded
#: to the next size; larger ones run eagerly at their own size.
CUDA_GRAPH_SIZES = np.array([1, 2, 4, *range(8, 256, 8), *range(256, 513, 16)])


def cuda_graph_padded(n_tokens: np.ndarray) -> np.ndarray:
    """Token count the GPU actually processes for iterations of ``n_tokens`` tokens."""
    n = np.asarray(n_tokens, dtype=np.int64)
    idx = np.searchsorted(CUDA_GRAPH_SIZES, np.minimum(n, CUDA_GRAPH_SIZES[-1]))
    return np.where(n <= CUDA_GRAPH_SIZES[-1], CUDA_GRAPH_SIZES[idx], n)


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
    ``fp8_gemm`` picks the fp8 GEMM kernel (:data:`FP8_GEMM_KINDS`; ignored for bf16).
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
        self.kv_cache_dtype = check_kv_cache_dtype(kv_cache_dtype)
        if self.model.index_topk and str(kv_cache_dtype).strip().lower() == "auto":
            # DeepSeek sparse attention: vLLM's default cache is fp8_ds_mla (VLLM_FACTS D)
            self.kv_cache_dtype = "fp8"
        if fp8_gemm not in FP8_GEMM_KINDS:
            raise ComemInputError(
                f"unknown fp8_gemm '{fp8_gemm}'; known: {', '.join(FP8_GEMM_KINDS)}"
            )
        if fp8_gemm == "auto":
            fp8_gemm = "block" if self.model.is_moe else "tensor"
        #: the fp8 GEMM kernel (None in bf16)
        self.fp8_gemm: str | None = fp8_gemm if self.dtype == "fp8" else None
        self.max_num_batched_tokens = int(max_num_batched_tokens)
        self.max_num_seqs = int(max_num_seqs)
        if expert_parallel and not self.model.is_moe:
            raise ComemInputError(
                f"expert parallelism needs a mixture-of-experts model: {self.model.alias} is dense"
            )
        self.model.check_tp(tp, expert_parallel=expert_parallel)
        if tp not in SUPPORTED_TP:
            raise ComemInputError(
                f"tp={tp} is not supported: one node, all-reduce measured for 2, 4, 8 GPUs"
                f" (choose from {', '.join(map(str, SUPPORTED_TP))})"
            )
        self.tp = tp
        #: data-parallel ranks the experts span (``--data-parallel-size`` with
        #: ``--enable-expert-parallel``: EP = TP x DP); 1 otherwise, the model is one rank's
        self.dp = int(data_parallel_size) if expert_parallel else 1
        if self.dp > 1 and tp * self.dp not in SUPPORTED_TP[1:]:
            raise ComemInputError(
                f"data_parallel_size {self.dp} x tp {tp} = {tp * self.dp} expert-parallel ranks:"
                " their all-gather / reduce-scatter is priced from the all-reduce tables,"
                " measured on 2, 4 or 8 GPUs of one node"
            )
        if profile is not None and (profile.gpu, profile.dtype) != (self.gpu.name, self.dtype):
            # a profile's op fits price one GPU's kernels in one dtype; the KV capacity
            # and weights come from the engine's GPU: mixed, they describe no machine
            which = f"profile {profile.source}" if profile.source else "the profile"
            raise ComemInputError(
                f"{which} is for {profile.gpu}/{profile.dtype}, but the engine runs"
                f" {self.gpu.name}/{self.dtype}: set the engine's gpu and dtype to the"
                f" profile's, or use a profile fitted on {self.gpu.name}/{self.dtype}"
            )
        self.profile = (
            profile if profile is not None else default_profile(self.gpu.name, self.dtype)
        )
        self.include_overhead = include_overhead
        self.expert_parallel = expert_parallel
        #: ranks the experts are split over (1: every rank holds a TP slice of each)
        self.ep = tp * self.dp if expert_parallel else 1
        for ranks in {tp, self.ep} - {1}:  # fail now, not at the first iteration
            self._check_allreduce(ranks)
        #: profile op keys of the dense GEMMs and of the two attentions
        self._gemm_key = "gemm_fp8_tensor" if self.fp8_gemm == "tensor" else "gemm"
        #: bytes per weight of the dense GEMMs (the weight-only dtypes keep them bf16)
        self._gemm_weight_bytes = DTYPE_BYTES[compute_dtype(self.dtype)]
        suffix = FP8_KV_SUFFIX if self.kv_cache_dtype == "fp8" else ""
        self._ctx_key = "context_attention" + suffix
        self._gen_key = "generation_attention" + suffix
        # a family's own ops first: its refusal names the config field
        for part in attention_parts(self.model, tp, False) + attention_parts(self.model, tp, True):
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
        # Raises a clear error when the weights do not fit at this TP.
        self.kv_budget_bytes_per_gpu = fits_in_memory(
            self.model, self.gpu, tp, self.dtype, reserve_bytes=self.reserve_bytes(),
            expert_ranks=self.ep if self.dp > 1 else None,
        )  # fmt: skip
        m = self.model
        self.q_heads = m.q_heads // tp
        # vLLM replicates KV heads when tp exceeds their number.
        self.kv_heads = max(1, m.kv_heads // tp)
        #: the attention shapes decode and prefill run (attention_parts: per family)
        self._dec_parts = attention_parts(m, tp, prefill=False)
        self._pre_parts = attention_parts(m, tp, prefill=True)
        #: KV per decode sequence beyond which no part reads more (every part windowed or
        #: constant: a uniform sliding window), None when some part reads all of it
        caps = [p.window for p in self._dec_parts if p.state_tokens is None]
        self._dec_cap: int | None = None
        if caps and all(c is not None for c in caps):
            self._dec_cap = max(c for c in caps if c is not None)
        #: context-attention launches per iteration (one per layer and part)
        self._ctx_launches = sum(part.layers for part in self._pre_parts)
        for part in self._dec_parts + self._pre_parts:
            self._part_fit(part, prefill=False)
            self._part_fit(part, prefill=True)
        self._table = np.zeros(0)
        self._table_list: list[float] = []
        self._lm_table: list[float] = []
        self._scalar_setup()
        self._dec_knots_arr = DECODE_TABLE_KV_KNOTS
        self._dec_knots: list[float] = DECODE_TABLE_KV_KNOTS.tolist()
        self._dec_rows: list[list[float]] = []
        self._dec_grid = np.zeros((0, 0))
        self._pre_q: list[float] = PREFILL_TABLE_Q_KNOTS.tolist()
        self._pre_c: list[float] = PREFILL_TABLE_PREFIX_KNOTS.tolist()
        self._pre_rows: list[list[float]] = []
        self._pre_grid = np.zeros((0, 0))
        self.framework = framework
        #: None: as the framework's server ran (its overhead entry says; vLLM >= 0.14: on)
        #: tensor-parallel collectives one iteration launches: an all-reduce after the
        #: attention and one after the MLP / MoE of every layer (0 on one GPU)
        self.tp_collectives = 2 * self.model.layers if tp > 1 else 0
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
        self.request_overhead_s = 0.0
        self.set_overhead(self.profile.framework_overhead(framework))
        #: metric -> band of the overhead fit's cross-validated errors (for intervals)
        self.error_bands = self.profile.framework_bands(framework)
        #: why the bands may not cover this model ("" when they do): they come from
        #: full-attention GQA models in bf16/fp8; other families and 4-bit weights were
        #: measured only as held-out checks (docs/explanation/latency-model.md:
        #: gpt-oss-120b +47%, Kimi-K2.5 +112% TPOT on H200)
        self.band_caveat = self._band_caveat()
        self._check_finite()

    def set_overhead(self, overhead: FrameworkOverhead) -> None:
        """Price iterations with ``overhead`` from now on (the kernel tables are kept:
        what fitting an overhead needs, one simulation after another)."""
        self.overhead_per_iteration_s = overhead.iteration_s(self.tp, self.tp_collectives)
        self.overhead_per_sequence_s = overhead.per_sequence_s
        self.overhead_per_kv_token_s = overhead.per_kv_token_s
        self.overhead_serial_s = overhead.per_iteration_serial_s
        self.request_overhead_s = overhead.request_overhead_s if self.include_overhead else 0.0

    def _check_allreduce(self, ranks: int) -> None:
        """One line when the profile has no all-reduce over ``ranks`` GPUs (GB200: 2, 4)."""
        key = f"allreduce_{ranks}"
        if key not in self.profile.ops:
            have = sorted(
                int(k.split("_")[1]) for k in self.profile.ops if k.startswith("allreduce_")
            )
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

    def _band_caveat(self) -> str:
        families = sorted(
            {p.op for p in self._dec_parts if p.op != "attention"}
            | {"sliding window" for p in self._dec_parts if p.window is not None}
        )
        outside = [*families] + (
            [f"{self.dtype} weights"] if self.dtype not in ("bf16", "fp8") else []
        )
        if not outside:
            return ""
        return (
            f"{', '.join(outside)}: outside the GQA bf16/fp8 rows the error bands come from"
            " (held out, such models measured +47% to +112% TPOT:"
            " docs/explanation/latency-model.md)"
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

    def _scalar_setup(self) -> None:
        """Constants of the plain-Python attention paths used per iteration."""
        ctx = self.profile.op(self._ctx_key)
        cp, chw = ctx.params, ctx.hw
        self._ctx = (
            cp["t0"],
            1.0 / (chw["peak_flops"] * cp["eff_compute"]),
            1.0 / (chw["hbm_Bps"] * cp["eff_memory"]),
            cp["p"],
            ctx.lattice,
        )
        #: seconds one attention work tile adds, spread over the SMs
        self._ctx_tile_s = cp["tau"] / chw["sm_count"]

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

    # -- token-proportional ops (tabulated) ------------------------------------------
    def _gemm(
        self, key: str, m: np.ndarray, n: float, k: float, aligned: bool = False
    ) -> np.ndarray:
        """A GEMM of the model's weights (``gemm``: in the weight dtype, with the chosen fp8
        kernel) or of the bf16 ones (``gemm_bf16``: LM head, router). ``aligned``: as if
        every token count were a multiple of 4 (no slow-path penalty)."""
        if key == "gemm":
            key = self._gemm_key
        fit = self.profile.op(key)
        if aligned and fit.params.get("unaligned_factor", 1.0) != 1.0:
            fit = OpFit(fit.op, fit.params | {"unaligned_factor": 1.0}, fit.hw, fit.lattice)
        in_bytes = 2.0 if key == "gemm_bf16" else self._gemm_weight_bytes
        feats = {
            "m": m,
            "n": np.full_like(m, float(n)),
            "k": np.full_like(m, float(k)),
            "in_bytes": np.full_like(m, in_bytes),
        }
        return op_predict(op_form(key), fit, feats)

    def _linear_ops(self, n_tokens: np.ndarray, aligned: bool = False) -> dict[str, np.ndarray]:
        """Per-op time (all layers) of every op whose cost depends only on tokens
        (``aligned``: without the GEMMs' penalty for token counts not a multiple of 4)."""
        m = self.model
        tp = self.tp
        # N = 0 is zeroed at the end; small iterations run as CUDA graphs padded to the
        # next capture size, so their token-proportional ops see the padded count.
        n = cuda_graph_padded(np.maximum(n_tokens, 1)).astype(float)
        out: dict[str, np.ndarray] = {}
        proj = np.zeros_like(n)
        for layers, width, depth, _ in projection_gemms(m, tp):
            proj = proj + layers * self._gemm("gemm", n, width, depth, aligned)
        out["attn_proj_gemm"] = proj
        dense = m.dense_layers
        if dense and m.intermediate:
            up = self._gemm("gemm", n, 2 * m.intermediate // tp, m.hidden, aligned)
            down = self._gemm("gemm", n, m.hidden, m.intermediate // tp, aligned)
            out["mlp_gemm"] = dense * (up + down)
        if m.is_moe:
            layers = m.moe_layers
            # expert parallel: whole experts (unsliced), ceil(experts / ep) on a rank
            inter = m.moe_intermediate / (1 if self.ep > 1 else tp)
            # DP ranks with EP all-gather their tokens (padded to the largest rank's: the
            # lockstep step lasts as its slowest rank, priced at its own count) before the
            # experts and reduce-scatter after (VLLM_FACTS 4, G)
            gathered = n * self.dp
            feats = {
                "tokens": gathered,
                "hidden": np.full_like(n, m.hidden),
                "inter": np.full_like(n, inter),
                "experts": np.full_like(n, m.experts),
                "top_k": np.full_like(n, m.top_k),
                "ep": np.full_like(n, self.ep),
                "w_bytes": np.full_like(n, DTYPE_BYTES[self.dtype]),
            }
            out["moe"] = layers * op_predict(op_form("moe"), self.profile.op("moe"), feats)
            router = self._gemm("gemm_bf16", n, m.experts, m.hidden, aligned)
            extra = router
            if m.shared_experts:
                width = m.shared_experts * m.moe_intermediate // tp
                extra = extra + self._gemm("gemm", n, 2 * width, m.hidden, aligned)
                extra = extra + self._gemm("gemm", n, m.hidden, width, aligned)
            out["moe_router_shared_gemm"] = layers * extra
            if self.dp > 1:
                # all-gather + reduce-scatter of the gathered hidden states over the EP
                # ranks: the two halves of a ring all-reduce of that message
                ar_ep = self.profile.op(f"allreduce_{self.ep}")
                msg = {"bytes": gathered * m.hidden * 2.0}
                out["ep_all_gather"] = layers * op_predict(op_form("allreduce"), ar_ep, msg)
        if tp > 1:
            ar = self.profile.op(f"allreduce_{tp}")
            feats = {"bytes": n * m.hidden * 2.0}
            out["allreduce"] = 2 * m.layers * op_predict(op_form("allreduce"), ar, feats)
        for key in out:
            out[key] = np.where(n_tokens > 0, out[key], 0.0)
        return out

    def _ensure_table(self, n_max: int) -> None:
        if n_max < self._table.size:
            return
        if n_max >= _TABLE_MAX:
            raise ComemInputError(
                f"iteration of {n_max} tokens exceeds the supported {_TABLE_MAX - 1}"
            )
        size = max(_TABLE_MIN, 1 << int(np.ceil(np.log2(n_max + 1))))
        # The fp8 block GEMM is ~25% slower on token counts that are not a multiple of 4
        # (vLLM runs CUTLASS only on aligned rows; the op model fits that). Iterations are
        # priced as aligned: with CUDA graphs only the 1- and 2-token graphs would pay it,
        # and a non-decreasing table would carry their penalty to every larger iteration
        # (up to 25% too dear on decodes), while keeping it would make 1 token dearer than 3.
        ops = self._linear_ops(np.arange(size), aligned=True)
        total = np.sum(list(ops.values()), axis=0)
        self._table = np.maximum.accumulate(total)
        self._table_list = self._table.tolist()
        heads = self.lm_head_time(np.arange(size))
        self._lm_table = np.maximum.accumulate(heads).tolist()

    def linear_time(self, n_tokens: np.ndarray | int) -> np.ndarray:
        """Seconds of all token-proportional ops for iterations of ``n_tokens`` tokens."""
        idx = np.asarray(n_tokens, dtype=np.int64)
        self._ensure_table(int(idx.max()) if idx.size else 0)
        return self._table[idx]

    def lm_head_time(self, n_seqs: np.ndarray | int) -> np.ndarray:
        # (untabulated: the tables call this; iteration_time reads the tabulated copy)
        """LM head over the last token of every scheduled sequence (bf16 GEMM)."""
        s = np.asarray(n_seqs, dtype=float)
        m = self.model
        t = self._gemm("gemm_bf16", np.maximum(s, 1.0), m.vocab // self.tp, m.hidden)
        return np.where(s > 0, t, 0.0)

    # -- attention ----------------------------------------------------------------------
    def decode_attention_op(
        self, batch_size: np.ndarray | int, kv_total: np.ndarray | int
    ) -> np.ndarray:
        """The fitted generation-attention op model (all layers), evaluated directly.

        Every attention part (:mod:`calibration.attention_parts`) reads its share of the
        batch's KV: all of it, at most ``window`` tokens per sequence (sliding layers, DSA's
        top-k; exact when every sequence is on one side of the window and an overestimate,
        never below the true cost, when they straddle it), or a constant state per sequence.
        """
        b = np.asarray(batch_size, dtype=float)
        t = np.sum(self.decode_attention_parts(b, kv_total), axis=0)
        return np.where(b > 0, t, 0.0)

    def decode_attention_parts(
        self, batch_size: np.ndarray | float, kv_total: np.ndarray | float
    ) -> list[np.ndarray]:
        """:meth:`decode_attention_op` of each attention part (all its layers), unsummed."""
        b_safe = np.maximum(np.asarray(batch_size, dtype=float), 1.0)
        kv_all = np.maximum(np.asarray(kv_total, dtype=float), b_safe)
        cache_bytes = 1.0 if self.kv_cache_dtype == "fp8" else 2.0
        shape = np.ones_like(kv_all * b_safe)
        times = []
        for part in self._dec_parts:
            fit = self._part_fit(part, prefill=False)
            if part.state_tokens is not None:
                kv = b_safe * part.state_tokens
            elif part.window is not None:
                kv = np.minimum(kv_all, b_safe * part.window)
            else:
                kv = kv_all
            feats = {
                "batch": b_safe * shape,
                "kv_total": kv * shape,
                "nq": shape * part.nq,
                "nkv": shape * part.nkv,
                "hd": shape * part.hd,
                "kv_bytes": shape * (part.kv_bytes or cache_bytes),
            }
            times.append(part.layers * op_predict(GENERATION_ATTENTION, fit, feats))
        return times

    def _ensure_decode_table(self) -> None:
        """Tabulate decode attention on (every B up to DECODE_TABLE_B, mean KV per sequence).

        The fitted op model's lattice can make it dip slightly as KV grows; the table is
        made non-decreasing along both axes, and linear interpolation in the mean KV
        between knots (ratio 1.1) keeps it so: more KV, or one more sequence at least as
        long as the mean, never costs less. (At a fixed *total* KV, more sequences can be
        faster: more parallel work units. That is measured, and kept.) Beyond
        DECODE_TABLE_B the op model is evaluated directly.
        """
        if self._dec_rows:
            return
        b = np.arange(1, DECODE_TABLE_B + 1, dtype=float)[:, None]
        mean = self._dec_knots_arr[None, :]
        grid = self.decode_attention_op(np.broadcast_to(b, (b.size, mean.size)), b * mean)
        grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=1), axis=0)
        self._dec_grid = grid
        self._dec_rows = grid.tolist()

    def decode_attention_time(
        self, batch_size: np.ndarray | int, kv_total: np.ndarray | int
    ) -> np.ndarray:
        """Generation attention (all layers) for ``batch_size`` decodes over ``kv_total``."""
        self._ensure_decode_table()
        b = np.asarray(batch_size, dtype=np.int64)
        kv = np.asarray(kv_total, dtype=float)
        if self._dec_cap is not None:
            kv = np.minimum(kv, b * float(self._dec_cap))
        kv = np.maximum(kv, np.maximum(b, 1))
        mean = kv / np.maximum(b, 1)
        knots = self._dec_knots_arr
        j = np.clip(np.searchsorted(knots, mean, side="right") - 1, 0, knots.size - 2)
        w = np.minimum((mean - knots[j]) / (knots[j + 1] - knots[j]), 1.0)
        row = np.clip(b, 1, DECODE_TABLE_B) - 1
        lo = self._dec_grid[row, j]
        hi = self._dec_grid[row, j + 1]
        t = lo + w * (hi - lo)
        big = b > DECODE_TABLE_B
        if np.any(big):
            t = np.where(big, self.decode_attention_op(b, kv), t)
        return np.where(b > 0, t, 0.0)

    def decode_attention_scalar(self, batch_size: int, kv_total: int) -> float:
        """Plain-Python :meth:`decode_attention_time` for one iteration."""
        if batch_size <= 0:
            return 0.0
        if batch_size > DECODE_TABLE_B:
            return float(self.decode_attention_op(batch_size, kv_total))
        self._ensure_decode_table()
        if self._dec_cap is not None:
            kv_total = min(kv_total, batch_size * self._dec_cap)
        mean = max(kv_total, batch_size) / batch_size
        knots = self._dec_knots
        j = min(max(bisect.bisect_right(knots, mean) - 1, 0), len(knots) - 2)
        w = min((mean - knots[j]) / (knots[j + 1] - knots[j]), 1.0)
        row = self._dec_rows[batch_size - 1]
        return row[j] + w * (row[j + 1] - row[j])

    def prefill_chunk_op(self, new: np.ndarray, cached: np.ndarray) -> np.ndarray:
        """The fitted context-attention op per chunk (all layers, launch floor excluded)."""
        return np.sum(self.prefill_chunk_parts(new, cached), axis=0)

    def prefill_chunk_parts(self, new: np.ndarray, cached: np.ndarray) -> list[np.ndarray]:
        """:meth:`prefill_chunk_op` of each attention part (all its layers), unsummed."""
        q = np.asarray(new, dtype=float)
        c = np.asarray(cached, dtype=float)
        times = []
        for part in self._pre_parts:
            fit = self._part_fit(part, prefill=True)
            if op_form(fit.op).name == "generation_attention":  # GDN: batch 1 per chunk
                ones = np.ones_like(q + c)
                feats = {
                    "batch": ones,
                    "kv_total": np.maximum(q, 1.0) * ones,
                    "nq": ones * part.nq,
                    "nkv": ones * part.nkv,
                    "hd": ones * part.hd,
                    "kv_bytes": ones * (part.kv_bytes or 2.0),
                }
                w = op_predict(GENERATION_ATTENTION, fit, feats) - fit.params["t0"]
                times.append(part.layers * np.maximum(w, 0.0))
                continue
            p, hw = fit.params, fit.hw
            flops, moved = context_flops_bytes(q, c, part.nq, part.nkv, part.hd, part.window)
            tiles = query_tiles(q, part.nq, part.nkv)
            t_compute = flops / (hw["peak_flops"] * p["eff_compute"])
            t_compute = t_compute + tiles * p["tau"] / hw["sm_count"]
            w = smooth_max(t_compute, moved / (hw["hbm_Bps"] * p["eff_memory"]), p["p"])
            if fit.lattice is not None:
                coords = np.log2(np.maximum(q, 1.0)), np.full_like(q, np.log2(part.nq))
                w = w * fit.lattice.factor(*coords)
            times.append(part.layers * w)
        return times

    def _ensure_prefill_table(self) -> None:
        """Tabulate the per-chunk cost over (new tokens, cached prefix), monotone in both.

        As for decode: the lattice may dip between knots; the table is made
        non-decreasing along both axes and bilinear interpolation keeps it so, so a longer
        chunk, a longer prefix or one more chunk never costs less.
        """
        if self._pre_rows:
            return
        q = PREFILL_TABLE_Q_KNOTS[:, None]
        c = PREFILL_TABLE_PREFIX_KNOTS[None, :]
        grid = self.prefill_chunk_op(
            np.broadcast_to(q, (q.size, c.size)), np.broadcast_to(c, (q.size, c.size))
        )
        grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=1), axis=0)
        self._pre_grid = grid
        self._pre_rows = grid.tolist()

    def prefill_attention_scalar(self, new: Sequence[int], cached: Sequence[int]) -> float:
        """Context attention (all layers) of one iteration's prefill chunks (one launch)."""
        if not new:
            return 0.0
        self._ensure_prefill_table()
        qk, ck, rows = self._pre_q, self._pre_c, self._pre_rows
        total = self._ctx_launches * self._ctx[0]
        for q_int, c_int in zip(new, cached, strict=True):
            q, c = float(q_int), float(c_int)
            i = min(max(bisect.bisect_right(qk, q) - 1, 0), len(qk) - 2)
            j = min(max(bisect.bisect_right(ck, c) - 1, 0), len(ck) - 2)
            wq = min((q - qk[i]) / (qk[i + 1] - qk[i]), 1.0)
            wc = min((c - ck[j]) / (ck[j + 1] - ck[j]), 1.0)
            lo, hi = rows[i], rows[i + 1]
            a = lo[j] + wc * (lo[j + 1] - lo[j])
            b = hi[j] + wc * (hi[j + 1] - hi[j])
            total += a + wq * (b - a)
        return total

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
        if n >= len(self._table_list):
            self._ensure_table(n)
        t = self._table_list[n] + self._lm_table[num_decode + len(prefill_new)]
        if num_decode:
            t += self.decode_attention_scalar(num_decode, decode_kv_total)
        if prefill_new:
            t += self.prefill_attention_scalar(prefill_new, prefill_cached)
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
            cpu = self.overhead_per_iteration_s + self.overhead_per_sequence_s * seqs
            if self.overhead_per_kv_token_s:
                kv = decode_kv_total + sum(prefill_new) + sum(prefill_cached)
                cpu += self.overhead_per_kv_token_s * kv
            t = (t if t > cpu else cpu) if self.async_scheduling else t + cpu
            t += self.overhead_serial_s
        return t

    # -- whole iterations ---------------------------------------------------------------
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
        return np.where(gpu > 0, t + self.overhead_serial_s, 0.0)

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
            return cpu + (self.overhead_serial_s if self.include_overhead else 0.0)
        gpu = np.asarray(gpu_s, dtype=float)
        return self.with_framework(gpu, n_seqs, kv_tokens) - gpu

    def breakdown(self, batch: Batch) -> dict[str, float]:
        """Seconds per component of one iteration (sums to :meth:`iteration_time`)."""
        n = batch.num_tokens
        if n == 0:
            return {}
        ops = self._linear_ops(np.array([n]), aligned=True)
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
        linear = sum(v for k, v in parts.items() if k in self._linear_keys())
        parts["monotone_adjustment"] = tabulated - linear
        return parts

    def _linear_keys(self) -> set[str]:
        return {
            "attn_proj_gemm", "mlp_gemm", "moe", "moe_router_shared_gemm", "allreduce",
            "ep_all_gather",
        }  # fmt: skip

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
        self._ensure_table(n)
        base = self._table_list[n] + self._lm_table[seqs]
        j = np.arange(steps, dtype=float)
        t = np.full(steps, base)
        if num_decode:
            # one table row (the batch size is fixed), linear in the mean KV per sequence:
            # np.interp is the scalar path's interpolation, vectorized
            if num_decode <= DECODE_TABLE_B:
                self._ensure_decode_table()
                kv = kv_total0 + num_decode * j
                if self._dec_cap is not None:
                    kv = np.minimum(kv, float(num_decode * self._dec_cap))
                mean = kv / num_decode
                t += np.interp(mean, self._dec_knots_arr, self._dec_grid[num_decode - 1])
            else:
                kv = kv_total0 + num_decode * j.astype(np.int64)
                t += self.decode_attention_time(np.full(steps, num_decode, dtype=np.int64), kv)
        if chunk:
            self._ensure_prefill_table()
            qk = self._pre_q
            q = float(chunk)
            i = min(max(bisect.bisect_right(qk, q) - 1, 0), len(qk) - 2)
            wq = min((q - qk[i]) / (qk[i + 1] - qk[i]), 1.0)
            grid = self._pre_grid
            row = grid[i] + wq * (grid[i + 1] - grid[i])
            t += self._ctx_launches * self._ctx[0] + np.interp(
                cached0 + chunk * j, PREFILL_TABLE_PREFIX_KNOTS, row
            )
        if not self.include_overhead:
            return t
        held: np.ndarray | float = 0.0
        if self.overhead_per_kv_token_s:
            held = kv_total0 + num_decode * j + (cached0 + chunk * (j + 1) if chunk else 0.0)
        return self.with_framework(t, seqs, held)

    def lm_head_tabulated(self, n_seqs: np.ndarray | int) -> np.ndarray:
        """The LM-head times :meth:`iteration_time` uses (monotone in sequences)."""
        idx = np.asarray(n_seqs, dtype=np.int64)
        self._ensure_table(int(idx.max()) if idx.size else 0)
        return np.asarray(self._lm_table)[idx]


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
