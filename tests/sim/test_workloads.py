"""Trace and fitted workloads: what they replay/sample, and their failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.errors import ComemInputError
from sim.scenario import load_scenario, run_scenario
from sim.workloads import (
    FITTED_FILE,
    FittedWorkload,
    TraceWorkload,
    fit_workload,
    load_fitted,
)


def test_committed_fit_has_provenance_and_sane_parameters():
    data = load_fitted()
    assert "swebench_agent_steps" in data["provenance"]
    v = data["variables"]
    # medians from the trace README: ~36 steps (Gemini, Verified), completion 80-230
    assert 25 < np.exp(v["steps"]["mu"]) < 50
    assert 60 < np.exp(v["completion"]["mu"]) < 250
    assert 0.9 < v["kept_fraction"]["one_fraction"] <= 1.0
    for spec in v.values():
        assert spec["sigma"] > 0 and 0 <= spec["ks"] < 0.6


def test_fitted_workload_is_seeded_and_respects_limits():
    w = FittedWorkload(agents=6, tasks_per_agent=2, max_steps=30)
    a = w.tasks(np.random.default_rng(5))
    b = w.tasks(np.random.default_rng(5))
    c = w.tasks(np.random.default_rng(6))
    assert a == b and a != c
    assert len(a) == 6 and all(len(own) == 2 for own in a)
    for own in a:
        for task in own:
            assert 1 <= len(task.steps) <= 30
            assert task.steps[0].observation == 0  # the first step reads the task prompt
            for s in task.steps:
                assert s.action >= 1 and 0 <= (s.kept or 0) <= s.action and s.tool_s >= 0


def test_fitted_file_errors_are_clear(tmp_path: Path):
    bad = tmp_path / "fit.json"
    bad.write_text(json.dumps({"variables": {"steps": {}}}))
    with pytest.raises(ComemInputError, match="lacks fitted variable"):
        FittedWorkload(path=str(bad)).tasks(np.random.default_rng(0))
    with pytest.raises(ComemInputError, match="does not exist"):
        FittedWorkload(path=str(tmp_path / "none.json")).tasks(np.random.default_rng(0))


def test_trace_workload_without_data_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("COMEM_SHARED", str(tmp_path))
    with pytest.raises(ComemInputError, match="fitted"):
        TraceWorkload().tasks(np.random.default_rng(0))


@pytest.mark.shared
def test_trace_workload_replays_real_steps(shared_dir):
    path = shared_dir / "data" / "workloads" / "swebench_agent_steps.csv.gz"
    w = TraceWorkload(path=str(path), agents=4, max_steps=40)
    tasks = w.tasks(np.random.default_rng(1))
    assert len(tasks) == 4
    for (task,) in tasks:
        assert 1 <= len(task.steps) <= 40
        assert task.system_tokens > 1000  # system + SWE-bench issue text
        assert all(s.tool_s >= 0 for s in task.steps)
    with pytest.raises(ComemInputError, match="unknown source"):
        TraceWorkload(path=str(path), sources=["nope"]).tasks(np.random.default_rng(1))
    with pytest.raises(ComemInputError, match="no prompt token counts"):
        TraceWorkload(path=str(path), sources=["openhands_glm46_sessions"]).tasks(
            np.random.default_rng(1)
        )


@pytest.mark.shared
def test_refit_reproduces_the_committed_fit(shared_dir):
    path = shared_dir / "data" / "workloads" / "swebench_agent_steps.csv.gz"
    fresh = fit_workload(path)["variables"]
    committed = json.loads(FITTED_FILE.read_text())["variables"]
    for name, spec in committed.items():
        assert fresh[name]["mu"] == pytest.approx(spec["mu"], abs=1e-4), name
        assert fresh[name]["sigma"] == pytest.approx(spec["sigma"], abs=1e-4), name


def test_swebench_scenario_runs_on_the_fitted_workload():
    scenario = load_scenario(
        "scenarios/swebench_verified.toml", ["workload.kind=fitted", "workload.agents=8"]
    )
    result = run_scenario(scenario)
    for res in result.results:
        assert (res.tasks["status"] == "finished").all()
        assert len(res.tasks) == 8


# --- a steps CSV checked row by row (found by a fuzzer) ---------------------------------

STEPS_HEADER = (
    "source,trajectory_id,step,prompt_tokens,completion_tokens,visible_output_tokens,"
    "observation_tokens_derived,observation_tokens_est_chars4,tool_time_s"
)
#: the columns of STEPS_HEADER, by name
STEP_COLUMN = {name: i for i, name in enumerate(STEPS_HEADER.split(","))}


def _steps_rows() -> list[list[str]]:
    """3 trajectories x 4 steps of one source, every value plausible."""
    return [
        ["src", f"t{t}", str(s), str(200 + 50 * s), "50", "30", "80", "90", "0.5"]
        for t in range(3)
        for s in range(4)
    ]


def _write_steps(tmp_path: Path, rows: list[list[str]], name: str = "steps.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([STEPS_HEADER, *(",".join(r) for r in rows)]) + "\n")
    return path


def _trace(path: Path, **fields: object) -> list:
    """The tasks a trace workload over ``path`` replays (fresh read: the reader caches)."""
    from sim.trace_steps import load_steps

    load_steps.cache_clear()
    w = TraceWorkload(path=str(path), sources=["src"], agents=3, max_steps=10, **fields)
    return w.tasks(np.random.default_rng(0))


def test_a_valid_steps_csv_replays_as_written(tmp_path: Path):
    """The control for the refusals below: the same file, unchanged, replays its values;
    a step that decoded 0 tokens is one token (an engine request decodes at least one)."""
    rows = _steps_rows()
    for r in rows[1::4]:  # step 1 of each trajectory
        r[STEP_COLUMN["completion_tokens"]] = "0"
        r[STEP_COLUMN["visible_output_tokens"]] = "0"
    for (task,) in _trace(_write_steps(tmp_path, rows)):
        assert task.system_tokens == 200 and len(task.steps) == 4
        assert [s.observation for s in task.steps] == [0, 80, 80, 80]
        assert [s.action for s in task.steps] == [50, 1, 50, 50]
        assert [s.kept for s in task.steps] == [30, 0, 30, 30]
        assert all(s.tool_s == 0.5 for s in task.steps)


def test_steps_csv_keeps_the_negatives_the_real_data_has(tmp_path: Path):
    """The shared SWE-bench data has negative derived observations (provider counts),
    negative visible output (reasoning above completion) and negative tool times (clock
    noise): those read as 0, as the data's README says, and are not refused."""
    rows = _steps_rows()
    for r in rows:
        r[STEP_COLUMN["observation_tokens_derived"]] = "-40"
        r[STEP_COLUMN["visible_output_tokens"]] = "-20"
        r[STEP_COLUMN["tool_time_s"]] = "-1.5"
    for (task,) in _trace(_write_steps(tmp_path, rows)):
        assert all(s.observation == 0 and s.kept == 0 and s.tool_s == 0 for s in task.steps)


