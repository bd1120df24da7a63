"""Every input, however bad, gets one clear line: no traceback, no hang, nothing lost.

One case per cause of issue 15 (and of the sweep that followed it), each fed to the
real ``comem`` entry point. The command-line cases run in one child process
(``python tests/comem/test_bad_inputs.py --batch``: ``comem.cli.main`` per case, each under
an alarm and the child under a memory limit, so a regression shows as a traceback,
a "hang" or a killed child instead of taking the machine), which keeps ~90 cases
to seconds. Each case asserts exit code 2 and one stderr line naming the problem (live
commands: rows with their status and exit 1); the cases about data check the user's
files are untouched.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
KERNEL_PROFILE = REPO / "calibration" / "profiles" / "h100_sxm__vllm-0.19.0__bf16.json"
H200_FP8_PROFILE = REPO / "calibration" / "profiles" / "h200_sxm__vllm-0.19.0__fp8.json"
MEASURED_PROFILE = (
    REPO
    / "calibration"
    / "profiles"
    / "measured"
    / "tiny-llama__cpu-1core__transformers-5.24.0.json"
)
FITTED = REPO / "sim" / "data" / "swebench_fitted.json"
DEAD = "http://127.0.0.1:1"  # nothing listens on port 1: every request is refused at once
PS = ["predict-static", "--model", "llama-3-8b", "--input", "128", "--output", "16"]
FIT = ["calibrate", "fit", "--max-batch-tokens", "512", "--out", "{d}/o/fit.json"]
PROFILE = ["profile", "--endpoint", DEAD, "--model", "m"]
CASE_TIMEOUT_S = 30
MEMORY_LIMIT = 3 << 30

# --- the child: run cases through comem.cli.main ----------------------------------------


def _run_batch(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    from comem.cli import main

    def alarm(*_: Any) -> None:
        raise TimeoutError(f"case ran past {CASE_TIMEOUT_S} s")

    signal.signal(signal.SIGALRM, alarm)
    home = os.getcwd()
    out = []
    for case in cases:
        os.chdir(case.get("cwd") or home)
        stdout, stderr = io.StringIO(), io.StringIO()
        failure = ""
        t0 = time.perf_counter()
        signal.alarm(CASE_TIMEOUT_S)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                rc = main(case["argv"])
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # a traceback: what this file is about
            rc, failure = -1, traceback.format_exc()
        finally:
            signal.alarm(0)
        out.append(
            {
                "id": case["id"],
                "rc": rc,
                "stdout": stdout.getvalue(),
                "stderr": stderr.getvalue(),
                "traceback": failure,
                "seconds": time.perf_counter() - t0,
            }
        )
    os.chdir(home)
    return out


if __name__ == "__main__" and sys.argv[1:] == ["--batch"]:
    sys.path.insert(0, str(REPO))
    json.dump(_run_batch(json.load(sys.stdin)), sys.stdout)
    sys.exit(0)


# --- fixture files ------------------------------------------------------------------------

SMALL = 'name = "small"\n[workload]\nagents = 2\nsteps = 2\n'
ARCH_FC = '[[architectures]]\nname = "FC"\nkind = "fc"\n'


def _measurements(rng: np.random.Generator) -> pd.DataFrame:
    """36 complete waves of plausible 'comem profile' rows (the fit needs >= 6)."""
    rows = []
    point = 0
    for isl in (16, 200, 900):
        for osl in (8, 40):
            for c in (1, 3, 6):
                for rnd in range(2):
                    ttft = 0.01 + 2e-5 * isl * c * rng.uniform(0.9, 1.1)
                    itl = 0.005 + 1e-4 * c
                    for i in range(c):
                        rows.append(
                            dict(point=point, round=rnd, index=i, concurrency=c, status="ok",
                                 input_tokens=isl, output_tokens=osl, prompt_tokens=isl,
                                 completion_tokens=osl, ttft_s=ttft, mean_itl_s=itl,
                                 e2e_s=ttft + itl * (osl - 1))
                        )  # fmt: skip
                point += 1
    return pd.DataFrame(rows)


def _write_fixtures(d: Path) -> None:
    (d / "o").mkdir()
    os.mkfifo(d / "fifo.toml")  # reading it would block forever
    (d / "a_file.txt").write_text("not a directory\n")
    (d / "small.toml").write_text(SMALL)
    (d / "notutf8.toml").write_bytes(b'name = "\xff\xfe"\n')
    (d / "notutf8.json").write_bytes(b'{"schema": "\xff"}')
    (d / "empty.toml").write_text("# only a comment\n")
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (d / "garbage.json").write_text("{ not json")
    (d / "list.json").write_text("[1, 2, 3]")
    fitted = json.loads(FITTED.read_text())
    fitted["variables"]["steps"]["mu"] = float("nan")
    (d / "fitted_nan.json").write_text(json.dumps(fitted))  # writes the literal NaN
    # a distribution the reader does not draw from, and another file format: both were
    # read as the default log-normal, silently
    gamma = json.loads(FITTED.read_text())
    gamma["variables"]["steps"]["dist"] = "gamma"
    (d / "fitted_gamma.json").write_text(json.dumps(gamma))
    (d / "fitted_schema.json").write_text(
        json.dumps({**json.loads(FITTED.read_text()), "schema": 99})
    )
    for name, path in (
        ("fitted_gamma", "fitted_gamma.json"),
        ("fitted_schema", "fitted_schema.json"),
        ("fitted_garbage", "garbage.json"),
        ("fitted_list", "list.json"),
        ("fitted_nan", "fitted_nan.json"),
        ("fitted_notutf8", "notutf8.json"),
        ("fitted_deep", "deep.json"),
    ):
        (d / f"{name}.toml").write_text(
            f'[workload]\nkind = "fitted"\nagents = 2\nmax_steps = 3\npath = "{d / path}"\n'
        )
    (d / "fitted_good.toml").write_text(
        f'[workload]\nkind = "fitted"\nagents = 2\nmax_steps = 3\npath = "{FITTED}"\n'
    )
    (d / "tp3.toml").write_text(SMALL + ARCH_FC + "agent = { tp = 3 }\n")
    measured = json.loads(MEASURED_PROFILE.read_text())
    for name, change in (
        ("mp_c0_nan", {"surrogate": {**measured["surrogate"], "c0": float("nan")}}),
        ("mp_c0_negative", {"surrogate": {**measured["surrogate"], "c0": -1.0}}),
        ("mp_c0_inf", {"surrogate": {**measured["surrogate"], "c0": float("inf")}}),
        ("mp_c1_huge", {"surrogate": {**measured["surrogate"], "c1": 1e300}}),
        ("mp_overhead_inf", {"request_overhead_s": float("inf")}),
        ("mp_zero", {"surrogate": dict.fromkeys(("c0", "c1", "c2", "c3", "c4"), 0.0),
                     "packed_attention_s": 0.0, "admission_s": 0.0, "request_overhead_s": 0.0}),
    ):  # fmt: skip
        (d / f"{name}.json").write_text(json.dumps({**measured, **change}))
    (d / "zero_cost.toml").write_text(
        SMALL + ARCH_FC + f'agent = {{ profile = "{d / "mp_zero.json"}" }}\n'
    )
    kernel = json.loads(KERNEL_PROFILE.read_text())
    for name, change in (
        ("kp_tpu", {"gpu": "tpu_v5"}),
        ("kp_int4", {"dtype": "int4"}),
        ("kp_overhead_inf", {"overhead": {**kernel["overhead"], "per_iteration_s": float("inf")}}),
        ("kp_lattice_axes", {"ops": {**kernel["ops"], "gemm": {**kernel["ops"]["gemm"],
            "lattice": {"axes_log2": [[0, 1, 2]], "log_values": [0, 0, 0]}}}}),
        ("kp_param_text", {"ops": {**kernel["ops"], "gemm": {**kernel["ops"]["gemm"],
            "params": {**kernel["ops"]["gemm"]["params"], "p": "three"}}}}),
        ("kp_hw_missing", {"ops": {**kernel["ops"], "gemm": {**kernel["ops"]["gemm"], "hw": {}}}}),
    ):  # fmt: skip
        (d / f"{name}.json").write_text(json.dumps({**kernel, **change}))
    good = _measurements(np.random.default_rng(0))
    good.to_csv(d / "good.csv", index=False)
    for name, column, value in (
        ("completion_1", "completion_tokens", 1),
        ("itl_nan", "mean_itl_s", float("nan")),
        ("e2e_inf", "e2e_s", float("inf")),
        ("prompt_1e12", "prompt_tokens", 10**12),
        ("prompt_5e8", "prompt_tokens", 5 * 10**8),
    ):
        good.assign(**{column: value}).to_csv(d / f"{name}.csv", index=False)
    steps_header = (
        "source,trajectory_id,step,prompt_tokens,completion_tokens,visible_output_tokens,"
        "observation_tokens_derived,observation_tokens_est_chars4,tool_time_s\n"
    )
    (d / "steps_text.csv").write_text(steps_header + "s1,t1,0,100,many,40,10,10,1.0\n")
    (d / "steps_inf.csv").write_text(steps_header + "s1,t1,0,100,50,40,10,10,inf\n")
    (d / "steps_ok.csv").write_text(steps_header + "s1,t1,0,100,50,40,10,10,1.0\n")
    for name in ("steps_text", "steps_inf"):
        (d / f"trace_{name}.toml").write_text(
            f'[workload]\nkind = "trace"\nagents = 2\nsources = ["s1"]\npath = "{d / name}.csv"\n'
        )
    (d / "e2e_text.csv").write_text(
        "Num of Hardware,Model,Input Output Length,Batch Size,Latency\n1,llama-3-8b,128,8,fast\n"
    )
    device = {"name": "mine", "memory_gib": 80, "hbm_bandwidth_Bps": 3e12, "sm_count": 132,
              "peak_flops": {"bf16": 9e14}}  # fmt: skip
    (d / "device_inf.json").write_text(json.dumps({**device, "memory_gib": float("inf")}))
    (d / "kernels").mkdir()
    (d / "kernels" / "device.json").write_text('{"name": 5')
    (d / "replayed").mkdir()
    (d / "replayed" / "live_steps.csv").write_text("measured\n")
    (d / "nul_profile.toml").write_text(SMALL + ARCH_FC + 'agent = { profile = "a\\u0000b" }\n')
    (d / "bigint.toml").write_text("seed = " + "9" * 5000 + "\n")
    (d / "bigint.json").write_text('{"schema": ' + "9" * 5000 + "}")
    (d / "grid_huge.toml").write_text("input_tokens = [1000000000]\nwarmup_requests = 0\n")
    (d / "grid_small.toml").write_text(
        "input_tokens = [4]\noutput_tokens = [2]\nconcurrency = [1]\ncached_tokens = [0]\n"
        "warmup_requests = 0\ntimeout_s = 2\n"
    )
    base = f'base = "{d / "small.toml"}"\n'
    sweeps = {
        "ok": '[grid]\n"workload.agents" = [1]\n',
        "set5": 'set = 5\n[grid]\n"workload.agents" = [1]\n',
        "stop_inf": '[grid]\n"workload.agents" = {start = 1, stop = inf}\n',
        "stop_nan": '[grid]\n"workload.agents" = {start = 1, stop = nan}\n',
        "million": '[grid]\n"workload.agents" = {start = 1, stop = 1000000}\n',
        "date": '[grid]\n"workload.agents" = [1979-05-27]\n',
    }
    for name, body in sweeps.items():
        (d / f"sweep_{name}.toml").write_text(base + body)
    (d / "fitted_copy.json").write_text(FITTED.read_text())
    serving = "model,gpu,dtype,tp,concurrency,isl,osl,ttft_ms,tpot_ms\n"
    (d / "serving_ok.csv").write_text(serving + "llama-3.1-8b,h100_sxm,bf16,1,8,128,32,30,8\n")
    (d / "serving_tp_inf.csv").write_text(
        serving + "llama-3.1-8b,h100_sxm,bf16,inf,8,128,32,30,8\n"
    )
    (d / "binary.csv").write_bytes(bytes(range(256)))
    good.assign(ttft_s=100.0).to_csv(d / "ttft_late.csv", index=False)
    (d / "plan_int.toml").write_text("plan = 5\n")
    (d / "plan_offload_inf.toml").write_text('[plan]\nagent_model = "glm-4.7"\noffload_gib = inf\n')
    (d / "tables").mkdir()
    (d / "tables" / "gemm_perf.parquet").write_text("measured\n")
    _write_round_three_fixtures(d, good)
    (d / "sweep_one_fails.toml").write_text(
        f'base = "{d / "fitted_good.toml"}"\n[set]\n"workload.agents" = 1\n[grid]\n'
        f'"workload.path" = ["{FITTED}", "{d / "garbage.json"}", "{d / "fitted_copy.json"}"]\n'
    )


MODEL_CONFIGS = REPO / "calibration" / "model_configs"


def _hf_config(alias: str, **change: Any) -> dict[str, Any]:
    """A committed model config as a user has it (no registry metadata), changed."""
    data = json.loads((MODEL_CONFIGS / f"{alias}.json").read_text())
    data.pop("_comem", None)
    return {**data, **change}


def _steps_csv(path: Path, tool: list[float] | None = None,
               completion: list[int] | None = None) -> None:  # fmt: skip
    """A small steps CSV for ``workload fit`` (source s1, 6 trajectories of 3-8 steps)."""
    rng = np.random.default_rng(0)
    lines = [
        "source,trajectory_id,step,prompt_tokens,completion_tokens,visible_output_tokens,"
        "observation_tokens_derived,observation_tokens_est_chars4,tool_time_s"
    ]
    i = 0
    for t in range(6):
        for s in range(3 + t):
            drawn = int(rng.integers(50, 500))
            c = drawn if completion is None else completion[i % len(completion)]
            tt = float(rng.uniform(0.5, 5)) if tool is None else tool[i % len(tool)]
            obs = int(rng.integers(10, 300))
            lines.append(f"s1,t{t},{s},{1000 + 100 * s + t},{c},{c // 2},{obs},{obs},{tt!r}")
            i += 1
    path.write_text("\n".join(lines) + "\n")


def _write_round_three_fixtures(d: Path, good: pd.DataFrame) -> None:
    """Issue 27's causes: plan workloads, HF configs, outputs over inputs, files comem
    writes, sidecars, silently wrong values."""
    (d / "plan_wl_not_table.toml").write_text("workload = 5\n")
    # integers of hundreds of digits, in each kind of file (an OverflowError before)
    (d / "huge_int_config.json").write_text(
        json.dumps(_hf_config("llama-3-8b", hidden_size=10**400))
    )
    kernel = json.loads(
        (REPO / "calibration" / "profiles" / "h100_sxm__vllm-0.19.0__bf16.json").read_text()
    )
    kernel["ops"]["gemm"]["params"]["t0"] = 10**400
    (d / "huge_int_profile.json").write_text(json.dumps(kernel))
    good.assign(prompt_tokens=good["prompt_tokens"].astype(object)).assign(
        prompt_tokens=lambda f: [10**400] + list(f["prompt_tokens"][1:])
    ).to_csv(d / "huge_int.csv", index=False)
    (d / "moe_layers.json").write_text(
        json.dumps(_hf_config("qwen3-235b-a22b", num_hidden_layers=10**9))
    )
    (d / "model_dir").mkdir()
    (d / "model_dir" / "config.json").write_text(json.dumps(_hf_config("llama-3-8b")))
    (d / "model_in_out.toml").write_text(
        SMALL + ARCH_FC + f'agent = {{ model = "{d / "model_dir"}" }}\n'
    )
    for name in ("side", "kv", "big"):
        good.to_csv(d / f"{name}.csv", index=False)
    (d / "side.metrics.csv").write_text("point,phase,sample,value\n0,before,vllm:x,1\n")
    (d / "kv.metrics.csv").write_text(
        "point,phase,sample,value\n0,before,"
        '"vllm:cache_config_info{block_size=""16"",num_gpu_blocks=""100000000000000000000000""}",'
        "1.0\n"
    )
    with (d / "big.metrics.csv").open("wb") as fh:  # sparse: 300 MB on no disk
        fh.truncate(300 * 10**6)
    (d / "grid_self.toml").write_text((d / "grid_small.toml").read_text())
    _steps_csv(d / "steps_sigma.csv", tool=[1e-300, 1e6])
    _steps_csv(d / "steps_mix.csv", completion=[100] * 20 + [1000] * 13)
    (d / "grid_ctrl.toml").write_text('word_prefix = "w\\u0001"\n')
    (d / "sweep_dup.toml").write_text(
        f'base = "{d / "small.toml"}"\n[grid]\n"workload.agents" = [1, 2, 1]\n'
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    _write_fixtures(d)
    return d


# --- the command-line cases: (id, argv, words the one line must hold) ----------------------

CASES: list[tuple[str, list[str], list[str]]] = [
    # files that are not UTF-8, one per kind of file
    ("utf8-scenario", ["run", "{d}/notutf8.toml"], ["notutf8.toml", "not UTF-8"]),
    ("utf8-sweep", ["sweep", "{d}/notutf8.toml", "--out", "{d}/o/s"], ["not UTF-8"]),
    ("utf8-grid", [*PROFILE, "--grid", "{d}/notutf8.toml", "--out", "{d}/o/p.csv"], ["UTF-8"]),
    ("utf8-profile", [*PS, "--batch", "4", "--profile", "{d}/notutf8.json"], ["not UTF-8"]),
    ("utf8-fitted", ["run", "{d}/fitted_notutf8.toml"], ["notutf8.json", "not UTF-8"]),
    (
        "utf8-model",
        [
            "predict-static",
            "--model",
            "{d}/notutf8.json",
            "--batch",
            "1",
            "--input",
            "1",
            "--output",
            "1",
        ],
        ["not UTF-8"],
    ),  # fmt: skip
    (
        "utf8-overhead-from",
        [
            "calibrate",
            "fit",
            "--kernels",
            "{d}",
            "--out",
            "{d}/o/k.json",
            "--overhead-from",
            "{d}/notutf8.json",
        ],
        ["not UTF-8"],
    ),  # fmt: skip
    # nesting deep enough to exhaust Python's stack
    ("deep-profile", [*PS, "--batch", "4", "--profile", "{d}/deep.json"], ["nested"]),
    ("deep-fitted", ["run", "{d}/fitted_deep.toml"], ["deep.json", "nested"]),
    (
        "deep-model",
        [
            "predict-static",
            "--model",
            "{d}/deep.json",
            "--batch",
            "1",
            "--input",
            "1",
            "--output",
            "1",
        ],
        ["nested"],
    ),  # fmt: skip
    ("deep-toml", ["run", "{d}/deep.toml"], ["deep.toml"]),
    (
        "deep-set",
        ["run", "{d}/small.toml", "--set", "description=" + "[" * 5000 + "]" * 5000],
        ["--set description", "nested"],
    ),  # fmt: skip
    (
        "deep-extra-body",
        [
            *PROFILE,
            "--grid",
            "{d}/grid_small.toml",
            "--out",
            "{d}/o/x.csv",
            "--extra-body",
            '{"a":' * 5000 + "1" + "}" * 5000,
        ],
        ["--extra-body", "nested"],
    ),  # fmt: skip
    # garbage fitted-workload files
    ("fitted-garbage", ["run", "{d}/fitted_garbage.toml"], ["garbage.json", "not valid JSON"]),
    ("fitted-not-object", ["run", "{d}/fitted_list.toml"], ["list.json", "JSON object"]),
    ("fitted-nan", ["run", "{d}/fitted_nan.toml"], ["fitted_nan.json", "variables.steps.mu"]),
    ("fitted-gamma", ["run", "{d}/fitted_gamma.toml"], ["fitted_gamma.json", "steps.dist"]),
    ("fitted-schema", ["run", "{d}/fitted_schema.toml"], ["fitted_schema.json", "schema"]),
    # an output that cannot be written: found before anything runs (the scenario here
    # would fail on its garbage workload file if it ran first)
    ("out-run", ["run", "{d}/fitted_garbage.toml", "--out", "{d}/a_file.txt"], ["--out"]),
    ("out-sweep", ["sweep", "{d}/sweep_ok.toml", "--out", "{d}/a_file.txt"], ["--out"]),
    ("out-engine-sim", ["engine-sim", "--out", "{d}/a_file.txt"], ["--out"]),
    ("out-figures", ["figures", "--quick", "--out", "{d}/a_file.txt"], ["--out"]),
    ("out-report", ["calibrate", "report", "--figures", "{d}/a_file.txt"], ["--figures"]),
    (
        "out-bench-serve",
        ["bench-serve", "--model", "llama-3-8b", "--out", "{d}/a_file.txt"],
        ["--out"],
    ),  # fmt: skip
    (
        "out-fit",
        [*FIT[:-2], "--out", "{d}", "--measurements", "{d}/good.csv"],
        ["is a directory"],
    ),  # fmt: skip
    (
        "out-replay",
        ["replay", "{d}/small.toml", "--endpoint", DEAD, "--model", "m", "--out", "{d}/a_file.txt"],
        ["--out"],
    ),  # fmt: skip
    (
        "out-workload-fit",
        ["workload", "fit", "--steps", "{d}/good.csv", "--out", "{d}"],
        ["--out", "is a directory"],
    ),  # fmt: skip
    ("out-proc", ["run", "{d}/small.toml", "--out", "/proc/comem-cannot-write"], ["--out"]),
    (
        "huge-int-config",
        [*PS[:1], "--model", "{d}/huge_int_config.json", *PS[3:], "--batch", "1"],
        ["huge_int_config.json", "401 digits"],
    ),
    (
        "huge-int-profile",
        [*PS, "--batch", "1", "--profile", "{d}/huge_int_profile.json"],
        ["huge_int_profile.json", "401 digits"],
    ),
    (
        "huge-int-csv",
        [*FIT, "--measurements", "{d}/huge_int.csv"],
        ["huge_int.csv", "prompt_tokens"],
    ),
    (
        "fit-measured-gpu",
        [*FIT, "--measurements", "{d}/good.csv", "--gpu", "nosuch"],
        ["--gpu", "for a fit from --kernels"],
    ),
    # an error is the only line: no note of the work ahead before it
    (
        "plan-note-then-gpu",
        ["plan", "--gpu", "nosuch", "--agents", "4", "--context-tokens", "2000"],
        ["unknown gpu 'nosuch'"],
    ),
    # an fp8 kernel choice for weights that run no fp8 GEMM was dropped without a word
    (
        "fp8-gemm-bf16-bench",
        ["bench-serve", "--model", "llama-3-8b", "--fp8-gemm", "block"],
        ["fp8_gemm = 'block'", "bf16"],
    ),
    (
        "fp8-gemm-bf16-static",
        [*PS, "--batch", "1", "--fp8-gemm", "tensor"],
        ["--fp8-gemm tensor", "bf16"],
    ),
    # an existing file of the user's is never replaced by a fit (a_file.txt stays as it is)
    (
        "out-user-file-fit",
        [*FIT[:-2], "--out", "{d}/a_file.txt", "--measurements", "{d}/good.csv"],
        ["a_file.txt", "not a comem measured profile", "not overwritten"],
    ),  # fmt: skip
    (
        "out-user-file-fit-serving",
        ["calibrate", "fit-serving", "--csv", "{d}/good.csv", "--out", "{d}/a_file.txt"],
        ["a_file.txt", "not a comem kernel-fitted profile"],
    ),  # fmt: skip
    (
        "out-user-file-workload-fit",
        ["workload", "fit", "--steps", "{d}/good.csv", "--out", "{d}/a_file.txt"],
        ["a_file.txt", "not a fitted workload"],
    ),  # fmt: skip
    (
        "out-user-file-effectiveness",
        ["fit-effectiveness", "--draws", "1", "--out", "{d}/a_file.txt"],
        ["a_file.txt", "not an effectiveness fit"],
    ),  # fmt: skip
    # a mean task latency of 0 used to divide by zero: iterations that cost nothing
    ("zero-cost-profile", ["run", "{d}/zero_cost.toml"], ["mp_zero.json", "no time"]),
    # measurement CSVs with degenerate columns
    ("csv-completion-1", [*FIT, "--measurements", "{d}/completion_1.csv"], ["inter-token"]),
    ("csv-itl-nan", [*FIT, "--measurements", "{d}/itl_nan.csv"], ["inter-token"]),
    ("csv-e2e-inf", [*FIT, "--measurements", "{d}/e2e_inf.csv"], ["e2e_inf.csv:2", "e2e_s"]),
    # measured profiles with NaN, negative, infinite or absurd coefficients
    *[
        (
            f"profile-{name}",
            [
                "engine-sim",
                "--set",
                f"engine.profile={{d}}/mp_{name}.json",
                "--set",
                "load.clients=2",
                "--set",
                "load.requests=2",
            ],
            [field],
        )
        for name, field in (
            ("c0_nan", "c0"),
            ("c0_negative", "c0"),
            ("c0_inf", "c0"),
            ("c1_huge", "c1"),
            ("overhead_inf", "request_overhead_s"),
        )
    ],  # fmt: skip
    (
        "kernel-profile-overhead-inf",
        [*PS, "--batch", "4", "--profile", "{d}/kp_overhead_inf.json"],
        ["per_iteration_s"],
    ),  # fmt: skip
    # sweep 'set = 5', a scheduler that is no address, a negative validation seed
    ("sweep-set-5", ["sweep", "{d}/sweep_set5.toml", "--out", "{d}/o/s5"], ["'set'"]),
    (
        "scheduler-not-a-url",
        ["sweep", "{d}/sweep_ok.toml", "--scheduler", "not a url", "--out", "{d}/o/sch"],
        ["--scheduler"],
    ),  # fmt: skip
    ("validate-seed", ["validate", "--seed", "-1"], ["--seed"]),
    # work without bound: refused before it starts, naming the field and the way past
    (
        "budget-steps",
        ["run", "{d}/small.toml", "--set", "workload.steps=1000000000"],
        ["workload.steps", "--allow-large"],
    ),  # fmt: skip
    (
        "budget-agents",
        ["run", "{d}/small.toml", "--set", "workload.agents=9223372036854775807"],
        ["workload.agents", "--allow-large"],
    ),  # fmt: skip
    (
        "budget-sweep-inf",
        ["sweep", "{d}/sweep_stop_inf.toml", "--out", "{d}/o/si"],
        ["grid.workload.agents", "finite"],
    ),  # fmt: skip
    (
        "budget-sweep-million",
        ["sweep", "{d}/sweep_million.toml", "--out", "{d}/o/sm"],
        ["grid.workload.agents", "sweep points", "--allow-large"],
    ),  # fmt: skip
    (
        "budget-grid",
        [*PROFILE, "--grid", "{d}/grid_huge.toml", "--out", "{d}/o/g.csv"],
        ["input_tokens", "--allow-large"],
    ),  # fmt: skip
    ("budget-static-batch", [*PS, "--batch", "1000000000"], ["batch", "--allow-large"]),
    (
        "budget-csv-prompt-1e12",
        [*FIT, "--measurements", "{d}/prompt_1e12.csv"],
        ["prompt_tokens"],
    ),  # fmt: skip
    (
        "budget-csv-prompt-5e8",
        [*FIT, "--measurements", "{d}/prompt_5e8.csv"],
        ["prompt_tokens", "--allow-large"],
    ),  # fmt: skip
    (
        "budget-bench-prompts",
        ["bench-serve", "--model", "llama-3-8b", "--num-prompts", str(10**12)],
        ["--num-prompts", "--allow-large"],
    ),  # fmt: skip
    (
        "budget-bench-input",
        ["bench-serve", "--model", "llama-3-8b", "--random-input-len", str(10**12)],
        ["--random-input-len"],
    ),  # fmt: skip
    (
        "budget-engine-sim",
        ["engine-sim", "--set", "load.clients=1000000000"],
        ["load.clients", "--allow-large"],
    ),  # fmt: skip
    (
        "budget-iteration-stepping",
        [
            "run",
            "{d}/small.toml",
            "--set",
            "engine.stepping=iteration",
            "--set",
            "workload.action_tokens=100000000",
            "--set",
            "workload.steps=50",
        ],
        ["iteration", "--allow-large"],
    ),  # fmt: skip
    (
        "budget-replay",
        [
            "replay",
            "{d}/small.toml",
            "--endpoint",
            DEAD,
            "--model",
            "m",
            "--set",
            "workload.agents=100000",
        ],
        ["workload.agents"],
    ),  # fmt: skip
    # bad values that used to be accepted without a word
    (
        "inf-tool-s",
        ["run", "{d}/small.toml", "--set", "workload.tool_s=Infinity"],
        ["workload.tool_s", "finite"],
    ),  # fmt: skip
    (
        "nan-arrival-rate",
        ["run", "{d}/small.toml", "--set", "workload.arrival_rate_per_s=NaN"],
        ["arrival_rate_per_s"],
    ),  # fmt: skip
    ("inf-think-s", ["engine-sim", "--set", "load.think_s=Infinity"], ["load.think_s"]),
    (
        "profile-other-gpu",
        [*PS, "--batch", "4", "--profile", str(H200_FP8_PROFILE)],
        ["h200_sxm/fp8", "h100_sxm/bf16"],
    ),  # fmt: skip
    ("profile-gpu-tpu", [*PS, "--batch", "4", "--profile", "{d}/kp_tpu.json"], ["tpu_v5"]),
    ("profile-dtype-int4", [*PS, "--batch", "4", "--profile", "{d}/kp_int4.json"], ["int4"]),
    ("empty-scenario", ["run", "{d}/empty.toml"], ["empty.toml", "empty"]),
    ("dev-zero", ["run", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    ("directory", ["run", "{d}"], ["is a directory"]),
    # messages
    ("endpoint-ftp", ["profile", "--endpoint", "ftp://x", "--model", "m"], ["--endpoint"]),
    ("endpoint-https", ["profile", "--endpoint", "https://x", "--model", "m"], ["https"]),
    ("endpoint-spaces", ["profile", "--endpoint", "not a url", "--model", "m"], ["not a URL"]),
    (
        "summary-tokens",
        ["run", "{d}/small.toml", "--set", "workload.summary_tokens=9000000000000"],
        ["workload.summary_tokens"],
    ),  # fmt: skip
    ("engine-label", ["engine-sim", "--set", "engine.kv_capacity_tokens=1"], ["KV cache"]),
    (
        "tp3",
        ["run", "{d}/tp3.toml"],
        ["tp3.toml", "architectures.0.agent", "'FC'", "llama-3-8b", "tp=3"],
    ),  # fmt: skip
    (
        "did-you-mean",
        ["run", "{d}/small.toml", "--set", "workload.agentz=3"],
        ["workload.agentz", "did you mean 'agents'"],
    ),
    # found by trying to break every command (see the report of issue 15)
    (
        "bool-for-number",
        ["run", "{d}/small.toml", "--set", "workload.agents=true"],
        ["agents must be a number"],
    ),
    (
        "trace-csv-text",
        ["run", "{d}/trace_steps_text.toml"],
        ["steps_text.csv:2", "completion_tokens"],
    ),
    ("trace-csv-inf", ["run", "{d}/trace_steps_inf.toml"], ["steps_inf.csv:2", "tool_time_s"]),
    (
        "workload-fit-csv",
        ["workload", "fit", "--steps", "{d}/steps_text.csv", "--out", "{d}/o/w.json"],
        ["completion_tokens"],
    ),
    (
        "workload-fit-source",
        [
            "workload",
            "fit",
            "--steps",
            "{d}/steps_ok.csv",
            "--source",
            "nope",
            "--out",
            "{d}/o/w.json",
        ],
        ["unknown source"],
    ),
    (
        "e2e-csv-text",
        ["calibrate", "report", "--no-figures", "--e2e", "{d}/e2e_text.csv"],
        ["e2e_text.csv:2", "Latency"],
    ),
    ("device-json-inf", [*PS, "--batch", "4", "--gpu", "{d}/device_inf.json"], ["memory_gib"]),
    (
        "kernel-device-json",
        [
            "calibrate",
            "fit",
            "--kernels",
            "{d}/kernels",
            "--gpu",
            "h100_sxm",
            "--out",
            "{d}/o/k.json",
        ],
        ["kernel"],
    ),
    (
        "replay-timeout-huge",
        ["replay", "{d}/small.toml", "--endpoint", DEAD, "--model", "m", "--timeout", "1e308"],
        ["--timeout"],
    ),
    (
        "replay-keeps-measurements",
        ["replay", "{d}/small.toml", "--endpoint", DEAD, "--model", "m", "--out", "{d}/replayed"],
        ["live_steps.csv", "--force"],
    ),
    ("nul-in-path", ["run", "{d}/nul_profile.toml"], ["agent.profile", "control characters"]),
    (
        "digits-set",
        ["run", "{d}/small.toml", "--set", "workload.agents=" + "9" * 5000],
        ["--set workload.agents"],
    ),
    ("digits-toml", ["run", "{d}/bigint.toml"], ["bigint.toml", "number"]),
    (
        "string-for-number",
        ["run", "{d}/small.toml", "--set", 'workload.agents="2"'],
        ["workload.agents", "without quotes"],
    ),
    (
        "note-control-character",
        ["workload", "fit", "--note", "a\x01b", "--out", "{d}/o/w.json"],
        ["--note", "control characters"],
    ),
    ("digits-json", [*PS, "--batch", "4", "--profile", "{d}/bigint.json"], ["bigint.json"]),
    ("fifo", ["run", "{d}/fifo.toml"], ["fifo.toml", "not a regular file"]),
    (
        "plan-steps",
        ["plan", "--agent-model", "glm-4.7", "--steps", "1000000000", "--out", "{d}/o/plan"],
        ["plan", "workload.steps", "--allow-large"],
    ),
    (
        "plan-gpu",
        ["plan", "--agent-model", "glm-4.7", "--gpu", "tpu", "--out", "{d}/o/plan"],
        ["unknown gpu 'tpu'"],
    ),
    ("paper-metric", ["paper", "--sensitivity", "--metric", "nope"], ["--metric"]),
    (
        "kernel-lattice-axes",
        [*PS, "--batch", "4", "--profile", "{d}/kp_lattice_axes.json"],
        ["gemm", "axes"],
    ),
    (
        "kernel-param-text",
        [*PS, "--batch", "4", "--profile", "{d}/kp_param_text.json"],
        ["gemm", "parameter p"],
    ),
    (
        "kernel-hw-missing",
        [*PS, "--batch", "4", "--profile", "{d}/kp_hw_missing.json"],
        ["gemm", "hardware constant"],
    ),
    ("sweep-date", ["sweep", "{d}/sweep_date.toml", "--out", "{d}/o/sd"], ["grid.workload.agents"]),
    (
        "set-list-not-in-file",
        ["run", "{d}/small.toml", "--set", "architectures.0.k=2"],
        ["'architectures' is not in the file"],
    ),
    (
        "sources-empty",
        ["run", "{d}/small.toml", "--set", 'workload={"kind": "trace", "sources": []}'],
        ["workload.sources"],
    ),
    # found by a hostile-user sweep of every command and flag (fuzz-fixes)
    (
        "serving-csv-inf",
        ["calibrate", "fit-serving", "--csv", "{d}/serving_tp_inf.csv"],
        ["serving_tp_inf.csv:2", "'tp'"],
    ),
    (
        "assume-not-a-number",
        [
            "calibrate",
            "fit-serving",
            "--csv",
            "{d}/serving_ok.csv",
            "--assume",
            "max_num_batched_tokens=abc",
        ],
        ["--assume", "valid integer"],
    ),  # fmt: skip
    ("csv-binary", [*FIT, "--measurements", "{d}/binary.csv"], ["binary.csv", "not UTF-8"]),
    ("csv-ttft-after-e2e", [*FIT, "--measurements", "{d}/ttft_late.csv"], ["ttft_s", "e2e_s"]),
    ("name-newline", [*PS, "--batch", "1", "--model", "a\nb"], ["--model", "a\\nb"]),
    (
        "out-is-input",
        [*FIT[:-2], "--measurements", "{d}/good.csv", "--out", "{d}/good.csv"],
        ["is the --measurements file"],
    ),
    ("paper-workers", ["paper", "--workers", "100000"], ["--workers", "--allow-large"]),
    (
        "plan-spec-not-a-table",
        ["plan", "--spec", "{d}/plan_int.toml", "--out", "{d}/o/plan"],
        ["plan_int.toml", "[plan]"],
    ),
    (
        "plan-offload-inf",
        ["plan", "--spec", "{d}/plan_offload_inf.toml", "--out", "{d}/o/plan"],
        ["offload_gib", "finite"],
    ),
    (
        "data-parallel-million",
        [
            "run",
            "{d}/small.toml",
            "--set",
            'architectures=[{"name": "A", "kind": "fc", "agent": {"data_parallel_size": 1000000}}]',
        ],
        ["data_parallel_size"],
    ),  # fmt: skip
    (
        "microbench-keeps-tables",
        ["calibrate", "microbench", "--device", "cpu", "--quick", "--out", "{d}/tables"],
        ["gemm_perf.parquet", "--force"],
    ),
    (
        "warmup-all-prompts",
        ["bench-serve", "--model", "llama-3-8b", "--num-prompts", "8", "--warmup-requests", "8"],
        ["warmup_requests"],
    ),
    ("empty-out", ["run", "{d}/small.toml", "--out", ""], ["--out", "empty"]),
    (
        "token-flag-huge",
        [*FIT, "--measurements", "{d}/good.csv", "--kv-capacity-tokens", str(10**18)],
        ["--kv-capacity-tokens"],
    ),
    ("empty-name", ["run", "{d}/small.toml", "--set", 'name=""'], ["name", "at least 1"]),
    (
        "report-gpu-not-the-profiles",
        [
            "calibrate",
            "report",
            "--no-figures",
            "--gpu",
            "h200_sxm",
            "--profile",
            str(KERNEL_PROFILE),
        ],
        ["--gpu h200_sxm", "is for h100_sxm"],
    ),  # fmt: skip
    (
        "report-gpu-empty",
        ["calibrate", "report", "--no-figures", "--gpu", ""],
        ["no embedded profile"],
    ),
    # issue 27: tracebacks
    (
        "plan-workload-not-a-table",
        [
            "plan",
            "--agent-model",
            "llama-3-8b",
            "--workload",
            "{d}/plan_wl_not_table.toml",
            "--out",
            "{d}/o/plan",
        ],
        ["plan_wl_not_table.toml", "not a table"],
    ),  # fmt: skip
    # a hang: a MoE config walked layer by layer
    (
        "moe-layers-huge",
        [*PS, "--batch", "1", "--model", "{d}/moe_layers.json"],
        ["moe_layers.json", "num_hidden_layers", "<= 4096"],
    ),  # fmt: skip
    # user files lost: every output checked against every input, sidecars and grids too
    (
        "out-holds-the-model",
        ["run", "{d}/model_in_out.toml", "--out", "{d}/model_dir"],
        ["--out", "config.json", "reads"],
    ),
    (
        "engine-sim-out-holds-the-model",
        ["engine-sim", "--set", "engine.model={d}/model_dir", "--out", "{d}/model_dir"],
        ["--out", "config.json", "reads"],
    ),
    (
        "fit-out-is-the-sidecar",
        [*FIT[:-2], "--measurements", "{d}/side.csv", "--out", "{d}/side.metrics.csv"],
        ["side.metrics.csv", "sidecar", "reads"],
    ),
    (
        "profile-out-is-the-grid",
        [*PROFILE, "--grid", "{d}/grid_self.toml", "--out", "{d}/grid_self.toml", "--force"],
        ["grid_self.toml", "--grid", "reads"],
    ),
    # files comem writes and would then refuse to read: refused before they are written
    (
        "fit-kv-from-sidecar-absurd",
        [*FIT[:-2], "--measurements", "{d}/kv.csv", "--out", "{d}/o/kv.json"],
        ["kv.metrics.csv", "cache_config_info", "--kv-capacity-tokens"],
    ),
    (
        "workload-fit-sigma-out-of-bounds",
        [
            "workload",
            "fit",
            "--steps",
            "{d}/steps_sigma.csv",
            "--source",
            "s1",
            "--out",
            "{d}/o/sigma.json",
        ],
        ["nothing written", "tool_s"],
    ),  # fmt: skip
    (
        "workload-fit-mixture-collapses",
        [
            "workload",
            "fit",
            "--steps",
            "{d}/steps_mix.csv",
            "--source",
            "s1",
            "--mixture",
            "completion",
            "--out",
            "{d}/o/mix.json",
        ],
        ["completion", "collapsed"],
    ),  # fmt: skip
    # input size limits on every file read
    (
        "sidecar-too-large",
        [*FIT[:-2], "--measurements", "{d}/big.csv", "--out", "{d}/o/big.json"],
        ["big.metrics.csv", "too large"],
    ),
    # silently wrong values, now refused
    (
        "engine-sim-ep-with-dp",
        [
            "engine-sim",
            "--set",
            "engine.model=qwen3-235b-a22b",
            "--set",
            "engine.gpu=h200_sxm",
            "--set",
            "engine.tp=8",
            "--set",
            "engine.data_parallel_size=2",
            "--set",
            "engine.enable_expert_parallel=true",
        ],
        # DP attention + EP is priced now (issue 22), within one node's 8 ranks
        ["expert-parallel ranks", "data_parallel_size 2"],
    ),  # fmt: skip
    (
        "result-dir-empty",
        [
            "bench-serve",
            "--model",
            "llama-3-8b",
            "--num-prompts",
            "2",
            "--save-result",
            "--result-dir",
            "",
        ],
        ["--result-dir", "empty"],
    ),  # fmt: skip
    (
        "result-filename-newline",
        [
            "bench-serve",
            "--model",
            "llama-3-8b",
            "--num-prompts",
            "2",
            "--save-result",
            "--result-filename",
            "a\nb.json",
        ],
        ["--result-filename", "printable"],
    ),  # fmt: skip
    (
        "server-description-control",
        [
            *FIT[:-2],
            "--measurements",
            "{d}/good.csv",
            "--out",
            "{d}/o/s.json",
            "--server",
            "vllm\x1b[31m",
        ],
        ["--server", "printable"],
    ),  # fmt: skip
    (
        "grid-control-character",
        [*PROFILE, "--grid", "{d}/grid_ctrl.toml", "--out", "{d}/o/c.csv"],
        ["grid_ctrl.toml", "word_prefix"],
    ),  # fmt: skip
    (
        "endpoint-port-0",
        ["profile", "--endpoint", "http://127.0.0.1:0", "--model", "m"],
        ["--endpoint", "port 0"],
    ),  # fmt: skip
    (
        "sweep-duplicate-point",
        ["sweep", "{d}/sweep_dup.toml", "--out", "{d}/o/dup"],
        ["point 2", "same scenario as point 0", "once"],
    ),
]


@pytest.fixture(scope="module")
def outcomes(files: Path) -> dict[str, dict[str, Any]]:
    """Run every case in one child process; their outcomes by id."""
    batch = [
        {"id": cid, "argv": [a.replace("{d}", str(files)) for a in argv]} for cid, argv, _ in CASES
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("COMEM_SHARED", "COMEM_ALLOW_LARGE")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, __file__, "--batch"],
        input=json.dumps(batch),
        capture_output=True,
        text=True,
        cwd=files,
        env=env,
        timeout=CASE_TIMEOUT_S * 4 + 5 * len(batch),
    )
    assert proc.returncode == 0, f"the batch child died:\n{proc.stderr[-3000:]}"
    return {r["id"]: r for r in json.loads(proc.stdout)}


def assert_one_line(result: dict[str, Any], *needles: str) -> str:
    report = json.dumps(result, indent=1)[:4000]
    assert not result["traceback"], report
    assert result["rc"] == 2, report
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].strip(), report
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    assert "Traceback" not in result["stdout"] + result["stderr"]
    return lines[0]


@pytest.mark.parametrize(
    ("cid", "needles"), [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.slow
def test_bad_input_is_one_line_exit_2(outcomes: dict[str, dict[str, Any]], cid: str,
                                      needles: list[str]) -> None:  # fmt: skip
    line = assert_one_line(outcomes[cid], *needles)
    if cid == "endpoint-ftp":
        assert "https" not in line  # no "(https is not supported)" on every bad endpoint
    if cid == "engine-label":
        assert "engine 'engine'" not in line and "engine engine" not in line
    if cid.startswith("budget") or cid.startswith("out-"):
        # refused before any work: a second at most (the slowest cases load pandas)
        assert outcomes[cid]["seconds"] < 10, outcomes[cid]


def test_server_garbage_becomes_one_printable_line() -> None:
    from live.openai_stream import one_line

    assert one_line("BadStatusLine: \x00\xff garbage\r\n\r\n") == "BadStatusLine: \xff garbage"
    assert len(one_line("x" * 1000)) == 300


def test_no_case_leaves_a_directory_for_its_failed_output(files: Path) -> None:
    assert (files / "a_file.txt").read_text() == "not a directory\n"
    assert (files / "replayed" / "live_steps.csv").read_text() == "measured\n"
    assert (files / "tables" / "gemm_perf.parquet").read_text() == "measured\n"
    assert pd.read_csv(files / "good.csv").equals(_measurements(np.random.default_rng(0)))


# --- nothing the user had is lost --------------------------------------------------------


def _comem(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("COMEM_SHARED", "COMEM_ALLOW_LARGE")}
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "comem", *argv],
        cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_profile_never_overwrites_measurements(files: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.csv"
    sidecar = tmp_path / "precious.metrics.csv"
    precious.write_text("point,status\n0,ok\n")
    sidecar.write_text("point,phase,sample,value\n0,before,vllm:x,1\n")
    grid = str(files / "grid_small.toml")
    refused = _comem(*PROFILE, "--grid", grid, "--out", str(precious), cwd=tmp_path)
    line = assert_one_line(
        {"rc": refused.returncode, "stderr": refused.stderr, "stdout": refused.stdout,
         "traceback": ""}, "precious.csv", "--force")  # fmt: skip
    assert "already exists" in line
    assert precious.read_text() == "point,status\n0,ok\n"
    assert sidecar.read_text() == "point,phase,sample,value\n0,before,vllm:x,1\n"
    # the default --out, profile.csv in the current directory, is protected the same way
    (tmp_path / "profile.csv").write_text("mine\n")
    default = _comem(*PROFILE, "--grid", grid, cwd=tmp_path)
    assert default.returncode == 2 and "profile.csv" in default.stderr
    assert (tmp_path / "profile.csv").read_text() == "mine\n"
    # --force replaces it: a live command's failures are rows with their status, exit 1
    forced = _comem(*PROFILE, "--grid", grid, "--out", str(precious), "--force", cwd=tmp_path)
    assert forced.returncode == 1, forced.stderr
    assert "Traceback" not in forced.stderr
    rows = pd.read_csv(precious)
    assert list(rows["status"]) == ["refused"] and not sidecar.exists()


@pytest.mark.slow
def test_sweep_with_a_failing_point_records_it_and_goes_on(files: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = _comem("sweep", str(files / "sweep_one_fails.toml"), "--workers", "1", "--out",
                  str(out), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # besides the progress lines (stderr is no terminal here), one line on the failure
    lines = [ln for ln in proc.stderr.strip().splitlines() if "/3 points, " not in ln]
    assert len(lines) == 1 and "1 of 3 points failed" in lines[0] and "garbage.json" in lines[0]
    table = pd.read_parquet(out / "results.parquet")
    assert list(table["point"]) == [0, 1, 2]
    failed = table[table["error"] != ""]
    assert list(failed["point"]) == [1] and "not valid JSON" in failed["error"].iloc[0]
    ok = table[table["error"] == ""]
    assert (ok["tasks_finished"] == 1).all() and ok["mean_task_latency_s"].gt(0).all()
    assert (out / "points" / f"{failed['key'].iloc[0]}.failed.parquet").is_file()


def test_sweep_stop_nan_is_an_error_not_an_empty_success(files: Path, tmp_path: Path) -> None:
    out = tmp_path / "nan"
    proc = _comem("sweep", str(files / "sweep_stop_nan.toml"), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and "0 points" not in proc.stdout
    assert "finite" in proc.stderr and not (out / "results.parquet").exists()


def test_a_damaged_point_file_is_named(files: Path, tmp_path: Path) -> None:
    from calibration.errors import ComemInputError
    from sim.sweep import collect, load_sweep

    sweep = load_sweep(files / "sweep_ok.toml")
    damaged = tmp_path / "points" / f"{sweep.points[0].key}.parquet"
    damaged.parent.mkdir()
    damaged.write_bytes(b"PAR1 not really")
    with pytest.raises(ComemInputError, match="not a readable point file.*delete it"):
        collect(sweep, tmp_path)


@pytest.mark.slow
def test_allow_large_lifts_a_budget(files: Path, tmp_path: Path) -> None:
    over = 4 * (os.cpu_count() or 1) + 1  # the worker budget: 4 per CPU
    argv = ["sweep", str(files / "sweep_ok.toml"), "--workers", str(over), "--out"]
    refused = _comem(*argv, str(tmp_path / "a"), cwd=tmp_path)
    assert refused.returncode == 2 and "--allow-large" in refused.stderr
    allowed = _comem(*argv, str(tmp_path / "b"), "--allow-large", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr  # one point: one worker is started
    assert (tmp_path / "b" / "results.parquet").is_file()


# --- in-process checks of the smaller causes -----------------------------------------------


def test_limits_env_and_context() -> None:
    from calibration import limits
    from calibration.errors import ComemInputError

    budget = limits.Budget(10, "things")
    with pytest.raises(ComemInputError, match="about 11 things, above the budget of 10"):
        limits.check(budget, 11, "x")
    with limits.allowing_large(True):
        limits.check(budget, 11, "x")
    os.environ[limits.ALLOW_LARGE_ENV] = "1"
    try:
        limits.check(budget, 11, "x")
    finally:
        del os.environ[limits.ALLOW_LARGE_ENV]


def test_live_loop_error_has_one_prefix(monkeypatch, capsys) -> None:
    import live.server
    from comem.cli import main

    monkeypatch.setattr(live.server, "serve_available", lambda: "needs the serve extra")
    assert main(["live-loop"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "comem: error: needs the serve extra"


def test_quick_figures_do_not_overwrite_the_committed_ones(monkeypatch, tmp_path, capsys) -> None:
    import comem.figures
    from comem.cli import QUICK_FIGURES_DIR, main

    seen = []
    monkeypatch.setattr(
        comem.figures,
        "make_figures",
        lambda out, quick, only=None, workers=1: seen.append(out) or [],
    )
    monkeypatch.chdir(tmp_path)
    assert main(["figures", "--quick"]) == 0
    assert main(["figures"]) == 0
    assert seen == [QUICK_FIGURES_DIR, "figures"] and QUICK_FIGURES_DIR != "figures"


def test_kv_over_time_draws_each_state_after_its_step(monkeypatch, tmp_path) -> None:
    """A step that ends with every request finished must not show an empty cache during
    its run: each row's state (at the step's end) is drawn from that end on."""
    import matplotlib.pyplot as plt

    import comem.figures as figs

    steps = pd.DataFrame(
        {
            "engine": ["FC/agent"] * 3,
            "start_s": [0.0, 1.0, 11.0],  # prefill 0-1 s, a decode run 1-11 s, then more
            "duration_s": [1.0, 10.0, 1.0],
            "kv_used_blocks": [40, 0, 44],  # the run ends with every request done
            "kv_total_blocks": [100, 100, 100],
        }
    )

    class Fake:
        results = [type("R", (), {"engine_steps": steps, "config": type("C", (), {"name": "FC"})})]

    drawn = {}

    def save(fig, out, name, caption):
        drawn["line"] = fig.axes[0].get_lines()[0]
        plt.close(fig)
        return []

    monkeypatch.setattr(figs, "_glm_run", lambda n, s: Fake())
    monkeypatch.setattr(figs, "_save", save)
    figs.fig_kv_over_time(tmp_path, quick=True)
    x, y = drawn["line"].get_xdata(), drawn["line"].get_ydata()
    # steps-post: y[i] holds on [x[i], x[i+1]); during the decode run (t = 5 s) 40% is used
    during = y[np.searchsorted(x, 5.0, side="right") - 1]
    assert during == pytest.approx(0.4)


def test_long_captions_are_wrapped_inside_the_figure(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import comem.figures as figs

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([0, 1], [0, 1])
    figs._save(fig, tmp_path, "cap", "a caption of many words " * 12)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the closed figure's canvas is gone
    text = fig.texts[-1]
    box = text.get_window_extent(renderer)
    width = fig.get_figwidth() * fig.dpi
    assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0
    assert text.get_text().count("\n") >= 1
    plt.close(fig)


def test_validate_says_which_rungs_are_stored(monkeypatch, capsys) -> None:
    import comem.validation as val
    from comem.cli import main

    stored = val.rung_calibration()
    assert stored and all(r.source == "stored" for r in stored)
    monkeypatch.setattr(val, "run_ladder", lambda quick, seed: stored)
    # 0 when every stored rung meets its threshold, 1 when one misses (said on its line)
    assert main(["validate", "--quick"]) == (0 if all(r.ok for r in stored) else 1)
    out = capsys.readouterr().out
    assert all("stored in the embedded profile" in ln for ln in out.splitlines()[: len(stored)])


def test_engine_sim_json_is_identical_across_runs(capsys) -> None:
    from comem.cli import main

    argv = ["engine-sim", "--set", "load.clients=2", "--set", "load.requests=2", "--json"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first and "wall_s" not in first


def test_scenario_reference_is_generated_complete_and_in_the_docs(capsys) -> None:
    from comem.cli import main
    from sim.reference import README_BEGIN, README_END, render_markdown, scenario_reference

    rows = scenario_reference()
    assert not [r.path for r in rows if not r.meaning]  # every field says what it is
    paths = {r.path for r in rows}
    for field in ("workload.agents", "workload.tool_s", "architectures[].k",
                  "architectures[].{agent,memory}.max_model_len", "engine.stepping"):  # fmt: skip
        assert field in paths
    tool = next(r for r in rows if r.path == "workload.tool_s")
    assert tool.unit == "s" and "<= 1e+06" in tool.type and tool.default == "0.0"
    page = (REPO / "docs" / "reference" / "scenario.md").read_text()
    section = page[page.index(README_BEGIN) + len(README_BEGIN) : page.index(README_END)]
    assert section.strip() == render_markdown(rows).strip(), (
        "docs/reference/scenario.md is stale: regenerate it with `make docs`"
    )
    sweeps = (REPO / "docs" / "how-to" / "sweep.md").read_text()
    assert "pickle" in sweeps and "trust" in sweeps  # --scheduler: Dask moves pickles
    with pytest.raises(SystemExit) as done:
        main(["run", "--help-fields"])
    assert done.value.code == 0 and "workload.agents" in capsys.readouterr().out


def test_every_seconds_field_is_finite_and_bounded() -> None:
    """No scenario, engine-sim or bench-serve field of seconds or rates takes inf/NaN."""
    from calibration.errors import ComemInputError
    from sim.bench_serve import BenchServeConfig
    from sim.config import validate
    from sim.runner import EngineRun
    from sim.scenario import Scenario

    for model, data in (
        (Scenario, {"workload": {"tool_s": math.inf}}),
        (Scenario, {"workload": {"arrival_rate_per_s": math.nan}}),
        (Scenario, {"workload": {"arrival_rate_per_s": 1e-300}}),
        (Scenario, {"architectures": [{"name": "A", "kind": "fc",
                                       "agent": {"request_overhead_s": math.inf}}]}),
        (EngineRun, {"load": {"think_s": math.inf}}),
        (BenchServeConfig, {"request_rate": 1e-300}),
        (BenchServeConfig, {"burstiness": math.inf}),
    ):  # fmt: skip
        with pytest.raises(ComemInputError):
            validate(model, data)


def test_fitted_variables_are_checked_whatever_their_shape(tmp_path: Path) -> None:
    """A variable that is no object, and a mixture with a NaN component, are one line."""
    from calibration.errors import ComemInputError
    from sim.workloads import fitted_file, load_fitted

    data = json.loads(fitted_file("swebench_fitted_glm46").read_text())
    for change, needle in (
        ({"steps": [1]}, "variables.steps"),
        ({"completion": {**data["variables"]["completion"], "mus": [math.nan, 1.0]}},
         "variables.completion.mus.0"),
    ):  # fmt: skip
        bad = tmp_path / f"{len(needle)}.json"
        bad.write_text(json.dumps({**data, "variables": {**data["variables"], **change}}))
        with pytest.raises(ComemInputError, match=needle.replace(".", r"\.")):
            load_fitted(str(bad))


# --- issue 27: stale results, lost files, silently wrong runs ------------------------------

PLAN = ["plan", "--agent-model", "llama-3-8b", "--gpu", "h100_sxm", "--gpus", "1",
        "--steps", "2", "--top", "1", "--json"]  # fmt: skip


@pytest.mark.slow
def test_plan_out_answers_only_its_own_question(files: Path, tmp_path: Path) -> None:
    """A point file is keyed by the whole scenario it simulated: a re-run with other
    --agents in the same --out simulates its own points (both sets coexist), a
    workload that leaves fields at their defaults plans, and a damaged point file is
    simulated again instead of read."""
    workload = tmp_path / "w.toml"
    workload.write_text("[workload]\nagents = 2\n")  # every other field at its default
    out = tmp_path / "plan"
    argv = [*PLAN, "--kinds", "fc", "--workload", str(workload), "--out", str(out)]
    first = _comem(*argv, "--agents", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    points = sorted((out / "points").glob("*.json"))
    assert len(points) == 2  # TP1 bf16 and fp8
    other = _comem(*argv, "--agents", "16", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert len(list((out / "points").glob("*.json"))) == 4  # its own two, beside the first

    def simulated(proc: subprocess.CompletedProcess) -> dict[str, float]:
        rows = json.loads(proc.stdout)["rows"]
        return {r["label"]: r["mean_step_s"] for r in rows if r["simulated"]}

    rows_2, rows_16 = simulated(first), simulated(other)
    assert len(rows_2) == 2 and rows_2.keys() == rows_16.keys()
    assert all(rows_16[k] > rows_2[k] for k in rows_2)  # 16 agents share the GPU: slower
    points[0].write_text('{"mean_step_s": 1')  # truncated
    points[1].write_text("{}")
    again = _comem(*argv, "--agents", "2", cwd=tmp_path)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert simulated(again) == rows_2
    assert all(json.loads(p.read_text())["point"] == p.stem for p in points)


@pytest.mark.slow
def test_plan_leaves_out_what_the_memory_model_cannot_serve(tmp_path: Path) -> None:
    """A memory model too big for the GPUs rules out SM and KSO, with a warning, not the
    FC and CP deployments that need no memory model."""
    proc = _comem(*PLAN, "--agents", "2", "--kinds", "fc", "cp", "sm",
                  "--memory-model", "qwen3-coder-480b", "--out", str(tmp_path / "p"),
                  cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    kinds = {r["candidate"]["kind"] for r in data["rows"]}
    assert kinds == {"fc", "cp"}
    assert len(data["warnings"]) == 1 and data["warnings"][0].startswith("SM: no deployment")
    assert "comem plan: warning: SM:" in proc.stderr and "qwen3-coder-480b" in proc.stderr


@pytest.mark.slow
def test_a_damaged_hugging_face_ref_falls_back_to_the_newest_snapshot(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    repo = hub / "models--SomeOrg--Tiny-Llama"
    (repo / "snapshots" / "aaa").mkdir(parents=True)
    (repo / "snapshots" / "aaa" / "config.json").write_text(json.dumps(_hf_config("llama-3-8b")))
    (repo / "refs").mkdir()
    for ref in (b"\xff\xfe\x00garbage", b"../../etc", b""):
        (repo / "refs" / "main").write_bytes(ref)
        proc = _comem(*PS, "--batch", "1", "--model", "SomeOrg/Tiny-Llama", cwd=tmp_path,
                      env={"HF_HUB_CACHE": str(hub)})  # fmt: skip
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert float(proc.stdout.split()[0]) > 0  # a latency, in seconds


def test_engine_sim_runs_the_data_parallel_replicas_it_is_given(capsys) -> None:
    from comem.cli import main

    runs = {}
    for dp in (1, 4):
        assert main(["engine-sim", "--set", f"engine.data_parallel_size={dp}", "--json"]) == 0
        runs[dp] = json.loads(capsys.readouterr().out)
    assert runs[4]["kv_total_blocks"] == 4 * runs[1]["kv_total_blocks"]
    assert runs[4]["requests_per_s"] > 2 * runs[1]["requests_per_s"]


def test_engines_that_refuse_work_are_reported_not_hidden() -> None:
    """An agent KV cache below one prompt ends tasks as kv_cache_too_small (not as a
    long context); a memory engine that cannot hold one summary prompt runs no summary:
    both are warnings, not a quiet 1.00x."""
    from sim.scenario import run_scenario, scenario_from

    text = (
        'name = "kv"\n[workload]\nagents = 2\nsteps = 4\nsystem_tokens = 500\n'
        "observation_tokens = 100\naction_tokens = 50\nsummary_tokens = 64\n"
        '[[architectures]]\nname = "FC"\nkind = "fc"\nagent = { kv_capacity_tokens = 4096 }\n'
        '[[architectures]]\nname = "KSO"\nkind = "kso"\nk = 2\n'
        "agent = { kv_capacity_tokens = 4096 }\nmemory = { kv_capacity_tokens = 512 }\n"
        '[[architectures]]\nname = "TINY"\nkind = "fc"\nagent = { kv_capacity_tokens = 256 }\n'
    )
    import tomllib

    result = run_scenario(scenario_from(tomllib.loads(text), [], "kv"))
    tiny = result.results[2].tasks
    assert set(tiny["status"]) == {"kv_cache_too_small"}
    warnings = result.summary()["warnings"]
    assert any(w.startswith("KSO: engine 'KSO/memory' refused 2 of 2") for w in warnings)
    assert any("TINY: 2 of 2 tasks ended early (kv_cache_too_small 2)" in w for w in warnings)
    assert not any(w.startswith("FC") for w in warnings)


def test_a_profile_comem_could_not_read_back_is_not_written(tmp_path: Path) -> None:
    from calibration.errors import ComemInputError
    from calibration.measured import MeasuredProfile

    prof = MeasuredProfile.load(MEASURED_PROFILE)
    prof.kv_capacity_tokens = 10**24
    out = tmp_path / "p.json"
    with pytest.raises(ComemInputError, match="kv_capacity_tokens"):
        prof.save(out)
    assert not out.exists()


def test_a_full_disk_names_the_output(monkeypatch, tmp_path: Path, capsys) -> None:
    import errno

    from comem.cli import main

    def full(*_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file name, as write()

    monkeypatch.setattr("sim.scenario.ScenarioResult.write", full)
    scenario = tmp_path / "s.toml"
    scenario.write_text(SMALL)
    rc = main(["run", str(scenario), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if " tasks, " not in ln]  # progress lines (no terminal) aside
    assert rc == 2 and len(err) == 1
    assert f"--out {tmp_path / 'o'}" in err[0] and "No space left" in err[0]


def test_a_sweep_point_is_keyed_by_the_files_it_reads(tmp_path: Path) -> None:
    """A point computed from a trace or fitted file since changed is simulated again
    (a new point file), with the same seed; a scenario that reads no file keeps its key."""
    from sim.sweep import load_sweep, point_key

    fitted = tmp_path / "fitted.json"
    fitted.write_text(FITTED.read_text())
    base = tmp_path / "base.toml"
    base.write_text(f'[workload]\nkind = "fitted"\nagents = 1\nmax_steps = 3\npath = "{fitted}"\n')
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'base = "{base}"\n[grid]\n"workload.agents" = [1, 2]\n')
    before = load_sweep(sweep).points
    data = json.loads(fitted.read_text())
    data["variables"]["steps"]["mu"] += 0.5
    fitted.write_text(json.dumps(data))
    after = load_sweep(sweep).points
    assert all(a.key != b.key for a, b in zip(after, before, strict=True))
    assert [a.scenario.seed for a in after] == [b.scenario.seed for b in before]
    plain = load_sweep(_small_sweep(tmp_path)).points[0]
    assert plain.key == point_key(plain.scenario, 0)  # no file read, seed 0: the old key


def test_a_sweep_seed_is_in_its_point_files_names(tmp_path: Path) -> None:
    """Another sweep seed into the same --out must simulate again, not read back the
    first seed's points (their file names were the settings' alone)."""
    from sim.sweep import load_sweep

    sweep = _small_sweep(tmp_path)
    first = load_sweep(sweep).points
    sweep.write_text("seed = 7\n" + sweep.read_text())
    again = load_sweep(sweep).points
    assert all(a.key != b.key for a, b in zip(again, first, strict=True))
    assert all(a.scenario.seed != b.scenario.seed for a, b in zip(again, first, strict=True))


def test_a_nested_set_table_changes_only_its_fields(tmp_path: Path) -> None:
    """[set.workload] tool_s = 0.2 (or workload.tool_s = 0.2) sets one field: it must not
    replace the base scenario's whole workload table with the defaults."""
    from sim.sweep import load_sweep

    sweep = _small_sweep(tmp_path)
    base = load_sweep(sweep).points[0].scenario.workload
    for form in ("[set.workload]\ntool_s = 0.25\n", "[set]\nworkload.tool_s = 0.25\n"):
        sweep.write_text(f'base = "{tmp_path / "small.toml"}"\n{form}'
                         '[grid]\n"workload.agents" = [1]\n')  # fmt: skip
        w = load_sweep(sweep).points[0].scenario.workload
        assert w.tool_s == 0.25 and base.tool_s != 0.25, form
        assert w.model_dump(exclude={"tool_s"}) == base.model_dump(exclude={"tool_s"}), form
    sweep.write_text(f'base = "{tmp_path / "small.toml"}"\n[set.workload]\n'
                     '[grid]\n"workload.agents" = [1]\n')  # fmt: skip
    empty = load_sweep(sweep).points[0].scenario.workload  # an empty table sets nothing
    assert empty.model_dump(exclude={"agents"}) == base.model_dump(exclude={"agents"})


