"""Compact, physically shaped per-op latency models and their fits.

Every op model is ``t = t0 + smooth_max(t_compute, t_memory)`` (a roofline with a
launch floor and fitted efficiencies against the GPU's datasheet peaks), times a
clamped log2-lattice correction (:mod:`calibration.lattice`). Features are the
per-GPU shapes (after tensor parallelism). All times are seconds.

Why this shape: the roofline extrapolates to shapes absent from the tables (GLM-4.7's
MoE, 32 KV heads per GPU in decode), while the lattice removes the systematic
kernel-selection error inside the measured range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas and scipy are for fitting; importing them costs 0.5 s
    import pandas as pd

from calibration.lattice import Lattice

Features = dict[str, np.ndarray]


def smooth_max(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    """p-norm of (a, b): max(a, b) as p -> inf, a + b at p = 1 (no overlap)."""
    hi = np.maximum(a, b)
    lo = np.minimum(a, b)
    safe = np.where(hi > 0, hi, 1.0)
    return np.where(hi > 0, hi * (1.0 + (lo / safe) ** p) ** (1.0 / p), 0.0)


@dataclass
class OpFit:
    """A fitted op model: roofline parameters, hardware constants and lattice."""

    op: str
    params: dict[str, float]
    hw: dict[str, float]
    lattice: Lattice | None
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": {k: float(f"{v:.6g}") for k, v in self.params.items()},
            "hw": self.hw,
            "lattice": self.lattice.to_dict() if self.lattice is not None else None,
            "fit": self.stats,
        }

    @classmethod
    def from_dict(cls, op: str, data: dict[str, Any]) -> OpFit:
        lat = Lattice.from_dict(data["lattice"]) if data.get("lattice") else None
        return cls(op, dict(data["params"]), dict(data["hw"]), lat, dict(data.get("fit", {})))


@dataclass(frozen=True)
class OpForm:
    """The shape of one op model: parameters, roofline, lattice coordinates."""

    name: str
    param_names: tuple[str, ...]
    starts: tuple[tuple[float, ...], ...]
    base: Callable[[dict[str, float], dict[str, float], Features], np.ndarray]
    coords: Callable[[Features], list[np.ndarray]]
    axes: list[list[float]]
    #: False: the lattice scales the work above the launch floor ``t0``, not ``t0`` itself
    #: (an op priced per item plus one launch, where the items' cost is what varies).
    lattice_on_launch: bool = True
    #: Parameters a profile may lack (fitted only when the tables have the rows that
    #: identify them); what they price is then refused, not guessed.
    optional_params: tuple[str, ...] = ()


def _gemm_base(p: dict[str, float], hw: dict[str, float], f: Features) -> np.ndarray:
    m, n, k, b = f["m"], f["n"], f["k"], f["in_bytes"]
    t_compute = 2.0 * m * n * k / (hw["peak_flops"] * p["eff_compute"])
    bytes_moved = (k * n + m * k) * b + m * n * 2.0
    # Narrow outputs (small n) expose too few tiles to fill the SMs in the
    # memory-bound regime: effective bandwidth falls as n / (n + n_half).
    t_memory = bytes_moved / (hw["hbm_Bps"] * p["eff_memory"]) * (1.0 + p["n_half"] / n)
    # Kernels take a faster path when the token count is a multiple of 4 (row alignment
    # of the activations and their scales); the fp8 block-scaled tables show ~20%.
    aligned = np.mod(m, 4) == 0
    t = p["t0"] + smooth_max(t_compute, t_memory, p["p"])
    return np.where(aligned, t, t * p["unaligned_factor"])


GEMM = OpForm(
    name="gemm",
    param_names=("t0", "eff_compute", "eff_memory", "p", "n_half", "unaligned_factor"),
    starts=((3e-6, 0.8, 0.85, 3.0, 256.0, 1.0), (6e-6, 0.6, 0.7, 1.5, 1024.0, 1.2)),
    base=_gemm_base,
    coords=lambda f: [np.log2(f["m"]), np.log2(f["n"]), np.log2(f["k"])],
    axes=[
        list(range(15)),
        [9, 10, 11, 12, 13, 14, 16],
        [9, 10, 11, 12, 13, 14, 16],
    ],
)


def expected_active_experts(
    tokens: np.ndarray, experts: np.ndarray, top_k: np.ndarray
) -> np.ndarray:
    """Experts touched by ``tokens`` tokens routing uniformly to ``top_k`` of ``experts``
    (the form's shape; the skew of real routing, :data:`MOE_ROUTING`, is in the fitted
    efficiencies and lattice)."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def local_experts(experts: np.ndarray, ep: np.ndarray) -> np.ndarray:
    """Experts on the busiest rank of an expert-parallel group of ``ep`` ranks.

    vLLM (``determine_expert_map``) gives each rank a contiguous range of
    ``experts // ep`` experts and the first ``experts % ep`` ranks one more; the layer
    waits for the rank with the most.
    """
    return np.ceil(experts / ep)


