"""What a transformer LLM is to the latency model: its architecture and the sizes derived
from it (parameters, weight bytes, KV bytes per token) and the tensor parallelism it allows.
The registry (:mod:`calibration.registry`) reads these from ``config.json`` files."""

from __future__ import annotations

from dataclasses import dataclass

from calibration.dtypes import DTYPE_BYTES, EXPERT_ONLY_DTYPES, check_dtype
from calibration.errors import ComemInputError


def _divisors(n: int, limit: int = 16) -> str:
    return ", ".join(str(d) for d in range(1, min(n, limit) + 1) if n % d == 0)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one transformer LLM (grouped-query attention, gated MLP / MoE).

    ``intermediate`` is the dense FFN width (0 if the model has no dense layer). MoE layers
    have ``experts`` routed experts (``top_k`` active per token) and ``shared_experts``
    always-active experts, all of width ``moe_intermediate``. ``dense_layers`` is the number
    of dense layers (which ones does not change the cost); left at -1 it means all layers for
    a dense model, 0 for MoE. ``sliding_window``: the attention window of every layer (None:
    full attention).
    """

    hf_id: str
    alias: str
    layers: int
    hidden: int
    intermediate: int
    q_heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 128
    tied_embeddings: bool = False
    sliding_window: int | None = None
    #: layers with the sliding window (-1: all when ``sliding_window`` is set, else none)
    sliding_layers: int = -1
    #: Qwen3.5's gated attention: q_proj also outputs a gate as wide as the queries
    attn_output_gate: bool = False
    # multi-head latent attention (0: none); DeepSeek sparse attention's indexer (0: none)
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    q_lora_rank: int = 0
    index_topk: int = 0
    index_n_heads: int = 0
    index_head_dim: int = 0
    # Gated DeltaNet linear-attention layers (0: none): heads, head dims, conv kernel width,
    # bytes per element of the recurrent state (``mamba_ssm_dtype``)
    linear_layers: int = 0
    linear_k_heads: int = 0
    linear_v_heads: int = 0
    linear_k_dim: int = 0
    linear_v_dim: int = 0
    linear_conv: int = 0
    linear_state_bytes: int = 2
    experts: int = 0
    top_k: int = 0
    moe_intermediate: int = 0
    shared_experts: int = 0
    dense_layers: int = -1
    #: multi-token-prediction modules shipped with the checkpoint (``num_nextn_predict_layers``
    #: DeepSeek/GLM, ``mtp_num_hidden_layers`` Qwen3.5, ``num_mtp_modules`` MiniMax): the
    #: draft layers of vLLM's ``--speculative-config '{"method": "mtp", ...}'``
    mtp_layers: int = 0
    #: tokens generated before the first streamed text on the chat endpoint (gpt-oss's
    #: harmony header: :data:`calibration.hf_config.STREAM_SILENT_TOKENS`); a chat client's
    #: TTFT ends that many tokens after the first sampled one
    stream_silent_tokens: int = 0
    #: the context the checkpoint was trained for (``max_position_embeddings``; 0 unknown):
    #: vLLM refuses a longer ``max_model_len`` unless told to allow it
    max_position_embeddings: int = 0

    def __post_init__(self) -> None:
        if self.stream_silent_tokens < 0:
            raise ComemInputError(
                f"stream_silent_tokens must be >= 0, got {self.stream_silent_tokens}"
            )
        if self.dense_layers == -1:
            object.__setattr__(self, "dense_layers", 0 if self.experts else self.layers)
        if self.sliding_layers == -1:
            object.__setattr__(self, "sliding_layers", self.layers if self.sliding_window else 0)
        if self.sliding_layers + self.linear_layers > self.layers:
            raise ComemInputError(
                f"model {self.alias}: sliding ({self.sliding_layers}) and linear"
                f" ({self.linear_layers}) layers exceed the {self.layers} layers"
            )
        for name in ("layers", "hidden", "q_heads", "kv_heads", "vocab", "head_dim"):
            if getattr(self, name) < 1:
                raise ComemInputError(f"model {self.alias}: {name} must be >= 1")
        for name in ("intermediate", "experts", "top_k", "moe_intermediate", "shared_experts"):
            if getattr(self, name) < 0:
                raise ComemInputError(f"model {self.alias}: {name} must be >= 0")
        if not 0 <= self.dense_layers <= self.layers:
            raise ComemInputError(
                f"model {self.alias}: dense_layers must be in [0, {self.layers}],"
                f" got {self.dense_layers}"
            )
        if self.dense_layers and not self.intermediate:
            raise ComemInputError(f"model {self.alias}: dense layers need intermediate > 0")
        if self.experts:
            if not (1 <= self.top_k <= self.experts and self.moe_intermediate > 0):
                raise ComemInputError(
                    f"model {self.alias}: MoE needs 1 <= top_k <= experts and moe_intermediate > 0"
                )
        elif self.dense_layers != self.layers:
            raise ComemInputError(f"model {self.alias}: a dense model has dense_layers == layers")
        if self.q_heads % self.kv_heads:
            raise ComemInputError(
                f"model {self.alias}: q_heads ({self.q_heads}) must be a multiple of"
                f" kv_heads ({self.kv_heads})"
            )

    @property
    def attention(self) -> str:
        """The attention family: ``dsa``, ``mla``, ``gdn`` (hybrid linear), ``sliding``
        (a window on some or all layers) or ``gqa`` (grouped-query, MHA included)."""
        if self.index_topk:
            return "dsa"
        if self.kv_lora_rank:
            return "mla"
        if self.linear_layers:
            return "gdn"
        if self.sliding_layers:
            return "sliding"
        return "gqa"

    @property
    def full_layers(self) -> int:
        """Layers whose attention keeps every token (no window, not linear)."""
        return self.layers - self.sliding_layers - self.linear_layers

    @property
    def attention_layers(self) -> int:
        """Layers with softmax attention (full or sliding): those that cache tokens."""
        return self.layers - self.linear_layers

    def _attention_params(self) -> int:
        """Parameters of one softmax-attention layer (q, k, v, o; MLA's low-rank
        projections and DSA's indexer)."""
        h, hd, nq = self.hidden, self.head_dim, self.q_heads
        if not self.kv_lora_rank:
            q_width = nq * hd * (2 if self.attn_output_gate else 1)
            return h * (q_width + 2 * self.kv_heads * hd) + nq * hd * h
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        q = self.q_lora_rank * (h + nq * qk) if self.q_lora_rank else h * nq * qk
        kv = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank * nq * (
            self.qk_nope_head_dim + self.v_head_dim
        )
        indexer = 0
        if self.index_topk:
            d, n = self.index_head_dim, self.index_n_heads
            indexer = self.q_lora_rank * n * d + h * d + h * n
        return q + kv + nq * self.v_head_dim * h + indexer

    def _linear_params(self) -> int:
        """Parameters of one Gated DeltaNet layer: q/k/v/z and b/a input projections, the
        depthwise conv over q, k, v, the output projection (vLLM ``Qwen3NextGatedDeltaNet``)."""
        key = self.linear_k_heads * self.linear_k_dim
        value = self.linear_v_heads * self.linear_v_dim
        h = self.hidden
        return h * (2 * key + 2 * value + 2 * self.linear_v_heads) + (
            (2 * key + value) * self.linear_conv + value * h
        )

    @property
    def is_moe(self) -> bool:
        """True if the model has mixture-of-experts layers."""
        return self.experts > 0

    @property
    def moe_layers(self) -> int:
        """Number of MoE layers (the layers after the leading dense ones)."""
        return self.layers - self.dense_layers if self.is_moe else 0

    def _embedding_params(self) -> int:
        """Input embedding plus LM head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def param_count(self) -> int:
        """Parameter count from the architecture (norms and biases ignored, no MTP layers)."""
        h = self.hidden
        attention = self.attention_layers * self._attention_params()
        attention += self.linear_layers * self._linear_params()
        dense_mlp = 3 * h * self.intermediate
        moe = (
            (self.experts + self.shared_experts) * 3 * h * self.moe_intermediate
            + h * self.experts  # router
        )
        return (
            self._embedding_params()
            + attention
            + self.dense_layers * dense_mlp
            + self.moe_layers * moe
        )

    def routed_expert_params(self) -> int:
        """Parameters of the routed experts (what ``int4`` / ``mxfp4`` quantize)."""
        return self.moe_layers * self.experts * 3 * self.hidden * self.moe_intermediate

    def weight_bytes(self, dtype: str) -> int:
        """Bytes of all weights in ``dtype`` (:data:`DTYPE_BYTES`, scales included);
        embedding and LM head stay bf16, and under ``int4`` / ``mxfp4`` all but the routed
        experts do."""
        dt = check_dtype(dtype)
        emb = self._embedding_params()
        if dt in EXPERT_ONLY_DTYPES:
            if not self.is_moe:
                raise ComemInputError(
                    f"dtype {dt} quantizes routed experts only: {self.alias} is dense"
                )
            experts = self.routed_expert_params()
            rest = self.param_count() - experts
            return int(2 * rest + DTYPE_BYTES[dt] * experts)
        return int(2 * emb + DTYPE_BYTES[dt] * (self.param_count() - emb))

    def kv_bytes_per_token(self, kv_dtype_bytes: int = 2) -> int:
        """KV-cache bytes one more token of context costs over the whole model on one GPU
        (tp 1), as vLLM lays the cache out (:func:`calibration.kv_layout.kv_layout`): all
        layers' K and V for grouped-query attention, one latent per layer for MLA (plus
        DSA's indexer keys), only the full-attention layers of hybrid models."""
        from calibration.kv_layout import kv_layout

        return int(round(kv_layout(self, 1, kv_dtype_bytes).bytes_per_token))

    def check_tp(self, tp: int, expert_parallel: bool = False) -> None:
        """Raise :class:`ComemInputError` unless tensor parallelism ``tp`` can shard the model.

        ``tp`` must divide the query heads and the (MoE) intermediate sizes; KV heads must be
        divisible by ``tp`` or, as vLLM replicates them when ``tp > kv_heads``, divide it.
        Under ``expert_parallel`` the routed experts are not sliced (whole experts per rank,
        any count: vLLM gives the remainder to the first ranks), so only the shared
        experts' width must divide.
        """
        if tp < 1:
            raise ComemInputError(f"tp must be >= 1, got {tp}")
        name = self.alias
        if self.q_heads % tp:
            raise ComemInputError(
                f"tp={tp} does not divide the {self.q_heads} query heads of {name};"
                f" valid tp up to 16: {_divisors(self.q_heads)}"
            )
        if self.kv_heads % tp and tp % self.kv_heads:
            raise ComemInputError(
                f"tp={tp} cannot shard the {self.kv_heads} KV heads of {name}: tp must divide"
                f" them or be a multiple of them"
            )
        if self.intermediate % tp:
            raise ComemInputError(
                f"tp={tp} does not divide the FFN intermediate size {self.intermediate} of {name}"
            )
        sliced = self.shared_experts if expert_parallel else 1
        if sliced and self.moe_intermediate % tp:
            raise ComemInputError(
                f"tp={tp} does not divide the expert intermediate size {self.moe_intermediate}"
                f" of {name}"
            )
