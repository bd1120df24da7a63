"""The serving model that transfers: asynchronous scheduling (an iteration costs
max(GPU, CPU) + serial), the version that turns it on, the silicon rows' loader,
clients that desynchronize, and the error bands every prediction carries."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import ComemInputError
from calibration.latency import LatencyModel
from calibration.profile import FrameworkOverhead, default_profile
from calibration.serving import (
    ServingRow,
    ServingSetup,
    load_silicon_csv,
    version_schedules_async,
)
from calibration.uncertainty import ErrorBand, band_from_errors, coverage
from sim.bench_serve import BenchServeConfig, run_bench_serve
from sim.config import EngineConfig
from sim.serving import fit_rows, simulate_row

CPU = FrameworkOverhead(per_iteration_s=9e-3, per_sequence_s=2e-5, per_iteration_serial_s=5e-4)


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.12.0", False), ("0.13.0", False), ("0.14.0", True), ("0.18.0", True),
     ("v0.19.1", True), ("1.0", True), ("", None), ("unknown", None)],
)  # fmt: skip
def test_async_scheduling_by_version(version: str, expected: bool | None) -> None:
    assert version_schedules_async(version) is expected
    row = ServingRow("llama-3-8b", "h100_sxm", "bf16", 1, 4, 8, 8, 1, 1, vllm_version=version)
    assert ServingSetup().schedules_async(row) is bool(expected)
    assert ServingSetup(async_scheduling=True).schedules_async(row) is True


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_an_iteration_is_max_or_sum_of_gpu_and_cpu(async_scheduling: bool) -> None:
    """max(GPU, CPU) + serial with asynchronous scheduling, GPU + CPU + serial without;
    the vectorized paths (decode runs, steady runs) price every iteration the same."""
    lm = LatencyModel("llama-3-8b", "h100_sxm", 1, "bf16", async_scheduling=async_scheduling)
    lm.set_overhead(CPU)
    for b, kv, new in ((1, 500, []), (8, 8000, []), (200, 400_000, []), (4, 4000, [2048])):
        gpu = lm.kernel_time_of(b, kv, new, [0] * len(new))
        cpu = CPU.per_iteration_s + CPU.per_sequence_s * (b + len(new))
        want = (max(gpu, cpu) if async_scheduling else gpu + cpu) + CPU.per_iteration_serial_s
        assert lm.iteration_time_of(b, kv, new, [0] * len(new)) == pytest.approx(want, rel=1e-12)
    # a small batch is CPU-bound (the CPU's 9 ms exceed one decode), a big one GPU-bound
    small = lm.iteration_time_of(1, 500)
    big = lm.iteration_time_of(200, 400_000)
    if async_scheduling:
        assert lm.kernel_time_of(1, 500) < CPU.per_iteration_s
        assert small == pytest.approx(CPU.per_iteration_s + 2e-5 + 5e-4, rel=1e-12)
        assert big - lm.kernel_time_of(200, 400_000) == pytest.approx(5e-4, rel=1e-9)
    sizes = np.array([1, 8, 64, 200])
    kvs = sizes * 1000
    one_by_one = [lm.iteration_time_of(int(b), int(k)) for b, k in zip(sizes, kvs, strict=True)]
    assert lm.decode_iteration_times(sizes, kvs) == pytest.approx(one_by_one, rel=1e-12)
    steady = lm.steady_iteration_times(16, 16_000, 0, 0, 5)
    stepped = [lm.iteration_time_of(16, 16_000 + 16 * j) for j in range(5)]
    assert steady == pytest.approx(stepped, rel=1e-12)


def test_async_scheduling_hides_cpu_work_in_a_served_benchmark() -> None:
    """The same benchmark on a server with and without asynchronous scheduling: TPOT drops
    by about the CPU time (the GPU-bound decodes hide it), never below the GPU time."""
    tpot = {}
    for flag in (True, False):
        cfg = BenchServeConfig(
            engine=EngineConfig(model="llama-3-8b", async_scheduling=flag),
            num_prompts=16, random_input_len=256, random_output_len=64, max_concurrency=4,
        )  # fmt: skip
        res = run_bench_serve(cfg)
        tpot[flag] = res.to_vllm_json()["mean_tpot_ms"]
    assert tpot[True] < tpot[False]


def test_fit_recovers_terms_from_async_and_sync_rows() -> None:
    """Rows 'measured' by the simulator with known terms, half on servers that schedule
    asynchronously and half on servers that do not: the fit from zero gets the CPU terms
    back (sync rows see them, async rows see only the serial part where GPU-bound)."""
    truth = FrameworkOverhead(
        per_iteration_s=2e-3, per_sequence_s=3e-5, per_iteration_serial_s=8e-4
    )
    rows, setups = [], []
    for version, c, isl, osl in (
        ("0.12.0", 4, 256, 32), ("0.12.0", 16, 512, 24), ("0.12.0", 32, 128, 48),
        ("0.18.0", 4, 256, 32), ("0.18.0", 16, 512, 24), ("0.18.0", 64, 128, 48),
    ):  # fmt: skip
        row = ServingRow(
            "llama-3-8b", "h100_sxm", "bf16", 1, c, isl, osl, 1, 1, vllm_version=version
        )
        setup = ServingSetup(prompts_per_client=3)
        f = simulate_row(row, setup, truth)
        rows.append(replace(row, ttft_s=f.ttft_s, tpot_s=f.tpot_s))
        setups.append(setup)
    terms = ("per_iteration_s", "per_sequence_s", "per_iteration_serial_s")
    fit = fit_rows(rows, setups, FrameworkOverhead(), terms)
    assert np.abs(fit.table()["tpot_error"]).max() < 0.02
    assert fit.overhead.per_iteration_serial_s == pytest.approx(8e-4, rel=0.2)
    assert fit.overhead.per_iteration_s == pytest.approx(2e-3, rel=0.2)


def test_client_issue_delay_desynchronizes_a_closed_loop() -> None:
    """Clients that take an exponential moment to send their next request: the same
    lengths, every request served, deterministic under the seed, and the lockstep of a
    burst broken (first tokens no longer all equal)."""
    base = dict(
        engine=EngineConfig(model="llama-3-8b"), num_prompts=64, random_input_len=1024,
        random_output_len=32, max_concurrency=8,
    )  # fmt: skip
    ideal = run_bench_serve(BenchServeConfig(**base))
    jitter = BenchServeConfig(**base, client_issue_delay_s=0.01)
    a, b = run_bench_serve(jitter), run_bench_serve(jitter)
    assert [r.prompt_tokens for r in a.requests] == [r.prompt_tokens for r in ideal.requests]
    assert all(r.status == "finished" for r in a.requests)
    ttft = lambda res: [r.first_token_s - r.arrival_s for r in res.requests]  # noqa: E731
    assert ttft(a) == ttft(b)
    assert len({round(t, 9) for t in ttft(ideal)[8:]}) < len({round(t, 9) for t in ttft(a)[8:]})
    with pytest.raises(ValueError):
        BenchServeConfig(**base, client_issue_delay_s=-1.0)


def test_error_band_from_held_out_errors() -> None:
    errors = np.linspace(-0.2, 0.2, 101)  # predicted / measured from 0.8 to 1.2
    band = band_from_errors("tpot", errors, level=0.8)
    assert band.ratio_low == pytest.approx(0.84) and band.ratio_high == pytest.approx(1.16)
    low, high = band.interval(10.0)
    assert low == pytest.approx(10 / 1.16) and high == pytest.approx(10 / 0.84)
    measured = 10.0 / (1.0 + errors)
    assert coverage(band, np.full(101, 10.0), measured) == pytest.approx(0.8, abs=0.02)
    assert ErrorBand.from_dict(band.to_dict()) == band
    with pytest.raises(ComemInputError, match="error band"):
        ErrorBand.from_dict(band.to_dict() | {"ratio_low": 2.0})
    with pytest.raises(ComemInputError, match="no held-out rows"):
        band_from_errors("ttft", [np.nan])


def _silicon_csv(path: Path) -> Path:
    head = (
        "id,silicon_data_source,backend,backend_version,model_path,system,precision,mode,isl,osl,"
        "tp_size,attention_dp_size,moe_tp_size,moe_ep_size,batch_size,silicon_ttft_ms,silicon_tpot_ms"
    )
    src = "db; silicon_concurrency={c}; measured=2026-03-01T00:00:00Z"
    lines = [
        f'a,"{src.format(c=4)}",vllm,0.18.0,Qwen/Qwen3-32B,h200_sxm,bf16,agg,1024,128,2,1,2,1,4,100,10',
        f'b,"{src.format(c=4)}",vllm,0.18.0,Qwen/Qwen3-32B,h200_sxm,bf16,agg,1024,128,2,1,2,1,4,110,12',
        f'c,"{src.format(c=8)}",vllm,0.18.0,Qwen/Qwen3-235B-A22B,h200_sxm,fp8,agg,1024,128,8,1,1,8,2,90,9',
        f'd,"{src.format(c=16)}",vllm,0.18.0,Qwen/Qwen3-32B,h200_sxm,bf16,agg,1024,128,2,4,1,8,4,90,9',
        f'e,"{src.format(c=16)}",vllm,,Qwen/Qwen3-32B,h200_sxm,fp4,agg,1024,128,2,1,2,1,4,90,9',
    ]
    path.write_text(head + "\n" + "\n".join(lines) + "\n")
    return path


def test_load_silicon_rows_as_their_readme_says(tmp_path: Path) -> None:
    rows, skipped = load_silicon_csv(_silicon_csv(tmp_path / "s.csv"))
    # a 4-bit precision column is read as the checkpoint's own dtype (bf16 Qwen3-32B)
    assert len(rows) == 3 and sorted(r.dtype for r in rows) == ["bf16", "bf16", "fp8"]
    qwen = next(r for r in rows if r.model == "qwen3-32b")
    # the concurrency from silicon_concurrency=, not batch_size; repeats averaged
    assert qwen.concurrency == 4 and qwen.ttft_s == pytest.approx(0.105)
    assert qwen.tpot_s == pytest.approx(0.011) and not qwen.expert_parallel
    moe = next(r for r in rows if r.model == "qwen3-235b-a22b")
    assert moe.expert_parallel and moe.concurrency == 8 and moe.vllm_version == "0.18.0"
    assert [s.reason.split(" (")[0] for s in skipped] == ["attention data parallelism"]


def test_bench_serve_carries_intervals_from_the_committed_bands() -> None:
    bands = default_profile("h100_sxm", "bf16").framework_bands()
    if "tpot" not in bands:
        pytest.skip("the embedded profile has no error bands")
    cfg = BenchServeConfig(
        engine=EngineConfig(model="llama-3-8b"), num_prompts=16, random_input_len=256,
        random_output_len=32, max_concurrency=4,
    )  # fmt: skip
    out = run_bench_serve(cfg).to_vllm_json()
    for metric in ("ttft", "tpot", "itl", "e2el"):
        assert (
            out[f"mean_{metric}_ms_low"] < out[f"mean_{metric}_ms"] < out[f"mean_{metric}_ms_high"]
        )
    assert out["error_bands"]["tpot"]["level"] == pytest.approx(0.8)


def test_committed_held_out_predictions_and_coverage_rung() -> None:
    """The committed cross-validated predictions: every held-out row names its fold, and
    the 80% intervals, built without each model, cover 70-90% of that model's rows."""
    from calibration.serving_errors import SERVING_CV_PATH as path
    from comem.validation import rung_interval_coverage

    if not path.is_file():
        pytest.skip("no committed serving_cv.json")
    rows = json.loads(path.read_text())["rows"]
    assert {r["fold"] for r in rows} == {"model", "gpu"}
    rung = rung_interval_coverage()
    assert rung is not None and 0.0 < rung.value < 1.0
