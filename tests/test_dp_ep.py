"""Data-parallel attention with expert parallelism (``--data-parallel-size N
--enable-expert-parallel``): EP = TP x DP, the MoE layers over every rank's tokens, their
all-gather / reduce-scatter priced from the all-reduce tables (VLLM_FACTS 4, 5, G)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.errors import ComemInputError
from calibration.inputs import read_toml
from calibration.latency import Batch, LatencyModel
from calibration.opmodels import predict
from calibration.profile import op_form
from calibration.registry import fits_in_memory, get_gpu, get_model
from comem.families import SCENARIO
from sim.scenario import run_scenario, scenario_from

MOE = "qwen3-30b-a3b"


def _lm(dp: int) -> LatencyModel:
    return LatencyModel(MOE, "h200_sxm", 2, "bf16", expert_parallel=True, data_parallel_size=dp)


def test_moe_runs_over_every_ranks_tokens_on_tp_x_dp_expert_ranks() -> None:
    lm = _lm(2)
    assert lm.ep == 4
    m = lm.model
    parts = lm.breakdown(Batch(decode_kv=[4096] * 32))
    n = np.array([64.0])  # 32 tokens on each of the 2 ranks, all-gathered
    feats = {
        "tokens": n, "hidden": n * 0 + m.hidden, "inter": n * 0 + m.moe_intermediate,
        "experts": n * 0 + m.experts, "top_k": n * 0 + m.top_k, "ep": n * 0 + 4,
        "w_bytes": n * 0 + 2.0,
    }  # fmt: skip
    moe = m.moe_layers * predict(op_form("moe"), lm.profile.op("moe"), feats)[0]
    assert parts["moe"] == pytest.approx(moe)
    ar4 = lm.profile.op("allreduce_4")
    gather = m.moe_layers * predict(op_form("allreduce"), ar4, {"bytes": n * m.hidden * 2.0})[0]
    assert parts["ep_all_gather"] == pytest.approx(gather)
    assert "ep_all_gather" not in _lm(1).breakdown(Batch(decode_kv=[4096] * 32))


def test_experts_split_over_all_ranks_leave_more_kv() -> None:
    m, gpu = get_model(MOE), get_gpu("h200_sxm")
    one, two = _lm(1), _lm(2)
    assert two.kv_capacity_tokens() > one.kv_capacity_tokens()
    experts = m.routed_expert_params() * 2
    free = fits_in_memory(m, gpu, 2, "bf16", 0.9, two.reserve_bytes(), expert_ranks=4)
    by_hand = gpu.memory_bytes * 0.9 - (m.weight_bytes("bf16") - experts) / 2 - experts / 4
    assert free == int(by_hand - two.reserve_bytes())


def test_more_than_eight_expert_ranks_is_refused_naming_the_field() -> None:
    with pytest.raises(ComemInputError, match="data_parallel_size 8 x tp 2") as info:
        LatencyModel(MOE, "h200_sxm", 2, "bf16", expert_parallel=True, data_parallel_size=8)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_a_scenario_engine_runs_dp_attention_with_ep() -> None:
    data = read_toml(SCENARIO, "scenario")
    data["workload"].update(agents=4, steps=4)
    agent = {"name": "agent", "model": MOE, "gpu": "h200_sxm", "tp": 2, "dtype": "bf16"}
    agent |= {"data_parallel_size": 2, "enable_expert_parallel": True, "max_model_len": 65536}
    for arch in data["architectures"]:
        arch["agent"] = dict(agent)
        if "memory" in arch:
            arch["memory"]["gpu"] = "h200_sxm"
    summary = run_scenario(scenario_from(data, [], "dp-ep")).summary()
    assert summary["architectures"]["FC"]["steps"] == 16
    assert summary["architectures"]["CoMem"]["tasks_finished"] == 4