def _moe_base(p: dict[str, float], hw: dict[str, float], f: Features) -> np.ndarray:
    """One rank's fused-MoE time: ``ep`` = 1 is the whole layer (each expert sliced by TP
    in ``inter``), ``ep`` > 1 one rank of expert parallelism (whole experts, inter unsliced).

    Under expert parallelism every rank receives all tokens (vLLM, DP = 1: no all-to-all)
    and runs its ``share`` = local / total experts of the assignment slots: weights of the
    local experts touched, their FLOPs and their GEMM input/output traffic. The slots of
    experts on other ranks are not free: vLLM's fused-MoE kernel still runs its activation,
    the zero fill and the top-k reduction over all ``tokens * top_k`` slots; they cost
    ``nonlocal_slot`` times a local slot's traffic (fitted on the tables' ``moe_ep_size``
    rows; it does not enter without expert parallelism, where every slot is local).
    """
    t, h, i, e, k, b = f["tokens"], f["hidden"], f["inter"], f["experts"], f["top_k"], f["w_bytes"]
    ep = f.get("ep", np.ones_like(t))
    local = local_experts(e, ep)
    share = local / e
    active = share * expected_active_experts(t, e, k)
    weight_bytes = active * 3.0 * h * i * b
    slot_bytes = t * k * (2.0 * h + 3.0 * i) * 2.0
    nonlocal_cost = p.get("nonlocal_slot", 0.0) * (1.0 - share)
    act_bytes = slot_bytes * (share + nonlocal_cost)
    t_memory = (weight_bytes + act_bytes) / (hw["hbm_Bps"] * p["eff_memory"])
    t_compute = 6.0 * t * k * share * h * i / (hw["peak_flops"] * p["eff_compute"])
    return p["t0"] + smooth_max(t_compute, t_memory, p["p"])


def _moe_coords(f: Features) -> list[np.ndarray]:
    ep = f.get("ep", np.ones_like(f["tokens"]))
    return [np.log2(f["tokens"]), np.log2(f["inter"]), np.log2(ep)]


MOE = OpForm(
    name="moe",
    param_names=("t0", "eff_compute", "eff_memory", "p", "nonlocal_slot"),
    starts=((2e-5, 0.5, 0.7, 2.0, 0.5), (5e-5, 0.3, 0.5, 1.2, 0.1)),
    base=_moe_base,
    # Kernel configs switch with the token count (every power of two gets a knot), with
    # the per-GPU expert width and with the expert-parallel size (the local expert count
    # picks vLLM's tuned config; an axis per shape overfits: see README, expert
    # parallelism).
    coords=_moe_coords,
    axes=[list(range(15)), [6, 7, 8, 9, 10, 11, 12, 13, 14], [0, 1, 2, 3]],
    optional_params=("nonlocal_slot",),
)


