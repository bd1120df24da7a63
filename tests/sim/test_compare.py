"""The intervals beside a run's mean step and task latencies."""

from __future__ import annotations

import pytest

from sim.compare import add_latency_intervals
from sim.config import EngineConfig
from sim.engine_latency import engine_error_bands

AGENT = EngineConfig(name="agent", model="llama-3-8b", gpu="h100_sxm", tp=1)


def _summary(step: float, tool: float) -> dict:
    return {
        "mean_step_latency_s": step,
        "mean_env_exec_time_s": tool,
        "mean_task_latency_s": 10 * step,
    }


def test_the_first_token_wait_takes_the_ttft_band_and_decode_the_tpot_band():
    """A step of 1 s tool, 2 s waiting for its first token and 3 s decoding: the first
    token's part moves by TTFT's band, decode by TPOT's, the tool not at all; the task
    moves by the step's factor."""
    bands = engine_error_bands(AGENT)
    ttft, tpot = bands["ttft"], bands["tpot"]
    out = _summary(6.0, 1.0)
    add_latency_intervals(out, AGENT, first_token=2.0, after_first=3.0)
    low = 1.0 + ttft.interval(2.0)[0] + tpot.interval(3.0)[0]
    high = 1.0 + ttft.interval(2.0)[1] + tpot.interval(3.0)[1]
    assert out["mean_step_latency_s_low"] == pytest.approx(low)
    assert out["mean_step_latency_s_high"] == pytest.approx(high)
    assert out["mean_step_latency_s_low"] < 6.0 < out["mean_step_latency_s_high"]
    assert out["mean_task_latency_s_high"] == pytest.approx(60.0 * high / 6.0)
    # a prefill-heavy step's interval is wider than the TPOT band alone makes it
    decode_only = _summary(6.0, 1.0)
    add_latency_intervals(decode_only, AGENT)
    width = out["mean_step_latency_s_high"] - out["mean_step_latency_s_low"]
    assert width > decode_only["mean_step_latency_s_high"] - decode_only["mean_step_latency_s_low"]


def test_no_band_no_interval():
    """A GPU without an embedded calibration claims no interval."""
    out = _summary(6.0, 1.0)
    add_latency_intervals(out, AGENT.model_copy(update={"gpu": "l40s", "dtype": "fp8"}), 2.0, 3.0)
    assert "mean_step_latency_s_low" not in out


def test_a_runs_intervals_take_its_own_first_token_and_decode_times():
    """On a real run: the step interval is the tool time plus TTFT's band of the steps'
    mean queue + prefill plus TPOT's band of their mean decode + stall."""
    from sim.compare import finished_steps
    from sim.scenario import Scenario, run_scenario

    scenario = Scenario.model_validate(
        {"workload": {"agents": 2, "steps": 4, "tool_s": 0.5},
         "architectures": [{"name": "FC", "kind": "fc", "agent": {"model": "llama-3-8b"}}]}
    )  # fmt: skip
    result = run_scenario(scenario)
    summary = result.summary()["architectures"]["FC"]
    steps = finished_steps(result.results[0].steps)
    first = float((steps["queue_s"] + steps["prefill_s"]).mean())
    rest = float((steps["decode_s"] + steps["stall_s"]).mean())
    bands = engine_error_bands(scenario.architectures[0].agent)
    tool = summary["mean_env_exec_time_s"]
    gpu = summary["mean_step_latency_s"] - tool
    unassigned = max(0.0, gpu - first - rest)
    low = tool + bands["ttft"].interval(first)[0] + bands["tpot"].interval(rest + unassigned)[0]
    assert summary["mean_step_latency_s_low"] == pytest.approx(low, rel=1e-9)
