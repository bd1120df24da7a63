"""Expert parallelism (vLLM ``--enable-expert-parallel``, one data-parallel rank).

Hand-computed op cases, what EP changes in an iteration and what it does not, bad input,
and (with ``../shared``) the model against the kernel tables' ``moe_ep_size`` rows.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from calibration import opmodels as om
from calibration.errors import ComemInputError
from calibration.latency import LatencyModel
from calibration.opmodels import MOE_ROUTING, OpFit
from calibration.profile import Profile, default_profile
from calibration.registry import get_model


def _moe_layers_only(alias: str, layers: int = 4):
    """The model's MoE shape on a few layers (so bf16 fits on any GPU in the tests)."""
    return dataclasses.replace(get_model(alias), layers=layers, dense_layers=0)


def test_moe_op_expert_parallel_hand_computed():
    """One token of GLM-4.7's MoE shape on one of 8 EP ranks, fp8, by hand.

    160 experts / 8 ranks: 20 local (share 1/8). One token routes to 8 experts, so the
    rank touches 1/8 * 160 * (1 - (1 - 8/160)^1) = 1 expert on average: 3 * 5120 * 1536
    weight bytes. The token's 8 slots move (2*5120 + 3*1536) * 2 = 29696 bytes each; the
    rank pays 1/8 of them as local GEMM traffic and nonlocal_slot (2) times the other 7/8.
    """
    hw = {"peak_flops": 1e15, "hbm_Bps": 1e12}
    params = {"t0": 1e-6, "eff_compute": 1.0, "eff_memory": 1.0, "p": 2.0, "nonlocal_slot": 2.0}
    fit = OpFit("moe", params, hw, None)
    feats = {
        "tokens": np.array([1.0]),
        "hidden": np.array([5120.0]),
        "inter": np.array([1536.0]),
        "experts": np.array([160.0]),
        "top_k": np.array([8.0]),
        "ep": np.array([8.0]),
        "w_bytes": np.array([1.0]),
    }
    weight_bytes = 3 * 5120 * 1536  # one whole expert, 1 byte per weight
    slot_bytes = 8 * 29696
    t_memory = (weight_bytes + slot_bytes * (1 / 8 + 2 * 7 / 8)) / 1e12
    t_compute = 6 * 1 * 8 * (1 / 8) * 5120 * 1536 / 1e15
    expected = 1e-6 + math.hypot(t_memory, t_compute)
    got = float(om.predict(om.MOE, fit, feats)[0])
    assert got == pytest.approx(expected, rel=1e-12)
    # without expert parallelism the same token touches 8 slices of 1/8 (TP8): the same
    # weight bytes, all 8 slots local, no non-local term
    tp_feats = feats | {"inter": np.array([1536.0 / 8]), "ep": np.array([1.0])}
    tp_expected = 1e-6 + math.hypot(
        (8 * 3 * 5120 * 192 + 8 * (2 * 5120 + 3 * 192) * 2) / 1e12,
        6 * 8 * 5120 * 192 / 1e15,
    )
    assert float(om.predict(om.MOE, fit, tp_feats)[0]) == pytest.approx(tp_expected, rel=1e-12)


def test_busiest_rank_holds_the_remainder_experts():
    # vLLM gives experts % ep ranks one more expert; the layer waits for them
    assert om.local_experts(np.array([160.0, 10.0, 8.0]), np.array([8.0, 4.0, 8.0])).tolist() == [
        20.0,
        3.0,
        1.0,
    ]


def test_expert_parallel_changes_only_the_moe_op():
    """Attention, router, shared experts and the two all-reduces per layer stay TP."""
    model = _moe_layers_only("glm-4.7")
    tp = LatencyModel(model, "h200_sxm", 4, "fp8")
    ep = LatencyModel(model, "h200_sxm", 4, "fp8", expert_parallel=True)
    n = np.array([1, 7, 64, 300, 2048])
    a, b = tp.token_ops.linear_ops(n), ep.token_ops.linear_ops(n)
    assert a.keys() == b.keys()
    for key in a:
        if key != "moe":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["moe"], b["moe"])
    assert ep.ep == 4 and tp.ep == 1
    assert ep.kv_capacity_tokens() == tp.kv_capacity_tokens()  # same weight bytes per GPU


def test_expert_parallel_on_one_gpu_is_the_plain_model():
    model = _moe_layers_only("qwen3-235b-a22b")
    one = LatencyModel(model, "h100_sxm", 1, "bf16", expert_parallel=True)
    plain = LatencyModel(model, "h100_sxm", 1, "bf16")
    n = np.arange(0, 3000, 37)
    np.testing.assert_array_equal(one.linear_time(n), plain.linear_time(n))


def test_expert_parallel_on_a_dense_model_is_an_error():
    with pytest.raises(ComemInputError, match="mixture-of-experts.*qwen3-32b is dense"):
        LatencyModel("qwen3-32b", "h100_sxm", 2, "bf16", expert_parallel=True)