def _small_sweep(d: Path) -> Path:
    (d / "small.toml").write_text(SMALL)
    sweep = d / "small_sweep.toml"
    sweep.write_text(f'base = "{d / "small.toml"}"\n[grid]\n"workload.agents" = [1]\n')
    return sweep


# -- round three, second pass: what an outside hostile pass found after the fixes ----------

from tests.cli_helpers import assert_user_error, run_comem  # noqa: E402

STATIC_ARGS = ("--batch", "1", "--input", "64", "--output", "8")


def _profile_with(tmp_path: Path, name: str, change: Any) -> Path:
    """The embedded H100 bf16 profile with ``change(data)`` applied, written as ``name``."""
    from calibration.profile import profile_path

    data = json.loads(profile_path("h100_sxm", "bf16").read_text())
    change(data)
    path = tmp_path / name
    path.write_text(json.dumps(data).replace('"@inf"', "1e400"))
    return path


def test_a_profile_error_band_that_overflows_is_one_line(tmp_path: Path) -> None:
    def huge_rows(d: dict[str, Any]) -> None:
        d["overhead"]["error_bands"]["tpot"]["rows"] = "@inf"

    path = _profile_with(tmp_path, "rows.json", huge_rows)
    proc = run_comem(
        "predict-static", "--model", "llama-3-8b", *STATIC_ARGS, "--profile", str(path)
    )
    assert_user_error(proc, "rows.json", "error band")

    def tiny_ratio(d: dict[str, Any]) -> None:
        d["overhead"]["error_bands"]["tpot"]["ratio_low"] = 5e-324
        d["overhead"]["error_bands"]["tpot"]["ratio_high"] = 5e-324

    path = _profile_with(tmp_path, "tiny.json", tiny_ratio)
    assert_user_error(
        run_comem("predict-static", "--model", "llama-3-8b", *STATIC_ARGS, "--profile", str(path)),
        "ratio_low",
    )


