"""`comem bench-serve`: the simulated `vllm bench serve` against the static predictor (all
requests at once) and queueing results (closed loop: Little's law; Poisson with one
sequence at a time and a constant iteration: M/D/1)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from calibration import LatencyModel
from calibration.latency import ConstantLatency
from calibration.static import predict_static_latency
from sim.bench_serve import BenchServeConfig, arrival_times, random_lengths, run_bench_serve
from sim.config import EngineConfig

ROOT = Path(__file__).resolve().parents[2]
LLAMA = LatencyModel("llama-3-8b", "h100_sxm", 1)


@pytest.mark.parametrize("stepping", ["event", "iteration"])
@pytest.mark.parametrize("batch,inp,out", [(16, 512, 64), (64, 2048, 32)])
def test_all_at_once_equals_the_static_predictor(stepping, batch, inp, out):
    cfg = BenchServeConfig(
        engine=EngineConfig(
            max_num_batched_tokens=16384, enable_prefix_caching=False, stepping=stepping
        ),
        num_prompts=batch,
        random_input_len=inp,
        random_output_len=out,
    )
    res = run_bench_serve(cfg, LLAMA).to_vllm_json()
    assert res["completed"] == batch and res["failed"] == 0
    assert res["duration"] == pytest.approx(
        predict_static_latency(LLAMA, batch, inp, out), rel=1e-9
    )
    assert res["total_output_tokens"] == batch * out
    # one prefill wave then lockstep decoding: every gap is one iteration, and TPOT is the
    # mean of them per request
    assert res["mean_itl_ms"] == pytest.approx(res["mean_tpot_ms"], rel=1e-9)


def test_closed_loop_obeys_littles_law():
    """C clients with no think time: C = throughput x mean latency (Little), up to the
    start and end of the run."""
    c = 8
    cfg = BenchServeConfig(
        engine=EngineConfig(), num_prompts=400, random_input_len=256, random_output_len=64,
        random_range_ratio=0.5, max_concurrency=c,
    )  # fmt: skip
    run = run_bench_serve(cfg, LLAMA)
    res = run.to_vllm_json()
    events = sorted(
        [(r.arrival_s, 1) for r in run.requests] + [(r.finished_s, -1) for r in run.requests]
    )
    assert max(np.cumsum([d for _, d in events])) == c  # never more than C in flight
    assert res["max_concurrent_requests"] >= c  # vLLM's per-second count
    little = res["request_throughput"] * res["mean_e2el_ms"] / 1000.0
    assert little == pytest.approx(c, rel=0.03)


def test_poisson_one_at_a_time_is_an_md1_queue():
    """max_num_seqs 1, one-token outputs, a constant iteration time d: each request is one
    iteration, so the server is M/D/1 and the mean wait is rho d / (2 (1 - rho))
    (Pollaczek-Khinchine). 30 replications give a 99% confidence interval."""
    d, rate, n = 0.01, 60.0, 400
    rho = rate * d
    waits = []
    for seed in range(30):
        cfg = BenchServeConfig(
            engine=EngineConfig(max_num_seqs=1, kv_capacity_tokens=1 << 20),
            num_prompts=n, random_input_len=16, random_output_len=1, request_rate=rate,
            seed=seed,
        )  # fmt: skip
        res = run_bench_serve(cfg, ConstantLatency(d)).to_vllm_json()
        waits.append(res["mean_e2el_ms"] / 1000.0 - d)
    mean = float(np.mean(waits))
    half = stats.t.ppf(0.995, len(waits) - 1) * np.std(waits, ddof=1) / math.sqrt(len(waits))
    expected = rho * d / (2 * (1 - rho))
    assert abs(mean - expected) <= half + 0.02 * expected, (mean, expected, half)


def test_arrivals_follow_vllms_generator():
    cfg = BenchServeConfig(num_prompts=2000, request_rate=5.0, burstiness=1.0, seed=3)
    t = arrival_times(cfg, np.random.default_rng(3))
    assert t[-1] == pytest.approx(2000 / 5.0)  # rescaled: the last goes out at N / rate
    gaps = np.diff(t)
    assert stats.kstest(gaps / gaps.mean(), "expon").pvalue > 0.001  # Poisson
    assert np.all(arrival_times(BenchServeConfig(num_prompts=5), np.random.default_rng(0)) == 0)


@pytest.mark.slow
def test_cli_prints_vllms_result_names():
    proc = subprocess.run(
        [sys.executable, "-m", "comem", "bench-serve", "--model", "llama-3-8b",
         "--num-prompts", "20", "--random-input-len", "300", "--random-output-len", "20",
         "--request-rate", "10", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("completed", "duration", "request_throughput", "output_throughput"):
        assert key in out
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "p99"):
            assert math.isfinite(out[f"{stat}_{metric}_ms"])
    assert out["completed"] == 20


@pytest.mark.slow
def test_a_vllm_bench_serve_command_line_runs_unchanged(tmp_path: Path):
    """vLLM's client flags are accepted, its percentile flags shape the keys as vLLM names
    them, and --save-result writes the same JSON once (never over an existing file)."""
    args = [sys.executable, "-m", "comem", "bench-serve", "--backend", "vllm",
            "--model", "llama-3-8b", "--dataset-name", "random", "--ignore-eos",
            "--host", "localhost", "--port", "8000", "--num-prompts", "30",
            "--random-input-len", "200", "--random-output-len", "16", "--random-range-ratio", "0.5",
            "--max-concurrency", "4", "--percentile-metrics", "ttft,itl",
            "--metric-percentiles", "50,90,99.9", "--save-result", "--result-dir", str(tmp_path),
            "--result-filename", "r.json", "--json"]  # fmt: skip
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert json.loads((tmp_path / "r.json").read_text()) == out
    for metric in ("ttft", "itl"):
        v = [out[f"{k}_{metric}_ms"] for k in ("p50", "p90", "p99.9")]
        assert v == sorted(v) and out[f"p50_{metric}_ms"] == pytest.approx(
            out[f"median_{metric}_ms"]
        )
    assert not any(k.endswith(("_tpot_ms", "_e2el_ms")) for k in out)
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "r.json exists" in again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.splitlines()) == 1
    bad = subprocess.run(
        [*args[:-8], "--metric-percentiles", "99,101"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "'101' is not a percentile" in bad.stderr


@pytest.mark.parametrize("semantics", ["symmetric", "below"])
def test_random_lengths_spread_as_the_client_version_did(semantics):
    """vllm bench serve >= 0.8 draws uniformly in [L(1 - r), L(1 + r)]; benchmark_serving.py
    up to 0.7 (and InferenceX's fork) in [r L, L]: same flag, a mean of L against (1 + r) L / 2.
    The bounds are exact, the means within 4 standard errors of the uniform's."""
    r, n = 0.8, 4000
    cfg = BenchServeConfig(
        num_prompts=n, random_input_len=1024, random_output_len=8192, random_range_ratio=r,
        random_range_semantics=semantics,
    )  # fmt: skip
    inputs, outputs = random_lengths(cfg, np.random.default_rng(3))
    for drawn, length in ((inputs, 1024), (outputs, 8192)):
        lo, hi = (int(r * length), length) if semantics == "below" else (
            math.floor(length * (1 - r)), math.ceil(length * (1 + r)))  # fmt: skip
        assert drawn.min() >= lo and drawn.max() <= hi
        assert drawn.min() < lo + 0.01 * length and drawn.max() > hi - 0.01 * length
        se = (hi - lo) / math.sqrt(12 * n)
        assert abs(drawn.mean() - (lo + hi) / 2) < 4 * se


@pytest.mark.parametrize("stepping", ["iteration", "event"])
def test_inter_token_gaps_add_up_to_each_decode_also_across_preemptions(stepping):
    """vLLM's ITL pools every gap between a request's chunks, so over all requests the
    gaps sum to the time from first to last token; that holds only if a resumed request's
    first gap runs from its last token before the preemption."""
    cfg = BenchServeConfig(
        engine=EngineConfig(model="llama-3-8b", kv_capacity_tokens=60000, stepping=stepping),
        num_prompts=200, random_input_len=1000, random_output_len=400, random_range_ratio=0.5,
    )  # fmt: skip
    res = run_bench_serve(cfg)
    assert res.engine.preemptions > 0  # the regime this is about
    values, weights = res.recorder.itl_arrays()
    done = [r for r in res.requests if r.status == "finished"]
    decode_time = sum(r.finished_s - r.first_token_s for r in done)
    assert weights.sum() == sum(r.generated - 1 for r in done)
    assert float((values * weights).sum()) == pytest.approx(decode_time, rel=1e-9)
    out = res.to_vllm_json()
    assert out["itl_tokens_after_preemption"] > 0
    assert out["std_itl_ms"] > out["mean_itl_ms"]  # the long gaps are there


def test_a_preempted_request_finds_its_own_blocks_again():
    """Random prompts share nothing, but with prefix caching (vLLM's default) a preempted
    request's freed blocks keep their hashes: re-admitted, it recomputes only what was
    evicted meanwhile. Without prefix caching it recomputes everything."""
    runs = {}
    for caching in (True, False):
        cfg = BenchServeConfig(
            engine=EngineConfig(
                model="llama-3-8b", kv_capacity_tokens=60000, enable_prefix_caching=caching
            ),
            num_prompts=200, random_input_len=1000, random_output_len=1000,
            random_range_ratio=0.5,
        )  # fmt: skip
        runs[caching] = run_bench_serve(cfg)
    assert runs[True].engine.preemptions > 0 and runs[False].engine.preemptions > 0
    computed = {
        caching: int(run.recorder.iterations_frame()["prefill_tokens"].sum())
        for caching, run in runs.items()
    }
    prompts = sum(r.prompt_tokens for r in runs[True].requests)
    assert computed[True] < computed[False]  # re-admissions hit their own blocks
    assert computed[True] >= prompts  # every prompt once, at least (nothing shared)
    assert runs[True].to_vllm_json()["duration"] < runs[False].to_vllm_json()["duration"]


def test_private_streams_at_preemption_equal_streams_from_the_start(monkeypatch):
    """bench-serve keys a request's blocks only when it is preempted (nobody else can hit
    them): the schedule equals that of a stream per request from the start."""
    from engine.kv_cache import StreamSpace
    from sim import engine as engine_module

    cfg = BenchServeConfig(
        engine=EngineConfig(model="llama-3-8b", kv_capacity_tokens=60000),
        num_prompts=150, random_input_len=1000, random_output_len=600, random_range_ratio=0.5,
    )  # fmt: skip
    lazy = run_bench_serve(cfg)
    space, submit = StreamSpace(), engine_module.Engine.submit

    def with_stream(self, prompt, output, stream=None, tag=None):
        return submit(self, prompt, output, stream if stream is not None else space.new(), tag)

    monkeypatch.setattr(engine_module.Engine, "submit", with_stream)
    eager = run_bench_serve(cfg)
    assert lazy.engine.preemptions == eager.engine.preemptions > 0
    a, b = lazy.to_vllm_json(), eager.to_vllm_json()
    for key in ("duration", "mean_ttft_ms", "p99_itl_ms", "std_itl_ms", "mean_e2el_ms"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key


def test_per_second_peaks_count_every_token_and_request():
    """vLLM's per-second peaks: every output token lands in one one-second bucket (so the
    buckets add up to total_output_tokens), and a closed loop of C clients has at least C
    requests in flight in some second."""
    cfg = BenchServeConfig(
        engine=EngineConfig(model="llama-3-8b", kv_capacity_tokens=60000),
        num_prompts=120, random_input_len=800, random_output_len=300, random_range_ratio=0.5,
        max_concurrency=16,
    )  # fmt: skip
    res = run_bench_serve(cfg)
    out = res.to_vllm_json()
    times, weights = res.recorder.later_token_times()
    done = [r for r in res.requests if r.status == "finished"]
    assert int(weights.sum()) + len(done) == out["total_output_tokens"]
    assert (times >= 0).all() and times.max() <= max(r.finished_s for r in done) + 1e-9
    assert out["max_concurrent_requests"] >= 16
    # no second holds more tokens than the whole run, and the busiest at least their mean
    seconds = math.floor(out["duration"]) + 1
    total = out["total_output_tokens"]
    assert total / seconds <= out["max_output_tokens_per_s"] <= total


def _bench(*flags: str) -> tuple[dict, str]:
    args = ["bench-serve", "--model", "llama-3-8b", "--num-prompts", "64",
            "--max-concurrency", "8", "--random-input-len", "512", "--random-output-len",
            "32", "--json", *flags]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "comem", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.slow
def test_bench_serve_accepts_vllm_client_flags_with_a_note_and_the_same_result():
    plain, quiet = _bench()
    flags = ["--trust-remote-code", "--disable-tqdm", "--served-model-name", "m",
             "--label", "run1", "--temperature", "0.7", "--header", "a=b", "c=d",
             "--host", "h", "--port", "1"]  # fmt: skip
    same, notes = _bench(*flags)
    assert same == plain and quiet == ""
    lines = notes.strip().splitlines()
    named = [f for f in flags if f.startswith("--")]
    assert len(lines) == len(named)
    for flag in named:
        note = f"comem bench-serve: note: {flag} does not change the simulation ("
        assert sum(line.startswith(note) for line in lines) == 1, flag
    assert plain["backend"] == "vllm" and _bench("--backend", "openai-chat")[0]["backend"] == (
        "openai-chat"
    )


@pytest.mark.slow
def test_bench_serve_prices_goodput_and_a_shared_prefix():
    loose, _ = _bench("--goodput", "ttft:1e9", "e2el:1e9")
    assert loose["request_goodput"] == pytest.approx(loose["request_throughput"])
    tight, _ = _bench("--goodput", "ttft:0.001")
    assert tight["request_goodput"] == 0.0
    varied = ("--random-range-ratio", "0.5", "--save-detailed")
    detail, _ = _bench(*varied, "--goodput", "ttft:1e9")
    cut = 1000 * float(np.median(detail["ttfts"]))
    half, _ = _bench(*varied, "--goodput", f"ttft:{cut}")
    good = sum(1000 * t <= cut for t in detail["ttfts"])
    assert 0 < good < 64 and half["request_goodput"] == pytest.approx(good / half["duration"])
    cached, _ = _bench("--random-prefix-len", "2048")
    uncached, _ = _bench("--random-prefix-len", "2048", "--no-enable-prefix-caching")
    plain, _ = _bench()
    assert cached["total_input_tokens"] == 64 * (512 + 2048) == uncached["total_input_tokens"]
    # the shared prefix is computed once: first tokens come as fast as without a prefix,
    # far faster than recomputing it for every request
    assert cached["mean_ttft_ms"] < 0.6 * uncached["mean_ttft_ms"]
    assert cached["mean_ttft_ms"] < 1.25 * plain["mean_ttft_ms"]


def test_bench_serve_unknown_flag_points_at_its_help():
    proc = subprocess.run(
        [sys.executable, "-m", "comem", "bench-serve", "--model", "llama-3-8b", "--ramp-up-x"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "--ramp-up-x" in proc.stderr and "see 'comem bench-serve --help'" in proc.stderr
    ramp = subprocess.run(
        [sys.executable, "-m", "comem", "bench-serve", "--model", "llama-3-8b",
         "--ramp-up-strategy", "linear"], cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ramp.returncode == 2 and len(ramp.stderr.splitlines()) == 1
    assert "--ramp-up-strategy" in ramp.stderr and "not simulated" in ramp.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "comem", "bench-serve", "--model", "llama-3-8b", "--goodput",
         "ttfx:3"], cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--goodput" in bad.stderr and "Traceback" not in bad.stderr


def test_the_chat_endpoint_times_gpt_oss_first_text_after_its_harmony_header():
    """On the chat endpoint a gpt-oss reply streams no text for its first 3 tokens (the
    harmony header): a client timing TTFT to the first text (aiperf: ``ttft_at``
    first-text) sees it 3 decode tokens later and counts 3 output tokens fewer, its TPOT
    over the tokens shown unchanged; vLLM's client (first chunk) and a model without a
    header are timed as before."""
    gpt_oss = LatencyModel("gpt-oss-20b", "h100_sxm", 1, "mxfp4")
    results = {}
    for model in (gpt_oss, LLAMA):
        for backend in ("vllm", "openai-chat"):
            cfg = BenchServeConfig(
                engine=EngineConfig(), num_prompts=24, random_input_len=512,
                random_output_len=32, random_range_ratio=0.5, max_concurrency=6,
                backend=backend,
                ttft_at="first-text" if backend == "openai-chat" else "first-chunk",
            )  # fmt: skip
            run = run_bench_serve(cfg, model)
            results[(model.model.alias, backend)] = (run, run.to_vllm_json())
    plain_run, plain = results[("gpt-oss-20b", "vllm")]
    chat_run, chat = results[("gpt-oss-20b", "openai-chat")]
    assert plain_run.silent_tokens == 0 and chat_run.silent_tokens == 3
    vllm_chat = BenchServeConfig(engine=EngineConfig(), num_prompts=2, backend="openai-chat")
    assert run_bench_serve(vllm_chat, gpt_oss).silent_tokens == 0  # vLLM's client: first chunk
    assert chat["mean_tpot_ms"] == pytest.approx(plain["mean_tpot_ms"], rel=1e-9)
    moved = chat["mean_ttft_ms"] - plain["mean_ttft_ms"]
    assert moved == pytest.approx(3 * plain["mean_tpot_ms"], rel=1e-9)
    assert moved > 0
    assert chat["total_output_tokens"] == plain["total_output_tokens"] - 3 * 24
    llama_plain, llama_chat = (
        results[("llama-3-8b", "vllm")][1],
        results[("llama-3-8b", "openai-chat")][1],
    )
    for key in ("mean_ttft_ms", "mean_tpot_ms", "p99_ttft_ms"):
        assert llama_chat[key] == llama_plain[key]
