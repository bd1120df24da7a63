"""Tests for calibration.registry: lookups, sizes, TP checks, memory fit."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calibration.dtypes import DTYPES, check_dtype
from calibration.errors import ComemInputError, KernelDataError, UnknownNameError
from calibration.model_spec import ModelSpec
from calibration.registry import GIB, GPUS, MODELS, GpuSpec, fits_in_memory, get_gpu, get_model

# Published parameter counts (model cards / papers), in billions.
PUBLISHED_B = {
    "llama-2-7b": 6.74,
    "llama-2-70b": 68.98,
    "llama-3-8b": 8.03,
    "llama-3-70b": 70.6,
    "llama-3.1-8b": 8.03,
    "llama-3.1-70b": 70.6,
    "mistral-7b": 7.24,
    "qwen2-7b": 7.62,
    "qwen2-72b": 72.7,
    "qwen3-4b": 4.0,
    "qwen3-32b": 32.8,
    "deepswe": 32.8,
    "qwen3-coder-480b": 480.0,
    "qwen3-235b-a22b": 235.0,
    "glm-4.7": 355.0,  # includes the MTP layer, which param_count() leaves out
    # shared/data/model_configs (model cards; MTP layers and vision towers left out)
    "minimax-m2.5": 229.0,
    "qwen3-30b-a3b": 30.5,
    "qwen3-8b": 8.2,
    "qwen3.5-27b": 27.0,
    "qwen3.5-35b-a3b": 35.0,
    "qwen3.5-397b-a17b": 397.0,
    "deepseek-v3": 671.0,
    "deepseek-v3.2": 671.0,
    "llama-3.1-405b": 405.0,
    "mixtral-8x7b": 46.7,
    "kimi-k2-instruct": 1040.0,
    "kimi-k2.5": 1040.0,
    "gpt-oss-120b": 116.8,
    "gpt-oss-20b": 21.0,
    "glm-5": 744.0,
}


# -- errors ----------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(ComemInputError, ValueError)
    assert issubclass(UnknownNameError, ComemInputError)
    assert issubclass(KernelDataError, ComemInputError)


# -- model lookup ----------------------------------------------------------------------


def test_registry_has_every_model_of_models_md() -> None:
    assert set(MODELS) == set(PUBLISHED_B)


@pytest.mark.parametrize("alias", sorted(PUBLISHED_B))
def test_lookup_by_alias_and_hf_id(alias: str) -> None:
    spec = MODELS[alias]
    assert get_model(alias) is spec
    assert get_model(spec.hf_id) is spec
    assert get_model(spec.hf_id.upper()) is spec
    assert get_model(f"  {alias.upper()} ") is spec


def test_lookup_case_insensitive_examples() -> None:
    assert get_model("meta-llama/meta-llama-3-8b").alias == "llama-3-8b"
    assert get_model("GLM-4.7").alias == "glm-4.7"
    assert get_model("Qwen/Qwen3-4B-Instruct-2507").alias == "qwen3-4b"
    assert get_model("agentica-org/DeepSWE-Preview").alias == "deepswe"


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_model("gpt-5")
    msg = str(info.value)
    assert msg.startswith("unknown model 'gpt-5'; known: ")
    assert "\n" not in msg
    for alias in MODELS:
        assert alias in msg


def test_unknown_model_is_input_error() -> None:
    with pytest.raises(ComemInputError):
        get_model("")


# -- architecture arithmetic -----------------------------------------------------------


@pytest.mark.parametrize("alias", sorted(PUBLISHED_B))
def test_param_count_within_2_percent_of_published(alias: str) -> None:
    got = MODELS[alias].param_count() / 1e9
    assert got == pytest.approx(PUBLISHED_B[alias], rel=0.02)


def test_param_counts_named_in_brief() -> None:
    assert get_model("llama-3-8b").param_count() / 1e9 == pytest.approx(8.0, rel=0.01)
    assert get_model("glm-4.7").param_count() / 1e9 == pytest.approx(352.0, rel=0.01)
    assert get_model("qwen3-coder-480b").param_count() / 1e9 == pytest.approx(480.0, rel=0.01)
    assert get_model("qwen3-32b").param_count() / 1e9 == pytest.approx(32.8, rel=0.01)


def test_llama_3_8b_param_count_exact() -> None:
    # 2 * 128256 * 4096 embeddings + 32 * (attention 41,943,040 + MLP 176,160,768)
    assert get_model("llama-3-8b").param_count() == 8_029_995_008


def test_deepswe_matches_qwen3_32b() -> None:
    a, b = get_model("deepswe"), get_model("qwen3-32b")
    fields = [f.name for f in dataclasses.fields(ModelSpec) if f.name not in ("hf_id", "alias")]
    assert all(getattr(a, f) == getattr(b, f) for f in fields)


def test_tied_embeddings_counted_once() -> None:
    spec = get_model("qwen3-4b")
    untied = dataclasses.replace(spec, tied_embeddings=False)
    assert untied.param_count() - spec.param_count() == spec.vocab * spec.hidden


def test_moe_structure() -> None:
    glm = get_model("glm-4.7")
    assert glm.is_moe and glm.dense_layers == 3 and glm.moe_layers == 89
    coder = get_model("qwen3-coder-480b")
    assert coder.is_moe and coder.dense_layers == 0 and coder.moe_layers == 62
    llama = get_model("llama-3-8b")
    assert not llama.is_moe and llama.dense_layers == llama.layers and llama.moe_layers == 0


def test_sliding_window() -> None:
    assert get_model("mistral-7b").sliding_window == 4096
    assert get_model("llama-3-8b").sliding_window is None


def test_kv_bytes_per_token() -> None:
    assert get_model("llama-3-8b").kv_bytes_per_token() == 131072
    assert get_model("llama-3-8b").kv_bytes_per_token(1) == 65536
    # Llama-2-7B is MHA: 2 * 32 layers * 32 heads * 128 * 2 bytes
    assert get_model("llama-2-7b").kv_bytes_per_token() == 524288


def test_weight_bytes() -> None:
    spec = get_model("llama-3-8b")
    emb = 2 * spec.vocab * spec.hidden
    assert spec.weight_bytes("bf16") == 2 * spec.param_count()
    assert spec.weight_bytes("bfloat16") == spec.weight_bytes("bf16")
    # fp8: everything one byte except the embedding and LM head, which stay bf16
    assert spec.weight_bytes("fp8") == spec.param_count() + emb
    glm = get_model("glm-4.7")
    assert glm.weight_bytes("bf16") / 1e9 == pytest.approx(710, rel=0.01)
    assert glm.weight_bytes("fp8") / 1e9 == pytest.approx(355, rel=0.01)
    assert get_model("qwen3-coder-480b").weight_bytes("bf16") / 1e9 == pytest.approx(960, rel=0.01)
    with pytest.raises(UnknownNameError):
        spec.weight_bytes("fp16")
    with pytest.raises(ComemInputError, match="routed experts only"):
        spec.weight_bytes("int4")  # a dense model has no experts to quantize


def test_weight_bytes_of_4_bit_checkpoints() -> None:
    # Kimi-K2.5: routed experts int4 (group 32, bf16 scale: 4.5 bits), everything else bf16
    kimi = get_model("kimi-k2.5")
    experts = 60 * 384 * 3 * 7168 * 2048
    assert kimi.routed_expert_params() == experts
    assert kimi.weight_bytes("int4") == int(2 * (kimi.param_count() - experts) + 0.5625 * experts)
    assert kimi.weight_bytes("int4") / 1e9 == pytest.approx(595, rel=0.01)
    # gpt-oss-120b: MXFP4 experts (4.25 bits): the published checkpoint is ~65 GB
    assert get_model("gpt-oss-120b").weight_bytes("mxfp4") / 1e9 == pytest.approx(65, rel=0.03)
    # NVFP4: 4.5 bits for every quantized weight, embeddings bf16
    llama = get_model("llama-3.1-70b")
    emb = 2 * llama.vocab * llama.hidden
    assert llama.weight_bytes("fp4") == int(2 * emb + 0.5625 * (llama.param_count() - emb))


# -- tensor parallelism ----------------------------------------------------------------


@pytest.mark.parametrize("alias", sorted(PUBLISHED_B))
def test_tp_1_2_4_valid_everywhere(alias: str) -> None:
    for tp in (1, 2, 4):
        MODELS[alias].check_tp(tp)


def test_tp_8_valid_except_qwen2_7b() -> None:
    for alias, spec in MODELS.items():
        if alias != "qwen2-7b":
            spec.check_tp(8)


def test_tp_larger_than_kv_heads_is_allowed() -> None:
    get_model("qwen2-7b").check_tp(4)  # kv_heads == tp
    get_model("llama-3-8b").check_tp(16)  # 8 KV heads replicated over 16 GPUs
    get_model("qwen3-4b").check_tp(16)


@pytest.mark.parametrize("tp", [0, -1])
def test_tp_below_one_rejected(tp: int) -> None:
    with pytest.raises(ComemInputError, match="tp must be >= 1"):
        get_model("llama-3-8b").check_tp(tp)


def test_tp_not_dividing_q_heads_rejected() -> None:
    with pytest.raises(ComemInputError) as info:
        get_model("qwen2-7b").check_tp(8)
    msg = str(info.value)
    assert "28 query heads" in msg and "qwen2-7b" in msg and "1, 2, 4, 7, 14" in msg


def test_tp_incompatible_with_kv_heads_rejected() -> None:
    # 96 query heads split 6 ways, but 8 KV heads neither divide by 6 nor divide 6
    with pytest.raises(ComemInputError, match="8 KV heads of glm-4.7"):
        get_model("glm-4.7").check_tp(6)


def test_tp_not_dividing_intermediate_rejected() -> None:
    spec = dataclasses.replace(get_model("llama-3-8b"), intermediate=14337)
    with pytest.raises(ComemInputError, match="intermediate size 14337"):
        spec.check_tp(2)
    moe = dataclasses.replace(get_model("qwen3-coder-480b"), moe_intermediate=2561)
    with pytest.raises(ComemInputError, match="expert intermediate size 2561"):
        moe.check_tp(2)


def test_malformed_spec_rejected() -> None:
    with pytest.raises(ComemInputError):
        ModelSpec("x/y", "y", 2, 64, 128, 4, 3, 100)  # q_heads not a multiple of kv_heads
    with pytest.raises(ComemInputError):
        ModelSpec("x/y", "y", 2, 64, 0, 4, 2, 100)  # dense model without an FFN
    with pytest.raises(ComemInputError):
        ModelSpec("x/y", "y", 2, 64, 0, 4, 2, 100, experts=4, top_k=8, moe_intermediate=32)


# -- GPUs and dtypes -------------------------------------------------------------------


def test_gpus() -> None:
    h100, h200 = get_gpu("h100_sxm"), get_gpu("H200_SXM")
    # what torch.cuda.mem_get_info() reports (vLLM sizes from it), not the datasheets' 80/141 GB
    assert h100.memory_bytes == 85_017_493_504 and h200.memory_gib == 139.8
    assert h100.hbm_bandwidth_Bps == pytest.approx(3.35e12)
    assert h200.hbm_bandwidth_Bps == pytest.approx(4.8e12)
    for gpu in (h100, h200):
        assert gpu.peak_flops == {"bf16": pytest.approx(989e12), "fp8": pytest.approx(1979e12)}
        assert gpu.nvlink_Bps == pytest.approx(900e9)
        assert gpu.sm_count == 132
        assert gpu.memory_bytes == gpu.memory_gib * GIB
    assert get_gpu("h100") is h100 and get_gpu("H100-SXM") is h100
    assert set(GPUS) == {
        "h100_sxm",
        "h200_sxm",
        "b200_sxm",
        "b300_sxm",
        "gb200",
        "a100_sxm",
        "l40s",
    }
    assert h100.memory_assumption is None and h200.memory_assumption is None


def test_unmeasured_gpus_state_their_memory_assumption() -> None:
    # datasheet capacity scaled by torch's share measured on H100 (79.18 of 80 GiB)
    b200 = get_gpu("b200")
    assert b200.memory_gib == pytest.approx(180 * 85_017_493_504 / 2**30 / 80)
    assert "assumed, not measured" in (b200.memory_assumption or "")
    # an nvidia-smi figure (the driver's total) is kept
    assert get_gpu("b300_sxm").memory_gib == pytest.approx(275040 / 1024)
    assert get_gpu("gb200").memory_gib == pytest.approx(189471 / 1024)
    assert get_gpu("l40s").memory_gib == pytest.approx(46068 / 1024)
    assert "fp8" not in get_gpu("a100_sxm").peak_flops  # A100 has no fp8 tensor cores
    assert get_gpu("b200_sxm").peak_flops["fp4"] == pytest.approx(9000e12)


def test_gpu_spec_hashable() -> None:
    assert len({get_gpu("h100_sxm"), get_gpu("h100_sxm")}) == 1
    assert isinstance(get_gpu("h100_sxm"), GpuSpec)


def test_unknown_gpu_lists_known_names() -> None:
    with pytest.raises(UnknownNameError, match=r"^unknown gpu 'v100'; known: h100_sxm, h200_sxm, "):
        get_gpu("v100")


def test_dtypes() -> None:
    assert DTYPES == ("bf16", "fp8", "fp4", "int4", "mxfp4")
    assert check_dtype("nvfp4") == "fp4" and check_dtype("int4_wo") == "int4"
    assert check_dtype("bf16") == "bf16"
    assert check_dtype("BFloat16") == "bf16"
    assert check_dtype("FP8") == "fp8"
    with pytest.raises(UnknownNameError, match=r"^unknown dtype 'fp16'; known: bf16, fp8, fp4,"):
        check_dtype("fp16")


# -- memory fit ------------------------------------------------------------------------


def test_fits_in_memory_value() -> None:
    spec, gpu = get_model("llama-3-8b"), get_gpu("h100_sxm")
    expected = gpu.memory_bytes * 0.9 - spec.weight_bytes("bf16") - GIB
    assert fits_in_memory(spec, gpu, 1, "bf16") == int(expected)
    half = gpu.memory_bytes * 0.5 - spec.weight_bytes("bf16") / 2 - GIB
    assert fits_in_memory(spec, gpu, 2, "bf16", gpu_memory_utilization=0.5) == int(half)


def test_glm_bf16_does_not_fit_on_4_h100() -> None:
    with pytest.raises(ComemInputError) as info:
        fits_in_memory(get_model("glm-4.7"), get_gpu("h100_sxm"), 4, "bf16")
    msg = str(info.value)
    assert msg.startswith("model glm-4.7 (706 GB in bf16) does not fit on 4 x h100_sxm")
    assert "\n" not in msg


def test_glm_placements_from_models_md() -> None:
    glm = get_model("glm-4.7")
    h200 = get_gpu("h200_sxm")
    assert fits_in_memory(glm, h200, 4, "fp8") > 10 * GIB
    assert fits_in_memory(glm, h200, 8, "bf16") > 10 * GIB
    with pytest.raises(ComemInputError, match="in bf16"):
        fits_in_memory(glm, h200, 4, "bf16")
    coder = get_model("qwen3-coder-480b")
    assert fits_in_memory(coder, h200, 4, "fp8") > 0
    with pytest.raises(ComemInputError, match="in fp8"):
        fits_in_memory(coder, get_gpu("h100_sxm"), 4, "fp8")


def test_fits_in_memory_rejects_bad_arguments() -> None:
    spec, gpu = get_model("llama-3-8b"), get_gpu("h100_sxm")
    with pytest.raises(ComemInputError):
        fits_in_memory(spec, gpu, 0, "bf16")
    with pytest.raises(ComemInputError):
        fits_in_memory(spec, gpu, 1, "bf16", gpu_memory_utilization=1.5)
    with pytest.raises(UnknownNameError):
        fits_in_memory(spec, gpu, 1, "int8")


@given(
    alias=st.sampled_from(sorted(MODELS)),
    gpu=st.sampled_from(sorted(GPUS)),
    dtype=st.sampled_from(DTYPES),
    tp=st.sampled_from([1, 2, 4, 8]),
)
def test_more_gpus_never_hurt(alias: str, gpu: str, dtype: str, tp: int) -> None:
    spec, g = MODELS[alias], GPUS[gpu]
    try:
        free = fits_in_memory(spec, g, tp, dtype)
    except ComemInputError:
        return
    assert fits_in_memory(spec, g, 2 * tp, dtype) > free
    if dtype == "bf16":
        assert fits_in_memory(spec, g, tp, "fp8") > free
