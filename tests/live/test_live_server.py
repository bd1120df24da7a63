"""The sim-vs-real loop on real servers: a tiny random-weight Llama served by two
``transformers serve`` processes on loopback (agent and memory model, one CPU core
each), measured by ``comem profile``, fitted by ``comem calibrate fit --measurements``,
driven by ``comem replay`` (FC and KSO), and predicted by the simulator.

Needs the ``serve`` extra (torch 2.13.0 CPU, transformers[serving]); skips with the
reason when it is absent. ``.ci/run`` installs it, so CI runs these.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from live.profiler import speed_probe
from live.server import ServerProcess, ServerSettings, serve_available, serving

REASON = serve_available()
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "live" / "tiny_cpu.toml"
#: The issue's aim is a simulated mean step latency within 15% of the live one. Quiet
#: runs of `comem live-loop` on 2 cores measured +3% to +5% (FC) and -1% to +3% (KSO).
#: Busy ones measured -11% to +10%, with the machine's speed moving by up to 47%
#: within a run. No model calibrated first can predict better than the machine holds
#: still, and a red CI from noise would block everything. So the tests allow a base
#: error plus the drift a speed probe measures around the measurement: the spread of
#: probes before the profile, between the profile and the replay, and after it. The
#: step base sits above what noise has produced; without the packed-attention term,
#: KSO is off by 28%, which fails it on a quiet machine.
STEP_BASE = 0.20
#: Profile fit, wave MAPE. Measured: e2e 6-15%, ITL 9-16%. Without the packed-attention
#: and admission terms it was e2e 19%, ITL 20%, TTFT 36%. These bounds catch only a fit
#: that does not describe the server at all; the README reports the measured numbers.
FIT_E2E_BASE, FIT_ITL_BASE = 0.25, 0.30


def comem(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comem", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from live.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    """Two live servers (agent, memory), each pinned to its own core when there are two."""
    settings = ServerSettings(str(tiny_model))
    with serving(settings, tmp_path_factory.mktemp("logs"), ("agent", "memory")) as pair:
        yield settings, pair


@pytest.fixture(scope="module")
def measured(servers, tmp_path_factory):
    """`comem profile` on the agent server, then `comem calibrate fit --measurements`."""
    settings, (agent, _) = servers
    out = tmp_path_factory.mktemp("profile")
    probe_before = speed_probe(agent.endpoint, settings.model_dir, seed=1)
    p = comem(
        "profile", "--endpoint", str(agent.endpoint), "--model", settings.model_dir,
        "--out", str(out / "profile.csv"), "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout)
    f = comem(
        "calibrate", "fit", "--measurements", str(out / "profile.csv"),
        "--out", str(out / "profile.json"),
        "--max-batch-tokens", str(settings.max_batch_tokens),
        "--kv-capacity-tokens", str(settings.num_blocks * settings.block_size),
        "--block-size", str(settings.block_size),
    )  # fmt: skip
    assert f.returncode == 0, f.stderr[-2000:]
    probe_mid = speed_probe(agent.endpoint, settings.model_dir, seed=2)
    return summary, out / "profile.csv", out / "profile.json", (probe_before, probe_mid)


def test_profile_live_server_rows(measured):
    summary, csv_path, _, _ = measured
    frame = pd.read_csv(csv_path)
    assert summary["statuses"] == {"ok": len(frame)} and len(frame) == 156
    # the tiny model never emits EOS: every request generated exactly what was asked
    assert (frame["completion_tokens"] == frame["output_tokens"]).all()
    # one token per word: prompts are the cached prefix plus the new tokens
    assert (frame["prompt_tokens"] == frame["input_tokens"] + frame["cached_tokens"]).all()
    assert (frame["ttft_s"] > 0).all() and (frame["mean_itl_s"] > 0).all()
    # real physics: more prompt costs more to prefill; a larger batch decodes slower
    fresh = frame[frame["cached_tokens"] == 0]
    med = fresh.groupby(["input_tokens", "concurrency"])["ttft_s"].median()
    assert med[(1024, 1)] > 2 * med[(16, 1)]
    # the prefix cache works: 16 new tokens after 768 cached cost far less than 784 fresh
    hit = frame[(frame["cached_tokens"] == 768) & (frame["input_tokens"] == 16)]
    assert hit.groupby("concurrency")["ttft_s"].median()[1] < med[(1024, 1)] / 2
    itl = frame.groupby("concurrency")["mean_itl_s"].median()
    assert itl[8] > itl[1]


def test_profile_fit_from_live_server(measured):
    _, _, profile, probes = measured
    drift = max(probes) / min(probes) - 1.0
    data = json.loads(profile.read_text())
    err = data["fit_error"]
    assert err["waves"] == 36 and err["waves_left_out"] == 0
    assert err["e2e_mape"] < FIT_E2E_BASE + drift, (drift, err)
    assert err["itl_mape"] < FIT_ITL_BASE + drift, (drift, err)
    assert data["surrogate"]["c0"] > 0 and data["request_overhead_s"] > 0
    assert len(data["provenance"]["measurements_sha256"]) == 64


def test_replay_fc_and_kso_against_simulation(servers, measured, tmp_path):
    """The issue's loop: the simulator, calibrated on the profile, predicts the live
    per-step and per-task latencies of FC and KSO."""
    settings, (agent, memory) = servers
    _, _, profile, probes = measured
    p = comem(
        "replay", str(SCENARIO), "--endpoint", str(agent.endpoint), "--model",
        settings.model_dir, "--memory-endpoint", str(memory.endpoint),
        "--profile", str(profile), "--out", str(tmp_path), "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    after = speed_probe(agent.endpoint, settings.model_dir, seed=3)
    drift = max(*probes, after) / min(*probes, after) - 1.0
    tolerance = STEP_BASE + drift
    out = json.loads(p.stdout)
    archs = out["architectures"]
    assert archs["FC"]["steps"] == archs["KSO"]["steps"] == 4 * 10
    assert archs["FC"]["steps_failed"] == archs["KSO"]["steps_failed"] == 0
    steps = pd.read_csv(tmp_path / "live_steps.csv")
    kso = steps[steps["architecture"] == "KSO"]
    # launched after steps 3, 6, 9; swapped in before steps 5 and 8 (step 11 never comes)
    assert kso["summary_launched"].sum() == 4 * 3 and kso["summary_swapped"].sum() == 4 * 2
    summ = pd.read_csv(tmp_path / "live_summaries.csv")
    assert len(summ) == 4 * 3 and (summ["server"] == "memory").all()
    assert (summ["status"] == "ok").all() and (summ["output_tokens"] == 48).all()
    # contexts: FC's prompt only grows; KSO's shrinks at every swap
    fc = steps[steps["architecture"] == "FC"].sort_values(["agent", "step"])
    assert (fc.groupby("agent")["prompt_tokens"].diff().dropna() > 0).all()
    assert (kso.groupby("agent")["prompt_tokens"].diff().dropna() < 0).any()
    rows = {r["architecture"]: r for r in out["comparison"]}
    for name in ("FC", "KSO"):
        r = rows[name]
        assert abs(r["step_error"]) < tolerance, (drift, r)
        assert abs(r["task_error"]) < tolerance, (drift, r)


def test_server_killed_mid_profile_keeps_rows(tiny_model, tmp_path):
    """A real SIGKILL of the server during `comem profile`: the run ends (no hang), every
    request measured before the kill is in the CSV, the rest are failure rows."""
    srv = ServerProcess(ServerSettings(str(tiny_model)), tmp_path / "victim.log").start()
    grid = tmp_path / "grid.toml"
    grid.write_text(
        "cached_tokens = [0]\ninput_tokens = [64]\noutput_tokens = [64]\n"
        "concurrency = [1, 2]\nrounds = 40\ntimeout_s = 20\n"
    )
    out = tmp_path / "p.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "comem", "profile", "--endpoint", str(srv.endpoint),
         "--model", str(tiny_model), "--grid", str(grid), "--out", str(out), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip

    def rows() -> int:
        return max(0, len(out.read_text().splitlines()) - 1) if out.exists() else 0

    deadline = time.monotonic() + 120
    while rows() < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    before = rows()
    assert before >= 10
    assert srv.proc is not None
    os.killpg(srv.proc.pid, signal.SIGKILL)
    timer = threading.Timer(120, proc.kill)
    timer.start()
    stdout, stderr = proc.communicate()
    timer.cancel()
    assert proc.returncode == 1, stderr[-2000:]  # some requests failed: exit 1, not a crash
    assert "Traceback" not in stderr
    frame = pd.read_csv(out)
    assert len(frame) == 40 * (1 + 2)  # every request is a row
    assert (frame["status"] == "ok").sum() >= before - 2
    assert set(frame["status"]) - {"ok"} <= {"refused", "error", "malformed", "timeout"}
    assert (frame["status"] != "ok").sum() > 0
    summary = json.loads(stdout)
    assert summary["requests"] == len(frame)
    srv.stop()
