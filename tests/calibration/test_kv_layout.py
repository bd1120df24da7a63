"""KV-cache sizing per attention family, against values computed by hand from vLLM's rules
(shared/design/VLLM_FACTS.md sections 2, D, E, F) and each model's config.json."""

from __future__ import annotations

import math

import pytest

from calibration.errors import ComemInputError
from calibration.kv_layout import FP8_DS_MLA_BYTES, kv_layout, linear_state_bytes
from calibration.latency import LatencyModel
from calibration.registry import fits_in_memory, get_model

GIB = 2**30


def test_gqa_page_is_k_and_v_of_the_ranks_heads() -> None:
    # Llama-3.1-8B: 32 layers, 8 KV heads x 128, bf16: 2 x 8 x 128 x 2 = 4096 B per layer
    lay = kv_layout(get_model("llama-3.1-8b"), 1, 2)
    assert (lay.block_size, lay.page_bytes, lay.group_size) == (16, 16 * 4096, 32)
    assert lay.bytes_per_token == 32 * 4096
    assert lay.num_blocks(10 * GIB) == 10 * GIB // (16 * 4096 * 32)
    # TP 2 halves the heads; TP 16 > 8 KV heads replicates them (one per rank)
    assert kv_layout(get_model("llama-3.1-8b"), 2, 2).bytes_per_token == 32 * 2048
    assert kv_layout(get_model("llama-3.1-8b"), 16, 1).bytes_per_token == 32 * 2 * 128


def test_mla_caches_one_latent_per_layer_on_every_rank() -> None:
    # DeepSeek-V3: (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 B = 1152 B per layer, 61 layers
    ds = get_model("deepseek-v3")
    for tp in (1, 8):
        assert kv_layout(ds, tp, 2).bytes_per_token == 61 * 1152  # not sharded by TP
    assert kv_layout(ds, 8, 1).bytes_per_token == 61 * 576
    # block: FlashAttention-MLA takes 16 on Hopper, FlashInfer-MLA 32 at least on Blackwell
    assert kv_layout(ds, 8, 2, "h200_sxm").block_size == 16
    assert kv_layout(ds, 8, 2, "b200_sxm").block_size == 32
    # Kimi-K2.5: same latent dims (64 heads do not change the cache)
    assert kv_layout(get_model("kimi-k2.5"), 8, 2).bytes_per_token == 61 * 1152


def test_dsa_adds_the_indexer_keys_to_the_fp8_ds_mla_record() -> None:
    # fp8_ds_mla: 512 fp8 + 4 fp32 scales + 64 bf16 rope = 656 B; indexer 128 fp8 + 4 = 132 B
    assert FP8_DS_MLA_BYTES == 656
    lay = kv_layout(get_model("deepseek-v3.2"), 8, 1)
    assert lay.bytes_per_token == 61 * (656 + 132) and lay.block_size == 64
    assert kv_layout(get_model("glm-5"), 8, 1).bytes_per_token == 78 * 788
    # with a bf16 cache the latent is 1152 B, the indexer keys stay fp8
    assert kv_layout(get_model("glm-5"), 8, 2).bytes_per_token == 78 * (1152 + 132)


def test_dsa_defaults_to_an_fp8_cache_as_vllm_does() -> None:
    lm = LatencyModel(get_model("deepseek-v3.2"), "h200_sxm", 8, "fp8")
    assert lm.kv_cache_dtype == "fp8" and lm.kv_bytes_per_token == 61 * 788


def test_gated_deltanet_state_and_page_unification() -> None:
    q = get_model("qwen3.5-27b")  # 48 GDN + 16 full layers; 16 k heads, 48 v heads x 128
    conv = 3 * (2 * 16 * 128 + 48 * 128) * 2  # (kernel - 1) x conv_dim x bf16
    recurrent = 48 * 128 * 128 * 4  # v heads x k_dim x v_dim x float32 (mamba_ssm_dtype)
    assert linear_state_bytes(q, 1) == conv + recurrent == 3_207_168
    lay = kv_layout(q, 1, 2)
    attn_per_token = 2 * 4 * 256 * 2  # full layers: 4 KV heads x 256, K and V, bf16
    # the attention block rises to the smallest multiple of 16 whose page holds the state
    assert lay.block_size == 16 * math.ceil(3_207_168 / (16 * attn_per_token)) == 784
    assert lay.page_bytes == 784 * attn_per_token
    # 16 full and 48 linear layers: groups of 16 (48 >= 1.5 x 16): 1 full, 3 linear
    assert (lay.group_size, lay.full_groups, lay.linear_groups) == (16, 1, 3)
    assert lay.bytes_per_token == 16 * attn_per_token
    # a request: its tokens' blocks in the full group, one block per linear group
    assert lay.request_blocks(10_000) == math.ceil(10_000 / 784) + 3
    assert lay.constant_bytes_per_request() == 3 * lay.block_bytes
    # TP 4: heads and state shard, the unification follows
    assert linear_state_bytes(q, 4) == conv // 4 + recurrent // 4


def test_sliding_layers_hold_at_most_their_window() -> None:
    g = get_model("gpt-oss-120b")  # 18 sliding (window 128) + 18 full layers, 8 KV heads x 64
    lay = kv_layout(g, 1, 2)
    per_layer = 2 * 8 * 64 * 2
    assert (lay.block_size, lay.group_size, lay.full_groups, lay.sliding_groups) == (16, 18, 1, 1)
    assert lay.bytes_per_token == 18 * per_layer  # only the full layers grow
    # 10k tokens, budget 8192: full ceil(10000/16) = 625; sliding ceil((127 + 8192)/16) + 1
    assert lay.request_blocks(10_000, 8192) == 625 + 521
    # decoding: the window's ceil(127 / 16) + 1 = 9 blocks
    assert lay.constant_bytes_per_request() == 9 * 16 * per_layer * 18


def test_capacity_is_free_memory_over_the_growing_bytes() -> None:
    for alias, gpu, tp, dtype in (
        ("qwen3.5-27b", "h200_sxm", 1, "bf16"),
        ("deepseek-v3", "h200_sxm", 8, "fp8"),
        ("llama-3.1-8b", "b200_sxm", 1, "bf16"),
    ):
        lm = LatencyModel(get_model(alias), gpu, tp, dtype)
        free = fits_in_memory(lm.model, lm.gpu, tp, dtype, 0.9, lm.reserve_bytes())
        assert lm.kv_capacity_tokens() == int(free // lm.kv_layout.bytes_per_token)


def test_kimi_int4_fits_where_fp8_barely_does() -> None:
    # int4 experts (as the checkpoint ships) leave ~4x the KV of an fp8 copy on 8 x H200
    fp8 = LatencyModel(get_model("kimi-k2.5"), "h200_sxm", 8, "fp8").kv_capacity_tokens()
    int4 = LatencyModel(get_model("kimi-k2.5"), "h200_sxm", 8, "int4").kv_capacity_tokens()
    assert int4 > 10 * fp8


def test_a_family_without_its_tables_is_refused_naming_the_field() -> None:
    with pytest.raises(ComemInputError, match=r"index_topk is set: .*dsa_\*_module_perf") as e:
        LatencyModel(get_model("deepseek-v3.2"), "b200_sxm", 8, "fp8")
    assert "\n" not in str(e.value)
    with pytest.raises(ComemInputError, match=r"layer_types is set: Gated DeltaNet"):
        LatencyModel(get_model("qwen3.5-27b"), "a100_sxm", 2, "bf16")
