"""Each attention family as the shapes its fitted ops price, per GPU of a TP engine.

* GQA, full or sliding layers: the GQA attention ops (``context_attention`` /
  ``generation_attention``) as fitted; a sliding layer reads at most its window.
* MLA / DSA: ops fitted on their own module tables (``mla_*`` / ``dsa_*``,
  :mod:`calibration.family_fit`), with the shapes of vLLM's kernels: decode is absorbed MLA,
  every query head reading the one latent vector of ``kv_lora_rank + qk_rope_head_dim``
  values per token (one KV "head" of half the latent width, so K + V bytes are one latent;
  the query heads scaled to ``2 x (latent + kv_lora_rank)`` FLOPs per head and token);
  prefill up-projects the cache and runs MHA of ``nq`` heads at the mean of the q/k width
  ``qk_nope + qk_rope`` and the v width. DSA's module includes its indexer.
* Gated DeltaNet layers: ops fitted on ``gdn_perf``; decode reads and writes each request's
  recurrent state (``linear_k_dim`` "tokens" of ``linear_v_heads`` heads of
  ``linear_v_dim`` in the state's dtype); prefill is linear in the chunk's tokens.

:func:`projection_gemms` lists the attention / linear layers' projection GEMMs, priced by
the profile's GEMM op (the module fits subtract them, so they are not counted twice).
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration.model_spec import ModelSpec


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
