"""The one policy loop (sim.executor) and its rows: the thread driver, and the columns
every table keeps (the Parquet and CSV files stay as they were)."""

from __future__ import annotations

import pytest

from live.agent import REPLAY_STEP_COLUMNS, ReplayStepRow, drive_blocking
from sim.rows import REQUEST_PURPOSES, IterationRow, RequestRow, StepRow, TaskRow


def test_drive_blocking_makes_each_call_and_throws_its_error_in():
    seen = []

    def steps():
        seen.append((yield lambda: 1))
        try:
            yield lambda: 1 / 0
        except ZeroDivisionError:
            seen.append("caught")
        return "done"

    assert drive_blocking(steps()) == "done"
    assert seen == [1, "caught"]

    def released():
        try:
            yield lambda: 1 / 0
        finally:
            seen.append("released")

    with pytest.raises(ZeroDivisionError):
        drive_blocking(released())
    assert seen[-1] == "released"  # a job is released even when its request fails


def test_rows_keep_their_columns():
    assert RequestRow._fields[:5] == ("engine", "request_id", "tag", "status", "reason")
    assert len(RequestRow._fields) == 17 and RequestRow._fields[-1] == "cached_tokens"
    assert IterationRow._fields[-3:] == ("kv_used_blocks", "kv_cached_blocks", "kv_total_blocks")
    assert len(StepRow._fields) == 26 and StepRow._fields[-1] == "total_step_time_s"
    assert TaskRow._fields == (
        "architecture", "agent", "task", "start_s", "end_s", "latency_s", "steps", "status",
        "summaries", "stall_s",
    )  # fmt: skip


def test_a_live_step_row_is_the_step_row_a_client_sees():
    assert REPLAY_STEP_COLUMNS == (
        "architecture", "agent", "task", "step", "status", "submit_s", "first_token_s",
        "finished_s", "prefill_s", "decode_s", "tool_s", "stall_s", "step_latency_s",
        "prompt_tokens", "action_tokens", "summary_launched", "summary_swapped",
        "llm_exec_time_s", "summary_exec_time_s", "prefill_exec_time_s", "env_exec_time_s",
        "total_step_time_s", "token_counts_from",
    )  # fmt: skip
    row = StepRow(**{name: i for i, name in enumerate(StepRow._fields)})  # type: ignore[arg-type]
    cells = ReplayStepRow(row, "usage").cells()
    assert cells[-1] == "usage"
    assert cells[:-1] == [getattr(row, c) for c in REPLAY_STEP_COLUMNS[:-1]]


def test_requests_parquet_names_what_each_agent_request_was_for(tmp_path):
    """A coupled summary, a memory summary and a pre-warm are written with the step
    requests (their tags once mixed strings into a column of int tuples, which Parquet
    refused: ``comem run --out`` lost the run)."""
    import pandas as pd

    from sim.scenario import run_scenario, scenario_from

    engine = {"name": "agent", "model": "llama-3-8b", "gpu": "h100_sxm", "tp": 1}
    scenario = scenario_from(
        {
            "name": "tags",
            "seed": 1,
            "workload": {"kind": "synthetic", "agents": 2, "steps": 6},
            "architectures": [
                {"name": "CP", "kind": "cp", "k": 2, "agent": engine},
                {
                    "name": "KSO", "kind": "kso", "k": 2, "pre_warm": True, "agent": engine,
                    "memory": engine | {"name": "memory"},
                },
            ],
        },
        [],
        "tags",
    )  # fmt: skip
    run_scenario(scenario).write(tmp_path)
    req = pd.read_parquet(tmp_path / "requests.parquet")
    assert "tag" not in req.columns
    counts = req.groupby(["engine", "purpose"]).size().to_dict()
    assert counts == {
        ("CP/agent", "step"): 12, ("CP/agent", "summary"): 4,
        ("KSO/agent", "pre-warm"): 4, ("KSO/agent", "step"): 12,
        ("KSO/memory", "summary"): 4,
    }  # fmt: skip
    assert set(req["purpose"]) <= set(REQUEST_PURPOSES)
    steps = req[req["purpose"] == "step"]
    assert steps["step"].notna().all() and req[req["purpose"] == "pre-warm"]["step"].isna().all()
    assert set(steps["agent"]) == {0, 1}