def attended_pairs(q: np.ndarray, prefix: np.ndarray, window: float | None = None) -> np.ndarray:
    """(query, key) pairs of a causal prefill chunk: ``q`` new tokens after ``prefix``.

    The token at position ``p`` (1-based) attends to ``p`` keys, or to ``min(p, window)``
    under a sliding window.
    """
    q = np.asarray(q, dtype=float)
    prefix = np.asarray(prefix, dtype=float)
    full = q * (prefix + (q + 1.0) / 2.0)
    if window is None:
        return full
    # positions prefix+1 .. min(prefix+q, window) attend to themselves; the rest to window
    last_inside = np.minimum(prefix + q, window)
    inside = np.maximum(last_inside - prefix, 0.0)
    inside_pairs = inside * (prefix + 1.0 + np.maximum(last_inside, prefix + 1.0)) / 2.0
    return np.where(prefix + q <= window, full, inside_pairs + (q - inside) * window)


def context_flops_bytes(
    q: np.ndarray,
    prefix: np.ndarray,
    nq: np.ndarray | float,
    nkv: np.ndarray | float,
    hd: np.ndarray | float,
    window: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and HBM bytes of causal attention for one prefill chunk.

    ``q`` new tokens attend to ``prefix`` cached tokens plus causally to each other:
    QK^T and PV each cost ``2 * hd`` FLOPs per (query, key) pair per head. Under a sliding
    ``window`` a token sees at most ``window`` keys and only the last ``window`` cached
    tokens are read.
    """
    flops = 4.0 * nq * hd * attended_pairs(q, prefix, window)
    read = prefix if window is None else np.minimum(prefix, window)
    bytes_moved = (2.0 * q * nq + 2.0 * nkv * (q + read)) * hd * 2.0
    return flops, bytes_moved


#: Query rows per attention work tile (FlashAttention-3's M tile for head_dim 128).
ATTENTION_TILE_ROWS = 128.0


def query_tiles(q: np.ndarray, nq: np.ndarray | float, nkv: np.ndarray | float) -> np.ndarray:
    """Work tiles of one prefill chunk: per KV head, its query group's rows (q tokens times
    nq / nkv heads, packed together as FlashAttention packs GQA) in tiles of 128 rows, at
    least one. Not rounded up to whole tiles: the latency model tabulates chunks on knots
    ~8% apart, and a step between knots would be smeared into a 30% error (fitted MAPE
    7.8% with whole tiles, 7.9% without)."""
    return nkv * np.maximum(q * (nq / nkv) / ATTENTION_TILE_ROWS, 1.0)


def _ctx_chunk_work(p: dict[str, float], hw: dict[str, float], f: Features) -> np.ndarray:
    """Seconds of one chunk's attention above the launch floor.

    Each work tile has a fixed cost ``tau`` (loading its queries, the softmax epilogue,
    writing out) on one of the SMs, on top of its FLOPs: small chunks are tile-bound,
    which is why a launch of 256 one-token chunks costs far more than its FLOPs.
    """
    flops, bytes_moved = context_flops_bytes(f["q"], f["prefix"], f["nq"], f["nkv"], f["hd"])
    tiles = query_tiles(f["q"], f["nq"], f["nkv"])
    t_compute = flops / (hw["peak_flops"] * p["eff_compute"]) + tiles * p["tau"] / hw["sm_count"]
    t_memory = bytes_moved / (hw["hbm_Bps"] * p["eff_memory"])
    return smooth_max(t_compute, t_memory, p["p"])


def _ctx_base(p: dict[str, float], hw: dict[str, float], f: Features) -> np.ndarray:
    return p["t0"] + f["chunks"] * _ctx_chunk_work(p, hw, f)


CONTEXT_ATTENTION = OpForm(
    name="context_attention",
    param_names=("t0", "eff_compute", "eff_memory", "p", "tau"),
    starts=(
        (1e-5, 0.5, 0.5, 2.0, 3e-6),
        (3e-5, 0.3, 0.3, 1.2, 1e-6),
        (1e-5, 2.0, 1.0, 3.0, 1e-5),
    ),
    base=_ctx_base,
    # Per chunk: its length and the query heads, scaling the chunk's work (not the launch
    # floor: the latency model sums chunks and adds one launch). Not the number of chunks
    # in the launch: a correction that made existing chunks cheaper when one more joins
    # would let an iteration with more work cost less.
    coords=lambda f: [np.log2(f["q"]), np.log2(f["nq"])],
    axes=[[0, 4, 6, 8, 9, 10, 11, 12, 13, 14], [0, 1, 2, 3, 4, 5, 6]],
    lattice_on_launch=False,
)


def _gen_base(p: dict[str, float], hw: dict[str, float], f: Features) -> np.ndarray:
    b, kv, nq, nkv, hd = f["batch"], f["kv_total"], f["nq"], f["nkv"], f["hd"]
    per_token_compute = 4.0 * nq * hd / (hw["peak_flops"] * p["eff_compute"])
    per_token_memory = 2.0 * nkv * hd * f["kv_bytes"] / (hw["hbm_Bps"] * p["eff_memory"])
    # Per-sequence work (scheduling split-KV tiles, writing outputs) and KV streaming
    # overlap: the larger of the two dominates, the GQA dot products add on top.
    work = smooth_max(p["t_seq"] * b * nkv, kv * per_token_memory, p["p"])
    return p["t0"] + work + kv * per_token_compute


GENERATION_ATTENTION = OpForm(
    name="generation_attention",
    param_names=("t0", "t_seq", "eff_compute", "eff_memory", "p"),
    starts=((8e-6, 2e-7, 0.3, 0.8, 3.0), (1e-5, 1e-6, 0.1, 0.5, 1.5)),
    base=_gen_base,
    # Parallel work units of the split-KV kernel: one per (sequence, KV head).
    coords=lambda f: [np.log2(f["batch"] * f["nkv"]), np.log2(f["kv_total"] / f["batch"])],
    axes=[[0, 2, 4, 6, 8, 9, 10, 11, 12, 13, 14], [1, 4, 7, 9, 11, 12, 13, 14, 15, 16, 17]],
)


def _ar_base(p: dict[str, float], hw: dict[str, float], f: Features) -> np.ndarray:
    return p["t0"] + f["bytes"] / p["bus_Bps"]


ALLREDUCE = OpForm(
    name="allreduce",
    param_names=("t0", "bus_Bps"),
    starts=((5e-6, 2e11), (1e-5, 1e11)),
    base=_ar_base,
    coords=lambda f: [np.log2(f["bytes"])],
    axes=[[8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]],
)

FORMS: dict[str, OpForm] = {
    f.name: f for f in (GEMM, MOE, CONTEXT_ATTENTION, GENERATION_ATTENTION, ALLREDUCE)
}


def predict(form: OpForm, fit: OpFit, features: Features) -> np.ndarray:
    """Latency in seconds of the op for each row of ``features``."""
    base = form.base(fit.params, fit.hw, features)
    if fit.lattice is None:
        return base
    # A lattice fitted before its form gained a coordinate (the MoE's expert-parallel
    # size) reads the leading ones; the new one is 0 (log2 1) where it was fitted.
    factor = fit.lattice.factor(*form.coords(features)[: len(fit.lattice.axes)])
    if form.lattice_on_launch:
        return base * factor
    return fit.params["t0"] + (base - fit.params["t0"]) * factor


def mape(pred: np.ndarray, measured: np.ndarray) -> float:
    return float(np.mean(np.abs(pred / measured - 1.0)))


def error_stats(pred: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    rel = np.abs(pred / measured - 1.0)
    return {
        "rows": int(len(rel)),
        "mape": round(float(rel.mean()), 4),
        "p90": round(float(np.quantile(rel, 0.9)), 4),
        "max": round(float(rel.max()), 4),
    }


def fit_form(
    form: OpForm,
    features: Features,
    measured_s: np.ndarray,
    hw: dict[str, float],
    use_lattice: bool = True,
) -> OpFit:
    """Fit roofline parameters (log-residual least squares, multi-start), then lattice."""

    # Every parameter is positive: fit its log. The norm exponent p is 1 + exp(theta) so
    # that the smooth max stays a norm (p >= 1) without clamping after the fit.
    def unpack(theta: np.ndarray) -> dict[str, float]:
        values = dict(zip(form.param_names, np.exp(theta), strict=True))
        if "p" in values:
            values["p"] = 1.0 + values["p"]
        return values

    def pack(start: tuple[float, ...]) -> np.ndarray:
        values = dict(zip(form.param_names, start, strict=True))
        if "p" in values:
            values["p"] = values["p"] - 1.0
        return np.log(np.asarray(list(values.values()), dtype=float))

    def residual(theta: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            r = np.log(form.base(unpack(theta), hw, features) / measured_s)
        return np.nan_to_num(r, nan=50.0, posinf=50.0, neginf=-50.0)

    best = None
    for start in form.starts:
        from scipy.optimize import least_squares

        result = least_squares(residual, pack(start), diff_step=1e-4)
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    params = unpack(best.x)
    base = form.base(params, hw, features)
    stats: dict[str, Any] = {"roofline_only": error_stats(base, measured_s)}
    lattice = None
    if use_lattice:
        coords = form.coords(features)
        lattice = Lattice.fit(form.axes, coords, np.log(measured_s / base))
        if not form.lattice_on_launch:
            # Gauss-Newton on log(t0 + work * e^l): each row's log time moves by the share
            # of its time that is work, times the change in l.
            work = base - params["t0"]
            lattice = Lattice(lattice.axes, np.zeros_like(lattice.values))
            for _ in range(6):
                log_l = lattice.log_factor(*coords)
                pred = params["t0"] + work * np.exp(log_l)
                share = work * np.exp(log_l) / pred
                target = np.log(measured_s / pred) + share * log_l
                lattice = Lattice.fit(form.axes, coords, target, row_scale=share)
        fit = OpFit(form.name, params, hw, lattice)
        stats["with_lattice"] = error_stats(predict(form, fit, features), measured_s)
    return OpFit(form.name, params, hw, lattice, stats)


# --- selecting measured rows as features ------------------------------------------------


def _median_of_repeats(rows: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Some tables hold several measurements of one configuration: keep their median."""
    return rows.groupby(key, as_index=False).agg(latency=("latency", "median"))


