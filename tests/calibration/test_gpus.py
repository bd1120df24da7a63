"""The GPUs beyond H100/H200 and the 4-bit weight profiles: what is embedded, with which
errors, and that they price physically (faster memory, faster decode)."""

from __future__ import annotations

import math

import pytest

from calibration.errors import ComemInputError
from calibration.latency import Batch, LatencyModel
from calibration.opmodels import MOE_ROUTING
from calibration.profile import available_profiles, default_profile
from calibration.registry import get_model, quantization_dtype
from tests.cli_helpers import run_comem

#: (gpu, dtype) -> vLLM version folder of its kernel tables
OTHER = {
    **{(g, d): "0.19.0" for g in ("b200_sxm", "b300_sxm", "gb200") for d in ("bf16", "fp8", "fp4")},
    **{(g, d): "0.19.0" for g in ("b200_sxm", "b300_sxm", "gb200") for d in ("int4", "mxfp4")},
    **{("a100_sxm", d): "0.14.0" for d in ("bf16", "int4", "mxfp4")},
    **{("l40s", d): "0.22.0" for d in ("bf16", "int4", "mxfp4")},
    **{(g, d): "0.19.0" for g in ("h100_sxm", "h200_sxm") for d in ("int4", "mxfp4")},
}
#: (gpu, dtype) with measured serving rows (benchmarks/serving_transfer.py fits them)
SERVED = {("h100_sxm", "mxfp4"), ("h200_sxm", "mxfp4"), ("h200_sxm", "int4")}
DONOR = {"bf16": "bf16", "fp8": "fp8", "fp4": "fp8", "int4": "bf16", "mxfp4": "bf16"}


def test_every_other_gpu_profile_is_embedded() -> None:
    have = {(g, d) for g, _, d in available_profiles()}
    assert set(OTHER) <= have
    assert have - set(OTHER) == {(g, d) for g in ("h100_sxm", "h200_sxm") for d in ("bf16", "fp8")}


@pytest.mark.parametrize(("gpu", "dtype"), sorted(OTHER))
def test_profile_provenance_and_cross_validated_errors(gpu: str, dtype: str) -> None:
    prof = default_profile(gpu, dtype)
    assert prof.provenance["kernel_dir"] == f"kernels/{gpu}/vllm-{OTHER[gpu, dtype]}"
    # the serving overhead was fitted on other GPUs' (or dtypes') serving rows, and says
    # so, except where serving rows were measured in this GPU and dtype (gpt-oss MXFP4 on
    # H100 and H200, Kimi-K2.5 int4 on H200): the one joint fit, its own
    if (gpu, dtype) in SERVED:
        assert "copied_from" not in prof.overhead
    else:
        assert prof.overhead["copied_from"] == f"h200_sxm/{DONOR[dtype]}"
    assert (
        prof.overhead["per_iteration_s"]
        == default_profile("h200_sxm", DONOR[dtype]).overhead["per_iteration_s"]
    )
    for key, fit in prof.ops.items():
        cv = fit.stats["cv"]
        assert cv["rows"] == fit.stats["with_lattice"]["rows"] > 0, key
        # held-out shapes cost more than in-sample, never absurdly
        assert fit.stats["with_lattice"]["mape"] <= cv["mape"] + 0.02 < 0.6, (key, cv)
    for key in ("gemm", "gemm_bf16", "generation_attention"):
        assert prof.op(key).stats["cv"]["mape"] < 0.2, key


def _decode_s(gpu: str, model: str = "llama-3.1-8b", dtype: str = "bf16", tp: int = 1) -> float:
    lm = LatencyModel(get_model(model), gpu, tp, dtype, include_overhead=False)
    return lm.iteration_time(Batch(decode_kv=[4096] * 8))


def test_decode_follows_hbm_bandwidth_across_gpus() -> None:
    # a small-batch decode streams the weights: L40S (0.86 TB/s) < A100 (2.0) < H100 (3.35)
    # < H200 (4.8) < B200 (7.7) in speed, each within 2x of the bandwidth ratio
    order = ["l40s", "a100_sxm", "h100_sxm", "h200_sxm", "b200_sxm"]
    times = [_decode_s(g) for g in order]
    assert times == sorted(times, reverse=True)
    assert 0.5 < (times[0] / times[-1]) / (7.7 / 0.864) < 2.0


def test_fp4_weights_decode_faster_than_fp8_and_bf16_on_blackwell() -> None:
    bf16, fp8, fp4 = (_decode_s("b200_sxm", "llama-3.1-70b", d, 2) for d in ("bf16", "fp8", "fp4"))
    assert fp4 < fp8 < bf16


def test_gb200_tp8_extrapolates_its_4_gpu_all_reduce_as_measured_gpus_grow() -> None:
    """GB200's tables measure the all-reduce on 2 and 4 GPUs (one tray): TP8 takes the
    4-GPU fit with the launch latency grown as on the NVLink-switch GPUs measuring both,
    and says so; a GPU whose tables have the 8-GPU one is priced as measured."""
    from calibration.latency_inputs import ALLREDUCE_T0_PER_DOUBLING

    ratios = []
    for gpu in ("h100_sxm", "h200_sxm", "b200_sxm", "b300_sxm"):
        ops = default_profile(gpu, "bf16").ops
        ratios.append(ops["allreduce_8"].params["t0"] / ops["allreduce_4"].params["t0"])
        assert (
            0.9 < ops["allreduce_8"].params["bus_Bps"] / ops["allreduce_4"].params["bus_Bps"] < 1.1
        )
    assert min(ratios) <= ALLREDUCE_T0_PER_DOUBLING <= max(ratios)
    gb = LatencyModel(get_model("llama-3.1-70b"), "gb200", 8, "bf16")
    four = default_profile("gb200", "bf16").ops["allreduce_4"].params
    eight = gb.profile.ops["allreduce_8"].params
    assert eight["t0"] == pytest.approx(four["t0"] * ALLREDUCE_T0_PER_DOUBLING)
    assert eight["bus_Bps"] == four["bus_Bps"]
    assert "allreduce_8" not in default_profile("gb200", "bf16").ops  # the embedded one untouched
    assert "extrapolated from gb200's over 4" in gb.band_caveat and "\n" not in gb.band_caveat
    b200 = LatencyModel(get_model("llama-3.1-70b"), "b200_sxm", 8, "bf16")
    assert b200.extrapolated == "" and "extrapolated" not in b200.band_caveat
    # eight GPUs stream half the weights each: a small decode step is faster than on four
    gb4 = LatencyModel(get_model("llama-3.1-70b"), "gb200", 4, "bf16")
    assert gb.kernel_time_of(8, 8 * 1024) < gb4.kernel_time_of(8, 8 * 1024)