def test_expert_parallel_does_not_need_the_expert_width_divisible():
    # 1536 / 16 is whole but take a width TP cannot slice: EP does not slice it
    model = dataclasses.replace(
        _moe_layers_only("glm-4.7"), moe_intermediate=1540, shared_experts=0
    )
    with pytest.raises(ComemInputError, match="expert intermediate size 1540"):
        LatencyModel(model, "h200_sxm", 8, "fp8")
    assert LatencyModel(model, "h200_sxm", 8, "fp8", expert_parallel=True).ep == 8


def test_profile_without_expert_parallel_fit_refuses_ep_and_old_lattice_still_reads():
    """A profile fitted on ep=1 rows only (a microbench, or an older comem-sim with a 2-axis
    MoE lattice) prices TP as before and refuses EP with one clear line."""
    prof = default_profile("h200_sxm", "bf16")
    data = prof.to_dict()
    moe = data["ops"]["moe"]
    del moe["params"]["nonlocal_slot"]
    axes = moe["lattice"]["axes_log2"]
    values = np.asarray(moe["lattice"]["log_values"]).reshape([len(a) for a in axes])
    moe["lattice"] = {"axes_log2": axes[:2], "log_values": values[..., 0].ravel().tolist()}
    old = Profile.from_dict(data, "old")
    model = _moe_layers_only("qwen3-coder-480b")
    n = np.array([1, 64, 4096])
    np.testing.assert_allclose(
        LatencyModel(model, "h200_sxm", 8, "bf16", profile=old).linear_time(n),
        LatencyModel(model, "h200_sxm", 8, "bf16", profile=prof).linear_time(n),
        rtol=1e-4,  # the stored lattice values are rounded to 5 decimals
    )
    with pytest.raises(ComemInputError, match="cannot price expert parallelism"):
        LatencyModel(model, "h200_sxm", 8, "bf16", profile=old, expert_parallel=True)


def test_engine_config_carries_expert_parallel_to_the_latency_model():
    import simpy

    from sim.config import EngineConfig
    from sim.engine import Engine

    cfg = EngineConfig(model="glm-4.7", gpu="h200_sxm", tp=8, dtype="fp8")
    engine = Engine(simpy.Environment(), cfg.model_copy(update={"enable_expert_parallel": True}))
    assert engine.latency.expert_parallel and engine.latency.ep == 8
    with pytest.raises(ComemInputError, match="dense"):
        Engine(
            simpy.Environment(),
            EngineConfig(model="qwen3-4b", gpu="h200_sxm", enable_expert_parallel=True),
        )


# --- against the kernel tables -----------------------------------------------------------


@pytest.mark.shared
@pytest.mark.parametrize("gpu", ["h100_sxm", "h200_sxm"])
def test_ep8_moe_matches_the_tables_rows_at_qwen3_coder_shape(gpu, kernel_dir):
    """Qwen3-Coder's MoE (hidden 6144, experts 160 x 2560, top-8) is in the tables at
    moe_ep_size 8 and moe_tp_size 8: the model's per-layer MoE time on 8 GPUs with and
    without EP against both (bf16, the routing the profile was fitted on: MOE_ROUTING)."""
    moe = pd.read_parquet(kernel_dir(gpu) / "moe_perf.parquet")
    rows = moe[
        (moe["moe_dtype"] == "bfloat16")
        & (moe["hidden_size"] == 6144)
        & (moe["inter_size"] == 2560)
        & (moe["num_experts"] == 160)
        & (moe["distribution"] == MOE_ROUTING)
        & (moe["kernel_source"] == "vllm_fused_moe")
    ]
    model = _moe_layers_only("qwen3-coder-480b")
    tokens = np.array([1, 8, 64, 512, 1024, 4096, 8192])
    for ep_flag, ep, tp in ((True, 8, 1), (False, 1, 8)):
        measured = (
            rows[(rows["moe_ep_size"] == ep) & (rows["moe_tp_size"] == tp)]
            .groupby("num_tokens")["latency"]
            .median()
            .loc[tokens]
            .to_numpy()
            * 1e-3
        )
        lm = LatencyModel(model, gpu, 8, "bf16", expert_parallel=ep_flag)
        per_layer = lm.token_ops.linear_ops(tokens)["moe"] / model.moe_layers
        rel = per_layer / measured - 1.0
        assert np.abs(rel).max() < 0.15, (ep_flag, np.round(rel, 3))
        assert np.abs(rel).mean() < 0.08, (ep_flag, np.round(rel, 3))


def test_profile_reports_expert_parallel_error_per_size():
    for gpu, dtype in (("h100_sxm", "bf16"), ("h200_sxm", "fp8")):
        stats = default_profile(gpu, dtype).op("moe").stats["with_lattice_by_ep"]
        assert set(stats) == {"1", "2", "4", "8"}
        for ep in ("2", "4", "8"):
            assert stats[ep]["rows"] > 200 and stats[ep]["mape"] < 0.06, (gpu, dtype, ep)