#: kernel dtype names in the aiconfigurator tables for each profile dtype, GEMM and MoE.
#: fp8 uses the block-scaled kernels (the FP8 checkpoints of GLM-4.7 and Qwen3-Coder are
#: 128x128 block-quantized); fp4 the NVFP4 ones (CUTLASS GEMM, FlashInfer TRT-LLM MoE); the
#: weight-only dtypes keep bf16 GEMMs and quantize the experts, whose op is the bf16
#: fused-MoE fit priced at 4-bit weight bytes (the tables' Marlin int4 / MXFP4 rows are
#: refuted by served models: :mod:`calibration.weight_only`).
KERNEL_DTYPES = {"bf16": "bfloat16", "fp8": "fp8_block", "fp4": "nvfp4"}
MOE_KERNEL_DTYPES = KERNEL_DTYPES | {"int4": "bfloat16", "mxfp4": "bfloat16"}

#: Bytes per weight element of each table dtype name (scales included, see
#: :data:`calibration.dtypes.DTYPE_BYTES`).
TABLE_DTYPE_BYTES = {
    "bfloat16": 2.0,
    "fp8": 1.0,
    "fp8_block": 1.0,
    "nvfp4": 0.5 + 1.0 / 16,
    "int4_wo": 0.5 + 2.0 / 32,
    "w4a16_mxfp4": 0.5 + 1.0 / 32,
}

