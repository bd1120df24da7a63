"""The ops whose cost depends only on an iteration's token count, tabulated.

GEMMs (attention projections, dense MLP, MoE router and shared experts), the MoE experts,
the tensor-parallel all-reduces and, with data-parallel expert parallelism, the experts'
all-gather / reduce-scatter: their sum is tabulated once per model over ``N = 0..`` tokens,
and the LM head over the scheduled sequences. Both tables are made non-decreasing (a real
GPU is not quite, but a model that charged less for more work would make schedulers game
it).
"""

from __future__ import annotations

import numpy as np

from calibration.attention_parts import projection_gemms
from calibration.dtypes import DTYPE_BYTES
from calibration.errors import ComemInputError
from calibration.model_spec import ModelSpec
from calibration.opmodels import OpFit
from calibration.opmodels import predict as op_predict
from calibration.profile import Profile, op_form

_TABLE_MIN = 1 << 14
_TABLE_MAX = 1 << 21

#: vLLM V1's default CUDA-graph capture sizes (CompilationConfig: 1, 2, 4, then steps of 8
#: to 256 and of 16 to max_capture_size = 512). Iterations up to 512 tokens are padded
#: to the next size; larger ones run eagerly at their own size.
CUDA_GRAPH_SIZES = np.array([1, 2, 4, *range(8, 256, 8), *range(256, 513, 16)])

#: The ops :meth:`TokenOpCost.linear_ops` prices (the keys of its result).
LINEAR_OP_KEYS = frozenset(
    {"attn_proj_gemm", "mlp_gemm", "moe", "moe_router_shared_gemm", "allreduce", "ep_all_gather"}
)


def cuda_graph_padded(n_tokens: np.ndarray) -> np.ndarray:
    """Token count the GPU actually processes for iterations of ``n_tokens`` tokens."""
    n = np.asarray(n_tokens, dtype=np.int64)
    idx = np.searchsorted(CUDA_GRAPH_SIZES, np.minimum(n, CUDA_GRAPH_SIZES[-1]))
    return np.where(n <= CUDA_GRAPH_SIZES[-1], CUDA_GRAPH_SIZES[idx], n)


