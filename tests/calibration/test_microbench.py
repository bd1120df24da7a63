"""comem calibrate microbench on this CPU with tiny shapes: schema, fit pipeline, round trip.

The tables must be what ``calibrate fit --kernels`` reads (the committed vLLM tables' schema),
the fitted profile must load and price a model on this device, and it must give back the
measured timings. Skipped without torch (the ``serve`` extra), except the test that the
command says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import assert_user_error, run_comem

from calibration import opmodels as om
from calibration.errors import ComemInputError
from calibration.kernels import KERNEL_FILES, load_kernel_tables
from calibration.latency import Batch, LatencyModel
from calibration.model_spec import ModelSpec
from calibration.profile import Profile
from calibration.registry import get_gpu, load_gpu_file

try:
    import torch  # noqa: F401

    HAS_TORCH = True
except ImportError:
    HAS_TORCH = False

needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="calibrate microbench needs torch (pip install 'comem-sim[serve]')"
)

#: Columns of the committed vLLM 0.19.0 tables (shared/data/kernels/*/vllm-0.19.0).
COMMITTED_COLUMNS = {
    "gemm": ["framework", "version", "device", "op_name", "kernel_source", "gemm_dtype"]
    + ["m", "n", "k", "latency"],
    "context_attention": ["framework", "version", "device", "op_name", "kernel_source"]
    + ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "beam_width"]
    + ["attn_dtype", "kv_cache_dtype", "step", "window_size", "latency"],
    "moe": ["framework", "version", "device", "op_name", "kernel_source", "moe_dtype"]
    + ["num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size"]
    + ["moe_ep_size", "distribution", "latency"],
    "allreduce": ["framework", "version", "device", "op_name", "kernel_source"]
    + ["allreduce_dtype", "num_gpus", "message_size", "latency", "backend"],
}
COMMITTED_COLUMNS["generation_attention"] = COMMITTED_COLUMNS["context_attention"]

TINY = ModelSpec("local/tiny", "tiny", 2, 512, 1024, 4, 2, 1000)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_TORCH:
        pytest.skip("calibrate microbench needs torch (pip install 'comem-sim[serve]')")
    out = tmp_path_factory.mktemp("microbench")
    proc = run_comem("calibrate", "microbench", "--device", "cpu", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "fastest GEMM" in proc.stdout
    return out


@pytest.fixture(scope="module")
def profile_path(bench: Path) -> Path:
    path = bench / "profile.json"
    proc = run_comem("calibrate", "fit", "--kernels", str(bench), "--out", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "allreduce_2: fewer than 4 rows, not fitted" in proc.stdout
    return path


@needs_torch
def test_tables_have_the_committed_schema(bench: Path, shared_dir_or_none: Path | None) -> None:
    for op, (fname, _) in KERNEL_FILES.items():
        frame = pd.read_parquet(bench / fname)
        assert list(frame.columns) == COMMITTED_COLUMNS[op], op
        if shared_dir_or_none is not None:
            committed = shared_dir_or_none / "data/kernels/h100_sxm/vllm-0.19.0" / fname
            ref = pd.read_parquet(committed)
            assert sorted(frame.columns) == sorted(ref.columns), op
            if len(frame):
                kinds = {c: frame[c].dtype.kind for c in frame.columns}
                assert kinds == {c: ref[c].dtype.kind for c in ref.columns}, op
    tables = load_kernel_tables(bench)
    assert tables.device.startswith("CPU")
    assert tables.allreduce.empty  # one device measures no all-reduce
    gen = pd.read_parquet(bench / KERNEL_FILES["generation_attention"][0])
    assert (gen["isl"] == 1).all() and ((gen["step"] + 1) & gen["step"] == 0).all()
    ctx = tables.context_attention
    assert (ctx["step"] == 0).any() and (ctx["step"] > 0).any()  # with and without prefix
    assert set(tables.gemm["gemm_dtype"]) <= {"bfloat16", "fp8"}
    assert (tables.gemm["latency"] > 0).all()


@needs_torch
def test_device_json_is_a_gpu_spec(bench: Path) -> None:
    info = json.loads((bench / "device.json").read_text())
    spec = get_gpu(str(bench / "device.json"))
    assert spec.name == info["name"] and spec.peak_flops["bf16"] > 0
    # the fastest measured GEMM is the peak: no measured GEMM beats it
    gemm = pd.read_parquet(bench / "gemm_perf.parquet")
    bf16 = gemm[gemm["gemm_dtype"] == "bfloat16"]
    achieved = 2 * bf16["m"] * bf16["n"] * bf16["k"] / (bf16["latency"] * 1e-3)
    assert achieved.max() == pytest.approx(spec.peak_flops["bf16"], rel=1e-3)
    assert "microbench" in info["source"]


@needs_torch
def test_fit_gives_a_profile_that_loads_and_prices_a_model(bench: Path, profile_path: Path) -> None:
    prof = Profile.load(profile_path)
    assert {"gemm", "gemm_bf16", "context_attention", "generation_attention", "moe"} <= set(
        prof.ops
    )
    assert not any(k.startswith("allreduce") for k in prof.ops)
    assert prof.framework == "torch-microbench" and "microbench" in prof.provenance["kernel_data"]
    device = str(bench / "device.json")
    lm = LatencyModel(TINY, device, 1, profile=prof)
    small = lm.iteration_time(Batch(decode_kv=[64] * 4))
    large = lm.iteration_time(Batch(decode_kv=[1024] * 16, prefill_new=[256]))
    assert 0 < small < large
    with pytest.raises(ComemInputError, match=r"measure no all-reduce \(no allreduce_2\)"):
        LatencyModel(TINY, device, 2, profile=prof)


@needs_torch
def test_round_trip_profile_gives_back_the_measurements(bench: Path, profile_path: Path) -> None:
    """Each fitted op, evaluated on the measured shapes, is near what was measured: the tables'
    units, columns and conventions (KV = step + 1, per-GPU heads) read as they were written."""
    prof = Profile.load(profile_path)
    tables = load_kernel_tables(bench)
    cases = {
        "gemm": om.gemm_rows(tables.gemm, "bf16"),
        "context_attention": om.context_rows(tables.context_attention),
        "generation_attention": om.generation_rows(tables.generation_attention),
        "moe": om.moe_rows(tables.moe, "bf16"),
    }
    for op, (features, measured) in cases.items():
        pred = om.predict(om.FORMS[op], prof.op(op), features)
        rel = np.abs(pred / measured - 1.0)
        assert np.median(rel) < 0.25, (op, rel)


@needs_torch
def test_fp8_profile_when_scaled_mm_runs(bench: Path, tmp_path: Path) -> None:
    info = json.loads((bench / "device.json").read_text())
    if "fp8" not in info["peak_flops"]:
        pytest.skip("torch._scaled_mm does not run fp8 on this CPU")
    out = tmp_path / "fp8.json"
    proc = run_comem(
        "calibrate", "fit", "--kernels", str(bench), "--dtype", "fp8", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert "moe: 0 fp8 rows, not fitted" in proc.stdout
    prof = Profile.load(out)
    assert prof.provenance["kernel_dtypes"]["gemm_moe"] == "fp8"  # per-tensor scaled


@pytest.mark.slow
def test_without_torch_one_line_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('no torch here')\n")
    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    proc = run_comem("calibrate", "microbench", "--out", str(tmp_path / "o"), env=env)
    assert_user_error(proc, "needs torch", "serve")


@needs_torch
@pytest.mark.slow
def test_cuda_without_a_gpu_is_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = run_comem("calibrate", "microbench", "--device", "cuda", "--out", str(tmp_path))
    assert_user_error(proc, "--device cuda")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"memory_gib": 0}, "memory_gib"),
        ({"peak_flops": {"fp8": 1e12}}, "peak_flops"),
        ({"peak_flops": {"bf16": -1}}, "peak_flops"),
        ({"name": ""}, "name"),
        ({"sm_count": "many"}, "sm_count"),
    ],
)
def test_bad_device_json_is_one_line(change: dict, needle: str, tmp_path: Path) -> None:
    good = {
        "name": "my_gpu",
        "memory_gib": 24,
        "hbm_bandwidth_Bps": 1e12,
        "peak_flops": {"bf16": 1e14},
        "sm_count": 80,
    }
    path = tmp_path / "device.json"
    path.write_text(json.dumps(good))
    assert load_gpu_file(path).name == "my_gpu"
    path.write_text(json.dumps(good | change))
    with pytest.raises(ComemInputError, match=needle) as info:
        get_gpu(str(path))
    assert "\n" not in str(info.value)


@needs_torch
def test_compare_script_matches_shapes(bench: Path, tmp_path: Path) -> None:
    """Against itself every shape matches and every ratio is 1; the files name both sides."""
    from benchmarks.device.compare_microbench import main

    out = tmp_path / "cmp"
    assert main([str(bench), "--reference", str(bench), "--out", str(out), "--gpu", "self"]) == 0
    rows = pd.read_csv(out / "comparison.csv")
    assert set(rows["op"]) == {"gemm", "context_attention", "generation_attention", "moe"}
    assert np.allclose(rows["ratio"], 1.0)
    gemm = pd.read_parquet(bench / "gemm_perf.parquet")
    assert (rows["op"] == "gemm").sum() == len(gemm)
    ctx = pd.read_parquet(bench / "context_attention_perf.parquet")
    assert (rows["op"] == "context_attention").sum() == (ctx["step"] == 0).sum()
    md = (out / "comparison.md").read_text()
    assert "microbench" in md and str(bench) in md
    assert main([str(bench), "--reference", str(tmp_path / "nope"), "--out", str(out)]) == 2