#: The per-tensor scaled fp8 GEMM (vLLM's CUTLASS ``scaled_mm``): ``--quantization fp8`` on
#: a bf16 checkpoint and the per-tensor / per-channel FP8 checkpoints (Llama-3.1 FP8).
FP8_TENSOR_KERNEL = "fp8"


def gemm_rows(
    df: pd.DataFrame, dtype: str, kernel: str | None = None
) -> tuple[Features, np.ndarray]:
    """GEMM rows of the profile ``dtype`` (``kernel``: the table's dtype name instead)."""
    name = kernel if kernel is not None else kernel_dtype(df["gemm_dtype"], dtype)
    rows = df[(df["gemm_dtype"] == name) & (df["m"] <= 16384)]
    rows = rows[(rows["n"] >= 512) & (rows["k"] >= 512)]
    rows = _median_of_repeats(rows, ["m", "n", "k"])
    f = {c: rows[c].to_numpy(float) for c in ("m", "n", "k")}
    f["in_bytes"] = np.full(len(rows), TABLE_DTYPE_BYTES[name])
    return f, rows["latency"].to_numpy(float) * 1e-3


#: The MoE kernels a profile is fitted on: vLLM's fused kernel (the committed tables) and the
#: reference layer of ``comem calibrate microbench`` (a device's own tables).
MOE_KERNEL_SOURCES = (
    "vllm_fused_moe",
    "torch_loop_over_experts",
    "vllm_flashinfer_trtllm_moe_fp4",
    "vllm_marlin_int4_moe",
    "vllm_mxfp4_moe",
)