def test_a100_has_no_fp8_and_l40s_no_fp8_gemm() -> None:
    for gpu in ("a100_sxm", "l40s"):
        with pytest.raises(ComemInputError, match=f"no embedded profile for {gpu}/fp8"):
            LatencyModel(get_model("llama-3.1-8b"), gpu, 1, "fp8")


def test_checkpoints_load_in_their_own_dtype() -> None:
    from calibration.registry import checkpoint_dtype

    assert checkpoint_dtype("kimi-k2.5") == "int4"
    assert checkpoint_dtype("gpt-oss-120b") == "mxfp4"
    assert checkpoint_dtype("deepseek-v3") == "fp8" and checkpoint_dtype("glm-5") == "bf16"
    assert checkpoint_dtype("nvidia/DeepSeek-R1-NVFP4") == "fp4"
    # a quantized re-upload under another org is priced as its base architecture
    assert get_model("nvidia/DeepSeek-R1-0528-FP4").alias == "deepseek-v3"
    assert get_model("nvidia/Llama-3.3-70B-Instruct-FP4").alias == "llama-3.1-70b"
    assert checkpoint_dtype("nvidia/Llama-3.3-70B-Instruct-FP4") == "fp4"
    modelopt = {"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}}
    assert quantization_dtype(modelopt) == "fp4"
    w4a8 = {
        "quant_method": "compressed-tensors",
        "config_groups": {
            "g": {"weights": {"num_bits": 4, "type": "int"}, "input_activations": {"num_bits": 8}}
        },
    }
    with pytest.raises(ComemInputError, match="'compressed-tensors' is not priced"):
        quantization_dtype({"quantization_config": w4a8})  # int4 x int8: no table prices it


def test_list_gpus_states_versions_dtypes_and_memory_assumption() -> None:
    proc = run_comem("list", "gpus")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "b200_sxm" in out and "vLLM 0.19.0" in out and "vLLM 0.14.0" in out
    assert "weights bf16, fp4, fp8, int4, mxfp4, KV cache bf16, fp8" in out
    assert out.count("assumed, not measured") == 5
    assert "measured (torch.cuda.mem_get_info" in out


def test_capacity_on_b200_uses_the_stated_memory() -> None:
    lm = LatencyModel(get_model("llama-3.1-8b"), "b200_sxm", 1, "bf16")
    usable = lm.gpu.memory_bytes * 0.9 - lm.model.weight_bytes("bf16") - lm.reserve_bytes()
    assert lm.kv_capacity_tokens() == math.floor(usable / (32 * 4096))


def test_every_moe_op_says_the_routing_it_was_fitted_on() -> None:
    # calibration.opmodels.MOE_ROUTING: every committed table has those rows (A100's has
    # only power-law routing), so every profile with a MoE op names it, and no other
    for gpu, _, dtype in available_profiles():
        prof = default_profile(gpu, dtype)
        if "moe" not in prof.ops:
            continue
        moe_notes = [n for n in prof.provenance["notes"] if n.startswith("moe:")]
        assert any(f"fitted on {MOE_ROUTING} routing" in n for n in moe_notes), (gpu, dtype)
        assert not any("balanced" in n for n in moe_notes), (gpu, dtype, moe_notes)
    bf16_h100 = _decode_s("h100_sxm", "mixtral-8x7b", "bf16", 2)
    assert _decode_s("a100_sxm", "mixtral-8x7b", "bf16", 2) > bf16_h100


def test_interval_caveat_names_what_the_bands_were_not_measured_on() -> None:
    # the bands come from GQA, MLA and sliding-window models in bf16/fp8/int4/MXFP4 on
    # H100/H200: inside that, no caveat; outside, the caveat names the family, dtype or GPU
    inside = LatencyModel(get_model("kimi-k2.5"), "h200_sxm", 8, "int4")
    assert inside.band_caveat == ""
    gpu = LatencyModel(get_model("gpt-oss-120b"), "b200_sxm", 1, "mxfp4").band_caveat
    assert gpu.startswith("b200_sxm: outside")
    gdn = LatencyModel(get_model("qwen3.5-397b-a17b"), "h200_sxm", 8, "bf16").band_caveat
    assert gdn.startswith("gdn: outside")
    # a small model on many GPUs steps faster than any fitted deployment (gpt-oss-120b TP8)
    small = LatencyModel(get_model("llama-3.1-8b"), "h200_sxm", 8, "fp8").band_caveat
    assert small.startswith("a one-sequence decode step takes") and "\n" not in small
    for fitted in (("gpt-oss-120b", "h100_sxm", 8, "mxfp4"), ("qwen3-32b", "h100_sxm", 8, "bf16")):
        assert "one-sequence" not in LatencyModel(get_model(fitted[0]), *fitted[1:]).band_caveat
