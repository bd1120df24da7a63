"""Each attention family as the shapes the fitted attention and GEMM ops price.

The kernel tables time grouped-query attention (``context_attention`` / ``generation_attention``)
over any heads and head dims, and GEMMs of any shape. Every family is priced as the work its
kernels do, mapped onto those ops by matching the two quantities the op models scale with:
HBM bytes per cached token and FLOPs per (query, key) pair (``opmodels``' rooflines):

* GQA, full or sliding layers: the ops as fitted (a sliding layer reads at most its window).
* MLA decode (vLLM's absorbed MLA backends): every query head reads the one latent vector of
  ``kv_lora_rank + qk_rope_head_dim`` values per token (K) and its first ``kv_lora_rank``
  (V): one KV "head" of half the latent width (so K + V bytes are one latent), with the query
  heads scaled so that FLOPs per token are ``2 x (latent + kv_lora_rank)`` per head.
* MLA prefill (vLLM up-projects the cache and runs MHA): ``nq`` heads of q/k width
  ``qk_nope + qk_rope`` and v width ``v_head_dim``, priced at their mean width.
* DSA: MLA over at most ``index_topk`` keys per query (a window on the attended keys), plus
  the indexer: ``index_n_heads`` heads of ``index_head_dim`` scoring every cached key (fp8
  keys, 132 bytes a token).
* Gated DeltaNet layers: decode reads and writes each request's recurrent state (like
  attention over ``linear_k_dim`` "tokens" of ``linear_v_heads`` heads of ``linear_v_dim``
  in the state's dtype); prefill is the chunked delta rule, each token working with the
  64 tokens of its chunk (a window of 64) over the value heads.

``calibration.report`` / tests compare these mappings with the families' own kernel tables
(``mla_*_module_perf``, ``gdn_perf``) where ``shared/`` has them.
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration.registry import ModelSpec


@dataclass(frozen=True)
class AttentionPart:
    """``layers`` layers of one attention shape per GPU.

    ``window``: keys one query attends to at most (None: all); ``state_tokens``: a linear
    layer's constant read per request, in the op's tokens (its KV does not grow); ``kv_bytes``:
    bytes per cached value (None: the cache's dtype).
    """

    layers: int
    nq: float
    nkv: float
    hd: float
    window: int | None = None
    state_tokens: int | None = None
    kv_bytes: float | None = None
    #: the profile op that prices it: ``attention`` (the GQA fits) or a family's own
    #: (``mla``, ``dsa``, ``gdn``: ``<op>_generation`` / ``<op>_context``)
    op: str = "attention"


def mla_decode_shape(m: ModelSpec, tp: int) -> tuple[float, float, float]:
    """(nq, nkv, hd) of absorbed MLA decode per GPU: one KV "head" of half the latent (K and
    V bytes are one latent vector), the query heads scaled to ``2 x (latent + kv_lora_rank)``
    FLOPs per head and cached token."""
    latent = m.kv_lora_rank + m.qk_rope_head_dim
    hd = latent / 2.0
    flops_per_head = 2.0 * latent + 2.0 * m.kv_lora_rank
    return (m.q_heads / tp) * flops_per_head / (4.0 * hd), 1.0, hd


def mla_prefill_hd(m: ModelSpec) -> float:
    """Mean head width of MLA prefill's MHA (q/k ``qk_nope + qk_rope``, v ``v_head_dim``)."""
    return (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim) / 2.0


def _mla_decode(m: ModelSpec, tp: int, op: str) -> AttentionPart:
    nq, nkv, hd = mla_decode_shape(m, tp)
    return AttentionPart(m.layers, nq, nkv, hd, op=op)


def _linear(m: ModelSpec, tp: int, prefill: bool) -> AttentionPart:
    heads = m.linear_v_heads / tp
    if prefill:
        # the GDN context op is fitted per chunk as batch 1 over the chunk's tokens
        return AttentionPart(m.linear_layers, heads, heads, m.linear_k_dim, kv_bytes=2.0, op="gdn")
    return AttentionPart(
        m.linear_layers, heads, heads, m.linear_v_dim,
        state_tokens=m.linear_k_dim, kv_bytes=float(m.linear_state_bytes), op="gdn",
    )  # fmt: skip


def attention_parts(m: ModelSpec, tp: int, prefill: bool) -> list[AttentionPart]:
    """The attention shapes of one iteration's decode (``prefill`` False) or prefill."""
    parts: list[AttentionPart] = []
    if m.kv_lora_rank:
        op = "dsa" if m.index_topk else "mla"
        if prefill:
            nq = m.q_heads / tp
            return [AttentionPart(m.layers, nq, nq, mla_prefill_hd(m), op=op)]
        return [_mla_decode(m, tp, op)]
    nq, nkv = m.q_heads / tp, float(max(1, m.kv_heads // tp))
    if m.full_layers:
        parts.append(AttentionPart(m.full_layers, nq, nkv, m.head_dim))
    if m.sliding_layers:
        parts.append(AttentionPart(m.sliding_layers, nq, nkv, m.head_dim, m.sliding_window))
    if m.linear_layers:
        parts.append(_linear(m, tp, prefill))
    return parts


def projection_gemms(m: ModelSpec, tp: int) -> list[tuple[int, int, int, bool]]:
    """Per-token projection GEMMs of the attention / linear layers: (layers, n, k, sharded);
    ``sharded`` False: replicated on every rank (MLA's down-projections, DSA's indexer)."""
    h, hd = m.hidden, m.head_dim
    if m.kv_lora_rank:
        nq = m.q_heads // tp
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        down = m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim
        gemms = [(m.layers, down, h, False)]
        if m.q_lora_rank:
            gemms.append((m.layers, nq * qk, m.q_lora_rank, True))
        else:
            gemms.append((m.layers, nq * qk, h, True))
        gemms += [
            (m.layers, nq * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank, True),
            (m.layers, h, nq * m.v_head_dim, True),
        ]
        if m.index_topk:
            d, n = m.index_head_dim, m.index_n_heads
            gemms += [(m.layers, n * d, m.q_lora_rank, False), (m.layers, d + n, h, False)]
        return gemms
    nq, nkv = m.q_heads // tp, max(1, m.kv_heads // tp)
    q_width = nq * hd * (2 if m.attn_output_gate else 1)
    gemms = [(m.attention_layers, q_width + 2 * nkv * hd, h, True)]
    gemms.append((m.attention_layers, h, nq * hd, True))
    if m.linear_layers:
        key = m.linear_k_heads * m.linear_k_dim // tp
        value = m.linear_v_heads * m.linear_v_dim // tp
        gemms += [
            (m.linear_layers, 2 * key + 2 * value + 2 * m.linear_v_heads // tp, h, True),
            (m.linear_layers, h, value, True),
        ]
    return gemms