def kernel_dtype(values: pd.Series, dtype: str, moe: bool = False) -> str:
    """The tables' dtype name for a profile dtype (GEMM, or MoE with ``moe``): fp8 is
    block-scaled where the table has it (the FP8 checkpoints of GLM-4.7 and Qwen3-Coder),
    else per-tensor scaled; the weight-only dtypes run bf16 GEMMs."""
    name = (MOE_KERNEL_DTYPES if moe else KERNEL_DTYPES).get(dtype, "bfloat16")
    if dtype == "fp8" and not (values == name).any():
        return "fp8"
    return name


#: The token-to-expert routing the MoE op is fitted on: aiconfigurator's least skewed power
#: law (expert popularity ~ rank^-1.01). A trained router is not balanced: ``balanced`` rows
#: spread ``tokens * top_k`` slots over the most experts a batch can touch, so at decode
#: sizes (16-128 tokens) they read 15-55% more expert weights than the power-law rows take
#: time for. Chosen among the tables' three routings (balanced, power_law_1.01,
#: power_law_1.2) by the served rows' cross-validated TPOT (benchmarks/serving_transfer.py:
#: LOMO 9.9% / 8.4% / 8.5%, LOGO 8.3% / 8.0% / 8.0%); 1.01 and 1.2 are within noise, the
#: milder skew is kept. No served model's own routing statistics are in the data.
MOE_ROUTING = "power_law_1.01"

#: The routing of a table without :data:`MOE_ROUTING` rows (``comem calibrate microbench``
#: measures its reference layer with balanced routing only).
MOE_ROUTING_FALLBACK = "balanced"


def _moe_table_rows(df: pd.DataFrame, dtype: str) -> pd.DataFrame:
    """The MoE rows a profile of ``dtype`` is fitted on, every routing: its kernel dtype and
    sources, one node, up to 16k tokens."""
    name = kernel_dtype(df["moe_dtype"], dtype, moe=True)
    one_node = ((df["moe_ep_size"] == 1) & (df["moe_tp_size"] <= 8)) | (
        (df["moe_tp_size"] == 1) & (df["moe_ep_size"] <= 8)
    )
    return df[
        (df["moe_dtype"] == name)
        & one_node
        & (df["kernel_source"].isin(MOE_KERNEL_SOURCES))
        & (df["num_tokens"] <= 16384)
    ]


def _routing_of(rows: pd.DataFrame) -> str:
    """:data:`MOE_ROUTING` where ``rows`` (a fit's rows, every routing) have enough of it
    to fit (4), else :data:`MOE_ROUTING_FALLBACK`."""
    enough = (rows["distribution"] == MOE_ROUTING).sum() >= 4
    return MOE_ROUTING if enough else MOE_ROUTING_FALLBACK


def moe_routing(df: pd.DataFrame, dtype: str) -> str:
    """The routing ``dtype``'s MoE op is fitted on in table ``df``: :data:`MOE_ROUTING`
    where the rows it would be fitted on have enough of it (4), else
    :data:`MOE_ROUTING_FALLBACK`."""
    return _routing_of(_moe_table_rows(df, dtype))