@pytest.mark.slow
def test_a_profile_that_prices_no_finite_iteration_is_refused(tmp_path: Path) -> None:
    """Op parameters each within their bounds can still describe no GPU (peak FLOP/s of
    1e-300): the latency model refuses it instead of simulating forever or printing inf."""

    def tiny_flops(d: dict[str, Any]) -> None:
        for op in d["ops"].values():
            if "hw" in op and "peak_flops" in op["hw"]:
                op["hw"]["peak_flops"] = 1e-300

    path = _profile_with(tmp_path, "slow.json", tiny_flops)
    for cmd in (
        ["predict-static", "--model", "llama-3-8b", *STATIC_ARGS, "--profile", str(path)],
        ["bench-serve", "--model", "llama-3-8b", "--num-prompts", "4", "--profile", str(path)],
    ):
        assert_user_error(run_comem(*cmd), "slow.json", "describe")


@pytest.mark.slow
def test_fit_outputs_never_replace_their_inputs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    runs = data / "runs.csv"
    runs.write_text("a,b\n1,2\n")
    proc = run_comem("fit-effectiveness", "--data", str(data), "--draws", "2", "--out", str(runs))
    assert_user_error(proc, "runs.csv")
    assert runs.read_text() == "a,b\n1,2\n"
    assert_user_error(run_comem("fit-effectiveness", "--draws", "1000000000"), "--draws")
    from calibration.profile import profile_path

    prof = tmp_path / "p.json"
    prof.write_text(profile_path("h100_sxm", "bf16").read_text())
    csv = tmp_path / "s.csv"
    csv.write_text(
        "model,gpu,dtype,tp,concurrency,isl,osl,ttft_ms,tpot_ms\n"
        "llama-3-8b,h100_sxm,bf16,1,2,64,8,50,10\n"
    )
    before = prof.read_text()
    proc = run_comem(
        "calibrate", "fit-serving", "--csv", str(csv), "--profile", str(prof), "--out", str(prof)
    )
    assert_user_error(proc, "--profile")
    assert prof.read_text() == before