class TokenOpCost:
    """Token-proportional ops of ``model`` on ``tp`` GPUs (experts over ``ep`` ranks, ``dp``
    data-parallel ranks gathering their tokens), priced by ``profile``'s fits.

    ``gemm_key``: the profile op of the model's dense GEMMs (``gemm`` or
    ``gemm_fp8_tensor``); ``gemm_weight_bytes``: bytes per weight they read; ``dtype``: the
    weight dtype of the experts.
    """

    def __init__(
        self,
        model: ModelSpec,
        profile: Profile,
        tp: int,
        ep: int,
        dp: int,
        dtype: str,
        gemm_key: str,
        gemm_weight_bytes: float,
    ) -> None:
        self.model = model
        self.profile = profile
        self.tp, self.ep, self.dp, self.dtype = tp, ep, dp, dtype
        self.gemm_key = gemm_key
        self.gemm_weight_bytes = gemm_weight_bytes
        self._table = np.zeros(0)
        #: the tables as lists (the engine's scalar hot path indexes them)
        self.table_list: list[float] = []
        self.lm_table: list[float] = []

    def gemm(
        self, key: str, m: np.ndarray, n: float, k: float, aligned: bool = False
    ) -> np.ndarray:
        """A GEMM of the model's weights (``gemm``: in the weight dtype, with the chosen fp8
        kernel) or of the bf16 ones (``gemm_bf16``: LM head, router). ``aligned``: as if
        every token count were a multiple of 4 (no slow-path penalty)."""
        if key == "gemm":
            key = self.gemm_key
        fit = self.profile.op(key)
        if aligned and fit.params.get("unaligned_factor", 1.0) != 1.0:
            fit = OpFit(fit.op, fit.params | {"unaligned_factor": 1.0}, fit.hw, fit.lattice)
        in_bytes = 2.0 if key == "gemm_bf16" else self.gemm_weight_bytes
        feats = {
            "m": m,
            "n": np.full_like(m, float(n)),
            "k": np.full_like(m, float(k)),
            "in_bytes": np.full_like(m, in_bytes),
        }
        return op_predict(op_form(key), fit, feats)

    def linear_ops(self, n_tokens: np.ndarray, aligned: bool = False) -> dict[str, np.ndarray]:
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
            proj = proj + layers * self.gemm("gemm", n, width, depth, aligned)
        out["attn_proj_gemm"] = proj
        dense = m.dense_layers
        if dense and m.intermediate:
            up = self.gemm("gemm", n, 2 * m.intermediate // tp, m.hidden, aligned)
            down = self.gemm("gemm", n, m.hidden, m.intermediate // tp, aligned)
            out["mlp_gemm"] = dense * (up + down)
        if m.is_moe:
            out.update(self._moe_ops(n, aligned))
        if tp > 1:
            ar = self.profile.op(f"allreduce_{tp}")
            feats = {"bytes": n * m.hidden * 2.0}
            out["allreduce"] = 2 * m.layers * op_predict(op_form("allreduce"), ar, feats)
        for key in out:
            out[key] = np.where(n_tokens > 0, out[key], 0.0)
        return out

    def _moe_ops(self, n: np.ndarray, aligned: bool) -> dict[str, np.ndarray]:
        """The MoE layers over ``n`` (padded) tokens: experts, router and shared experts,
        and with data-parallel ranks the all-gather / reduce-scatter around the experts."""
        m = self.model
        tp = self.tp
        out: dict[str, np.ndarray] = {}
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
        router = self.gemm("gemm_bf16", n, m.experts, m.hidden, aligned)
        extra = router
        if m.shared_experts:
            width = m.shared_experts * m.moe_intermediate // tp
            extra = extra + self.gemm("gemm", n, 2 * width, m.hidden, aligned)
            extra = extra + self.gemm("gemm", n, m.hidden, width, aligned)
        out["moe_router_shared_gemm"] = layers * extra
        if self.dp > 1:
            # all-gather + reduce-scatter of the gathered hidden states over the EP
            # ranks: the two halves of a ring all-reduce of that message
            ar_ep = self.profile.op(f"allreduce_{self.ep}")
            msg = {"bytes": gathered * m.hidden * 2.0}
            out["ep_all_gather"] = layers * op_predict(op_form("allreduce"), ar_ep, msg)
        return out

    def ensure_table(self, n_max: int) -> None:
        """Tabulate the ops (and the LM head) up to at least ``n_max`` tokens."""
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
        ops = self.linear_ops(np.arange(size), aligned=True)
        total = np.sum(list(ops.values()), axis=0)
        self._table = np.maximum.accumulate(total)
        self.table_list = self._table.tolist()
        heads = self.lm_head_time(np.arange(size))
        self.lm_table = np.maximum.accumulate(heads).tolist()

    def linear_time(self, n_tokens: np.ndarray | int) -> np.ndarray:
        """Seconds of all token-proportional ops for iterations of ``n_tokens`` tokens."""
        idx = np.asarray(n_tokens, dtype=np.int64)
        self.ensure_table(int(idx.max()) if idx.size else 0)
        return self._table[idx]

    def lm_head_time(self, n_seqs: np.ndarray | int) -> np.ndarray:
        """LM head over the last token of every scheduled sequence (bf16 GEMM; untabulated:
        the tables call this, iterations read the tabulated copy)."""
        s = np.asarray(n_seqs, dtype=float)
        m = self.model
        t = self.gemm("gemm_bf16", np.maximum(s, 1.0), m.vocab // self.tp, m.hidden)
        return np.where(s > 0, t, 0.0)

    def lm_head_tabulated(self, n_seqs: np.ndarray | int) -> np.ndarray:
        """The LM-head times iterations use (monotone in sequences)."""
        idx = np.asarray(n_seqs, dtype=np.int64)
        self.ensure_table(int(idx.max()) if idx.size else 0)
        return np.asarray(self.lm_table)[idx]
