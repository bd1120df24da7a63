"""Speculative decoding with MTP (vLLM ``--speculative-config``, VLLM_FACTS H): 1 + k tokens
verified per decode step, k lookahead KV slots, the drafter's passes priced, and on average
(1 - a^(k+1)) / (1 - a) tokens emitted per step for per-token acceptance a."""

from __future__ import annotations

import math

import pytest
import simpy

from calibration.errors import ComemInputError
from calibration.latency import LatencyModel
from calibration.registry import get_model
from calibration.spec_decode import (
    draft_time,
    emitted_tokens,
    expected_tokens,
    spec_iteration_time,
)
from engine.kv_cache import KVCache
from engine.request import Sequence
from engine.scheduler import Scheduler, SchedulerConfig
from sim.config import EngineConfig
from sim.engine import Engine

DSV3 = dict(model="deepseek-v3", gpu="h200_sxm", tp=8, dtype="fp8", max_model_len=65536)


def _serve(k: int, a: float, n: int = 16, inp: int = 1000, out: int = 201, **more: object):
    env = simpy.Environment()
    cfg = EngineConfig(**(DSV3 | more), num_speculative_tokens=k, spec_acceptance_rate=a)
    eng = Engine(env, cfg)
    reqs = [eng.submit(inp, out) for _ in range(n)]
    env.run()
    assert all(r.status == "finished" and r.generated == out for r in reqs)
    return eng, reqs


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("a", [0.0, 0.3, 0.8, 1.0])
def test_expected_tokens_is_the_truncated_geometric_sum(k: int, a: float) -> None:
    # E = sum_{j=0..k} a^j: draft j+1 counts only if drafts 1..j were accepted too
    assert expected_tokens(k, a) == pytest.approx(sum(a**j for j in range(k + 1)))
    if a < 1:
        assert expected_tokens(k, a) == pytest.approx((1 - a ** (k + 1)) / (1 - a))


@pytest.mark.parametrize("k,a", [(1, 0.5), (3, 0.7), (4, 0.33), (2, 0.99)])
def test_a_request_emits_the_expected_tokens_on_average(k: int, a: float) -> None:
    carry, total, steps = 0.0, 0, 10_000
    for _ in range(steps):
        n, carry = emitted_tokens(k, a, carry)
        assert 1 <= n <= k + 1 and 0 <= carry < 1
        total += n
    assert total / steps == pytest.approx(expected_tokens(k, a), abs=1.0 / steps)


@pytest.mark.parametrize("k", [1, 3])
def test_acceptance_one_emits_k_plus_one_tokens_per_step(k: int) -> None:
    eng0, _ = _serve(0, 0.0)
    eng, reqs = _serve(k, 1.0)
    # the prompt's iterations are the same; the 200 tokens after the first take
    # ceil(200 / (k + 1)) steps instead of 200
    prefill = eng0.iterations - 200
    assert eng.iterations == prefill + math.ceil(200 / (k + 1))
    assert max(r.finished_s for r in reqs) < max(r.finished_s for r in _serve(0, 0.0)[1])


@pytest.mark.parametrize("k", [1, 3])
def test_acceptance_zero_costs_exactly_the_draft_and_verify_overhead(k: int) -> None:
    """One token per step as without drafts, the same iterations, each dearer by the verify
    pass's k extra tokens per request and the MTP drafter."""
    eng0, reqs0 = _serve(0, 0.0, n=1)
    eng, reqs = _serve(k, 0.0, n=1)
    assert eng.iterations == eng0.iterations
    tpot0 = (reqs0[0].finished_s - reqs0[0].first_token_s) / 200
    tpot = (reqs[0].finished_s - reqs[0].first_token_s) / 200
    lm = eng.latency
    kv = 1000 + 100  # the mid-decode context
    plain = lm.iteration_time_of(1, kv)
    spec = spec_iteration_time(lm, 1, kv + k, [], [], k, 1, k)
    assert spec > plain + draft_time(lm, 1 + k, 1, kv + k, k) * 0.5
    assert tpot / tpot0 == pytest.approx(spec / plain, rel=0.02)
    assert tpot > tpot0


def test_throughput_grows_with_acceptance() -> None:
    times = [max(r.finished_s for r in _serve(3, a)[1]) for a in (0.0, 0.5, 0.9)]
    assert times[0] > times[1] > times[2]


