"""The weight-only 4-bit experts (int4, mxfp4): the bf16 fused-MoE kernel's fit at 4-bit
weight bytes (:mod:`calibration.weight_only`), and the served model that refutes the
tables' own Marlin int4 kernel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from calibration.dtypes import DTYPE_BYTES, EXPERT_ONLY_DTYPES
from calibration.errors import KernelDataError
from calibration.fit import _fit_moe, _fitter
from calibration.kernels import load_kernel_tables
from calibration.latency import Batch, LatencyModel
from calibration.profile import (
    available_profiles,
    default_profile,
    op_form,
    profile_path,
    read_profile_json,
)
from calibration.registry import get_gpu, get_model
from calibration.serving import load_silicon_csv
from calibration.token_ops import op_predict
from calibration.weight_only import WEIGHT_ONLY_MOE_RULE, weight_only_profile


def _raw(gpu: str, dtype: str) -> dict:
    return read_profile_json(profile_path(gpu, dtype))


MOE_GPUS = sorted(
    g for g, _, d in available_profiles() if d == "bf16" and "moe" in default_profile(g, d).ops
)


def test_every_gpu_that_prices_moe_has_both_weight_only_profiles() -> None:
    have = {(g, d) for g, _, d in available_profiles()}
    assert len(MOE_GPUS) >= 7
    for gpu in MOE_GPUS:
        for dtype in EXPERT_ONLY_DTYPES:
            assert (gpu, dtype) in have
            prof = _raw(gpu, dtype)
            assert prof["ops"]["moe"] == _raw(gpu, "bf16")["ops"]["moe"], (gpu, dtype)
            assert prof["provenance"]["kernel_dtypes"]["moe"] == "bfloat16"
            assert prof["provenance"]["weight_only_moe"].startswith(WEIGHT_ONLY_MOE_RULE)


def _moe_s(dtype: str, tokens: int, model: str = "kimi-k2.5", tp: int = 8) -> float:
    lm = LatencyModel(get_model(model), "h200_sxm", tp, dtype, include_overhead=False)
    return lm.breakdown(Batch(decode_kv=[2048] * tokens))["moe"]


@pytest.mark.parametrize("tokens", [1, 4, 16, 64])
def test_4_bit_experts_decode_between_their_bytes_and_bf16(tokens: int) -> None:
    # a decode reads the touched experts' weights: 4-bit ones (0.5625 B with scales) take
    # less time than bf16 (2 B), never less than their byte ratio allows
    for dtype, low in (("int4", 0.5625 / 2.0), ("mxfp4", 0.53125 / 2.0)):
        quantized = _moe_s(dtype, tokens, "qwen3-30b-a3b", 1)
        assert low * 0.9 < quantized / _moe_s("bf16", tokens, "qwen3-30b-a3b", 1) < 1.0


def _served_tpot_ms(shared: Path, concurrency: int) -> float:
    rows, _ = load_silicon_csv(shared / "data" / "serving" / "vllm_serving_silicon_more.csv")
    (kimi,) = [
        r
        for r in rows
        if r.model == "kimi-k2.5" and (r.isl, r.osl, r.concurrency) == (1024, 1024, concurrency)
    ]
    return kimi.tpot_s * 1e3


@pytest.mark.parametrize("concurrency", [16, 32, 64])
def test_kimi_served_faster_than_the_marlin_table_allows(
    shared_dir: Path, concurrency: int
) -> None:
    # the table's int4 (Marlin) MoE alone, 60 layers at the step's token count, exceeds the
    # whole measured step (every op) of Kimi-K2.5 on 8 x H200; the priced MoE does not
    tpot = _served_tpot_ms(shared_dir, concurrency)
    moe = load_kernel_tables(shared_dir / "data" / "kernels" / "h200_sxm" / "vllm-0.19.0").moe
    table = moe[
        (moe["moe_dtype"] == "int4_wo")
        & (moe["hidden_size"] == 7168)
        & (moe["num_experts"] == 384)
        & (moe["moe_tp_size"] == 8)
        & (moe["moe_ep_size"] == 1)
        & (moe["num_tokens"] == concurrency)
    ]
    assert len(table)
    marlin_ms = 60 * float(table["latency"].min())
    assert marlin_ms > tpot
    assert _moe_s("int4", concurrency) * 1e3 < 0.8 * tpot


def test_a_fresh_fit_gives_the_committed_op(shared_dir: Path) -> None:
    # the committed weight-only profiles were moved to the rule, and to MOE_ROUTING, without
    # a full rebuild (add_weight_only_profiles, refit_moe_ops): fitting the int4 and mxfp4
    # MoE op from the tables now gives the same op, so a rebuild keeps both
    tables = load_kernel_tables(shared_dir / "data" / "kernels" / "h200_sxm" / "vllm-0.19.0")
    gpu = get_gpu("h200_sxm")
    hw = {"peak_flops": gpu.peak_flops["bf16"], "hbm_Bps": gpu.hbm_bandwidth_Bps}
    n = np.array([1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0])
    shape = {"hidden": 7168.0, "inter": 256.0, "experts": 384.0, "top_k": 8.0, "ep": 1.0}
    feats = {"tokens": n} | {k: np.full_like(n, v) for k, v in shape.items()}
    for dtype in EXPERT_ONLY_DTYPES:
        fresh = _fit_moe(tables, dtype, hw, _fitter(False), [])
        assert fresh is not None
        feats["w_bytes"] = np.full_like(n, DTYPE_BYTES[dtype])
        committed = default_profile("h200_sxm", dtype).op("moe")
        ratio = op_predict(op_form("moe"), fresh, feats) / op_predict(
            op_form("moe"), committed, feats
        )
        assert np.allclose(ratio, 1.0, atol=1e-3), (dtype, ratio)


def test_a_gpu_without_a_bf16_moe_op_cannot_price_4_bit_experts() -> None:
    bf16 = default_profile("h200_sxm", "bf16")
    dense = dataclasses.replace(bf16, ops={k: v for k, v in bf16.ops.items() if k != "moe"})
    with pytest.raises(KernelDataError, match="no moe op"):
        weight_only_profile(dense, dense, "int4")