def moe_rows(
    df: pd.DataFrame, dtype: str, distribution: str | None = None
) -> tuple[Features, np.ndarray]:
    """Fused-MoE rows on one node: tensor-parallel (``moe_tp_size`` <= 8, one rank's
    slice of every expert) and expert-parallel (``moe_ep_size`` 2-8, one rank's whole
    experts, all tokens), ``distribution`` routing (default :func:`moe_routing`)."""
    name = kernel_dtype(df["moe_dtype"], dtype, moe=True)
    rows = _moe_table_rows(df, dtype)
    if distribution is None:
        distribution = _routing_of(rows)
    rows = rows[rows["distribution"] == distribution]
    rows = _median_of_repeats(
        rows,
        [
            "num_tokens",
            "hidden_size",
            "inter_size",
            "num_experts",
            "topk",
            "moe_tp_size",
            "moe_ep_size",
        ],
    )
    f = {
        "tokens": rows["num_tokens"].to_numpy(float),
        "hidden": rows["hidden_size"].to_numpy(float),
        "inter": rows["inter_size"].to_numpy(float) / rows["moe_tp_size"].to_numpy(float),
        "experts": rows["num_experts"].to_numpy(float),
        "top_k": rows["topk"].to_numpy(float),
        "ep": rows["moe_ep_size"].to_numpy(float),
        "w_bytes": np.full(len(rows), TABLE_DTYPE_BYTES[name]),
    }
    return f, rows["latency"].to_numpy(float) * 1e-3


#: KV-cache dtype names in the attention tables for each ``kv_cache_dtype``
KV_TABLE_DTYPES = {"bf16": "bfloat16", "fp8": "fp8"}


def context_rows(df: pd.DataFrame, kv_dtype: str = "bf16") -> tuple[Features, np.ndarray]:
    """Prefill attention rows with a ``kv_dtype`` KV cache (no window, head_dim 128)."""
    rows = df[
        (df["kv_cache_dtype"] == KV_TABLE_DTYPES[kv_dtype])
        & (df["window_size"] == 0)
        & (df["step"] == 0)
        & (df["head_dim"] == 128)
        # one iteration's token budget: at most 16k prefill tokens in all its chunks
        & (df["isl"] * df["batch_size"] <= 16384)
    ]
    rows = _median_of_repeats(
        rows, ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"]
    )
    f = {
        "q": rows["isl"].to_numpy(float),
        "prefix": np.zeros(len(rows)),
        "chunks": rows["batch_size"].to_numpy(float),
        "nq": rows["num_heads"].to_numpy(float),
        "nkv": rows["num_key_value_heads"].to_numpy(float),
        "hd": rows["head_dim"].to_numpy(float),
    }
    return f, rows["latency"].to_numpy(float) * 1e-3


def generation_rows(df: pd.DataFrame, kv_dtype: str = "bf16") -> tuple[Features, np.ndarray]:
    """Decode attention rows with a ``kv_dtype`` KV cache (no window, head_dim 128)."""
    rows = df[
        (df["kv_cache_dtype"] == KV_TABLE_DTYPES[kv_dtype])
        & (df["window_size"] == 0)
        & (df["head_dim"] == 128)
        & (df["step"] + 1 <= 131072)
    ]
    rows = _median_of_repeats(
        rows, ["batch_size", "step", "num_heads", "num_key_value_heads", "head_dim"]
    )
    batch = rows["batch_size"].to_numpy(float)
    f = {
        "batch": batch,
        "kv_total": batch * (rows["step"].to_numpy(float) + 1.0),
        "nq": rows["num_heads"].to_numpy(float),
        "nkv": rows["num_key_value_heads"].to_numpy(float),
        "hd": rows["head_dim"].to_numpy(float),
        "kv_bytes": np.full(len(rows), 1.0 if kv_dtype == "fp8" else 2.0),
    }
    return f, rows["latency"].to_numpy(float) * 1e-3


def allreduce_rows(df: pd.DataFrame, num_gpus: int) -> tuple[Features, np.ndarray]:
    # vLLM captures the all-reduce inside (piecewise) CUDA graphs: use the graph backend.
    rows = df[
        (df["backend"] == "vllm_graph")
        & (df["num_gpus"] == num_gpus)
        & (df["allreduce_dtype"] == "bfloat16")
    ]
    rows = _median_of_repeats(rows, ["message_size"])
    f = {"bytes": rows["message_size"].to_numpy(float) * 2.0}
    return f, rows["latency"].to_numpy(float) * 1e-3
