"""The streaming client and the profiler against real (local, misbehaving) HTTP servers,
and the measured-profile fit against the engine it feeds. No torch needed.

Names contain "profile" so that ``pytest -k "profile or replay or server"`` selects them.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simpy

from calibration.errors import ComemInputError
from calibration.measured import (
    MeasuredLatency,
    MeasuredProfile,
    closed_batch_features,
    fit_measured_profile,
)
from calibration.surrogate import LinearSurrogate
from live.openai_stream import Endpoint, stream_completion
from live.profiler import PROFILE_COLUMNS, ProfileGrid, run_profile
from sim.config import EngineConfig
from sim.engine import Engine


def _event(text: str, finish: str | None = None) -> bytes:
    choice: dict[str, object] = {"index": 0, "text": text}
    if finish:
        choice["finish_reason"] = finish
    return f"data: {json.dumps({'choices': [choice]})}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    """Behaviour chosen by the path prefix: /ok, /http500, /badjson, /truncated, /slow,
    /nousage (never a usage block). Like vLLM, a usage block is streamed only when the
    request asks for it (``stream_options.include_usage``)."""

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.endswith("/metrics") and self.path.startswith("/dribble"):
            # a /metrics that never ends: one byte every 50 ms
            self.send_response(200)
            self.end_headers()
            _dribble(self.wfile, b"vllm:x 1\n")
            return
        self.send_response(404)
        self.end_headers()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = self.path.split("/")[1]
        if mode == "http500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        n = int(body["max_tokens"])
        if mode == "dribble":  # a server that answers one byte at a time, forever
            _dribble(self.wfile, _event(" w"))
            return
        if mode == "endless":  # one SSE line that never ends, sent fast
            self.wfile.write(b'data: {"choices": [{"text": "')
            _dribble(self.wfile, b"x" * 65536, pause=0.0)
            return
        if mode in ("negusage", "hugeusage"):
            count = -5 if mode == "negusage" else 10**12
            self.wfile.write(_event(" w0", "length"))
            usage = {"prompt_tokens": 3, "completion_tokens": count}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        if mode == "ctrlfinish":  # a finish_reason with a newline and an escape
            self.wfile.write(_event(" w0", "len\ngth\x1b[31m"))
            self.wfile.write(b"data: [DONE]\n\n")
            return
        if mode == "badchoice":
            self.wfile.write(b'data: {"choices": ["x"]}\n\n')
            return
        for i in range(n):
            if mode == "badjson" and i == 2:
                self.wfile.write(b"data: {not json\n\n")
                return
            if mode == "truncated" and i == 3:
                return  # connection closes mid-stream, no finish_reason
            if mode == "slow" and i == 1:
                time.sleep(3.0)
            if mode == "paced":  # 20 ms a token: a replay long enough to be killed
                time.sleep(0.02)
            self.wfile.write(_event(f" w{i}", "length" if i == n - 1 else None))
            self.wfile.flush()
            time.sleep(0.002)
        asked = (body.get("stream_options") or {}).get("include_usage") is True
        if asked and mode != "nousage":
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


def _dribble(wfile, data: bytes, pause: float = 0.05, limit_s: float = 30.0) -> None:
    """Send ``data`` over and over, a byte (or, with no pause, a block) at a time, until
    the client hangs up (or ``limit_s``: a test server must end too)."""
    end = time.monotonic() + limit_s
    try:
        while time.monotonic() < end:
            if pause:
                for b in data:
                    wfile.write(bytes([b]))
                    wfile.flush()
                    time.sleep(pause)
            else:
                wfile.write(data)
                wfile.flush()
    except OSError:  # the client shut the connection: what the deadline is for
        pass


@pytest.fixture(scope="module")
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    yield server.server_address[1]
    server.shutdown()


def test_profile_client_measures_a_good_stream(fake_server):
    r = stream_completion(Endpoint("127.0.0.1", fake_server, "/ok"), "m", "w1 w2 w3", 8)
    assert r.status == "ok", r.error
    assert len(r.token_s) == 8 and r.completion_tokens == 8 and r.prompt_tokens == 3
    assert 0 < r.ttft_s <= r.token_s[-1] <= r.e2e_s
    assert r.mean_itl_s > 0.001  # the server sleeps 2 ms between tokens
    assert r.text.split() == [f"w{i}" for i in range(8)]
    assert r.token_counts_from == "usage" and r.counts(99) == (3, 8)


def test_profile_client_counts_tokens_itself_when_the_server_sends_no_usage(fake_server):
    r = stream_completion(Endpoint("127.0.0.1", fake_server, "/nousage"), "m", "w1 w2 w3", 8)
    assert r.status == "ok", r.error
    assert r.prompt_tokens == -1 and r.completion_tokens == -1  # what the server said
    assert r.token_counts_from == "client" and r.counts(3) == (3, 8)


def test_profile_rows_from_a_server_without_usage_say_where_counts_came_from(fake_server, tmp_path):
    grid = ProfileGrid(
        input_tokens=[4],
        output_tokens=[5],
        concurrency=[2],
        cached_tokens=[0],
        warmup_requests=0,
    )
    out = tmp_path / "p.csv"
    run_profile(Endpoint("127.0.0.1", fake_server, "/nousage"), "m", grid, out)
    frame = pd.read_csv(out)
    assert (frame["status"] == "ok").all()
    assert (frame["token_counts_from"] == "client").all()
    assert (frame["completion_tokens"] == 5).all() and (frame["prompt_tokens"] == 4).all()
    ok = run_profile(Endpoint("127.0.0.1", fake_server, "/ok"), "m", grid, tmp_path / "u.csv")
    assert ok["statuses"] == {"ok": 2}
    assert (pd.read_csv(tmp_path / "u.csv")["token_counts_from"] == "usage").all()


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        ("http500", "http_error"),
        ("badjson", "malformed"),
        ("truncated", "malformed"),
        ("badchoice", "malformed"),
    ],
)
def test_profile_client_reports_server_faults(fake_server, mode, status):
    r = stream_completion(Endpoint("127.0.0.1", fake_server, f"/{mode}"), "m", "w1", 8)
    assert r.status == status and r.error


def test_profile_client_times_out_instead_of_hanging(fake_server):
    t0 = time.perf_counter()
    r = stream_completion(Endpoint("127.0.0.1", fake_server, "/slow"), "m", "w1", 4, timeout_s=0.5)
    assert r.status == "timeout"
    assert time.perf_counter() - t0 < 2.5


@pytest.mark.parametrize(("mode", "status"), [("dribble", "timeout"), ("endless", None)])
def test_profile_client_deadline_bounds_the_whole_request(fake_server, mode, status):
    """A server that never stops sending (a byte at a time, or one endless line) ends
    at the deadline or the line limit: the per-read timeout alone never fires."""
    t0 = time.perf_counter()
    r = stream_completion(
        Endpoint("127.0.0.1", fake_server, f"/{mode}"), "m", "w1", 4, timeout_s=1.0
    )
    took = time.perf_counter() - t0
    assert took < 2.0, (mode, took, r.status, r.error)
    assert r.status == (status or r.status) and r.status in ("timeout", "malformed"), r.error
    assert not r.ok


def test_profile_fields_from_a_server_are_printable(fake_server):
    r = stream_completion(Endpoint("127.0.0.1", fake_server, "/ctrlfinish"), "m", "w1", 4)
    assert r.status == "ok" and r.finish_reason == "len gth [31m"
    assert r.finish_reason.isprintable()


@pytest.mark.parametrize("mode", ["negusage", "hugeusage"])
def test_profile_client_refuses_impossible_usage_counts(fake_server, mode):
    r = stream_completion(Endpoint("127.0.0.1", fake_server, f"/{mode}"), "m", "w1", 4)
    assert r.status == "malformed" and "completion_tokens" in r.error


def test_profile_metrics_scrape_has_a_whole_deadline(fake_server, monkeypatch):
    from live import profiler

    monkeypatch.setattr(profiler, "SCRAPE_TIMEOUT_S", 0.5)
    t0 = time.perf_counter()
    assert profiler.scrape_metrics(Endpoint("127.0.0.1", fake_server, "/dribble")) is None
    assert time.perf_counter() - t0 < 2.0
    with pytest.raises(TimeoutError):
        Endpoint("127.0.0.1", fake_server, "/dribble").get("/metrics", timeout_s=0.3)
    scrape = profiler._Scraper(Endpoint("127.0.0.1", fake_server, "/dribble"))
    assert scrape() is None and scrape.given_up  # one slow scrape: no more of them
    t1 = time.perf_counter()
    assert scrape() is None and time.perf_counter() - t1 < 0.1


@pytest.mark.slow
def test_replay_killed_by_sigterm_keeps_every_measured_step(fake_server, tmp_path):
    """Rows go to disk as they are measured: a SIGTERM half-way loses none of them."""
    import os
    import signal

    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "killed"\n[workload]\nagents = 2\nsteps = 200\nsystem_tokens = 8\n'
        "observation_tokens = 4\naction_tokens = 4\nsummary_tokens = 4\n"
        '[[architectures]]\nname = "FC"\nkind = "fc"\n'
    )
    out = tmp_path / "out"
    endpoint = f"http://127.0.0.1:{fake_server}/paced"
    proc = subprocess.Popen(
        [sys.executable, "-m", "comem", "replay", str(scenario), "--endpoint", endpoint,
         "--model", "m", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    steps = out / "live_steps.csv"
    deadline = time.monotonic() + 60
    rows = 0
    while time.monotonic() < deadline and rows < 6:  # some steps measured, most to come
        time.sleep(0.2)
        rows = len(steps.read_text().splitlines()) - 1 if steps.exists() else 0
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGTERM  # killed, not finished
    frame = pd.read_csv(steps)
    assert len(frame) >= 6 and len(frame) < 2 * 200
    assert (frame["status"] == "ok").all() and (frame["action_tokens"] == 4).all()
    assert list(frame.columns)[:4] == ["architecture", "agent", "task", "step"]
    assert json.loads((out / "config.json").read_text())["name"] == "killed"


def test_profile_client_refused_connection():
    from live.server import free_port

    r = stream_completion(Endpoint("127.0.0.1", free_port()), "m", "w1", 4, timeout_s=2)
    assert r.status == "refused"


def test_profile_rows_cover_every_request_and_failures(fake_server, tmp_path):
    grid = ProfileGrid(
        input_tokens=[4, 8],
        output_tokens=[3],
        concurrency=[1, 3],
        cached_tokens=[0],
        rounds=2,
        warmup_requests=0,
    )
    out = tmp_path / "p.csv"
    summary = run_profile(Endpoint("127.0.0.1", fake_server, "/ok"), "m", grid, out)
    frame = pd.read_csv(out)
    assert list(frame.columns) == list(PROFILE_COLUMNS)
    assert len(frame) == summary["requests"] == 2 * (1 + 3) * 2
    assert (frame["status"] == "ok").all() and (frame["completion_tokens"] == 3).all()
    assert sorted(frame["prompt_tokens"].unique()) == [4, 8]
    # a dead server: every request is a row with its status; nothing hangs
    bad = tmp_path / "bad.csv"
    s = run_profile(Endpoint("127.0.0.1", fake_server, "/http500"), "m", grid, bad)
    rows = list(csv.DictReader(bad.open()))
    assert len(rows) == s["requests"] == 16
    assert {r["status"] for r in rows} == {"http_error"}


def test_profile_cached_prefix_waves(fake_server, tmp_path):
    """cached_tokens > 0: each prompt's prefix goes first (unrecorded), then the wave
    sends prefix + new tokens; the fit replays those waves from the cached prefix."""
    grid = ProfileGrid(
        input_tokens=[5],
        output_tokens=[3],
        concurrency=[2],
        cached_tokens=[0, 40],
        rounds=1,
        warmup_requests=0,
    )
    out = tmp_path / "p.csv"
    run_profile(Endpoint("127.0.0.1", fake_server, "/ok"), "m", grid, out)
    frame = pd.read_csv(out)
    assert len(frame) == 4 and (frame["status"] == "ok").all()
    assert sorted(frame["prompt_tokens"]) == [5, 5, 45, 45]
    assert sorted(frame["cached_tokens"]) == [0, 0, 40, 40]


@pytest.mark.slow
def test_profile_cli_bad_input_is_one_line(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text("concurrency = [0]\n")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text(
        "point,round,concurrency,status,prompt_tokens,completion_tokens,input_tokens,"
        "output_tokens,ttft_s,mean_itl_s,e2e_s\n0,0,1,ok,4,4,4,4,0.1,0.01,0.2\n"
        "1,0,two,ok,4,4,4,4,0.1,0.01,0.2\n"
    )
    ep = ["profile", "--endpoint", "127.0.0.1:1", "--model", "m"]
    fit = ["calibrate", "fit", "--out", "x.json", "--measurements"]
    for argv, needle in (
        (["profile", "--endpoint", "ftp://x", "--model", "m"], "--endpoint"),
        ([*ep, "--grid", str(grid)], "concurrency"),
        ([*ep, "--extra-body", "[1]"], "--extra-body"),
        ([*fit, str(tmp_path / "none.csv"), "--max-batch-tokens", "64"], "does not exist"),
        ([*fit, str(grid)], "--max-batch-tokens"),
        ([*fit, str(bad_csv), "--max-batch-tokens", "64"], "not a number"),
        (["profile", "--endpoint", "http://[::1", "--model", "m"], "not a URL"),
        (["replay", "x.toml", "--endpoint", "127.0.0.1:1", "--model", "m", "--timeout", "-1"],
         "--timeout"),
    ):  # fmt: skip
        p = subprocess.run(
            [sys.executable, "-m", "comem", *argv], capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 2, (argv, p.stderr)
        assert needle in p.stderr and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


# --- the measured-profile fit ---------------------------------------------------------

TRUE = dict(c0=2e-3, c1=3e-5, c2=1e-8, c3=4e-4, c4=1e-6)
PACKED, ADMISSION, OVERHEAD = 2e-8, 2e-3, 5e-3


def _profile(budget: int) -> MeasuredProfile:
    sur = LinearSurrogate(**TRUE, mape=0.0, max_rel_error=0.0, p90_rel_error=0.0)
    return MeasuredProfile(
        sur, OVERHEAD, budget, PACKED, ADMISSION, kv_capacity_tokens=1 << 20, block_size=16
    )


@pytest.mark.parametrize("stepping", ["event", "iteration"])
@pytest.mark.parametrize(
    ("c", "isl", "osl", "budget"), [(1, 100, 8, 64), (4, 300, 20, 512), (7, 50, 5, 128)]
)
def test_measured_profile_features_match_the_engine(c, isl, osl, budget, stepping):
    """The fit's closed-batch replay and the engine priced by the same profile agree on
    mean TTFT and e2e of a wave (the fit is only valid if they do)."""
    prof = _profile(budget)
    env = simpy.Environment()
    cfg = EngineConfig(
        max_num_batched_tokens=budget,
        block_size=16,
        kv_capacity_tokens=1 << 20,
        stepping=stepping,
    )
    eng = Engine(env, cfg, MeasuredLatency(prof))
    reqs = [eng.submit(isl, osl) for _ in range(c)]
    env.run()
    f = closed_batch_features(c, isl, osl, budget)
    coef = np.array([*TRUE.values(), PACKED, ADMISSION])
    ttft = np.mean([r.first_token_s for r in reqs])
    e2e = np.mean([r.finished_s for r in reqs])
    assert ttft == pytest.approx(f.ttft @ coef + OVERHEAD, rel=1e-9)
    assert e2e == pytest.approx(f.e2e @ coef + OVERHEAD, rel=1e-9)


def _synthetic_measurements(rng: np.random.Generator, budget: int, noise: float) -> pd.DataFrame:
    coef = np.array([*TRUE.values(), PACKED, ADMISSION])
    rows = []
    point = 0
    for isl in (16, 200, 900):
        for osl in (8, 40):
            for c in (1, 3, 6):
                f = closed_batch_features(c, isl, osl, budget)
                for rnd in range(2):
                    jitter = rng.normal(1.0, noise, 3) if noise else np.ones(3)
                    for i in range(c):
                        rows.append(
                            dict(point=point, round=rnd, index=i, concurrency=c, status="ok",
                                 input_tokens=isl, output_tokens=osl, prompt_tokens=isl,
                                 completion_tokens=osl,
                                 ttft_s=(f.ttft @ coef + OVERHEAD) * jitter[0],
                                 mean_itl_s=(f.itl @ coef) * jitter[1],
                                 e2e_s=(f.e2e @ coef + OVERHEAD) * jitter[2])
                        )  # fmt: skip
                point += 1
    return pd.DataFrame(rows)


def test_measured_profile_fit_recovers_a_known_server():
    budget = 512
    frame = _synthetic_measurements(np.random.default_rng(0), budget, noise=0.0)
    prof = fit_measured_profile(frame, budget)
    assert prof.fit_error["ttft_mape"] < 1e-6 and prof.fit_error["itl_mape"] < 1e-6
    # with 3% measurement noise the waves are still predicted to within the noise
    noisy = _synthetic_measurements(np.random.default_rng(1), budget, noise=0.03)
    fit = fit_measured_profile(noisy, budget)
    assert fit.fit_error["e2e_mape"] < 0.05
    # a failed request takes its wave out of the fit, and is counted
    noisy.loc[0, "status"] = "timeout"
    assert fit_measured_profile(noisy, budget).fit_error["waves_left_out"] == 1


def test_measured_profile_round_trips_and_drives_the_engine(tmp_path):
    prof = _profile(256)
    path = prof.save(tmp_path / "p.json")
    back = MeasuredProfile.load(path)
    assert back.to_dict() == prof.to_dict()
    env = simpy.Environment()
    eng = Engine(env, EngineConfig(profile=str(path), max_num_batched_tokens=256))
    assert isinstance(eng.latency, MeasuredLatency) and eng.request_overhead_s == OVERHEAD
    r = eng.submit(10, 2)
    env.run()
    assert r.status == "finished" and r.first_token_s > OVERHEAD
    with pytest.raises(ComemInputError, match="not a measured profile"):
        MeasuredProfile.from_dict({"schema": 1}, "x")


def test_measured_profile_fit_needs_enough_waves():
    frame = _synthetic_measurements(np.random.default_rng(0), 512, 0.0)
    with pytest.raises(ComemInputError, match="at least 6"):
        fit_measured_profile(frame[frame["point"] < 2], 512)


def test_profile_grid_from_toml(tmp_path):
    from live.profiler import load_grid

    p = tmp_path / "g.toml"
    p.write_text("input_tokens = [8]\noutput_tokens = [4, 8]\nconcurrency = [2]\nrounds = 3\n")
    g = load_grid(p)
    assert list(g.points()) == [(0, 8, 4, 2), (0, 8, 8, 2), (768, 8, 4, 2), (768, 8, 8, 2)]
    assert g.rounds == 3
    assert Path(p).exists()


def test_profile_grid_and_live_scenario_files_are_valid():
    from live.profiler import load_grid
    from sim.scenario import load_scenario

    root = Path(__file__).resolve().parents[2] / "scenarios" / "live"
    assert load_grid(root / "profile_grid_gpu.toml").size == 96
    sc = load_scenario(root / "tiny_cpu.toml")
    assert [a.kind for a in sc.architectures] == ["fc", "kso"]


def test_profile_fit_reads_vllm_cache_config_from_metrics(tmp_path):
    """vLLM publishes its KV size as labels of ``vllm:cache_config_info``; the fit
    takes the capacity from the profiler's metrics sidecar when none is given."""
    from calibration.measured import fit_measurements_file

    frame = _synthetic_measurements(np.random.default_rng(0), 512, 0.0)
    csv_path = tmp_path / "m.csv"
    frame.to_csv(csv_path, index=False)
    sample = 'vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="5000"}'
    pd.DataFrame(
        [[0, "before", sample, 1.0], [0, "before", "vllm:num_requests_running", 0.0]],
        columns=["point", "phase", "sample", "value"],
    ).to_csv(tmp_path / "m.metrics.csv", index=False)
    prof = fit_measurements_file(csv_path, 512)
    assert prof.kv_capacity_tokens == 80_000 and prof.block_size == 16
    assert prof.provenance["kv_capacity_from"].startswith("vllm:cache_config_info")
    # a wave that cannot fit that cache is refused with one clear line
    (tmp_path / "m.metrics.csv").write_text(
        "point,phase,sample,value\n0,before,"
        '"vllm:cache_config_info{block_size=""16"",num_gpu_blocks=""10""}",1.0\n'
    )
    with pytest.raises(ComemInputError, match="more than the server's 160"):
        fit_measurements_file(csv_path, 512)