def test_drafts_count_against_the_token_budget_and_reserve_lookahead_slots() -> None:
    kv = KVCache(100, 16, enable_prefix_caching=False)
    cfg = SchedulerConfig(max_num_batched_tokens=10, num_speculative_tokens=3)
    sched = Scheduler(kv, cfg)
    seqs = [Sequence(i, 13, 50) for i in range(3)]
    for s in seqs:
        sched.add(s)
    step = sched.schedule()  # admission: 10 of the 13+13+13 prompt tokens
    # the first prompt's 10 tokens and 3 lookahead slots: ceil(13 / 16) = 1 block
    assert [n for _, n in step.entries] == [10] and kv.used_blocks == 1
    sched.apply(step)
    step = sched.schedule()  # 3 more of the first, 7 of the second
    sched.apply(step)
    step = sched.schedule()
    sched.apply(step)
    step = sched.schedule()
    # decodes now verify 1 + 3 tokens each: the budget of 10 gives 4, 4 and the rest 2
    decoding = [(s.id, n) for s, n in step.entries]
    assert sum(n for _, n in decoding) <= 10
    assert decoding[0] == (0, 4) and step.spec_seqs >= 1 and step.spec_tokens >= 3
    # the first request holds 14 tokens + 3 drafts being verified + 3 lookahead: 2 blocks
    assert seqs[0].blocks == math.ceil((13 + 1 + 3 + 3) / 16) == 2


def test_spec_decode_needs_mtp_modules_and_refuses_in_one_line() -> None:
    env = simpy.Environment()
    with pytest.raises(ComemInputError, match="ships none") as e:
        Engine(env, EngineConfig(model="qwen3-8b", num_speculative_tokens=2))
    assert "\n" not in str(e.value)
    assert get_model("glm-4.7").mtp_layers == 1 and get_model("minimax-m2.5").mtp_layers == 3
    assert get_model("kimi-k2.5").mtp_layers == 0  # num_nextn_predict_layers 0


def test_the_mtp_layers_kv_shrinks_the_cache_by_their_share() -> None:
    eng0, _ = _serve(0, 0.0, n=1, out=2)
    eng, _ = _serve(2, 0.5, n=1, out=2)
    lm = LatencyModel(get_model("deepseek-v3"), "h200_sxm", 8, "fp8")
    # 61 layers keep a token's latent, the MTP module one more: 61/62 of the tokens
    tokens0 = lm.kv_capacity_tokens()
    assert eng.total_blocks == int(tokens0 * 61 // 62) // eng.block_size - 1
    assert eng.total_blocks < eng0.total_blocks


@pytest.mark.slow
def test_bench_serve_speculative_config_as_vllm_takes_it() -> None:
    from cli_helpers import assert_user_error, run_comem

    base = ["bench-serve", "--model", "glm-4.7", "--gpu", "h200_sxm", "--tp", "8"]
    base += ["--num-prompts", "40", "--random-output-len", "64", "--json"]
    spec = ["--speculative-config", '{"method": "mtp", "num_speculative_tokens": 3}']
    import json

    plain = json.loads(run_comem(*base).stdout)
    fast = json.loads(run_comem(*base, *spec, "--spec-acceptance-rate", "0.8").stdout)
    slow = json.loads(run_comem(*base, *spec, "--spec-acceptance-rate", "0").stdout)
    assert fast["simulator"]["num_speculative_tokens"] == 3
    assert "num_speculative_tokens" not in plain["simulator"]
    assert fast["mean_tpot_ms"] < plain["mean_tpot_ms"] < slow["mean_tpot_ms"]
    assert fast["total_output_tokens"] == plain["total_output_tokens"] == 40 * 64
    assert_user_error(run_comem(*base, *spec), "--spec-acceptance-rate")
    assert_user_error(
        run_comem(
            *base, "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}'
        ),
        "only MTP",
    )
    assert_user_error(
        run_comem(*base, "--speculative-config", '{"num_speculative_tokens": 0}'),
        "num_speculative_tokens",
    )


def test_hybrid_linear_groups_keep_k_more_states_with_drafts() -> None:
    # Qwen3.5-27B: 3 linear groups, each 1 state block plus num_speculative_blocks (k = 2)
    env = simpy.Environment()
    cfg = dict(model="qwen3.5-27b", gpu="h200_sxm", kv_capacity_tokens=784 * 101)
    plain = Engine(env, EngineConfig(**cfg, enable_prefix_caching=False))
    spec = Engine(env, EngineConfig(**cfg, num_speculative_tokens=2, spec_acceptance_rate=0.5))
    assert plain.scheduler.config.request_blocks == 3
    assert spec.scheduler.config.request_blocks == 3 * (1 + 2)