def _set(row: int, column: str, value: str):
    def change(rows: list[list[str]]) -> None:
        rows[row][STEP_COLUMN[column]] = value

    return change


def _duplicate(rows: list[list[str]]) -> None:
    rows.append(list(rows[5]))


def _no_trajectory(rows: list[list[str]]) -> None:
    for r in rows:
        r[STEP_COLUMN["trajectory_id"]] = ""


BAD_STEPS = [
    # (change, the file row named (1 = header), the column / what the line says)
    (_set(5, "source", ""), 7, "'source' is empty"),
    (_set(5, "source", "  "), 7, "'source' is empty"),
    (_set(5, "trajectory_id", ""), 7, "'trajectory_id' is empty"),
    (_no_trajectory, 2, "'trajectory_id' is empty"),
    (_set(5, "completion_tokens", "-500"), 7, "'completion_tokens' must be a whole number"),
    (_set(0, "prompt_tokens", "-500"), 2, "'prompt_tokens' must be a whole number"),
    (_set(5, "observation_tokens_est_chars4", "-1"), 7, "'observation_tokens_est_chars4'"),
    (_set(5, "completion_tokens", "50.7"), 7, "'completion_tokens' must be a whole number"),
    (_set(5, "visible_output_tokens", "2.5"), 7, "'visible_output_tokens' must be a whole"),
    (_set(5, "observation_tokens_derived", "8.5"), 7, "'observation_tokens_derived' must"),
    (_set(5, "visible_output_tokens", "60"), 7, "'visible_output_tokens' (60) exceeds"),
    (_duplicate, 14, "step 1 of trajectory 't1' (source 'src') repeats row 7"),
]


@pytest.mark.parametrize(("change", "row", "why"), BAD_STEPS)
def test_bad_steps_csv_is_one_line_naming_file_row_and_column(
    change, row: int, why: str, tmp_path: Path
):
    rows = _steps_rows()
    change(rows)
    path = _write_steps(tmp_path, rows)
    with pytest.raises(ComemInputError) as info:
        _trace(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}:{row}: "), msg
    assert why in msg, msg
    # workload fit reads the same file through the same reader
    with pytest.raises(ComemInputError, match=f"^{path}:{row}: "):
        fit_workload(path, ["src"])


def test_negative_tool_time_bound_still_holds(tmp_path: Path):
    """A negative tool time is accepted only within the reader's bound (10^6 s)."""
    rows = _steps_rows()
    rows[3][STEP_COLUMN["tool_time_s"]] = "-1e7"
    with pytest.raises(ComemInputError, match=r":5: column 'tool_time_s'"):
        _trace(_write_steps(tmp_path, rows))


@pytest.mark.slow
def test_cli_refuses_a_bad_steps_csv_exit_2(tmp_path: Path):
    from cli_helpers import assert_user_error, run_comem

    rows = _steps_rows()
    rows[5][STEP_COLUMN["source"]] = ""
    path = _write_steps(tmp_path, rows)
    scenario = tmp_path / "scen.toml"
    scenario.write_text(
        f'[workload]\nkind = "trace"\npath = "{path}"\nsources = ["src"]\nmax_steps = 10\n'
        'summary_tokens = 30\n\n[[architectures]]\nname = "FC"\nkind = "fc"\n'
        'agent = {model = "llama-3-8b", gpu = "h100_sxm", tp = 1}\n'
    )
    assert_user_error(run_comem("run", str(scenario)), f"{path}:7", "'source'")
    out = tmp_path / "fit.json"
    proc = run_comem("workload", "fit", "--steps", str(path), "--out", str(out))
    assert_user_error(proc, f"{path}:7", "'source'")
    assert not out.exists()
