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


# --- bench-serve --data-parallel-size ------------------------------------------------------


def _bench(dp: int, ep: bool, model: str = "qwen3-30b-a3b", prompts: int = 64, **more):
    from sim.bench_serve import BenchServeConfig, run_bench_serve

    engine = {"model": model, "gpu": "h200_sxm", "tp": 1, "dtype": "bf16"}
    engine |= {"data_parallel_size": dp, "enable_expert_parallel": ep}
    cfg = BenchServeConfig.model_validate(
        {"engine": engine, "num_prompts": prompts, "random_input_len": 512}
        | {"random_output_len": 64}
        | more
    )
    return run_bench_serve(cfg)


def test_bench_serve_spreads_requests_over_ranks_as_vllms_balancer() -> None:
    # all sent at once: the lowest 4 x waiting + running takes each, so they alternate
    res = _bench(4, True, prompts=66)
    per_rank = sorted(
        sum(1 for q in res.requests if q.engine is rank)
        for rank in res.engine.replicas  # type: ignore[union-attr]
    )
    assert per_rank == [16, 16, 17, 17]
    assert type(res.engine).__name__ == "LockstepReplicas"  # MoE ranks step together


def test_bench_serve_dp_ep_prices_as_a_scenario_engine_does() -> None:
    """--data-parallel-size 2 --enable-expert-parallel builds the scenario engines' DP+EP
    server: each rank's latency model has EP = TP x DP = 2 (MoE over both ranks' tokens),
    the KV blocks are both ranks', and the decode step a request sees is that model's step
    for its rank's 32 sequences (within 15%: async scheduling, prefill iterations)."""
    res = _bench(2, True, prompts=64)
    out = res.to_vllm_json()
    lm = res.engine.latency
    assert (lm.dp, lm.ep) == (2, 2)  # type: ignore[union-attr]
    one = _bench(1, False, prompts=32)
    assert out["simulator"]["data_parallel_size"] == 2
    assert "data_parallel_size" not in one.to_vllm_json()["simulator"]
    # the experts split over 2 GPUs leave each rank more KV than one GPU holding them all
    assert out["simulator"]["kv_cache_blocks"] > 2 * one.engine.total_blocks
    step = lm.iteration_time_of(32, 32 * (512 + 32)) * 1000
    assert out["completed"] == 64
    assert out["mean_tpot_ms"] == pytest.approx(step, rel=0.15)


def test_bench_serve_dense_dp_ranks_run_alone() -> None:
    res = _bench(2, False, model="qwen3-8b", prompts=40)
    out = res.to_vllm_json()
    assert out["simulator"]["data_parallel_size"] == 2 and out["completed"] == 40
    assert type(res.engine).__name__ == "ReplicatedEngine"


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--model", "qwen3-8b", "-dp", "2", "--enable-expert-parallel"], ["dense"]),
        (
            ["--model", "glm-4.7", "--gpu", "h200_sxm", "--tp", "4", "-dp", "4"]
            + ["--enable-expert-parallel"],
            ["data_parallel_size 4", "16 expert-parallel ranks"],
        ),
        (["--model", "qwen3-8b", "--data-parallel-size", "0"], ["--data-parallel-size"]),
    ],
)
def test_bench_serve_impossible_dp_is_one_line(args: list[str], needles: list[str]) -> None:
    from cli_helpers import assert_user_error, run_comem

    assert_user_error(run_comem("bench-serve", *args, "--num-prompts", "4"), *needles)