@pytest.mark.slow
def test_families_and_plan_name_what_is_wrong(tmp_path: Path) -> None:
    assert_user_error(run_comem("families", "--gpus", "rtx", "--out", str(tmp_path)), "rtx")
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    proc = run_comem(
        "plan", "--agent-model", "llama-3-8b", "--gpu", "h100_sxm", "--gpus", "2",
        "--agents", "4", "--memory-model", str(bad), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert_user_error(proc, "config.json")


def test_run_out_is_complete_or_has_no_config(tmp_path: Path) -> None:
    """A result directory is whole (config.json written last, tables renamed into place):
    writing over an older result first removes its config.json."""
    from sim.scenario import ScenarioResult, load_scenario, run_scenario

    sc = load_scenario(
        REPO / "scenarios" / "paper_latency_glm47.toml", ["workload.agents=2", "workload.steps=2"]
    )
    res = run_scenario(sc)
    out = tmp_path / "r"
    res.write(out)
    assert (out / "config.json").is_file() and not list(out.glob(".*.tmp"))

    class Boom(RuntimeError):
        pass

    broken = ScenarioResult(sc, res.results)
    original = pd.DataFrame.to_parquet

    def fail(self: pd.DataFrame, path: Any, *a: Any, **k: Any) -> None:
        if "requests" in str(path):
            raise Boom
        original(self, path, *a, **k)

    import unittest.mock

    with unittest.mock.patch.object(pd.DataFrame, "to_parquet", fail), pytest.raises(Boom):
        broken.write(out)
    assert not (out / "config.json").exists()  # the half-written result is not a result


def test_plan_points_with_impossible_numbers_are_simulated_again(tmp_path: Path) -> None:
    from comem.plan.confirm import _read_point

    good = {"point": "k", "mean_step_s": 1.0, "p99_step_s": 2.0, "steps_per_s": 1.0,
            "tasks_ended_early": 0, "preemptions": 0, "tasks": 4,
            "summaries_made": 1.0, "summary_requests_refused": 0}  # fmt: skip
    f = tmp_path / "k.json"
    for bad in ({"mean_step_s": -1.0}, {"steps_per_s": math.inf}, {"tasks_ended_early": 999},
                {"summaries_made": 1.5}):  # fmt: skip
        f.write_text(json.dumps(good | bad).replace("Infinity", "1e400"))
        assert _read_point(f, "k") is None, bad
    f.write_text(json.dumps(good))
    assert _read_point(f, "k") == good


@pytest.mark.slow
def test_bench_serve_warns_when_requests_fail_and_predict_static_names_are_printable() -> None:
    proc = run_comem(
        "bench-serve", "--model", "llama-3-8b", "--max-model-len", "10", "--num-prompts", "4"
    )
    assert proc.returncode == 0 and "4 of 4 requests failed" in proc.stderr, proc.stderr
    assert_user_error(
        run_comem("predict-static", "--model", "llama-3-8b\n", *STATIC_ARGS), "--model"
    )


@pytest.mark.slow
def test_profile_async_flags_and_bands_are_typed(tmp_path: Path) -> None:
    """A profile's async_scheduling is true or false, an error band's numbers are numbers
    and its metric its key: anything else is one line, not a silently different model."""

    def text_flag(d: dict[str, Any]) -> None:
        d["overhead"]["async_scheduling"] = "false"

    def text_ratio(d: dict[str, Any]) -> None:
        d["overhead"]["error_bands"]["tpot"]["ratio_low"] = "0.5"

    def wrong_metric(d: dict[str, Any]) -> None:
        d["overhead"]["error_bands"]["tpot"]["metric"] = "ttft"

    for name, change, needle in (
        ("flag.json", text_flag, "async_scheduling"),
        ("ratio.json", text_ratio, "ratio_low"),
        ("metric.json", wrong_metric, "metric"),
    ):
        path = _profile_with(tmp_path, name, change)
        proc = run_comem(
            "predict-static", "--model", "llama-3-8b", *STATIC_ARGS, "--profile", str(path)
        )
        assert_user_error(proc, name, needle)


def test_client_issue_delay_needs_a_closed_loop() -> None:
    proc = run_comem(
        "bench-serve", "--model", "llama-3-8b", "--num-prompts", "4", "--request-rate", "2",
        "--client-issue-delay", "5",
    )  # fmt: skip
    assert_user_error(proc, "closed loop")


def test_a_fit_on_old_servers_says_they_were_synchronous() -> None:
    from calibration.serving import ServingRow, version_schedules_async

    assert (
        version_schedules_async("vllm-0.19.0") is True and version_schedules_async("V0.12") is False
    )
    rows = [ServingRow("llama-3-8b", "h100_sxm", "bf16", 1, 4, 64, 8, 1, 1, vllm_version="0.12.0")]
    from calibration.serving import ServingSetup

    assert not any(ServingSetup().schedules_async(r) for r in rows)


def test_repeated_conflicting_assumptions_are_refused() -> None:
    from calibration.errors import ComemInputError
    from calibration.serving import parse_assumptions

    with pytest.raises(ComemInputError, match="already given"):
        parse_assumptions(["async_scheduling=true", "async_scheduling=false"])
    same = parse_assumptions(["max_num_batched_tokens=4096", "max_num_batched_tokens=4096"])
    assert same["*"]["max_num_batched_tokens"] == 4096
